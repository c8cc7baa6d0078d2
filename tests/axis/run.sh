#!/bin/sh
# Run the receiver built by build.sh:  OBM_AXIS_SEEN=seen.jsonl ./run.sh OUT PORT
# Prints "READY <port>" on stdout; exits on stdin EOF or SIGTERM (java is exec'd).
set -eu
OUT=${1:?usage: run.sh OUT PORT}
PORT=${2:?usage: run.sh OUT PORT}
[ -f "$OUT/classpath" ] || { echo "run.sh: $OUT not built (run build.sh $OUT)" >&2; exit 1; }
exec java -cp "$(cat "$OUT/classpath")" obmguard.axis.Main "$PORT" "$OUT/server-config.wsdd"
