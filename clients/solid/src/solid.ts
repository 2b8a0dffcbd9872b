// SolidJS bindings: createRoomcast(url, options) → reactive connection state and rooms.

import { createSignal, getOwner, onCleanup, type Accessor } from "solid-js";
import {
  RoomcastClient,
  RoomcastError,
  type ConnectionInfo,
  type ConnectionState,
  type JoinedEvent,
  type PresenceState,
  type PublishOptions,
  type RoomOptions,
  type RoomcastOptions,
} from "./client.js";
import type {
  AckFrame,
  BroadcastFrame,
  MessageFrame,
  NotificationFrame,
  WelcomeFrame,
} from "./protocol.js";

export interface RoomcastSolidOptions extends RoomcastOptions {
  /** Messages kept per room in `messages()` (oldest dropped first). Default 500. */
  maxMessages?: number;
}

export interface SolidRoomOptions extends RoomOptions {
  /** Called when a join answers `recovered: false`: messages were lost, reload the state. */
  onGap?: (ev: JoinedEvent) => void;
}

export interface Room<T = unknown> {
  readonly name: string;
  /** Messages received in this room, oldest first, without duplicates. */
  messages: Accessor<MessageFrame<T>[]>;
  /** In the room on the current connection. */
  joined: Accessor<boolean>;
  /**
   * `recovered` of the last join: false when a rejoin with `since` could not replay what was
   * missed (or the room keeps no history); undefined when the join carried no `since`.
   */
  recovered: Accessor<boolean | undefined>;
  /**
   * Who is in the room (`{count, members, truncated}`), for rooms created with
   * `presence: true`: fetched after every (re)join, updated by `member_joined` / `member_left`.
   * Undefined until the first `presence` reply (or when the room keeps no presence).
   */
  presence: Accessor<PresenceState | undefined>;
  /** Fetch the room's presence again now (the `presence` command). */
  refreshPresence(): Promise<PresenceState>;
  /** The last error about this room (join refused, publish failed). */
  error: Accessor<RoomcastError | undefined>;
  /** Publish to the room (queued while disconnected); resolves with the `ack`. */
  publish(data: T, opts?: PublishOptions): Promise<AckFrame>;
  /** Leave the room; also done on cleanup of the owner that created it. */
  leave(): Promise<void>;
}

export interface Roomcast {
  /** "connecting" | "open" | "reconnecting" | "closed" | "forbidden" (closed with 4403: no reconnect) */
  state: Accessor<ConnectionState>;
  /** Attempt count, refusal, next retry time, last close code, queued commands. */
  info: Accessor<ConnectionInfo>;
  /** The `welcome` of the current connection (undefined until the first one). */
  welcome: Accessor<WelcomeFrame | undefined>;
  /** The last notification / broadcast received. */
  notification: Accessor<NotificationFrame | undefined>;
  broadcast: Accessor<BroadcastFrame | undefined>;
  /** The rooms the connection is in, its server subscriptions included (name order). */
  rooms: Accessor<string[]>;
  /** A room, joined now and after every reconnect (one handle per name). */
  room<T = unknown>(name: string, options?: SolidRoomOptions): Room<T>;
  /** Reconnect now, forgetting the backoff. */
  reconnect(): void;
  /** Close for good (also done on cleanup of the owner that created it). */
  close(): void;
  /** The framework-free client underneath. */
  client: RoomcastClient;
}

/**
 * Connect to a roomcast gateway.
 *
 * ```tsx
 * const rc = createRoomcast("ws://localhost:8080/ws");
 * const lobby = rc.room<{ text: string }>("lobby");
 * <For each={lobby.messages()}>{(m) => <p>{m.data.text}</p>}</For>
 * ```
 */
export function createRoomcast(
  url: string | (() => string),
  options: RoomcastSolidOptions = {},
): Roomcast {
  const maxMessages = options.maxMessages ?? 500;
  const client = new RoomcastClient(url, options);
  const [info, setInfo] = createSignal<ConnectionInfo>(client.info);
  const [welcome, setWelcome] = createSignal<WelcomeFrame | undefined>(client.welcome);
  const [notification, setNotification] = createSignal<NotificationFrame>();
  const [broadcast, setBroadcast] = createSignal<BroadcastFrame>();
  const [state, setState] = createSignal<ConnectionState>(client.info.state);
  client.on("state", (i) => {
    setInfo(i);
    setState(i.state);
  });
  client.on("welcome", (w) => setWelcome(w));
  const [joinedRooms, setJoinedRooms] = createSignal<string[]>(client.rooms);
  client.on("rooms", (names) => setJoinedRooms(names));
  client.on("notification", (n) => setNotification(() => n));
  client.on("broadcast", (b) => setBroadcast(() => b));

  const rooms = new Map<string, Room<never>>();

  function room<T = unknown>(name: string, opts: SolidRoomOptions = {}): Room<T> {
    const existing = rooms.get(name);
    if (existing) return existing as unknown as Room<T>;
    const [messages, setMessages] = createSignal<MessageFrame<T>[]>([]);
    const [joined, setJoined] = createSignal(false);
    const [recovered, setRecovered] = createSignal<boolean | undefined>();
    const [error, setError] = createSignal<RoomcastError>();
    const [presence, setPresence] = createSignal<PresenceState | undefined>(client.presence(name));
    const offs = [
      client.on("presence", (ev) => {
        if (ev.room === name) setPresence(ev.presence);
      }),
      client.on("message", (m) => {
        if (m.room !== name) return;
        setMessages((prev) => {
          const next = prev.length >= maxMessages ? prev.slice(prev.length - maxMessages + 1) : prev.slice();
          next.push(m as MessageFrame<T>);
          return next;
        });
      }),
      client.on("joined", (ev) => {
        if (ev.room !== name) return;
        setJoined(true);
        setRecovered(ev.recovered);
        if (ev.recovered === false) opts.onGap?.(ev);
      }),
      client.on("roomError", (ev) => {
        if (ev.room !== name) return;
        setError(() => ev.error);
        if (ev.dropped) {
          setJoined(false);
          forget();
        }
      }),
      client.on("left", (ev) => {
        if (ev.room === name) setJoined(false);
      }),
      client.on("close", () => setJoined(false)),
    ];
    let gone = false;
    const forget = () => {
      if (gone) return;
      gone = true;
      offs.forEach((off) => off());
      if (rooms.get(name) === handle) rooms.delete(name);
    };
    const handle: Room<T> = {
      name,
      messages,
      joined,
      recovered,
      presence,
      refreshPresence() {
        return client.refreshPresence(name).catch((e: RoomcastError) => {
          setError(() => e);
          throw e;
        });
      },
      error,
      publish(data, popts) {
        return client.publish(name, data, popts).catch((e: RoomcastError) => {
          setError(() => e);
          throw e;
        });
      },
      async leave() {
        forget();
        setJoined(false);
        await client.leave(name).catch(() => undefined);
      },
    };
    rooms.set(name, handle as unknown as Room<never>);
    client.join(name, opts).catch(() => {
      /* reported through error() */
    });
    if (getOwner()) onCleanup(() => void handle.leave());
    return handle;
  }

  const rc: Roomcast = {
    state,
    info,
    welcome,
    notification,
    broadcast,
    rooms: joinedRooms,
    room,
    reconnect: () => client.reconnect(),
    close: () => client.close(),
    client,
  };
  if (getOwner()) onCleanup(() => client.close());
  return rc;
}
