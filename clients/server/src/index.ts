// @roomcast/server: the backend half of a roomcast app (docs/protocol.md is the contract).
export { RoomcastError } from "./errors.js";
export { RoomcastAdmin, type AdminOptions, type DisconnectTarget, type RevokeTarget, type Published } from "./admin.js";
export { RoomcastRedis, fromIoredis, type RedisCommander, type HistoryRule, type RedisPublisherOptions, type RedisPublishOptions, type RedisPublished } from "./redis.js";
export { connectRedis, RedisConnection, type RedisConnectionOptions, type RespReply } from "./resp.js";
export { mintToken, tokenClaims, type TokenOptions, type TokenClaims } from "./token.js";
export {
  connectHook,
  joinHook,
  publishHook,
  refuse,
  allow,
  deny,
  HookRefusal,
  type HookEndpoint,
  type ConnectHookRequest,
  type ConnectAnswer,
  type JoinHookRequest,
  type JoinAnswer,
  type PublishHookRequest,
  type PublishAnswer,
} from "./hooks.js";
export {
  verifyWebhook,
  verifyWebhookSignature,
  parseWebhookEvents,
  signWebhook,
  webhookHandler,
  WebhookError,
  SIGNATURE_HEADER,
  type WebhookEvent,
  type WebhookEventType,
  type WebhookBatch,
  type VerifyOptions,
} from "./webhooks.js";
export { isValidRoom, globMatch } from "./rooms.js";
export { nodeHandler, type NodeHandlerOptions } from "./node-http.js";
