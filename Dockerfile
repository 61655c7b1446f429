# syntax=docker/dockerfile:1
#
# The df-reconciler image: a static-ish Rust binary on distroless (glibc, CA certificates,
# nothing else: no shell, no package manager), running as an unprivileged user.
#
#   docker build -t df-reconciler .
#   docker run --rm -e DF_RECONCILER__DATABASE__URL='postgres://df_reconciler@db/app?sslmode=verify-full' \
#       df-reconciler once --dry-run
#
# The configuration is /etc/df-reconciler/config.toml (a default ships in the image: every
# setting at its default, /metrics and the probes on 0.0.0.0:9187); mount your own over it,
# or override single keys with DF_RECONCILER__SECTION__KEY. Docs: docs/OPERATIONS.md.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads (see .dockerignore): the manifests, the lock file, the
# sources, and the SQL the binary embeds.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY migrations ./migrations
# --locked: exactly the dependency versions of Cargo.lock, or fail.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin df-reconciler \
    && install -D -m 0755 target/release/df-reconciler /out/df-reconciler

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="df-reconciler" \
      org.opencontainers.image.description="Deletes expired terminal workflow instances and orphaned engine records of pg_durable" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/df-reconciler /usr/local/bin/df-reconciler
COPY deploy/docker/config.toml /etc/df-reconciler/config.toml
ENV DF_RECONCILER_CONFIG=/etc/df-reconciler/config.toml
# The numeric id of distroless' `nonroot`: Kubernetes can only verify runAsNonRoot
# against a numeric user.
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 9187
# On SIGTERM the daemon finishes the batch it is in (bounded by pass.statement_timeout),
# commits it and exits 0; give it that long before a SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/df-reconciler"]
CMD ["run"]
