// The framework-free core of @roomcast/solid: one logical connection to a roomcast gateway that
// survives reconnects. Solid bindings (solid.ts) and the WebSocket-like adapter (ws.ts) sit on it.
//
// What it does that @solid-primitives/websocket 1.3.2 does not:
// - reconnects with capped exponential backoff and jitter, and reads the close code: 1001
//   (shutdown) and 4001 (token expired) reconnect at once, 4000 (the backend's "reconnect")
//   reconnects after the usual backoff, 4403 (forbidden, revoked) stops in the `forbidden` state,
//   1008 (policy) backs off hard, repeated
//   failures before `open` (what a browser sees of HTTP 401/403/429/503) back off hard;
// - one reconnect per dead connection: a socket it gave up on can never schedule another;
// - `close()` during a reconnect gap stays closed;
// - a bounded send queue (publish while disconnected), flushed after the rooms are rejoined;
// - rejoins every room after a reconnect, with `since` = the last message id seen when the room
//   keeps history, drops replayed duplicates, and reports `recovered: false`;
// - `getToken()` is called before every connect, and when the server warns that the token runs
//   out (`token_expiring`): the new token goes in band (`refresh`), with no reconnect; only a
//   refused refresh, or a getToken() that fails, reconnects with a fresh token.

import {
  CloseCode,
  type AckFrame,
  type BroadcastFrame,
  type Command,
  type ErrorFrame,
  type JoinCommand,
  type JoinedFrame,
  type LeftFrame,
  type MemberFrame,
  type MessageFrame,
  type NotificationFrame,
  type PongFrame,
  type PresenceFrame,
  type PresenceMember,
  type RefreshedFrame,
  type ServerFrame,
  type TokenExpiringFrame,
  type WelcomeFrame,
} from "./protocol.js";
import {
  sseAvailable,
  sseTransport,
  type EventSourceConstructor,
  type FetchLike,
  type SseTransportOptions,
} from "./sse.js";

/** The part of the browser WebSocket that the client uses (a fake one in tests). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * `forbidden`: the server closed with 4403 (the backend disconnected us for good, or revoked
 * our token); no reconnect until `connect()` or `reconnect()` (after a new login).
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed" | "forbidden";

export interface BackoffOptions {
  /** First delay after a failure (ms). Default 500. */
  initialMs?: number;
  /** Cap of the exponential growth (ms). Default 30 000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Fraction of each delay that is random: the delay is d·(1 − jitter·random()). Default 0.5. */
  jitter?: number;
}
export interface RefusalOptions {
  /**
   * Consecutive connection attempts that fail before `open` after which the gateway is taken to
   * be refusing us (HTTP 401/403/429/503 at the handshake look the same to a browser as a node
   * that is down). Default 5 (about 8 s of normal backoff, enough for a node restart).
   */
  after?: number;
  /** Delay once refused (ms); doubles on every further refusal. Default 60 000. */
  delayMs?: number;
  /** Cap for refusal and policy-violation delays (ms). Default 600 000. */
  maxMs?: number;
}
export interface HeartbeatOptions {
  /** Send the text heartbeat this long after the last frame received (ms). Default 15 000. */
  intervalMs?: number;
  /** No frame within this long after a heartbeat: the connection is dead (ms). Default 5 000. */
  timeoutMs?: number;
  /** Default "ping" (roomcast answers "pong"). */
  message?: string;
}

/** Options of a publish. */
export interface PublishOptions {
  /** Default true: the sender receives its own message too. */
  echo?: boolean;
  /** Conflation key, for rooms matching `conflate.rooms` on the gateway. */
  key?: string;
}

export interface RoomcastOptions {
  /**
   * Called before every connect (its token goes in the `token` query parameter), and on
   * `token_expiring` (its token is sent with `refresh`, in band).
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Query parameter for the token. Default "token". */
  tokenParam?: string;
  /** WebSocket implementation. Default globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  refusal?: RefusalOptions;
  /** First delay after a close with 1008 (policy violation); doubles on repeats. Default 30 000. */
  policyDelayMs?: number;
  /** A connection open this long resets the backoff (ms). Default 5 000. */
  stableMs?: number;
  /** Text heartbeat; `false` turns it off. */
  heartbeat?: HeartbeatOptions | false;
  /** Commands (publish, ping, raw frames) kept while disconnected; more are refused. Default 100. */
  maxQueue?: number;
  /** Message ids remembered per room to drop replayed duplicates. Default 1 000. */
  dedupeWindow?: number;
  /** Source of randomness for jitter (tests pass their own). Default Math.random. */
  random?: () => number;
  /** Connect at once. Default true; false waits for `connect()`. */
  autoConnect?: boolean;
  /**
   * "websocket", "sse" (Server-Sent Events and HTTP publish on the same port, for networks that
   * do not pass WebSockets), or "auto" (default): WebSocket, and SSE from the moment
   * `sseAfter` WebSocket attempts in a row failed before opening, when EventSource exists; an
   * SSE attempt that fails before opening too (a node that is down) goes back to the WebSocket,
   * so a restart does not leave the page on SSE. Refused attempts keep the refusal's delay.
   */
  transport?: "websocket" | "sse" | "auto";
  /** WebSocket attempts failing before open after which "auto" falls back to SSE. Default 2. */
  sseAfter?: number;
  /** EventSource implementation for SSE. Default globalThis.EventSource. */
  EventSource?: EventSourceConstructor;
  /** fetch implementation for SSE's publishes. Default globalThis.fetch. */
  fetch?: FetchLike;
  /** Send cookies with SSE's stream and publishes (a token in a cookie). Default false. */
  withCredentials?: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the socket had opened: a failure before open is how a handshake refusal looks. */
  wasOpen: boolean;
}

export interface ConnectionInfo {
  state: ConnectionState;
  /** Reconnect attempts since the last stable connection. */
  attempt: number;
  /** Consecutive attempts that failed before `open`. */
  failuresBeforeOpen: number;
  /** Repeated failures before open: probably refused at the handshake; backing off hard. */
  refused: boolean;
  /** When the next attempt starts (Date.now() clock), while `state` is "reconnecting". */
  retryAt: number | null;
  lastClose: CloseInfo | null;
  /** Commands waiting for the connection. */
  queued: number;
  /** The transport of the current (or next) connection. */
  transport: "websocket" | "sse";
}

export interface RoomOptions {
  /** How many recent messages to replay on the first join (rooms with history). */
  history?: number;
  /** Replay every retained message after this id on the first join (rooms with history). */
  since?: string;
  /**
   * Rejoin with `since` = the last message id seen. Default: true when `history` or `since` is
   * given, else false (a room without history answers `recovered: false` to every `since`).
   */
  recover?: boolean;
  /**
   * The room keeps presence (a `presence.rooms` rule matches it): fetch who is in it with the
   * `presence` command after every join and rejoin, and keep it up to date from the
   * `member_joined` / `member_left` events (rules with `events = true`). Default false. A room
   * that keeps no presence (`bad_request` to the automatic fetch) keeps presence undefined.
   */
  presence?: boolean;
}

/** Who is in a room: the last `presence` reply, updated by `member_joined` / `member_left`. */
export interface PresenceState {
  /** Users in the room (exact, across every node). */
  count: number;
  /** At most the rule's `max_members` users, in user-name order. */
  members: PresenceMember[];
  /** `members` is shorter than `count`. */
  truncated: boolean;
}

export interface PresenceEvent {
  room: string;
  presence: PresenceState;
  /** What changed it: a `presence` reply, or a `member_joined` / `member_left` event. */
  cause: PresenceFrame | MemberFrame;
}

export interface JoinedEvent {
  room: string;
  frame: JoinedFrame;
  /** True when this join followed a reconnect. */
  rejoin: boolean;
  /** `frame.recovered`: false means messages may be missing; the app should reload. */
  recovered: boolean | undefined;
  /** The backend joined the connection (a server subscription), not `join()`. */
  server?: boolean;
}

/** The server took the connection out of a room (`left {room, reason}`). */
export interface LeftEvent {
  room: string;
  reason: string;
}

export interface RoomErrorEvent {
  room: string;
  error: RoomcastError;
  /** Whether the room was dropped (forbidden, invalid name, too many rooms). */
  dropped: boolean;
}

export interface ClientEvents {
  state: ConnectionInfo;
  welcome: WelcomeFrame;
  message: MessageFrame;
  joined: JoinedEvent;
  /** The server took the connection out of a room (server unsubscribe). */
  left: LeftEvent;
  /** The rooms the connection is in changed (`rooms`). */
  rooms: string[];
  roomError: RoomErrorEvent;
  notification: NotificationFrame;
  broadcast: BroadcastFrame;
  /** `member_joined` / `member_left`, in any room (also when presence is not tracked). */
  member: MemberFrame;
  /** The presence of a room with `presence: true` changed. */
  presence: PresenceEvent;
  /** An `error` frame that answers no pending command. */
  error: ErrorFrame;
  /** The server warned that the connection's token runs out soon (a refresh follows). */
  tokenExpiring: TokenExpiringFrame;
  /** A refresh was accepted: the connection goes on with the new token. */
  refreshed: RefreshedFrame;
  /** Every frame received, as text, after the client handled it. */
  frame: { data: string; frame: ServerFrame | null };
  /** Each socket that opened (before `welcome`). */
  open: undefined;
  /** Each socket that closed or was given up on. */
  close: CloseInfo;
}

/** A failed command: a roomcast error code, or a client-side one. */
export class RoomcastError extends Error {
  constructor(
    /** A docs/protocol.md error code, or "disconnected", "closed", "queue_full". */
    readonly code: string,
    message: string,
    readonly frame?: ErrorFrame,
  ) {
    super(message);
    this.name = "RoomcastError";
  }
}

/** Client-side close code for a connection given up on because its heartbeat went unanswered:
 * in the private range, apart from the gateway's own codes (4000 is the backend's "reconnect"),
 * so `lastClose` tells the two apart. */
export const HEARTBEAT_TIMEOUT_CODE = 4408;

const OPEN = 1;
const TERMINAL_JOIN_ERRORS = new Set(["invalid_room", "forbidden", "too_many_rooms", "bad_request"]);

interface Pending {
  cmd: Command | { raw: string };
  resolve: (f: ServerFrame) => void;
  reject: (e: RoomcastError) => void;
}

interface RoomEntry {
  name: string;
  opts: RoomOptions;
  recover: boolean;
  lastId: string | undefined;
  joined: boolean;
  everJoined: boolean;
  joinInFlight: boolean;
  seen: Set<string>;
  seenOrder: string[];
  waiters: Array<{ resolve: (e: JoinedEvent) => void; reject: (e: RoomcastError) => void }>;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Failed joins in a row (unavailable, rate_limited, internal), for the retry backoff. */
  joinFailures: number;
  /** Who is in the room (rooms with `opts.presence`), undefined until the first reply. */
  presence: PresenceState | undefined;
  /** Bumped by every presence fetch: only the latest one's reply is applied. */
  presenceSeq: number;
}

type Listener<T> = (value: T) => void;

export class RoomcastClient {
  private readonly url: string | (() => string);
  private readonly o: Required<
    Omit<
      RoomcastOptions,
      "getToken" | "WebSocket" | "heartbeat" | "backoff" | "refusal" | "EventSource" | "fetch"
    >
  > & {
    backoff: Required<BackoffOptions>;
    refusal: Required<RefusalOptions>;
    heartbeat: Required<HeartbeatOptions> | false;
  };
  private readonly getToken: RoomcastOptions["getToken"];
  private readonly Ctor: WebSocketConstructor | undefined;
  private readonly SseCtor: WebSocketConstructor;
  private readonly sseOptions: SseTransportOptions;
  /** SSE carries the connection ("sse", or "auto" after the WebSocket failed to open). */
  private onSse = false;

  private ws: WebSocketLike | null = null;
  private generation = 0;
  private wasOpen = false;
  private welcomed = false;
  private stopped = false;
  private state: ConnectionState = "closed";
  private attempt = 0;
  private failuresBeforeOpen = 0;
  /** WebSocket attempts in a row that failed before open, since the last SSE attempt. */
  private wsFailuresBeforeOpen = 0;
  private refused = false;
  private policyStrikes = 0;
  private fastRetryUsed = false;
  private retryAt: number | null = null;
  private lastClose: CloseInfo | null = null;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setTimeout> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;

  private nextId = 1;
  private readonly queue: Pending[] = [];
  private readonly pending = new Map<string, Pending>();
  private readonly rooms_ = new Map<string, RoomEntry>();
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private lastWelcome: WelcomeFrame | undefined;
  /** Rooms the backend joined this connection to; the server joins them again on reconnect. */
  private readonly serverRooms = new Set<string>();
  /** The socket whose token is being refreshed: one refresh at a time per connection. */
  private refreshing: WebSocketLike | null = null;

  constructor(url: string | (() => string), options: RoomcastOptions = {}) {
    this.url = url;
    this.getToken = options.getToken;
    this.Ctor = options.WebSocket;
    this.sseOptions = {
      EventSource: options.EventSource,
      fetch: options.fetch,
      tokenParam: options.tokenParam,
      withCredentials: options.withCredentials,
    };
    this.SseCtor = sseTransport(this.sseOptions);
    this.onSse = options.transport === "sse";
    const hb = options.heartbeat;
    this.o = {
      tokenParam: options.tokenParam ?? "token",
      policyDelayMs: options.policyDelayMs ?? 30_000,
      stableMs: options.stableMs ?? 5_000,
      maxQueue: options.maxQueue ?? 100,
      dedupeWindow: options.dedupeWindow ?? 1_000,
      random: options.random ?? Math.random,
      autoConnect: options.autoConnect ?? true,
      transport: options.transport ?? "auto",
      sseAfter: options.sseAfter ?? 2,
      withCredentials: options.withCredentials ?? false,
      backoff: { initialMs: 500, maxMs: 30_000, factor: 2, jitter: 0.5, ...options.backoff },
      refusal: { after: 5, delayMs: 60_000, maxMs: 600_000, ...options.refusal },
      heartbeat:
        hb === false ? false : { intervalMs: 15_000, timeoutMs: 5_000, message: "ping", ...hb },
    };
    if (this.o.autoConnect) this.connect();
  }

  // ---- public API ----------------------------------------------------------------------------

  /** Current connection information (a fresh object on every change). */
  get info(): ConnectionInfo {
    return {
      state: this.state,
      attempt: this.attempt,
      failuresBeforeOpen: this.failuresBeforeOpen,
      refused: this.refused,
      retryAt: this.retryAt,
      lastClose: this.lastClose,
      queued: this.queue.length,
      transport: this.onSse ? "sse" : "websocket",
    };
  }

  /**
   * The rooms this connection is in now: joined with `join()` and answered, and joined by the
   * backend (server subscriptions, the token's `subs`), in name order.
   */
  get rooms(): string[] {
    const names = new Set(this.serverRooms);
    for (const r of this.rooms_.values()) if (r.joined) names.add(r.name);
    return [...names].sort();
  }

  /** The last `welcome` (of the current or previous connection). */
  get welcome(): WelcomeFrame | undefined {
    return this.lastWelcome;
  }

  /** Rooms this client is in (joined now, or to be joined on the next connection). */
  get roomNames(): string[] {
    return [...this.rooms_.keys()];
  }

  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set!.delete(fn as Listener<never>);
  }

  /** Start connecting (after `close()`, or with `autoConnect: false`). */
  connect(): void {
    if (!this.stopped && (this.ws || this.reconnectTimer !== undefined || this.state === "connecting"))
      return;
    this.stopped = false;
    void this.open();
  }

  /** Reconnect now, forgetting the backoff (a "retry now" button, or after a new login). */
  reconnect(): void {
    this.stopped = false;
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.wsFailuresBeforeOpen = 0;
    this.refused = false;
    this.policyStrikes = 0;
    this.clearReconnect();
    if (this.ws) this.dropSocket(CloseCode.normal, "reconnect", this.wasOpen, false, false);
    void this.open();
  }

  /** Close for good: no reconnect until `connect()`; queued commands are refused. */
  close(): void {
    this.stopped = true;
    this.clearReconnect();
    this.generation++; // a getToken() still running must not open a socket
    if (this.ws) this.dropSocket(CloseCode.normal, "closed by client", this.wasOpen, false);
    for (const p of this.queue.splice(0)) p.reject(new RoomcastError("closed", "client closed"));
    for (const r of this.rooms_.values()) this.clearRoomRetry(r);
    this.setState("closed");
  }

  /**
   * Join a room now, or on the next connection, and on every reconnect after. Resolves on the
   * first `joined`; rejects when the room is refused (and dropped) or the client is closed.
   */
  join(room: string, opts: RoomOptions = {}): Promise<JoinedEvent> {
    let r = this.rooms_.get(room);
    if (!r) {
      r = {
        name: room,
        opts,
        recover: opts.recover ?? (opts.history !== undefined || opts.since !== undefined),
        lastId: undefined,
        joined: false,
        everJoined: false,
        joinInFlight: false,
        seen: new Set(),
        seenOrder: [],
        waiters: [],
        retryTimer: undefined,
        joinFailures: 0,
        presence: undefined,
        presenceSeq: 0,
      };
      this.rooms_.set(room, r);
      if (this.welcomed) this.sendJoin(r);
    }
    const entry = r;
    return new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  /** Leave a room: it is not rejoined any more. */
  leave(room: string): Promise<LeftFrame | undefined> {
    const r = this.rooms_.get(room);
    if (!r) return Promise.resolve(undefined);
    this.rooms_.delete(room);
    this.clearRoomRetry(r);
    for (const w of r.waiters.splice(0)) w.reject(new RoomcastError("left", `left ${room}`));
    if (!this.welcomed || (!r.joined && !r.joinInFlight)) return Promise.resolve(undefined);
    return this.request({ type: "leave", room }, false).then((f) => f as LeftFrame);
  }

  /** Publish to a joined room; queued (bounded) while disconnected. Resolves with the `ack`. */
  publish(room: string, data: unknown, opts: PublishOptions = {}): Promise<AckFrame> {
    const cmd: Command = { type: "publish", room, data };
    if (opts.echo !== undefined) cmd.echo = opts.echo;
    if (opts.key !== undefined) cmd.key = opts.key;
    return this.request(cmd).then((f) => f as AckFrame);
  }

  /** Who is in a room with `presence: true` (undefined until the first `presence` reply). */
  presence(room: string): PresenceState | undefined {
    return this.rooms_.get(room)?.presence;
  }

  /**
   * Fetch who is in a joined room now (the `presence` command) and keep the answer as the
   * room's presence (rooms joined with `presence: true`; done after every join by itself).
   */
  refreshPresence(room: string): Promise<PresenceState> {
    const r = this.rooms_.get(room);
    if (!r) return Promise.reject(new RoomcastError("not_joined", `not in ${room}`));
    return this.fetchPresence(r);
  }

  /** The JSON `ping` command; resolves with `pong`. */
  ping(): Promise<PongFrame> {
    return this.request({ type: "ping" }).then((f) => f as PongFrame);
  }

  /**
   * Send a command (an `id` is added when missing); queued (bounded) while disconnected.
   * Resolves with its reply; rejects with its `error`, or "disconnected" when the connection
   * dropped before the reply (it may or may not have been applied), or "queue_full".
   */
  request(cmd: Command, queue = true): Promise<ServerFrame> {
    return new Promise((resolve, reject) => this.submit(cmd, resolve, reject, queue));
  }

  /** request() with callbacks that run synchronously, in frame order. */
  private submit(
    cmd: Command,
    resolve: (f: ServerFrame) => void,
    reject: (e: RoomcastError) => void,
    queue: boolean,
  ): void {
    if (this.stopped) return reject(new RoomcastError("closed", "client closed"));
    const full = { ...cmd, id: cmd.id ?? `c${this.nextId++}` } as Command;
    const p: Pending = { cmd: full, resolve, reject };
    if (this.welcomed) return this.transmit(p);
    if (!queue) return reject(new RoomcastError("disconnected", "not connected"));
    this.enqueue(p);
  }

  /**
   * Send a text frame as it is (the WebSocket-like adapter); queued (bounded) while
   * disconnected. Nothing is matched to its reply. Returns false when refused (queue full).
   */
  sendRaw(data: string): boolean {
    const p: Pending = { cmd: { raw: data }, resolve: () => {}, reject: () => {} };
    if (this.stopped) return false;
    if (this.welcomed) {
      this.transmit(p);
      return true;
    }
    return this.enqueue(p);
  }

  // ---- connection lifecycle ------------------------------------------------------------------

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.setState("connecting");
    let url = typeof this.url === "function" ? this.url() : this.url;
    if (this.getToken) {
      let token: string | null | undefined;
      try {
        token = await this.getToken();
      } catch {
        if (gen !== this.generation || this.stopped) return;
        return this.afterClose({ code: CloseCode.abnormal, reason: "getToken failed", wasOpen: false });
      }
      if (gen !== this.generation || this.stopped) return;
      if (token) url = withParam(url, this.o.tokenParam, token);
    }
    const Ctor = this.onSse
      ? this.SseCtor
      : (this.Ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket);
    if (!Ctor) throw new Error("roomcast: no WebSocket implementation (pass options.WebSocket)");
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (e) {
      return this.afterClose({ code: CloseCode.abnormal, reason: String(e), wasOpen: false });
    }
    this.ws = ws;
    this.wasOpen = false;
    ws.onopen = () => {
      if (this.ws === ws) this.opened(ws);
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.received(ws, ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.dropSocket(ev.code, ev.reason, this.wasOpen, true);
    };
    ws.onerror = () => {}; // a close event follows
  }

  private opened(ws: WebSocketLike): void {
    this.wasOpen = true;
    this.failuresBeforeOpen = 0;
    this.wsFailuresBeforeOpen = 0;
    this.refused = false;
    this.stableTimer = setTimeout(() => {
      // a connection that stays up resets the backoff
      this.attempt = 0;
      this.policyStrikes = 0;
      this.fastRetryUsed = false;
      this.emitState();
    }, this.o.stableMs);
    this.armPing(ws);
    this.emit("open", undefined);
    this.emitState();
  }

  /**
   * Forget the current socket: detach its handlers first, so a late close event of a socket we
   * gave up on can never schedule a second reconnect (the makeHeartbeatWS loop), then close it.
   */
  private dropSocket(
    code: number,
    reason: string,
    wasOpen: boolean,
    closedByPeer: boolean,
    schedule = true,
  ): void {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = null;
    if (!closedByPeer) {
      try {
        ws.close(code === CloseCode.normal || (code >= 3000 && code < 5000) ? code : 1000, reason);
      } catch {
        /* already closing */
      }
    }
    this.afterClose({ code, reason, wasOpen }, schedule);
  }

  private afterClose(info: CloseInfo, schedule = true): void {
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.stableTimer);
    this.pingTimer = this.pongTimer = this.stableTimer = undefined;
    this.welcomed = false;
    this.wasOpen = false;
    this.lastClose = info;
    for (const r of this.rooms_.values()) {
      r.joined = false;
      r.joinInFlight = false;
      this.clearRoomRetry(r);
    }
    // The server joins its rooms again after the reconnect (they are kept for the user).
    this.serverRooms.clear();
    this.emit("rooms", []);
    const lost = [...this.pending.values()];
    this.pending.clear();
    for (const p of lost)
      p.reject(new RoomcastError("disconnected", "connection lost before the reply"));
    this.emit("close", info);
    if (!schedule) return;
    if (this.stopped) return this.setState("closed");
    if (info.wasOpen && info.code === CloseCode.forbidden) {
      // The backend said no: reconnecting would only be refused again (or kicked again).
      this.stopped = true;
      for (const p of this.queue.splice(0)) p.reject(new RoomcastError("forbidden", info.reason));
      return this.setState("forbidden");
    }
    this.scheduleReconnect(this.delayAfter(info));
  }

  /** How long to wait before the next attempt, from how the last one ended. */
  private delayAfter({ code, wasOpen }: CloseInfo): number {
    const { refusal } = this.o;
    if (!wasOpen) {
      // Refused at the handshake (401/403/429/503), or the node is down: a browser cannot tell.
      this.failuresBeforeOpen++;
      if (this.o.transport === "auto" && this.onSse) {
        // SSE did not open either: the node is down (or refuses us), not a network that only
        // stops WebSockets. Back to the WebSocket; SSE again after `sseAfter` more failures.
        this.onSse = false;
        this.wsFailuresBeforeOpen = 0;
      } else if (this.o.transport === "auto") {
        this.wsFailuresBeforeOpen++;
        if (this.wsFailuresBeforeOpen >= this.o.sseAfter && sseAvailable(this.sseOptions)) {
          // Perhaps a network that does not pass WebSockets: try SSE, at once unless refused.
          this.onSse = true;
          if (this.failuresBeforeOpen < refusal.after) return 0;
        }
      }
      if (this.failuresBeforeOpen >= refusal.after) {
        this.refused = true;
        const n = this.failuresBeforeOpen - refusal.after;
        return this.jitter(Math.min(refusal.maxMs, refusal.delayMs * 2 ** n));
      }
      return this.backoff();
    }
    if (code === CloseCode.policyViolation) {
      this.policyStrikes++;
      return this.jitter(Math.min(refusal.maxMs, this.o.policyDelayMs * 2 ** (this.policyStrikes - 1)));
    }
    if ((code === CloseCode.goingAway || code === CloseCode.tokenExpired) && !this.fastRetryUsed) {
      // Shutdown (go to another node) or expired token (getToken() gives a new one): at once,
      // once per stable connection, so a node that keeps closing us cannot cause a storm.
      this.fastRetryUsed = true;
      return 0;
    }
    return this.backoff();
  }

  private backoff(): number {
    const { initialMs, maxMs, factor } = this.o.backoff;
    const d = Math.min(maxMs, initialMs * factor ** this.attempt);
    this.attempt++;
    return this.jitter(d);
  }

  private jitter(d: number): number {
    return Math.round(d * (1 - this.o.backoff.jitter * this.o.random()));
  }

  private scheduleReconnect(delay: number): void {
    this.clearReconnect();
    this.retryAt = Date.now() + delay;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.retryAt = null;
      void this.open();
    }, delay);
    this.setState("reconnecting");
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.retryAt = null;
  }

  // ---- heartbeat -----------------------------------------------------------------------------

  /** The next heartbeat goes `intervalMs` after the last frame received. */
  private armPing(ws: WebSocketLike): void {
    const hb = this.o.heartbeat;
    if (!hb) return;
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pongTimer = undefined;
    this.pingTimer = setTimeout(() => {
      if (this.ws !== ws || ws.readyState !== OPEN) return;
      ws.send(hb.message);
      this.pongTimer = setTimeout(() => {
        if (this.ws !== ws) return;
        // Nothing came back: give this socket up (its close event is ignored) and reconnect
        // once, with backoff. The new socket gets its own, fresh heartbeat.
        this.dropSocket(HEARTBEAT_TIMEOUT_CODE, "heartbeat timeout", true, false);
      }, hb.timeoutMs);
    }, hb.intervalMs);
  }

  // ---- frames --------------------------------------------------------------------------------

  private received(ws: WebSocketLike, data: unknown): void {
    this.armPing(ws); // any frame proves the connection alive
    if (typeof data !== "string") return; // binary frames are not part of protocol v1
    if (data === "pong") return this.emit("frame", { data, frame: null });
    let f: ServerFrame;
    try {
      f = JSON.parse(data) as ServerFrame;
    } catch {
      return this.emit("frame", { data, frame: null });
    }
    if (!f || typeof f !== "object") return this.emit("frame", { data, frame: null });
    switch (f.type) {
      case "welcome":
        this.lastWelcome = f;
        this.welcomed = true;
        this.emit("welcome", f);
        this.setState("open");
        this.emit("frame", { data, frame: f });
        this.resync();
        return;
      case "message":
        if (!this.onRoomMessage(f)) return; // a replayed duplicate
        break;
      case "notification":
        this.emit("notification", f);
        break;
      case "broadcast":
        this.emit("broadcast", f);
        break;
      case "member_joined":
      case "member_left":
        this.onMember(f);
        break;
      case "token_expiring":
        this.emit("tokenExpiring", f);
        void this.onTokenExpiring(ws);
        break;
      case "joined":
      case "left":
        // No id: the server's own doing (server subscriptions), not a reply.
        if (f.id === undefined) {
          if (f.type === "joined") this.onServerJoined(f);
          else this.onServerLeft(f);
          break;
        }
        this.settle(f);
        break;
      default:
        this.settle(f);
    }
    this.emit("frame", { data, frame: f });
  }

  /** A reply settles its pending command; an error that answers none is an `error` event. */
  private settle(f: ServerFrame): void {
    const id = (f as { id?: unknown }).id;
    const p = id === undefined ? undefined : this.pending.get(String(id));
    if (p) {
      this.pending.delete(String(id));
      if (f.type === "error") p.reject(new RoomcastError(f.code, f.message, f));
      else p.resolve(f);
    } else if (f.type === "error") {
      this.emit("error", f);
    }
  }

  private onServerJoined(f: JoinedFrame): void {
    this.serverRooms.add(f.room);
    const r = this.rooms_.get(f.room);
    if (r) r.joined = true;
    this.emit("joined", { room: f.room, frame: f, rejoin: false, recovered: f.recovered, server: true });
    this.emit("rooms", this.rooms);
  }

  private onServerLeft(f: LeftFrame): void {
    this.serverRooms.delete(f.room);
    const r = this.rooms_.get(f.room);
    if (r) {
      // The backend took us out: joining it again on reconnect would go against it.
      this.rooms_.delete(f.room);
      this.clearRoomRetry(r);
      const error = new RoomcastError(f.reason ?? "left", `the server took this connection out of ${f.room}`);
      for (const w of r.waiters.splice(0)) w.reject(error);
      this.emit("roomError", { room: f.room, error, dropped: true });
    }
    this.emit("left", { room: f.room, reason: f.reason ?? "" });
    this.emit("rooms", this.rooms);
  }

  /**
   * `token_expiring`: a new token from getToken() goes in band with `refresh`, so the connection,
   * its rooms and its place in them stay. Only when the refresh is refused (an `error` reply) or
   * getToken() fails does it reconnect with a fresh token, before the server's close 4001.
   */
  private async onTokenExpiring(ws: WebSocketLike): Promise<void> {
    if (!this.getToken || this.refreshing === ws) return;
    this.refreshing = ws;
    try {
      let token: string | null | undefined;
      try {
        token = await this.getToken();
      } catch {
        token = undefined;
      }
      if (this.ws !== ws || !this.welcomed) return; // gone: the next connect gets its own token
      if (!token) return this.refreshRefused(ws, "getToken failed");
      const reply = await this.request({ type: "refresh", token }, false).catch((e: RoomcastError) => e);
      if (this.ws !== ws) return;
      if (reply instanceof RoomcastError) {
        if (reply.code === "disconnected" || reply.code === "closed") return;
        return this.refreshRefused(ws, `token refresh refused: ${reply.code}`);
      }
      this.emit("refreshed", reply as RefreshedFrame);
    } finally {
      if (this.refreshing === ws) this.refreshing = null;
    }
  }

  /** The token could not be renewed in band: reconnect now, with a fresh one from getToken(). */
  private refreshRefused(ws: WebSocketLike, reason: string): void {
    if (this.ws === ws) this.dropSocket(CloseCode.tokenExpired, reason, true, false);
  }

  private onRoomMessage(m: MessageFrame): boolean {
    const r = this.rooms_.get(m.room);
    if (!r) return true;
    if (r.seen.has(m.id)) return false; // replayed after a rejoin with `since`: already delivered
    r.seen.add(m.id);
    r.seenOrder.push(m.id);
    if (r.seenOrder.length > this.o.dedupeWindow) r.seen.delete(r.seenOrder.shift()!);
    r.lastId = m.id;
    this.emit("message", m);
    return true;
  }

  /** Apply a `member_joined` / `member_left` to the room's presence, keeping `count` consistent. */
  private onMember(f: MemberFrame): void {
    this.emit("member", f);
    const r = this.rooms_.get(f.room);
    const p = r?.presence;
    if (!r || !p) return;
    const at = p.members.findIndex((m) => m.user === f.user);
    let { count, members } = p;
    if (f.type === "member_joined") {
      if (at >= 0) return; // already in the reply that raced this event
      const member: PresenceMember = { user: f.user, conns: 1 };
      if (f.info !== undefined) member.info = f.info;
      members = [...members, member].sort((a, b) =>
        a.user < b.user ? -1 : a.user > b.user ? 1 : 0,
      );
      count++;
    } else {
      if (at >= 0) members = members.filter((_, i) => i !== at);
      else if (!p.truncated) return; // not there: the reply was taken after they left
      count = Math.max(0, count - 1);
    }
    r.presence = { count, members, truncated: members.length < count };
    this.emit("presence", { room: r.name, presence: r.presence, cause: f });
  }

  private fetchPresence(r: RoomEntry): Promise<PresenceState> {
    const seq = ++r.presenceSeq;
    // submit(): the reply is applied synchronously, in frame order with the member events
    return new Promise((resolve, reject) =>
      this.submit(
        { type: "presence", room: r.name },
        (frame) => {
          const f = frame as PresenceFrame;
          const state: PresenceState = { count: f.count, members: f.members ?? [], truncated: !!f.truncated };
          if (this.rooms_.get(r.name) === r && seq === r.presenceSeq) {
            r.presence = state; // replaces what the events built: the reply is the truth
            this.emit("presence", { room: r.name, presence: state, cause: f });
          }
          resolve(state);
        },
        reject,
        false,
      ),
    );
  }

  /** After `welcome`: rejoin every room, then flush what was queued, in order. */
  private resync(): void {
    for (const r of this.rooms_.values()) this.sendJoin(r);
    const queued = this.queue.splice(0);
    for (const p of queued) this.transmit(p);
    if (queued.length) this.emitState();
  }

  private joinCommand(r: RoomEntry): JoinCommand {
    const cmd: JoinCommand = { type: "join", room: r.name };
    const since = r.recover ? (r.lastId ?? r.opts.since) : r.everJoined ? undefined : r.opts.since;
    if (since !== undefined) cmd.since = since;
    else if (r.opts.history !== undefined && (!r.everJoined || r.recover)) cmd.history = r.opts.history;
    return cmd;
  }

  private sendJoin(r: RoomEntry): void {
    if (r.joinInFlight) return;
    const rejoin = r.everJoined;
    const cmd = this.joinCommand(r);
    r.joinInFlight = true;
    const gen = this.generation;
    this.submit(
      cmd,
      (f) => {
        if (this.rooms_.get(r.name) !== r) return; // left meanwhile
        r.joinInFlight = false;
        r.joinFailures = 0;
        r.joined = true;
        r.everJoined = true;
        const frame = f as JoinedFrame;
        const ev: JoinedEvent = { room: r.name, frame, rejoin, recovered: frame.recovered };
        for (const w of r.waiters.splice(0)) w.resolve(ev);
        this.emit("joined", ev);
        this.emit("rooms", this.rooms);
        if (r.opts.presence && this.rooms_.get(r.name) === r) {
          // who is in the room now (also after a rejoin: events were missed while away)
          this.fetchPresence(r).catch((e: RoomcastError) => {
            if (this.rooms_.get(r.name) !== r || e.code === "disconnected") return;
            // "presence is not kept for this room": no rule matches it; presence stays undefined
            if (e.code === "bad_request") return;
            this.emit("roomError", { room: r.name, error: e, dropped: false });
          });
        }
      },
      (e: RoomcastError) => {
        if (this.rooms_.get(r.name) !== r) return;
        r.joinInFlight = false;
        if (e.code === "disconnected") return; // rejoined on the next connection
        const dropped = TERMINAL_JOIN_ERRORS.has(e.code);
        if (dropped) {
          this.rooms_.delete(r.name);
          for (const w of r.waiters.splice(0)) w.reject(e);
        } else if (gen === this.generation) {
          // unavailable, rate_limited, internal: try again later on this connection, backing off
          const { initialMs, maxMs, factor } = this.o.backoff;
          const delay = Math.min(maxMs, 2 * initialMs * factor ** r.joinFailures++);
          r.retryTimer = setTimeout(() => {
            r.retryTimer = undefined;
            if (this.rooms_.get(r.name) === r && this.welcomed && !r.joined) this.sendJoin(r);
          }, this.jitter(delay));
        }
        this.emit("roomError", { room: r.name, error: e, dropped });
      },
      false,
    );
  }

  private clearRoomRetry(r: RoomEntry): void {
    if (r.retryTimer !== undefined) clearTimeout(r.retryTimer);
    r.retryTimer = undefined;
  }

  private transmit(p: Pending): void {
    const ws = this.ws!;
    if ("raw" in p.cmd) {
      ws.send(p.cmd.raw);
      return p.resolve(undefined as never);
    }
    this.pending.set(String(p.cmd.id), p);
    ws.send(JSON.stringify(p.cmd));
  }

  private enqueue(p: Pending): boolean {
    if (this.queue.length >= this.o.maxQueue) {
      p.reject(new RoomcastError("queue_full", `send queue full (${this.o.maxQueue} commands)`));
      return false;
    }
    this.queue.push(p);
    this.emitState();
    return true;
  }

  // ---- events --------------------------------------------------------------------------------

  private setState(s: ConnectionState): void {
    this.state = s;
    this.emitState();
  }

  private emitState(): void {
    this.emit("state", this.info);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<ClientEvents[K]>)(value);
      } catch (e) {
        // a listener's bug must not break the connection
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

function withParam(url: string, name: string, value: string): string {
  try {
    const u = new URL(url);
    u.searchParams.set(name, value);
    return u.toString();
  } catch {
    return `${url}${url.includes("?") ? "&" : "?"}${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
  }
}
