// Against a real roomcast node (JWT mode, Redis broker) and a real redis-server, both started
// here on free loopback ports and stopped by PID in afterAll (also when a test fails; a process
// exit handler SIGKILLs whatever is left if vitest itself is stopped). The binary is
// ROOMCAST_BIN, else E2E_GATEWAY_BIN (scripts/test-browser builds it), else
// ../../target/debug/roomcast; redis-server is REDIS_SERVER, else the one on PATH.
// Every wait is bounded: an event awaited for at most a few seconds, never a sleep.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { RoomcastAdmin, RoomcastRedis, connectRedis, mintToken, type RedisConnection } from "../src/index.js";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const BIN = resolve(process.env.ROOMCAST_BIN || process.env.E2E_GATEWAY_BIN || join(HERE, "../../../target/debug/roomcast"));
const REDIS_SERVER = process.env.REDIS_SERVER || "redis-server";
const SECRET = "it-secret-" + Math.random().toString(36).slice(2);
const API_KEY = "it-key";
const WAIT_MS = 8000;

const work = mkdtempSync(join(tmpdir(), "roomcast-server-it-"));
const children: { name: string; proc: ChildProcess; log: string }[] = [];
const sockets = new Set<WebSocket>();
let redisConn: RedisConnection | null = null;

function killAll(signal: NodeJS.Signals): void {
  for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill(signal);
}
process.once("exit", () => killAll("SIGKILL"));

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => res(port));
    });
  });
}

function start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  const log = join(work, `${name}.log`);
  const fd = openSync(log, "a");
  const proc = spawn(cmd, args, { stdio: ["ignore", fd, fd], env });
  closeSync(fd);
  const child = { name, proc, log };
  children.push(child);
  return child;
}

async function stop(child: { proc: ChildProcess }): Promise<void> {
  const { proc } = child;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((res) => proc.once("exit", () => res()));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Poll `check` until it is true, at most `ms`; `dead` fails at once (a process that exited). */
async function until(what: string, check: () => Promise<boolean>, dead: () => string | null, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const reason = dead();
    if (reason) throw new Error(`${what}: ${reason}`);
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: not within ${ms} ms`);
}

const exitedWith = (c: { name: string; proc: ChildProcess; log: string }) => () =>
  c.proc.exitCode !== null || c.proc.signalCode !== null ? `${c.name} exited (${c.proc.exitCode ?? c.proc.signalCode}): ${readFileSync(c.log, "utf8").slice(-2000)}` : null;

// ---- a WebSocket client that keeps every frame and lets a test await one --------------------

interface Frame {
  type: string;
  [k: string]: unknown;
}

class Client {
  readonly frames: Frame[] = [];
  private waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly ws: WebSocket) {
    sockets.add(ws);
    ws.on("message", (raw) => {
      const text = raw.toString();
      if (text === "pong") return;
      const frame = JSON.parse(text) as Frame;
      this.frames.push(frame);
      this.waiters = this.waiters.filter((w) => (w.match(frame) ? (w.resolve(frame), false) : true));
    });
    this.closed = new Promise((res) => ws.once("close", (code, reason) => (sockets.delete(ws), res({ code, reason: reason.toString() }))));
  }

  /** Open a connection; resolves after `welcome`, rejects with the handshake's HTTP status. */
  static open(url: string, token?: string): Promise<Client> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(token ? `${url}?token=${encodeURIComponent(token)}` : url);
      const client = new Client(ws);
      const timer = setTimeout(() => (ws.terminate(), reject(new Error("no welcome in time"))), WAIT_MS);
      let refused = false;
      ws.once("unexpected-response", (_req, res) => {
        refused = true;
        clearTimeout(timer);
        let body = "";
        res.on("data", (c: Buffer) => (body += c));
        res.on("end", () => {
          reject(Object.assign(new Error(`HTTP ${res.statusCode}: ${body}`), { status: res.statusCode, body }));
          ws.terminate();
        });
      });
      ws.once("error", (err) => {
        if (refused) return; // reported with its status above
        clearTimeout(timer);
        reject(err);
      });
      client.next((f) => f.type === "welcome").then(() => (clearTimeout(timer), resolve(client)), reject);
    });
  }

  /** The first frame (already received or to come) that matches, within WAIT_MS. */
  next(match: (f: Frame) => boolean, what = "a frame"): Promise<Frame> {
    const seen = this.frames.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms; got ${JSON.stringify(this.frames)}`)), WAIT_MS);
      this.waiters.push({ match, resolve: (f) => (clearTimeout(timer), resolve(f)) });
    });
  }

  send(frame: object): void {
    this.ws.send(JSON.stringify(frame));
  }

  async join(room: string, extra: object = {}): Promise<Frame> {
    const id = `j-${room}-${Math.random()}`;
    this.send({ type: "join", room, id, ...extra });
    return this.next((f) => f.id === id, `the reply to join ${room}`);
  }

  closedWithin(): Promise<{ code: number; reason: string }> {
    return Promise.race([this.closed, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`not closed within ${WAIT_MS} ms`)), WAIT_MS))]);
  }
}

// ---- the node --------------------------------------------------------------------------------

let wsUrl = "";
let admin: RoomcastAdmin;
let viaRedis: RoomcastRedis;
const now = () => Math.floor(Date.now() / 1000);
/** A token issued a few seconds ago: a user revocation refuses tokens issued before it (a
 * token of the revocation's own second is not revoked, docs/protocol.md "Revocations"). */
const token = (sub: string, extra: Parameters<typeof mintToken>[1] = { sub }) => mintToken(SECRET, { ...extra, sub, now: now() - 5 });

beforeAll(async () => {
  if (!existsSync(BIN)) throw new Error(`no roomcast binary at ${BIN}: cargo build --bin roomcast, or set ROOMCAST_BIN`);
  const redisPort = await freePort();
  const redis = start("redis", REDIS_SERVER, ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  const redisUrl = `redis://127.0.0.1:${redisPort}`;
  redisConn = connectRedis(redisUrl);
  await until("redis-server up", async () => (await redisConn!.sendCommand(["PING"])) === "PONG", exitedWith(redis));

  const [wsPort, adminPort] = [await freePort(), await freePort()];
  const config = join(work, "roomcast.toml");
  writeFileSync(
    config,
    [
      "[admin]",
      `api_key = "${API_KEY}"`,
      "[auth]",
      'mode = "jwt"',
      `jwt_secret = "${SECRET}"`,
      "[history]",
      'rooms = [{ pattern = "hist:*", size = 50, ttl_s = 600 }]',
      "",
    ].join("\n"),
  );
  // roomcast reads every ROOMCAST_SECTION__KEY variable: keep the caller's out
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROOMCAST_")));
  const node = start("roomcast", BIN, ["--config", config, "--listen", `127.0.0.1:${wsPort}`, "--admin-listen", `127.0.0.1:${adminPort}`, "--redis", redisUrl, "--node-id", "server-it"], {
    ...env,
    RUST_LOG: env.RUST_LOG || "info",
  });
  await until("roomcast ready", async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200, exitedWith(node));
  wsUrl = `ws://127.0.0.1:${wsPort}/ws`;
  admin = new RoomcastAdmin({ url: `http://127.0.0.1:${adminPort}`, apiKey: API_KEY });
  viaRedis = new RoomcastRedis(redisConn, { history: [{ pattern: "hist:*", size: 50, ttlS: 600 }] });
}, 60_000);

afterAll(async () => {
  for (const ws of sockets) ws.terminate();
  redisConn?.close();
  for (const c of [...children].reverse()) await stop(c); // the node first, redis last
  rmSync(work, { recursive: true, force: true });
}, 30_000);

describe("against a real gateway node and redis-server", () => {
  it("accepts a token minted by the package, and refuses one signed with another secret (401)", async () => {
    const alice = await Client.open(wsUrl, token("alice"));
    expect((await alice.next((f) => f.type === "welcome")).user).toBe("alice");
    const wrong = mintToken("not-the-secret", { sub: "alice" });
    await expect(Client.open(wsUrl, wrong)).rejects.toMatchObject({ status: 401 });
    alice.ws.close();
  });

  it("applies the token's rooms claim: a room outside it is forbidden", async () => {
    const bob = await Client.open(wsUrl, token("bob", { sub: "bob", rooms: ["chat:*"] }));
    expect((await bob.join("chat:ok")).type).toBe("joined");
    expect(await bob.join("secret:1")).toMatchObject({ type: "error", code: "forbidden" });
    bob.ws.close();
  });

  it("publishes through the admin API and through a Redis PUBLISH to a member, with the ids returned", async () => {
    const alice = await Client.open(wsUrl, token("alice"));
    await alice.join("chat:pub");
    const viaAdmin = await admin.publish("chat:pub", { text: "from admin" });
    const a = await alice.next((f) => f.type === "message" && f.id === viaAdmin.id, "the admin publish");
    expect(a).toMatchObject({ room: "chat:pub", data: { text: "from admin" }, from: "server" });

    const viaPublish = await viaRedis.publish("chat:pub", { text: "from redis" });
    expect(viaPublish.receivers).toBeGreaterThanOrEqual(1);
    const r = await alice.next((f) => f.type === "message" && f.id === viaPublish.id, "the Redis publish (carrying our id)");
    expect(r).toMatchObject({ room: "chat:pub", data: { text: "from redis" }, from: "server" });

    await viaRedis.notify("alice", { kind: "redis-note" });
    await admin.notify("alice", { kind: "admin-note" });
    await viaRedis.broadcast({ kind: "everyone" });
    await alice.next((f) => f.type === "notification" && (f.data as { kind: string }).kind === "redis-note", "the Redis notification");
    await alice.next((f) => f.type === "notification" && (f.data as { kind: string }).kind === "admin-note", "the admin notification");
    await alice.next((f) => f.type === "broadcast" && (f.data as { kind: string }).kind === "everyone", "the Redis broadcast");
    alice.ws.close();
  });

  it("keeps a Redis publish to a history room through roomcast_publish: live with an h…-N id, then replayed to a later join", async () => {
    const alice = await Client.open(wsUrl, token("alice"));
    await alice.join("hist:1");
    const kept = await viaRedis.publish("hist:1", { text: "kept" });
    expect(kept.id).toMatch(/^h[0-9a-f]+-\d+$/);
    await alice.next((f) => f.type === "message" && f.id === kept.id, "the kept message, live");
    const late = await Client.open(wsUrl, token("late"));
    const joined = await late.join("hist:1", { history: 10 });
    expect(joined).toMatchObject({ type: "joined", history: 1 });
    expect(await late.next((f) => f.type === "message" && f.room === "hist:1", "the replay")).toMatchObject({ id: kept.id, data: { text: "kept" } });
    alice.ws.close();
    late.ws.close();
  });

  it("kicks: 4000 by default, 4403 with the reason given, through the admin API and through Redis", async () => {
    const one = await Client.open(wsUrl, token("kick1"));
    await admin.kick("kick1");
    expect(await one.closedWithin()).toMatchObject({ code: 4000 });
    const two = await Client.open(wsUrl, token("kick2"));
    await admin.kick("kick2", { code: 4403, reason: "banned" });
    expect(await two.closedWithin()).toEqual({ code: 4403, reason: "banned" });
    const three = await Client.open(wsUrl, token("kick3"));
    await viaRedis.kick("kick3", { code: 4403, reason: "by redis" });
    expect(await three.closedWithin()).toEqual({ code: 4403, reason: "by redis" });
    const conn = await Client.open(wsUrl, token("kick4"));
    const connId = (await conn.next((f) => f.type === "welcome")).conn_id as string;
    await admin.disconnect({ connId });
    expect(await conn.closedWithin()).toMatchObject({ code: 4000 });
  });

  it("revokes: the live connection closes 4403 'token revoked', the old token is refused (401), a fresh one works", async () => {
    const old = token("carol");
    const carol = await Client.open(wsUrl, old);
    await admin.revoke({ user: "carol", until: now() + 600 });
    expect(await carol.closedWithin()).toEqual({ code: 4403, reason: "token revoked" });
    await expect(Client.open(wsUrl, old)).rejects.toMatchObject({ status: 401, body: expect.stringContaining("token revoked") });
    const fresh = await Client.open(wsUrl, mintToken(SECRET, { sub: "carol" }));
    fresh.ws.close();

    const byJti = mintToken(SECRET, { sub: "dave", jti: "jti-dave-1" });
    (await Client.open(wsUrl, byJti)).ws.close();
    await admin.revoke({ jti: "jti-dave-1", until: now() + 600 });
    await expect(Client.open(wsUrl, byJti)).rejects.toMatchObject({ status: 401 });
  });

  it("subscribes: joined {server: true} by /api/subscribe and by the token's subs, left on /api/unsubscribe", async () => {
    const erin = await Client.open(wsUrl, token("erin", { sub: "erin", subs: ["feed:erin"] }));
    expect(await erin.next((f) => f.type === "joined" && f.room === "feed:erin", "the subs claim's join")).toMatchObject({ server: true });
    await admin.subscribe("erin", "team:7");
    expect(await erin.next((f) => f.type === "joined" && f.room === "team:7", "the server join")).toMatchObject({ server: true });
    const msg = await admin.publish("team:7", "hello team");
    await erin.next((f) => f.type === "message" && f.id === msg.id, "a message in the server-joined room");
    await admin.unsubscribe("erin", "team:7");
    expect(await erin.next((f) => f.type === "left" && f.room === "team:7", "the server leave")).toMatchObject({ reason: "unsubscribed" });
    erin.ws.close();
  });

  it("reports the admin API's refusals: wrong key (401 unauthorized), invalid room (400)", async () => {
    const noKey = new RoomcastAdmin({ url: admin.url, apiKey: "wrong" });
    await expect(noKey.publish("chat:1", 1)).rejects.toMatchObject({ status: 401, code: "unauthorized" });
    await expect(admin.subscribe("erin", "bad room")).rejects.toMatchObject({ status: 400, code: "invalid_room" });
  });
});
