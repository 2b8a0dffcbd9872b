#!/usr/bin/env node
// Browser end-to-end test of the SolidStart example against two roomcast nodes on Redis.
//
//   node e2e/chat.e2e.mjs        (node >= 24, after `npm ci`; builds the app unless E2E_SKIP_BUILD=1)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure: a
// redis-server (REDIS_SERVER, default on PATH), the app's production server (`vite build`, then
// `node .output/server/index.mjs`), two roomcast nodes (E2E_GATEWAY_BIN, else
// ../../target/{release,debug}/roomcast) sharing that Redis, with the app's connect and join hooks
// and its webhook route configured, and Debian's chromium (CHROMIUM, default /usr/bin/chromium)
// through playwright-core, one browser context (cookie jar) per user.
//
// Scenario: alice (staff) and bob sign in with the form (a session cookie; the WebSocket
// handshake carries it and the gateway asks the app's connect hook who it is); alice is on node
// 1 and bob on node 2, they see each other in presence (with the hook's info: the name as typed,
// a staff badge) and chat across nodes; bob's try at
// #chat:staff is refused by the join hook; alice's "announce" server function publishes a system
// message both see; node 1 is stopped with SIGTERM while a service publishes a numbered message
// every 100 ms through node 2: alice fails over to node 2, dave (whose page knows node 1 only)
// waits for node 1 to start again, and both rejoin with `since` and have every one of them
// exactly once and in order (the lobby keeps history in Redis); a message published through the
// restarted node 1 reaches everyone; carol signs in and closes her tab: the member_left webhook
// updates "last seen" on alice's page; alice kicks bob: his page stops (4403), his old cookie
// gets the sign-in form back, the connect hook answers it 401 and the gateway refuses its
// handshake with 401 (and a cookie with a forged payload is refused); signing in again works. Screenshots go to e2e/screenshots/ (git-ignored).
//
// Every wait is bounded; the whole test is bounded by E2E_TIMEOUT_MS (default 180 s).
// It prints "N passed, N failed" last and exits non-zero on failure.

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
// The harness of examples/solid-chat (processes by PID, ports, waits, nodes, redis, chromium).
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
  sleep,
  startProcess,
  startRedis,
  waitFor,
} from "../../solid-chat/e2e/harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const APP = resolve(HERE, "..");

installWatchdog();
const SHOTS = join(HERE, "screenshots");
const LOBBY = "chat:lobby";
const API_KEY = "e2e-api-key";
const WEBHOOK_SECRET = "e2e-webhook-secret";

/** A WebSocket handshake with this Cookie header: the HTTP status (101 when it was accepted). */
function handshakeStatus(wsUrl, cookie) {
  const u = new URL(wsUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname,
      port: u.port,
      path: u.pathname,
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
        Origin: "http://127.0.0.1",
        ...(cookie ? { Cookie: cookie } : {}),
      },
      timeout: 5000,
    });
    req.on("upgrade", (res, socket) => (socket.destroy(), resolve(res.statusCode)));
    req.on("response", (res) => (res.resume(), resolve(res.statusCode)));
    req.on("timeout", () => req.destroy(new Error("handshake timed out")));
    req.on("error", reject);
    req.end();
  });
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  if (process.env.E2E_SKIP_BUILD !== "1" || !existsSync(join(APP, ".output/server/index.mjs"))) {
    log("vite build");
    const r = spawnSync(process.execPath, [join(APP, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "warn"], { cwd: APP, stdio: "inherit", timeout: 180_000 });
    if (r.status !== 0) throw new Error("vite build failed");
  }
  const bin = findBinary();
  const redisUrl = await startRedis();
  const appPort = await freePort();
  const APPURL = `http://127.0.0.1:${appPort}`;

  const config = join(WORK, "roomcast.toml");
  writeFileSync(
    config,
    `[admin]
api_key = "${API_KEY}"
[history]
rooms = [{ pattern = "chat:*", size = 200, ttl_s = 600 }]
[presence]
rooms = [{ pattern = "chat:*", events = true }]
[hooks]
connect_url = "${APPURL}/roomcast/connect"
forward_headers = ["cookie"]
join_url = "${APPURL}/roomcast/join"
join_rooms = ["chat:staff*"]
timeout_ms = 3000
[webhooks]
url = "${APPURL}/roomcast/events"
secret = "${WEBHOOK_SECRET}"
`,
  );
  const n1 = await new GatewayNode(1, { bin, config, redisUrl }).init();
  const n2 = await new GatewayNode(2, { bin, config, redisUrl }).init();

  // the app: its env names start with CHAT_ (a roomcast node takes every ROOMCAST_* as config)
  const app = startProcess("app", process.execPath, [join(APP, ".output/server/index.mjs")], {
    cwd: APP,
    env: {
      ...process.env,
      PORT: String(appPort),
      HOST: "127.0.0.1",
      CHAT_SESSION_SECRET: "e2e-session-secret",
      CHAT_ADMIN_URL: n2.admin,
      CHAT_API_KEY: API_KEY,
      CHAT_WEBHOOK_SECRET: WEBHOOK_SECRET,
      CHAT_REDIS_URL: redisUrl,
      CHAT_GATEWAY_WS: `${n1.ws},${n2.ws}`,
      CHAT_STAFF: "alice",
      SERVER_SHUTDOWN_TIMEOUT: "1", // the test's own keep-alive fetches would hold a graceful stop 5 s
    },
  });
  await waitFor("the app server", async () => {
    if (app.proc.exitCode !== null) throw Object.assign(new Error(`the app exited: ${readFileSync(app.logFile, "utf8")}`), { fatal: true });
    return (await httpStatus(`${APPURL}/`)).status === 200;
  }, 30_000);
  log(`app ready on ${APPURL}`);
  await n1.start();
  await n2.start();

  const browser = await launchBrowser(chromium);
  const pageErrors = [];
  async function userPage(label, wsUrls) {
    const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
    context.setDefaultTimeout(15_000);
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text()) && pageErrors.push(`${label} console: ${m.text()}`));
    await page.goto(`${APPURL}/?ws=${encodeURIComponent(wsUrls.join(","))}`);
    await page.locator('[data-testid="sign-in"][data-ready="1"]').waitFor({ timeout: 15_000 }); // hydrated
    await page.getByTestId("sign-in-name").fill(label[0].toUpperCase() + label.slice(1)); // "Alice": the user id is "alice"
    await page.getByTestId("sign-in-submit").click();
    try {
      await page.getByTestId("me").waitFor({ timeout: 15_000 });
    } catch (e) {
      await page.screenshot({ path: join(SHOTS, `failed-sign-in-${label}.png`) }).catch(() => {});
      throw new Error(`${label} did not get past the sign-in form (${page.url()}; errors: ${pageErrors.join(" | ")}): ${e.message}`);
    }
    return { page, context, label };
  }
  const state = (u) => u.page.getByTestId("state").getAttribute("data-state", { timeout: 5000 });
  const lobbyJoined = (u) => u.page.evaluate((room) => window.roomcast?.client.rooms.includes(room) ?? false, LOBBY);
  const nodeOf = (u) => u.page.evaluate(() => window.roomcast.welcome()?.node);
  const texts = (u) => u.page.locator('[data-testid="messages"] li .text').allTextContents();
  const count = async (u, text) => (await texts(u)).filter((t) => t === text).length;
  const sees = (u, text, ms = 10_000) => waitFor(`${u.label} sees "${text}"`, async () => (await count(u, text)) > 0, ms).then(() => true, () => false);
  const listed = (u) => u.page.locator('[data-testid="presence"] li').evaluateAll((els) => els.map((e) => e.dataset.user));
  const lists = (u, user, present, ms = 10_000) =>
    waitFor(`${user} ${present ? "in" : "out of"} ${u.label}'s presence`, async () => (await listed(u)).includes(user) === present, ms).then(() => true, () => false);
  async function openAndJoined(users, ms = 15_000) {
    return waitFor("pages open and in the lobby", async () => {
      for (const u of users) if ((await state(u)) !== "open" || !(await lobbyJoined(u))) return false;
      return true;
    }, ms).then(() => true, (e) => (log(String(e)), false));
  }
  async function say(u, text) {
    await u.page.getByTestId("draft").fill(text);
    await u.page.getByTestId("draft").press("Enter");
  }

  // 1. sign in; the connect hook names the connection after the session
  const alice = await userPage("alice", [n1.ws, n2.ws]);
  const bob = await userPage("bob", [n2.ws, n1.ws]);
  check("alice and bob sign in, connect and join the lobby", await openAndJoined([alice, bob]));
  const users = await Promise.all([alice, bob].map((u) => u.page.evaluate(() => window.roomcast.welcome()?.user)));
  check("welcome names the session's user (the connect hook read the cookie)", users[0] === "alice" && users[1] === "bob", JSON.stringify(users));
  const [na, nb] = [await nodeOf(alice), await nodeOf(bob)];
  check("alice is on node 1, bob on node 2", na === "e2e-1" && nb === "e2e-2", `${na} ${nb}`);
  check("presence: alice lists bob and bob lists alice", (await lists(alice, "bob", true)) && (await lists(bob, "alice", true)), JSON.stringify([await listed(alice), await listed(bob)]));
  const aliceOnBob = bob.page.locator('[data-testid="presence"] li[data-user="alice"]');
  const [shownName, staffBadge] = [await aliceOnBob.getAttribute("data-name"), await bob.page.getByTestId("staff-alice").isVisible()];
  check("presence carries the connect hook's info: bob's page shows alice as \"Alice\", staff", shownName === "Alice" && staffBadge, `${shownName} ${staffBadge}`);

  // 2. chat across nodes
  await say(alice, "hello from node 1");
  check("bob (node 2) sees alice's message", await sees(bob, "hello from node 1"));
  await say(bob, "hello from node 2");
  check("alice (node 1) sees bob's message", await sees(alice, "hello from node 2"));
  const from = await alice.page.locator('[data-testid="messages"] li').evaluateAll((els) => els.map((e) => e.dataset.from));
  check("`from` is the session's user", from.includes("alice") && from.includes("bob"), JSON.stringify(from));

  // 3. the join hook: the app's rule keeps bob out of chat:staff, lets alice in
  await bob.page.getByTestId("try-staff").click();
  const staffError = await bob.page.getByTestId("staff-error").textContent({ timeout: 10_000 }).catch(() => "");
  check("bob's join of chat:staff is refused by the join hook (forbidden: staff only)", /forbidden: staff only/.test(staffError), staffError);
  const aliceStaff = await waitFor("alice in chat:staff", () => alice.page.evaluate(() => window.roomcast.client.rooms.includes("chat:staff")), 10_000).then(() => true, () => false);
  check("alice (staff) is let into chat:staff", aliceStaff);

  // 4. a server function publishes a system message with @roomcast/server
  await alice.page.getByTestId("announce-text").fill("maintenance at 10:00");
  await alice.page.getByTestId("announce").click();
  const systemOn = async (u) =>
    waitFor(`${u.label} sees the system message`, async () =>
      (await u.page.locator('[data-testid="messages"] li.system .text').allTextContents()).includes("maintenance at 10:00"), 10_000).then(() => true, () => false);
  check("the announce server function's system message reaches both nodes' pages", (await systemOn(alice)) && (await systemOn(bob)));
  await alice.page.screenshot({ path: join(SHOTS, "1-alice-chat.png") });

  // 5. node 1 restarts while a service publishes every 100 ms through node 2: no message lost.
  // dave's page knows node 1 only, so it is away for the whole restart and must get what was
  // published meanwhile from the lobby's history (rejoin with since); alice fails over to node 2.
  const dave = await userPage("dave", [n1.ws]);
  check("dave (node 1 only) signs in and joins", await openAndJoined([dave]));
  let ticking = true;
  let sent = 0;
  const ticker = (async () => {
    while (ticking) {
      const r = await n2.publish(LOBBY, { text: `tick ${sent}` }, { authorization: `Bearer ${API_KEY}` });
      if (r.status === 202) sent++;
      else log(`tick publish: ${r.status} ${r.body}`);
      await sleep(100);
    }
  })();
  await waitFor("a few ticks", () => sent >= 5, 5000);
  log("SIGTERM node 1");
  const exit = await n1.stop();
  check("node 1 exits on SIGTERM", exit && exit.code === 0, JSON.stringify(exit));
  const whileDown = sent;
  check("dave's page shows it lost its node", (await state(dave)) !== "open", await state(dave));
  check("alice fails over to node 2 and rejoins", (await openAndJoined([alice, bob])) && (await nodeOf(alice)) === "e2e-2", await nodeOf(alice));
  await waitFor("ticks while node 1 is down", () => sent >= whileDown + 10, 10_000);
  const missedByDave = sent - whileDown;
  await n1.start("node-1b");
  check("dave reconnects to the restarted node 1 and rejoins", (await openAndJoined([dave], 30_000)) && (await nodeOf(dave)) === "e2e-1", await nodeOf(dave));
  ticking = false;
  await ticker;
  log(`${sent} ticks published through node 2, ${missedByDave}+ of them while node 1 was down`);
  const expected = Array.from({ length: sent }, (_, i) => `tick ${i}`);
  const ticksOf = async (u) => (await texts(u)).filter((t) => t.startsWith("tick "));
  const allTicks = (u) =>
    waitFor(`${u.label} has every tick`, async () => JSON.stringify(await ticksOf(u)) === JSON.stringify(expected), 10_000).then(() => true, () => false);
  const daveRecovered = await dave.page.evaluate((room) => window.roomcast.room(room).recovered(), LOBBY);
  check("dave's rejoin replayed what he missed (recovered: true)", daveRecovered === true, `recovered=${daveRecovered}`);
  check("dave has every message published during the restart, once, in order", await allTicks(dave), JSON.stringify(await ticksOf(dave)));
  check("... and so have alice (failed over) and bob", (await allTicks(alice)) && (await allTicks(bob)), JSON.stringify(await ticksOf(alice)));
  check("no 'messages may be missing' notice", !(await dave.page.getByTestId("gap").isVisible()) && !(await alice.page.getByTestId("gap").isVisible()));
  await dave.page.screenshot({ path: join(SHOTS, "2-dave-after-restart.png") });
  await dave.context.close();
  const pub = await n1.publish(LOBBY, { text: "from the restarted node 1" }, { authorization: `Bearer ${API_KEY}` });
  check("the restarted node 1 publishes to both", pub.status === 202 && (await sees(alice, "from the restarted node 1")) && (await sees(bob, "from the restarted node 1")), `${pub.status} ${pub.body}`);

  // 6. carol closes her tab: the member_left webhook updates "last seen" on alice's page
  const bad = await httpStatus(`${APPURL}/roomcast/events`, "POST", { events: [] }, { "x-roomcast-signature": `t=${Math.floor(Date.now() / 1000)},v1=00` });
  check("the webhook route refuses a wrong signature (401)", bad.status === 401, `${bad.status}`);
  const carol = await userPage("carol", [n1.ws, n2.ws]);
  check("carol signs in and joins", await openAndJoined([carol]));
  check("alice lists carol", await lists(alice, "carol", true));
  const closedAt = Date.now();
  await carol.context.close();
  check("carol's tab closed: alice's presence drops her", await lists(alice, "carol", false));
  const seen = await waitFor("carol in alice's last seen", async () => {
    const ts = await alice.page.locator('[data-testid="last-seen"] li[data-user="carol"]').getAttribute("data-ts", { timeout: 500 }).catch(() => null);
    return ts && Number(ts);
  }, 15_000).catch(() => null);
  check("'last seen' of carol appears on alice's page, at about when her tab closed", seen !== null && Math.abs(seen - closedAt) < 10_000, `${seen} vs ${closedAt}`);
  await alice.page.screenshot({ path: join(SHOTS, "3-alice-last-seen.png") });

  // 7. alice kicks bob from the backend: his page stops and his old session cannot come back
  const bobCookie = (await bob.context.cookies()).map((c) => `${c.name}=${c.value}`).join("; ");
  check("before the kick, bob's cookie opens a WebSocket on either node (101)",
    (await handshakeStatus(n1.ws, bobCookie)) === 101 && (await handshakeStatus(n2.ws, bobCookie)) === 101);
  await alice.page.getByTestId("kick-bob").click();
  const kicked = await waitFor("bob's page forbidden", async () => (await state(bob)) === "forbidden", 10_000).then(() => true, () => false);
  const lastClose = await bob.page.evaluate(() => window.roomcast.info().lastClose);
  check("bob's page is closed with 4403 and does not reconnect", kicked && lastClose?.code === 4403 && /kicked by alice/.test(lastClose?.reason), JSON.stringify(lastClose));
  check("alice's presence drops bob", await lists(alice, "bob", false));
  await bob.page.screenshot({ path: join(SHOTS, "4-bob-kicked.png") });
  const hook = await httpStatus(`${APPURL}/roomcast/connect`, "POST", { address: "127.0.0.1", headers: { cookie: bobCookie }, query: {} });
  check("the connect hook answers bob's old session 401", hook.status === 401, `${hook.status} ${hook.body}`);
  const [h1, h2] = [await handshakeStatus(n1.ws, bobCookie), await handshakeStatus(n2.ws, bobCookie)];
  check("the gateway refuses a handshake with bob's old cookie (401) on both nodes", h1 === 401 && h2 === 401, `${h1} ${h2}`);
  await bob.page.reload();
  check("reloaded, bob's page shows the sign-in form again", await bob.page.getByTestId("sign-in").isVisible({ timeout: 10_000 }).catch(() => false));
  // a cookie whose payload names someone else, with bob's signature: refused too
  const [name, value] = bobCookie.split(/=(.*)/s);
  const [payload, sig] = [value.slice(0, value.lastIndexOf(".")), value.slice(value.lastIndexOf(".") + 1)];
  const forgedPayload = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, "base64url").toString()), user: "alice", iat: Date.now() })).toString("base64url");
  const forged = await httpStatus(`${APPURL}/roomcast/connect`, "POST", { address: "127.0.0.1", headers: { cookie: `${name}=${forgedPayload}.${sig}` }, query: {} });
  check("the connect hook refuses a cookie whose signature does not match (401)", forged.status === 401, `${forged.status} ${forged.body}`);
  // signing in again makes a new session, which the kick did not touch
  await bob.page.locator('[data-testid="sign-in"][data-ready="1"]').waitFor({ timeout: 15_000 });
  await bob.page.getByTestId("sign-in-name").fill("Bob");
  await bob.page.getByTestId("sign-in-submit").click();
  const back = await bob.page.getByTestId("me").waitFor({ timeout: 15_000 }).then(() => openAndJoined([bob]), () => false);
  check("bob signs in again: a new session connects", back);
  check("alice is still chatting", (await say(alice, "bye bob"), await sees(alice, "bye bob")));

  check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
  log(`screenshots in ${SHOTS}`);
  await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
}

run(main);
