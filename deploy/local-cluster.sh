#!/usr/bin/env bash
# The cluster of docker-compose.yml as local processes, for machines with no Docker engine and
# for tests: redis-server, three roomcast nodes on the Redis broker, nginx in front with
# deploy/nginx/nginx.conf (hostnames, listen address, user and pid swapped), and Prometheus with
# deploy/prometheus.yml when it is installed. Everything listens on 127.0.0.1.
#
# Usage: deploy/local-cluster.sh [--base-port N] [--binary PATH] [--api-key KEY] [--run-dir DIR]
#                                [--prometheus | --no-prometheus]
#   --base-port N    ports N (balancer), N+1..N+3 (nodes' WebSocket), N+4..N+6 (nodes' admin),
#                    N+7 (Redis), N+8 (Prometheus); default: a free block of 9 ports
#   --binary PATH    the roomcast binary (default target/release/roomcast, built when missing)
#   --api-key KEY    the admin API key of the nodes (default: random, printed)
#   --run-dir DIR    configs, logs, pid files (default: a temporary directory, removed at exit)
#   --prometheus     run Prometheus (installed with apt-get when missing);
#   --no-prometheus  do not; by default it runs when the `prometheus` command exists
# Other ROOMCAST_SECTION__KEY variables in the environment reach every node.
#
# Once every process is ready it prints ONE line for scripts:
#   roomcast ws=URL admin=URL,URL,URL redis=URL
# then the URLs for humans, and runs until Ctrl-C or SIGTERM, which stop everything it started.
# Missing redis-server, redis-cli or nginx are installed with apt-get.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

base_port=
binary=$REPO_DIR/target/release/roomcast
api_key=
run_dir=
prometheus=auto
while [ $# -gt 0 ]; do
    case $1 in
        --base-port) base_port=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --api-key) api_key=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        --prometheus) prometheus=yes; shift ;;
        --no-prometheus) prometheus=no; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

need redis-server redis-server
need redis-cli redis-tools
need nginx nginx-light
need curl curl
case $prometheus in
    yes) need prometheus prometheus ;;
    auto) if command -v prometheus >/dev/null; then prometheus=yes; else prometheus=no; fi ;;
esac
if [ ! -x "$binary" ]; then
    [ "$binary" = "$REPO_DIR/target/release/roomcast" ] || die "no roomcast binary at $binary"
    log "building roomcast (cargo build --release --bin roomcast)"
    (cd "$REPO_DIR" && cargo build --release --bin roomcast)
fi
if [ -z "$base_port" ]; then
    base_port=$(free_port_block 9) || die "found no 9 free ports in a row"
else
    for ((i = 0; i < 9; i++)); do port_free $((base_port + i)) || die "port $((base_port + i)) is in use (--base-port $base_port needs $base_port..$((base_port + 8)))"; done
fi
[ -n "$api_key" ] || api_key=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')

LB_PORT=$base_port
REDIS_PORT=$((base_port + 7))
PROM_PORT=$((base_port + 8))
ws_port() { echo $((base_port + $1)); }
admin_port() { echo $((base_port + 3 + $1)); }

make_run_dir roomcast-cluster

# -- process bookkeeping: everything started here is stopped at exit, by pid -----------------
PIDS=() NAMES=() REPORTED=()
start() { # start NAME COMMAND... : run in the background, output to RUN/NAME.log
    local name=$1
    shift
    "$@" >"$run_dir/$name.log" 2>&1 7>&- 8>&- &
    PIDS+=($!) NAMES+=("$name") REPORTED+=("")
    echo $! >"$run_dir/$name.pid"
}
# The script's own stdout and stderr, for the exit handler.
exec 7>&1 8>&2
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8   # a signal may land while output is redirected (wait_for)
    if [ ${#PIDS[@]} -gt 0 ]; then
        log "stopping the cluster (${NAMES[*]}: pids ${PIDS[*]})"
        stop_pids 15 "${PIDS[@]}"
    fi
    finish_run_dir "$status" "$own_run_dir" "$run_dir"
    log "stopped"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started_or_die() { # started_or_die NAME SECONDS DESCRIPTION COMMAND...
    local name=$1 secs=$2 what=$3 pid
    shift 3
    pid=$(cat "$run_dir/$name.pid")
    if ! wait_for "$secs" "$what" "$@"; then
        kill -0 "$pid" 2>/dev/null || log "$name exited"
        tail -n 20 "$run_dir/$name.log" >&2 || true
        die "$name did not get ready ($what)"
    fi
}

# -- Redis -------------------------------------------------------------------------------------
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$run_dir" --daemonize no
started_or_die redis 15 "redis-cli -p $REDIS_PORT ping" redis-cli -p "$REDIS_PORT" ping

# -- three nodes -------------------------------------------------------------------------------
for i in 1 2 3; do
    start "gateway-$i" env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
        ROOMCAST_ADMIN__API_KEY="$api_key" ROOMCAST_SERVER__TRUSTED_PROXIES=127.0.0.1 \
        "$binary" --listen "127.0.0.1:$(ws_port $i)" --admin-listen "127.0.0.1:$(admin_port $i)" \
        --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "gateway-$i"
done
for i in 1 2 3; do
    started_or_die "gateway-$i" 30 "gateway-$i /readyz" curl -fsS "http://127.0.0.1:$(admin_port $i)/readyz"
done

# -- nginx: deploy/nginx/nginx.conf with the hostnames swapped ---------------------------------
mkdir -p "$run_dir/nginx-temp"
if [ "$(id -u)" = 0 ]; then user_line="user root;"; else user_line="# user: the invoking user"; fi
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
sed -e "s|^user nginx;|$user_line|" \
    -e "s|^pid .*|pid $run_dir/nginx.pid;|" \
    -e "s|^worker_rlimit_nofile .*|worker_rlimit_nofile $nofile;|" \
    -e "s|worker_connections [0-9]*;|worker_connections $nofile;|" \
    -e "s|listen 8080|listen 127.0.0.1:$LB_PORT|" \
    -e "s|server gateway-1:8080|server 127.0.0.1:$(ws_port 1)|" \
    -e "s|server gateway-2:8080|server 127.0.0.1:$(ws_port 2)|" \
    -e "s|server gateway-3:8080|server 127.0.0.1:$(ws_port 3)|" \
    -e "s|^http {|http {\n    client_body_temp_path $run_dir/nginx-temp/body;\n    proxy_temp_path $run_dir/nginx-temp/proxy;\n    fastcgi_temp_path $run_dir/nginx-temp/fastcgi;\n    uwsgi_temp_path $run_dir/nginx-temp/uwsgi;\n    scgi_temp_path $run_dir/nginx-temp/scgi;|" \
    "$DEPLOY_DIR/nginx/nginx.conf" >"$run_dir/nginx.conf"
grep -q 'gateway-[0-9]' "$run_dir/nginx.conf" && die "nginx.conf still names a gateway host (swap failed)"
start nginx nginx -e stderr -p "$run_dir" -c "$run_dir/nginx.conf" -g 'daemon off;'
started_or_die nginx 15 "nginx /lb-healthz" curl -fsS "http://127.0.0.1:$LB_PORT/lb-healthz"

# -- Prometheus: deploy/prometheus.yml with the targets swapped --------------------------------
if [ "$prometheus" = yes ]; then
    sed -e "s|gateway-1:9090|127.0.0.1:$(admin_port 1)|" \
        -e "s|gateway-2:9090|127.0.0.1:$(admin_port 2)|" \
        -e "s|gateway-3:9090|127.0.0.1:$(admin_port 3)|" \
        -e "s|localhost:9090|127.0.0.1:$PROM_PORT|" \
        "$DEPLOY_DIR/prometheus.yml" >"$run_dir/prometheus.yml"
    start prometheus prometheus --config.file="$run_dir/prometheus.yml" \
        --storage.tsdb.path="$run_dir/prometheus-data" --web.listen-address="127.0.0.1:$PROM_PORT"
    started_or_die prometheus 30 "prometheus /-/ready" curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"
fi

# -- ready -------------------------------------------------------------------------------------
admins=
for i in 1 2 3; do admins+="${admins:+,}http://127.0.0.1:$(admin_port $i)"; done
echo "roomcast ws=ws://127.0.0.1:$LB_PORT/ws admin=$admins redis=redis://127.0.0.1:$REDIS_PORT"
cat <<EOF

roomcast cluster is up; Ctrl-C stops it.
  WebSocket (nginx, least_conn):  ws://127.0.0.1:$LB_PORT/ws
$(for i in 1 2 3; do printf '  gateway-%s:  ws://127.0.0.1:%s/ws  admin http://127.0.0.1:%s  (pid %s)\n' "$i" "$(ws_port $i)" "$(admin_port $i)" "$(cat "$run_dir/gateway-$i.pid")"; done)
  Redis:       redis://127.0.0.1:$REDIS_PORT
  Prometheus:  $([ "$prometheus" = yes ] && echo "http://127.0.0.1:$PROM_PORT" || echo "not running (install prometheus or pass --prometheus)")
  API key:     $api_key
  Run dir:     $run_dir (configs, logs, pid files)

  Try:  redis-cli -p $REDIS_PORT PUBLISH roomcast:room:lobby '{"data":{"headline":"hello"}}'
        curl -H "Authorization: Bearer $api_key" -d '{"room":"lobby","data":"hi"}' http://127.0.0.1:$(admin_port 1)/api/publish
        curl -s http://127.0.0.1:$(admin_port 1)/metrics | grep ^roomcast_connections_open
EOF

# -- run until stopped; report processes that exit (tests stop nodes on purpose) ---------------
while true; do
    for i in "${!PIDS[@]}"; do
        if [ -z "${REPORTED[$i]}" ] && ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            status=0
            wait "${PIDS[$i]}" 2>/dev/null || status=$?
            log "${NAMES[$i]} (pid ${PIDS[$i]}) exited with status $status"
            REPORTED[i]=1
        fi
    done
    sleep 1 &
    wait $! || true
done
