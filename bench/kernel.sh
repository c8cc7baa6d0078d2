#!/usr/bin/env bash
# Where a proxy's kernel time goes, nginx against obmguard at a fixed rate; see README.md.
#   bench/kernel.sh [--rate 10000] [--rounds 3] [--targets nginx,obmguard-strip]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v perf >/dev/null || { echo "perf missing: apt-get install linux-perf" >&2; exit 1; }
exec python3 "$here/kernel.py" "$@"
