#!/usr/bin/env bash
# A Redis Cluster of N masters (no replicas) on 127.0.0.1, from redis-server processes, for
# roomcast's `--redis-cluster` and the measurements of docs/scaling.md. Nothing is persisted.
#
# Usage: deploy/local-redis-cluster.sh [--masters N] [--base-port P] [--run-dir DIR]
#   --masters N     how many masters (default 3; a Redis Cluster needs at least 3)
#   --base-port P   ports P..P+N-1 (their cluster bus ports are P+10000..P+10000+N-1);
#                   default: a free block between 20000 and 22700
#   --run-dir DIR   configs, logs, pid files (default: a temporary directory, removed at exit)
#
# Once the cluster answers `cluster_state:ok` on every master it prints ONE line for scripts:
#   redis-cluster urls=redis://127.0.0.1:P,redis://127.0.0.1:P+1,... pids=PID,PID,...
# then runs until Ctrl-C or SIGTERM, which stop every redis-server it started, by pid. Started
# with `&` from a script, it ignores SIGINT (so do all background jobs there): `kill PID` it.
#   roomcast --redis-cluster "$(the urls= value)"
# Missing redis-server or redis-cli are installed with apt-get.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

masters=3
base_port=
run_dir=
while [ $# -gt 0 ]; do
    case $1 in
        --masters) masters=$2; shift 2 ;;
        --base-port) base_port=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$masters" -ge 3 ] 2>/dev/null || die "--masters must be a number >= 3"

need redis-server redis-server
need redis-cli redis-tools
need ss iproute2

# A port and its cluster bus port (port + 10000) must both be free.
block_free() { # block_free P : P..P+N-1 and their bus ports are free
    local i
    for ((i = 0; i < masters; i++)); do
        port_free $(($1 + i)) && port_free $(($1 + i + 10000)) || return 1
    done
}
if [ -z "$base_port" ]; then
    for _ in $(seq 200); do
        candidate=$((20000 + (RANDOM % (2700 - masters))))
        if block_free "$candidate"; then base_port=$candidate; break; fi
    done
    [ -n "$base_port" ] || die "found no $masters free ports (and bus ports) between 20000 and 22700"
else
    [ $((base_port + masters - 1 + 10000)) -le 65535 ] || die "--base-port $base_port: bus port above 65535"
    block_free "$base_port" || die "a port of $base_port..$((base_port + masters - 1)) or its bus port (+10000) is in use"
fi

make_run_dir roomcast-redis-cluster

PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then
        log "stopping ${#PIDS[@]} redis-server processes (pids ${PIDS[*]})"
        stop_pids 10 "${PIDS[@]}"
    fi
    finish_run_dir "$status" "$own_run_dir" "$run_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ports=() urls=()
for ((i = 0; i < masters; i++)); do
    port=$((base_port + i))
    dir=$run_dir/$port
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
save ""
appendonly no
daemonize no
EOF
    redis-server "$dir/redis.conf" >"$dir/redis.log" 2>&1 &
    PIDS+=($!)
    echo $! >"$dir/redis.pid"
    ports+=("$port") urls+=("redis://127.0.0.1:$port")
done
for port in "${ports[@]}"; do
    wait_for 15 "redis-server on $port" redis-cli -p "$port" ping || die "redis-server on $port did not start (see $run_dir/$port/redis.log)"
done

addrs=()
for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$run_dir/create.log" 2>&1 ||
    { cat "$run_dir/create.log" >&2; die "redis-cli --cluster create failed"; }
cluster_ok() {
    local port
    for port in "${ports[@]}"; do
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
    done
}
wait_for 30 "cluster_state:ok on every master" cluster_ok || die "the cluster did not converge"

joined_urls=$(IFS=,; echo "${urls[*]}")
joined_pids=$(IFS=,; echo "${PIDS[*]}")
echo "redis-cluster urls=$joined_urls pids=$joined_pids"
cat >&2 <<EOF

Redis Cluster of $masters masters is up; Ctrl-C stops it.
  seeds:    $joined_urls
  run dir:  $run_dir
  roomcast: roomcast --redis-cluster $joined_urls
  which master owns a channel:  redis-cli -p ${ports[0]} CLUSTER KEYSLOT roomcast:room:lobby; redis-cli -p ${ports[0]} CLUSTER SLOTS
EOF

while true; do
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "redis-server pid $pid exited"
    done
    sleep 1 &
    wait $! || true
done
