// A fake WebSocket for the unit tests, driven from the "server" side by the test. Like a
// browser's, its close event comes asynchronously after close(), and a socket that never opened
// ends with error + close 1006 (how a browser shows HTTP 401/403/429/503 at the handshake).
import type { WebSocketLike } from "../src/client.js";

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
    FakeWebSocket.seq = 0;
  }
  static get last(): FakeWebSocket {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]!;
  }

  readyState = 0;
  sent: string[] = [];
  closedWith: { code?: number; reason?: string } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Answer join/leave/publish/ping commands like a roomcast node with no history. */
  autoReply = false;
  private static seq = 0;

  constructor(readonly url: string) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error(`send on a socket in state ${this.readyState}`);
    this.sent.push(data);
    if (this.autoReply) this.reply(data);
  }

  close(code?: number, reason?: string): void {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.closedWith = { code, reason };
    setTimeout(() => {
      this.readyState = 3;
      this.onclose?.({ code: code ?? 1005, reason: reason ?? "" });
    }, 50);
  }

  // ---- the server's side ----

  /** The JSON commands sent so far (heartbeat text frames left out). */
  get commands(): Array<Record<string, unknown>> {
    return this.sent.filter((s) => s.startsWith("{")).map((s) => JSON.parse(s));
  }
  get pings(): number {
    return this.sent.filter((s) => s === "ping").length;
  }

  open(): this {
    this.readyState = 1;
    this.onopen?.({});
    return this;
  }
  /** Open and send `welcome`, as roomcast does first. */
  accept(opts: { autoReply?: boolean } = {}): this {
    this.autoReply = opts.autoReply ?? false;
    this.open();
    this.push({ type: "welcome", conn_id: `c-${FakeWebSocket.instances.indexOf(this)}`, node: "n1", user: null, heartbeat_ms: 25000 });
    return this;
  }
  push(frame: unknown): void {
    if (this.readyState !== 1) throw new Error("push on a socket that is not open");
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }
  /** The server closes the connection (or the network drops it: 1006). */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Refused at the handshake or nothing listening: error, then close 1006, never open. */
  refuse(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }

  private reply(data: string): void {
    if (data === "ping") return this.push("pong");
    const cmd = JSON.parse(data) as { type: string; id?: string; room?: string; data?: unknown; since?: string };
    switch (cmd.type) {
      case "join":
        return this.push({ type: "joined", room: cmd.room, id: cmd.id, ...(cmd.since !== undefined ? { recovered: false } : {}) });
      case "leave":
        return this.push({ type: "left", room: cmd.room, id: cmd.id });
      case "publish": {
        const msgId = `m${++FakeWebSocket.seq}`;
        this.push({ type: "ack", room: cmd.room, msg_id: msgId, id: cmd.id });
        return this.push({ type: "message", room: cmd.room, id: msgId, data: cmd.data, from: "me", ts: 1 });
      }
      case "ping":
        return this.push({ type: "pong", id: cmd.id });
    }
  }
}
