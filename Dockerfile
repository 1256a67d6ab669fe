# RaftKV container image: a slim runtime stage and a Rust builder stage.
#
#   docker build -t raftkv .
#   docker run --rm -p 127.0.0.1:8001:8001 -e RAFTKV_NODE_ID=solo raftkv
#
# docker-compose.yml builds this file for its three nodes. The image is
# configured entirely through RAFTKV_* environment variables (see README and docs/operations.md).
# Works with the classic builder and BuildKit alike (no cache mounts, no
# `# syntax` line, so nothing is fetched but the two base images).
#
# Stages, in this order on purpose:
#   runtime-base  everything the running image needs except the binary
#   builder       cargo build --release in the official Rust image
#   runtime       runtime-base + the binary from builder   (the default target)
# An image from a raftkv binary built elsewhere, e.g. on the host, shares the
# runtime-base stage instead: `--target runtime-base` builds only that stage
# (the classic builder builds every stage up to the target, so it comes
# first), and docker/Dockerfile.prebuilt adds the binary. tests/docker/run.sh
# does that; see docs/operations.md ("The image") and docs/docker-tests.md.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
# A system user owns /data; a fresh named volume mounted there inherits it.
RUN groupadd --system --gid 10001 raftkv \
 && useradd --system --uid 10001 --gid raftkv --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin raftkv \
 && mkdir -p /data \
 && chown raftkv:raftkv /data
USER raftkv
WORKDIR /data
ENV RAFTKV_HOST=0.0.0.0 \
    RUST_LOG=info
VOLUME ["/data"]
EXPOSE 8001 8002 8003
# `raftkv health` asks GET /health on 127.0.0.1:$RAFTKV_PORT (no curl needed).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["raftkv", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["raftkv"]
CMD ["start"]

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# No debug info in the image's binary (Cargo.toml keeps it for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_TERM_COLOR=never

# 1. Dependencies only, cached as long as Cargo.toml and Cargo.lock do not
#    change: build the real manifest against placeholder sources (one stub
#    per declared bench, since cargo checks that they exist).
COPY Cargo.toml Cargo.lock ./
# sled, patched (see vendor/README.md): a path dependency, so it comes first.
COPY vendor ./vendor
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(awk '/^\[\[bench\]\]/{b=1;next} /^\[/{b=0} b && /^name *=/{gsub(/^name *= *"|".*$/,""); print}' Cargo.toml); do \
        echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && cargo build --release --locked --bin raftkv \
 && rm -rf src benches target/release/.fingerprint/raftkv-* target/release/deps/raftkv-* \
           target/release/deps/libraftkv-*

# 2. The real sources.
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin raftkv \
 && cp target/release/raftkv /usr/local/bin/raftkv

FROM runtime-base AS runtime
# Owned by root, so the raftkv user cannot change it.
COPY --from=builder /usr/local/bin/raftkv /usr/local/bin/raftkv
