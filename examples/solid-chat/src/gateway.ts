// Where the gateway is: ?ws=ws://host:port/ws, else VITE_ROOMCAST_URL, else port 8080 of the
// host that served the page.
export function gatewayUrl(): string {
  const fromQuery = new URLSearchParams(location.search).get("ws");
  if (fromQuery) return fromQuery;
  const fromEnv = import.meta.env.VITE_ROOMCAST_URL as string | undefined;
  if (fromEnv) return fromEnv;
  return `ws://${location.hostname || "127.0.0.1"}:8080/ws`;
}

export function defaultName(): string {
  return new URLSearchParams(location.search).get("name") ?? `guest-${Math.random().toString(36).slice(2, 6)}`;
}
