#!/usr/bin/env node
// Browser end-to-end test of the chat example against real roomcast nodes.
//
//   node e2e/chat.e2e.mjs             one node, embedded broker
//   node e2e/chat.e2e.mjs --cluster   two nodes sharing rooms through their own redis-server
//   node e2e/chat.e2e.mjs --auth      one node checking JWTs: in-band refresh, its fallback, refusal (401)
//   node e2e/chat.e2e.mjs --sse       one node; alice's page cannot open WebSockets and chats over SSE
//
// (after `npm ci`; it builds the app with vite unless E2E_SKIP_BUILD=1)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure:
// the roomcast binary (E2E_GATEWAY_BIN, else target/release/roomcast, else target/debug/roomcast,
// built with `cargo build` when missing), a static server for dist/ (in this process) and
// Debian's chromium (CHROMIUM, default /usr/bin/chromium) through playwright-core, and in
// --cluster mode redis-server (REDIS_SERVER, default redis-server on PATH).
//
// Scenario: two pages (alice, bob) join a room and see each other's messages, and a page of the
// @solid-primitives/websocket variant and of its createRoomcastWS one-line migration join too;
// the gateway is stopped with SIGTERM and started again on the same ports; the pages reconnect,
// rejoin (reporting recovered:false: the restarted node lost its history) and keep chatting;
// a service publishes through the admin API; bob disconnects, a message is published while he
// is away, and when he is back it appears once (recovered:true) if the node keeps history, or
// the "messages may be missing" notice shows if it does not yet. Screenshots go to
// e2e/screenshot.png and e2e/screenshot-primitives.png.
//
// --cluster: alice is on node 1, bob on node 2 (each page has both URLs and takes the next one
// on every connect); they chat across nodes; node 1 is stopped with SIGTERM and alice fails over
// to node 2 at once, rejoins and keeps chatting; node 1 comes back and a service publishes
// through its admin API to both; bob is away while a message is published and gets it once on
// his return (history in Redis) or sees the notice. Screenshot: e2e/screenshot-cluster.png.
//
// --auth: the static server also mints HS256 tokens (/token?sub=…&ttl=…); alice's expire after a
// few seconds, and the node (auth.expiry_warning_ms = 4 s) warns her page with token_expiring:
// the page calls getToken() and refreshes in band, on the one WebSocket it opened (counted by the
// browser), and keeps chatting past her first token's exp with no close; carol's second token is
// signed with the wrong secret (&bad_nth=2): her refresh is refused, and only then does the page
// close with 4001 and reconnect with a fresh token; mallory's tokens are signed with the wrong
// secret: every handshake gets HTTP 401, which a browser only sees as a failure before `open`;
// after a few the page says it is refused and backs off hard instead of retrying in a loop.
// Screenshot: e2e/screenshot-refused.png.
//
// Every wait is bounded; the whole test is bounded by E2E_TIMEOUT_MS (default 180 s).
// It prints "N passed, N failed" last and exits non-zero on failure.

import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createHmac } from "node:crypto";
import http from "node:http";
import { extname, join, normalize } from "node:path";
import { spawnSync } from "node:child_process";
import {
  APP,
  GatewayNode,
  HERE,
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
  sleep,
  startRedis,
  waitFor,
} from "./harness.mjs";

const DIST = join(APP, "dist");
const ROOM = "e2e-lobby";
installWatchdog();

const JWT_SECRET = "e2e-secret";
const tokenRequests = new Map(); // sub -> how many tokens the pages fetched
function mintJwt(sub, ttlS, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const data = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlS })}`;
  return `${data}.${createHmac("sha256", secret).update(data).digest("base64url")}`;
}

const MIME = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png" };
function serveDist(port) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/token") {
      const sub = url.searchParams.get("sub") || "anon";
      tokenRequests.set(sub, (tokenRequests.get(sub) || 0) + 1);
      const badNth = Number(url.searchParams.get("bad_nth") || 0); // only that request's token is bad
      const bad = url.searchParams.get("bad") || tokenRequests.get(sub) === badNth;
      const secret = bad ? "not-the-secret" : JWT_SECRET;
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" });
      return res.end(mintJwt(sub, Number(url.searchParams.get("ttl") || 600), secret));
    }
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    let file = join(DIST, path);
    if (!file.startsWith(DIST) || !existsSync(file) || statSync(file).isDirectory()) file = join(DIST, "index.html");
    res.writeHead(200, { "content-type": MIME[extname(file)] || "application/octet-stream", "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  return new Promise((res) => server.listen(port, "127.0.0.1", () => res(server)));
}

// ---- the test ---------------------------------------------------------------------------------

const CLUSTER = process.argv.includes("--cluster");
// --auth: token_expiring comes this long before a token runs out (alice's live ALICE_TTL_S)
const WARNING_MS = 4000;
const ALICE_TTL_S = 6;
const AUTH = process.argv.includes("--auth");
// --sse: alice's page cannot open a WebSocket (the test replaces the browser's with one that
// always fails, as behind a proxy that drops them); @roomcast/solid falls back to SSE
const SSE = process.argv.includes("--sse");
/** In the page: a WebSocket that never opens (error, then close 1006, as a blocked one). */
function blockWebSockets() {
  window.WebSocket = class {
    constructor() {
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
      }, 10);
    }
    send() {
      throw new Error("blocked");
    }
    close() {}
  };
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
  // history for the test's rooms: `since` replays what a page missed once the node keeps history.
  // Not in --cluster mode (unless E2E_CLUSTER_HISTORY=1): the Redis broker keeps no history yet,
  // and the nodes then refuse every join of and publish to such a room with `unavailable`.
  const history = !CLUSTER || process.env.E2E_CLUSTER_HISTORY === "1";
  writeFileSync(
    config,
    (history ? `[history]\nrooms = [{ pattern = "e2e-*", size = 100, ttl_s = 600 }]\n` : "") +
      // presence with member_joined / member_left for the chat's room: the "who's here" list
      (!CLUSTER ? `[presence]\nrooms = [{ pattern = "e2e-*", events = true }]\n` : "") +
      (AUTH ? `[auth]\nmode = "jwt"\njwt_secret = "${JWT_SECRET}"\nleeway_s = 0\nexpiry_warning_ms = ${WARNING_MS}\n` : ""),
  );
  const redisUrl = CLUSTER ? await startRedis() : null;
  const Node = class extends GatewayNode {
    constructor(id) {
      super(id, { bin, config, redisUrl });
    }
  };
  const n1 = await new Node(1).init();
  const n2 = CLUSTER ? await new Node(2).init() : null;
  await n1.start();
  if (n2) await n2.start();

  const httpPort = await freePort();
  setStaticServer(await serveDist(httpPort));
  const APPURL = `http://127.0.0.1:${httpPort}`;

  const browser = await launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  context.setDefaultTimeout(15_000);

  const pageErrors = [];
  const wsOpens = new Map(); // page label -> WebSockets the browser opened for it
  async function openPage(path, label, init) {
    const page = await context.newPage();
    if (init) await page.addInitScript(init);
    page.on("websocket", () => wsOpens.set(label, (wsOpens.get(label) || 0) + 1));
    page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && !/WebSocket connection|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text()) && pageErrors.push(`${label} console: ${m.text()}`));
    await page.goto(`${APPURL}${path}`, { timeout: 15_000 });
    return page;
  }
  const q = (name, urls) => `?ws=${encodeURIComponent(urls.join(","))}&room=${ROOM}&name=${name}`;
  const state = (page) => page.getByTestId("state").textContent({ timeout: 5000 });
  const texts = (page) => page.locator('[data-testid="messages"] li .text').allTextContents();
  const count = async (page, text) => (await texts(page)).filter((t) => t === text).length;
  const sees = (page, text, timeoutMs = 10_000) => waitFor(`"${text}"`, async () => (await count(page, text)) > 0, timeoutMs).then(() => true, () => false);
  const joined = (page) => page.evaluate((room) => window.roomcast.room(room).joined(), ROOM);
  const recoveredOf = (page) => page.evaluate((room) => window.roomcast.room(room).recovered(), ROOM);
  const nodeOf = (page) => page.evaluate(() => window.roomcast.welcome()?.node);
  // the presence member a page is: its token's user, else its conn_id
  const userOf = (page) => page.evaluate(() => window.roomcast.welcome()?.user ?? window.roomcast.welcome()?.conn_id);
  const listed = (page) => page.locator('[data-testid="presence"] li').evaluateAll((els) => els.map((e) => e.dataset.user));
  const lists = (page, user, present, timeoutMs = 10_000) =>
    waitFor(`${user} ${present ? "in" : "out of"} the presence list`, async () => (await listed(page)).includes(user) === present, timeoutMs).then(() => true, () => false);
  async function say(page, text) {
    // Enter submits the form; click() would wait for animation frames, which background pages
    // of a headless browser get about once a second
    await page.getByTestId("draft").fill(text);
    await page.getByTestId("draft").press("Enter");
  }
  async function allOpen(pages, timeoutMs) {
    return waitFor("every page open and joined", async () => {
      const s = await Promise.all(pages.map(state));
      if (!s.every((x) => x === "open")) return false;
      return (await Promise.all(pages.map(joined))).every(Boolean);
    }, timeoutMs).then(() => true, (e) => (log(String(e)), false));
  }
  async function exchange(a, b, tag) {
    await say(a, `alice ${tag}`);
    check(`bob sees alice ${tag}`, await sees(b, `alice ${tag}`));
    await say(b, `bob ${tag}`);
    check(`alice sees bob ${tag}`, await sees(a, `bob ${tag}`));
  }
  /** Bob is away while `node` publishes; back, he gets it once (history) or sees the notice. */
  async function awayAndBack(alice, bob, node) {
    await bob.evaluate(() => window.roomcast.close());
    await waitFor("bob closed", async () => (await state(bob)) === "closed", 5000);
    const away = await node.publish(ROOM, { name: "server", text: "while bob was away" });
    check("publish while bob is away is accepted", away.status === 202, `${away.status} ${away.body}`);
    await sees(alice, "while bob was away");
    await bob.evaluate(() => window.roomcast.client.connect());
    check("bob reconnects", await allOpen([bob], 15_000));
    const recovered = await recoveredOf(bob);
    if (recovered === true) {
      check("with history, the message missed while away appears after the reconnect", await sees(bob, "while bob was away"));
      await sleep(500);
      check("... exactly once, with no duplicate of what bob had seen", (await count(bob, "while bob was away")) === 1 && (await count(bob, "service announcement")) === 1);
    } else {
      log("the node keeps no history (join with since answered recovered:false)");
      check("without history, the rejoin reports recovered:false and the page says so", recovered === false && (await bob.getByTestId("gap").isVisible()), `recovered=${recovered}`);
    }
    await say(bob, "bob is back");
    check("alice sees bob after he came back", await sees(alice, "bob is back"));
  }
  function noDuplicates(pages, textsToCheck) {
    return Promise.all(pages.flatMap((p) => textsToCheck.map((t) => count(p, t)))).then((cs) => cs.every((c) => c === 1));
  }

  if (AUTH) {
    const tok = (sub, extra = "") => `&token_url=${encodeURIComponent(`/token?sub=${sub}${extra}`)}`;
    const alice = await openPage(`/${q("alice", [n1.ws])}${tok("alice", `&ttl=${ALICE_TTL_S}`)}`, "alice");
    const firstExpMs = Date.now() + ALICE_TTL_S * 1000; // alice's first token runs out by then
    const bob = await openPage(`/${q("bob", [n1.ws])}${tok("bob")}`, "bob");
    check("alice and bob connect with tokens and join", await allOpen([alice, bob], 15_000));
    const users = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.roomcast.welcome()?.user)));
    check("welcome names the token's user", users[0] === "alice" && users[1] === "bob", JSON.stringify(users));
    await exchange(alice, bob, "with a token");
    const refreshes = await waitFor("alice's page to refresh in band", () => (tokenRequests.get("alice") || 0) >= 2, 15_000).then(() => true, () => false);
    check("token_expiring: alice's page calls getToken() and refreshes in band", refreshes, `${tokenRequests.get("alice")} tokens`);
    // past the first token's exp (plus a second of exp rounding): time itself is awaited, bounded
    await waitFor("alice's first token's exp to pass", () => Date.now() > firstExpMs + 1000, ALICE_TTL_S * 1000 + 5000);
    await exchange(alice, bob, "after the first token's exp");
    const lastClose = await alice.evaluate(() => window.roomcast.info().lastClose);
    check("no close and no reconnect: one WebSocket for alice's page", wsOpens.get("alice") === 1 && lastClose === null,
      `${wsOpens.get("alice")} sockets, last close ${JSON.stringify(lastClose)}`);
    const metrics = (await httpStatus(`${n1.admin}/metrics`)).body;
    check("the node closed no connection for an expired token", /roomcast_disconnects_total\{reason="token_expired"\} 0\b/.test(metrics));

    // carol's second token (the one for her first refresh) is badly signed: refused, then a reconnect
    const carol = await openPage(`/${q("carol", [n1.ws])}${tok("carol", `&ttl=${ALICE_TTL_S}&bad_nth=2`)}`, "carol");
    check("carol connects and joins", await allOpen([carol], 15_000));
    const fellBack = await waitFor("carol's page to reconnect", async () => (wsOpens.get("carol") || 0) >= 2 && (await state(carol)) === "open", 15_000).then(() => true, () => false);
    const carolClose = await carol.evaluate(() => window.roomcast.info().lastClose);
    check("a refused refresh: the page closes with 4001 and reconnects with a fresh token", fellBack && carolClose?.code === 4001 && /refused/.test(carolClose?.reason),
      `${wsOpens.get("carol")} sockets, last close ${JSON.stringify(carolClose)}`);
    check("... rejoins and keeps chatting", (await allOpen([carol], 10_000)) && (await say(bob, "bob to carol"), await sees(carol, "bob to carol")));

    const mallory = await openPage(`/${q("mallory", [n1.ws])}${tok("mallory", "&bad=1")}`, "mallory");
    const refused = await waitFor("mallory refused", () => mallory.evaluate(() => window.roomcast.info().refused), 20_000).then(() => true, () => false);
    check("repeated 401s at the handshake: the page reports it is refused", refused);
    const before = tokenRequests.get("mallory") || 0;
    await sleep(8000);
    const after = tokenRequests.get("mallory") || 0;
    check("... and backs off hard: no new attempt in the next 8 s", after - before === 0, `${before} -> ${after} attempts`);
    check("... and says so", (await mallory.getByTestId("conn").textContent()).includes("refused"), await mallory.getByTestId("conn").textContent());
    log(`mallory made ${after} attempts`);
    await mallory.screenshot({ path: join(HERE, "screenshot-refused.png") });
    check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
  } else if (SSE) {
    const alice = await openPage(`/${q("alice", [n1.ws])}`, "alice", blockWebSockets);
    const bob = await openPage(`/${q("bob", [n1.ws])}`, "bob");
    check("alice (WebSocket blocked) and bob connect and join", await allOpen([alice, bob], 20_000));
    const transports = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.roomcast.info().transport)));
    check("alice's page fell back to SSE, bob's stays on the WebSocket", transports[0] === "sse" && transports[1] === "websocket", JSON.stringify(transports));
    await exchange(alice, bob, "over SSE");
    log("SIGTERM the gateway");
    await n1.stop();
    await n1.start("node-1b");
    check("both reconnect and rejoin after the restart", await allOpen([alice, bob], 30_000));
    await exchange(alice, bob, "over SSE after the restart");
    const pub = await n1.publish(ROOM, { name: "server", text: "service announcement" });
    check("admin publish is accepted", pub.status === 202, `${pub.status} ${pub.body}`);
    check("both pages get the service message", (await sees(alice, "service announcement")) && (await sees(bob, "service announcement")));
    // alice (SSE) is away while a message is published; back, the stream resumes from her last id
    await awayAndBack(bob, alice, n1);
    check("every message appears once on each page", await noDuplicates([alice, bob], ["alice over SSE", "bob over SSE", "alice over SSE after the restart", "bob over SSE after the restart"]));
    check("the browser opened no WebSocket for alice's page", !wsOpens.get("alice"), String(wsOpens.get("alice")));
    check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
    await alice.screenshot({ path: join(HERE, "screenshot-sse.png") });
  } else if (!CLUSTER) {
    const alice = await openPage(`/${q("alice", [n1.ws])}`, "alice");
    const bob = await openPage(`/${q("bob", [n1.ws])}`, "bob");
    const prim = await openPage(`/primitives.html${q("carol", [n1.ws])}`, "primitives");
    const migrated = await openPage(`/primitives.html${q("dave", [n1.ws])}&client=roomcast`, "createRoomcastWS");

    // 1. both pages connect, join and chat
    check("alice and bob connect and join", await allOpen([alice, bob], 15_000));
    const bob1 = await userOf(bob);
    check("alice's who's-here list shows bob (presence fetched after the join, or member_joined)", await lists(alice, bob1, true), JSON.stringify(await listed(alice)));
    check("... and bob's shows alice", await lists(bob, await userOf(alice), true), JSON.stringify(await listed(bob)));
    await waitFor("primitives pages open", async () => (await state(prim)) === "open" && (await state(migrated)) === "open", 10_000).catch(() => {});
    await sleep(300); // the primitives pages' joins are answered
    await exchange(alice, bob, "before the restart");
    check("the @solid-primitives/websocket page gets messages from roomcast", await sees(prim, "bob before the restart"));
    check("the createRoomcastWS page gets messages", await sees(migrated, "bob before the restart"));
    await say(migrated, "dave via createRoomcastWS");
    check("alice sees the createRoomcastWS page's message", await sees(alice, "dave via createRoomcastWS"));

    // 2. the gateway restarts (SIGTERM, then again on the same ports)
    log("SIGTERM the gateway");
    const exit = await n1.stop();
    check("the gateway exits on SIGTERM", exit && exit.code === 0, JSON.stringify(exit));
    const during = await Promise.all([alice, bob].map(state));
    check("pages show they lost the connection", during.every((s) => s !== "open"), JSON.stringify(during));
    await n1.start("node-1b");
    check("alice and bob reconnect and rejoin after the restart", await allOpen([alice, bob], 30_000));
    await waitFor("createRoomcastWS page open", async () => (await state(migrated)) === "open", 15_000).catch(() => {});
    const rec = await recoveredOf(alice);
    check("the rejoin reports recovered:false (the restarted node lost the history) and the page says so",
      rec === false && (await alice.getByTestId("gap").isVisible()), `recovered=${rec}`);
    const bob2 = await userOf(bob);
    check("after the restart alice's list is fetched again: bob's new connection is in it", (await lists(alice, bob2, true)) && !(await listed(alice)).includes(bob1),
      `${bob1} -> ${bob2}: ${JSON.stringify(await listed(alice))}`);
    await exchange(alice, bob, "after the restart");
    check("the createRoomcastWS page rejoined and keeps receiving", await sees(migrated, "bob after the restart"));
    const primAfter = await sees(prim, "bob after the restart", 4000);
    log(`the plain @solid-primitives/websocket page ${primAfter ? "did" : "did not"} get a message after the restart (it does not rejoin rooms)`);
    check("every message appears once on each page", await noDuplicates([alice, bob], ["alice before the restart", "alice after the restart", "bob after the restart"]));

    // 3. a service publishes through the admin API
    const pub = await n1.publish(ROOM, { name: "server", text: "service announcement" });
    check("admin publish is accepted", pub.status === 202, `${pub.status} ${pub.body}`);
    check("both pages get the service message", (await sees(alice, "service announcement")) && (await sees(bob, "service announcement")));

    // 4. bob is away while a message is published; he comes back with since = the last id seen
    await awayAndBack(alice, bob, n1);

    check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
    await alice.screenshot({ path: join(HERE, "screenshot.png") });
    await migrated.screenshot({ path: join(HERE, "screenshot-primitives.png") });
    log(`screenshots: ${join(HERE, "screenshot.png")}, ${join(HERE, "screenshot-primitives.png")}`);

    // 5. bob closes his page: member_left takes him out of alice's list
    const bob3 = await userOf(bob);
    check("before bob leaves, alice lists him", await lists(alice, bob3, true), JSON.stringify(await listed(alice)));
    const countBefore = await alice.evaluate((room) => window.roomcast.room(room).presence()?.count, ROOM);
    await bob.close();
    check("bob's page closed: he disappears from alice's who's-here list", await lists(alice, bob3, false), JSON.stringify(await listed(alice)));
    const countAfter = await alice.evaluate((room) => window.roomcast.room(room).presence()?.count, ROOM);
    check("... and the count goes down by one", countAfter === countBefore - 1, `${countBefore} -> ${countAfter}`);
  } else {
    // alice starts on node 1, bob on node 2; each takes the next URL on every connect
    const alice = await openPage(`/${q("alice", [n1.ws, n2.ws])}`, "alice");
    const bob = await openPage(`/${q("bob", [n2.ws, n1.ws])}`, "bob");
    check("alice and bob connect and join", await allOpen([alice, bob], 15_000));
    const [na, nb] = [await nodeOf(alice), await nodeOf(bob)];
    check("alice is on node 1 and bob on node 2", na === "e2e-1" && nb === "e2e-2", `${na} ${nb}`);
    await exchange(alice, bob, "across nodes");

    log("SIGTERM node 1");
    const exit = await n1.stop();
    check("node 1 exits on SIGTERM", exit && exit.code === 0, JSON.stringify(exit));
    check("alice fails over to node 2 and rejoins", await allOpen([alice, bob], 15_000));
    check("alice is on node 2 now", (await nodeOf(alice)) === "e2e-2", await nodeOf(alice));
    log(`alice's rejoin on node 2: recovered=${await recoveredOf(alice)}`);
    await exchange(alice, bob, "after the failover");

    await n1.start("node-1b");
    const pub = await n1.publish(ROOM, { name: "server", text: "service announcement" });
    check("admin publish on the restarted node 1 is accepted", pub.status === 202, `${pub.status} ${pub.body}`);
    check("it reaches both pages on node 2 through Redis", (await sees(alice, "service announcement")) && (await sees(bob, "service announcement")));
    check("every message appears once on each page", await noDuplicates([alice, bob], ["alice across nodes", "bob across nodes", "alice after the failover", "bob after the failover"]));

    // bob's next connection goes to node 1 (his URL list rotates); the message is published on node 2
    await awayAndBack(alice, bob, n2);
    log(`bob is on ${await nodeOf(bob)} after coming back`);

    check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
    await alice.screenshot({ path: join(HERE, "screenshot-cluster.png") });
    log(`screenshot: ${join(HERE, "screenshot-cluster.png")}`);
  }
  await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
}

run(main);
