#!/usr/bin/env bash
# Soak obmguard (not part of the test command): a fixed rate for a number of minutes, good and
# hostile traffic mixed; reports errors, false Acks (must be 0), RSS and open fds over time.
#
#   bench/soak.sh                       15 minutes at 50 req/s
#   bench/soak.sh --minutes 60 --rate 100
#
# Environment: CARGO_TARGET_DIR, OBMGUARD_BIN (skip the build). Needs nginx (the receiver) and
# curl/openssl/python3; bench/run.sh installs them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
command -v nginx >/dev/null || { echo "nginx missing: run bench/run.sh once, or apt-get install nginx-light" >&2; exit 1; }
if [ -z "${OBMGUARD_BIN:-}" ]; then
    echo "== building obmguard (release)"
    (cd "$repo" && cargo build --release --locked -p obmguard --bin obmguard)
fi
exec python3 "$here/soak.py" "$@"
