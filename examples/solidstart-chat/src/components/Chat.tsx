import { createRoomcast, type Room } from "@roomcast/solid";
import { createAsync, revalidate } from "@solidjs/router";
import { createEffect, createSignal, For, on, onCleanup, Show } from "solid-js";
import { announce, getLastSeen, kick } from "~/lib/api";

interface ChatData {
  text: string;
  /** Set by the app's server (announce) */
  system?: boolean;
}

/** The gateway URLs, tried in turn (?ws=a,b overrides the server's list, for the e2e test). */
function rotating(urls: string[]): () => string {
  const fromQuery = new URLSearchParams(location.search).get("ws");
  const list = fromQuery ? fromQuery.split(",").filter(Boolean) : urls;
  let i = -1;
  return () => list[(i = (i + 1) % list.length)]!;
}

export default function Chat(props: { user: string; staff: boolean; gateways: string[] }) {
  // No token: the WebSocket handshake carries the session cookie, and the gateway asks our
  // connect hook (src/routes/roomcast/connect.ts) who this is. The SSE fallback (a network that
  // does not pass WebSockets) sends the cookie too.
  const rc = createRoomcast(rotating(props.gateways), { withCredentials: true });
  const lobby: Room<ChatData> = rc.room<ChatData>("chat:lobby", { history: 50, presence: true });
  const staffRoom: Room<ChatData> | undefined = props.staff ? rc.room<ChatData>("chat:staff", { history: 50 }) : undefined;
  const [current, setCurrent] = createSignal<Room<ChatData>>(lobby);
  const [draft, setDraft] = createSignal("");
  const [notice, setNotice] = createSignal("");
  const [probe, setProbe] = createSignal<Room<ChatData>>();
  let list: HTMLUListElement | undefined;
  // keep the newest message in view
  createEffect(on(() => current().messages().length, () => list && (list.scrollTop = list.scrollHeight)));

  const lastSeen = createAsync(() => getLastSeen(), { initialValue: {} });
  // "last seen" changes when someone leaves: ask again when the member list changes, and now and then
  createEffect(on(() => lobby.presence()?.members.map((m) => m.user).join(","), () => void revalidate(getLastSeen.key)));
  const poll = setInterval(() => void revalidate(getLastSeen.key), 2000);
  onCleanup(() => clearInterval(poll));

  (window as unknown as { roomcast: unknown }).roomcast = rc; // for the console and the e2e test

  async function send(e: Event) {
    e.preventDefault();
    const text = draft().trim();
    if (!text) return;
    setDraft("");
    await current().publish({ text }).catch(() => {}); // shown through room.error()
  }
  async function run(what: () => Promise<unknown>, done: string) {
    try {
      await what();
      setNotice(done);
    } catch (err) {
      setNotice(`failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  // what presence said last, while connected (a closed page knows nothing current)
  const members = () => (rc.state() === "open" ? (lobby.presence()?.members ?? []) : []);
  const present = () => new Set(members().map((m) => m.user));
  const stateText = () =>
    rc.state() === "forbidden" ? `closed by the server: ${rc.info().lastClose?.reason || "forbidden"}` : rc.state();

  return (
    <div class="chat">
      <div class={`state state-${rc.state()}`} data-testid="state" data-state={rc.state()}>
        {stateText()}
        <Show when={rc.state() === "open" && rc.welcome()}>{(w) => <small> · node {w().node}</small>}</Show>
      </div>
      <nav>
        <For each={[lobby, ...(staffRoom ? [staffRoom] : [])]}>
          {(r) => (
            <button classList={{ active: current() === r }} onClick={() => setCurrent(r)} data-testid={`tab-${r.name}`}>
              # {r.name} <span classList={{ dot: true, on: r.joined() }} />
            </button>
          )}
        </For>
        <button
          title="try to enter the staff room (the join hook decides)"
          onClick={() => setProbe(() => rc.room<ChatData>("chat:staff"))}
          data-testid="try-staff"
          hidden={props.staff}
        >
          try #chat:staff
        </button>
        <Show when={probe()?.error()}>{(e) => <span class="error" data-testid="staff-error">{e().code}: {e().message}</span>}</Show>
      </nav>
      <section class="room">
        <Show when={current().recovered() === false}>
          <p class="gap" data-testid="gap">Reconnected: messages sent while you were away may be missing.</p>
        </Show>
        <Show when={current().error()}>{(e) => <p class="error">{e().code}: {e().message}</p>}</Show>
        <ul class="messages" data-testid="messages" ref={list}>
          <For each={current().messages()}>
            {(m) => (
              <li classList={{ system: !!m.data?.system, mine: m.from === props.user }} data-from={m.from}>
                <span class="from">{m.data?.system ? "system" : m.from}</span>
                <span class="text">{m.data?.text}</span>
                <time>{new Date(m.ts).toLocaleTimeString()}</time>
              </li>
            )}
          </For>
        </ul>
        <form class="publish" onSubmit={send}>
          <input placeholder={`message #${current().name}`} value={draft()} onInput={(e) => setDraft(e.currentTarget.value)} data-testid="draft" />
          <button type="submit">Send</button>
        </form>
      </section>
      <aside>
        <h2>Here ({rc.state() === "open" ? (lobby.presence()?.count ?? 0) : "?"})</h2>
        <ul data-testid="presence">
          <For each={members()}>
            {(m) => (
              <li data-user={m.user} data-name={String(m.info?.name ?? "")}>
                {/* info: what the connect hook said of the user */}
                {typeof m.info?.name === "string" ? m.info.name : m.user}
                <Show when={m.info?.staff === true}>
                  <small class="badge" data-testid={`staff-${m.user}`}> staff</small>
                </Show>
                <Show when={m.conns > 1}>
                  <small> ×{m.conns}</small>
                </Show>
                <Show when={props.staff && m.user !== props.user}>
                  <button class="kick" onClick={() => run(() => kick(m.user), `kicked ${m.user}`)} data-testid={`kick-${m.user}`}>
                    kick
                  </button>
                </Show>
              </li>
            )}
          </For>
        </ul>
        <h2>Last seen</h2>
        <ul data-testid="last-seen">
          <For each={Object.entries(lastSeen()).filter(([u]) => !present().has(u))}>
            {([u, ts]) => (
              <li data-user={u} data-ts={ts}>
                {u} <time>{new Date(ts).toLocaleTimeString()}</time>
              </li>
            )}
          </For>
        </ul>
        <Show when={props.staff}>
          <form
            class="announce"
            onSubmit={(e) => {
              e.preventDefault();
              const input = e.currentTarget.elements.namedItem("text") as HTMLInputElement;
              const text = input.value;
              input.value = "";
              void run(() => announce(text), "announced");
            }}
          >
            <input name="text" placeholder="system message to #chat:lobby" data-testid="announce-text" />
            <button type="submit" data-testid="announce">Announce</button>
          </form>
        </Show>
        <p class="notice" data-testid="notice">{notice()}</p>
      </aside>
    </div>
  );
}
