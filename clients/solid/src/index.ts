export * from "./protocol.js";
export {
  RoomcastClient,
  RoomcastError,
  HEARTBEAT_TIMEOUT_CODE,
  type BackoffOptions,
  type ClientEvents,
  type CloseInfo,
  type ConnectionInfo,
  type ConnectionState,
  type HeartbeatOptions,
  type JoinedEvent,
  type LeftEvent,
  type PresenceEvent,
  type PresenceState,
  type PublishOptions,
  type RefusalOptions,
  type RoomErrorEvent,
  type RoomOptions,
  type RoomcastOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export {
  createRoomcast,
  type Room,
  type Roomcast,
  type RoomcastSolidOptions,
  type SolidRoomOptions,
} from "./solid.js";
export {
  sseAvailable,
  sseTransport,
  type EventSourceConstructor,
  type EventSourceLike,
  type FetchLike,
  type SseTransportOptions,
} from "./sse.js";
export { createRoomcastWS, makeRoomcastWS, type RoomcastWS } from "./ws.js";
