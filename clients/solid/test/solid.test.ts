import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createEffect, createRoot } from "solid-js";
import { createRoomcast } from "../src/solid.js";
import { makeRoomcastWS } from "../src/ws.js";
import { FakeWebSocket } from "./fake-ws.js";

const tick = (ms: number) => vi.advanceTimersByTimeAsync(ms);

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => vi.useRealTimers());

describe("createRoomcast", () => {
  it("exposes state, welcome and room messages as signals, rejoins and reports recovered:false", async () => {
    await createRoot(async (dispose) => {
      const rc = createRoomcast("ws://gw.test/ws", { WebSocket: FakeWebSocket, random: () => 0, heartbeat: false });
      const gaps: string[] = [];
      const lobby = rc.room<{ text: string }>("lobby", { history: 20, onGap: (e) => gaps.push(e.room) });
      const seen: string[] = [];
      createEffect(() => seen.push(rc.state()));
      expect(rc.state()).toBe("connecting");
      expect(rc.room("lobby")).toBe(lobby); // one handle per room

      const ws = FakeWebSocket.last.accept({ autoReply: true });
      expect(rc.state()).toBe("open");
      expect(rc.welcome()?.conn_id).toBe("c-0");
      expect(lobby.joined()).toBe(true);
      expect(lobby.recovered()).toBeUndefined();
      await lobby.publish({ text: "hi" });
      expect(lobby.messages().map((m) => m.data.text)).toEqual(["hi"]);

      ws.serverClose(1006);
      expect(rc.state()).toBe("reconnecting");
      expect(lobby.joined()).toBe(false);
      const queued = lobby.publish({ text: "while away" });
      expect(rc.info().queued).toBe(1);
      await tick(500);
      const ws2 = FakeWebSocket.last.accept({ autoReply: true }); // answers since with recovered:false
      expect(ws2.commands[0]).toMatchObject({ type: "join", room: "lobby", since: "m1" });
      expect(lobby.joined()).toBe(true);
      expect(lobby.recovered()).toBe(false);
      expect(gaps).toEqual(["lobby"]);
      await queued;
      expect(lobby.messages().map((m) => m.data.text)).toEqual(["hi", "while away"]);
      await tick(0);
      // the effect first ran when the root returned (at its first await), already open
      expect(seen).toEqual(["open", "reconnecting", "connecting", "open"]);

      dispose(); // cleanup closes the connection
      expect(rc.state()).toBe("closed");
      await tick(600_000);
      expect(FakeWebSocket.instances.length).toBe(2);
    });
  });

  it("exposes presence: fetched after every (re)join, updated by member events, refreshable", async () => {
    await createRoot(async (dispose) => {
      const rc = createRoomcast("ws://gw.test/ws", { WebSocket: FakeWebSocket, random: () => 0, heartbeat: false });
      const lobby = rc.room("lobby", { presence: true });
      const plain = rc.room("plain");
      const users = () => lobby.presence()?.members.map((m) => m.user);
      const ws = FakeWebSocket.last.accept({ autoReply: true }); // joins answered, presence not
      const asked = ws.commands.filter((c) => c.type === "presence");
      expect(asked).toMatchObject([{ type: "presence", room: "lobby" }]); // not for "plain"
      expect(plain.presence()).toBeUndefined();
      expect(lobby.presence()).toBeUndefined();
      // events before the first reply are not applied (there is nothing to apply them to)
      ws.push({ type: "member_joined", room: "lobby", user: "early", ts: 1 });
      expect(lobby.presence()).toBeUndefined();
      ws.push({ type: "presence", room: "lobby", count: 1, members: [{ user: "c-0", conns: 1 }], truncated: false, id: asked[0]!.id });
      expect(lobby.presence()).toEqual({ count: 1, members: [{ user: "c-0", conns: 1 }], truncated: false });

      ws.push({ type: "member_joined", room: "lobby", user: "bob", ts: 2, info: { name: "Bob" } });
      expect(lobby.presence()).toEqual({
        count: 2, members: [{ user: "bob", conns: 1, info: { name: "Bob" } }, { user: "c-0", conns: 1 }], truncated: false,
      });
      ws.push({ type: "member_joined", room: "lobby", user: "bob", ts: 3 }); // already there
      ws.push({ type: "member_joined", room: "other", user: "carol", ts: 3 }); // another room
      expect(lobby.presence()?.count).toBe(2);
      expect(users()).toEqual(["bob", "c-0"]);
      ws.push({ type: "member_left", room: "lobby", user: "bob", ts: 4 });
      expect(lobby.presence()).toEqual({ count: 1, members: [{ user: "c-0", conns: 1 }], truncated: false });
      ws.push({ type: "member_left", room: "lobby", user: "nobody", ts: 5 }); // not listed, list complete
      expect(lobby.presence()?.count).toBe(1);

      // a reconnect: the rejoin is followed by a new fetch whose reply replaces the presence
      ws.serverClose(1006);
      await tick(500);
      const ws2 = FakeWebSocket.last.accept({ autoReply: true });
      const again = ws2.commands.filter((c) => c.type === "presence");
      expect(ws2.commands.map((c) => c.type)).toEqual(["join", "presence", "join"]);
      ws2.push({
        type: "presence", room: "lobby", count: 5, truncated: true, id: again[0]!.id,
        members: [{ user: "a", conns: 2 }, { user: "c-1", conns: 1 }],
      });
      expect(lobby.presence()).toEqual({ count: 5, members: [{ user: "a", conns: 2 }, { user: "c-1", conns: 1 }], truncated: true });
      // truncated: someone not listed leaving still lowers the count
      ws2.push({ type: "member_left", room: "lobby", user: "zed", ts: 6 });
      expect(lobby.presence()?.count).toBe(4);
      ws2.push({ type: "member_left", room: "lobby", user: "a", ts: 7 });
      expect(lobby.presence()).toEqual({ count: 3, members: [{ user: "c-1", conns: 1 }], truncated: true });

      // manual refresh
      const refreshed = lobby.refreshPresence();
      const last = ws2.commands.at(-1)!;
      expect(last).toMatchObject({ type: "presence", room: "lobby" });
      ws2.push({ type: "presence", room: "lobby", count: 1, members: [{ user: "c-1", conns: 1 }], truncated: false, id: last.id });
      await expect(refreshed).resolves.toEqual({ count: 1, members: [{ user: "c-1", conns: 1 }], truncated: false });
      expect(lobby.presence()).toEqual({ count: 1, members: [{ user: "c-1", conns: 1 }], truncated: false });

      // a room that keeps no presence: the error is reported, presence stays undefined
      const p = plain.refreshPresence();
      const q = ws2.commands.at(-1)!;
      ws2.push({ type: "error", code: "bad_request", message: "presence is not kept for this room", id: q.id });
      await expect(p).rejects.toMatchObject({ code: "bad_request" });
      expect(plain.error()?.code).toBe("bad_request");
      expect(plain.presence()).toBeUndefined();
      dispose();
    });
  });

  it("keeps at most maxMessages per room", async () => {
    const rc = createRoomcast("ws://gw.test/ws", { WebSocket: FakeWebSocket, heartbeat: false, maxMessages: 3 });
    const r = rc.room<number>("r");
    FakeWebSocket.last.accept({ autoReply: true });
    for (let i = 1; i <= 5; i++) await r.publish(i);
    expect(r.messages().map((m) => m.data)).toEqual([3, 4, 5]);
    rc.close();
  });
});

describe("makeRoomcastWS (drop-in for makeHeartbeatWS(createReconnectingWS(url)))", () => {
  it("replays the app's joins after a reconnect and delivers frames as message events", async () => {
    const ws = makeRoomcastWS("ws://gw.test/ws", { WebSocket: FakeWebSocket, random: () => 0, heartbeat: false });
    const got: string[] = [];
    ws.addEventListener("message", (e) => got.push(JSON.parse(e.data!).type));
    ws.send(JSON.stringify({ type: "join", room: "lobby" }));
    ws.send(JSON.stringify({ type: "publish", room: "lobby", data: "x" }));
    expect(ws.readyState).toBe(0);
    const s1 = FakeWebSocket.last.accept({ autoReply: true });
    expect(ws.readyState).toBe(1);
    expect(s1.commands.map((c) => c.type)).toEqual(["join", "publish"]);
    expect(got).toEqual(["welcome", "joined", "ack", "message"]);
    s1.serverClose(1001);
    await tick(0);
    const s2 = FakeWebSocket.last.accept({ autoReply: true });
    expect(s2.commands).toMatchObject([{ type: "join", room: "lobby" }]);
    ws.close();
    expect(ws.readyState).toBe(3);
  });
});
