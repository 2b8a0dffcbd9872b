// The app's server-side settings, from the environment. The names start with CHAT_, never
// ROOMCAST_: a roomcast node reads every ROOMCAST_* variable as its configuration (and stops on
// an unknown one), and the README starts both from one shell.

function env(name: string, fallback: string): string {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : v;
}

export const config = {
  /** Signs the session cookie (HMAC-SHA256). */
  get sessionSecret() {
    return env("CHAT_SESSION_SECRET", "dev-only-session-secret-change-me");
  },
  /** A roomcast node's admin API (any node: it publishes and kicks for the whole cluster). */
  get adminUrl() {
    return env("CHAT_ADMIN_URL", "http://127.0.0.1:9090");
  },
  /** The gateway's admin.api_key, when it has one. */
  get apiKey() {
    return process.env.CHAT_API_KEY || undefined;
  },
  /** The gateway's webhooks.secret. */
  get webhookSecret() {
    return env("CHAT_WEBHOOK_SECRET", "dev-only-webhook-secret");
  },
  /** The app's own state (revoked sessions, "last seen"): the Redis the gateway uses will do. */
  get redisUrl() {
    return env("CHAT_REDIS_URL", "redis://127.0.0.1:6379");
  },
  /** The gateway's WebSocket URLs the page connects to, in turn (no load balancer needed). */
  get gatewayUrls(): string[] {
    return env("CHAT_GATEWAY_WS", "ws://127.0.0.1:8080/ws")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  },
  /** Users who may enter chat:staff and kick people: the app's own rule (comma-separated). */
  get staff(): string[] {
    return env("CHAT_STAFF", "alice")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  },
};
