#!/usr/bin/env bash
# The obmguard benchmark, in one go: install the tools (cached), build obmguard in release,
# then run bench.py (PKI, configurations, all scenarios, results under bench/results/).
#
#   bench/run.sh            full matrix: 3 repetitions, 8 s runs (about 20 minutes)
#   bench/run.sh --quick    one repetition, 3 s runs (a smoke test, about 5 minutes)
#   bench/run.sh --scenarios keepalive,rate2000 --reps 5
#
# Environment: CARGO_TARGET_DIR (where to build), OBMGUARD_BIN (use this binary, skip the
# build), SKIP_INSTALL=1 (trust that nginx, haproxy, curl and oha are there).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="$here/.cache"
mkdir -p "$cache"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "installing $* needs root (or sudo)" >&2; exit 1; }
        echo sudo
    fi
}

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v ab >/dev/null || missing+=(apache2-utils)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]} (Debian packages)"
        s="$(need_root "${missing[*]}")"
        $s apt-get update -qq
        # Debian starts the packaged services; the benchmark runs its own instances.
        DEBIAN_FRONTEND=noninteractive $s apt-get install -y -qq "${missing[@]}" >/dev/null
        for svc in nginx haproxy; do
            $s systemctl disable --now "$svc" >/dev/null 2>&1 || true
        done
    fi
    # oha (HTTP load generator with client certificates) from crates.io, cached.
    oha_version=1.16.0
    if ! "$cache/oha/bin/oha" --version 2>/dev/null | grep -q "$oha_version"; then
        echo "== installing oha $oha_version into $cache/oha (a few minutes, once)"
        cargo install oha --version "$oha_version" --locked --root "$cache/oha"
    fi
fi

if [ -z "${OBMGUARD_BIN:-}" ]; then
    echo "== building obmguard (release)"
    (cd "$repo" && cargo build --release --locked -p obmguard --bin obmguard)
fi

if [ "$(nproc)" -lt 2 ]; then
    echo "the benchmark needs 2 cores: one for the proxy, one for the load generator" >&2
    exit 1
fi

exec python3 "$here/bench.py" "$@"
