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
