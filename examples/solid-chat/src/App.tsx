import { createRoomcast, type Room } from "@roomcast/solid";
import { createSignal, For, Show, createMemo, onCleanup } from "solid-js";
import { defaultName, rotatingGatewayUrl, tokenGetter } from "./gateway";

interface ChatMessage {
  name: string;
  text: string;
}

export function App() {
  // The whole roomcast integration: one connection, one handle per room.
  const rc = createRoomcast(rotatingGatewayUrl(), { getToken: tokenGetter() });
  const rooms = new Map<string, Room<ChatMessage>>();
  const [roomNames, setRoomNames] = createSignal<string[]>([]);
  const [current, setCurrent] = createSignal("lobby");
  const [name, setName] = createSignal(defaultName());
  const [draft, setDraft] = createSignal("");
  const [newRoom, setNewRoom] = createSignal("");
  const [now, setNow] = createSignal(Date.now());
  const clock = setInterval(() => setNow(Date.now()), 500);
  onCleanup(() => clearInterval(clock));

  function open(roomName: string) {
    if (!rooms.has(roomName)) {
      // history: replays recent messages on rooms that keep history; after a reconnect the
      // room is rejoined with since = the last message seen. presence: who is here, fetched
      // after every (re)join and kept up to date by member_joined / member_left (rooms that
      // match a presence.rooms rule of the gateway; elsewhere presence() stays undefined)
      rooms.set(roomName, rc.room<ChatMessage>(roomName, { history: 50, presence: true }));
      setRoomNames([...rooms.keys()]);
    }
    setCurrent(roomName);
  }
  function close(roomName: string) {
    const r = rooms.get(roomName);
    if (!r) return;
    void r.leave();
    rooms.delete(roomName);
    setRoomNames([...rooms.keys()]);
    if (current() === roomName) setCurrent(roomNames()[0] ?? "");
  }
  open(new URLSearchParams(location.search).get("room") ?? "lobby");

  const room = createMemo(() => (roomNames().includes(current()) ? rooms.get(current()) : undefined));

  async function send(e: Event) {
    e.preventDefault();
    const r = room();
    const text = draft().trim();
    if (!r || !text) return;
    setDraft("");
    try {
      await r.publish({ name: name(), text });
    } catch {
      /* shown through r.error() */
    }
  }

  // a member is a user id (a token's sub, or the conn_id of an anonymous connection, as in
  // `from`): show the chat name its last message carried, when there is one
  const nameOf = (r: Room<ChatMessage>, user: string) => {
    const msgs = r.messages();
    for (let i = msgs.length - 1; i >= 0; i--) {
      const m = msgs[i]!;
      if (m.from === user && typeof m.data?.name === "string") return m.data.name;
    }
    return undefined;
  };

  const retryIn = () => {
    const at = rc.info().retryAt;
    return at === null ? 0 : Math.max(0, Math.ceil((at - now()) / 1000));
  };

  // handy for poking at it from the console, and for the browser test
  (window as unknown as { roomcast: unknown }).roomcast = rc;

  return (
    <div class="app">
      <header>
        <h1>roomcast chat</h1>
        <div class={`state state-${rc.state()}`} data-testid="state">
          {rc.state()}
        </div>
        <div class="conn" data-testid="conn">
          <Show when={rc.state() === "open" && rc.welcome()}>
            {(w) => (
              <>
                node <b>{w().node}</b> · conn <b>{w().conn_id}</b>
              </>
            )}
          </Show>
          <Show when={rc.state() === "reconnecting"}>
            <span>
              {Math.max(rc.info().attempt, rc.info().failuresBeforeOpen)} failed
              {rc.info().lastClose ? ` · closed with ${rc.info().lastClose!.code}` : ""} · retry in {retryIn()} s
              <Show when={rc.info().refused}> · refused (auth, limits) or down</Show>
            </span>{" "}
            <button onClick={() => rc.reconnect()}>Retry now</button>
          </Show>
          <Show when={rc.info().queued > 0}>
            <span> · {rc.info().queued} queued</span>
          </Show>
        </div>
        <label class="name">
          you are <input value={name()} onInput={(e) => setName(e.currentTarget.value)} data-testid="name" />
        </label>
      </header>
      <nav>
        <h2>Rooms</h2>
        <ul>
          <For each={roomNames()}>
            {(n) => (
              <li classList={{ active: n === current() }}>
                <button class="room" onClick={() => setCurrent(n)} data-testid={`room-${n}`}>
                  <span classList={{ dot: true, on: rooms.get(n)!.joined() }} /># {n}
                </button>
                <button class="leave" title={`leave ${n}`} onClick={() => close(n)}>
                  ×
                </button>
              </li>
            )}
          </For>
        </ul>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            const n = newRoom().trim();
            if (n) open(n);
            setNewRoom("");
          }}
        >
          <input placeholder="join a room" value={newRoom()} onInput={(e) => setNewRoom(e.currentTarget.value)} data-testid="new-room" />
        </form>
      </nav>
      <main>
        <Show when={room()} fallback={<p class="empty">Join a room.</p>}>
          {(r) => (
            <>
              <h2>
                # {r().name} <span class="joined">{r().joined() ? "joined" : "not joined"}</span>
              </h2>
              <Show when={r().recovered() === false}>
                <p class="gap" data-testid="gap">
                  Reconnected: messages sent while you were away may be missing.
                </p>
              </Show>
              <Show when={r().presence()}>
                {(p) => (
                  <div class="presence" data-testid="presence">
                    <span class="here" data-testid="presence-count">
                      {p().count} here{p().truncated ? ` (${p().members.length} shown)` : ""}:
                    </span>
                    <ul>
                      <For each={p().members}>
                        {(m) => (
                          <li data-user={m.user} classList={{ me: m.user === (rc.welcome()?.user ?? rc.welcome()?.conn_id) }}>
                            {nameOf(r(), m.user) ?? m.user}
                            <Show when={nameOf(r(), m.user)}>
                              <small> {m.user}</small>
                            </Show>
                            <Show when={m.conns > 1}>
                              <small> ×{m.conns}</small>
                            </Show>
                          </li>
                        )}
                      </For>
                    </ul>
                  </div>
                )}
              </Show>
              <Show when={r().error()}>
                {(err) => <p class="error">{err().code}: {err().message}</p>}
              </Show>
              <ul class="messages" data-testid="messages">
                <For each={r().messages()}>
                  {(m) => (
                    <li classList={{ mine: m.data?.name === name() }}>
                      <span class="from">{m.data?.name ?? m.from}</span>
                      <span class="text">{typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data)}</span>
                      <time>{new Date(m.ts).toLocaleTimeString()}</time>
                    </li>
                  )}
                </For>
              </ul>
              <form class="publish" onSubmit={send}>
                <input
                  placeholder={`message #${r().name}`}
                  value={draft()}
                  onInput={(e) => setDraft(e.currentTarget.value)}
                  data-testid="draft"
                />
                <button type="submit" data-testid="send">
                  Send
                </button>
              </form>
            </>
          )}
        </Show>
      </main>
    </div>
  );
}
