# syntax=docker/dockerfile:1
# obmguard: a two-stage build. The image holds the binary, CA roots, and nothing else;
# configuration, certificates and secrets are mounted at run time (see docker-compose.yml).

FROM rust:1-bookworm AS build
# zlib-ng (pulled in by pingora) is built with cmake.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -m 0755 target/release/obmguard /usr/local/bin/obmguard

FROM debian:bookworm-slim
# ca-certificates: the system roots for https:// receivers and the OAuth token endpoint.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 obmguard \
 && useradd --system --uid 10001 --gid obmguard --home-dir /var/lib/obmguard --shell /usr/sbin/nologin obmguard \
 && mkdir -p /etc/obmguard /var/lib/obmguard /run/obmguard \
 && chown obmguard:obmguard /var/lib/obmguard /run/obmguard \
 && chmod 0700 /run/obmguard
COPY --from=build /usr/local/bin/obmguard /usr/local/bin/obmguard
USER obmguard:obmguard
WORKDIR /var/lib/obmguard
# 8443: Salesforce's HTTPS POSTs (Salesforce calls 443 and 7000-10000). 9090: admin (metrics).
EXPOSE 8443 9090
# SIGTERM drains the messages in flight (timeouts.drain_ms): give `docker stop` more time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["obmguard"]
CMD ["serve", "--config", "/etc/obmguard/obmguard.toml"]
