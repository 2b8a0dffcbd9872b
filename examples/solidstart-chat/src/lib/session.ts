// The session: a signed cookie `chat_session=<payload>.<hmac>` where the payload is base64url
// JSON {user, name, iat (ms)}. The same code reads it in the page's server functions (from the request)
// and in the gateway's connect hook (from the `cookie` header the gateway forwards), so the
// WebSocket is the signed-in user without a token service. A session is refused once the user was
// kicked after it was issued (store.ts keeps when).

import { createHmac, timingSafeEqual } from "node:crypto";
import { config } from "./config";
import { kickedAt } from "./store";

export const COOKIE = "chat_session";

export interface Session {
  /** The user id: what the gateway puts in `welcome`, `from` and presence. */
  user: string;
  /** The name as typed at sign-in: the connect hook's `info`, shown in presence. */
  name: string;
  /** When it was issued, ms since the Unix epoch. */
  iat: number;
}

/** What a user id may be: it is what the gateway shows in presence and `from`. */
export const USER_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/** The user id of a name as typed ("Ada Lovelace" → "ada-lovelace"); null when nothing is left. */
export function userIdOf(name: string): string | null {
  const id = name.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^[-_]+|-+$/g, "").slice(0, 32);
  return USER_NAME.test(id) ? id : null;
}

function sign(payload: string): string {
  return createHmac("sha256", config.sessionSecret).update(payload).digest("base64url");
}

export function sessionCookie(user: string, name: string, now = Date.now()): string {
  const payload = Buffer.from(JSON.stringify({ user, name, iat: now } satisfies Session)).toString("base64url");
  return `${COOKIE}=${payload}.${sign(payload)}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${7 * 24 * 3600}`;
}

export function clearedCookie(): string {
  return `${COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0`;
}

/** The cookie's value in a `Cookie` header, when present. */
function cookieValue(header: string | null | undefined, name: string): string | undefined {
  if (!header) return undefined;
  // the gateway joins several Cookie headers with "; ", as a browser does
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** The signed session in a `Cookie` header, checked: signature, shape, not kicked since. */
export async function sessionFromCookie(header: string | null | undefined): Promise<Session | null> {
  const value = cookieValue(header, COOKIE);
  if (!value) return null;
  const dot = value.lastIndexOf(".");
  if (dot <= 0) return null;
  const payload = value.slice(0, dot);
  const given = Buffer.from(value.slice(dot + 1));
  const expected = Buffer.from(sign(payload));
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let session: Session;
  try {
    session = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (typeof session?.user !== "string" || !USER_NAME.test(session.user) || typeof session.iat !== "number") return null;
  if (typeof session.name !== "string") session.name = session.user;
  const kicked = await kickedAt(session.user);
  if (kicked !== null && session.iat <= kicked) return null;
  return session;
}
