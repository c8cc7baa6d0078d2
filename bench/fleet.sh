#!/usr/bin/env bash
# The fleet benchmark (not part of the test command): two obmguard instances in queued mode on
# one PostgreSQL, against one instance on the embedded store. See bench/fleet.py.
#
#   bench/fleet.sh                 3 repetitions of 10 s
#   bench/fleet.sh --reps 1 --seconds 5
#
# Environment: CARGO_TARGET_DIR, OBMGUARD_BIN (skip the build). Needs PostgreSQL's server
# binaries (apt-get install postgresql), nginx (the receiver) and oha: bench/run.sh installs
# nginx and oha.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { echo "no PostgreSQL server binaries: apt-get install -y postgresql" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx missing: run bench/run.sh once, or apt-get install nginx-light" >&2; exit 1; }
if [ -z "${OBMGUARD_BIN:-}" ]; then
    echo "== building obmguard (release)"
    (cd "$repo" && cargo build --release --locked -p obmguard --bin obmguard)
fi
exec python3 "$here/fleet.py" "$@"
