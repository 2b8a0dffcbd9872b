# roomcast gateway image.
#
#   docker build -t roomcast .
#   docker run -p 8080:8080 -p 127.0.0.1:9090:9090 -e ROOMCAST_ADMIN__API_KEY=$(openssl rand -hex 24) roomcast
#
# Configuration only through ROOMCAST_SECTION__KEY environment variables (docs/protocol.md,
# "Running a node") and, optionally, a TOML file mounted at /etc/roomcast/roomcast.toml (then add
# `--config /etc/roomcast/roomcast.toml` to the command). The admin API listens on 0.0.0.0:9090
# so Prometheus and the healthcheck reach it; the gateway refuses to start there without
# ROOMCAST_ADMIN__API_KEY.
#
# The base images are arguments so that they can be swapped for local ones (mirrors, offline
# builds); the builder and the runtime must be the same Debian release (glibc, libssl3).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- toolchain: Rust, OpenSSL headers (native-tls of the redis crate), cargo-chef
FROM ${RUST_IMAGE} AS chef
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# ---- the dependency recipe: every workspace manifest and Cargo.lock, nothing else
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin roomcast

# ---- build: dependencies first (a layer reused until Cargo.toml/Cargo.lock change), then roomcast
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin roomcast
COPY . .
RUN cargo build --release --locked --bin roomcast \
    && install -m 0755 target/release/roomcast /usr/local/bin/roomcast

# ---- runtime: slim Debian, non-root
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 roomcast \
    && useradd --uid 10001 --gid roomcast --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin roomcast \
    && mkdir -p /etc/roomcast
COPY --from=builder /usr/local/bin/roomcast /usr/local/bin/roomcast
ENV ROOMCAST_SERVER__LISTEN=0.0.0.0:8080 \
    ROOMCAST_ADMIN__LISTEN=0.0.0.0:9090 \
    RUST_LOG=info \
    NO_COLOR=1
USER 10001:10001
EXPOSE 8080 9090
# Liveness only (200 while the process runs): a broker outage must not get the container killed
# by an orchestrator; readiness is /readyz (docker-compose.yml and the Kubernetes probes use it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:9090/healthz || exit 1
# SIGTERM: /readyz turns 503, clients are closed with 1001, exit 0 within server.shutdown_grace_ms.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/roomcast"]
