#!/usr/bin/env bash
# Builds the real top-level Dockerfile with no registry, to check it: the two base images it
# names are replaced (through its RUST_IMAGE and RUNTIME_IMAGE build arguments) by stand-ins
#   roomcast-offline/rust       the debootstrap base + gcc + this host's Rust toolchain
#                               (what rust:*-slim-bookworm carries)
#   roomcast-offline/debian     the debootstrap base (what debian:bookworm-slim is)
# Everything else (apt-get in the stages, cargo-chef from crates.io, the dependency layer,
# cargo build --release --locked, the non-root runtime) runs as written. Then it starts the
# image with the Redis broker off and checks the HEALTHCHECK command, the user and the ports.
# Needs network access to the Debian mirror and crates.io from containers. Not part of CI's
# budget (a cold release build in Docker takes minutes); run it when the Dockerfile changes.
#
# Usage: deploy/offline/build-dockerfile.sh [--tag TAG]   (default roomcast:dockerfile-check)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"

tag=roomcast:dockerfile-check
while [ $# -gt 0 ]; do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

ensure_docker
container=
finish() {
    local status=$?
    [ -z "$container" ] || docker rm -f "$container" >/dev/null 2>&1 || true
    stop_docker_if_started
    stage_report
    exit "$status"
}
trap finish EXIT

stage "base image (deploy/offline/build-images.sh, cached)"
docker image inspect roomcast-offline/debian:latest >/dev/null 2>&1 ||
    die "no roomcast-offline/debian:latest; run deploy/offline/build-images.sh first"

stage "Rust stand-in image from this host's toolchain"
command -v rustc >/dev/null || die "rustc not found"
sysroot=$(rustc --print sysroot)
version=$(rustc --version | cut -d' ' -f2)
if docker image inspect "roomcast-offline/rust:$version" >/dev/null 2>&1; then
    log "roomcast-offline/rust:$version present"
else
    ctx=$CACHE_DIR/rust-standin
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp -a "$sysroot" "$ctx/toolchain"
    rm -rf "$ctx/toolchain/share/doc" "$ctx/toolchain/share/man"
    # This host's CA bundle, so that cargo in the stand-in trusts what this host trusts (a
    # TLS-inspecting proxy in front of crates.io, for one).
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM roomcast-offline/debian:latest
LABEL org.roomcast.offline=1
RUN apt-get update && apt-get install -y gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
COPY host-ca.crt /usr/local/share/host-ca.crt
ENV CARGO_HOME=/usr/local/cargo CARGO_HTTP_CAINFO=/usr/local/share/host-ca.crt \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    docker build -q --force-rm -t "roomcast-offline/rust:$version" "$ctx" >/dev/null
    rm -rf "$ctx"
fi
log "roomcast-offline/rust:$version (rustc $version)"

stage "docker build . (the real Dockerfile)"
(cd "$REPO_DIR" && docker build --force-rm -t "$tag" \
    --build-arg "RUST_IMAGE=roomcast-offline/rust:$version" \
    --build-arg RUNTIME_IMAGE=roomcast-offline/debian:latest .)

stage "run the image: user, healthcheck, refuses to start without an API key"
[ "$(docker image inspect -f '{{.Config.User}}' "$tag")" = "10001:10001" ] || die "image does not run as 10001"
docker image inspect -f '{{json .Config.ExposedPorts}}' "$tag" | grep -q '8080/tcp' || die "8080 not exposed"
docker image inspect -f '{{json .Config.ExposedPorts}}' "$tag" | grep -q '9090/tcp' || die "9090 not exposed"
status=0
docker run --rm "$tag" >/dev/null 2>&1 || status=$?
[ "$status" = 2 ] || die "without ROOMCAST_ADMIN__API_KEY the node should exit 2, got $status"
container=$(docker run -d -e ROOMCAST_ADMIN__API_KEY=check "$tag")
wait_for 60 "the image's HEALTHCHECK to pass" \
    sh -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $container)\" = healthy ]" ||
    { docker logs "$container" >&2; die "container not healthy"; }
docker exec "$container" id -u | grep -qx 10001 || die "not running as uid 10001"
docker stop -t 15 "$container" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$container")" = 0 ] || die "SIGTERM did not end with exit 0"
log "$tag: builds, runs as 10001, healthy, exits 0 on SIGTERM ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
