// The SSE transport (docs/protocol.md "SSE transport") behind the WebSocket-like interface the
// client drives, so that reconnects, rejoins with `since`, the send queue and the room API stay
// the client's, whichever transport carries them. Frames arrive as events of `GET /sse` (their
// `data` is the WebSocket frame's JSON); commands go where SSE allows: `publish` is a
// `POST /publish`, `join`/`leave` reopen the stream with the new set of rooms (resuming from the
// last kept message's id), `ping` is answered here while the stream is open.

import type { WebSocketConstructor, WebSocketLike } from "./client.js";

/** The part of the browser EventSource the transport uses (a fake one in tests). */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: string, listener: (ev: { data: string; lastEventId?: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (
  url: string,
  init?: { withCredentials?: boolean },
) => EventSourceLike;

/** The part of `fetch` the transport uses. */
export type FetchLike = (
  url: string,
  init: { method: string; body: string; headers: Record<string, string>; credentials?: "include" },
) => Promise<{ status: number; text(): Promise<string> }>;

export interface SseTransportOptions {
  /** Default globalThis.EventSource. */
  EventSource?: EventSourceConstructor;
  /** Default globalThis.fetch. */
  fetch?: FetchLike;
  /** The query parameter carrying the token in the client's URL (default "token"). */
  tokenParam?: string;
  /** Send cookies (a token in `auth.token_cookie`) with the stream and the publishes. */
  withCredentials?: boolean;
}

/** Every event type a node sends on the stream. */
const EVENTS = [
  "welcome",
  "joined",
  "left",
  "message",
  "notification",
  "broadcast",
  "member_joined",
  "member_left",
  "error",
  "token_expiring",
  "close",
] as const;

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** `ws(s)://host/anything?token=…` → the origin `http(s)://host` and the token. */
function endpoints(url: string, tokenParam: string): { origin: string; token: string | null } {
  const u = new URL(url);
  const protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  return { origin: `${protocol}//${u.host}`, token: u.searchParams.get(tokenParam) };
}

/** Whether an EventSource is available (given, or the browser's). */
export function sseAvailable(opts: SseTransportOptions = {}): boolean {
  return !!(opts.EventSource ?? (globalThis as { EventSource?: unknown }).EventSource);
}

/**
 * A WebSocket constructor whose sockets speak SSE to a roomcast node: pass it as
 * `options.WebSocket`, or let the client fall back to it (`transport: "auto"`).
 */
export function sseTransport(opts: SseTransportOptions = {}): WebSocketConstructor {
  const tokenParam = opts.tokenParam ?? "token";
  return class SseSocket implements WebSocketLike {
    readyState = CONNECTING;
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: { data: unknown }) => void) | null = null;
    onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;

    private readonly origin: string;
    private readonly token: string | null;
    private readonly ES: EventSourceConstructor;
    private readonly fetch: FetchLike;
    private es: EventSourceLike | null = null;
    /** The rooms of the stream, with the id of the `join` not yet answered. */
    private readonly rooms = new Map<string, string | number | undefined>();
    /** The last kept message's id (or the first `since` asked): the stream resumes from it. */
    private lastEventId: string | undefined;
    private reopenTimer: ReturnType<typeof setTimeout> | undefined;

    constructor(url: string) {
      const ES = opts.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
      const f = opts.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
      if (!ES || !f) throw new Error("roomcast: SSE needs EventSource and fetch");
      this.ES = ES;
      this.fetch = f;
      ({ origin: this.origin, token: this.token } = endpoints(url, tokenParam));
      this.openStream();
    }

    send(data: string): void {
      if (this.readyState !== OPEN) throw new Error(`send on a socket in state ${this.readyState}`);
      if (data === "ping") return this.later("pong");
      let cmd: { type?: string; room?: string; id?: string | number; since?: string };
      try {
        cmd = JSON.parse(data);
      } catch {
        return this.later(JSON.stringify({ type: "error", code: "bad_request", message: "not JSON" }));
      }
      const id = cmd.id;
      switch (cmd.type) {
        case "join":
          if (typeof cmd.room !== "string") break;
          this.rooms.set(cmd.room, id);
          if (cmd.since !== undefined && this.lastEventId === undefined) this.lastEventId = cmd.since;
          return this.scheduleReopen();
        case "leave":
          if (typeof cmd.room !== "string") break;
          this.rooms.delete(cmd.room);
          this.scheduleReopen();
          return this.later(JSON.stringify({ type: "left", room: cmd.room, id }));
        case "publish":
          return void this.publish(data, id);
        case "ping":
          return this.later(JSON.stringify({ type: "pong", id }));
      }
      this.later(
        JSON.stringify({ type: "error", code: "bad_request", message: `${cmd.type} is not available over SSE`, id }),
      );
    }

    close(code = 1000, reason = ""): void {
      if (this.readyState === CLOSED) return;
      this.finish(code, reason);
    }

    // ---- the stream ----

    private url(): string {
      const q = new URLSearchParams();
      if (this.token) q.set("token", this.token);
      for (const room of this.rooms.keys()) q.append("room", room);
      if (this.lastEventId !== undefined) q.set("last_event_id", this.lastEventId);
      return `${this.origin}/sse?${q.toString()}`;
    }

    private openStream(): void {
      const es = new this.ES(this.url(), { withCredentials: !!opts.withCredentials });
      this.es = es;
      for (const type of EVENTS) {
        es.addEventListener(type, (ev) => {
          // The browser's own `error` events (the stream failed) carry no data: `onerror`'s.
          if (this.es === es && typeof ev.data === "string") this.event(type, ev);
        });
      }
      // The browser would reconnect by itself; the client does it instead (with its backoff and
      // a fresh token), so any failure ends this socket.
      es.onerror = () => {
        if (this.es === es) this.finish(1006, "event stream failed");
      };
    }

    private event(type: (typeof EVENTS)[number], ev: { data: string; lastEventId?: string }): void {
      if (ev.lastEventId) this.lastEventId = ev.lastEventId;
      if (type === "close") {
        let code = 1006;
        let reason = "";
        try {
          ({ code, reason } = JSON.parse(ev.data) as { code: number; reason: string });
        } catch {
          /* not ours: a plain drop */
        }
        return this.finish(code, reason);
      }
      if (type === "welcome") {
        // A reopened stream (new rooms) is the same connection for the client.
        if (this.readyState !== CONNECTING) return;
        this.readyState = OPEN;
        this.onopen?.({});
        return this.deliver(ev.data);
      }
      if (type === "joined" || type === "error") {
        // The node names the room in `id`; the client waits for its own command's id.
        const frame = JSON.parse(ev.data) as { id?: unknown; room?: string };
        if (typeof frame.id === "string" && this.rooms.has(frame.id)) {
          const room = frame.id;
          const pending = this.rooms.get(room);
          this.rooms.set(room, undefined);
          if (pending === undefined) return; // joined again by a reopen: nothing to answer
          if (type === "error") this.rooms.delete(room);
          return this.deliver(JSON.stringify({ ...frame, id: pending }));
        }
      }
      this.deliver(ev.data);
    }

    private scheduleReopen(): void {
      // Every join of a resync in one reopen.
      if (this.reopenTimer !== undefined) return;
      this.reopenTimer = setTimeout(() => {
        this.reopenTimer = undefined;
        if (this.readyState !== OPEN) return;
        this.es?.close();
        this.openStream();
      }, 0);
    }

    private async publish(body: string, id: string | number | undefined): Promise<void> {
      const q = this.token ? `?token=${encodeURIComponent(this.token)}` : "";
      let text: string;
      try {
        // Called as a plain function: a browser's fetch refuses another `this` (Illegal invocation).
        const fetch = this.fetch;
        const answer = await fetch(`${this.origin}/publish${q}`, {
          method: "POST",
          body,
          // text/plain: a "simple" request, no CORS preflight.
          headers: { "content-type": "text/plain" },
          ...(opts.withCredentials ? { credentials: "include" as const } : {}),
        });
        text = await answer.text();
        JSON.parse(text);
      } catch (e) {
        text = JSON.stringify({ type: "error", code: "unavailable", message: `publish failed: ${String(e)}`, id });
      }
      if (this.readyState === OPEN) this.deliver(text);
    }

    private later(data: string): void {
      setTimeout(() => {
        if (this.readyState === OPEN) this.deliver(data);
      }, 0);
    }

    private deliver(data: string): void {
      this.onmessage?.({ data });
    }

    private finish(code: number, reason: string): void {
      if (this.readyState === CLOSED) return;
      this.readyState = CLOSED;
      clearTimeout(this.reopenTimer);
      const es = this.es;
      this.es = null;
      es?.close();
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }
  };
}
