#!/usr/bin/env bash
# Profile obmguard under one benchmark load (perf record -e cpu-clock -g); see README.md.
#   bench/profile.sh keepalive strip [--seconds 10]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v perf >/dev/null || { echo "perf missing: apt-get install linux-perf" >&2; exit 1; }
exec python3 "$here/profile.py" "$@"
