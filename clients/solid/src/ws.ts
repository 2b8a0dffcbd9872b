// A WebSocket-like object on top of RoomcastClient, for apps written against
// @solid-primitives/websocket. The one-line migration:
//
//   const ws = makeHeartbeatWS(createReconnectingWS("ws://host/ws"));   // before
//   const ws = createRoomcastWS("ws://host/ws");                        // after
//
// The app keeps sending JSON text and listening to "message" events. Underneath, it gets the
// roomcast client's backoff, close-code handling, heartbeat, bounded queue and rejoin: a
// `{"type":"join"}` the app sends is remembered and sent again after every reconnect (with
// `since` when the join asked for history), and `{"type":"leave"}` forgets it. Replies to joins
// carry the client's own `id`, not the app's.

import { getOwner, onCleanup } from "solid-js";
import { RoomcastClient, type RoomcastOptions } from "./client.js";

type WSListener = (ev: { type: string; data?: string; code?: number; reason?: string }) => void;
type WSEvent = "open" | "message" | "close" | "error";

export interface RoomcastWS {
  /** 0 connecting or reconnecting, 1 open (welcome received), 3 closed for good. */
  readonly readyState: number;
  onmessage: WSListener | null;
  onopen: WSListener | null;
  onclose: WSListener | null;
  /** Send a text frame; queued (bounded) while disconnected. */
  send(data: string): void;
  addEventListener(type: WSEvent, fn: WSListener): void;
  removeEventListener(type: WSEvent, fn: WSListener): void;
  /** Close for good. */
  close(): void;
  /** Reconnect now. */
  reconnect(): void;
  client: RoomcastClient;
}

/** Like createRoomcastWS, without closing on cleanup. */
export function makeRoomcastWS(url: string | (() => string), options: RoomcastOptions = {}): RoomcastWS {
  const client = new RoomcastClient(url, options);
  const listeners = new Map<WSEvent, Set<WSListener>>();
  const dispatch = (type: WSEvent, ev: Parameters<WSListener>[0]) => {
    const prop = (ws as unknown as Record<string, WSListener | null>)[`on${type}`];
    if (prop) prop(ev);
    for (const fn of [...(listeners.get(type) ?? [])]) fn(ev);
  };
  client.on("welcome", () => dispatch("open", { type: "open" }));
  client.on("close", (c) => dispatch("close", { type: "close", code: c.code, reason: c.reason }));
  client.on("frame", ({ data }) => {
    if (data !== "pong") dispatch("message", { type: "message", data });
  });
  const ws: RoomcastWS = {
    get readyState() {
      const s = client.info.state;
      return s === "open" ? 1 : s === "closed" || s === "forbidden" ? 3 : 0;
    },
    onmessage: null,
    onopen: null,
    onclose: null,
    send(data: string) {
      let cmd: { type?: unknown; room?: unknown; since?: unknown; history?: unknown } | undefined;
      try {
        cmd = JSON.parse(data);
      } catch {
        /* not JSON: sent as it is */
      }
      if (cmd && cmd.type === "join" && typeof cmd.room === "string") {
        const opts: { since?: string; history?: number } = {};
        if (typeof cmd.since === "string") opts.since = cmd.since;
        if (typeof cmd.history === "number") opts.history = cmd.history;
        client.join(cmd.room, opts).catch(() => undefined);
        return;
      }
      if (cmd && cmd.type === "leave" && typeof cmd.room === "string") {
        client.leave(cmd.room).catch(() => undefined);
        return;
      }
      client.sendRaw(data);
    },
    addEventListener(type, fn) {
      let set = listeners.get(type);
      if (!set) listeners.set(type, (set = new Set()));
      set.add(fn);
    },
    removeEventListener(type, fn) {
      listeners.get(type)?.delete(fn);
    },
    close: () => client.close(),
    reconnect: () => client.reconnect(),
    client,
  };
  return ws;
}

/** A reconnecting, heartbeating WebSocket-like connection to roomcast; closed on cleanup. */
export function createRoomcastWS(url: string | (() => string), options: RoomcastOptions = {}): RoomcastWS {
  const ws = makeRoomcastWS(url, options);
  if (getOwner()) onCleanup(() => ws.close());
  return ws;
}
