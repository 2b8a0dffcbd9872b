import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RoomcastClient, type RoomcastOptions } from "../src/client.js";
import { FakeEventSource, fakeFetch } from "./fake-es.js";
import { FakeWebSocket } from "./fake-ws.js";

const URL = "ws://gw.test/ws";
const tick = (ms: number) => vi.advanceTimersByTimeAsync(ms);

function client(opts: RoomcastOptions = {}): RoomcastClient {
  return new RoomcastClient(URL, {
    WebSocket: FakeWebSocket,
    EventSource: FakeEventSource,
    random: () => 0,
    heartbeat: false,
    getToken: () => "tok",
    ...opts,
  });
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("SSE transport", () => {
  it("forced SSE joins rooms through the stream and answers the client's own join", async () => {
    const { fetch } = fakeFetch(() => ({ status: 200, body: {} }));
    const c = client({ transport: "sse", fetch });
    await tick(0);
    expect(FakeWebSocket.instances).toHaveLength(0);
    const first = FakeEventSource.last;
    expect(first.url).toBe("http://gw.test/sse?token=tok");
    first.welcome();
    expect(c.info.state).toBe("open");
    expect(c.info.transport).toBe("sse");
    const joined = c.join("lobby");
    await tick(0);
    const stream = FakeEventSource.last;
    expect(first.closed, "the old stream is closed").toBe(true);
    expect(stream.query.getAll("room")).toEqual(["lobby"]);
    stream.welcome(); // a reopened stream's welcome is not a new connection
    stream.joinAll();
    await expect(joined).resolves.toMatchObject({ room: "lobby" });
    const seen: unknown[] = [];
    c.on("message", (m) => seen.push(m.data));
    stream.emit("message", { type: "message", room: "lobby", id: "n-1", data: "hi", from: "u", ts: 1 });
    expect(seen).toEqual(["hi"]);
    expect(c.rooms).toEqual(["lobby"]);
  });

  it("publishes with POST /publish and settles the publish with the node's answer", async () => {
    const { fetch, calls } = fakeFetch((_, body) => {
      const cmd = JSON.parse(body);
      return { status: 200, body: { type: "ack", room: cmd.room, msg_id: "m1", id: cmd.id } };
    });
    const c = client({ transport: "sse", fetch });
    await tick(0);
    FakeEventSource.last.welcome();
    const ack = c.publish("lobby", { text: "hi" });
    await tick(0);
    await expect(ack).resolves.toMatchObject({ type: "ack", msg_id: "m1" });
    expect(calls).toHaveLength(1);
    expect(calls[0]!.url).toBe("http://gw.test/publish?token=tok");
    expect(JSON.parse(calls[0]!.body)).toMatchObject({ type: "publish", room: "lobby", data: { text: "hi" } });
  });

  it("a publish refused by the node rejects with its error code", async () => {
    const { fetch } = fakeFetch((_, body) => ({
      status: 400,
      body: { type: "error", code: "invalid_data", message: "no", id: JSON.parse(body).id },
    }));
    const c = client({ transport: "sse", fetch });
    await tick(0);
    FakeEventSource.last.welcome();
    const ack = c.publish("chat", 1).catch((e: { code: string }) => e.code);
    await tick(0);
    expect(await ack).toBe("invalid_data");
  });

  it("auto falls back to SSE after the WebSocket failed to open sseAfter times", async () => {
    const c = client({ sseAfter: 2, backoff: { initialMs: 100 } });
    await tick(0);
    FakeWebSocket.last.refuse();
    await tick(100);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeEventSource.instances).toHaveLength(0);
    FakeWebSocket.last.refuse();
    await tick(0);
    expect(FakeWebSocket.instances, "no third WebSocket").toHaveLength(2);
    expect(FakeEventSource.instances).toHaveLength(1);
    FakeEventSource.last.welcome();
    expect(c.info).toMatchObject({ state: "open", transport: "sse" });
  });

  it("auto goes back to the WebSocket when SSE fails to open too (the node is down)", async () => {
    const c = client({ sseAfter: 2, backoff: { initialMs: 100, factor: 1 } });
    await tick(0);
    FakeWebSocket.last.refuse();
    await tick(100);
    FakeWebSocket.last.refuse();
    await tick(0);
    expect(FakeEventSource.instances).toHaveLength(1);
    FakeEventSource.last.fail();
    await tick(100);
    expect(FakeWebSocket.instances, "the next attempt is a WebSocket").toHaveLength(3);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(c.info.transport).toBe("websocket");
    FakeWebSocket.last.accept();
    expect(c.info).toMatchObject({ state: "open", transport: "websocket" });
  });

  it("a refused page tries SSE only after the refusal's delay, never at once", async () => {
    const c = client({ sseAfter: 2, refusal: { after: 1, delayMs: 5000 } });
    await tick(0);
    FakeWebSocket.last.refuse();
    await tick(5000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last.refuse();
    await tick(0);
    expect(FakeEventSource.instances, "not at once: it is refused").toHaveLength(0);
    expect(c.info.refused).toBe(true);
    await tick(10_000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it("stays on the WebSocket with transport: websocket", async () => {
    const c = client({ transport: "websocket", sseAfter: 1, backoff: { initialMs: 100 } });
    await tick(0);
    FakeWebSocket.last.refuse();
    await tick(100);
    FakeWebSocket.last.refuse();
    await tick(10_000);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(c.info.transport).toBe("websocket");
  });

  it("a close event ends the connection with its code, and the reconnect resumes from the last kept id", async () => {
    const { fetch } = fakeFetch(() => ({ status: 200, body: {} }));
    const c = client({ transport: "sse", fetch, backoff: { initialMs: 100 } });
    await tick(0);
    FakeEventSource.last.welcome();
    void c.join("chat:a", { recover: true });
    await tick(0);
    const stream = FakeEventSource.last;
    stream.joinAll();
    stream.emit("message", { type: "message", room: "chat:a", id: "h1-7", data: 7, from: "u", ts: 1 }, "h1-7");
    const closes: number[] = [];
    c.on("close", (i) => closes.push(i.code));
    stream.emit("close", { type: "close", code: 1013, reason: "slow consumer" });
    expect(closes).toEqual([1013]);
    expect(stream.closed).toBe(true);
    expect(c.info.state).toBe("reconnecting");
    await tick(100);
    const again = FakeEventSource.last;
    expect(again).not.toBe(stream);
    again.welcome();
    await tick(0);
    const resumed = FakeEventSource.last;
    expect(resumed.query.getAll("room")).toEqual(["chat:a"]);
    expect(resumed.query.get("last_event_id")).toBe("h1-7");
  });

  it("a stream that fails is a dropped connection", async () => {
    const c = client({ transport: "sse", backoff: { initialMs: 100 } });
    await tick(0);
    FakeEventSource.last.welcome();
    FakeEventSource.last.fail();
    expect(c.info.state).toBe("reconnecting");
    expect(c.info.lastClose).toMatchObject({ code: 1006, wasOpen: true });
  });
});
