// A fake EventSource and fetch for the SSE transport's unit tests, driven from the "server"
// side by the test, like fake-ws.ts.
import type { EventSourceLike, FetchLike } from "../src/sse.js";

type Listener = (ev: { data: string; lastEventId?: string }) => void;

export class FakeEventSource implements EventSourceLike {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static get last(): FakeEventSource {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1]!;
  }

  readyState = 0;
  closed = false;
  onopen: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  private readonly listeners = new Map<string, Listener[]>();
  private lastId = "";

  constructor(readonly url: string) {
    FakeEventSource.instances.push(this);
  }

  addEventListener(type: string, listener: Listener): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }
  close(): void {
    this.readyState = 2;
    this.closed = true;
  }

  // ---- the server's side ----

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
  /** One event, as the browser hands it over (`lastEventId` kept from the last `id:`). */
  emit(type: string, frame: unknown, id?: string): void {
    if (id !== undefined) this.lastId = id;
    this.readyState = 1;
    const data = JSON.stringify(frame);
    for (const l of this.listeners.get(type) ?? []) l({ data, lastEventId: this.lastId });
  }
  welcome(): this {
    this.emit("welcome", { type: "welcome", conn_id: "c", node: "n1", user: null, heartbeat_ms: 25000 });
    return this;
  }
  /** `joined` for every room of the request, as the node does (its `id` is the room). */
  joinAll(extra: Record<string, unknown> = {}): void {
    for (const room of this.query.getAll("room")) this.emit("joined", { type: "joined", room, id: room, ...extra });
  }
  /** The stream failed: as a browser, an `error` event with no data to the listeners too. */
  fail(): void {
    this.readyState = 2;
    for (const l of this.listeners.get("error") ?? []) l({} as { data: string });
    this.onerror?.({});
  }
}

/** A fetch that records its calls and answers each with `answer`. */
export function fakeFetch(answer: (url: string, body: string) => { status: number; body: unknown }) {
  const calls: Array<{ url: string; body: string }> = [];
  const fetch: FetchLike = async function (this: unknown, url, init) {
    // As a browser's fetch: called on anything but the global object, it throws.
    if (this !== undefined && this !== globalThis) throw new TypeError("Illegal invocation");
    calls.push({ url, body: init.body });
    const a = answer(url, init.body);
    return { status: a.status, text: async () => JSON.stringify(a.body) };
  };
  return { fetch, calls };
}
