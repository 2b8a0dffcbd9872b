#!/usr/bin/env node
// Checks that the unit tests have teeth: each mutant is src/client.ts with one safeguard taken
// out (backoff, rejoin, since, the heartbeat fix, 1008 handling, close during the gap, the
// queue bound, presence events and the presence refetch after a rejoin, the in-band token
// refresh and its fallback, a room the server left); the vitest suite must fail on every one of them. src/client.ts is not modified:
// the mutant is written to src/client.mutant.ts and swapped in by vitest.mutant.config.ts.
//   node test/mutants.mjs        (prints "N passed, N failed"; exits non-zero if a mutant survives)
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SRC = join(ROOT, "src/client.ts");
const MUTANT = join(ROOT, "src/client.mutant.ts");
const source = readFileSync(SRC, "utf8");

const mutants = [
  ["backoff: a fixed delay instead of exponential growth",
    "const d = Math.min(maxMs, initialMs * factor ** this.attempt);", "const d = Math.min(maxMs, initialMs);"],
  ["rejoin: rooms not joined again after a reconnect",
    "for (const r of this.rooms_.values()) this.sendJoin(r);\n", ""],
  ["rejoin: no since = last message id seen",
    "r.recover ? (r.lastId ?? r.opts.since)", "r.recover ? r.opts.since"],
  ["rejoin: replayed duplicates delivered again",
    "if (r.seen.has(m.id)) return false;", "if (false) return false;"],
  ["heartbeat fix: the late close event of a given-up socket is not ignored (handlers kept, no identity check)",
    "      if (this.ws !== ws) return;\n      this.dropSocket(ev.code", "      this.ws = this.ws ?? ws;\n      this.dropSocket(ev.code",
    "    ws.onopen = ws.onmessage = ws.onclose = null;\n", ""],
  ["heartbeat: an answer does not cancel the timeout",
    "    clearTimeout(this.pongTimer);\n    this.pongTimer = undefined;\n    this.pingTimer = setTimeout", "    this.pingTimer = setTimeout"],
  ["1008: treated like any other close",
    "if (code === CloseCode.policyViolation) {", "if (code === -1) {"],
  ["refusal: repeated failures before open not backed off hard",
    "if (this.failuresBeforeOpen >= refusal.after) {", "if (false) {"],
  ["1001: not reconnected at once",
    "this.fastRetryUsed = true;\n      return 0;", "this.fastRetryUsed = true;\n      return this.backoff();"],
  ["close(): a reconnect timer left running",
    "    this.stopped = true;\n    this.clearReconnect();", "    this.stopped = true;"],
  ["presence: member_joined / member_left not applied",
    "        this.onMember(f);\n", ""],
  ["presence: not fetched again after a rejoin",
    "if (r.opts.presence && this.rooms_.get(r.name) === r) {", "if (r.opts.presence && !rejoin && this.rooms_.get(r.name) === r) {"],
  ["presence: count not raised by member_joined",
    "      count++;\n", ""],
  ["presence: a member_joined already in the reply counted twice",
    "if (at >= 0) return; // already in the reply", "if (false) return; // already in the reply"],
  ["4403: reconnected like any other close",
    "if (info.wasOpen && info.code === CloseCode.forbidden) {", "if (false) {"],
  ["4000: treated as forbidden (no reconnect)",
    "if (info.wasOpen && info.code === CloseCode.forbidden) {", "if (info.wasOpen && (info.code === CloseCode.forbidden || info.code === CloseCode.reconnect)) {"],
  ["server subscriptions: joined {server: true} not listed in rooms",
    "    this.serverRooms.add(f.room);\n", ""],
  ["server subscriptions: a room the server left is joined again on reconnect",
    "      this.rooms_.delete(f.room);\n      this.clearRoomRetry(r);", "      this.clearRoomRetry(r);"],
  ["queue: unbounded",
    "if (this.queue.length >= this.o.maxQueue) {", "if (false) {"],
  ["refresh: token_expiring ignored",
    "        void this.onTokenExpiring(ws);\n", ""],
  ["refresh: an accepted refresh reconnects anyway",
    "      this.emit(\"refreshed\", reply as RefreshedFrame);", "      this.refreshRefused(ws, \"mutant\");"],
  ["refresh: a refused refresh does not fall back to a reconnect",
    "        return this.refreshRefused(ws, `token refresh refused: ${reply.code}`);", "        return;"],
  ["refresh: a getToken() failure does not fall back to a reconnect",
    "if (!token) return this.refreshRefused(ws, \"getToken failed\");", "if (!token) return;"],
  ["left with a reason: no roomError {dropped: true} for the app",
    "      this.emit(\"roomError\", { room: f.room, error, dropped: true });\n", ""],
];

let passed = 0;
let failed = 0;
try {
  for (const [name, ...edits] of mutants) {
    let code = source;
    let missing = false;
    for (let i = 0; i < edits.length; i += 2) {
      if (!code.includes(edits[i])) missing = true;
      code = code.replace(edits[i], edits[i + 1]);
    }
    if (missing) {
      console.log(`FAIL ${name}: the code it changes is gone; update test/mutants.mjs`);
      failed++;
      continue;
    }
    writeFileSync(MUTANT, code);
    const r = spawnSync(process.execPath, [join(ROOT, "node_modules/vitest/vitest.mjs"), "run", "--config", "vitest.mutant.config.ts", "--reporter=dot"], {
      cwd: ROOT,
      env: { ...process.env, ROOMCAST_MUTANT: MUTANT },
      encoding: "utf8",
      timeout: 120_000,
    });
    const out = `${r.stdout}${r.stderr}`;
    const tests = /Tests\s+(.*)/.exec(out)?.[1]?.trim() ?? "no summary";
    if (r.status !== 0 && /failed/.test(tests)) {
      console.log(`ok   ${name}: killed (${tests})`);
      passed++;
    } else {
      console.log(`FAIL ${name}: the tests still pass (${tests})`);
      failed++;
    }
  }
} finally {
  rmSync(MUTANT, { force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
