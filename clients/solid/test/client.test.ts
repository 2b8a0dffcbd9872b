import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { HEARTBEAT_TIMEOUT_CODE, RoomcastClient, RoomcastError, type RoomcastOptions } from "../src/client.js";
import { FakeWebSocket } from "./fake-ws.js";

const URL = "ws://gw.test/ws";

function client(opts: RoomcastOptions = {}): RoomcastClient {
  // random() = 0: no jitter taken off, so the delays are exact
  return new RoomcastClient(URL, { WebSocket: FakeWebSocket, random: () => 0, ...opts });
}
const sockets = () => FakeWebSocket.instances.length;
const tick = (ms: number) => vi.advanceTimersByTimeAsync(ms);

/** Advance to just before `delay`, check nothing new was opened, then to `delay`. */
async function expectReconnectAfter(delay: number): Promise<FakeWebSocket> {
  const before = sockets();
  if (delay > 0) {
    await tick(delay - 1);
    expect(sockets(), `no reconnect before ${delay} ms`).toBe(before);
  }
  await tick(1);
  expect(sockets(), `a reconnect at ${delay} ms`).toBe(before + 1);
  return FakeWebSocket.last;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("reconnect and backoff", () => {
  it("backs off exponentially up to the cap after connections that drop", async () => {
    const c = client({ backoff: { initialMs: 500, maxMs: 8000 }, heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1006);
    expect(c.info.state).toBe("reconnecting");
    for (const delay of [500, 1000, 2000, 4000, 8000, 8000, 8000]) {
      const ws = await expectReconnectAfter(delay);
      ws.accept().serverClose(1006); // open, then dropped before the connection is stable
    }
  });

  it("takes up to `jitter` of every delay off at random", async () => {
    client({ backoff: { initialMs: 1000, jitter: 0.5 }, random: () => 1, heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1006);
    (await expectReconnectAfter(500)).accept().serverClose(1006);
    await expectReconnectAfter(1000);
  });

  it("resets the backoff once a connection has stayed up", async () => {
    client({ backoff: { initialMs: 500 }, stableMs: 5000, heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1006);
    (await expectReconnectAfter(500)).accept().serverClose(1006);
    const ws = await expectReconnectAfter(1000);
    ws.accept();
    await tick(5000);
    ws.serverClose(1006);
    await expectReconnectAfter(500);
  });

  it("reconnects at once after 1001 (node shutting down), once per stable connection", async () => {
    client({ heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1001, "shutting down");
    const ws = await expectReconnectAfter(0);
    ws.accept().serverClose(1001); // again, before the new connection was stable: back off
    await expectReconnectAfter(500);
  });

  it("backs off hard after 1008 instead of reconnecting in a loop", async () => {
    const c = client({ policyDelayMs: 30_000, heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1008, "rate limit");
    expect(c.info.lastClose).toEqual({ code: 1008, reason: "rate limit", wasOpen: true });
    (await expectReconnectAfter(30_000)).accept().serverClose(1008);
    (await expectReconnectAfter(60_000)).accept().serverClose(1008);
    await expectReconnectAfter(120_000);
  });

  it("treats repeated failures before open as a handshake refusal and backs off hard", async () => {
    const c = client({ refusal: { after: 5, delayMs: 60_000, maxMs: 600_000 }, heartbeat: false });
    FakeWebSocket.last.refuse();
    for (const delay of [500, 1000, 2000, 4000]) (await expectReconnectAfter(delay)).refuse();
    expect(c.info.refused).toBe(true);
    (await expectReconnectAfter(60_000)).refuse();
    (await expectReconnectAfter(120_000)).refuse();
    // no storm: at most a handful of attempts in the next hour
    await tick(3_600_000);
    expect(sockets()).toBeLessThan(20);
    // a connection that opens clears the refusal
    FakeWebSocket.last.accept();
    expect(c.info.refused).toBe(false);
    expect(c.info.state).toBe("open");
  });

  it("does not open a socket after close() during the reconnect gap", async () => {
    const c = client({ heartbeat: false });
    FakeWebSocket.last.accept().serverClose(1006);
    expect(c.info.state).toBe("reconnecting");
    c.close();
    await tick(600_000);
    expect(sockets()).toBe(1);
    expect(c.info.state).toBe("closed");
  });

  it("does not reconnect after close() of an open connection, and reconnects on connect()", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept();
    c.close();
    expect(ws.closedWith).toEqual({ code: 1000, reason: "closed by client" });
    await tick(600_000);
    expect(sockets()).toBe(1);
    c.connect();
    expect(sockets()).toBe(2);
  });
});

describe("tokens", () => {
  it("calls getToken() before every connect, and reconnects at once with a new token after 4001", async () => {
    let n = 0;
    const getToken = vi.fn(async () => `tok${++n}`);
    client({ getToken, heartbeat: false });
    await tick(0);
    expect(FakeWebSocket.last.url).toBe(`${URL}?token=tok1`);
    FakeWebSocket.last.accept().serverClose(4001, "token expired");
    await tick(0);
    expect(sockets()).toBe(2);
    expect(FakeWebSocket.last.url).toBe(`${URL}?token=tok2`);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it("reconnects after a 4000 from the backend, with the usual backoff", async () => {
    const c = client({ heartbeat: false });
    FakeWebSocket.last.accept().serverClose(4000, "reconnect");
    await tick(0);
    expect(c.info.state).toBe("reconnecting");
    await tick(500);
    expect(sockets()).toBe(2);
  });

  it("stops in the forbidden state after a 4403 and reconnects only when asked", async () => {
    const c = client({ heartbeat: false });
    FakeWebSocket.last.accept().serverClose(4403, "banned");
    await tick(60_000);
    expect(sockets()).toBe(1);
    expect(c.info.state).toBe("forbidden");
    c.reconnect();
    await tick(0);
    expect(sockets()).toBe(2);
  });

  it("backs off when getToken() fails", async () => {
    let fail = true;
    const c = client({ getToken: () => (fail ? Promise.reject(new Error("no session")) : "t"), heartbeat: false });
    await tick(0);
    expect(sockets()).toBe(0);
    expect(c.info.state).toBe("reconnecting");
    fail = false;
    await tick(500);
    expect(sockets()).toBe(1);
  });
});

describe("server subscriptions", () => {
  it("lists a room the server joined, and forgets it when the server takes it back", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept({ autoReply: true });
    const joined = vi.fn();
    c.on("joined", joined);
    ws.push({ type: "joined", room: "team:1", server: true, history: 0 });
    expect(c.rooms).toEqual(["team:1"]);
    expect(joined).toHaveBeenCalledWith(expect.objectContaining({ room: "team:1", server: true }));
    ws.push({ type: "message", room: "team:1", id: "m1", data: 1, from: "server", ts: 1 });
    ws.push({ type: "left", room: "team:1", reason: "unsubscribed" });
    expect(c.rooms).toEqual([]);
  });

  it("does not join again on reconnect a room the server took it out of", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept({ autoReply: true });
    const joining = c.join("team:2").catch((e: RoomcastError) => e);
    await tick(0);
    expect(c.rooms).toEqual(["team:2"]);
    ws.push({ type: "left", room: "team:2", reason: "unsubscribed" });
    expect(c.rooms).toEqual([]);
    // A join still waiting is refused with the server's reason.
    expect(await joining).toMatchObject({ code: "unsubscribed" });
    ws.serverClose(1006);
    await tick(500);
    const next = FakeWebSocket.last.accept({ autoReply: true });
    await tick(0);
    expect(next.commands.filter((cmd) => cmd.type === "join")).toEqual([]);
  });
});

describe("heartbeat", () => {
  it("sends the text ping after a quiet interval and stays connected while it is answered", async () => {
    client({ heartbeat: { intervalMs: 1000, timeoutMs: 1500 } });
    const ws = FakeWebSocket.last.accept({ autoReply: true });
    await tick(10_000);
    expect(ws.pings).toBeGreaterThanOrEqual(9);
    expect(sockets()).toBe(1);
  });

  it("reconnects once after a missed answer, and not again while pings are answered", async () => {
    // makeHeartbeatWS of @solid-primitives/websocket 1.3.2 reconnects every `delay` ms forever
    // after one missed answer: the abandoned socket's late close event schedules another one.
    const c = client({ heartbeat: { intervalMs: 1000, timeoutMs: 1500 }, backoff: { initialMs: 500 } });
    const dead = FakeWebSocket.last.accept(); // does not answer
    await tick(1000);
    expect(dead.pings).toBe(1);
    await tick(1499);
    expect(sockets()).toBe(1);
    await tick(1);
    expect(dead.closedWith?.code).toBe(HEARTBEAT_TIMEOUT_CODE);
    expect(HEARTBEAT_TIMEOUT_CODE, "not a code the gateway uses").toBe(4408);
    expect(c.info.lastClose).toEqual({ code: 4408, reason: "heartbeat timeout", wasOpen: true });
    const fresh = await expectReconnectAfter(500);
    fresh.accept({ autoReply: true });
    await tick(600_000); // the dead socket's close event comes meanwhile
    expect(sockets()).toBe(2);
    expect(fresh.pings).toBeGreaterThan(100);
    expect(dead.pings).toBe(1);
    expect(c.info.state).toBe("open");
  });

  it("counts any frame as an answer and pings only after a quiet interval", async () => {
    client({ heartbeat: { intervalMs: 1000, timeoutMs: 1500 } });
    const ws = FakeWebSocket.last.accept();
    for (let i = 0; i < 20; i++) {
      await tick(900);
      ws.push({ type: "broadcast", id: `b${i}`, data: i, ts: 1 });
    }
    expect(ws.pings).toBe(0);
    expect(sockets()).toBe(1);
  });
});

describe("send queue", () => {
  it("queues publishes while disconnected, up to maxQueue, and flushes them after rejoining", async () => {
    const c = client({ maxQueue: 3, heartbeat: false });
    void c.join("lobby");
    const acks = [c.publish("lobby", 1), c.publish("lobby", 2), c.publish("lobby", 3)];
    const overflow = c.publish("lobby", 4);
    await expect(overflow).rejects.toMatchObject({ code: "queue_full" });
    expect(c.info.queued).toBe(3);
    const ws = FakeWebSocket.last.accept({ autoReply: true });
    expect(ws.commands.map((x) => [x.type, x.data ?? x.room])).toEqual([
      ["join", "lobby"],
      ["publish", 1],
      ["publish", 2],
      ["publish", 3],
    ]);
    const done = await Promise.all(acks);
    expect(done.map((a) => a.type)).toEqual(["ack", "ack", "ack"]);
    expect(c.info.queued).toBe(0);
  });

  it("fails commands in flight with `disconnected` when the connection drops", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept();
    const p = c.publish("lobby", "x");
    ws.serverClose(1006);
    await expect(p).rejects.toBeInstanceOf(RoomcastError);
    await expect(p).rejects.toMatchObject({ code: "disconnected" });
  });

  it("sends publish options: echo and a conflation key", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept();
    void c.publish("prices", { p: 1 }, { key: "EURUSD", echo: false });
    void c.publish("prices", { p: 2 });
    expect(ws.commands.map(({ id: _, ...cmd }) => cmd)).toEqual([
      { type: "publish", room: "prices", data: { p: 1 }, echo: false, key: "EURUSD" },
      { type: "publish", room: "prices", data: { p: 2 } },
    ]);
  });

  it("rejects a command with the server's error code", async () => {
    const c = client({ heartbeat: false });
    const ws = FakeWebSocket.last.accept();
    const p = c.publish("lobby", "x");
    const id = ws.commands[0]!.id;
    ws.push({ type: "error", code: "not_joined", message: "join first", id });
    await expect(p).rejects.toMatchObject({ code: "not_joined" });
  });
});

describe("rejoin", () => {
  it("rejoins every room after a reconnect", async () => {
    const c = client({ heartbeat: false });
    void c.join("a");
    void c.join("b");
    FakeWebSocket.last.accept({ autoReply: true }).serverClose(1006);
    const ws = await expectReconnectAfter(500);
    ws.accept({ autoReply: true });
    expect(ws.commands.map((x) => [x.type, x.room, x.since])).toEqual([
      ["join", "a", undefined],
      ["join", "b", undefined],
    ]);
    expect(c.roomNames).toEqual(["a", "b"]);
  });

  it("does not rejoin a room it left", async () => {
    const c = client({ heartbeat: false });
    c.join("a").catch(() => {}); // rejects with "left"
    void c.join("b");
    const ws1 = FakeWebSocket.last.accept({ autoReply: true });
    await c.leave("a");
    expect(ws1.commands.at(-1)).toMatchObject({ type: "leave", room: "a" });
    ws1.serverClose(1006);
    const ws = await expectReconnectAfter(500);
    ws.accept({ autoReply: true });
    expect(ws.commands.map((x) => x.room)).toEqual(["b"]);
  });

  it("rejoins a room with history with since = the last message id, drops replayed duplicates and reports recovered", async () => {
    const c = client({ heartbeat: false });
    const got: string[] = [];
    const joins: Array<[boolean, boolean | undefined]> = [];
    c.on("message", (m) => got.push(m.id));
    c.on("joined", (e) => joins.push([e.rejoin, e.recovered]));
    void c.join("news", { history: 10 });
    const ws1 = FakeWebSocket.last.accept();
    expect(ws1.commands[0]).toMatchObject({ type: "join", room: "news", history: 10 });
    expect(ws1.commands[0]!.since).toBeUndefined();
    ws1.push({ type: "joined", room: "news", id: ws1.commands[0]!.id, history: 2 });
    for (const id of ["h1-1", "h1-2"]) ws1.push({ type: "message", room: "news", id, data: id, from: "server", ts: 1 });
    ws1.serverClose(1006);

    const ws2 = await expectReconnectAfter(500);
    ws2.accept();
    const join = ws2.commands[0]!;
    expect(join).toMatchObject({ type: "join", room: "news", since: "h1-2" });
    ws2.push({ type: "joined", room: "news", id: join.id, recovered: true });
    // the server replays from since; a message seen before must not appear twice
    for (const id of ["h1-2", "h1-3"]) ws2.push({ type: "message", room: "news", id, data: id, from: "server", ts: 1 });
    expect(got).toEqual(["h1-1", "h1-2", "h1-3"]);
    ws2.serverClose(1006);

    const ws3 = await expectReconnectAfter(1000);
    ws3.accept();
    expect(ws3.commands[0]).toMatchObject({ since: "h1-3" });
    ws3.push({ type: "joined", room: "news", id: ws3.commands[0]!.id, recovered: false });
    expect(joins).toEqual([
      [false, undefined],
      [true, true],
      [true, false],
    ]);
  });

  it("drops a room the server refuses and keeps the others", async () => {
    const c = client({ heartbeat: false });
    const refused = c.join("secret");
    const errors: string[] = [];
    c.on("roomError", (e) => errors.push(`${e.room}:${e.error.code}:${e.dropped}`));
    void c.join("lobby");
    const ws = FakeWebSocket.last.accept();
    ws.push({ type: "error", code: "forbidden", message: "no", id: ws.commands[0]!.id });
    await expect(refused).rejects.toMatchObject({ code: "forbidden" });
    expect(errors).toEqual(["secret:forbidden:true"]);
    expect(c.roomNames).toEqual(["lobby"]);
  });

  it("retries a join refused as unavailable with backoff, and reports it", async () => {
    const c = client({ heartbeat: false, backoff: { initialMs: 500 } });
    const errors: string[] = [];
    c.on("roomError", (e) => errors.push(`${e.error.code}:${e.dropped}`));
    const joined = c.join("news");
    const ws = FakeWebSocket.last.accept();
    const refuse = () => {
      const join = ws.commands.at(-1)!;
      expect(join).toMatchObject({ type: "join", room: "news" });
      ws.push({ type: "error", code: "unavailable", message: "broker down", id: join.id });
    };
    refuse();
    for (const delay of [1000, 2000, 4000]) {
      const before = ws.commands.length;
      await tick(delay - 1);
      expect(ws.commands.length).toBe(before);
      await tick(1);
      expect(ws.commands.length).toBe(before + 1);
      if (delay < 4000) refuse();
    }
    ws.push({ type: "joined", room: "news", id: ws.commands.at(-1)!.id });
    await expect(joined).resolves.toMatchObject({ room: "news" });
    expect(errors).toEqual(["unavailable:false", "unavailable:false", "unavailable:false"]);
  });
});

describe("token refresh in band", () => {
  /** A client whose getToken() gives tok1, tok2, … (or fails while `fail.now`), connected. */
  async function connected(fail = { now: false }) {
    let n = 0;
    const getToken = vi.fn(async () => {
      if (fail.now) throw new Error("session gone");
      return `tok${++n}`;
    });
    const c = client({ getToken, heartbeat: false });
    await tick(0);
    const ws = FakeWebSocket.last.accept();
    expect(ws.url).toBe(`${URL}?token=tok1`);
    return { c, ws, getToken };
  }
  const refreshOf = (ws: FakeWebSocket) => ws.commands.find((cmd) => cmd.type === "refresh");

  it("on token_expiring calls getToken() and sends refresh with the new token", async () => {
    const { ws, getToken } = await connected();
    expect(refreshOf(ws)).toBeUndefined();
    ws.push({ type: "token_expiring", in_ms: 30_000 });
    await tick(0);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(refreshOf(ws)).toMatchObject({ type: "refresh", token: "tok2" });
  });

  it("does not reconnect when the refresh is accepted", async () => {
    const { c, ws } = await connected();
    const refreshed = vi.fn();
    c.on("refreshed", refreshed);
    ws.push({ type: "token_expiring", in_ms: 30_000 });
    await tick(0);
    ws.push({ type: "refreshed", exp: 1_900_000_000, id: refreshOf(ws)!.id });
    await tick(0);
    expect(refreshed).toHaveBeenCalledWith(expect.objectContaining({ exp: 1_900_000_000 }));
    await tick(600_000);
    expect(sockets()).toBe(1);
    expect(ws.closedWith).toBeUndefined();
    expect(c.info.state).toBe("open");
    expect(c.info.lastClose).toBeNull();
  });

  it("reconnects at once with a fresh token when the refresh is refused", async () => {
    const { c, ws, getToken } = await connected();
    ws.push({ type: "token_expiring", in_ms: 30_000 });
    await tick(0);
    ws.push({ type: "error", code: "invalid_token", message: "token refused: the token has expired", id: refreshOf(ws)!.id });
    await tick(0);
    expect(ws.closedWith?.code).toBe(4001);
    expect(sockets()).toBe(2);
    expect(FakeWebSocket.last.url).toBe(`${URL}?token=tok3`);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(c.info.lastClose).toMatchObject({ code: 4001, wasOpen: true });
  });

  it("reconnects when getToken() fails for the refresh", async () => {
    const fail = { now: false };
    const { ws } = await connected(fail);
    fail.now = true;
    ws.push({ type: "token_expiring", in_ms: 30_000 });
    await tick(0);
    expect(refreshOf(ws)).toBeUndefined();
    expect(ws.closedWith?.code).toBe(4001);
    fail.now = false;
    await tick(500); // the reconnect's own getToken() failed: backed off, then tried again
    expect(sockets()).toBe(2);
  });

  it("drops a room the server left with a reason instead of rejoining it", async () => {
    const { c, ws } = await connected();
    ws.autoReply = true;
    c.join("lobby").catch(() => {}); // the fake answers before join() waits: settled by the left
    void c.join("team:1");
    expect(ws.commands.map((cmd) => cmd.room)).toEqual(["lobby", "team:1"]);
    const errors: string[] = [];
    c.on("roomError", (e) => e.dropped && errors.push(`${e.room}:${e.error.code}`));
    ws.push({ type: "left", room: "lobby", reason: "forbidden" });
    expect(errors).toEqual(["lobby:forbidden"]);
    expect(c.roomNames).toEqual(["team:1"]);
    ws.serverClose(1006);
    await tick(500);
    const next = FakeWebSocket.last.accept({ autoReply: true });
    await tick(0);
    expect(next.commands.filter((cmd) => cmd.type === "join").map((cmd) => cmd.room)).toEqual(["team:1"]);
  });
});
