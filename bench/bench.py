#!/usr/bin/env python3
"""obmguard against nginx and haproxy doing the same admission, on one machine.

Run through run.sh, which installs the tools and builds obmguard. This script makes the PKI
and configurations, starts the backend and the four proxies (nginx, haproxy, obmguard in
`audit` and in `strip` mode), runs every scenario with the targets interleaved, measures each
proxy's own CPU time from /proc, and writes bench/results/results.{json,md}.

See README.md for what each scenario measures and what it does not.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

PROXIES = ["nginx", "haproxy", "obmguard-audit", "obmguard-strip"]
TLS_TARGETS = set(PROXIES) | {"obmguard-queued"}

# Where obmguard should land (issue 7).
GOALS = {
    "keepalive_cpu_strip_vs_nginx": "obmguard strip CPU/request <= nginx's (keep-alive)",
    "newconn_cpu_vs_nginx": "obmguard CPU/new connection <= half of nginx's (full and resumed)",
    "latency_p50_added": "obmguard p50 - direct p50 <= 0.2 ms at 2000 req/s",
    "idle_rss": "obmguard RSS with 1,000 idle mTLS connections <= 64 MB",
    "queued_commits": "obm queued: at least 2,000 messages/s durably committed",
    "queued_cpu": "obm queued: CPU per message (commit + delivery) at most 1.5x direct's",
}


def url(target, path="/obm"):
    if target == "direct":
        return f"http://127.0.0.1:{C.PORTS['backend']}/ack"
    if target == "direct-xcore":
        return f"http://127.0.0.1:{C.PORTS['backend-xcore']}/ack"
    return f"https://127.0.0.1:{C.PORTS[target]}{path}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = C.CACHE / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.pki = C.make_pki(self.work / "pki")
        self.bodies = C.write_bodies(self.work)
        self.oha_bin = (shutil.which("oha", path=str(C.CACHE / "oha" / "bin"))
                        or shutil.which("oha"))
        if not self.oha_bin:
            sys.exit("oha not found: run bench/run.sh, which installs it into bench/.cache")
        self.binary = C.obmguard_binary()
        if not self.binary.exists():
            sys.exit(f"{self.binary} not found: run bench/run.sh, which builds it")
        self.services = {}
        self.runs = []
        # The source the binary was built from, when run.sh built it just now.
        self.git_at_start = first_line(["git", "-C", str(C.REPO), "describe", "--always",
                                        "--dirty"])

    # ------------------------------------------------------------ services

    def start(self):
        s = self.services
        s["backend"] = C.start_backend(self.work)
        s["backend-xcore"] = C.start_backend(self.work, C.PROXY_CPU, "backend-xcore")
        s["nginx"] = C.start_nginx(self.work, self.pki)
        s["haproxy"] = C.start_haproxy(self.work, self.pki)
        for mode in ("audit", "strip"):
            s[f"obmguard-{mode}"] = C.start_obmguard(self.work, self.pki, self.binary, mode)
        if any("obmguard-queued" in sc["targets"] for sc in self.scenarios()):
            s["obmguard-queued"] = C.start_obmguard(self.work, self.pki, self.binary, "queued")

    def stop(self):
        for s in self.services.values():
            s.stop()

    def check_alive(self):
        for name, s in self.services.items():
            if not s.alive():
                raise RuntimeError(f"{name} died; see {s.log}")

    # ------------------------------------------------------------ accounting

    def snapshot(self):
        return {
            "t": time.monotonic(),
            "stat": C.stat_cpu(),
            "svc": {n: s.cpu_ticks() for n, s in self.services.items()},
            "self": C.cpu_ticks(os.getpid()),
        }

    def account(self, before, after, gen_cpu, target):
        tick = 1.0 / C.CLK_TCK
        svc = {n: (after["svc"][n] - before["svc"][n]) * tick for n in before["svc"]}
        own = (after["self"] - before["self"]) * tick
        accounted = sum(svc.values()) + gen_cpu + own
        total = (after["stat"]["cpu"] - before["stat"]["cpu"]) * tick
        core = (after["stat"][f"cpu{C.PROXY_CPU}"] - before["stat"][f"cpu{C.PROXY_CPU}"]) * tick
        # The kernel's network work (softirq) is charged to whichever task it interrupts, and
        # to no process at all when it interrupts an idle core or runs in ksoftirqd: it is
        # this benchmark's own traffic, so it does not count as "something else".
        softirq = (after["stat"]["softirq"] - before["stat"]["softirq"]) * tick
        unaccounted = max(0.0, total - accounted - softirq)
        frac = unaccounted / total if total > 0 else 0.0
        wall = after["t"] - before["t"]
        return {
            "wall_s": wall,
            "proxy_cpu_s": svc.get(target, 0.0),
            "generator_cpu_s": gen_cpu,
            "backend_cpu_s": svc["backend"],
            "accounted_cpu_s": accounted,
            "machine_cpu_s": total,
            "softirq_cpu_s": softirq,
            "proxy_core_cpu_s": core,
            "unaccounted_frac": round(frac, 4),
            "unaccounted_cores": round(unaccounted / wall, 3) if wall > 0 else 0.0,
            "busy": is_busy(unaccounted, wall, self.args.busy_threshold),
        }

    def run_generator(self, cmd, stdin=None):
        """Run the load generator on the load core; return stdout, stderr, exit code and its
        CPU time (from wait4, so it is the generator's own)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.Popen(["taskset", "-c", str(C.LOAD_CPU)] + cmd, stdout=out,
                                 stderr=err, stdin=stdin)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            return (out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                    p.returncode, ru.ru_utime + ru.ru_stime)

    # ------------------------------------------------------------ generators

    def tls_args(self, target):
        if target not in TLS_TARGETS:
            return []
        p = self.pki
        return ["--cacert", str(p / "ca.crt"), "--cert", str(p / "client.crt"),
                "--key", str(p / "client.key")]

    def oha(self, target, sc, duration):
        cmd = [self.oha_bin, "-z", f"{duration}s", "-w", "-c", str(sc["c"]), "-m", "POST",
               "-D", str(self.bodies[sc["body"]]),
               "-H", "Content-Type: text/xml; charset=UTF-8", "-H", 'SOAPAction: ""',
               "--no-tui", "--output-format", "json", "--worker-threads", "1"]
        if sc.get("qps"):
            cmd += ["-q", str(sc["qps"]), "--latency-correction"]
        cmd += self.tls_args(target) + [url(target)]
        out, err, rc, cpu = self.run_generator(cmd)
        res = {"generator_exit": rc}
        try:
            j = json.loads(out)
        except ValueError:
            res.update(ok=0, failed=1, failures={"oha output unreadable": err[-300:]})
            return res, cpu
        codes = {k: v for k, v in j.get("statusCodeDistribution", {}).items()}
        errors = j.get("errorDistribution", {})
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        failures = {f"HTTP {k}": v for k, v in codes.items() if not k.startswith("2")}
        failures.update(errors)
        pct = j.get("latencyPercentiles", {})
        res.update(ok=ok, failed=sum(failures.values()), failures=failures,
                   generator_wall_s=j["summary"]["total"],
                   p50_ms=_ms(pct.get("p50")), p99_ms=_ms(pct.get("p99")),
                   p999_ms=_ms(pct.get("p99.9")))
        return res, cpu

    def curl_newconn(self, target, sc, n):
        """n POSTs, each on a new connection (Connection: close), 16 at a time. curl resumes
        TLS sessions by default; --no-sessionid makes every handshake a full one."""
        cfg = self.work / f"curl-{target}.cfg"
        cfg.write_text(f'url = "{url(target)}"\noutput = "/dev/null"\n' * n)
        cmd = ["curl", "-sS", "-Z", "--parallel-max", str(sc["c"]), "--tlsv1.3",
               "--data-binary", "@" + str(self.bodies[sc["body"]]),
               "-H", "Content-Type: text/xml; charset=UTF-8", "-H", 'SOAPAction: ""',
               "-H", "Connection: close", "-w", "%{http_code} %{num_connects}\\n",
               "-K", str(cfg)] + self.tls_args(target)
        if not sc["resume"]:
            cmd.append("--no-sessionid")
        t0 = time.monotonic()
        out, err, rc, cpu = self.run_generator(cmd)
        wall = time.monotonic() - t0
        codes = Counter()
        connects = 0
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                codes[parts[0]] += 1
                connects += int(parts[1]) if parts[1].isdigit() else 0
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        failures = {f"HTTP {k}": v for k, v in codes.items() if not k.startswith("2")}
        if n - sum(codes.values()) > 0:
            failures["no answer"] = n - sum(codes.values())
        return {"ok": ok, "failed": sum(failures.values()), "failures": failures,
                "connections": connects, "generator_exit": rc,
                "generator_wall_s": wall, "stderr": err.strip()[-300:]}, cpu

    def idle(self, target, sc):
        """Hold sc['n'] idle mTLS connections; RSS of the proxy before and while held."""
        svc = self.services[target]
        rss0 = svc.rss_kb()
        p = subprocess.Popen(
            ["taskset", "-c", str(C.LOAD_CPU), sys.executable, str(C.BENCH / "idle.py"),
             "--port", str(C.PORTS[target]), "--pki", str(self.pki), "-n", str(sc["n"]),
             "--body", str(self.bodies[sc["body"]])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        m = re.match(r"READY ok=(\d+) failed=(\d+)", line)
        time.sleep(2)  # let the proxy settle (freed handshake buffers, pooled upstreams)
        rss1 = svc.rss_kb()
        fds = svc.fds()
        p.stdin.close()
        p.wait(30)
        ok, failed = (int(m.group(1)), int(m.group(2))) if m else (0, sc["n"])
        return {"ok": ok, "failed": failed, "failures": {"not held": failed} if failed else {},
                "rss_before_kb": rss0, "rss_kb": rss1, "rss_mb": round(rss1 / 1024, 1),
                "rss_per_conn_kb": round((rss1 - rss0) / max(ok, 1), 1), "fds": fds}

    # ------------------------------------------------------------ one run

    def run(self, sc, target, rep, size):
        self.check_alive()
        before = self.snapshot()
        if sc["kind"] == "oha":
            res, gen_cpu = self.oha(target, sc, size)
            if target == "obmguard-queued":
                # Its CPU per message includes delivering what it committed.
                res["drain_s"] = self.drain_queue()
        elif sc["kind"] == "newconn":
            res, gen_cpu = self.curl_newconn(target, sc, size)
        else:
            res, gen_cpu = self.idle(target, sc), 0.0
        after = self.snapshot()
        acc = self.account(before, after, gen_cpu, target)
        rec = {"scenario": sc["name"], "target": target, "rep": rep}
        rec.update(res)
        rec.update(acc)
        ok = res["ok"]
        if ok and sc["kind"] != "idle":
            wall = res.get("generator_wall_s") or acc["wall_s"]
            rec["rps"] = round(ok / wall, 1)
            if target in self.services:
                rec["cpu_us_per_req"] = round(acc["proxy_cpu_s"] / ok * 1e6, 1)
            rec["generator_cpu_us_per_req"] = round(gen_cpu / ok * 1e6, 1)
        rec["valid"] = ok > 0 and res["failed"] == 0
        if sc["kind"] == "idle":
            rec["busy"] = False  # memory, not time: a busy machine does not change it
        return rec

    def drain_queue(self, limit=120.0):
        """Wait until the queued instance has delivered everything it committed; seconds."""
        t0 = time.monotonic()
        admin = C.PORTS["admin-queued"]
        while time.monotonic() - t0 < limit:
            m = C.metrics(admin)
            queued = m.get('obmguard_requests_total{outcome="queued",route="obm"}', 0)
            done = m.get('obmguard_deliveries_total{outcome="delivered",route="obm"}', 0)
            if done >= queued:
                break
            time.sleep(0.05)
        return round(time.monotonic() - t0, 2)

    def warm(self, sc, target):
        if sc["kind"] == "oha":
            self.oha(target, sc, 1)
        elif sc["kind"] == "newconn":
            self.curl_newconn(target, sc, 100)

    # ------------------------------------------------------------ scenarios

    def scenarios(self):
        a = self.args
        d = a.duration
        all_sc = [
            {"name": "keepalive", "kind": "oha", "targets": PROXIES, "body": "1k", "c": 32,
             "what": "keep-alive, 32 connections, saturation, 1 KB notification"},
            {"name": "rate2000", "kind": "oha", "targets": ["direct", "direct-xcore"] + PROXIES,
             "body": "1k",
             "c": 32, "qps": 2000,
             "what": "fixed 2000 req/s over 32 keep-alive connections, latency corrected"},
            {"name": "newconn-resumed", "kind": "newconn", "targets": PROXIES, "body": "1k",
             "c": 16, "resume": True,
             "what": "a new connection per request, TLS 1.3 resumption (tickets)"},
            {"name": "newconn-full", "kind": "newconn", "targets": PROXIES, "body": "1k",
             "c": 16, "resume": False,
             "what": "a new connection per request, full TLS 1.3 mTLS handshake"},
            {"name": "body5k", "kind": "oha", "targets": PROXIES, "body": "5k", "c": 32,
             "what": "keep-alive, 32 connections, 5 KB notification (10 notifications)"},
            {"name": "body50k", "kind": "oha", "targets": PROXIES, "body": "50k", "c": 32,
             "what": "keep-alive, 32 connections, 50 KB notification (100 notifications)"},
            {"name": "queued", "kind": "oha", "targets": ["obmguard-strip", "obmguard-queued"],
             "body": "1k", "c": 32,
             "what": "keep-alive, 32 connections, saturation: direct (strip) against queued "
                     "(every message committed with fsync, then delivered)"},
            {"name": "queued-rate200", "kind": "oha",
             "targets": ["obmguard-strip", "obmguard-queued"], "body": "1k", "c": 8,
             "qps": 200,
             "what": "fixed 200 msg/s: Ack latency of direct (the receiver's) against queued "
                     "(the commit's)"},
            {"name": "idle1000", "kind": "idle", "targets": PROXIES, "body": "1k",
             "n": a.idle_connections,
             "what": f"{a.idle_connections} idle mTLS connections, one request each; VmRSS"},
        ]
        for sc in all_sc:
            if sc["kind"] == "oha":
                sc["size"] = d + 2 if sc.get("qps") else d
        if a.scenarios:
            want = a.scenarios.split(",")
            unknown = set(want) - {s["name"] for s in all_sc}
            if unknown:
                sys.exit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
            all_sc = [s for s in all_sc if s["name"] in want]
        return all_sc

    def calibrate_newconn(self, sc):
        """Pick a request count that takes about `duration` seconds on the slowest target."""
        rates = []
        for t in sc["targets"]:
            t0 = time.monotonic()
            res, _ = self.curl_newconn(t, sc, 200)
            rates.append(res["ok"] / max(time.monotonic() - t0, 1e-3))
        return max(200, int(min(rates) * self.args.duration))

    def run_all(self):
        self.scenario_list = self.scenarios()
        for sc in self.scenario_list:
            log(f"== {sc['name']}: {sc['what']}")
            for t in sc["targets"]:
                self.warm(sc, t)
            if sc["kind"] == "newconn":
                sc["size"] = self.calibrate_newconn(sc)
                log(f"   {sc['size']} connections per run")
            sc.setdefault("size", 0)
            for rep in range(1, self.args.reps + 1):
                for t in sc["targets"]:
                    for attempt in range(1, self.args.retries + 2):
                        rec = self.run(sc, t, rep, sc["size"])
                        rec["attempt"] = attempt
                        self.runs.append(rec)
                        log("   " + describe(rec))
                        if not rec["busy"]:
                            break
                        time.sleep(2)
                    time.sleep(0.5)


def is_busy(unaccounted_s, wall_s, threshold_cores):
    """Something outside the benchmark used more than `threshold_cores` of a core on average.
    An absolute measure: a share of the machine's busy time would flag the light scenarios
    (2000 req/s keeps the machine mostly idle) for the least background activity."""
    return wall_s > 0 and unaccounted_s / wall_s > threshold_cores


def _ms(v):
    return None if v is None else round(v * 1000, 3)


def log(msg):
    print(msg, flush=True)


def describe(r):
    parts = [f"{r['target']:<15} rep {r['rep']}"]
    if "rps" in r:
        parts.append(f"{r['rps']:>8.0f} req/s")
    if "cpu_us_per_req" in r:
        parts.append(f"{r['cpu_us_per_req']:>7.1f} µs CPU/req")
    if r.get("p50_ms") is not None and r["scenario"] == "rate2000":
        parts.append(f"p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} p99.9 {r['p999_ms']:.3f} ms")
    if "rss_mb" in r:
        parts.append(f"RSS {r['rss_mb']} MB ({r['rss_per_conn_kb']} KB/conn)")
    parts.append(f"unaccounted {r.get('unaccounted_cores', 0):.2f} cores "
                 f"({r['unaccounted_frac'] * 100:.0f}%)")
    if not r["valid"]:
        parts.append(f"INVALID {r['failures']}")
    if r["busy"]:
        parts.append("BUSY (discarded)")
    return "  ".join(parts)


# ---------------------------------------------------------------- summary

METRICS = ["rps", "cpu_us_per_req", "generator_cpu_us_per_req", "p50_ms", "p99_ms", "p999_ms",
           "rss_mb", "rss_per_conn_kb"]


def summarize(runs):
    """Median and range of each metric over the valid runs on a quiet machine. Where a target
    has none, the valid runs discarded as busy stand in, and `from_busy_runs` says so (the
    tables mark those cells with †): on a shared machine that is better than no figure."""
    out = {}
    for r in runs:
        s = out.setdefault(r["scenario"], {}).setdefault(
            r["target"], {"valid_runs": 0, "invalid_runs": 0, "busy_runs": 0})
        if not r["valid"]:
            s["invalid_runs"] += 1
            continue
        key = "_busy_" if r["busy"] else "_"
        if r["busy"]:
            s["busy_runs"] += 1
        else:
            s["valid_runs"] += 1
        for m in METRICS:
            if r.get(m) is not None:
                s.setdefault(key + m, []).append(r[m])
    for sc in out.values():
        for s in sc.values():
            s["from_busy_runs"] = s["valid_runs"] == 0 and s["busy_runs"] > 0
            for m in METRICS:
                vals = s.pop("_" + m, None)
                busy = s.pop("_busy_" + m, None)
                if s["from_busy_runs"]:
                    vals = busy
                if vals:
                    s[m] = {"median": round(statistics.median(vals), 3),
                            "min": round(min(vals), 3), "max": round(max(vals), 3)}
    return out


def med(summary, sc, target, metric):
    try:
        return summary[sc][target][metric]["median"]
    except KeyError:
        return None


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def diff(a, b):
    return round(a - b, 3) if a is not None and b is not None else None


def derive(summary):
    r = {}
    for sc in ("keepalive", "newconn-full", "newconn-resumed", "body5k", "body50k"):
        for mode in ("strip", "audit"):
            o = med(summary, sc, f"obmguard-{mode}", "cpu_us_per_req")
            r[f"{sc}: nginx CPU/req ÷ obmguard-{mode}"] = ratio(
                med(summary, sc, "nginx", "cpu_us_per_req"), o)
            r[f"{sc}: haproxy CPU/req ÷ obmguard-{mode}"] = ratio(
                med(summary, sc, "haproxy", "cpu_us_per_req"), o)
    for base in ("direct", "direct-xcore"):
        for t in PROXIES:
            for p in ("p50_ms", "p99_ms", "p999_ms"):
                r[f"rate2000: {t} {p[:-3]} − {base} (ms)"] = diff(
                    med(summary, "rate2000", t, p), med(summary, "rate2000", base, p))
    for sc in ("keepalive", "body5k", "body50k", "newconn-full", "newconn-resumed"):
        r[f"{sc}: strip − audit CPU/req (µs)"] = diff(
            med(summary, sc, "obmguard-strip", "cpu_us_per_req"),
            med(summary, sc, "obmguard-audit", "cpu_us_per_req"))
    for t in PROXIES:
        r[f"idle1000: {t} RSS (MB)"] = med(summary, "idle1000", t, "rss_mb")
    r["queued: CPU/msg queued ÷ direct"] = ratio(
        med(summary, "queued", "obmguard-queued", "cpu_us_per_req"),
        med(summary, "queued", "obmguard-strip", "cpu_us_per_req"))
    for t in ("obmguard-strip", "obmguard-queued"):
        for p in ("p50_ms", "p99_ms"):
            r[f"queued-rate200: {t} {p[:-3]} (ms)"] = med(summary, "queued-rate200", t, p)
    return {k: v for k, v in r.items() if v is not None}


def goals(summary):
    out = []

    def add(key, value, ok, detail):
        out.append({"goal": GOALS[key], "value": value, "met": ok, "detail": detail})

    n = med(summary, "keepalive", "nginx", "cpu_us_per_req")
    s = med(summary, "keepalive", "obmguard-strip", "cpu_us_per_req")
    if n and s:
        add("keepalive_cpu_strip_vs_nginx", s, s <= n, f"strip {s} µs vs nginx {n} µs")
    for sc in ("newconn-full", "newconn-resumed"):
        n = med(summary, sc, "nginx", "cpu_us_per_req")
        for mode in ("strip", "audit"):
            o = med(summary, sc, f"obmguard-{mode}", "cpu_us_per_req")
            if n and o:
                add("newconn_cpu_vs_nginx", o, o <= n / 2,
                    f"{sc}, {mode}: {o} µs vs nginx {n} µs (half: {n / 2:.1f})")
    d = med(summary, "rate2000", "direct", "p50_ms")
    for mode in ("strip", "audit"):
        o = med(summary, "rate2000", f"obmguard-{mode}", "p50_ms")
        if d is not None and o is not None:
            add("latency_p50_added", round(o - d, 3), o - d <= 0.2,
                f"{mode}: p50 {o} ms, direct {d} ms")
    for mode in ("strip", "audit"):
        m = med(summary, "idle1000", f"obmguard-{mode}", "rss_mb")
        if m is not None:
            add("idle_rss", m, m <= 64, f"{mode}: {m} MB")
    q = med(summary, "queued", "obmguard-queued", "rps")
    if q is not None:
        add("queued_commits", q, q >= 2000, f"{q} messages/s acked after their commit")
    qc = med(summary, "queued", "obmguard-queued", "cpu_us_per_req")
    dc = med(summary, "queued", "obmguard-strip", "cpu_us_per_req")
    if qc and dc:
        add("queued_cpu", round(qc / dc, 2), qc <= 1.5 * dc,
            f"queued {qc} µs vs direct {dc} µs per message")
    return out


# ---------------------------------------------------------------- versions

def first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def grep_line(cmd, pattern):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        for line in (p.stdout + p.stderr).splitlines():
            if re.search(pattern, line):
                return line.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return None


def lock_versions(names):
    text = (C.REPO / "Cargo.lock").read_text()
    out = {}
    for m in re.finditer(r'name = "([^"]+)"\nversion = "([^"]+)"', text):
        if m.group(1) in names:
            out.setdefault(m.group(1), []).append(m.group(2))
    return {k: ", ".join(v) for k, v in out.items()}


def versions(b):
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), None)
    return {
        "obmguard": first_line([str(b.binary), "--version"]),
        "obmguard_git": b.git_at_start,
        "obmguard_binary": f"{b.binary} (built "
                           f"{datetime.fromtimestamp(b.binary.stat().st_mtime, timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "rustc": first_line(["rustc", "--version"]),
        "obmguard_libs": lock_versions({"pingora-core", "rustls", "ring", "quick-xml",
                                        "tokio", "tokio-rustls"}),
        "nginx": first_line(["nginx", "-v"]),
        "nginx_openssl": grep_line(["nginx", "-V"], "OpenSSL"),
        "haproxy": first_line(["haproxy", "-v"]),
        "haproxy_openssl": grep_line(["haproxy", "-vv"], "Running on OpenSSL"),
        "oha": first_line([b.oha_bin, "--version"]),
        "curl": first_line(["curl", "--version"]),
        "openssl": first_line(["openssl", "version"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "cpu": cpu,
        "cores": os.cpu_count(),
    }


# ---------------------------------------------------------------- markdown

SCENARIO_COLUMNS = {
    "oha": [("rps", "req/s"), ("cpu_us_per_req", "proxy CPU µs/req"),
            ("generator_cpu_us_per_req", "generator CPU µs/req")],
    "rate": [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
             ("cpu_us_per_req", "proxy CPU µs/req")],
    "newconn": [("rps", "conn/s"), ("cpu_us_per_req", "proxy CPU µs/connection"),
                ("generator_cpu_us_per_req", "generator CPU µs/connection")],
    "idle": [("rss_mb", "VmRSS MB"), ("rss_per_conn_kb", "KB per connection")],
}


def cell(s, m):
    v = s.get(m)
    if not v:
        return "–"
    f = (lambda x: f"{x:.0f}") if v["median"] >= 100 else (lambda x: f"{x:.3g}")
    mark = " †" if s.get("from_busy_runs") else ""
    if v["min"] == v["max"]:
        return f(v["median"]) + mark
    return f"{f(v['median'])} ({f(v['min'])}–{f(v['max'])}){mark}"


def markdown(result):
    L = []
    m = result["meta"]
    L.append("# obmguard benchmark results\n")
    L.append(f"Run {m['date']} on {m['versions']['cpu']} ({m['versions']['cores']} cores), "
             f"mode `{m['mode']}`, {m['reps']} repetitions, {m['duration_s']} s per run. "
             "Each cell: median (min–max) over the valid runs. Proxy CPU is the proxy's own "
             "utime+stime from /proc (one worker, pinned to its own core). † marks a figure "
             "taken from runs discarded as busy because no quiet run was had.\n")
    if m.get("note"):
        L.append(f"**Note:** {m['note']}\n")
    if m.get("fsync_ops_per_s"):
        f = m["fsync_ops_per_s"]
        L.append("The disk under the store (pg_test_fsync, one 8 kB write then sync): "
                 + ", ".join(f"{k} {v:,.0f}/s" for k, v in f.items())
                 + ". The queued figures are commits on this disk: obmguard groups concurrent "
                 "messages into one commit and one fsync.\n")
    for sc in result["scenarios"]:
        name = sc["name"]
        kind = "rate" if name in ("rate2000", "queued-rate200") else sc["kind"]
        cols = SCENARIO_COLUMNS[kind]
        L.append(f"## {name}: {sc['what']}\n")
        L.append("| target | valid/invalid/busy runs | " + " | ".join(c[1] for c in cols) + " |")
        L.append("|---|---|" + "---|" * len(cols))
        for t, s in result["summary"].get(name, {}).items():
            runs = f"{s['valid_runs']}/{s['invalid_runs']}/{s['busy_runs']}"
            L.append(f"| {t} | {runs} | " + " | ".join(cell(s, c[0]) for c in cols) + " |")
        L.append("")
    L.append("## Ratios and differences (medians)\n")
    L.append("| quantity | value |")
    L.append("|---|---|")
    for k, v in result["ratios"].items():
        L.append(f"| {k} | {v} |")
    if any(t.get("from_busy_runs") for sc in result["summary"].values() for t in sc.values()):
        L.append("\nSome figures (†) come only from runs discarded as busy: treat the ratios "
                 "and goals that use them as indicative.")
    L.append("\n## Goals\n")
    L.append("| goal | met | detail |")
    L.append("|---|---|---|")
    for g in result["goals"]:
        L.append(f"| {g['goal']} | {'yes' if g['met'] else '**no**'} | {g['detail']} |")
    bad = [r for r in result["runs"] if not r["valid"] or r["busy"]]
    if bad:
        L.append("\n## Discarded runs\n")
        for r in bad:
            why = "busy machine" if r["busy"] else f"invalid: {r['failures']}"
            L.append(f"- {r['scenario']} {r['target']} rep {r['rep']} attempt "
                     f"{r.get('attempt', 1)}: {why} (unaccounted CPU "
                     f"{r.get('unaccounted_cores', 0):.2f} cores, "
                     f"{r['unaccounted_frac'] * 100:.0f}% of the machine's)")
    L.append("\n## Versions\n")
    for k, v in m["versions"].items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in sorted(v.items()))
        L.append(f"- {k}: {v}")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one repetition, 3 s runs, 300 idle connections: a smoke test")
    ap.add_argument("--reps", type=int, help="repetitions of each run (default 3)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 8)")
    ap.add_argument("--scenarios", help="comma-separated subset, e.g. keepalive,rate2000")
    ap.add_argument("--idle-connections", type=int, help="default 1000")
    ap.add_argument("--busy-threshold", type=float, default=0.10,
                    help="discard a run when processes outside the benchmark used more than "
                         "this many cores on average during it (default 0.10)")
    ap.add_argument("--resummarize", metavar="RESULTS_JSON",
                    help="rebuild the summary, ratios, goals and markdown of an earlier run "
                         "from its raw runs (e.g. with another --busy-threshold); runs nothing")
    ap.add_argument("--retries", type=int, default=1,
                    help="extra attempts for a run discarded as busy (default 1)")
    ap.add_argument("--results", default=str(C.BENCH / "results"))
    a = ap.parse_args()
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 8)
    a.idle_connections = a.idle_connections or (300 if a.quick else 1000)

    if a.resummarize:
        return resummarize(Path(a.resummarize), a.busy_threshold)
    os.sched_setaffinity(0, {C.LOAD_CPU})
    C.raise_nofile()
    b = Bench(a)
    started = datetime.now(timezone.utc)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.start()
        log(f"started: {', '.join(f'{n} {s.pids()}' for n, s in b.services.items())}")
        b.run_all()
    finally:
        b.stop()
    summary = summarize(b.runs)
    result = {
        "meta": {"date": started.isoformat(timespec="seconds"),
                 "mode": "quick" if a.quick else "full", "reps": a.reps,
                 "duration_s": a.duration, "idle_connections": a.idle_connections,
                 "busy_threshold": a.busy_threshold, "busy_criterion": "unaccounted cores",
                 "versions": versions(b),
                 # The disk the store is on: what one synchronous write costs.
                 "fsync_ops_per_s": C.fsync_cost(b.work / "fsync")},
        "scenarios": [{k: v for k, v in sc.items() if k != "targets"} | {"targets": sc["targets"]}
                      for sc in b.scenario_list],
        "summary": summary,
        "ratios": derive(summary),
        "goals": goals(summary),
        "runs": b.runs,
    }
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = "results" if not a.quick else "results-quick"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    log(f"\nwrote {out / stem}.json and .md")
    print(markdown(result))


def resummarize(path, threshold):
    result = json.loads(path.read_text())
    for r in result["runs"]:
        if r["scenario"] == "idle1000":
            continue
        unaccounted = max(0.0, r["machine_cpu_s"] - r["accounted_cpu_s"]
                          - r.get("softirq_cpu_s", 0.0))
        r["unaccounted_cores"] = round(unaccounted / r["wall_s"], 3) if r["wall_s"] else 0.0
        r["busy"] = is_busy(unaccounted, r["wall_s"], threshold)
    result["meta"]["busy_threshold"] = threshold
    result["meta"]["busy_criterion"] = "unaccounted cores"
    result["summary"] = summarize(result["runs"])
    result["ratios"] = derive(result["summary"])
    result["goals"] = goals(result["summary"])
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
