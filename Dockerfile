# syntax=docker/dockerfile:1
# obmguard: a two-stage build. The image holds the binary, CA roots, and nothing else;
# configuration, certificates and secrets are mounted at run time (see docker-compose.yml).
#
#   docker build .                  the proxy (the last stage, `obmguard`): builds only the
#                                   obmguard binary (`-p obmguard --bin obmguard`)
#   docker build --target demo .    the demo and sample legacy receiver (`obmguard-demo`), which
#                                   docker-compose.yml runs as the receiver

FROM rust:1-bookworm AS toolchain
# zlib-ng (pulled in by pingora) is built with cmake.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .

FROM toolchain AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p obmguard --bin obmguard \
 && install -m 0755 target/release/obmguard /usr/local/bin/obmguard

FROM toolchain AS build-demo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p obmguard-demo --bin obmguard-demo \
 && install -m 0755 target/release/obmguard-demo /usr/local/bin/obmguard-demo

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system roots for https:// receivers and the OAuth token endpoint.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 obmguard \
 && useradd --system --uid 10001 --gid obmguard --home-dir /var/lib/obmguard --shell /usr/sbin/nologin obmguard \
 && mkdir -p /etc/obmguard /var/lib/obmguard /run/obmguard \
 && chown obmguard:obmguard /var/lib/obmguard /run/obmguard \
 && chmod 0700 /run/obmguard
WORKDIR /var/lib/obmguard

# The sample legacy receiver (and the demo): not a deployment image.
FROM runtime AS demo
COPY --from=build-demo /usr/local/bin/obmguard-demo /usr/local/bin/obmguard-demo
USER obmguard:obmguard
EXPOSE 8080
ENTRYPOINT ["obmguard-demo"]
CMD ["sample-receiver", "--listen", "0.0.0.0:8080"]

# The proxy. Last, so that a plain `docker build .` makes it.
FROM runtime AS obmguard
COPY --from=build /usr/local/bin/obmguard /usr/local/bin/obmguard
USER obmguard:obmguard
# 8443: Salesforce's HTTPS POSTs (Salesforce calls 443 and 7000-10000). 9090: admin (metrics).
EXPOSE 8443 9090
# SIGTERM drains the messages in flight (timeouts.drain_ms): give `docker stop` more time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["obmguard"]
CMD ["serve", "--config", "/etc/obmguard/obmguard.toml"]
