// Webhooks (issue 19): the gateway POSTs `{"events": [{id, type, room, user, ts}, …]}` with
// `X-Roomcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. This checks the
// signature (timing-safe, refusing old timestamps), parses the events typed, and turns a handler
// into a fetch-style endpoint. Delivery is at least once: drop duplicates by `id`.

import { createHmac, timingSafeEqual } from "node:crypto";

export const SIGNATURE_HEADER = "x-roomcast-signature";

export type WebhookEventType = "room_occupied" | "room_vacated" | "member_joined" | "member_left";

/** One event. `user` is set for member events; room events carry none (null or absent). */
export interface WebhookEvent {
  /** Unique per event: a redelivery has the same id. */
  id: string;
  type: WebhookEventType;
  room: string;
  user?: string | null;
  /** When it happened, ms since the Unix epoch. */
  ts: number;
}

export interface WebhookBatch {
  events: WebhookEvent[];
}

export interface VerifyOptions {
  /** Refuse a signature older (or further in the future) than this many seconds (default 300). */
  toleranceS?: number;
  /** "Now" in unix seconds (default: the clock). */
  now?: number;
}

/** Why a webhook was refused: `signature` (missing, malformed, wrong or too old) or `body`. */
export class WebhookError extends Error {
  constructor(
    readonly kind: "signature" | "body",
    message: string,
  ) {
    super(message);
    this.name = "WebhookError";
  }
}

const TYPES: ReadonlySet<string> = new Set(["room_occupied", "room_vacated", "member_joined", "member_left"]);

/** The header's value for `body` signed at `t` (for tests, and for backends that relay). */
export function signWebhook(secret: string | Buffer, body: string | Buffer, t: number = Math.floor(Date.now() / 1000)): string {
  const mac = createHmac("sha256", secret).update(`${t}.`).update(body).digest("hex");
  return `t=${t},v1=${mac}`;
}

/**
 * Check `X-Roomcast-Signature` against the raw body. Throws a `WebhookError` when it is
 * missing, malformed, does not match, or is older than the tolerance. Verify the body exactly
 * as received (read it with `await request.text()`, not re-serialised JSON).
 */
export function verifyWebhookSignature(secret: string | Buffer, body: string | Buffer, header: string | null | undefined, options: VerifyOptions = {}): void {
  if (!header) throw new WebhookError("signature", `no ${SIGNATURE_HEADER} header`);
  let t: number | null = null;
  const candidates: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === "t" && /^\d{1,12}$/.test(value)) t = Number(value);
    else if (key === "v1") candidates.push(value);
  }
  if (t === null || candidates.length === 0) throw new WebhookError("signature", `malformed ${SIGNATURE_HEADER} header`);
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const tolerance = options.toleranceS ?? 300;
  if (Math.abs(now - t) > tolerance) throw new WebhookError("signature", `the signature's timestamp is ${now - t} s away from now (tolerance ${tolerance} s)`);
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest();
  // more than one v1 is allowed (a secret being rotated): any that matches will do
  const ok = candidates.some((hex) => {
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) return false;
    return timingSafeEqual(Buffer.from(hex, "hex"), expected);
  });
  if (!ok) throw new WebhookError("signature", "the signature does not match");
}

/** Parse a webhook body into typed events; throws a `WebhookError` ("body") when it is not
 * `{"events": [...]}` of known events. Unknown event types are refused, so a handler never
 * sees a type it has no branch for. */
export function parseWebhookEvents(body: string | Buffer): WebhookEvent[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof body === "string" ? body : body.toString("utf8"));
  } catch {
    throw new WebhookError("body", "the body is not JSON");
  }
  const events = (parsed as { events?: unknown } | null)?.events;
  if (!Array.isArray(events)) throw new WebhookError("body", 'the body has no "events" list');
  return events.map((e, i) => {
    const event = e as Partial<WebhookEvent> | null;
    if (!event || typeof event !== "object") throw new WebhookError("body", `events[${i}] is not an object`);
    if (typeof event.id !== "string" || event.id === "") throw new WebhookError("body", `events[${i}].id is not a string`);
    if (typeof event.type !== "string" || !TYPES.has(event.type)) throw new WebhookError("body", `events[${i}].type ${JSON.stringify(event.type)} is not a known event`);
    if (typeof event.room !== "string") throw new WebhookError("body", `events[${i}].room is not a string`);
    if (typeof event.ts !== "number") throw new WebhookError("body", `events[${i}].ts is not a number`);
    const member = event.type === "member_joined" || event.type === "member_left";
    if (member && typeof event.user !== "string") throw new WebhookError("body", `events[${i}].user is not a string`);
    return event as WebhookEvent;
  });
}

/** Verify and parse in one step. */
export function verifyWebhook(secret: string | Buffer, body: string | Buffer, header: string | null | undefined, options: VerifyOptions = {}): WebhookEvent[] {
  verifyWebhookSignature(secret, body, header, options);
  return parseWebhookEvents(body);
}

/**
 * A webhook endpoint, `(Request) => Promise<Response>`: 401 for a bad or old signature, 400 for
 * a bad body, 500 when the handler throws (the gateway retries), else 204. The handler gets the
 * batch's events in order; make it idempotent by `id` (delivery is at least once).
 *
 * ```ts
 * export const POST = webhookHandler(process.env.ROOMCAST_WEBHOOK_SECRET!, async (events) => {
 *   for (const e of events) if (e.type === "member_left") await lastSeen.set(e.user!, e.ts);
 * });
 * ```
 */
export function webhookHandler(
  secret: string | Buffer,
  handler: (events: WebhookEvent[], request: Request) => void | Promise<void>,
  options: VerifyOptions = {},
): (request: Request) => Promise<Response> {
  return async (request) => {
    if (request.method !== "POST") return new Response("webhooks are POST requests", { status: 405 });
    const body = await request.text();
    let events: WebhookEvent[];
    try {
      events = verifyWebhook(secret, body, request.headers.get(SIGNATURE_HEADER), options);
    } catch (err) {
      const status = err instanceof WebhookError && err.kind === "body" ? 400 : 401;
      return new Response(err instanceof Error ? err.message : "refused", { status });
    }
    try {
      await handler(events, request);
    } catch (err) {
      console.error("roomcast webhook handler failed:", err);
      return new Response("the webhook handler failed", { status: 500 });
    }
    return new Response(null, { status: 204 });
  };
}
