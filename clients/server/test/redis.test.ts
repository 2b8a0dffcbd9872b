import net from "node:net";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { RoomcastError, RoomcastRedis, connectRedis, fromIoredis, globMatch, type RedisCommander } from "../src/index.js";
import { RespParser, encodeCommand } from "../src/resp.js";

function recorder(reply: (args: string[]) => unknown = () => 1): RedisCommander & { calls: string[][] } {
  const calls: string[][] = [];
  return { calls, sendCommand: async (args) => (calls.push(args), reply(args)) };
}

describe("RoomcastRedis", () => {
  it("PUBLISHes {id, ts, data} on the room, user and broadcast channels, with an id of its own", async () => {
    const redis = recorder(() => 2);
    const rc = new RoomcastRedis(redis);
    const before = Date.now();
    const published = await rc.publish("news", { headline: "hello" });
    await rc.notify("42", { kind: "paid" });
    await rc.broadcast("up");
    expect(redis.calls.map((c) => c.slice(0, 2))).toEqual([
      ["PUBLISH", "roomcast:room:news"],
      ["PUBLISH", "roomcast:user:42"],
      ["PUBLISH", "roomcast:broadcast"],
    ]);
    const envelope = JSON.parse(redis.calls[0][2]);
    expect(envelope).toEqual({ id: published.id, ts: envelope.ts, data: { headline: "hello" } });
    expect(envelope.ts).toBeGreaterThanOrEqual(before);
    expect(published.receivers).toBe(2);
    expect(JSON.parse(redis.calls[2][2]).data).toBe("up");
    // the gateway reads a payload with node and conn as a client's: never send them
    for (const c of redis.calls) expect(Object.keys(JSON.parse(c[2])).sort()).toEqual(["data", "id", "ts"]);
    expect(JSON.parse(redis.calls[1][2]).id).not.toBe(published.id);
  });

  it("keeps history rooms with FCALL roomcast_publish 1 CHANNEL {data} SIZE TTL_S, by the first matching rule", async () => {
    const redis = recorder((args) => (args[0] === "FCALL" ? "h0000abcd-7" : 1));
    const rc = new RoomcastRedis(redis, { prefix: "app:", history: [{ pattern: "chat:*", size: 50, ttlS: 600 }, { pattern: "*", size: 1 }] });
    expect(await rc.publish("chat:lobby", { text: "hi", id: "mine" })).toEqual({ id: "h0000abcd-7" });
    await rc.publish("other", 1);
    await rc.publish("chat:x", 2, { history: false });
    await rc.publish("plain", 3, { history: true });
    expect(redis.calls).toEqual([
      ["FCALL", "roomcast_publish", "1", "app:room:chat:lobby", '{"data":{"text":"hi","id":"mine"}}', "50", "600"],
      ["FCALL", "roomcast_publish", "1", "app:room:other", '{"data":1}', "1", "3600"],
      ["PUBLISH", "app:room:chat:x", expect.any(String)],
      ["FCALL", "roomcast_publish", "1", "app:room:plain", '{"data":3}'],
    ]);
  });

  it("sends the disconnect control envelope on the user's channel, or the broadcast for a conn_id alone", async () => {
    const redis = recorder();
    const rc = new RoomcastRedis(redis);
    await rc.kick("42", { code: 4403, reason: "banned" });
    await rc.disconnect({ connId: "n.3" });
    await rc.disconnect({ user: "42", connId: "n.4" });
    expect(redis.calls).toEqual([
      ["PUBLISH", "roomcast:user:42", '{"control":"disconnect","code":4403,"reason":"banned"}'],
      ["PUBLISH", "roomcast:broadcast", '{"control":"disconnect","conn_id":"n.3"}'],
      ["PUBLISH", "roomcast:user:42", '{"control":"disconnect","conn_id":"n.4"}'],
    ]);
    await expect(rc.disconnect({})).rejects.toThrow(/user or connId/);
  });

  it("uses SPUBLISH for room and user channels on a cluster, PUBLISH for the broadcast", async () => {
    const redis = recorder();
    const rc = new RoomcastRedis(redis, { cluster: true });
    await rc.publish("r", 1);
    await rc.notify("u", 1);
    await rc.broadcast(1);
    await rc.kick("u");
    expect(redis.calls.map((c) => c[0])).toEqual(["SPUBLISH", "SPUBLISH", "PUBLISH", "SPUBLISH"]);
  });

  it("refuses an invalid room or user before sending, and wraps Redis errors with a hint", async () => {
    const redis = recorder();
    const rc = new RoomcastRedis(redis);
    await expect(rc.publish("no spaces", 1)).rejects.toMatchObject({ code: "invalid_room" });
    await expect(rc.notify("", 1)).rejects.toMatchObject({ code: "bad_request" });
    expect(redis.calls).toEqual([]);
    const failing = new RoomcastRedis({ sendCommand: async () => Promise.reject(new Error("ERR Function not found")) }, { history: [{ pattern: "*" }] });
    const err = await failing.publish("r", 1).catch((e) => e);
    expect(err).toBeInstanceOf(RoomcastError);
    expect(err.message).toMatch(/start one first/);
  });

  it("adapts ioredis's call(command, ...args)", async () => {
    const calls: string[][] = [];
    const rc = new RoomcastRedis(fromIoredis({ call: async (...a: string[]) => (calls.push(a), 0) }));
    await rc.broadcast(1);
    expect(calls[0].slice(0, 2)).toEqual(["PUBLISH", "roomcast:broadcast"]);
  });
});

describe("globMatch (the gateway's rules)", () => {
  it("matches like src/auth.rs's tests", () => {
    expect(globMatch("chat:*", "chat:general")).toBe(true);
    expect(globMatch("chat:*", "chat:")).toBe(true);
    expect(globMatch("chat:*", "chatter")).toBe(false);
    expect(globMatch("*", "anything/at:all")).toBe(true);
    expect(globMatch("team-?/news", "team-a/news")).toBe(true);
    expect(globMatch("team-?/news", "team-ab/news")).toBe(false);
    expect(globMatch("a*b*c", "aXXbYYc")).toBe(true);
    expect(globMatch("a*b*c", "aXXbYY")).toBe(false);
    expect(globMatch("a.b", "aXb")).toBe(false);
    expect(globMatch("exact", "exactly")).toBe(false);
  });
});

describe("the built-in RESP client", () => {
  it("parses replies split anywhere, nested arrays, nulls and errors", () => {
    const wire = Buffer.from("+OK\r\n:12\r\n$4\r\nh\u00e9l\r\n$-1\r\n*2\r\n*1\r\n$1\r\na\r\n-ERR x\r\n-ERR top\r\n");
    for (let cut = 0; cut <= wire.length; cut++) {
      const parser = new RespParser();
      const replies = [...parser.feed(wire.subarray(0, cut)), ...parser.feed(wire.subarray(cut))];
      expect(replies.slice(0, 4)).toEqual(["OK", 12, "hél", null]);
      expect((replies[4] as unknown[])[0]).toEqual(["a"]);
      expect((replies[4] as unknown[])[1]).toBeInstanceOf(Error);
      expect(replies[5]).toBeInstanceOf(Error);
      expect(replies).toHaveLength(6);
    }
  });

  it("encodes commands as arrays of bulk strings (bytes, not characters)", () => {
    expect(encodeCommand(["PUBLISH", "c", "é"]).toString()).toBe("*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\né\r\n");
  });

  it("authenticates and selects the db from the URL, matches replies in order, and reconnects after a lost link", async () => {
    const received: string[][] = [];
    const sockets: net.Socket[] = [];
    const server = net.createServer((socket) => {
      sockets.push(socket);
      const parser = new RespParser();
      socket.on("data", (chunk) => {
        for (const cmd of parser.feed(chunk) as string[][]) {
          received.push(cmd);
          if (cmd[0] === "PUBLISH") socket.write(`:${cmd[2].length}\r\n`);
          else if (cmd[0] === "BAD") socket.write("-ERR unknown command\r\n");
          else socket.write("+OK\r\n");
        }
      });
    });
    await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
    const port = (server.address() as AddressInfo).port;
    const redis = connectRedis(`redis://me:p%40ss@127.0.0.1:${port}/3`);
    try {
      const replies = await Promise.all([redis.sendCommand(["PUBLISH", "c", "1"]), redis.sendCommand(["PUBLISH", "c", "333"])]);
      expect(replies).toEqual([1, 3]);
      expect(received.slice(0, 2)).toEqual([["AUTH", "me", "p@ss"], ["SELECT", "3"]]);
      await expect(redis.sendCommand(["BAD"])).rejects.toMatchObject({ code: "redis", message: "ERR unknown command" });
      sockets[0].destroy();
      await expect
        .poll(async () => redis.sendCommand(["PUBLISH", "c", "22"]).catch(() => "lost"), { timeout: 5000 })
        .toBe(2);
      expect(sockets.length).toBe(2);
      expect(received.filter((c) => c[0] === "AUTH")).toHaveLength(2);
    } finally {
      redis.close();
      for (const s of sockets) s.destroy();
      await new Promise((res) => server.close(res));
    }
  });

  it("times out a command that gets no reply", async () => {
    const sockets: net.Socket[] = [];
    const server = net.createServer((s) => void sockets.push(s)); // answers nothing
    await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
    const redis = connectRedis(`redis://127.0.0.1:${(server.address() as AddressInfo).port}`, { timeoutMs: 200 });
    try {
      await expect(redis.sendCommand(["PING"])).rejects.toMatchObject({ code: "timeout" });
    } finally {
      redis.close();
      for (const s of sockets) s.destroy();
      await new Promise((res) => server.close(res));
    }
  });
});
