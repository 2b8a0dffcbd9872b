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

# need COMMAND PACKAGE : install PACKAGE when COMMAND is missing.
need() { command -v "$1" >/dev/null 2>&1 || apt_install "$2"; command -v "$1" >/dev/null 2>&1 || die "$1 not found after installing $2"; }

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

# Python with the `websockets` package, in a venv under the cache directory.
PYTHON=
ensure_python() {
    local venv=$CACHE_DIR/venv
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
        need python3 python3
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3-venv
        fi
        log "creating a Python venv with websockets in $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q -r "$DEPLOY_DIR/checks/requirements.txt"
    fi
    PYTHON=$venv/bin/python
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
