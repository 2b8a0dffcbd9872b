// Tokens (docs/protocol.md "Tokens"): an HS256 JWT signed with node:crypto, with the claims the
// gateway reads: sub, exp, iat, jti (revocations), rooms / publish (glob patterns), subs (rooms
// joined at connect), and optionally nbf, iss, aud.

import { createHmac, randomUUID } from "node:crypto";

/** What goes into a token. `exp` or `ttlS` decides when it runs out (default: one hour). */
export interface TokenOptions {
  /** The user id: what `welcome.user`, `from`, presence and `/api/notify` name. */
  sub: string;
  /** Lifetime in seconds from `now` (default 3600). Ignored when `exp` is given. */
  ttlS?: number;
  /** Expiry, unix seconds. */
  exp?: number;
  /** Glob patterns the user may join; absent: any room. */
  rooms?: string[];
  /** Glob patterns the user may publish to; absent: any joined room. */
  publish?: string[];
  /** Room names joined at connect ("server subscriptions"). Each must be a valid room name. */
  subs?: string[];
  /** Token id, for revoking one token (`/api/revoke {jti}`); default a random UUID. */
  jti?: string;
  /** Not before, unix seconds. */
  nbf?: number;
  /** Must match the gateway's `auth.issuer` / `auth.audience` when those are set. */
  iss?: string;
  aud?: string | string[];
  /** Other claims to carry (the gateway ignores them). */
  extra?: Record<string, unknown>;
  /** "Now" in unix seconds, for `iat` and `ttlS` (default: the clock). */
  now?: number;
}

/** The claims `mintToken` signs. */
export interface TokenClaims {
  sub: string;
  iat: number;
  exp: number;
  jti: string;
  rooms?: string[];
  publish?: string[];
  subs?: string[];
  nbf?: number;
  iss?: string;
  aud?: string | string[];
  [claim: string]: unknown;
}

const ROOM_NAME = /^[A-Za-z0-9_\-.:/]{1,128}$/;

function base64url(input: Buffer | string): string {
  return Buffer.from(input).toString("base64url");
}

/** The claims of a token, checked the way the gateway would refuse them (so a bad token fails
 * here, with a message, rather than at the user's handshake with a bare 401). */
export function tokenClaims(options: TokenOptions): TokenClaims {
  if (typeof options.sub !== "string" || options.sub === "") throw new TypeError("token: sub must be a non-empty string");
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const exp = options.exp ?? now + (options.ttlS ?? 3600);
  if (!Number.isInteger(exp) || exp <= now) throw new RangeError(`token: exp (${exp}) must be an integer after now (${now})`);
  for (const room of options.subs ?? []) {
    if (!ROOM_NAME.test(room)) throw new RangeError(`token: subs entry ${JSON.stringify(room)} is not a valid room name`);
  }
  const claims: TokenClaims = { ...options.extra, sub: options.sub, iat: now, exp, jti: options.jti ?? randomUUID() };
  if (options.rooms) claims.rooms = [...options.rooms];
  if (options.publish) claims.publish = [...options.publish];
  if (options.subs) claims.subs = [...options.subs];
  if (options.nbf !== undefined) claims.nbf = options.nbf;
  if (options.iss !== undefined) claims.iss = options.iss;
  if (options.aud !== undefined) claims.aud = options.aud;
  return claims;
}

/**
 * An HS256 JWT for the gateway (`auth.mode = "jwt"`, `auth.jwt_secret = secret`).
 *
 * ```ts
 * const token = mintToken(process.env.ROOMCAST_SECRET!, { sub: "42", rooms: ["chat:*"], ttlS: 600 });
 * ```
 */
export function mintToken(secret: string | Buffer, options: TokenOptions): string {
  if (secret.length === 0) throw new TypeError("token: the secret is empty");
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify(tokenClaims(options)));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}
