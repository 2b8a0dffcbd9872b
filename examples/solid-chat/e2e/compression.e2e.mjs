#!/usr/bin/env node
// Browser end-to-end test of permessage-deflate (docs/protocol.md "Compression") in Debian's
// chromium, through its own WebSocket, which offers the extension by itself.
//
//   node e2e/compression.e2e.mjs        (after `npm ci`; no vite build needed)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure (see
// harness.mjs): a redis-server, two roomcast nodes sharing it with `server.compression = true`, a
// static page server, and chromium.
//
// Scenario: a page opens one WebSocket to each node; both negotiate permessage-deflate (the
// `extensions` the browser reports); a 6 KB message the page publishes on node A (the browser
// compresses it) reaches the member on node B intact, and a 20 KB message published through
// node B's admin API reaches both intact; both nodes report frames sent compressed; a 4 MB
// message that chromium compresses to a few KB is refused with 1009 (limits.max_message_bytes
// applies after inflating); the connections that did not send it stay open.
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
  httpStatus,
  installWatchdog,
  launchBrowser,
  log,
  run,
  setStaticServer,
  startRedis,
  waitFor,
} from "./harness.mjs";

const ROOM = "chat:deflate";
installWatchdog();

/** A JSON value of about `len` bytes that looks like chat traffic. */
function chatData(len) {
  const lines = [];
  for (let i = 0, size = 0; size < len; i++) {
    const line = { user: `user-${i % 7}`, text: `message number ${i} in the thread`, n: i };
    size += JSON.stringify(line).length + 1;
    lines.push(line);
  }
  return lines;
}

async function counter(node, name) {
  const text = (await httpStatus(`${node.admin}/metrics`)).body;
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

async function main() {
  const redisUrl = await startRedis();
  const config = join(WORK, "roomcast.toml");
  writeFileSync(config, `[server]\ncompression = true\n\n[limits]\nmax_message_bytes = 65536\n`);
  const bin = findBinary();
  const a = await new GatewayNode("a", { bin, config, redisUrl }).init();
  const b = await new GatewayNode("b", { bin, config, redisUrl }).init();
  await a.start();
  await b.start();

  const pagePort = await freePort();
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>compression e2e</title>");
  });
  await new Promise((res) => server.listen(pagePort, "127.0.0.1", res));
  setStaticServer(server);

  const browser = await launchBrowser();
  const page = await (await browser.newContext()).newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`http://127.0.0.1:${pagePort}/`);
  await page.evaluate(
    ([urlA, urlB, room]) => {
      const w = window;
      w.sockets = {};
      const open = (name, url) => {
        const s = { frames: [], close: null, extensions: null };
        const ws = new WebSocket(url);
        ws.onopen = () => {
          s.extensions = ws.extensions;
          ws.send(JSON.stringify({ type: "join", room, id: "j" }));
        };
        ws.onmessage = (e) => s.frames.push(JSON.parse(e.data));
        ws.onclose = (e) => (s.close = e.code);
        s.ws = ws;
        w.sockets[name] = s;
      };
      open("a", urlA);
      open("b", urlB);
      w.send = (name, value) => w.sockets[name].ws.send(typeof value === "string" ? value : JSON.stringify(value));
    },
    [a.ws, b.ws, ROOM],
  );
  const state = () =>
    page.evaluate(() =>
      Object.fromEntries(
        Object.entries(window.sockets).map(([k, s]) => [k, { frames: s.frames, close: s.close, extensions: s.extensions }]),
      ),
    );
  const messages = (s, name) => s[name].frames.filter((f) => f.type === "message");

  await waitFor("both sockets joined", async () => {
    const s = await state();
    return ["a", "b"].every((n) => s[n].frames.some((f) => f.type === "joined"));
  });
  let s = await state();
  for (const n of ["a", "b"]) {
    check(
      `node ${n.toUpperCase()}: chromium negotiated permessage-deflate without context takeover`,
      /permessage-deflate/.test(s[n].extensions) && /server_no_context_takeover/.test(s[n].extensions) && /client_no_context_takeover/.test(s[n].extensions),
      String(s[n].extensions),
    );
  }

  const fromPage = chatData(6_000);
  await page.evaluate(([room, data]) => window.send("a", { type: "publish", room, data, id: "p1" }), [ROOM, fromPage]);
  await waitFor("the page's message on node B", async () => messages(await state(), "b").length >= 1);
  // B's delivery through Redis can beat A's ack to the page: wait for both, bounded.
  const acked = (st) => st.a.frames.some((f) => f.type === "ack" && f.id === "p1");
  await waitFor("A's ack", async () => acked(await state())).catch(() => {});
  s = await state();
  check(
    "a 6 KB message compressed by chromium, published on A, arrives intact on B",
    JSON.stringify(messages(s, "b")[0].data) === JSON.stringify(fromPage),
  );
  check("A acknowledged the compressed publish", acked(s));

  const fromAdmin = chatData(20_000);
  check("publish 20 KB through node B's admin API", (await b.publish(ROOM, fromAdmin)).status === 202);
  await waitFor("the 20 KB message on both sockets", async () => {
    const now = await state();
    const last = (n) => messages(now, n).at(-1)?.data;
    return ["a", "b"].every((n) => Array.isArray(last(n)) && last(n).length === fromAdmin.length);
  });
  s = await state();
  check(
    "the 20 KB message arrives intact on both nodes' sockets",
    ["a", "b"].every((n) => JSON.stringify(messages(s, n).at(-1).data) === JSON.stringify(fromAdmin)),
  );
  for (const node of [a, b]) {
    const sent = await counter(node, "roomcast_compressed_deliveries_total");
    check(`node ${node.id.toUpperCase()} sent frames compressed`, sent >= 1, String(sent));
  }

  // The bomb: 4 MB of JSON that chromium sends as a few KB of DEFLATE.
  await page.evaluate((room) => {
    window.send("a", '{"type":"publish","room":"' + room + '","data":"x' + " ".repeat(4 << 20) + '"}');
  }, ROOM);
  await waitFor("the bomb's socket closed", async () => (await state()).a.close !== null);
  s = await state();
  check("a message inflating past limits.max_message_bytes is closed with 1009", s.a.close === 1009, String(s.a.close));
  check("the other socket stays open", s.b.close === null, String(s.b.close));
  check("no page errors", pageErrors.length === 0, pageErrors.join("; "));
}

run(main);
