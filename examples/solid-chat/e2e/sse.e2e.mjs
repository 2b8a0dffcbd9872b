#!/usr/bin/env node
// Browser end-to-end test of the SSE transport (docs/protocol.md "SSE transport") in Debian's
// chromium, through its own EventSource: no WebSocket is opened by the page.
//
//   node e2e/sse.e2e.mjs        (after `npm ci`; no vite build needed)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure (see
// harness.mjs): a redis-server, two roomcast nodes sharing it (history for `chat:*`), a static
// page server, and chromium.
//
// Scenario: a page of another origin opens `GET /sse?room=chat:e2e` on node A (CORS); messages
// published through node B arrive as `message` events whose data is the WebSocket frame's JSON
// and whose `lastEventId` is the message id; node A restarts (SIGTERM): the page gets the final
// `close` event (1001); while A is down two more messages are published through B; when A is
// back the browser's own EventSource reconnect sends `Last-Event-ID` and gets exactly the two
// missed messages, then live ones: no gap, no duplicate.
//
// Every wait is bounded; the whole test by E2E_TIMEOUT_MS (default 180 s). It prints
// "N passed, N failed" last and exits non-zero on failure.

import http from "node:http";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  GatewayNode,
  WORK,
  check,
  findBinary,
  freePort,
  installWatchdog,
  launchBrowser,
  log,
  run,
  setStaticServer,
  startRedis,
  waitFor,
} from "./harness.mjs";

const ROOM = "chat:e2e";
installWatchdog();

async function main() {
  const redisUrl = await startRedis();
  const config = join(WORK, "roomcast.toml");
  writeFileSync(config, `[history]\nrooms = [{ pattern = "chat:*", size = 50, ttl_s = 600 }]\n`);
  const bin = findBinary();
  const a = await new GatewayNode("a", { bin, config, redisUrl }).init();
  const b = await new GatewayNode("b", { bin, config, redisUrl }).init();
  await a.start();
  await b.start();

  const pagePort = await freePort();
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>sse e2e</title>");
  });
  await new Promise((res) => server.listen(pagePort, "127.0.0.1", res));
  setStaticServer(server);

  const browser = await launchBrowser();
  const page = await (await browser.newContext()).newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`http://127.0.0.1:${pagePort}/`);
  const sseUrl = `http://127.0.0.1:${a.wsPort}/sse?room=${encodeURIComponent(ROOM)}`;
  await page.evaluate((url) => {
    const w = window;
    w.got = [];
    w.closes = [];
    w.joined = 0;
    w.opens = 0;
    const es = new EventSource(url);
    es.onopen = () => w.opens++;
    es.addEventListener("joined", () => w.joined++);
    es.addEventListener("message", (e) => w.got.push({ id: e.lastEventId, frame: JSON.parse(e.data) }));
    es.addEventListener("close", (e) => w.closes.push(JSON.parse(e.data)));
  }, sseUrl);
  const state = () => page.evaluate(() => ({ got: window.got, closes: window.closes, joined: window.joined, opens: window.opens }));

  await waitFor("the stream joined the room", async () => (await state()).joined === 1);
  for (const n of [1, 2, 3]) check(`publish ${n} through node B`, (await b.publish(ROOM, { n })).status === 202);
  await waitFor("three messages over SSE", async () => (await state()).got.length === 3);
  let s = await state();
  check(
    "each event's data is the WebSocket frame, its id the message id",
    s.got.every((m, i) => m.frame.type === "message" && m.frame.room === ROOM && m.frame.data.n === i + 1 && m.id === m.frame.id && m.id.startsWith("h")),
    JSON.stringify(s.got),
  );

  log("restarting node A");
  await a.stop();
  await waitFor("the close event of the shutdown", async () => (await state()).closes.length === 1);
  s = await state();
  check("the last event names 1001", s.closes[0]?.code === 1001, JSON.stringify(s.closes));
  for (const n of [4, 5]) check(`publish ${n} while A is down`, (await b.publish(ROOM, { n })).status === 202);
  await a.start("node-a-again");
  await waitFor("the browser reconnected by itself and got what it missed", async () => (await state()).got.length >= 5, 30_000);
  check(`publish 6 live`, (await b.publish(ROOM, { n: 6 })).status === 202);
  await waitFor("the live message", async () => (await state()).got.length >= 6);
  s = await state();
  const ns = s.got.map((m) => m.frame.data.n);
  check("1..6 in order, no gap, no duplicate", JSON.stringify(ns) === "[1,2,3,4,5,6]", JSON.stringify(ns));
  check("the stream was opened twice (one reconnect)", s.opens === 2, String(s.opens));
  check("no page errors", pageErrors.length === 0, pageErrors.join("; "));
}

run(main);
