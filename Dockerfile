# syntax=docker/dockerfile:1
#
# accessgov image: `docker build -t accessgov .` (BuildKit is required for the
# cache mounts; it is the default builder in current Docker).
#
# Two stages: a full Rust toolchain builds the release binary, and only the binary
# plus CA roots ship. The runtime stage has no shell tools beyond Debian's base,
# no compiler and no cargo registry.

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------
# Pinned to the toolchain the crate declares (rust-version = 1.95) and to the same
# Debian release as the runtime stage, so the binary links against the glibc it
# will run with.
FROM rust:1.95-slim-bookworm AS build

WORKDIR /app

# sqlx's query macros must not try to reach a database during `docker build`;
# they read the committed `.sqlx/` metadata instead (a no-op while the crate has
# no checked queries).
ENV SQLX_OFFLINE=true

# The whole context (filtered by .dockerignore) rather than a cargo-chef recipe
# stage: the cache mounts below keep compiled dependencies between builds, which
# is what cargo-chef's extra layers would buy, without a second tool in the image.
# `migrations/` must be in the context: sqlx::migrate! embeds it at compile time.
COPY . .

# The cache mounts survive between builds but are not part of any layer, so the
# binary has to be copied out of target/ inside the same RUN.
# --locked: build exactly the committed Cargo.lock, never re-resolve.
# sharing=locked: concurrent builds (compose builds several services from this
# file) wait for each other instead of corrupting a shared target/.
# aws-lc-sys and the rest of the tree build with the image's gcc alone; no cmake,
# clang, nasm or OpenSSL headers are needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked --bin accessgov \
    && install -D -m 0755 target/release/accessgov /out/accessgov

# ---------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: every outbound call (JSM, Okta, Graph, AWS, Google, GitHub...)
# is TLS verified against the system trust store (rustls platform verifier).
# Not version-pinned on purpose: the trust store should be the newest one the
# release ships, and a pinned version disappears from the mirrors when Debian
# updates it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so Kubernetes `runAsUser`/`fsGroup` and host volume ownership
# can be stated in numbers; no home directory and no login shell.
RUN groupadd --system --gid 10001 accessgov \
    && useradd --system --uid 10001 --gid accessgov \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin accessgov

COPY --from=build /out/accessgov /usr/local/bin/accessgov

# The config file is mounted here by compose and by the Kubernetes manifests;
# the variable is the documented fallback for `--config`.
ENV ACCESSGOV_CONFIG=/etc/accessgov/accessgov.toml

# Containers log one JSON object per line (stderr) for the log collector;
# override ACCESSGOV_LOG_FORMAT (or pass --log-format) with the human-readable
# format, see `accessgov --help`.
ENV ACCESSGOV_LOG_FORMAT=json

# Numeric, not the name: the kubelet can only prove `runAsNonRoot` for a numeric
# USER. 10001 is the `accessgov` user created above.
USER 10001:10001

# 8080: public listener of `ingress` (webhooks, /healthz, /readyz).
# 9090: ops listener (/metrics, /admin/*; the worker's /healthz and /readyz).
EXPOSE 8080 9090

ENTRYPOINT ["accessgov"]
CMD ["--help"]
