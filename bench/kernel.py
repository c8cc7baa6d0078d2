#!/usr/bin/env python3
"""Where a proxy's kernel time goes: nginx and obmguard under the same fixed-rate keep-alive
load, alternated, with their user and system CPU per request (from /proc) and what the kernel
did for them per request (`perf stat` on the proxy's process: system calls, wake-ups of other
tasks, inter-processor interrupts, softirqs).

    bench/kernel.sh                       # 10,000 req/s, 16 connections, 3 rounds of 5 s
    bench/kernel.sh --rate 5000 --rounds 5 --targets nginx,obmguard-strip,obmguard-audit

A fixed rate, not saturation, so that every proxy serves the same requests in the same time.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import common as C  # noqa: E402

EVENTS = {
    "raw_syscalls:sys_enter": "system calls",
    "sched:sched_wakeup": "wake-ups",
    "ipi:ipi_send_cpu": "IPIs",
    "irq:softirq_entry": "softirqs",
}


def cpu_ticks(pids):
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def measure(b, sc, target, rate, seconds, conns):
    """One fixed-rate run against `target`: a dict of per-request figures."""
    pids = b.services[target].pids()
    cmd = ["taskset", "-c", str(C.LOAD_CPU), b.oha_bin, "-z", f"{seconds}s", "-c", str(conns),
           "-q", str(rate), "-m", "POST", "-D", str(b.bodies[sc["body"]]),
           "-H", "Content-Type: text/xml; charset=UTF-8", "-H", 'SOAPAction: ""',
           "--no-tui", "--output-format", "json", "--worker-threads", "1"]
    cmd += b.tls_args(target) + [B.url(target)]
    stat_file = b.work / f"kernel-{target}.perf"
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-o",
                             str(stat_file), "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attached before the first request
    u0, s0 = cpu_ticks(pids)
    run = subprocess.run(cmd, capture_output=True, text=True)
    u1, s1 = cpu_ticks(pids)
    perf.send_signal(2)
    perf.wait(30)
    codes = json.loads(run.stdout).get("statusCodeDistribution", {})
    n = sum(v for k, v in codes.items() if k.startswith("2"))
    if n == 0 or sum(codes.values()) != n:
        raise SystemExit(f"{target}: answers {codes}; expected only 2xx")
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    out = {"requests": n, "user_us": (u1 - u0) * tick / n, "sys_us": (s1 - s0) * tick / n}
    for line in stat_file.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in EVENTS and parts[0].isdigit():
            out[EVENTS[parts[2]]] = int(parts[0]) / n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10000, help="requests per second")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="nginx,obmguard-strip")
    a = ap.parse_args()
    targets = a.targets.split(",")
    os.sched_setaffinity(0, {C.LOAD_CPU})
    C.raise_nofile()
    args = argparse.Namespace(duration=a.seconds, scenarios="keepalive", idle_connections=1,
                              busy_threshold=1.0, reps=1, retries=0, quick=False)
    b = B.Bench(args)
    sc = next(s for s in b.scenarios() if s["name"] == "keepalive")
    try:
        b.services["backend"] = C.start_backend(b.work)
        for t in targets:
            if t == "nginx":
                b.services[t] = C.start_nginx(b.work, b.pki)
            else:
                b.services[t] = C.start_obmguard(b.work, b.pki, b.binary, t.split("-", 1)[1])
            b.warm(sc, t)
        cols = ["user_us", "sys_us"] + list(EVENTS.values())
        print(f"{a.rate} req/s, {a.connections} connections, {a.seconds} s a run; per request:")
        print(f"{'target':16} " + " ".join(f"{c:>13}" for c in cols))
        for _ in range(a.rounds):
            for t in targets:
                r = measure(b, sc, t, a.rate, a.seconds, a.connections)
                print(f"{t:16} " + " ".join(f"{r.get(c, float('nan')):13.2f}" for c in cols))
    finally:
        b.stop()


if __name__ == "__main__":
    main()
