// The smallest migration: an app written with @solid-primitives/websocket, pointed at roomcast.
// Only the URL and the JSON frames are roomcast's (docs/protocol.md); roomcast answers the text
// "ping" of makeHeartbeatWS with "pong", and every command gets a reply, so the heartbeat works.
//
// What the primitives do not do, and roomcast needs: rejoin rooms after a reconnect, back off,
// read close codes. The one-line fix is createRoomcastWS from @roomcast/solid, which keeps this
// code as it is (open this page with ?client=roomcast to run it that way):
//
//   const ws = makeHeartbeatWS(createReconnectingWS(url));   // before
//   const ws = createRoomcastWS(url);                        // after
import { createReconnectingWS, makeHeartbeatWS } from "@solid-primitives/websocket";
import { createRoomcastWS } from "@roomcast/solid";
import { createSignal, For } from "solid-js";
import { render } from "solid-js/web";
import { defaultName, gatewayUrl } from "./gateway";
import "./styles.css";

interface Msg {
  id: string;
  from: string;
  data: { name?: string; text?: string };
}

function PrimitivesChat() {
  const useRoomcast = new URLSearchParams(location.search).get("client") === "roomcast";
  const room = new URLSearchParams(location.search).get("room") ?? "lobby";
  const url = gatewayUrl();
  const ws = useRoomcast ? createRoomcastWS(url) : makeHeartbeatWS(createReconnectingWS(url));

  const name = defaultName();
  const [messages, setMessages] = createSignal<Msg[]>([]);
  const [status, setStatus] = createSignal("connecting");
  const [draft, setDraft] = createSignal("");

  ws.addEventListener("open", () => setStatus("open"));
  ws.addEventListener("close", () => setStatus("reconnecting"));
  ws.addEventListener("message", (e: { data?: unknown }) => {
    if (typeof e.data !== "string" || e.data === "pong") return;
    const frame = JSON.parse(e.data);
    if (frame.type === "message" && frame.room === room) setMessages((m) => [...m, frame]);
  });
  // queued until the socket opens; with the plain primitives it is sent once, so after a
  // reconnect this page is no longer in the room (createRoomcastWS sends it again)
  ws.send(JSON.stringify({ type: "join", room }));

  const send = (e: Event) => {
    e.preventDefault();
    const text = draft().trim();
    if (!text) return;
    ws.send(JSON.stringify({ type: "publish", room, data: { name, text } }));
    setDraft("");
  };

  return (
    <div class="app">
      <header>
        <h1>roomcast chat · {useRoomcast ? "createRoomcastWS" : "@solid-primitives/websocket"}</h1>
        <div class={`state state-${status()}`} data-testid="state">
          {status()}
        </div>
        <div class="conn">you are {name}</div>
      </header>
      <nav>
        <h2>Rooms</h2>
        <ul>
          <li class="active">
            <span class="room"># {room}</span>
          </li>
        </ul>
      </nav>
      <main>
        <ul class="messages" data-testid="messages">
          <For each={messages()}>
            {(m) => (
              <li classList={{ mine: m.data?.name === name }}>
                <span class="from">{m.data?.name ?? m.from}</span>
                <span class="text">{m.data?.text ?? JSON.stringify(m.data)}</span>
              </li>
            )}
          </For>
        </ul>
        <form class="publish" onSubmit={send}>
          <input value={draft()} onInput={(e) => setDraft(e.currentTarget.value)} placeholder={`message #${room}`} data-testid="draft" />
          <button type="submit" data-testid="send">
            Send
          </button>
        </form>
      </main>
    </div>
  );
}

render(() => <PrimitivesChat />, document.getElementById("root")!);
