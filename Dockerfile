# syntax=docker/dockerfile:1
#
# The Driftless agent image: the release binary on distroless cc (glibc, libgcc_s, CA
# certificates, tzdata; no shell, no package manager), running as nobody (65534).
#
#   docker build -t driftless:0.1.0 .
#
# scripts/check-image builds the binary with the same command on the same Debian release
# (bookworm, glibc 2.36) and checks that what it links against is in the runtime image.

# --- build ----------------------------------------------------------------------------------
# Rust pinned by tag, on Debian 12 (bookworm): the binary then needs no newer glibc than the
# runtime image's (2.36). The image carries gcc, make, pkg-config and libssl-dev, which
# libgit2-sys, libssh2-sys and openssl-sys build with.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The workspace: every member's manifest must be present for cargo to load it (only the agent
# is built). .dockerignore keeps target/, .cluster/, .git/ and the chart out of the context.
COPY Cargo.toml Cargo.lock ./
COPY agent ./agent
COPY tests ./tests
COPY bench ./bench
# Exactly the command scripts/check-image runs: release profile (thin LTO, stripped), and the
# lockfile as committed.
RUN --mount=type=cache,id=driftless-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=driftless-target,target=/src/target \
    cargo build --release --locked -p driftless \
    && install -D -m 0755 target/release/driftless /out/driftless

# --- runtime --------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/driftless /usr/local/bin/driftless
# nobody:nogroup, as the Helm chart's securityContext expects (runAsUser/runAsGroup 65534).
USER 65534:65534
# The agent's HTTP port: /healthz, /readyz, /metrics, /status, /hooks/<source>.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/driftless"]
CMD ["run", "--config", "/etc/driftless/config.yaml", "--listen", "0.0.0.0:8080", "--log-format", "json"]
