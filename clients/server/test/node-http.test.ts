import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectHook, nodeHandler, refuse, signWebhook, webhookHandler } from "../src/index.js";

let server: http.Server;
let base = "";
const events: string[] = [];

beforeAll(async () => {
  const connect = nodeHandler(connectHook(({ headers }) => (headers?.cookie === "s=1" ? { user: "u1" } : refuse(401))));
  const hook = nodeHandler(webhookHandler("sec", (batch) => void events.push(...batch.map((e) => e.id))), { maxBodyBytes: 1000 });
  server = http.createServer((req, res) => (req.url === "/connect" ? connect(req, res) : hook(req, res)));
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((res) => server.close(res));
});

describe("nodeHandler", () => {
  it("serves a hook endpoint on node:http: the body goes in, status and JSON come out", async () => {
    const ok = await fetch(`${base}/connect`, { method: "POST", body: JSON.stringify({ headers: { cookie: "s=1" } }) });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toBe("application/json");
    expect(await ok.json()).toEqual({ user: "u1" });
    expect((await fetch(`${base}/connect`, { method: "POST", body: "{}" })).status).toBe(401);
  });

  it("passes the raw body and headers through, so a webhook signature still checks; 413 above the limit", async () => {
    const body = JSON.stringify({ events: [{ id: "e9", type: "room_occupied", room: "r", ts: 1 }] });
    const res = await fetch(`${base}/events`, { method: "POST", body, headers: { "x-roomcast-signature": signWebhook("sec", body) } });
    expect(res.status).toBe(204);
    expect(events).toEqual(["e9"]);
    const bad = await fetch(`${base}/events`, { method: "POST", body, headers: { "x-roomcast-signature": signWebhook("other", body) } });
    expect(bad.status).toBe(401);
    expect((await fetch(`${base}/events`, { method: "POST", body: "x".repeat(2000) })).status).toBe(413);
  });
});
