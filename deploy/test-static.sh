#!/usr/bin/env bash
# Checks of the deployment files that need no cluster:
# - promtool check config deploy/prometheus.yml;
# - the Kubernetes manifests against their schemas (kubernetes-validate from PyPI, --strict,
#   offline: the schemas ship in the package);
# - docker-compose.yml and docker-compose.yml + docker-compose.offline.yml parse, and the offline
#   file changes nothing but `image` and `build`;
# - the Grafana dashboard uses only metric names a live gateway exports on /metrics, shows what
#   the issue asks for, uses the provisioned datasource, and its queries pass promtool;
# - the shell scripts (deploy/, scripts/test*, the k6 smoke) parse, and pass shellcheck when it
#   is installed.
#
# Usage: deploy/test-static.sh [--binary PATH]
#   default gateway binary: the debug build (`cargo build --locked --bin roomcast`).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

binary=
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=$(realpath "$2"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/roomcast-static.XXXXXX")
node_pid=
# The script's own stdout and stderr, for the exit handler.
exec 7>&1 8>&2
finish() {
    local status=$?
    trap - EXIT INT TERM
    exec 1>&7 2>&8   # a signal may land while output is redirected (wait_for)
    if [ -n "$node_pid" ]; then
        kill -TERM "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    [ "$status" = 0 ] || { [ -f "$work/node.log" ] && tail -n 20 "$work/node.log" >&2; }
    rm -rf "$work"
    stage_report
    if [ "$status" = 0 ]; then log "static checks passed"; else log "static checks FAILED"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "prerequisites (apt-get, venv when missing)"
need promtool prometheus
need docker-compose docker-compose
need curl curl
ensure_python
V=$CACHE_DIR/venv/bin

stage "promtool check config deploy/prometheus.yml"
promtool check config "$DEPLOY_DIR/prometheus.yml"

stage "kubernetes-validate deploy/kubernetes (strict)"
manifests=()
for f in "$DEPLOY_DIR"/kubernetes/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for version in 1.30.0 1.37.0; do
    "$V/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
    log "kubernetes $version: ${#manifests[@]} files valid"
done
"$V/python" - "$DEPLOY_DIR/kubernetes" <<'EOF'
# kustomization.yaml lists every manifest (kubernetes-validate has no schema for it).
import sys, yaml, pathlib
d = pathlib.Path(sys.argv[1])
listed = set(yaml.safe_load((d / "kustomization.yaml").read_text())["resources"])
present = {p.name for p in d.glob("*.yaml") if p.name != "kustomization.yaml"}
assert listed == present, f"kustomization.yaml resources {sorted(listed)} != files {sorted(present)}"
EOF

stage "docker-compose config (base, base + offline)"
export ROOMCAST_API_KEY=static-check
(cd "$REPO_DIR" && docker-compose -f docker-compose.yml config >"$work/base.yml")
(cd "$REPO_DIR" && docker-compose -f docker-compose.yml -f docker-compose.offline.yml config >"$work/offline.yml")
"$V/python" - "$work/base.yml" "$work/offline.yml" <<'EOF'
# The offline file may change only image and build of services.
import sys, yaml
base, offline = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
def strip(doc):
    for svc in doc["services"].values():
        svc.pop("image", None)
        svc.pop("build", None)
        # compose's own normalization differs between one file and two: `net: null` vs `{}`,
        # the order of merged volume lists.
        if isinstance(svc.get("networks"), dict):
            svc["networks"] = {k: v or {} for k, v in svc["networks"].items()}
        if isinstance(svc.get("volumes"), list):
            svc["volumes"] = sorted(svc["volumes"], key=str)
    return doc
assert strip(base) == strip(offline), "docker-compose.offline.yml changes more than image/build"
print(f"offline overrides only image/build of {len(offline['services'])} services")
EOF
unset ROOMCAST_API_KEY

stage "dashboard vs a live gateway's /metrics"
if [ -z "$binary" ]; then
    (cd "$REPO_DIR" && cargo build --locked --bin roomcast)
    binary=$REPO_DIR/target/debug/roomcast
fi
admin_port=$(free_port_block 1) || die "no free port"
"$binary" --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$admin_port" >"$work/node.log" 2>&1 &
node_pid=$!
wait_for 30 "the node's /healthz" curl -fsS "http://127.0.0.1:$admin_port/healthz" || die "the node did not start"
"$V/python" "$DEPLOY_DIR/checks/check_dashboard.py" --metrics-url "http://127.0.0.1:$admin_port/metrics" \
    --rules-out "$work/dashboard-rules.yml"
promtool check rules "$work/dashboard-rules.yml"

stage "shell scripts parse"
scripts=("$DEPLOY_DIR"/*.sh "$DEPLOY_DIR"/offline/*.sh
    "$REPO_DIR"/scripts/test "$REPO_DIR"/scripts/test-browser "$REPO_DIR"/loadtest/k6/smoke.sh)
for s in "${scripts[@]}"; do bash -n "$s"; done
if command -v shellcheck >/dev/null; then
    shellcheck -x "${scripts[@]}"
else
    log "shellcheck not installed; bash -n only"
fi
