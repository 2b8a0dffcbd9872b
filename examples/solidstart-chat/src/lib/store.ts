// The app's own state, in Redis (the app may run on several servers too): when a user was last
// kicked (sessions issued before are refused), "last seen" per user from the gateway's
// member_left webhooks, and the ids of the webhook events already handled (delivery is at least
// once). The Redis client is @roomcast/server's small built-in one; node-redis or ioredis would do.

import { connectRedis, type RedisConnection } from "@roomcast/server";
import { config } from "./config";

const PREFIX = "solidstart-chat:";
let redis: RedisConnection | undefined;
function db(): RedisConnection {
  if (!redis) {
    redis = connectRedis(config.redisUrl);
    // an open socket keeps Node running: close it when the server is told to stop, or the
    // process outlives its server (SIGTERM would end in the supervisor's SIGKILL)
    for (const sig of ["SIGTERM", "SIGINT"] as const) process.once(sig, () => redis?.close());
  }
  return redis;
}

export async function kickedAt(user: string): Promise<number | null> {
  const v = await db().sendCommand(["HGET", `${PREFIX}kicked`, user]);
  return typeof v === "string" ? Number(v) : null;
}

export async function markKicked(user: string, at = Date.now()): Promise<void> {
  await db().sendCommand(["HSET", `${PREFIX}kicked`, user, String(at)]);
}

/** Record a member_left once per event id; false when that id was handled already. */
export async function recordLeft(eventId: string, user: string, ts: number): Promise<boolean> {
  const first = await db().sendCommand(["SET", `${PREFIX}event:${eventId}`, "1", "NX", "EX", "86400"]);
  if (first === null) return false;
  // keep the latest: an older event delivered late must not move "last seen" back
  const prev = await db().sendCommand(["HGET", `${PREFIX}last-seen`, user]);
  if (typeof prev === "string" && Number(prev) >= ts) return true;
  await db().sendCommand(["HSET", `${PREFIX}last-seen`, user, String(ts)]);
  return true;
}

export async function lastSeen(): Promise<Record<string, number>> {
  const flat = await db().sendCommand(["HGETALL", `${PREFIX}last-seen`]);
  const out: Record<string, number> = {};
  if (Array.isArray(flat)) for (let i = 0; i + 1 < flat.length; i += 2) out[String(flat[i])] = Number(flat[i + 1]);
  return out;
}
