// Wire types for roomcast protocol version 1 (docs/protocol.md). Client → server commands and
// server → client frames. JSON text frames, plus the plain text heartbeat "ping" → "pong".

export type RequestId = string | number;
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface JoinCommand {
  type: "join";
  room: string;
  id?: RequestId;
  /** Replay every retained message after this message id (rooms with history). */
  since?: string;
  /** How many recent messages to replay (rooms with history). */
  history?: number;
}
export interface LeaveCommand {
  type: "leave";
  room: string;
  id?: RequestId;
}
export interface PublishCommand {
  type: "publish";
  room: string;
  data: unknown;
  id?: RequestId;
  /** Default true: the sender receives its own message too. */
  echo?: boolean;
  /** Conflation key (rooms matching `conflate.rooms`): a member behind gets only the latest
   * message of each key. */
  key?: string;
}
export interface PingCommand {
  type: "ping";
  id?: RequestId;
}
/** Who is in a room (rooms matching a `presence.rooms` rule; the connection must have joined). */
export interface PresenceCommand {
  type: "presence";
  room: string;
  id?: RequestId;
}
/** Replace the connection's token in band (same user); answered by `refreshed` or `error`. */
export interface RefreshCommand {
  type: "refresh";
  token: string;
  id?: RequestId;
}
export type Command = JoinCommand | LeaveCommand | PublishCommand | PingCommand | PresenceCommand | RefreshCommand;

export interface WelcomeFrame {
  type: "welcome";
  conn_id: string;
  node: string;
  user: string | null;
  heartbeat_ms: number;
}
export interface JoinedFrame {
  type: "joined";
  room: string;
  id?: RequestId;
  /** Present when the join carried `since`: false means messages were lost; reload state. */
  recovered?: boolean;
  /** How many messages were replayed. */
  history?: number;
  /** The backend joined this connection (a server subscription); no `id`. */
  server?: boolean;
}
export interface LeftFrame {
  type: "left";
  room: string;
  id?: RequestId;
  /** Set (and no `id`) when the server took the connection out of the room: "unsubscribed" (`/api/unsubscribe`), "forbidden" after a refresh. */
  reason?: string;
}
/** The reply to `refresh`: the new token's `exp` (seconds since the Unix epoch). */
export interface RefreshedFrame {
  type: "refreshed";
  exp: number;
  id?: RequestId;
}
/** The connection's token runs out in `in_ms` (then close 4001) unless it is refreshed. */
export interface TokenExpiringFrame {
  type: "token_expiring";
  in_ms: number;
}
export interface AckFrame {
  type: "ack";
  room: string;
  msg_id: string;
  id?: RequestId;
}
export interface PongFrame {
  type: "pong";
  id?: RequestId;
}
export type ErrorCode =
  | "bad_request"
  | "too_large"
  | "rate_limited"
  | "invalid_room"
  | "forbidden"
  | "not_joined"
  | "too_many_rooms"
  | "unavailable"
  | "internal"
  /** A `refresh` token that the handshake would refuse. */
  | "invalid_token"
  /** Published data that does not match its room's JSON Schema; `message` names the path. */
  | "invalid_data"
  /** The backend's publish hook refused the message; `message` is its reason. */
  | "rejected";
export interface PresenceMember {
  user: string;
  /** The user's connections in the room, across every node. */
  conns: number;
  /** What the backend's connect or join hook said of the user (absent: nothing). */
  info?: Record<string, unknown>;
}
export interface PresenceFrame {
  type: "presence";
  room: string;
  /** Exact number of users in the room, across every node. */
  count: number;
  /** At most the rule's `max_members`, in user-name order. */
  members: PresenceMember[];
  /** True when `members` is shorter than `count`. */
  truncated: boolean;
  id?: RequestId;
}
/** Sent to a room's members when its presence rule has `events = true`; once per user. */
export interface MemberFrame {
  type: "member_joined" | "member_left";
  room: string;
  user: string;
  ts: number;
  /** `member_joined` only: the backend's info of the user, as `presence` shows it. */
  info?: Record<string, unknown>;
}
export interface ErrorFrame {
  type: "error";
  code: ErrorCode | string;
  message: string;
  id?: RequestId;
}
export interface MessageFrame<T = unknown> {
  type: "message";
  room: string;
  id: string;
  data: T;
  /** The sender's user id, else its conn_id, or "server" for service messages. */
  from: string;
  /** Milliseconds since the Unix epoch, set where the message entered the system. */
  ts: number;
  /** The conflation key the message was published with, if any. */
  key?: string;
}
export interface NotificationFrame<T = unknown> {
  type: "notification";
  id: string;
  data: T;
  ts: number;
}
export interface BroadcastFrame<T = unknown> {
  type: "broadcast";
  id: string;
  data: T;
  ts: number;
}
export type ServerFrame =
  | WelcomeFrame
  | JoinedFrame
  | LeftFrame
  | RefreshedFrame
  | TokenExpiringFrame
  | AckFrame
  | PongFrame
  | PresenceFrame
  | MemberFrame
  | ErrorFrame
  | MessageFrame
  | NotificationFrame
  | BroadcastFrame;

/** WebSocket close codes that roomcast uses (docs/protocol.md "Limits"). */
export const CloseCode = {
  normal: 1000,
  /** Server shutting down or idle timeout: reconnect at once (to another node). */
  goingAway: 1001,
  abnormal: 1006,
  invalidUtf8: 1007,
  /** Policy violation (kept going past the rate limit): back off hard. */
  policyViolation: 1008,
  /** Message too large. */
  tooLarge: 1009,
  /** Outbound queue full (a slow reader): back off. */
  tryAgainLater: 1013,
  /**
   * The connection's JWT expired: reconnect with a fresh token. The client also closes with it
   * when an in-band refresh was refused, before reconnecting.
   */
  tokenExpired: 4001,
  /** The backend disconnected us (`/api/disconnect`) and asks for a reconnect. */
  reconnect: 4000,
  /** The backend disconnected us for good, or revoked our token: do not reconnect. */
  forbidden: 4403,
} as const;
