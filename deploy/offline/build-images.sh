#!/usr/bin/env bash
# Builds, with no image registry, every image that docker-compose.offline.yml names:
#
#   1. a Debian base rootfs made with debootstrap (cached as a tarball under deploy/.cache/,
#      git-ignored, so reruns skip it), imported with `docker import` as roomcast-offline/debian;
#   2. from that base, Redis, nginx and Prometheus images built from Debian's packages, and the
#      gateway image from the roomcast binary built on this host (cargo build --release --locked);
#
# all through `docker-compose -f docker-compose.yml -f docker-compose.offline.yml build`.
#
# Usage: deploy/offline/build-images.sh [--binary PATH] [--no-cargo]
#   --binary PATH   put this roomcast binary in the gateway image (default target/release/roomcast)
#   --no-cargo      do not run cargo build; use the binary as it is
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (default: this
#   host's Debian release, else bookworm), ROOMCAST_CACHE_DIR (default deploy/.cache).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"

binary=$REPO_DIR/target/release/roomcast
cargo_build=1
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=$(realpath "$2"); cargo_build=; shift 2 ;;
        --no-cargo) cargo_build=; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

ensure_docker
trap 'discard_base_rootfs; stop_docker_if_started' EXIT
ensure_base_image

# 3. The gateway binary, staged as the gateway image's build context.
if [ -n "$cargo_build" ]; then
    log "cargo build --release --locked --bin roomcast"
    (cd "$REPO_DIR" && cargo build --release --locked --bin roomcast)
fi
[ -x "$binary" ] || die "no roomcast binary at $binary (build it, or pass --binary PATH)"
stage_dir=$DEPLOY_DIR/offline/gateway
install -m 0755 "$binary" "$stage_dir/roomcast"

# 4. Every image of the offline compose file.
log "docker-compose build (offline images)"
cd "$REPO_DIR"
# (The API key only satisfies the compose file's interpolation; builds do not use it.)
# gateway-2 and gateway-3 use gateway-1's image.
ROOMCAST_API_KEY=${ROOMCAST_API_KEY:-unused-at-build} timeout 1200 \
    docker-compose -f docker-compose.yml -f docker-compose.offline.yml \
    build --force-rm --build-arg "BASE=$BASE_TAG" redis lb prometheus gateway-1
# Images these builds replaced (a new gateway binary leaves the old image untagged).
docker image prune -f --filter label=org.roomcast.offline=1 >/dev/null
log "images built"
