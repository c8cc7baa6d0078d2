#!/usr/bin/env python3
"""Profile one obmguard under one benchmark load with `perf record -e cpu-clock -g`, then print
its top functions (self time, and inclusive time of obmguard's own code).

    bench/profile.sh keepalive strip
    bench/profile.sh newconn-full audit --seconds 15

The perf data stays in bench/.cache/work/perf-<scenario>-<mode>.data for `perf report -i`.
"""

import argparse
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help="keepalive, body5k, body50k, newconn-full, newconn-resumed")
    ap.add_argument("mode", choices=["strip", "audit"])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    os.sched_setaffinity(0, {C.LOAD_CPU})
    C.raise_nofile()
    args = argparse.Namespace(duration=a.seconds, scenarios=a.scenario, idle_connections=1,
                              busy_threshold=1.0, reps=1, retries=0, quick=False)
    b = B.Bench(args)
    sc = next(s for s in b.scenarios() if s["name"] == a.scenario)
    target = f"obmguard-{a.mode}"
    data = b.work / f"perf-{a.scenario}-{a.mode}.data"
    try:
        b.services["backend"] = C.start_backend(b.work)
        b.services[target] = C.start_obmguard(b.work, b.pki, b.binary, a.mode)
        b.warm(sc, target)
        pid = b.services[target].proc.pid
        # A high frequency: per-task cpu-clock sampling under-samples bursts shorter than
        # its period (a new connection is a few hundred µs of work).
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "20000", "-g",
                                 "-p", str(pid), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        if sc["kind"] == "newconn":
            rec = b.run(sc, target, 1, b.calibrate_newconn(sc))
        else:
            rec = b.run(sc, target, 1, a.seconds)
        perf.send_signal(2)
        perf.wait(60)
        print(B.describe(rec))
    finally:
        b.stop()
    for title, sort in (("obmguard's CPU by thread and library", "comm,dso"),
                        ("obmguard's CPU by function (self time)", "symbol")):
        print(f"\n== {title}")
        out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none",
                              "--no-children", "--percent-limit", "0.3", "--sort", sort],
                             capture_output=True, text=True).stdout
        lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
        print("\n".join(lines[: a.top]))


if __name__ == "__main__":
    main()
