#!/usr/bin/env bash
# Soak obmguard (not part of the test command).
#
#   bench/soak.sh                       the chaos soak (chaos.py): 30 minutes at 50 msg/s to
#                                       direct and queued routes while the receiver and the
#                                       token endpoint go down, reloads, SIGKILLs and restarts
#   bench/soak.sh --minutes 3 --scale 0.1     a short chaos run, every event period scaled
#   bench/soak.sh --plain               the plain soak (soak.py): 15 minutes at 50 req/s, good
#   bench/soak.sh --plain --minutes 60 --rate 100     and hostile traffic mixed
#
# Environment: CARGO_TARGET_DIR, OBMGUARD_BIN (skip the build). The plain soak needs nginx (the
# receiver); the chaos soak runs its own receiver and token endpoint and needs matplotlib for
# its plot. Both need curl/openssl/python3; bench/run.sh installs them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
plain=0
if [ "${1:-}" = "--plain" ]; then plain=1; shift; fi
py=python3
if [ "$plain" = 1 ]; then
    command -v nginx >/dev/null || { echo "nginx missing: run bench/run.sh once, or apt-get install nginx-light" >&2; exit 1; }
else
    # The first python3 with matplotlib (Debian's lives in /usr/bin's python, not in a pyenv).
    py=""
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then py="$p"; break; fi
    done
    [ -n "$py" ] || { echo "matplotlib missing (the chaos soak plots with it): apt-get install -y python3-matplotlib (or pip install matplotlib)" >&2; exit 1; }
fi
if [ -z "${OBMGUARD_BIN:-}" ]; then
    echo "== building obmguard (release)"
    (cd "$repo" && cargo build --release --locked -p obmguard --bin obmguard)
fi
if [ "$plain" = 1 ]; then
    exec python3 "$here/soak.py" "$@"
fi
exec "$py" "$here/chaos.py" "$@"
