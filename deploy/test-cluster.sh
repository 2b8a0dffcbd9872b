#!/usr/bin/env bash
# The compose cluster for real, with images built offline (no registry): builds the images
# (deploy/offline/build-images.sh), runs
#   docker-compose -f docker-compose.yml -f docker-compose.offline.yml up -d
# (every service but Grafana, which Debian does not package), waits for every healthcheck, runs
# the cluster checks (deploy/checks/cluster_check.py) through the balancer on localhost:8080:
# cross-node delivery, redis-cli PUBLISH from inside the Redis container, the admin API, every
# node's Prometheus target up, and `docker-compose stop gateway-2` moving its clients to the
# other nodes; then `down -v`, also when something failed. Prints the time each stage took.
#
# Usage: deploy/test-cluster.sh [--binary PATH | --release] [--keep]
#   default gateway binary: the debug build (`cargo build --locked --bin roomcast`, what
#   scripts/test built); --release builds and uses the release binary; --keep leaves the
#   cluster running (then: docker-compose -p roomcast-ci down -v).
# Starts dockerd when it is not running (and stops it at exit); installs debootstrap,
# docker.io, docker-compose, python3-venv with apt-get when missing.
# Environment: ROOMCAST_WS_PORT (default 8080, another free port when 8080 is taken),
# ROOMCAST_SUBNET / ROOMCAST_LB_ADDR (when 172.31.250.0/24 is taken), DEBIAN_MIRROR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

binary='' profile=debug keep=''
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=$(realpath "$2"); shift 2 ;;
        --release) profile=release; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

PROJECT=roomcast-ci
SERVICES=(redis gateway-1 gateway-2 gateway-3 lb prometheus)
mkdir -p "$CACHE_DIR"
ENV_FILE=$CACHE_DIR/ci.env
dc() {
    docker-compose -p "$PROJECT" --env-file "$ENV_FILE" \
        -f "$REPO_DIR/docker-compose.yml" -f "$REPO_DIR/docker-compose.offline.yml" "$@"
}

compose_started=
# The script's own stdout and stderr, for the exit handler.
exec 7>&1 8>&2
finish() {
    local status=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8   # a signal may land while output is redirected (wait_for)
    if [ -n "$compose_started" ]; then
        if [ "$status" != 0 ]; then
            log "FAILED; container states and logs:"
            dc ps >&2 || true
            dc logs --no-color --tail 40 >&2 || true
        fi
        if [ -n "$keep" ] && [ "$status" = 0 ]; then
            log "--keep: cluster left running (docker-compose -p $PROJECT --env-file $ENV_FILE -f docker-compose.yml -f docker-compose.offline.yml down -v)"
        else
            stage "docker-compose down -v"
            timeout 180 docker-compose -p "$PROJECT" --env-file "$ENV_FILE" \
                -f "$REPO_DIR/docker-compose.yml" -f "$REPO_DIR/docker-compose.offline.yml" \
                down -v --remove-orphans --timeout 20 || log "down -v failed"
        fi
    fi
    stop_docker_if_started
    stage_report
    if [ "$status" = 0 ]; then log "compose cluster test passed"; else log "compose cluster test FAILED"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "prerequisites (dockerd, apt-get, venv when missing)"
ensure_docker
ensure_python
need curl curl

if [ -z "$binary" ]; then
    stage "cargo build ($profile)"
    if [ "$profile" = release ]; then
        (cd "$REPO_DIR" && cargo build --release --locked --bin roomcast)
    else
        (cd "$REPO_DIR" && cargo build --locked --bin roomcast)
    fi
    binary=$REPO_DIR/target/$profile/roomcast
fi

stage "offline images (debootstrap base, docker import, build)"
"$DEPLOY_DIR/offline/build-images.sh" --binary "$binary"

stage "docker-compose up -d"
# The published ports: the documented defaults when free, else a free block.
ws_port=${ROOMCAST_WS_PORT:-8080}
ports=("$ws_port" 9091 3000 6379 9101 9102 9103)
all_free=1
for p in "${ports[@]}"; do port_free "$p" || all_free=; done
if [ -z "$all_free" ]; then
    base=$(free_port_block 7) || die "no free ports"
    ports=($((base)) $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)) $((base + 6)))
    log "some default ports are taken; using ${ports[*]}"
fi
cat >"$ENV_FILE" <<EOF
ROOMCAST_API_KEY=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
ROOMCAST_WS_PORT=${ports[0]}
PROMETHEUS_PORT=${ports[1]}
GRAFANA_PORT=${ports[2]}
ROOMCAST_REDIS_PORT=${ports[3]}
ROOMCAST_ADMIN_PORT_1=${ports[4]}
ROOMCAST_ADMIN_PORT_2=${ports[5]}
ROOMCAST_ADMIN_PORT_3=${ports[6]}
ROOMCAST_SUBNET=${ROOMCAST_SUBNET:-172.31.250.0/24}
ROOMCAST_LB_ADDR=${ROOMCAST_LB_ADDR:-172.31.250.10}
EOF
# Leftovers of an interrupted run.
dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
compose_started=1
timeout 300 docker-compose -p "$PROJECT" --env-file "$ENV_FILE" \
    -f "$REPO_DIR/docker-compose.yml" -f "$REPO_DIR/docker-compose.offline.yml" up -d "${SERVICES[@]}"

stage "wait for every healthcheck"
all_healthy() {
    local ids states
    ids=$(dc ps -q "${SERVICES[@]}")
    [ "$(wc -w <<<"$ids")" = "${#SERVICES[@]}" ] || return 1
    # shellcheck disable=SC2086
    states=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' $ids)
    ! grep -qv ' healthy$' <<<"$states"
}
wait_for 120 "every container healthy" all_healthy || {
    # shellcheck disable=SC2046
    docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' $(dc ps -q) >&2
    die "not every container got healthy"
}
# shellcheck disable=SC2046
docker inspect -f '  {{.Name}} {{.State.Health.Status}}' $(dc ps -q "${SERVICES[@]}") >&2

stage "cluster checks through the balancer"
# shellcheck disable=SC1090
. "$ENV_FILE"
dc_cmd="docker-compose -p $PROJECT --env-file $ENV_FILE -f $REPO_DIR/docker-compose.yml -f $REPO_DIR/docker-compose.offline.yml"
"$PYTHON" "$DEPLOY_DIR/checks/cluster_check.py" \
    --ws "ws://127.0.0.1:$ROOMCAST_WS_PORT/ws" \
    --admin "http://127.0.0.1:$ROOMCAST_ADMIN_PORT_1,http://127.0.0.1:$ROOMCAST_ADMIN_PORT_2,http://127.0.0.1:$ROOMCAST_ADMIN_PORT_3" \
    --api-key "$ROOMCAST_API_KEY" \
    --redis-cli "$dc_cmd exec -T redis redis-cli" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
    --stop-node gateway-2 --stop-cmd "$dc_cmd stop gateway-2"

stage "dashboard queries return series on the live Prometheus"
"$PYTHON" "$DEPLOY_DIR/checks/check_dashboard.py" --prometheus "http://127.0.0.1:$PROMETHEUS_PORT"
