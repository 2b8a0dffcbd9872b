// The admin HTTP API (docs/protocol.md "Admin HTTP API", the internal port, default 9090):
// publish, notify, broadcast, disconnect (kick), revoke, subscribe, unsubscribe, with the API
// key as a Bearer token. Uses the global fetch of Node >= 20 (or one given).

import { RoomcastError } from "./errors.js";

export interface AdminOptions {
  /** The admin address, e.g. `http://127.0.0.1:9090` (a trailing `/` is fine). */
  url: string;
  /** `admin.api_key` of the gateway, sent as `Authorization: Bearer KEY`. */
  apiKey?: string;
  /** Give up on a call after this long (default 5000 ms): `RoomcastError` code `timeout`. */
  timeoutMs?: number;
  /** A fetch of your own (tests, proxies); default the global one. */
  fetch?: typeof fetch;
}

/** Who `disconnect` closes: every connection of a user, or one connection (`conn_id` of its
 * `welcome`). `code` 4000 (default): the client reconnects; 4403: it must not. */
export type DisconnectTarget = ({ user: string; connId?: never } | { connId: string; user?: never }) & {
  code?: 4000 | 4403;
  /** At most 123 bytes; default "reconnect" / "forbidden". */
  reason?: string;
};

/** What `revoke` refuses until `until` (unix seconds, in (now, now + auth.max_revocation_s]):
 * every token of `user` issued (`iat`) before now, or the one token with that `jti`. */
export type RevokeTarget = ({ user: string; jti?: never } | { jti: string; user?: never }) & { until: number };

/** The admin API's answer to a publish: the message id (every node uses it). */
export interface Published {
  id: string;
}

/**
 * A client of one gateway node's admin API (any node: what it publishes reaches every node).
 *
 * ```ts
 * const admin = new RoomcastAdmin({ url: "http://127.0.0.1:9090", apiKey: process.env.ROOMCAST_API_KEY });
 * await admin.publish("chat:lobby", { text: "maintenance at 10:00" });
 * ```
 */
export class RoomcastAdmin {
  readonly url: string;
  private readonly apiKey?: string;
  private readonly timeoutMs: number;
  private readonly fetch: typeof fetch;

  constructor(options: AdminOptions) {
    this.url = options.url.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.fetch = options.fetch ?? globalThis.fetch;
  }

  /** `POST /api/publish {room, data}`: a `message` (from "server") to every member of `room`,
   * on every node; kept in history when the room keeps it. */
  publish(room: string, data: unknown): Promise<Published> {
    return this.post("/api/publish", { room, data }) as Promise<Published>;
  }

  /** `POST /api/notify {user, data}`: a `notification` to every connection of `user`. */
  notify(user: string, data: unknown): Promise<Published> {
    return this.post("/api/notify", { user, data }) as Promise<Published>;
  }

  /** `POST /api/broadcast {data}`: a `broadcast` to every connection on every node. */
  broadcast(data: unknown): Promise<Published> {
    return this.post("/api/broadcast", { data }) as Promise<Published>;
  }

  /** `POST /api/disconnect`: close every connection of a user (or one `connId`) on every node
   * with 4000 (reconnect, default) or 4403 (do not come back). */
  async disconnect(target: DisconnectTarget): Promise<void> {
    const body: Record<string, unknown> = "connId" in target && target.connId !== undefined ? { conn_id: target.connId } : { user: target.user };
    if (target.code !== undefined) body.code = target.code;
    if (target.reason !== undefined) body.reason = target.reason;
    await this.post("/api/disconnect", body);
  }

  /** Shorthand for `disconnect({ user, code, reason })`. */
  kick(user: string, options: { code?: 4000 | 4403; reason?: string } = {}): Promise<void> {
    return this.disconnect({ user, ...options });
  }

  /** `POST /api/revoke`: refuse `user`'s tokens issued before now (or the token `jti`) until
   * `until`; live connections holding them close with 4403 "token revoked". A token minted in
   * the same second or later still works (so sign the user in again at once). */
  async revoke(target: RevokeTarget): Promise<void> {
    const body = "jti" in target && target.jti !== undefined ? { jti: target.jti, until: target.until } : { user: target.user, until: target.until };
    await this.post("/api/revoke", body);
  }

  /** `POST /api/subscribe {user, room}`: join every connection of `user`, now and those it
   * opens within `auth.server_subs_ttl_s`, to `room` (`joined {room, server: true}`). */
  async subscribe(user: string, room: string): Promise<void> {
    await this.post("/api/subscribe", { user, room });
  }

  /** `POST /api/unsubscribe {user, room}`: take the user's connections out of `room`
   * (`left {room, reason: "unsubscribed"}`) and forget the subscription. */
  async unsubscribe(user: string, room: string): Promise<void> {
    await this.post("/api/unsubscribe", { user, room });
  }

  private async post(path: string, body: unknown): Promise<unknown> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    let response: Response;
    try {
      response = await this.fetch(this.url + path, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const timedOut = err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError");
      throw new RoomcastError(0, timedOut ? "timeout" : "network", `POST ${path}: ${timedOut ? `no answer within ${this.timeoutMs} ms` : String(err)}`, { cause: err });
    }
    const text = await response.text();
    let parsed: unknown = undefined;
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      /* not JSON: reported below */
    }
    if (!response.ok) {
      const error = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
      const code = typeof error?.code === "string" ? error.code : `http_${response.status}`;
      const message = typeof error?.message === "string" ? error.message : text.slice(0, 200);
      throw new RoomcastError(response.status, code, `POST ${path}: ${response.status} ${code}: ${message}`);
    }
    if (parsed === undefined) throw new RoomcastError(response.status, "bad_response", `POST ${path}: the answer is not JSON: ${text.slice(0, 200)}`);
    return parsed;
  }
}
