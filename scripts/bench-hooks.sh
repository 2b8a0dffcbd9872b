#!/usr/bin/env bash
# The cost of the backend hooks (docs/backend.md): the same `rooms` load (every member joins, then
# publishes and receives) on one fresh node without hooks, then on one whose every join and
# publish asks a local backend (scripts/hook-backend.mjs, node). Prints the loadtest's summary of
# each run; the figures and the command are recorded in BENCHMARKS.md.
#
#   cargo build --release -p roomcast -p roomcast-loadtest && scripts/bench-hooks.sh
#
# ROOMS, MEMBERS, RATE, DURATION override the load (defaults 200 rooms of 5, 1000 msg/s, 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/roomcast
LOAD=$TARGET/release/roomcast-loadtest
ROOMS=${ROOMS:-200} MEMBERS=${MEMBERS:-5} RATE=${RATE:-1000} DURATION=${DURATION:-20}
[ -x "$BIN" ] && [ -x "$LOAD" ] || { echo "build first: cargo build --release -p roomcast -p roomcast-loadtest" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

BACKEND_PORT=$(free_port)
node scripts/hook-backend.mjs "$BACKEND_PORT" >/dev/null &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")

for mode in plain hooked; do
    WS=$(free_port) ADMIN=$(free_port)
    cat >"$WORK/$mode.toml" <<TOML
[server]
listen = "127.0.0.1:$WS"
connect_rate_per_ip = 100000
[admin]
listen = "127.0.0.1:$ADMIN"
[limits]
rate_per_sec = 1000
rate_burst = 1000
TOML
    if [ "$mode" = hooked ]; then
        cat >>"$WORK/$mode.toml" <<TOML
[hooks]
join_url = "http://127.0.0.1:$BACKEND_PORT/join"
join_rooms = ["*"]
publish_url = "http://127.0.0.1:$BACKEND_PORT/publish"
publish_rooms = ["*"]
TOML
    fi
    RUST_LOG=warn "$BIN" --config "$WORK/$mode.toml" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
    echo "== $mode (node pid $NODE_PID, backend pid $BACKEND_PID)"
    "$LOAD" --url "ws://127.0.0.1:$WS/ws" --pid "$NODE_PID" --pid "$BACKEND_PID" --quiet \
        rooms --rooms "$ROOMS" --members "$MEMBERS" --rate "$RATE" --duration "$DURATION" || true
    echo "hook calls: $(curl -fs "http://127.0.0.1:$ADMIN/metrics" | grep -E '^roomcast_hook_calls_total.*(join|publish).*allowed' | tr '\n' ' ')"
    curl -fs "http://127.0.0.1:$ADMIN/metrics" | grep -E '^roomcast_hook_seconds_(sum|count)' | tr '\n' ' '; echo
    kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
done
