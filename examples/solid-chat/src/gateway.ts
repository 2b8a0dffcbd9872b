// Where the gateway is: ?ws=ws://host:port/ws, else VITE_ROOMCAST_URL, else port 8080 of the
// host that served the page. A comma-separated list (?ws=ws://a/ws,ws://b/ws) is tried in turn,
// one per connection attempt: without a load balancer in front of the nodes, a page whose node
// shuts down (close 1001) goes to the next one.
export function gatewayUrls(): string[] {
  const fromQuery = new URLSearchParams(location.search).get("ws");
  const fromEnv = import.meta.env.VITE_ROOMCAST_URL as string | undefined;
  const list = fromQuery || fromEnv || `ws://${location.hostname || "127.0.0.1"}:8080/ws`;
  return list.split(",").map((s) => s.trim()).filter(Boolean);
}

/** The first URL, for clients that take one. */
export function gatewayUrl(): string {
  return gatewayUrls()[0]!;
}

/** A URL function for createRoomcast: the next node on every connect. */
export function rotatingGatewayUrl(): () => string {
  const urls = gatewayUrls();
  let i = -1;
  return () => urls[(i = (i + 1) % urls.length)]!;
}

export function defaultName(): string {
  return new URLSearchParams(location.search).get("name") ?? `guest-${Math.random().toString(36).slice(2, 6)}`;
}

/**
 * ?token_url=/path: when the gateway checks tokens, fetch a JWT from there before every
 * connect and on every `token_expiring` (createRoomcast's getToken), so a token about to run out
 * is refreshed in band, and an expired one (close 4001) is replaced at once.
 */
export function tokenGetter(): (() => Promise<string>) | undefined {
  const url = new URLSearchParams(location.search).get("token_url");
  if (!url) return undefined;
  return async () => {
    const res = await fetch(url, { cache: "no-store" });
    if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
    return (await res.text()).trim();
  };
}
