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

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
host_suite=$( (. /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}") || true)
SUITE=${DEBIAN_SUITE:-${host_suite:-bookworm}}
case $SUITE in
    bookworm) libssl=libssl3 ;;
    *) libssl=libssl3t64 ;;
esac
# What every image shares: TLS roots, curl/wget for the healthchecks, OpenSSL for the gateway
# (the redis crate uses native-tls).
INCLUDE=ca-certificates,curl,wget,$libssl
BASE_REPO=roomcast-offline/debian
# Bump when the recipe below changes, so caches of the old recipe are not reused.
RECIPE=3
KEY=$(printf '%s %s %s %s' "$RECIPE" "$SUITE" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-12)
TARBALL=$CACHE_DIR/debian-$SUITE-$KEY.tar
BASE_TAG=$BASE_REPO:$SUITE-$KEY

ensure_docker
trap stop_docker_if_started EXIT

# 1. The base rootfs tarball.
if [ -s "$TARBALL" ]; then
    log "base tarball cached: $TARBALL"
else
    need debootstrap debootstrap
    mkdir -p "$CACHE_DIR"
    rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "as_root rm -rf '$rootfs' '$TARBALL.partial'; stop_docker_if_started" EXIT
    log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
    as_root timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
        >"$CACHE_DIR/debootstrap.log" 2>&1 || { tail -30 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }
    # apt inside the images: the same mirror, updates and security, no recommends, no caches.
    as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security} $SUITE-security main
EOF
    as_root tee "$rootfs/etc/apt/apt.conf.d/90roomcast-offline" >/dev/null <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    # Like Debian's images for Docker: packages installed in a build never start services.
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    as_root sh -c "rm -rf '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/log/*.log '$rootfs'/dev/*"
    as_root tar --numeric-owner -C "$rootfs" -cf "$TARBALL.partial" .
    as_root chown "$(id -u):$(id -g)" "$TARBALL.partial"
    find "$CACHE_DIR" -maxdepth 1 -name 'debian-*.tar' ! -name "${TARBALL##*/}" -delete   # older recipes
    mv "$TARBALL.partial" "$TARBALL"
    as_root rm -rf "$rootfs"
    trap stop_docker_if_started EXIT
    log "base tarball written: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

# 2. The base image.
if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "base image present: $BASE_TAG"
else
    log "docker import $TARBALL as $BASE_TAG"
    docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$BASE_TAG" >/dev/null
fi
docker tag "$BASE_TAG" "$BASE_REPO:latest"
# Base images of older recipes.
docker images --format '{{.Repository}}:{{.Tag}}' "$BASE_REPO" | grep -v -e ":latest$" -e "^$BASE_TAG$" |
    xargs -r docker rmi >/dev/null 2>&1 || true

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
