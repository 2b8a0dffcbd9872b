// What the browser end-to-end tests share (chat.e2e.mjs, console.e2e.mjs, sse.e2e.mjs,
// conflate.e2e.mjs, and examples/solidstart-chat's e2e and stack, which import it from here):
// pass/fail counting,
// processes started and stopped by PID (also on failure and on a timeout), free ports, bounded
// waits, the roomcast binary, a redis-server of the test's own, roomcast nodes on free loopback
// ports, and Debian's chromium through playwright-core.
//
// A test calls `installWatchdog()` first and ends with `finish(code)`, which stops everything it
// started (browser, nodes, redis last, a static server given to `setStaticServer`), prints the
// last lines of every process log on failure, and exits non-zero when a check failed.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const APP = resolve(HERE, "..");
export const REPO = resolve(APP, "../..");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const WORK = mkdtempSync(join(tmpdir(), "roomcast-e2e-"));

const results = { passed: 0, failed: 0 };
const started = Date.now();
export const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
export function check(name, ok, detail = "") {
  if (ok) {
    results.passed++;
    log(`ok   ${name}`);
  } else {
    results.failed++;
    log(`FAIL ${name} ${detail}`);
  }
  return ok;
}
export function fail(message) {
  results.failed++;
  log(`FAIL ${message}`);
}

// ---- processes we start, stopped by PID -------------------------------------------------------

const children = new Set(); // { name, proc }
export function startProcess(name, cmd, args, opts = {}) {
  const logFile = join(WORK, `${name}.log`);
  const fd = openSync(logFile, "a");
  const proc = spawn(cmd, args, { stdio: ["ignore", fd, fd], ...opts });
  const child = { name, proc, logFile, exited: null };
  child.exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
  children.add(child);
  proc.once("exit", () => children.delete(child));
  log(`started ${name} pid ${proc.pid}`);
  return child;
}
export async function stopProcess(child, signal = "SIGTERM", graceMs = 12_000) {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return child.exited;
  try {
    process.kill(child.proc.pid, signal);
  } catch {
    /* gone */
  }
  const res = await Promise.race([child.exited, sleep(graceMs).then(() => null)]);
  if (res) return res;
  log(`${child.name} pid ${child.proc.pid} did not stop within ${graceMs} ms: SIGKILL`);
  try {
    process.kill(child.proc.pid, "SIGKILL");
  } catch {
    /* gone */
  }
  return Promise.race([child.exited, sleep(5000).then(() => ({ code: null, signal: "SIGKILL?" }))]);
}

let browserServer = null;
let staticServer = null;
let cleaning = null;
/** An http.Server of the test's, closed by `finish`. */
export function setStaticServer(server) {
  staticServer = server;
}
async function cleanup() {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    if (browserServer) {
      const pid = browserServer.process().pid;
      await Promise.race([browserServer.close().catch(() => {}), sleep(5000)]);
      try {
        process.kill(pid, 0);
        process.kill(pid, "SIGKILL");
      } catch {
        /* stopped */
      }
    }
    for (const child of [...children].reverse()) await stopProcess(child, "SIGTERM", 5000); // redis last
    if (staticServer) {
      staticServer.closeAllConnections?.();
      await new Promise((res) => staticServer.close(() => res()));
    }
  })();
  return cleaning;
}

let watchdog = null;
/** Fail and stop everything once the whole test has taken `totalMs`; stop on Ctrl-C too. */
export function installWatchdog(totalMs = Number(process.env.E2E_TIMEOUT_MS || 180_000)) {
  watchdog = setTimeout(async () => {
    fail(`the whole test took longer than ${totalMs} ms`);
    await finish(1);
  }, totalMs);
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => void finish(130));
}

export async function finish(code) {
  clearTimeout(watchdog);
  await Promise.race([cleanup(), sleep(20_000)]);
  if (results.failed) {
    for (const f of readdirSync(WORK).filter((f) => f.endsWith(".log")).sort()) {
      console.log(`---- ${f} (last lines)\n${readFileSync(join(WORK, f), "utf8").split("\n").slice(-25).join("\n")}`);
    }
  }
  rmSync(WORK, { recursive: true, force: true });
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exit(results.failed || code ? code || 1 : 0);
}

/** Run the test's `main`, then finish: 0 when every check passed. */
export function run(main) {
  main().then(
    () => finish(0),
    async (e) => {
      fail(e && e.stack ? e.stack : String(e));
      await finish(1);
    },
  );
}

// ---- helpers ----------------------------------------------------------------------------------

export function sleep(ms) {
  return new Promise((res) => setTimeout(res, ms));
}
export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}
export async function waitFor(what, fn, timeoutMs = 15_000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
}
export async function httpStatus(url, method = "GET", body, headers = {}) {
  const res = await fetch(url, {
    method,
    body: body && JSON.stringify(body),
    headers: body ? { "content-type": "application/json", ...headers } : headers,
    signal: AbortSignal.timeout(3000),
  });
  return { status: res.status, body: await res.text() };
}

export function findBinary() {
  const candidates = [process.env.E2E_GATEWAY_BIN, join(REPO, "target/release/roomcast"), join(REPO, "target/debug/roomcast")];
  for (const c of candidates) if (c && existsSync(c)) return c;
  log("no roomcast binary: cargo build --bin roomcast");
  const r = spawnSync("cargo", ["build", "--bin", "roomcast"], { cwd: REPO, stdio: "inherit", timeout: 900_000 });
  if (r.status !== 0) throw new Error("cargo build failed");
  return join(REPO, "target/debug/roomcast");
}

/** A redis-server of the test's own on a free port (REDIS_SERVER, default on PATH); its URL. */
export async function startRedis() {
  const redisPort = await freePort();
  const redis = startProcess("redis", process.env.REDIS_SERVER || "redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  await waitFor("redis-server", async () => {
    if (redis.proc.exitCode !== null) throw Object.assign(new Error(`redis-server exited: ${readFileSync(redis.logFile, "utf8")}`), { fatal: true });
    return new Promise((res) => {
      const s = net.connect(redisPort, "127.0.0.1", () => s.write("PING\r\n"));
      s.on("data", (d) => (s.destroy(), res(String(d).startsWith("+PONG"))));
      s.on("error", () => res(false));
    });
  }, 10_000);
  return `redis://127.0.0.1:${redisPort}`;
}

/**
 * A roomcast node on free loopback ports: `--config`, `--node-id e2e-ID`, `--redis` when given.
 * roomcast reads every ROOMCAST_* variable as configuration (and stops on unknown keys): the
 * caller's are kept out, so the node runs with exactly the test's configuration.
 */
export class GatewayNode {
  constructor(id, { bin, config, redisUrl = null, env = {} }) {
    Object.assign(this, { id, bin, config, redisUrl });
    this.env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROOMCAST_")));
    this.env.RUST_LOG ||= "info";
    Object.assign(this.env, env);
  }
  async init() {
    [this.wsPort, this.adminPort] = [await freePort(), await freePort()];
    this.ws = `ws://127.0.0.1:${this.wsPort}/ws`;
    this.admin = `http://127.0.0.1:${this.adminPort}`;
    return this;
  }
  async start(logName = `node-${this.id}`) {
    const args = ["--config", this.config, "--listen", `127.0.0.1:${this.wsPort}`, "--admin-listen", `127.0.0.1:${this.adminPort}`, "--node-id", `e2e-${this.id}`];
    if (this.redisUrl) args.push("--redis", this.redisUrl);
    const child = (this.child = startProcess(logName, this.bin, args, { env: this.env }));
    await waitFor(`node ${this.id} ready`, async () => {
      if (child.proc.exitCode !== null)
        throw Object.assign(new Error(`roomcast exited with ${child.proc.exitCode}: ${readFileSync(child.logFile, "utf8").trim()}`), { fatal: true });
      return (await httpStatus(`${this.admin}/readyz`)).status === 200;
    }, 20_000);
    log(`node ${this.id} ready on ${this.ws}`);
  }
  stop() {
    return stopProcess(this.child, "SIGTERM", 15_000);
  }
  publish(room, data, headers = {}) {
    return httpStatus(`${this.admin}/api/publish`, "POST", { room, data }, headers);
  }
}

/** Debian's chromium, headless, through playwright-core (the caller's `chromium` when given, so an
 * importer from another example uses its own playwright-core; else this example's); stopped by
 * `finish`. */
export async function launchBrowser(chromium) {
  chromium ??= (await import("playwright-core")).chromium;
  // playwright gives chromium a fresh temporary --user-data-dir (it refuses one in args)
  browserServer = await chromium.launchServer({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 30_000,
  });
  log(`chromium pid ${browserServer.process().pid}`);
  return chromium.connect(browserServer.wsEndpoint(), { timeout: 30_000 });
}
