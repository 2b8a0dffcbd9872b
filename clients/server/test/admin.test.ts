import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { RoomcastAdmin, RoomcastError } from "../src/index.js";

interface Seen {
  method?: string;
  url?: string;
  authorization?: string;
  contentType?: string;
  body: unknown;
}

let server: http.Server;
let base = "";
let seen: Seen[] = [];
let reply: { status: number; body: string } = { status: 202, body: '{"id":"m-1"}' };

beforeAll(async () => {
  server = http.createServer((req, res) => {
    let text = "";
    req.on("data", (c) => (text += c));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, authorization: req.headers.authorization, contentType: req.headers["content-type"], body: text ? JSON.parse(text) : undefined });
      if (req.url === "/slow") return; // never answers
      res.writeHead(reply.status, { "content-type": "application/json" }).end(reply.body);
    });
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((res) => server.close(res));
});
beforeEach(() => {
  seen = [];
  reply = { status: 202, body: '{"id":"m-1"}' };
});

describe("RoomcastAdmin", () => {
  it("posts each call's body to its route with the API key as Bearer", async () => {
    const admin = new RoomcastAdmin({ url: `${base}/`, apiKey: "k3y" });
    expect(await admin.publish("chat:1", { text: "hi" })).toEqual({ id: "m-1" });
    await admin.notify("42", { kind: "paid" });
    await admin.broadcast([1, 2]);
    reply = { status: 202, body: "{}" };
    await admin.kick("42");
    await admin.disconnect({ user: "42", code: 4403, reason: "banned" });
    await admin.disconnect({ connId: "abc.1" });
    await admin.revoke({ user: "42", until: 1_900_000_000 });
    await admin.revoke({ jti: "t-1", until: 1_900_000_000 });
    await admin.subscribe("42", "team:7");
    await admin.unsubscribe("42", "team:7");
    expect(seen.map((s) => [s.url, s.body])).toEqual([
      ["/api/publish", { room: "chat:1", data: { text: "hi" } }],
      ["/api/notify", { user: "42", data: { kind: "paid" } }],
      ["/api/broadcast", { data: [1, 2] }],
      ["/api/disconnect", { user: "42" }],
      ["/api/disconnect", { user: "42", code: 4403, reason: "banned" }],
      ["/api/disconnect", { conn_id: "abc.1" }],
      ["/api/revoke", { user: "42", until: 1_900_000_000 }],
      ["/api/revoke", { jti: "t-1", until: 1_900_000_000 }],
      ["/api/subscribe", { user: "42", room: "team:7" }],
      ["/api/unsubscribe", { user: "42", room: "team:7" }],
    ]);
    for (const s of seen) {
      expect(s.method).toBe("POST");
      expect(s.authorization).toBe("Bearer k3y");
      expect(s.contentType).toBe("application/json");
    }
  });

  it("sends no Authorization without a key, and data null as null", async () => {
    await new RoomcastAdmin({ url: base }).publish("r", null);
    expect(seen[0].authorization).toBeUndefined();
    expect(seen[0].body).toEqual({ room: "r", data: null });
  });

  it("turns the gateway's error body into a RoomcastError with status and code", async () => {
    reply = { status: 400, body: '{"error":{"code":"invalid_room","message":"room names may contain only …"}}' };
    const err = await new RoomcastAdmin({ url: base }).publish("bad room", 1).catch((e) => e);
    expect(err).toBeInstanceOf(RoomcastError);
    expect(err).toMatchObject({ status: 400, code: "invalid_room" });
    expect(err.message).toMatch(/room names may contain only/);
    reply = { status: 502, body: "<html>bad gateway</html>" };
    expect(await new RoomcastAdmin({ url: base }).broadcast(1).catch((e) => e)).toMatchObject({ status: 502, code: "http_502" });
  });

  it("fails with code timeout when the node does not answer in time, network when it cannot be reached", async () => {
    const slow = new RoomcastAdmin({ url: `${base}/slow#`, timeoutMs: 200 });
    expect(await slow.publish("r", 1).catch((e) => e)).toMatchObject({ status: 0, code: "timeout" });
    const closed = http.createServer();
    await new Promise<void>((res) => closed.listen(0, "127.0.0.1", () => res()));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((res) => closed.close(res));
    expect(await new RoomcastAdmin({ url: `http://127.0.0.1:${port}` }).publish("r", 1).catch((e) => e)).toMatchObject({ status: 0, code: "network" });
  });
});
