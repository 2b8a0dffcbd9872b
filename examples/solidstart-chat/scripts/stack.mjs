#!/usr/bin/env node
// The whole example on this machine, until Ctrl-C: a redis-server of its own (free port), two
// roomcast nodes sharing it (ws 8080 / 8081, admin 9090 / 9091) with the app's hooks and webhook
// configured, and the app's production server (port 3000; `npm run build` first). Everything
// is started and stopped by PID (examples/solid-chat/e2e/harness.mjs); logs are printed on failure.
//
//   npm run stack            then open http://127.0.0.1:3000 in two browsers (or a private window)
//
// Environment: PORT (3000), WS_PORTS (8080,8081), ADMIN_PORTS (9090,9091), E2E_GATEWAY_BIN (else
// ../../target/{release,debug}/roomcast, built with cargo when missing), REDIS_SERVER.

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { GatewayNode, WORK, findBinary, finish, httpStatus, log, startProcess, startRedis, waitFor } from "../../solid-chat/e2e/harness.mjs";

const APP = resolve(dirname(fileURLToPath(import.meta.url)), "..");

const port = Number(process.env.PORT || 3000);
const wsPorts = (process.env.WS_PORTS || "8080,8081").split(",").map(Number);
const adminPorts = (process.env.ADMIN_PORTS || "9090,9091").split(",").map(Number);
const API_KEY = "dev-api-key";
const WEBHOOK_SECRET = "dev-webhook-secret";

async function main() {
  const server = join(APP, ".output/server/index.mjs");
  if (!existsSync(server)) throw new Error("no .output/server/index.mjs: run `npm run build` first");
  const bin = findBinary();
  const redisUrl = await startRedis();
  const appUrl = `http://127.0.0.1:${port}`;
  const config = join(WORK, "roomcast.toml");
  writeFileSync(
    config,
    `[admin]
api_key = "${API_KEY}"
[history]
rooms = [{ pattern = "chat:*", size = 200, ttl_s = 3600 }]
[presence]
rooms = [{ pattern = "chat:*", events = true }]
[hooks]
connect_url = "${appUrl}/roomcast/connect"
forward_headers = ["cookie"]
join_url = "${appUrl}/roomcast/join"
join_rooms = ["chat:staff*"]
[webhooks]
url = "${appUrl}/roomcast/events"
secret = "${WEBHOOK_SECRET}"
`,
  );
  const nodes = wsPorts.map((wsPort, i) => {
    const n = new GatewayNode(i + 1, { bin, config, redisUrl });
    Object.assign(n, { wsPort, adminPort: adminPorts[i], ws: `ws://127.0.0.1:${wsPort}/ws`, admin: `http://127.0.0.1:${adminPorts[i]}` });
    return n;
  });
  const app = startProcess("app", process.execPath, [server], {
    cwd: APP,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      CHAT_ADMIN_URL: nodes[0].admin,
      CHAT_API_KEY: API_KEY,
      CHAT_WEBHOOK_SECRET: WEBHOOK_SECRET,
      CHAT_REDIS_URL: redisUrl,
      CHAT_GATEWAY_WS: nodes.map((n) => n.ws).join(","),
      CHAT_STAFF: process.env.CHAT_STAFF || "alice",
    },
  });
  await waitFor("the app server", async () => {
    if (app.proc.exitCode !== null) throw Object.assign(new Error(`the app exited: ${readFileSync(app.logFile, "utf8")}`), { fatal: true });
    return (await httpStatus(`${appUrl}/`)).status === 200;
  }, 30_000);
  for (const n of nodes) await n.start();
  log(`open ${appUrl} (staff: ${process.env.CHAT_STAFF || "alice"}); logs in ${WORK}; Ctrl-C stops everything`);
  await new Promise(() => {}); // until a signal
}

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => void finish(0));
main().catch(async (e) => {
  console.error(e && e.stack ? e.stack : String(e));
  await finish(1);
});
