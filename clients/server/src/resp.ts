// A minimal Redis client on node:net / node:tls (RESP2), for apps that have no Redis client of
// their own: one connection, commands pipelined in order, replies matched in order. It connects
// on first use and again after the connection was lost. Enough for PUBLISH and FCALL; not a
// general-purpose client (no pub/sub, no cluster routing, no RESP3).

import net from "node:net";
import tls from "node:tls";
import { RoomcastError } from "./errors.js";
import type { RedisCommander } from "./redis.js";

export interface RedisConnectionOptions {
  /** Fail a command (and drop the connection, whose replies are then out of step) after this
   * long (default 2000 ms). */
  timeoutMs?: number;
}

/** A reply: string (simple and bulk), number (integer), null, an array of replies, or an Error
 * (an error reply inside an array). An error reply at the top rejects the command. */
export type RespReply = string | number | null | RespReply[] | Error;

interface Pending {
  resolve(reply: RespReply): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** Parses RESP2 replies out of a byte stream; `feed` returns the complete ones. */
export class RespParser {
  private buffer: Buffer = Buffer.alloc(0);

  feed(chunk: Buffer): RespReply[] {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const replies: RespReply[] = [];
    for (;;) {
      const parsed = this.parse(0);
      if (!parsed) break;
      replies.push(parsed.reply);
      this.buffer = this.buffer.subarray(parsed.end);
    }
    return replies;
  }

  private parse(at: number): { reply: RespReply; end: number } | null {
    const lineEnd = this.buffer.indexOf("\r\n", at);
    if (lineEnd < 0) return null;
    const kind = String.fromCharCode(this.buffer[at]);
    const line = this.buffer.toString("utf8", at + 1, lineEnd);
    const next = lineEnd + 2;
    switch (kind) {
      case "+":
        return { reply: line, end: next };
      case "-":
        return { reply: new Error(line), end: next };
      case ":":
        return { reply: Number(line), end: next };
      case "$": {
        const length = Number(line);
        if (length < 0) return { reply: null, end: next };
        if (this.buffer.length < next + length + 2) return null;
        return { reply: this.buffer.toString("utf8", next, next + length), end: next + length + 2 };
      }
      case "*": {
        const count = Number(line);
        if (count < 0) return { reply: null, end: next };
        const items: RespReply[] = [];
        let end = next;
        for (let i = 0; i < count; i++) {
          const item = this.parse(end);
          if (!item) return null;
          items.push(item.reply);
          end = item.end;
        }
        return { reply: items, end };
      }
      default:
        throw new Error(`redis: unexpected reply type ${JSON.stringify(kind)}`);
    }
  }
}

/** One command in RESP: an array of bulk strings. */
export function encodeCommand(args: string[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.from(arg, "utf8");
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

/** A connection to one Redis (`redis://[user:password@]host[:port][/db]`, or `rediss://`). */
export class RedisConnection implements RedisCommander {
  private readonly url: URL;
  private readonly timeoutMs: number;
  private socket: net.Socket | null = null;
  private ready: Promise<void> | null = null;
  private pending: Pending[] = [];
  private closed = false;

  constructor(url: string, options: RedisConnectionOptions = {}) {
    this.url = new URL(url);
    if (this.url.protocol !== "redis:" && this.url.protocol !== "rediss:") throw new TypeError(`redis: ${this.url.protocol} is not redis:// or rediss://`);
    this.timeoutMs = options.timeoutMs ?? 2000;
  }

  /** Send one command; resolves with its reply, rejects with an error reply or a lost link. */
  async sendCommand(args: string[]): Promise<RespReply> {
    if (this.closed) throw new RoomcastError(0, "redis", "redis: the connection was closed");
    if (!this.ready) this.ready = this.open();
    await this.ready;
    return this.raw(args);
  }

  /** Close the connection (commands in flight are failed). */
  close(): void {
    this.closed = true;
    this.drop(new RoomcastError(0, "redis", "redis: the connection was closed"));
  }

  private raw(args: string[]): Promise<RespReply> {
    const socket = this.socket;
    if (!socket) return Promise.reject(new RoomcastError(0, "redis", "redis: not connected"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.drop(new RoomcastError(0, "timeout", `redis: ${args[0]} had no reply within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending.push({ resolve, reject, timer });
      socket.write(encodeCommand(args));
    });
  }

  private open(): Promise<void> {
    const port = Number(this.url.port || 6379);
    const host = this.url.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
    const parser = new RespParser();
    return new Promise<void>((resolve, reject) => {
      const socket = this.url.protocol === "rediss:" ? tls.connect({ host, port, servername: host }) : net.connect({ host, port });
      this.socket = socket; // events of an older socket are ignored from here on
      const connectTimer = setTimeout(() => socket.destroy(new Error(`redis: no connection to ${host}:${port} within ${this.timeoutMs} ms`)), this.timeoutMs);
      socket.setNoDelay(true);
      socket.once(this.url.protocol === "rediss:" ? "secureConnect" : "connect", () => {
        clearTimeout(connectTimer);
        this.handshake().then(resolve, (err) => {
          if (this.socket === socket) this.drop(err);
          reject(err);
        });
      });
      socket.on("data", (chunk: Buffer) => {
        if (this.socket !== socket) return;
        let replies: RespReply[];
        try {
          replies = parser.feed(chunk);
        } catch (err) {
          this.drop(new RoomcastError(0, "redis", String(err)));
          return;
        }
        for (const reply of replies) {
          const waiting = this.pending.shift();
          if (!waiting) continue;
          clearTimeout(waiting.timer);
          if (reply instanceof Error) waiting.reject(new RoomcastError(0, "redis", reply.message));
          else waiting.resolve(reply);
        }
      });
      socket.once("error", (err) => {
        clearTimeout(connectTimer);
        const error = new RoomcastError(0, "redis", `redis ${host}:${port}: ${err.message}`, { cause: err });
        reject(error); // a no-op once connected
        if (this.socket === socket) this.drop(error);
      });
      socket.once("close", () => {
        clearTimeout(connectTimer);
        const error = new RoomcastError(0, "redis", `redis ${host}:${port}: the connection closed`);
        reject(error);
        if (this.socket === socket) this.drop(error);
      });
    });
  }

  private async handshake(): Promise<void> {
    const user = decodeURIComponent(this.url.username);
    const password = decodeURIComponent(this.url.password);
    if (password) await this.raw(user ? ["AUTH", user, password] : ["AUTH", password]);
    const db = this.url.pathname.replace(/^\//, "");
    if (db && db !== "0") await this.raw(["SELECT", db]);
  }

  /** Forget the socket and fail what waits on it; the next command connects again. */
  private drop(err: Error): void {
    const socket = this.socket;
    this.socket = null;
    this.ready = null;
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    socket?.destroy();
  }
}

/**
 * A connection to Redis with no dependency (for apps without a Redis client of their own).
 *
 * ```ts
 * const redis = connectRedis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
 * const rc = new RoomcastRedis(redis);
 * ```
 */
export function connectRedis(url: string, options: RedisConnectionOptions = {}): RedisConnection {
  return new RedisConnection(url, options);
}
