// The gateway's HTTP hooks (issue 19: connect, join, publish): typed request and answer bodies,
// and helpers that turn a handler into a fetch-style endpoint, `(Request) => Promise<Response>`,
// as SolidStart API routes, Hono, Bun, Deno and Next route handlers are written.
//
// The answer names are issue 19's contract: connect {user, rooms, publish, subs, exp, info},
// join {allow, reason, info}, publish {allow, reason, data}; a 401/403 refuses a connect. The
// request bodies are what issue 19 describes (address, forwarded headers, query parameters for
// connect; the user and room for join; and the data for publish): their field names follow the
// gateway's (docs/backend.md: connect {address, headers, query}; join {user, conn_id, room};
// publish {user, conn_id, room, data}), with any other field kept.

/** What the gateway POSTs to the connect hook at a handshake. */
export interface ConnectHookRequest {
  /** The client's address (after `server.trusted_proxies`). */
  address?: string;
  /** The configured `hooks.forward_headers` (lower-case names), e.g. `cookie`, `authorization`. */
  headers?: Record<string, string>;
  /** The handshake URL's query parameters. */
  query?: Record<string, string>;
  [field: string]: unknown;
}

/** The connect hook's answer: who the connection is and what it may do (the token claims'
 * counterparts). Answer with `refuse(401 | 403)` to refuse the handshake. */
export interface ConnectAnswer {
  /** The user id (a token's `sub`). */
  user: string;
  /** Glob patterns the user may join; absent: any room. */
  rooms?: string[];
  /** Glob patterns the user may publish to; absent: any joined room. */
  publish?: string[];
  /** Rooms joined at once (`joined {server: true}`). */
  subs?: string[];
  /** When the connection's authorisation runs out, unix seconds (as a token's `exp`). */
  exp?: number;
  /** A small object that presence shows next to the user. */
  info?: Record<string, unknown>;
}

/** What the gateway POSTs to the join hook for a room matching `hooks.join_rooms`. */
export interface JoinHookRequest {
  user: string;
  room: string;
  conn_id?: string;
  [field: string]: unknown;
}

/** The join hook's answer. A refused join is answered `error forbidden` with `reason`. */
export interface JoinAnswer {
  allow: boolean;
  reason?: string;
  /** Attached to the member (presence shows it). */
  info?: Record<string, unknown>;
}

/** What the gateway POSTs to the publish hook for a room matching `hooks.publish_rooms`. */
export interface PublishHookRequest<D = unknown> {
  user: string;
  room: string;
  /** What the client published (not checked: a client can send any JSON). */
  data: D;
  conn_id?: string;
  [field: string]: unknown;
}

/** The publish hook's answer: `data`, when present, replaces what is published. A refused
 * publish is answered `error rejected` with `reason`. */
export interface PublishAnswer {
  allow: boolean;
  reason?: string;
  data?: unknown;
}

/** A refusal of a connect: the gateway answers the handshake with this status. */
export class HookRefusal {
  constructor(
    readonly status: 401 | 403,
    readonly reason?: string,
  ) {}
}

/** Refuse a connect (401: not signed in; 403: signed in but not allowed). Return it or throw it. */
export function refuse(status: 401 | 403 = 401, reason?: string): HookRefusal {
  return new HookRefusal(status, reason);
}

/** Allow a join or a publish (`data` replaces the published data when given). */
export function allow(): { allow: true };
export function allow<T>(data: T): { allow: true; data: T };
export function allow(...data: unknown[]): { allow: true; data?: unknown } {
  return data.length ? { allow: true, data: data[0] } : { allow: true };
}

/** Refuse a join or a publish with a reason the client sees. */
export function deny(reason?: string): { allow: false; reason?: string } {
  return reason === undefined ? { allow: false } : { allow: false, reason };
}

/** A fetch-style endpoint. */
export type HookEndpoint = (request: Request) => Promise<Response>;

type Handler<Req, Answer> = (body: Req, request: Request) => Answer | Promise<Answer>;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

async function readBody(request: Request): Promise<Record<string, unknown> | Response> {
  if (request.method !== "POST") return json(405, { error: "hooks are POST requests" });
  let body: unknown;
  try {
    body = await request.json();
  } catch {
    return json(400, { error: "the body is not JSON" });
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return json(400, { error: "the body is not a JSON object" });
  return body as Record<string, unknown>;
}

/** A handler that throws: 500, which the gateway takes as a failure (it fails closed). */
function failed(err: unknown): Response {
  console.error("roomcast hook handler failed:", err);
  return json(500, { error: "the hook handler failed" });
}

/**
 * The connect hook as an endpoint: the handler answers who the connection is, or `refuse(401)`.
 *
 * ```ts
 * export const POST = connectHook(async ({ headers }) => {
 *   const session = await sessions.get(headers?.cookie);
 *   return session ? { user: session.userId, rooms: ["chat:*"] } : refuse(401);
 * });
 * ```
 */
export function connectHook(handler: Handler<ConnectHookRequest, ConnectAnswer | HookRefusal>): HookEndpoint {
  return async (request) => {
    const body = await readBody(request);
    if (body instanceof Response) return body;
    let answer: ConnectAnswer | HookRefusal;
    try {
      answer = await handler(body as ConnectHookRequest, request);
    } catch (err) {
      if (err instanceof HookRefusal) answer = err;
      else return failed(err);
    }
    if (answer instanceof HookRefusal) return json(answer.status, { error: answer.reason ?? (answer.status === 401 ? "unauthorized" : "forbidden") });
    if (!answer || typeof answer.user !== "string" || answer.user === "") return failed(new TypeError("the connect handler answered no user"));
    return json(200, pick(answer, ["user", "rooms", "publish", "subs", "exp", "info"]));
  };
}

/**
 * The join hook as an endpoint: the handler allows or refuses each join.
 *
 * ```ts
 * export const POST = joinHook(async ({ user, room }) =>
 *   (await teams.isMember(user, room)) ? allow() : deny("not in this team"));
 * ```
 */
export function joinHook(handler: Handler<JoinHookRequest, JoinAnswer>): HookEndpoint {
  return async (request) => {
    const body = await readBody(request);
    if (body instanceof Response) return body;
    try {
      const answer = await handler(body as JoinHookRequest, request);
      if (!answer || typeof answer.allow !== "boolean") return failed(new TypeError("the join handler answered no allow"));
      return json(200, pick(answer, ["allow", "reason", "info"]));
    } catch (err) {
      return failed(err);
    }
  };
}

/**
 * The publish hook as an endpoint: the handler allows (optionally replacing the data) or refuses.
 *
 * ```ts
 * export const POST = publishHook<{ text?: unknown }>(({ data }) =>
 *   typeof data?.text === "string" ? allow({ text: clean(data.text) }) : deny("text is missing"));
 * ```
 */
export function publishHook<D = unknown>(handler: Handler<PublishHookRequest<D>, PublishAnswer>): HookEndpoint {
  return async (request) => {
    const body = await readBody(request);
    if (body instanceof Response) return body;
    try {
      const answer = await handler(body as PublishHookRequest<D>, request);
      if (!answer || typeof answer.allow !== "boolean") return failed(new TypeError("the publish handler answered no allow"));
      return json(200, pick(answer, ["allow", "reason", "data"]));
    } catch (err) {
      return failed(err);
    }
  };
}

/** Only the contract's fields (JSON.stringify then leaves out those that are undefined). */
function pick<T extends object>(answer: T, keys: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of keys) out[key] = (answer as Record<string, unknown>)[key];
  return out;
}
