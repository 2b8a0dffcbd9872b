// Publishing straight to Redis (docs/protocol.md "Redis channels", "Control envelopes"): a plain
// PUBLISH of the gateway's envelope on its channels, and for history rooms the Redis Function
// the gateway itself uses (`FCALL roomcast_publish 1 CHANNEL PAYLOAD [SIZE TTL_S]`), which
// keeps, numbers and publishes in one step. Works with the app's own Redis client through one
// small structural interface (`RedisCommander`), or with the tiny built-in client of
// `./resp.ts` (`connectRedis`).

import { randomUUID } from "node:crypto";
import { RoomcastError } from "./errors.js";
import { globMatch, isValidRoom } from "./rooms.js";

/**
 * The one thing this package needs of a Redis client: send a command, get its reply.
 * node-redis (v4, v5) has it as is (`createClient()`); ioredis through `fromIoredis(redis)`;
 * the built-in `connectRedis(url)` too.
 */
export interface RedisCommander {
  sendCommand(args: string[]): Promise<unknown>;
}

/** ioredis (or anything with `call(command, ...args)`) as a `RedisCommander`. */
export function fromIoredis(client: { call(command: string, ...args: string[]): Promise<unknown> }): RedisCommander {
  return { sendCommand: ([command, ...args]) => client.call(command, ...args) };
}

/** The gateway's `history.rooms` rule: rooms matching `pattern` keep their last `size`
 * messages for `ttl_s` seconds. Give the same rules as the gateway's configuration. */
export interface HistoryRule {
  pattern: string;
  size?: number;
  /** `ttl_s` of the gateway's rule. */
  ttlS?: number;
}

export interface RedisPublisherOptions {
  /** `redis.prefix` of the gateway (default `roomcast:`). */
  prefix?: string;
  /** The gateway's `history.rooms` rules: a publish to a matching room goes through
   * `roomcast_publish` (kept, numbered, then published). First matching rule wins. */
  history?: HistoryRule[];
  /** `redis.cluster = true`: room and user channels are shard channels (`SPUBLISH`; the client
   * must route commands by key, as cluster clients do). */
  cluster?: boolean;
}

/** What a publish gave: the message id, and (plain `PUBLISH`) how many gateway subscriptions
 * received it (0: no node has a member there right now; the message is gone). */
export interface RedisPublished {
  id: string;
  receivers?: number;
}

export interface RedisPublishOptions {
  /** Override the history rules for this call: `true` keeps with the room's last size / ttl
   * (else 100 messages, 3600 s), an object with these, `false` a plain PUBLISH. */
  history?: boolean | { size?: number; ttlS?: number };
}

function asCount(reply: unknown): number | undefined {
  if (typeof reply === "number") return reply;
  if (typeof reply === "bigint") return Number(reply);
  if (typeof reply === "string" && /^\d+$/.test(reply)) return Number(reply);
  return undefined;
}

function replyText(reply: unknown): string {
  if (typeof reply === "string") return reply;
  if (reply instanceof Uint8Array) return Buffer.from(reply).toString("utf8");
  return String(reply);
}

/**
 * Publishes into roomcast through Redis, without going through a gateway node.
 *
 * ```ts
 * const rc = new RoomcastRedis(await connectRedis("redis://127.0.0.1:6379"), {
 *   history: [{ pattern: "chat:*", size: 100, ttlS: 3600 }],   // as in the gateway's config
 * });
 * await rc.publish("chat:lobby", { text: "deploy finished" });   // FCALL roomcast_publish
 * await rc.notify("42", { kind: "invoice-paid" });               // PUBLISH roomcast:user:42
 * ```
 */
export class RoomcastRedis {
  readonly prefix: string;
  private readonly client: RedisCommander;
  private readonly rules: HistoryRule[];
  private readonly cluster: boolean;

  constructor(client: RedisCommander, options: RedisPublisherOptions = {}) {
    this.client = client;
    this.prefix = options.prefix ?? "roomcast:";
    this.rules = options.history ?? [];
    this.cluster = options.cluster ?? false;
  }

  /** The channel of a room (`roomcast:room:ROOM`). */
  roomChannel(room: string): string {
    return `${this.prefix}room:${room}`;
  }

  /** The channel of a user (`roomcast:user:USER`). */
  userChannel(user: string): string {
    return `${this.prefix}user:${user}`;
  }

  /** The broadcast channel (`roomcast:broadcast`). */
  get broadcastChannel(): string {
    return `${this.prefix}broadcast`;
  }

  /** A `message` to every member of `room`. History rooms (by the rules, or `options.history`)
   * go through `FCALL roomcast_publish`, so the message is kept and gets an `h…-N` id; other
   * rooms get a plain PUBLISH carrying an id of ours, which every node uses. */
  async publish(room: string, data: unknown, options: RedisPublishOptions = {}): Promise<RedisPublished> {
    if (!isValidRoom(room)) throw new RoomcastError(0, "invalid_room", `room ${JSON.stringify(room)}: room names are 1 to 128 bytes of A-Z a-z 0-9 _ - . : /`);
    const retention = this.retention(room, options.history);
    if (retention) {
      const args = ["FCALL", "roomcast_publish", "1", this.roomChannel(room), JSON.stringify({ data: data ?? null })];
      if (retention.size !== undefined || retention.ttlS !== undefined) {
        args.push(String(retention.size ?? 100), String(retention.ttlS ?? 3600));
      }
      const reply = await this.send(args, "FCALL roomcast_publish");
      return { id: replyText(reply) };
    }
    return this.publishEnvelope(this.cluster ? "SPUBLISH" : "PUBLISH", this.roomChannel(room), data);
  }

  /** A `notification` to every connection of `user`, on every node. */
  async notify(user: string, data: unknown): Promise<RedisPublished> {
    checkUser(user);
    return this.publishEnvelope(this.cluster ? "SPUBLISH" : "PUBLISH", this.userChannel(user), data);
  }

  /** A `broadcast` to every connection on every node. */
  async broadcast(data: unknown): Promise<RedisPublished> {
    return this.publishEnvelope("PUBLISH", this.broadcastChannel, data);
  }

  /** The disconnect control envelope: on the user's channel (every connection of `user`, or
   * only `connId` among them), or on the broadcast channel for a `connId` alone. Returns how
   * many subscriptions received it. */
  async disconnect(target: { user?: string; connId?: string; code?: 4000 | 4403; reason?: string }): Promise<number> {
    if (target.user === undefined && target.connId === undefined) throw new TypeError("disconnect: give user or connId");
    const envelope: Record<string, unknown> = { control: "disconnect" };
    if (target.connId !== undefined) envelope.conn_id = target.connId;
    if (target.code !== undefined) envelope.code = target.code;
    if (target.reason !== undefined) envelope.reason = target.reason;
    let verb = "PUBLISH";
    let channel = this.broadcastChannel;
    if (target.user !== undefined) {
      checkUser(target.user);
      channel = this.userChannel(target.user);
      if (this.cluster) verb = "SPUBLISH";
    }
    const reply = await this.send([verb, channel, JSON.stringify(envelope)], verb);
    return asCount(reply) ?? 0;
  }

  /** Shorthand for `disconnect({ user, code, reason })`. */
  async kick(user: string, options: { code?: 4000 | 4403; reason?: string } = {}): Promise<number> {
    return this.disconnect({ user, ...options });
  }

  private retention(room: string, override: RedisPublishOptions["history"]): { size?: number; ttlS?: number } | null {
    if (override === false) return null;
    if (override === true) return {};
    if (override) return override;
    const rule = this.rules.find((r) => globMatch(r.pattern, room));
    return rule ? { size: rule.size, ttlS: rule.ttlS } : null;
  }

  private async publishEnvelope(verb: string, channel: string, data: unknown): Promise<RedisPublished> {
    // our own id and ts: every node delivers the same ones (docs/protocol.md "Redis channels")
    const id = `s-${randomUUID()}`;
    const payload = JSON.stringify({ id, ts: Date.now(), data: data ?? null });
    const reply = await this.send([verb, channel, payload], verb);
    return { id, receivers: asCount(reply) };
  }

  private async send(args: string[], what: string): Promise<unknown> {
    try {
      return await this.client.sendCommand(args);
    } catch (err) {
      if (err instanceof RoomcastError) throw err;
      const message = err instanceof Error ? err.message : String(err);
      const hint = /function not found/i.test(message) ? " (no roomcast node has loaded its functions into this Redis yet: start one first)" : "";
      throw new RoomcastError(0, "redis", `${what}: ${message}${hint}`, { cause: err });
    }
  }
}

function checkUser(user: string): void {
  if (typeof user !== "string" || user === "" || Buffer.byteLength(user) > 256) throw new RoomcastError(0, "bad_request", "user ids are 1 to 256 bytes");
}
