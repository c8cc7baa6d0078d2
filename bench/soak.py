#!/usr/bin/env python3
"""Soak obmguard: a fixed rate for a chosen number of minutes, good and hostile traffic mixed,
and obmguard's resident memory and open file descriptors sampled over time.

Not part of the test command; run through soak.sh. Reports errors (good messages not
acknowledged), false Acks (a hostile or failed message answered 200 or carrying
<Ack>true</Ack>: must be 0), unexpected statuses, and RSS / fd samples, and says whether
both stayed flat. Writes bench/results/soak.{json,md}.
"""

import argparse
import json
import os
import queue
import random
import socket
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

MODE = "strip"
# Ports of its own, so that a soak and a benchmark never collide.
C.PORTS.update({"backend": 19080, f"obmguard-{MODE}": 19446, f"admin-{MODE}": 19546})
PORT = C.PORTS[f"obmguard-{MODE}"]
MAX_BODY = 65536

# kind: (weight, expected outcomes). "ack" = 200 + <Ack>true</Ack>; a status = that HTTP
# status; "refused" = no HTTP answer (the TLS handshake or the first read fails). An oversize
# body may be refused (413) and the connection closed while the client is still sending it:
# the client then sees a reset instead of the 413.
MIX = {
    "good-keepalive": (50, "ack"),
    "good-newconn": (10, "ack"),
    "rogue-ca-cert": (5, "refused"),
    "no-cert": (5, "refused"),
    "wrong-cn": (5, 403),
    "bad-xml": (4, 400),
    "doctype": (3, 400),
    "wrong-org": (5, 403),
    "oversize": (5, (413, "refused")),
    "receiver-nack": (4, 502),
    "receiver-500": (4, 502),
}


class Client:
    """An HTTP/1.1 client over TLS that keeps connections alive in a pool (shared with chaos.py)."""

    def __init__(self, pki: Path, port=PORT, timeout=10):
        self.port, self.timeout = port, timeout
        def ctx(cert):
            c = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            c.minimum_version = ssl.TLSVersion.TLSv1_3
            if cert:
                c.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
            return c

        self.ctx = {"client": ctx("client"), "other": ctx("other"),
                    "rogue-client": ctx("rogue-client"), None: ctx(None)}
        self.pool = queue.LifoQueue()

    def connect(self, cert="client"):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        return self.ctx[cert].wrap_socket(s, server_hostname="127.0.0.1")

    def exchange(self, conn, path, body, close):
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: text/xml; charset=UTF-8\r\nSOAPAction: \"\"\r\n"
                f"Content-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n").encode()
        conn.sendall(head + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed before an answer")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = 0
        keep = True
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
            if k.strip().lower() == b"connection" and v.strip().lower() == b"close":
                keep = False
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the answer")
            rest += chunk
        return status, rest[:length], keep

    def post(self, path, body, keepalive=True, cert="client"):
        """Returns (status or 'refused', answer body). A kept-alive connection that fails is
        retried once on a new one (the server may close an idle one just as it is reused), as
        a client such as Salesforce would."""
        for attempt in (0, 1):
            conn = None
            if keepalive and attempt == 0:
                try:
                    conn = self.pool.get_nowait()
                except queue.Empty:
                    pass
            reused = conn is not None
            try:
                if conn is None:
                    conn = self.connect(cert)
                status, answer, keep = self.exchange(conn, path, body, close=not keepalive)
            except (OSError, ssl.SSLError, ConnectionError, ValueError, IndexError):
                if conn is not None:
                    conn.close()
                if reused:
                    continue
                return "refused", b""
            if keepalive and keep:
                self.pool.put(conn)
            else:
                conn.close()
            return status, answer
        return "refused", b""

    def send(self, kind, bodies):
        """Returns (status or 'refused', answer body)."""
        path, body, cert, keepalive = "/obm", bodies["good"], "client", False
        if kind == "good-keepalive":
            keepalive = True
        elif kind == "rogue-ca-cert":
            cert = "rogue-client"
        elif kind == "no-cert":
            cert = None
        elif kind == "wrong-cn":
            cert = "other"
        elif kind in ("bad-xml", "doctype", "wrong-org", "oversize"):
            body = bodies[kind]
        elif kind == "receiver-nack":
            path = "/obm-nack"
        elif kind == "receiver-500":
            path = "/obm-broken"
        return self.post(path, body, keepalive, cert)


def bodies():
    good = C.notification()
    return {
        "good": good,
        "bad-xml": good.replace(b"</notifications>", b"</notification>"),
        "doctype": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>' + good.split(b"?>", 1)[1]),
        "wrong-org": C.notification(org=C.sfid18("00D5e000000ZzZz")),
        "oversize": C.sized_notification(MAX_BODY * 2),
    }


def sample(svc):
    return {"t": round(time.monotonic(), 1), "rss_kb": svc.rss_kb(), "fds": svc.fds()}


def flat(values, tolerance):
    """Compare the median of the last fifth with the median of the second fifth (the first
    fifth is warm-up: pools and allocator arenas filling)."""
    n = len(values)
    if n < 10:
        return None, None
    early = statistics.median(values[n // 5: 2 * n // 5])
    late = statistics.median(values[-(n // 5):])
    growth = (late - early) / early if early else 0.0
    return round(growth, 4), growth <= tolerance


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--rate", type=float, default=50, help="requests per second (default 50)")
    ap.add_argument("--sample-every", type=float, default=10, help="seconds (default 10)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--results", default=str(C.BENCH / "results"))
    a = ap.parse_args()
    C.raise_nofile()
    binary = C.obmguard_binary()
    if not binary.exists():
        sys.exit(f"{binary} not found: run bench/soak.sh, which builds it")
    work = C.CACHE / "soak"
    work.mkdir(parents=True, exist_ok=True)
    pki = C.make_pki(C.CACHE / "work" / "pki")
    b = bodies()
    backend = C.start_backend(work)
    backend_url = f"http://127.0.0.1:{C.PORTS['backend']}"
    svc = C.start_obmguard(
        work, pki, binary, MODE,
        extra_routes=[("nack", "/obm-nack", f"{backend_url}/nack", ""),
                      ("broken", "/obm-broken", f"{backend_url}/broken", "")],
        message=f"max_body_bytes = {MAX_BODY}\n")
    client = Client(pki, PORT)
    rng = random.Random(a.seed)
    kinds = list(MIX)
    weights = [MIX[k][0] for k in kinds]
    counts, outcomes = Counter(), Counter()
    errors, false_acks, unexpected = Counter(), Counter(), Counter()
    lock = threading.Lock()
    samples = [sample(svc)]
    print(f"soak: {a.minutes} min at {a.rate} req/s against obmguard ({MODE}), pid "
          f"{svc.proc.pid}; start RSS {samples[0]['rss_kb']} KB, fds {samples[0]['fds']}",
          flush=True)

    def one(kind):
        status, answer = client.send(kind, b)
        expected = MIX[kind][1]
        acked = status == 200 and b"<Ack>true</Ack>" in answer
        with lock:
            counts[kind] += 1
            outcomes[f"{kind} -> {status}"] += 1
            if expected == "ack":
                if not acked:
                    errors[f"{kind} -> {status}"] += 1
            else:
                if status == 200 or b"<Ack>true</Ack>" in answer:
                    false_acks[f"{kind} -> {status}"] += 1
                elif status not in (expected if isinstance(expected, tuple) else (expected,)):
                    unexpected[f"{kind} -> {status} (expected {expected})"] += 1

    died_at = None
    start = time.monotonic()
    end = start + a.minutes * 60
    next_sample = start + a.sample_every
    interval = 1.0 / a.rate
    sent = 0
    with ThreadPoolExecutor(max_workers=32) as pool:
        t = start
        while t < end:
            now = time.monotonic()
            if now < t:
                time.sleep(t - now)
            if not svc.alive():
                died_at = round(time.monotonic() - start, 1)
                print(f"obmguard exited (code {svc.proc.returncode}) at {died_at}s",
                      flush=True)
                break
            pool.submit(one, rng.choices(kinds, weights)[0])
            sent += 1
            t = start + sent * interval
            if time.monotonic() >= next_sample:
                samples.append(sample(svc))
                next_sample += a.sample_every
                if len(samples) % 6 == 0:
                    s = samples[-1]
                    print(f"  {int(time.monotonic() - start):>5}s sent {sent} RSS "
                          f"{s['rss_kb']} KB fds {s['fds']} errors {sum(errors.values())} "
                          f"false Acks {sum(false_acks.values())}", flush=True)
    # Close the kept-alive connections: fds must come back to where they started.
    while not client.pool.empty():
        client.pool.get_nowait().close()
    time.sleep(2)
    alive = svc.alive()
    final = sample(svc)
    svc.stop()
    backend.stop()

    t0 = samples[0]["t"]
    for s in samples + [final]:
        s["t"] = round(s["t"] - t0, 1)
    rss_growth, rss_flat = flat([s["rss_kb"] for s in samples], 0.10)
    fd_growth, fd_flat = flat([s["fds"] for s in samples], 0.10)
    result = {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "minutes": a.minutes, "rate": a.rate, "mode": MODE, "seed": a.seed,
                 "obmguard": C.sh([str(binary), "--version"]).strip()},
        "sent": sent,
        "answered_by_kind": dict(counts),
        "outcomes": dict(sorted(outcomes.items())),
        "errors": dict(errors),
        "false_acks": dict(false_acks),
        "false_ack_total": sum(false_acks.values()),
        "unexpected": dict(unexpected),
        "obmguard_alive_at_end": alive,
        "obmguard_exited_at_s": died_at,
        "obmguard_exit_code": svc.proc.returncode if died_at is not None else None,
        "rss_growth": rss_growth,
        "rss_flat": rss_flat,
        "fd_growth": fd_growth,
        "fd_flat": fd_flat,
        "fds_start": samples[0]["fds"],
        "fds_after_close": final["fds"],
        "samples": samples,
        "final": final,
    }
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "soak.md").write_text(markdown(result))
    print(markdown(result))
    ok = alive and result["false_ack_total"] == 0 and not errors and rss_flat is not False \
        and fd_flat is not False
    sys.exit(0 if ok else 1)


def markdown(r):
    m = r["meta"]
    L = [f"# obmguard soak: {m['minutes']} min at {m['rate']} req/s ({m['mode']})\n",
         f"{m['date']}, {m['obmguard']}. Sent {r['sent']} requests.\n",
         f"- false Acks: **{r['false_ack_total']}** {r['false_acks'] or ''}",
         f"- errors (good messages not acknowledged): **{sum(r['errors'].values())}** "
         f"{r['errors'] or ''}",
         f"- unexpected statuses (refused, but not as expected): {r['unexpected'] or 'none'}",
         f"- obmguard alive at the end: {r['obmguard_alive_at_end']}"
         + (f" (it exited with code {r['obmguard_exit_code']} after "
            f"{r['obmguard_exited_at_s']} s: see its log)" if r["obmguard_exited_at_s"] else ""),
         f"- VmRSS: {r['samples'][0]['rss_kb']} KB at start, "
         f"{max(s['rss_kb'] for s in r['samples'])} KB max, "
         f"{r['samples'][-1]['rss_kb']} KB last sample; growth (last fifth vs second fifth) "
         f"{_pct(r['rss_growth'])}: {'flat' if r['rss_flat'] else 'NOT flat'}",
         f"- open fds: {r['fds_start']} at start, "
         f"{max(s['fds'] for s in r['samples'])} max, {r['fds_after_close']} after the "
         f"client closed its connections; growth {_pct(r['fd_growth'])}: "
         f"{'flat' if r['fd_flat'] else 'NOT flat'}",
         "\n## Outcomes\n", "| kind -> answer | count |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in r["outcomes"].items()]
    L += ["\n## Samples\n", "| t (s) | VmRSS KB | fds |", "|---|---|---|"]
    L += [f"| {s['t']} | {s['rss_kb']} | {s['fds']} |" for s in r["samples"]]
    return "\n".join(L) + "\n"


def _pct(v):
    return "n/a" if v is None else f"{v * 100:+.1f}%"


if __name__ == "__main__":
    main()
