#!/usr/bin/env node
// Browser end-to-end test of a conflated room (docs/protocol.md "Conflated rooms") in Debian's
// chromium, with the chat example's pages (@roomcast/solid, `window.roomcast`).
//
//   node e2e/conflate.e2e.mjs             one node, embedded broker
//   node e2e/conflate.e2e.mjs --cluster   two nodes sharing the room through their own redis-server
//
// (after `npm ci`; it builds the app with vite unless E2E_SKIP_BUILD=1)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure (see
// harness.mjs): the roomcast binary, a static server for dist/ (in this process), chromium, and
// in --cluster mode a redis-server. The nodes conflate `px:*` with `limits.outbox_messages = 8`.
//
// Scenario: three pages join `px:e2e`: "slow" and "fast" on node A, "pub" on node A (one node)
// or node B (--cluster). The slow page's main thread is then blocked in a synchronous
// XMLHttpRequest to the static server, which holds the answer: chromium stops reading the
// page's WebSocket, TCP backpressure reaches node A, and the slow member's outbox fills. The pub
// page publishes keyed messages of 32 KiB (`room.publish(data, { key })`, three keys, one message
// per key per batch) in lockstep: the next batch goes once every fast member (fast, and pub
// through its own echo) has the last one, so a fast member never has two messages of one key
// queued and nothing of theirs can be conflated. The flood ends when node A's
// `roomcast_messages_conflated_total` shows conflation (or a slow consumer was dropped, the
// failure), read off /metrics after every batch, never off a clock; then one more batch (the
// final value of every key) goes out and the held answer is released.
//
// Checks: the fast members received every message, in order; the slow member received fewer,
// for each key only increasing values and the final one, exactly the messages node A did not
// replace (received + conflated = sent), and its one WebSocket never closed (no 1013): it still
// publishes and receives afterwards. Against a node that does not conflate the room
// (E2E_CONFLATE_PATTERN=other:* names another pattern) the slow member is closed with 1013 and
// the test fails: that is how the test itself was checked.
//
// Every wait is bounded; the whole test by E2E_TIMEOUT_MS (default 180 s). It prints
// "N passed, N failed" last and exits non-zero on failure.

import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import { spawnSync } from "node:child_process";
import { extname, join, normalize } from "node:path";
import {
  APP,
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

const CLUSTER = process.argv.includes("--cluster");
const DIST = join(APP, "dist");
const ROOM = "px:e2e";
const KEYS = ["AAPL", "MSFT", "TSLA"];
const PAD_BYTES = 32 * 1024;
/** Conflated messages the flood waits for before its final batch. */
const MIN_CONFLATED = 10;
/** The most messages the flood may send before the test gives up on its condition. */
const MAX_FLOOD = 3000;
const CONFLATED = "roomcast_messages_conflated_total";
const OVERFLOWED = 'roomcast_messages_dropped_total{reason="slow_consumer"}';
installWatchdog();

// ---- the page server: dist/, and /hold, whose answer waits for `releaseHold()` -----------------

const MIME = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };
let holdArrived;
const holdRequested = new Promise((res) => (holdArrived = res));
const held = [];
function releaseHold() {
  for (const res of held.splice(0)) res.end("released");
}
function serveDist(port) {
  const server = http.createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    if (path === "/hold") {
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" });
      held.push(res);
      return holdArrived();
    }
    let file = join(DIST, path);
    if (!file.startsWith(DIST) || !existsSync(file) || statSync(file).isDirectory()) file = join(DIST, "index.html");
    res.writeHead(200, { "content-type": MIME[extname(file)] || "application/octet-stream", "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  return new Promise((res) => server.listen(port, "127.0.0.1", () => res(server)));
}

// ---- in the pages -----------------------------------------------------------------------------

/** Record this page's messages of `room` (key and seq only), its socket opens and closes. */
function record(room) {
  const rc = window.roomcast;
  const e2e = (window.e2e = { got: [], opens: 0, closes: [], waiters: [] });
  rc.client.on("open", () => e2e.opens++);
  rc.client.on("close", (c) => e2e.closes.push(c.code));
  rc.client.on("message", (m) => {
    if (m.room !== room || typeof m.data?.seq !== "number") return;
    e2e.got.push([m.key ?? null, m.data.seq, m.data.key]);
    e2e.waiters = e2e.waiters.filter((w) => !(e2e.got.length >= w.n && (w.resolve(), true)));
  });
  // resolves once `n` messages were received (the lockstep of the flood), fails after `ms`
  e2e.until = (n, ms = 15_000) =>
    e2e.got.length >= n
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          e2e.waiters.push({ n, resolve });
          setTimeout(() => reject(new Error(`${e2e.got.length} messages, not ${n}, after ${ms} ms`)), ms);
        });
}

/** Publish one message per [key, seq] with its key, in order; resolves with the acks. */
function publishBatch({ room, batch, padBytes }) {
  const r = window.roomcast.room(room);
  const pad = "x".repeat(padBytes);
  return Promise.all(batch.map(([key, seq]) => r.publish({ seq, key, pad }, { key }))).then((acks) => acks.length);
}

/** Block this page's main thread until the page server answers /hold (a synchronous XHR). */
function block() {
  const xhr = new XMLHttpRequest();
  xhr.open("GET", "/hold", false);
  xhr.send();
  return xhr.responseText;
}

// ---- the test ---------------------------------------------------------------------------------

async function metricsOf(node) {
  const text = await (await fetch(`${node.admin}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
  const value = (name) => {
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line ? Number(line.slice(name.length + 1)) : 0;
  };
  return { conflated: value(CONFLATED), overflowed: value(OVERFLOWED) };
}

async function main() {
  if (process.env.E2E_SKIP_BUILD !== "1" || !existsSync(join(DIST, "index.html"))) {
    log("vite build");
    const r = spawnSync(process.execPath, [join(APP, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "warn"], {
      cwd: APP,
      stdio: "inherit",
      timeout: 120_000,
    });
    if (r.status !== 0) throw new Error("vite build failed");
  }
  const bin = findBinary();
  const config = join(WORK, "roomcast.toml");
  const pattern = process.env.E2E_CONFLATE_PATTERN || "px:*";
  writeFileSync(
    config,
    // the publisher floods far above the default per-connection rate; the close frame of a
    // slow member closed with 1013 (the failure) waits until it reads again
    `[limits]\noutbox_messages = 8\nrate_per_sec = 100000\nrate_burst = 100000\nclose_timeout_ms = 60000\n\n` +
      `[[conflate.rooms]]\npattern = ${JSON.stringify(pattern)}\n`,
  );
  const redisUrl = CLUSTER ? await startRedis() : null;
  const a = await new GatewayNode("a", { bin, config, redisUrl }).init();
  await a.start();
  const b = CLUSTER ? await new GatewayNode("b", { bin, config, redisUrl }).init() : a;
  if (CLUSTER) await b.start();

  const pagePort = await freePort();
  setStaticServer(await serveDist(pagePort));
  const browser = await launchBrowser();
  const pageErrors = [];
  // a context each: the slow page's renderer is blocked, the others' must not be
  const open = async (name, node) => {
    const page = await (await browser.newContext()).newPage();
    page.on("pageerror", (e) => pageErrors.push(`${name}: ${e}`));
    await page.goto(`http://127.0.0.1:${pagePort}/?ws=${encodeURIComponent(node.ws)}&room=${ROOM}&name=${name}`);
    await waitFor(`${name} has window.roomcast`, () => page.evaluate(() => !!window.roomcast));
    await page.evaluate(record, ROOM);
    await waitFor(`${name} joined ${ROOM}`, () => page.evaluate((room) => window.roomcast.room(room).joined(), ROOM));
    // from here on, any open or close is a reconnect
    await page.evaluate(() => ((window.e2e.opens = 0), (window.e2e.closes = [])));
    return page;
  };
  const slow = await open("slow", a);
  const fast = await open("fast", a);
  const pub = await open("pub", b);
  const fastPages = { fast, pub };

  log("blocking the slow page's main thread");
  const blocked = slow.evaluate(block);
  await Promise.race([holdRequested, blocked.then(() => Promise.reject(new Error("the slow page was not held")))]);
  const blockedAt = Date.now();

  let sent = 0;
  const last = new Map(); // key -> last seq sent
  const batch = async () => {
    const items = KEYS.map((key) => [key, sent++]);
    const acks = await pub.evaluate(publishBatch, { room: ROOM, batch: items, padBytes: PAD_BYTES });
    if (acks !== items.length) throw new Error(`${acks} acks for ${items.length} publishes`);
    for (const [key, seq] of items) last.set(key, seq);
    // lockstep: every fast member has every message before the next batch
    await Promise.all(Object.values(fastPages).map((p) => p.evaluate((n) => window.e2e.until(n), sent)));
  };
  let m = await metricsOf(a);
  while (m.conflated < MIN_CONFLATED && m.overflowed === 0) {
    if (sent >= MAX_FLOOD) throw new Error(`${CONFLATED} on node A never reached ${MIN_CONFLATED} in ${sent} messages`);
    await batch();
    m = await metricsOf(a);
  }
  log(`flood: ${sent} messages, node A: ${m.conflated} conflated, ${m.overflowed} dropped as slow consumer`);
  check("node A conflated while the slow page was blocked", m.conflated >= MIN_CONFLATED, JSON.stringify(m));
  await batch(); // the final value of every key
  const final = Object.fromEntries(last);
  log(`final values ${JSON.stringify(final)}; releasing the slow page after ${Date.now() - blockedAt} ms`);
  releaseHold();
  check("the slow page was held until released", (await blocked) === "released");

  const gotOf = (page) => page.evaluate(() => window.e2e.got);
  const hasFinal = (got) => KEYS.every((k) => got.some(([key, seq]) => key === k && seq === final[k]));
  const slowGot = await waitFor("the slow page has the final value of every key", async () => {
    const { got, closes } = await slow.evaluate(() => ({ got: window.e2e.got, closes: window.e2e.closes }));
    // closed (1013 when the room is not conflated): what it misses never comes
    if (closes.length) throw Object.assign(new Error(`the slow page's WebSocket closed with ${closes}`), { fatal: true });
    return hasFinal(got) && got;
  }, 30_000).catch((e) => (check("the slow page has the final value of every key", false, String(e)), gotOf(slow)));

  for (const [name, page] of Object.entries(fastPages)) {
    const got = await gotOf(page);
    const expected = Array.from({ length: sent }, (_, seq) => [KEYS[seq % KEYS.length], seq, KEYS[seq % KEYS.length]]);
    check(
      `${name} received all ${sent} messages, in order, with their keys`,
      JSON.stringify(got) === JSON.stringify(expected),
      `got ${got.length}: ${JSON.stringify(got.slice(0, 5))}…`,
    );
  }

  log(`the slow page received ${slowGot.length} of ${sent}`);
  check("the slow page received fewer messages than were sent", slowGot.length < sent, `${slowGot.length} of ${sent}`);
  check("every frame carries its key", slowGot.every(([key, , dataKey]) => key === dataKey && KEYS.includes(key)), JSON.stringify(slowGot.slice(0, 5)));
  const latest = new Map();
  const backwards = [];
  for (const [key, seq] of slowGot) {
    if (latest.has(key) && seq <= latest.get(key)) backwards.push(`${key}: ${seq} after ${latest.get(key)}`);
    latest.set(key, seq);
  }
  check("per key, the slow page never got an older (or the same) value after a newer one", backwards.length === 0, backwards.slice(0, 5).join("; "));
  check("per key, the slow page's last value is the final one", KEYS.every((k) => latest.get(k) === final[k]), JSON.stringify(Object.fromEntries(latest)));
  const after = await metricsOf(a);
  check(
    "each message reached the slow page or was replaced on node A (received + conflated = sent)",
    slowGot.length + after.conflated === sent,
    `${slowGot.length} + ${after.conflated} != ${sent}`,
  );
  check("node A dropped no slow consumer", after.overflowed === 0, JSON.stringify(after));
  if (CLUSTER) check("node B conflated nothing (its member kept up)", (await metricsOf(b)).conflated === 0);

  // still the same connection (since it joined: no open, no close): never closed (no 1013), it
  // publishes and everyone receives it
  const conn = await slow.evaluate(() => ({
    opens: window.e2e.opens,
    closes: window.e2e.closes,
    state: window.roomcast.state(),
    lastClose: window.roomcast.info().lastClose,
  }));
  check(
    "the slow page's WebSocket never closed (no 1013)",
    conn.opens === 0 && conn.closes.length === 0 && conn.state === "open" && !conn.lastClose,
    JSON.stringify(conn),
  );
  const seq = sent++;
  const acks = await slow.evaluate(publishBatch, { room: ROOM, batch: [["AAPL", seq]], padBytes: 16 });
  check("the slow page still publishes (ack)", acks === 1);
  for (const [name, page] of Object.entries({ slow, ...fastPages })) {
    const n = name === "slow" ? slowGot.length + 1 : sent;
    const lastSeq = await page.evaluate((n) => window.e2e.until(n).then(() => window.e2e.got.at(-1)[1]), n);
    check(`${name} received the slow page's message`, lastSeq === seq, String(lastSeq));
  }
  check("no page errors", pageErrors.length === 0, pageErrors.join("; "));
}

run(main);
