import { createHmac } from "node:crypto";
import { describe, expect, it, vi } from "vitest";
import { parseWebhookEvents, signWebhook, verifyWebhook, webhookHandler, WebhookError } from "../src/index.js";

const SECRET = "whsec";
const NOW = 1_767_225_600;
const body = JSON.stringify({
  events: [
    { id: "e1", type: "member_joined", room: "chat:1", user: "42", ts: 1 },
    { id: "e2", type: "room_vacated", room: "chat:1", user: null, ts: 2 },
  ],
});
const header = (t: number, b = body, secret = SECRET) => `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${b}`).digest("hex")}`;

describe("webhook signatures", () => {
  it("accepts the signature of the body at t, and signWebhook makes exactly that header", () => {
    expect(verifyWebhook(SECRET, body, header(NOW), { now: NOW })).toHaveLength(2);
    expect(signWebhook(SECRET, body, NOW)).toBe(header(NOW));
  });

  it("refuses another secret, a changed body, a changed t, a missing or malformed header", () => {
    const refused = (b: string, h: string | null) => expect(() => verifyWebhook(SECRET, b, h, { now: NOW })).toThrow(WebhookError);
    refused(body, header(NOW, body, "other"));
    refused(body.replace("42", "43"), header(NOW));
    refused(body, header(NOW).replace(`t=${NOW}`, `t=${NOW - 1}`));
    refused(body, null);
    refused(body, "v1=abc");
    refused(body, `t=${NOW},v1=zz`);
    refused(body, `t=${NOW},v1=${"0".repeat(64)}`);
  });

  it("refuses a timestamp older than the tolerance (300 s by default), accepts one within", () => {
    expect(() => verifyWebhook(SECRET, body, header(NOW - 300), { now: NOW })).not.toThrow();
    expect(() => verifyWebhook(SECRET, body, header(NOW - 301), { now: NOW })).toThrow(/tolerance 300 s/);
    expect(() => verifyWebhook(SECRET, body, header(NOW + 301), { now: NOW })).toThrow(/tolerance/);
    expect(() => verifyWebhook(SECRET, body, header(NOW - 3000), { now: NOW, toleranceS: 3600 })).not.toThrow();
    expect(() => verifyWebhook(SECRET, body, header(NOW - 61), { now: NOW, toleranceS: 60 })).toThrow(/tolerance 60 s/);
  });

  it("accepts any of several v1 (a secret being rotated)", () => {
    const h = `${header(NOW, body, "old")},v1=${header(NOW).split("v1=")[1]}`;
    expect(() => verifyWebhook(SECRET, body, h, { now: NOW })).not.toThrow();
  });
});

describe("parseWebhookEvents", () => {
  it("types the four events and refuses others", () => {
    const events = parseWebhookEvents(body);
    expect(events.map((e) => e.type)).toEqual(["member_joined", "room_vacated"]);
    expect(() => parseWebhookEvents('{"events":[{"id":"x","type":"room_exploded","room":"r","ts":1}]}')).toThrow(/not a known event/);
    expect(() => parseWebhookEvents('{"events":[{"id":"x","type":"member_left","room":"r","ts":1}]}')).toThrow(/user/);
    expect(() => parseWebhookEvents('{"events":[{"type":"room_occupied","room":"r","ts":1}]}')).toThrow(/id/);
    expect(() => parseWebhookEvents('{"nope":[]}')).toThrow(/events/);
    expect(() => parseWebhookEvents("not json")).toThrow(/JSON/);
  });
});

describe("webhookHandler", () => {
  const post = (b: string, h?: string) => new Request("http://app/roomcast/events", { method: "POST", body: b, headers: h ? { "x-roomcast-signature": h } : {} });

  it("204 and the events for a good signature; 401 without calling the handler for a bad or old one; 400 for a bad body", async () => {
    const seen = vi.fn();
    const endpoint = webhookHandler(SECRET, seen);
    const now = Math.floor(Date.now() / 1000);
    expect((await endpoint(post(body, header(now)))).status).toBe(204);
    expect(seen).toHaveBeenCalledTimes(1);
    expect(seen.mock.calls[0][0].map((e: { id: string }) => e.id)).toEqual(["e1", "e2"]);
    expect((await endpoint(post(body, header(now, body, "wrong")))).status).toBe(401);
    expect((await endpoint(post(body, header(now - 301)))).status).toBe(401);
    expect((await endpoint(post(body))).status).toBe(401);
    const bad = '{"events":7}';
    expect((await endpoint(post(bad, header(now, bad)))).status).toBe(400);
    expect(seen).toHaveBeenCalledTimes(1);
  });

  it("500 when the handler throws, so the gateway delivers again", async () => {
    const endpoint = webhookHandler(SECRET, () => {
      throw new Error("db down");
    });
    const spy = vi.spyOn(console, "error").mockImplementation(() => {});
    expect((await endpoint(post(body, header(Math.floor(Date.now() / 1000))))).status).toBe(500);
    spy.mockRestore();
  });
});
