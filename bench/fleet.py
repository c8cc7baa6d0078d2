#!/usr/bin/env python3
"""The fleet on one machine: two obmguard instances in queued mode sharing one PostgreSQL
(a throw-away cluster from the machine's server binaries, fsync on), against one instance on
the embedded SQLite store, under the same load.

Run through fleet.sh. Measures, in one run:
- messages per second durably committed (an Ack is only given after the commit), at
  saturation: two oha processes, one per instance, 16 connections each;
- CPU per message of obmguard (both instances) and of PostgreSQL (every server process), from
  /proc, over the load and the delivery of everything it committed;
- Ack latency p50 and p99 at a fixed 200 messages/s, fleet against embedded store.
Writes bench/results/fleet.{json,md}. Every message is committed: the routes do not dedupe
(oha sends one body over and over). The two cores are shared by everything (no pinning).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

PORTS = {"pg": 19432, "backend": 19180, "a": 19443, "b": 19444, "solo": 19445,
         "admin-a": 19543, "admin-b": 19544, "admin-solo": 19545}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Postgres:
    """A cluster of its own, as the `postgres` user when run as root (the server refuses root)."""

    def __init__(self, work: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            sys.exit("no PostgreSQL server binaries: apt-get install -y postgresql")
        self.bin = Path(bins[-1]).parent
        self.data = work / "pgdata"
        if self.data.exists():
            shutil.rmtree(self.data)
        work.mkdir(parents=True, exist_ok=True)
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(work, "postgres")
        subprocess.run(self.as_pg + [str(self.bin / "initdb"), "-D", str(self.data), "-U",
                                     "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        self.log = open(work / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            self.as_pg + [str(self.bin / "postgres"), "-D", str(self.data), "-p",
                          str(PORTS["pg"]), "-k", str(work), "-c", "listen_addresses=127.0.0.1",
                          "-c", "max_connections=200", "-c", "fsync=on",
                          "-c", "synchronous_commit=on"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        C.wait_tcp(PORTS["pg"], "postgres", proc=self.proc)
        time.sleep(0.5)
        subprocess.run(self.as_pg + [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p",
                                     str(PORTS["pg"]), "-U", "postgres", "obmguard"], check=True)
        self.url = f"postgres://postgres@127.0.0.1:{PORTS['pg']}/obmguard?sslmode=disable"

    def cpu_ticks(self):
        return sum(C.cpu_ticks(p) for p in C.proc_tree(self.proc.pid))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 2)
            self.proc.wait(20)


def config(work: Path, pki: Path, name: str, store: str):
    d = work / name
    if d.exists():
        shutil.rmtree(d)
    (d / "policies").mkdir(parents=True)
    for f in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / f, d / f)
    (d / "obmguard.toml").write_text(f"""[server]
listen = ["127.0.0.1:{PORTS[name]}"]
tls_cert = "server.crt"
tls_key = "server.key"
admin_listen = "127.0.0.1:{PORTS['admin-' + name]}"
policies = "policies"
audit_log = "{d}/audit.jsonl"
threads = 1

[client_cert]
ca_bundle = "ca.crt"

[source]
allow = ["127.0.0.1/32"]

[limits]
max_connections = 16384
max_connections_per_source = 16384

[store]
{store}
""")
    (d / "policies" / "obm.toml").write_text(f"""name = "obm"
path = "/obm"
upstream = "http://127.0.0.1:{PORTS['backend']}/ack"

[message]
organization_ids = ["{C.ORG_ID}"]
session_id = "strip"

[identity]
subject_cn = ["{C.CLIENT_CN}"]

[delivery]
mode = "queued"
dedupe = false
concurrency = 32
""")
    return d / "obmguard.toml"


def start(binary, conf, name, env=None):
    s = C.Service(name, [str(binary), "serve", "--config", str(conf), "--upgrade-sock",
                         str(conf.parent / "upgrade.sock")], "0-1", conf.parent / "obmguard.log",
                  env=env or {}, cwd=conf.parent)
    C.wait_ready(PORTS["admin-" + name], name, proc=s.proc)
    return s


def oha(oha_bin, pki, port, body, seconds, conns, qps=None):
    cmd = [oha_bin, "-z", f"{seconds}s", "-w", "-c", str(conns), "-m", "POST", "-D", str(body),
           "-H", "Content-Type: text/xml; charset=UTF-8", "-H", 'SOAPAction: ""', "--no-tui",
           "--output-format", "json", "--cacert", str(pki / "ca.crt"), "--cert",
           str(pki / "client.crt"), "--key", str(pki / "client.key")]
    if qps:
        cmd += ["-q", str(qps), "--latency-correction"]
    cmd.append(f"https://127.0.0.1:{port}/obm")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p):
    out, err = p.communicate()
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    pct = j.get("latencyPercentiles", {})
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {"ok": ok, "other": {k: v for k, v in codes.items() if not k.startswith("2")},
            "errors": j.get("errorDistribution", {}), "wall_s": j["summary"]["total"],
            "p50_ms": ms(pct.get("p50")), "p99_ms": ms(pct.get("p99"))}


def drained(admins, limit=300.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        queued = sum(C.metrics(a).get('obmguard_requests_total{outcome="queued",route="obm"}', 0)
                     for a in admins)
        done = sum(C.metrics(a).get('obmguard_deliveries_total{outcome="delivered",route="obm"}', 0)
                   for a in admins)
        if done >= queued:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    return None


def saturate(label, oha_bin, pki, body, ports, admins, services, pg, seconds):
    tick = 1.0 / C.CLK_TCK
    before = {n: s.cpu_ticks() for n, s in services.items()}
    pg_before = pg.cpu_ticks() if pg else 0
    t0 = time.monotonic()
    runs = [oha(oha_bin, pki, port, body, seconds, 32 // len(ports)) for port in ports]
    res = [result(r) for r in runs]
    load_s = time.monotonic() - t0
    drain_s = drained(admins)
    ok = sum(r["ok"] for r in res)
    cpu = sum((s.cpu_ticks() - before[n]) * tick for n, s in services.items())
    pg_cpu = (pg.cpu_ticks() - pg_before) * tick if pg else None
    out = {"label": label, "acked": ok, "failed": sum(sum(r["other"].values()) + sum(r["errors"].values()) for r in res),
           "commits_per_s": round(ok / max(r["wall_s"] for r in res), 1),
           "load_s": round(load_s, 2), "drain_s": drain_s,
           "obmguard_cpu_us_per_msg": round(cpu / max(ok, 1) * 1e6, 1),
           "postgres_cpu_us_per_msg": round(pg_cpu / max(ok, 1) * 1e6, 1) if pg else None}
    log(f"   {label}: {out}")
    return out


def latency(label, oha_bin, pki, body, ports, seconds, qps):
    runs = [oha(oha_bin, pki, port, body, seconds, 4, qps / len(ports)) for port in ports]
    res = [result(r) for r in runs]
    out = {"label": label, "qps": qps, "acked": sum(r["ok"] for r in res),
           "p50_ms": max(r["p50_ms"] for r in res), "p99_ms": max(r["p99_ms"] for r in res)}
    log(f"   {label}: {out}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--results", default=str(C.BENCH / "results"))
    a = ap.parse_args()
    C.raise_nofile()
    binary = C.obmguard_binary()
    oha_bin = shutil.which("oha", path=str(C.CACHE / "oha" / "bin")) or shutil.which("oha")
    if not oha_bin or not binary.exists():
        sys.exit("needs oha and a release obmguard: run bench/fleet.sh")
    work = C.CACHE / "fleet"
    work.mkdir(parents=True, exist_ok=True)
    pki = C.make_pki(C.CACHE / "work" / "pki")
    body = C.write_bodies(work)["1k"]
    C.PORTS["backend"] = PORTS["backend"]
    backend = C.start_backend(work)
    pg = Postgres(work / "pg")
    fsync = C.fsync_cost(work / "fsync")
    url_file = work / "store_url"
    url_file.write_text(pg.url)
    fleet_store = f'url = {{ file = "{url_file}" }}\npool_size = 32'
    # Migrate once, then start both (a start migrates too; the lock makes that safe).
    conf_a = config(work, pki, "a", fleet_store)
    conf_b = config(work, pki, "b", fleet_store)
    subprocess.run([str(binary), "store", "migrate", "--config", str(conf_a)], check=True)
    fleet = {"a": start(binary, conf_a, "a"), "b": start(binary, conf_b, "b")}
    conf_solo = config(work, pki, "solo", f'path = "{work / "solo" / "store"}"')
    solo = {"solo": start(binary, conf_solo, "solo")}
    runs = []
    try:
        for rep in range(1, a.reps + 1):
            log(f"== rep {rep}")
            runs.append(saturate("fleet", oha_bin, pki, body, [PORTS["a"], PORTS["b"]],
                                 [PORTS["admin-a"], PORTS["admin-b"]], fleet, pg, a.seconds))
            runs.append(saturate("embedded", oha_bin, pki, body, [PORTS["solo"]],
                                 [PORTS["admin-solo"]], solo, None, a.seconds))
            runs.append(latency("fleet", oha_bin, pki, body, [PORTS["a"], PORTS["b"]],
                                a.seconds, 200))
            runs.append(latency("embedded", oha_bin, pki, body, [PORTS["solo"]], a.seconds, 200))
    finally:
        for s in list(fleet.values()) + list(solo.values()) + [backend]:
            s.stop()
        pg.stop()

    def med(label, key, kind):
        vals = sorted(r[key] for r in runs if r["label"] == label and (key in r)
                      and r[key] is not None and (("qps" in r) == (kind == "lat")))
        return vals[len(vals) // 2] if vals else None

    summary = {
        "fleet_commits_per_s": med("fleet", "commits_per_s", "sat"),
        "embedded_commits_per_s": med("embedded", "commits_per_s", "sat"),
        "fleet_obmguard_cpu_us_per_msg": med("fleet", "obmguard_cpu_us_per_msg", "sat"),
        "fleet_postgres_cpu_us_per_msg": med("fleet", "postgres_cpu_us_per_msg", "sat"),
        "embedded_obmguard_cpu_us_per_msg": med("embedded", "obmguard_cpu_us_per_msg", "sat"),
        "fleet_p50_ms_at_200": med("fleet", "p50_ms", "lat"),
        "fleet_p99_ms_at_200": med("fleet", "p99_ms", "lat"),
        "embedded_p50_ms_at_200": med("embedded", "p50_ms", "lat"),
        "embedded_p99_ms_at_200": med("embedded", "p99_ms", "lat"),
    }
    if summary["fleet_p50_ms_at_200"] is not None and summary["embedded_p50_ms_at_200"] is not None:
        summary["added_p50_ms"] = round(summary["fleet_p50_ms_at_200"] - summary["embedded_p50_ms_at_200"], 3)
        summary["added_p99_ms"] = round(summary["fleet_p99_ms_at_200"] - summary["embedded_p99_ms_at_200"], 3)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reps": a.reps, "seconds": a.seconds, "cores": os.cpu_count(),
            "postgres": str(pg.bin), "fsync_ops_per_s": fsync,
            "git": subprocess.run(["git", "-C", str(C.REPO), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True).stdout.strip()}
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                               indent=1) + "\n")
    L = [f"# obmguard fleet: two instances on one PostgreSQL, queued mode\n",
         f"Run {meta['date']} ({meta['git']}), {a.reps} repetitions of {a.seconds} s, "
         f"{meta['cores']} cores shared by everything (both instances, PostgreSQL, the "
         "receiver and the load generators). Medians. Every message committed (no dedupe).\n",
         "The disk (pg_test_fsync, one 8 kB write then sync): "
         + ", ".join(f"{k} {v:,.0f}/s" for k, v in fsync.items()) + ".\n",
         "| figure | value |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in summary.items()]
    L.append("\n## Runs\n")
    L += [f"- {r}" for r in runs]
    (out / "fleet.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
