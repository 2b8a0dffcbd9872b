#!/usr/bin/env bash
# The cluster checks (deploy/checks/cluster_check.py) against deploy/local-cluster.sh: Redis,
# three nodes, nginx and Prometheus as local processes, no Docker.
#
# Usage: deploy/test-local-cluster.sh [--binary PATH | --release]
#   default: the debug binary (`cargo build --locked --bin roomcast`, what scripts/test built);
#   --release builds and uses target/release/roomcast.
# Installs what it needs with apt-get when missing (redis-server, redis-tools, nginx-light,
# prometheus, python3-venv) and websockets from PyPI into deploy/.cache/venv. Prints the time
# each stage took. Exit status 0 when every check passed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

binary='' profile=debug
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=$(realpath "$2"); shift 2 ;;
        --release) profile=release; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/roomcast-local-test.XXXXXX")
cluster_pid=
# The script's own stdout and stderr, for the exit handler.
exec 7>&1 8>&2
finish() {
    local status=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8   # a signal may land while output is redirected (wait_for)
    if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
        kill -TERM "$cluster_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$cluster_pid" 2>/dev/null || true
    fi
    if [ "$status" != 0 ]; then
        log "FAILED; logs:"
        for f in "$work"/cluster.err "$work"/run/*.log; do
            [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
        done
    fi
    rm -rf "$work"
    stage_report
    if [ "$status" = 0 ]; then log "local cluster test passed"; else log "local cluster test FAILED"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "prerequisites (apt-get, venv when missing)"
need redis-server redis-server
need redis-cli redis-tools
need nginx nginx-light
need prometheus prometheus
need curl curl
ensure_python

if [ -z "$binary" ]; then
    stage "cargo build ($profile)"
    if [ "$profile" = release ]; then
        (cd "$REPO_DIR" && cargo build --release --locked --bin roomcast)
    else
        (cd "$REPO_DIR" && cargo build --locked --bin roomcast)
    fi
    binary=$REPO_DIR/target/$profile/roomcast
fi

stage "start the local cluster"
api_key=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
"$DEPLOY_DIR/local-cluster.sh" --binary "$binary" --api-key "$api_key" --prometheus \
    --run-dir "$work/run" >"$work/cluster.out" 2>"$work/cluster.err" &
cluster_pid=$!
ready_or_gone() { grep -q '^roomcast ws=' "$work/cluster.out" || ! kill -0 "$cluster_pid" 2>/dev/null; }
wait_for 120 "the ready line of local-cluster.sh" ready_or_gone || die "local-cluster.sh did not get ready"
grep -q '^roomcast ws=' "$work/cluster.out" || die "local-cluster.sh exited before it was ready"
line=$(grep '^roomcast ws=' "$work/cluster.out")
log "$line"
ws=$(sed -E 's/.* ws=([^ ]+).*/\1/' <<<"$line")
admin=$(sed -E 's/.* admin=([^ ]+).*/\1/' <<<"$line")
redis_url=$(sed -E 's/.* redis=([^ ]+).*/\1/' <<<"$line")
redis_port=${redis_url##*:}
prom=$(sed -nE 's/^ *Prometheus: *(http[^ ]+).*/\1/p' "$work/cluster.out")
[ -n "$prom" ] || die "local-cluster.sh printed no Prometheus URL"

stage "cluster checks"
victim_pid=$(cat "$work/run/gateway-2.pid")
"$PYTHON" "$DEPLOY_DIR/checks/cluster_check.py" --ws "$ws" --admin "$admin" --api-key "$api_key" \
    --redis-cli "redis-cli -p $redis_port" --prometheus "$prom" \
    --stop-node gateway-2 --stop-cmd "kill -TERM $victim_pid && while kill -0 $victim_pid 2>/dev/null; do sleep 0.2; done"

stage "dashboard queries return series on the live Prometheus"
"$PYTHON" "$DEPLOY_DIR/checks/check_dashboard.py" --prometheus "$prom"

stage "stop the cluster (SIGTERM, everything it started is gone)"
pids=$(cat "$work"/run/*.pid)
kill -TERM "$cluster_pid"
wait_for 30 "local-cluster.sh to exit" bash -c "! kill -0 $cluster_pid" || die "local-cluster.sh did not stop"
wait "$cluster_pid" 2>/dev/null || true
cluster_pid=
for pid in $pids; do
    if kill -0 "$pid" 2>/dev/null; then die "pid $pid outlived local-cluster.sh"; fi
done
log "all $(wc -w <<<"$pids") processes stopped"
