#!/usr/bin/env node
// Browser end-to-end test of the operator console (GET /console on the admin port) against a
// real roomcast node with an API key, in Debian's chromium through playwright-core.
//
//   node e2e/console.e2e.mjs        (after `npm ci`; no vite build needed: the page is in the binary)
//
// It starts everything itself on free loopback ports and stops it by PID, also on failure (see
// harness.mjs): the roomcast binary, a WebSocket load process (e2e/ws-load.mjs: plain clients
// joining one room and publishing), and chromium.
//
// Scenario: the console refuses a wrong key and opens with the right one; it lists the node;
// the connection count and message rates move while the load runs and fall back when it stops;
// the room appears with its member count, and clicking it shows its members (presence) and last
// messages (history); a member (a plain WebSocket in another page) receives what the console's
// publish form sends; the kick form closes that member with the code and reason it names, and
// the revoke form is accepted. Screenshots: e2e/screenshots/console-*.png (git-ignored).
//
// Every wait is bounded; the whole test by E2E_TIMEOUT_MS (default 180 s). It prints
// "N passed, N failed" last and exits non-zero on failure.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  GatewayNode,
  HERE,
  WORK,
  check,
  findBinary,
  installWatchdog,
  launchBrowser,
  log,
  run,
  startProcess,
  stopProcess,
  waitFor,
} from "./harness.mjs";

const KEY = "console-e2e-key";
const ROOM = "e2e-console";
const LOAD_CLIENTS = 20;
const SHOTS = join(HERE, "screenshots");
installWatchdog();

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const config = join(WORK, "roomcast.toml");
  writeFileSync(
    config,
    `[admin]\napi_key = "${KEY}"\nstats_interval_ms = 250\n` +
      `[history]\nrooms = [{ pattern = "e2e-*", size = 50, ttl_s = 600 }]\n` +
      `[presence]\nrooms = [{ pattern = "e2e-*" }]\n`,
  );
  const node = await new GatewayNode(1, { bin: findBinary(), config }).init();
  await node.start();

  const browser = await launchBrowser();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(15_000);
  const pageErrors = [];
  const console_ = await context.newPage();
  console_.on("pageerror", (e) => pageErrors.push(`console: ${e.message}`));
  console_.on("console", (m) => m.type() === "error" && !/401/.test(m.text()) && pageErrors.push(`console: ${m.text()}`));
  const text = (id) => console_.getByTestId(id).textContent({ timeout: 5000 });
  const number = async (id) => Number(await text(id));

  // 1. the key: a wrong one is refused, the right one opens the page
  await console_.goto(`${node.admin}/console`);
  await console_.getByTestId("key").fill("not-the-key");
  await console_.getByTestId("open").click();
  check("a wrong key is refused", await waitFor("the refusal", async () => /refused/.test(await text("login-error")), 5000).then(() => true, () => false),
    await text("login-error"));
  await console_.getByTestId("key").fill(KEY);
  await console_.getByTestId("open").click();
  const listed = await waitFor("the node listed", async () => (await console_.locator('[data-testid="nodes"] tr').count()) === 1, 10_000).then(() => true, () => false);
  check("with the key, the console lists the node", listed);
  check("... by its node id", (await console_.locator('[data-testid="nodes"] tr').first().getAttribute("data-node")) === "e2e-1");
  check("no connections before the load", (await number("total-connections")) === 0, await text("total-connections"));

  // 2. the load: the live numbers move
  const flag = typeof WebSocket === "undefined" ? ["--experimental-websocket"] : [];
  const load = startProcess("ws-load", process.execPath, [...flag, join(HERE, "ws-load.mjs"), node.ws, ROOM, String(LOAD_CLIENTS), "40"]);
  const seen = [];
  const rose = await waitFor("the connection count to reach the load", async () => {
    const n = await number("total-connections");
    if (seen.at(-1) !== n) seen.push(n);
    return n >= LOAD_CLIENTS;
  }, 20_000).then(() => true, () => false);
  check(`the connection count rises to ${LOAD_CLIENTS} while the load runs (live, no reload)`, rose, JSON.stringify(seen));
  const rates = await waitFor("message rates above 0", async () => (await number("total-in")) > 0 && (await number("total-deliveries")) > 0, 10_000).then(() => true, () => false);
  check("messages in and deliveries per second show the load", rates, `${await text("total-in")} / ${await text("total-deliveries")}`);
  const roomRow = console_.locator(`[data-testid="rooms"] tr[data-room="${ROOM}"]`);
  const counted = await waitFor("the room's members", async () => Number(await roomRow.locator(".members").textContent({ timeout: 1000 })) === LOAD_CLIENTS, 10_000).then(() => true, () => false);
  check("the room is listed with its member count", counted);
  await console_.screenshot({ path: join(SHOTS, "console-load.png"), fullPage: true });

  // 3. a member, in another page: the console shows it in the room and publishes to it
  const member = await context.newPage();
  member.on("pageerror", (e) => pageErrors.push(`member: ${e.message}`));
  await member.goto(`${node.admin}/healthz`); // any page without the console's CSP
  const memberId = await member.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        window.got = [];
        const ws = new WebSocket(url);
        let connId = null;
        ws.onmessage = (e) => {
          const frame = JSON.parse(e.data);
          window.got.push(frame);
          if (frame.type === "welcome") {
            connId = frame.conn_id;
            ws.send(JSON.stringify({ type: "join", room: "e2e-console", id: "j" }));
          }
          if (frame.type === "joined") resolve(connId);
        };
        ws.onerror = () => reject(new Error("member socket failed"));
        ws.onclose = (e) => {
          window.closedWith = { code: e.code, reason: e.reason };
        };
      }),
    node.ws,
  );
  check("the member joined", typeof memberId === "string", String(memberId));

  await stopProcess(load);
  const fell = await waitFor("the connection count to fall back", async () => (await number("total-connections")) === 1, 15_000).then(() => true, () => false);
  check("the count falls back to the one member when the load stops", fell, await text("total-connections"));

  await roomRow.click();
  const membersShown = await waitFor("the member in the room's presence", async () =>
    (await console_.locator(`[data-testid="room-members"] li[data-user="${memberId}"]`).count()) === 1, 10_000).then(() => true, () => false);
  check("clicking the room shows its members (presence)", membersShown, await console_.getByTestId("room-members").textContent());
  const historyShown = await waitFor("the load's messages in the history", async () => (await console_.locator('[data-testid="room-history"] li[data-id]').count()) > 0, 10_000).then(() => true, () => false);
  check("... and its last messages (history)", historyShown, await console_.getByTestId("room-history").textContent());

  await console_.getByTestId("publish-room").fill(ROOM);
  await console_.getByTestId("publish-data").fill(JSON.stringify({ text: "from the console" }));
  await console_.getByTestId("publish").click();
  const published = await waitFor("the publish result", async () => console_.getByTestId("publish-result").getAttribute("data-id"), 10_000).catch(() => null);
  check("the publish form is accepted", !!published, await text("publish-result"));
  const received = await waitFor("the member to receive it", () =>
    member.evaluate((id) => window.got.find((f) => f.type === "message" && f.id === id) || null, published), 10_000).catch(() => null);
  check("the member receives the console's message", received && received.data && received.data.text === "from the console", JSON.stringify(received));
  const inHistory = await waitFor("the message in the console's history", async () =>
    (await console_.locator(`[data-testid="room-history"] li[data-id="${published}"]`).count()) === 1, 10_000).then(() => true, () => false);
  check("... and the console shows it among the room's last messages", inHistory);
  await console_.screenshot({ path: join(SHOTS, "console-room.png"), fullPage: true });

  // 4. the control forms: kick the member (by conn_id, no auth here) with 4403 and a reason;
  // revoke a user's tokens (accepted by the node: 202)
  await console_.getByTestId("kick-by").selectOption("conn_id");
  await console_.getByTestId("kick-user").fill(memberId);
  await console_.getByTestId("kick-code").selectOption("4403");
  await console_.getByTestId("kick-reason").fill("bye from the console");
  await console_.getByTestId("kick").click();
  const closed = await waitFor("the member's socket to close", () => member.evaluate(() => window.closedWith || null), 10_000).catch(() => null);
  check("the kick form closes the member with 4403 and the reason", closed && closed.code === 4403 && closed.reason === "bye from the console", JSON.stringify(closed));
  const said = await waitFor("the kick result", async () => /disconnected/.test(await text("kick-result")), 10_000).then(() => true, () => false);
  check("... and says so", said, await text("kick-result"));
  await console_.getByTestId("revoke-user").fill("mallory");
  await console_.getByTestId("revoke-minutes").fill("5");
  await console_.getByTestId("revoke").click();
  const revoked = await waitFor("the revoke result", async () => /revoked mallory/.test(await text("revoke-result")), 10_000).then(() => true, () => false);
  check("the revoke form is accepted", revoked, await text("revoke-result"));
  await console_.screenshot({ path: join(SHOTS, "console-control.png"), fullPage: true });
  log(`screenshots: ${SHOTS}`);

  check("no errors in the pages", pageErrors.length === 0, pageErrors.join(" | "));
  await browser.close().catch(() => {});
}

run(main);
