# syntax=docker/dockerfile:1
#
# The Driftless agent image: the release binary on distroless cc (glibc, libgcc_s, CA
# certificates, tzdata; no shell, no package manager), running as nobody (65534), with the
# renderers it runs from its PATH, kustomize and helm, in /usr/local/bin.
#
#   docker build -t driftless:0.1.0 .
#
# scripts/check-image builds the binary with the same command on the same Debian release
# (bookworm, glibc 2.36) and checks that what it links against is in the runtime image, and
# builds the renderers with this image's script and checks they are static and pin-versioned.

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
COPY tests/Cargo.toml ./tests/
COPY tests/src ./tests/src
COPY bench ./bench
# Exactly the command scripts/check-image runs: release profile (thin LTO, stripped), and the
# lockfile as committed.
RUN --mount=type=cache,id=driftless-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=driftless-target,target=/src/target \
    cargo build --release --locked -p driftless \
    && install -D -m 0755 target/release/driftless /out/driftless

# --- renderers ------------------------------------------------------------------------------
# kustomize and helm from the Go modules that pin them for the tests (only go.mod and go.sum are
# needed), by the script tests/cluster/build runs for .cluster/bin: the image renders with the
# very versions and flags the tests ran (static, CGO_ENABLED=0, so the runtime's libc is not
# involved). Go pinned to the modules' go directive; the image sets GOTOOLCHAIN=local, so none
# is fetched.
FROM golang:1.26.0-bookworm AS renderers
WORKDIR /src
COPY tests/cluster/build-renderers ./tests/cluster/
COPY tests/cluster/helm/go.mod tests/cluster/helm/go.sum ./tests/cluster/helm/
COPY tests/cluster/kustomize/go.mod tests/cluster/kustomize/go.sum ./tests/cluster/kustomize/
RUN --mount=type=cache,id=driftless-go-build,target=/root/.cache/go-build \
    --mount=type=cache,id=driftless-go-mod,target=/go/pkg/mod \
    bash tests/cluster/build-renderers /out

# --- runtime --------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/driftless /usr/local/bin/driftless
COPY --from=renderers --chmod=0755 /out/kustomize /out/helm /usr/local/bin/
# nobody:nogroup, as the Helm chart's securityContext expects (runAsUser/runAsGroup 65534).
USER 65534:65534
# The agent's HTTP port: /healthz, /readyz, /metrics, /status, /hooks/<source>.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/driftless"]
CMD ["run", "--config", "/etc/driftless/config.yaml", "--listen", "0.0.0.0:8080", "--log-format", "json"]
