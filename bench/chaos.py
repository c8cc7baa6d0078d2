#!/usr/bin/env python3
"""Chaos soak of obmguard's queued delivery: a steady stream of good messages, each with its own
Notification Id, to a direct route and two queued routes (one strip, one inject with an OAuth
token endpoint), while the receiver goes down for minutes, the token endpoint fails, the policy
is reloaded every minute and obmguard is SIGKILLed and restarted every five minutes.

Not part of the test command; run through soak.sh (the default; `soak.sh --plain` is soak.py).
The receiver and the token endpoint are this script's own HTTP servers, so it knows exactly
what reached the receiver and which tokens were issued. It checks:

- false Acks: a direct-route Ack for a message the receiver had not got (must be 0);
- acked-then-lost: at the end everything comes back up and the queue drains; every message a
  queued route acked must then have reached the receiver (must be 0);
- inject: every message delivered by the inject route carries a token the endpoint issued,
  never the original session id; strip routes carry a nil SessionId;
- duplicates delivered, and whether each falls in the window of a SIGKILL (a crash between
  the receiver's Ack and obmguard recording it is the only allowed cause);
- obmguard's VmRSS and open fds every 10 s, flat within each life (a restart resets them)
  and across lives;
- queue depth, RSS and Ack latency over time with the events marked: results/soak-chaos.png.

Writes bench/results/soak-chaos.{json,md,png}.
"""

import argparse
import heapq
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import soak as S  # noqa: E402  (Client, flat)

MODE = "strip"
# Ports of its own: a chaos soak, a plain soak and a benchmark never collide.
C.PORTS.update({"backend": 19180, f"obmguard-{MODE}": 19447, f"admin-{MODE}": 19547})
PORT = C.PORTS[f"obmguard-{MODE}"]
ADMIN = C.PORTS[f"admin-{MODE}"]
RECEIVER_PORT = C.PORTS["backend"]
TOKEN_PORT = 19181

# route -> (obmguard path, receiver path). "direct" is the default /obm route of
# common.obmguard_conf (strip, with dedupe); "queued" strips, "inject" puts in a token.
ROUTES = {"direct": ("/obm", "/ack"), "queued": ("/obm-q", "/q"), "inject": ("/obm-qi", "/qi")}
QUEUED = ("queued", "inject")
ACK_TRUE = b"<Ack>true</Ack>"
CLIENT_ID = "chaos-soak-client"
CLIENT_SECRET = "chaos-soak-secret-7f3a9c"
INSTANCE_URL = "https://acme.my.salesforce.com"
NID_PREFIX = "04lSk"  # upper-case letters so the 18-character checksum is not just "AAA"

T0 = time.monotonic()


def now():
    """Seconds since the script started (one clock for every record)."""
    return time.monotonic() - T0


# ---------------------------------------------------------------- receiver and token endpoint

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs when a backlog is delivered


class Switchable:
    """An HTTP server on a fixed port that can stop listening and start again."""

    def __init__(self, port, handler):
        self.port, self.handler, self.server = port, handler, None
        self.lock = threading.Lock()

    def up(self):
        with self.lock:
            if self.server:
                return
            for _ in range(100):
                try:
                    srv = Server(("127.0.0.1", self.port), self.handler)
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"cannot listen on {self.port}")
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                             daemon=True).start()
            self.server = srv

    def down(self):
        with self.lock:
            if not self.server:
                return
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def listening(self):
        return self.server is not None


def read_body(h):
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def answer(h, status, body, ctype):
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


NID_RE = re.compile(rb"<Id>([0-9A-Za-z]{18})</Id>")
SESSION_RE = re.compile(rb"<SessionId(\s[^>]*)?(/>|>(.*?)</SessionId>)", re.S)


class World:
    """What happened, as this script saw it: receipts at the receiver, tokens issued."""

    def __init__(self):
        self.lock = threading.Lock()
        self.receipts = []          # (t, receiver path, (notification ids), session)
        self.tokens = set()
        self.token_mode = "up"      # up | 500 (answers 500) ; "closed" = not listening
        self.token_answers = Counter()


W = World()


def session_of(body):
    m = SESSION_RE.search(body)
    if not m:
        return "absent"
    if m.group(2) == b"/>" or b"nil" in (m.group(1) or b""):
        return "nil"
    return m.group(3).decode(errors="replace")


class ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = read_body(self)
        ids = tuple(x.decode() for x in NID_RE.findall(body))
        # Recorded before the Ack is written: a receipt always precedes the answer.
        with W.lock:
            W.receipts.append((now(), self.path, ids, session_of(body)))
        answer(self, 200, C.ACK.encode(), "text/xml; charset=utf-8")


class TokenHandler(BaseHTTPRequestHandler):
    """Answers like Salesforce's /services/oauth2/token for the client-credentials flow."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        form = urllib.parse.parse_qs(read_body(self).decode(errors="replace"))
        one = {k: v[0] for k, v in form.items()}
        if W.token_mode != "up":
            W.token_answers["500"] += 1
            answer(self, 500, b'{"error":"unknown_error","error_description":"retry your '
                              b'request"}', "application/json")
            return
        if (one.get("grant_type") != "client_credentials" or one.get("client_id") != CLIENT_ID
                or one.get("client_secret") != CLIENT_SECRET):
            W.token_answers["400"] += 1
            answer(self, 400, b'{"error":"invalid_client","error_description":"invalid client '
                              b'credentials"}', "application/json")
            return
        token = f"00D5e000000AbCd!AQ.chaos{secrets.token_hex(12)}"
        with W.lock:
            W.tokens.add(token)
        W.token_answers["200"] += 1
        body = json.dumps({
            "access_token": token, "signature": "c2lnbmF0dXJl", "scope": "api",
            "instance_url": INSTANCE_URL,
            "id": "https://login.salesforce.com/id/00D5e000000AbCdEAK/0055e000000AbCdAAK",
            "token_type": "Bearer", "issued_at": str(int(time.time() * 1000))}).encode()
        answer(self, 200, body, "application/json")


# ---------------------------------------------------------------- obmguard

class Guard:
    """obmguard with its configuration and store; restartable (SIGKILL, then start again)."""

    def __init__(self, work, pki, binary):
        self.binary, self.work = binary, work
        self.d = work / f"obmguard-{MODE}"
        self.var = work / f"obmguard-{MODE}-var"
        self.var.mkdir(parents=True, exist_ok=True)
        secret = self.var / "client_secret"
        secret.write_text(CLIENT_SECRET)
        secret.chmod(0o600)
        recv = f"http://127.0.0.1:{RECEIVER_PORT}"
        queued = ("[delivery]\nmode = \"queued\"\nretry_initial_ms = 1000\n"
                  "retry_max_ms = 10000\nconcurrency = 8\n")
        oauth = (f"[oauth]\nflow = \"client_credentials\"\n"
                 f"token_url = \"http://127.0.0.1:{TOKEN_PORT}/services/oauth2/token\"\n"
                 f"client_id = {{ value = \"{CLIENT_ID}\" }}\n"
                 f"client_secret = {{ file = \"{secret}\" }}\n"
                 # The shortest lifetime: tokens expire within each token outage.
                 "ttl_seconds = 60\nconnect_timeout_ms = 1000\ntimeout_ms = 2000\n")
        self.conf = C.obmguard_conf(
            self.d, pki, MODE,
            extra_routes=[("queued", "/obm-q", f"{recv}/q", "", "strip", queued),
                          ("inject", "/obm-qi", f"{recv}/qi", "", "inject", queued + oauth)],
            limits=f"\n[store]\npath = \"{self.var / 'store'}\"\nlease_ms = 10000\n",
            tables="[delivery]\nmode = \"direct\"\ndedupe = true\n")
        try:
            C.sh([str(binary), "check", "--config", str(self.conf)])
        except subprocess.CalledProcessError as e:
            sys.exit(f"obmguard check refused the configuration:\n{e.stdout}{e.stderr}")
        self.svc = None
        self.lock = threading.Lock()   # held while killing/restarting
        self.expected_exit = False

    def start(self):
        self.svc = C.Service(
            f"obmguard-{MODE}",
            [str(self.binary), "serve", "--config", str(self.conf), "--upgrade-sock",
             str(self.var / "upgrade.sock")],
            C.PROXY_CPU, self.var / "obmguard.log", cwd=self.var)
        C.wait_ready(ADMIN, "obmguard", timeout=60, proc=self.svc.proc)

    def pid(self):
        return self.svc.proc.pid

    def queue(self, state):
        out = C.sh([str(self.binary), "queue", "list", "--config", str(self.conf), "--state",
                    state, "--format", "json"])
        return json.loads(out)


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = defaultdict(float)
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r'([a-zA-Z_:]+)(\{([^}]*)\})?\s+(\S+)', line)
        if not m:
            continue
        name, labels = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        if name == "obmguard_queue_messages":
            out[f"queue_{labels.get('state')}"] += v
            out[f"queue_{labels.get('route')}_{labels.get('state')}"] += v
        elif name == "obmguard_policy_reloads_total":
            out[f"reloads_{labels.get('outcome')}"] += v
        elif name == "obmguard_deliveries_total":
            out[f"deliveries_{labels.get('outcome')}"] += v
        elif name in ("obmguard_duplicates_total", "obmguard_store_errors_total",
                      "obmguard_dead_letters_total"):
            out[name.replace("obmguard_", "")] += v
    return dict(out)


# ---------------------------------------------------------------- messages and traffic

class Msg:
    __slots__ = ("nid", "route", "body", "acks", "tries")

    def __init__(self, nid, route, body):
        self.nid, self.route, self.body = nid, route, body
        self.acks, self.tries = [], 0


class Traffic:
    def __init__(self, client, rng, a):
        self.client, self.rng, self.a = client, rng, a
        self.lock = threading.Lock()
        self.msgs = {}
        self.acked = []              # messages with at least one Ack (for acked retries)
        self.retry_heap = []         # (due, seq, nid): unacked messages, retried like Salesforce
        self.answers = []            # (t_start, t_end, route, kind, status, acked)
        self.anomalies = Counter()
        self.n = 0
        self.seq = 0

    def next_request(self):
        t = now()
        with self.lock:
            while self.retry_heap and self.retry_heap[0][0] <= t:
                _, _, nid = heapq.heappop(self.retry_heap)
                if not self.msgs[nid].acks:
                    return self.msgs[nid], "sf-retry"
            if self.acked and self.rng.random() < self.a.acked_retry_share:
                return self.rng.choice(self.acked), "acked-retry"
            self.n += 1
            nid = C.notification_id(self.n, NID_PREFIX)
            route = self.rng.choices(list(ROUTES), self.a.route_weights)[0]
            m = Msg(nid, route, C.notification(ids=[nid]))
            self.msgs[nid] = m
            return m, "new"

    def send(self, m, kind):
        t0 = now()
        status, ans = self.client.post(ROUTES[m.route][0], m.body, keepalive=True)
        t1 = now()
        acked = status == 200 and ACK_TRUE in ans
        with self.lock:
            m.tries += 1
            self.answers.append((t0, t1, m.route, kind, status, acked))
            if status == 200 and not acked:
                self.anomalies[f"{m.route}: 200 without <Ack>true</Ack>"] += 1
            if status != 200 and ACK_TRUE in ans:
                self.anomalies[f"{m.route}: {status} carrying <Ack>true</Ack>"] += 1
            if acked:
                if not m.acks:
                    self.acked.append(m)
                m.acks.append(t1)
            elif not m.acks and kind != "acked-retry":
                # Salesforce retries an unacknowledged message, backing off.
                self.seq += 1
                delay = min(120.0, 10.0 * 2 ** min(m.tries - 1, 4)) * self.a.scale
                heapq.heappush(self.retry_heap, (t1 + max(delay, 2.0), self.seq, m.nid))


# ---------------------------------------------------------------- events

def schedule(a, end):
    """(t, action, arg) sorted; every period scaled by --scale."""
    s = a.scale
    ev = []

    def periodic(offset, every, fn):
        t = offset * s
        while t < end:
            fn(t)
            t += every * s

    periodic(a.receiver_offset, a.receiver_every, lambda t: (
        ev.append((t, "receiver_down", None)),
        ev.append((min(t + a.receiver_down * s, end), "receiver_up", None))))
    k = [0]

    def token(t):
        k[0] += 1
        ev.append((t, "token_down", "500" if k[0] % 2 else "closed"))
        ev.append((min(t + a.token_down * s, end), "token_up", None))
    periodic(a.token_offset, a.token_every, token)
    r = [0]

    def reload(t):
        r[0] += 1
        ev.append((t, "reload", "policy file" if r[0] % 2 else "SIGHUP"))
    periodic(a.reload_every, a.reload_every, reload)
    periodic(a.kill_offset, a.kill_every, lambda t: ev.append((t, "kill", None)))
    return sorted(ev, key=lambda e: (e[0], e[1]))


class Chaos(threading.Thread):
    def __init__(self, plan, guard, receiver, token):
        super().__init__(daemon=True)
        self.plan, self.guard, self.receiver, self.token = plan, guard, receiver, token
        self.stop = threading.Event()
        self.log = []       # {"t", "event", ...}
        self.reloads = 0

    def note(self, event, **kw):
        e = {"t": round(now(), 2), "event": event, **kw}
        self.log.append(e)
        print(f"  {e['t']:>7.1f}s {event} {kw or ''}", flush=True)

    def run(self):
        for t, action, arg in self.plan:
            if self.stop.wait(max(0.0, t - now())):
                return
            try:
                getattr(self, action)(arg)
            except Exception as e:  # keep the soak going; the failure is recorded
                self.note("event-failed", action=action, error=repr(e))

    # A "down" is noted before it happens and an "up" after, so that every answer given
    # while a server was really down falls inside the noted interval.
    def receiver_down(self, _):
        self.note("receiver_down")
        self.receiver.down()

    def receiver_up(self, _):
        self.receiver.up()
        self.note("receiver_up")

    def token_down(self, how):
        self.note("token_down", how=how)
        if how == "closed":
            self.token.down()
        else:
            W.token_mode = "500"

    def token_up(self, _):
        W.token_mode = "up"
        self.token.up()
        self.note("token_up")

    def reload(self, how):
        g = self.guard
        with g.lock:
            self.reloads += 1
            if how == "SIGHUP":
                os.kill(g.pid(), signal.SIGHUP)
            else:
                f = g.d / "policies" / "obm.toml"
                text = re.sub(r"\n# chaos reload \d+\n", "\n", f.read_text())
                f.write_text(text + f"\n# chaos reload {self.reloads}\n")
        self.note("reload", how=how)

    def kill(self, _):
        g = self.guard
        with g.lock:
            pid = g.pid()
            self.note("kill", pid=pid)
            os.kill(pid, signal.SIGKILL)
            g.svc.proc.wait()
            g.svc.logf.close()
            g.start()
            self.note("ready", pid=g.pid())


# ---------------------------------------------------------------- sampling

class Sampler(threading.Thread):
    def __init__(self, guard, traffic, every):
        super().__init__(daemon=True)
        self.guard, self.traffic, self.every = guard, traffic, every
        self.samples = []
        self.stop = threading.Event()
        self.crashes = []
        self.seen_answers = 0

    def take(self):
        g = self.guard
        with g.lock:
            alive = g.svc.alive()
            pid = g.pid()
            if not alive:
                # Not one of our kills: obmguard died by itself. Record it and start again.
                code = g.svc.proc.returncode
                self.crashes.append({"t": round(now(), 1), "pid": pid, "exit_code": code})
                print(f"  !! obmguard (pid {pid}) exited by itself with {code}", flush=True)
                g.svc.logf.close()
                g.start()
                pid = g.pid()
        m = scrape(ADMIN) or {}
        with self.traffic.lock:
            new = self.traffic.answers[self.seen_answers:]
            self.seen_answers = len(self.traffic.answers)
            sent, acked_msgs = len(self.traffic.answers), len(self.traffic.acked)
        lat = {"queued": [], "direct": []}
        for t0, t1, route, kind, status, acked in new:
            if acked and kind != "acked-retry":  # those are answered from the dedupe window
                lat["direct" if route == "direct" else "queued"].append((t1 - t0) * 1000)

        def pct(v, q):
            if not v:
                return None
            v = sorted(v)
            return round(v[min(len(v) - 1, int(q * len(v)))], 2)
        s = {"t": round(now(), 1), "pid": pid, "rss_kb": C.rss_kb(pid), "fds": C.fd_count(pid),
             "queued": m.get("queue_queued"), "delivering": m.get("queue_delivering"),
             "dead": m.get("queue_dead"),
             "reloads_ok": m.get("reloads_ok"), "reloads_error": m.get("reloads_error"),
             "store_errors": m.get("store_errors_total"),
             "ack_p50_queued_ms": pct(lat["queued"], 0.5),
             "ack_p99_queued_ms": pct(lat["queued"], 0.99),
             "ack_p50_direct_ms": pct(lat["direct"], 0.5),
             "ack_p99_direct_ms": pct(lat["direct"], 0.99),
             "answers": sent, "acked_messages": acked_msgs,
             "receipts": len(W.receipts)}
        self.samples.append(s)
        return s

    def run(self):
        while not self.stop.wait(self.every):
            s = self.take()
            if len(self.samples) % 3 == 0:
                print(f"  {s['t']:>7.1f}s pid {s['pid']} RSS {s['rss_kb']} KB fds {s['fds']} "
                      f"queue {s['queued']}+{s['delivering']} p50 q/d "
                      f"{s['ack_p50_queued_ms']}/{s['ack_p50_direct_ms']} ms answers "
                      f"{s['answers']} receipts {s['receipts']}", flush=True)


# ---------------------------------------------------------------- analysis

def intervals(log, down, up, end):
    out, start = [], None
    for e in log:
        if e["event"] == down and start is None:
            start = e["t"]
        elif e["event"] == up and start is not None:
            out.append((start, e["t"]))
            start = None
    if start is not None:
        out.append((start, end))
    return out


def within(t, spans, pad=0.0):
    return any(a - pad <= t <= b + pad for a, b in spans)


def flat_by_life(samples, key, tolerance, warmup_s, full_s):
    """RSS/fds per life (one obmguard process): within each life long enough, soak.flat()
    (second fifth vs last fifth); across lives, each full life's (one that lasted a whole kill
    period, `full_s`) median after `warmup_s`, the last compared with the first: lives of
    different lengths would compare memory at different ages."""
    lives = defaultdict(list)
    for s in samples:
        lives[s["pid"]].append(s)
    per_life, medians = [], []
    for pid, ss in lives.items():
        start = ss[0]["t"]
        v = [s[key] for s in ss if s["t"] - start >= warmup_s and s[key]]
        if not v:
            continue
        growth, ok = S.flat(v, tolerance)
        med = statistics.median(v)
        full = ss[-1]["t"] - start >= 0.9 * full_s
        if full:
            medians.append(med)
        per_life.append({"pid": pid, "from_s": start, "full": full, "samples": len(v),
                         "median": med,
                         "min": min(v), "max": max(v), "growth": growth, "flat": ok})
    across = None
    if len(medians) >= 2:
        across = round((medians[-1] - medians[0]) / medians[0], 4) if medians[0] else 0.0
    judged = [life["flat"] for life in per_life if life["flat"] is not None]
    ok = all(judged) and (across is None or across <= tolerance)
    return {"lives": per_life, "across_lives_growth": across, "flat": ok}


def analyse(traffic, chaos, sampler, end_traffic, drain_s, drained, dead, exit_code, a):
    log = chaos.log
    t_end = now()
    recv_down = intervals(log, "receiver_down", "receiver_up", end_traffic)
    token_down = intervals(log, "token_down", "token_up", end_traffic)
    kills = [e["t"] for e in log if e["event"] == "kill"]
    readies = [e["t"] for e in log if e["event"] == "ready"]
    guard_down = list(zip(kills, readies))
    crash_times = [c["t"] for c in sampler.crashes]
    all_kills = sorted(kills + crash_times)

    rec = defaultdict(list)        # (receiver path, nid) -> [(t, session)]
    sessions = Counter()
    bad_session = Counter()
    for t, path, ids, sess in W.receipts:
        for nid in ids:
            rec[(path, nid)].append((t, sess))
        if path == "/qi":
            kind = ("issued token" if sess in W.tokens else
                    "ORIGINAL session id" if sess == C.SESSION_ID else f"other: {sess[:12]}")
            sessions[f"inject: {kind}"] += 1
            if kind != "issued token":
                bad_session[f"inject: {kind}"] += 1
        else:
            sessions[f"{path}: {sess if sess in ('nil', 'absent') else 'a value'}"] += 1
            if sess != "nil":
                bad_session[f"{path}: {sess if sess in ('nil', 'absent') else 'a value'}"] += 1

    false_acks, lost, acked_by_route = [], [], Counter()
    delivered_unacked = 0
    for m in traffic.msgs.values():
        got = rec.get((ROUTES[m.route][1], m.nid), [])
        if m.acks:
            acked_by_route[m.route] += 1
            if m.route == "direct":
                if not got or got[0][0] > m.acks[0]:
                    false_acks.append({"nid": m.nid, "acked_at": round(m.acks[0], 2),
                                       "received_at": round(got[0][0], 2) if got else None,
                                       "receiver_down": within(m.acks[0], recv_down, 1)})
            elif not got:
                lost.append({"nid": m.nid, "route": m.route, "acked_at": round(m.acks[0], 2),
                             "acks": len(m.acks)})
        elif got:
            delivered_unacked += 1

    dups = []
    for (path, nid), got in rec.items():
        for (t1, _), (t2, _) in zip(got, got[1:]):
            k = [x for x in all_kills if t1 - 0.5 <= x <= t2]
            gap = round(k[0] - t1, 3) if k else None
            dups.append({"path": path, "nid": nid, "first": round(t1, 2), "again": round(t2, 2),
                         "kill_after_first_s": gap,
                         "across_crash": gap is not None and gap <= a.crash_window})
    dup_crash = sum(d["across_crash"] for d in dups)

    answers = Counter()
    unexpected = Counter()
    for t0, t1, route, kind, status, acked in traffic.answers:
        phase = ("obmguard down" if within(t0, guard_down, 1) or within(t1, guard_down, 1)
                 else "receiver down" if within(t0, recv_down) else
                 "token down" if within(t0, token_down) else "normal")
        answers[(route, kind, phase, status)] += 1
        # A queued route answers every good message with an Ack while obmguard is up,
        # whatever the receiver and the token endpoint do; so does a retry of an acked one.
        if not acked and phase != "obmguard down" and (route in QUEUED or kind == "acked-retry"):
            unexpected[f"{route} {kind} -> {status} ({phase})"] += 1
        if not acked and route == "direct" and phase == "normal" and kind != "acked-retry":
            unexpected[f"direct {kind} -> {status} (normal)"] += 1

    lat = {"queued": [], "direct": []}
    for t0, t1, route, kind, status, acked in traffic.answers:
        if acked and kind == "new":
            lat["direct" if route == "direct" else "queued"].append((t1 - t0) * 1000)

    def q(v, p):
        return round(sorted(v)[min(len(v) - 1, int(p * len(v)))], 2) if v else None

    live = [s for s in sampler.samples if s["t"] <= end_traffic]
    result = {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "minutes": a.minutes, "rate": a.rate, "scale": a.scale, "seed": a.seed,
                 "route_weights": dict(zip(ROUTES, a.route_weights)),
                 "acked_retry_share": a.acked_retry_share,
                 "obmguard": C.sh([str(C.obmguard_binary()), "--version"]).strip(),
                 "events": {"receiver": f"down {a.receiver_down * a.scale:g} s every "
                                        f"{a.receiver_every * a.scale:g} s from "
                                        f"{a.receiver_offset * a.scale:g} s",
                            "token": f"down {a.token_down * a.scale:g} s every "
                                     f"{a.token_every * a.scale:g} s from "
                                     f"{a.token_offset * a.scale:g} s (500, then closed, "
                                     f"alternately)",
                            "reload": f"every {a.reload_every * a.scale:g} s (policy file "
                                      f"rewrite and SIGHUP alternately)",
                            "kill": f"SIGKILL and restart every {a.kill_every * a.scale:g} s "
                                    f"from {a.kill_offset * a.scale:g} s"}},
        "traffic_s": round(end_traffic, 1),
        "requests": len(traffic.answers),
        "messages": len(traffic.msgs),
        "messages_by_route": dict(Counter(m.route for m in traffic.msgs.values())),
        "acked_by_route": dict(acked_by_route),
        "never_acked": sum(1 for m in traffic.msgs.values() if not m.acks),
        "delivered_without_ack_seen": delivered_unacked,
        "requests_by_kind": dict(Counter(x[3] for x in traffic.answers)),
        "false_acks": false_acks,
        "acked_then_lost": lost,
        "anomalies": dict(traffic.anomalies),
        "unexpected_answers": dict(unexpected),
        "receipts": len(W.receipts),
        "sessions_at_receiver": dict(sessions),
        "session_violations": dict(bad_session),
        "tokens_issued": len(W.tokens),
        "token_answers": dict(W.token_answers),
        "duplicates": len(dups),
        "duplicates_across_crash": dup_crash,
        "duplicates_detail": dups[:200],
        "ack_latency_ms": {k: {"n": len(v), "p50": q(v, .5), "p99": q(v, .99),
                               "max": q(v, 1.0)} for k, v in lat.items()},
        "answers": [{"route": r, "kind": k, "phase": p, "status": st, "count": n}
                    for (r, k, p, st), n in sorted(answers.items(), key=str)],
        "events": log,
        "kills": len(kills),
        "unexpected_exits": sampler.crashes,
        "reloads_sent": chaos.reloads,
        "reloads_counted": {k: sum(max((s[f"reloads_{k}"] or 0) for s in sampler.samples
                                       if s["pid"] == pid)
                                   for pid in {s["pid"] for s in sampler.samples})
                            for k in ("ok", "error")},
        "drain_s": round(drain_s, 1),
        "drained": drained,
        "dead_letters_at_end": dead,
        "exit_code_on_sigterm": exit_code,
        "rss": flat_by_life(live, "rss_kb", a.tolerance, a.warmup, a.kill_every * a.scale),
        "fds": flat_by_life(live, "fds", a.tolerance, a.warmup, a.kill_every * a.scale),
        "samples": sampler.samples,
        "end_s": round(t_end, 1),
    }
    result["ok"] = (not false_acks and not lost and not bad_session and not traffic.anomalies
                    and dup_crash == len(dups) and not sampler.crashes and drained
                    and not dead and result["rss"]["flat"] and result["fds"]["flat"])
    return result


def log_excerpt(var):
    """Counts of warnings/errors/panics in obmguard's log, and the distinct error messages."""
    f = var / "obmguard.log"
    if not f.exists():
        return {}
    levels, msgs = Counter(), Counter()
    for line in f.read_text(errors="replace").splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        low = line.lower()
        if "panicked" in low:
            levels["panic"] += 1
            msgs[line[:200]] += 1
        for lvl in ("ERROR", "WARN"):
            if f" {lvl} " in line or f'"level":"{lvl}"' in line:
                levels[lvl] += 1
                # drop the timestamp and request ids: group alike messages
                key = re.sub(r"^\d{4}-\S+\s+", "", line)
                key = re.sub(r"\b[0-9a-f]{8,}\b|\b\d+(\.\d+)?(ms|s)?\b", "#", key)[:220]
                msgs[key] += 1
    return {"levels": dict(levels), "top": msgs.most_common(15)}


# ---------------------------------------------------------------- report

def markdown(r):
    m = r["meta"]
    yes = lambda b: "yes" if b else "**NO**"  # noqa: E731
    L = [f"# obmguard chaos soak: {m['minutes']} min at {m['rate']} msg/s\n",
         f"{m['date']}, {m['obmguard']}. Routes (weights): {m['route_weights']}; "
         f"{m['acked_retry_share'] * 100:g} % of requests re-send an already acked message.\n",
         "Events: " + "; ".join(f"{k} {v}" for k, v in m["events"].items()) + ".\n",
         f"**Verdict: {'PASS' if r['ok'] else 'FAIL'}**\n",
         "| check | result |", "|---|---|",
         f"| false Acks (direct: Ack without the receiver having it) | **{len(r['false_acks'])}** |",
         f"| acked-then-lost (queued: acked, never delivered after the drain) | "
         f"**{len(r['acked_then_lost'])}** |",
         f"| inject: deliveries with an issued token / with the original session id | "
         f"{r['sessions_at_receiver'].get('inject: issued token', 0)} / "
         f"{r['sessions_at_receiver'].get('inject: ORIGINAL session id', 0)} |",
         f"| SessionId violations at the receiver | {r['session_violations'] or 0} |",
         f"| duplicates delivered (across a crash / other) | {r['duplicates']} "
         f"({r['duplicates_across_crash']} / {r['duplicates'] - r['duplicates_across_crash']}) |",
         f"| answers that break the protocol (200 without Ack, Ack with non-200) | "
         f"{r['anomalies'] or 0} |",
         f"| obmguard exits not caused by the soak | {len(r['unexpected_exits'])} |",
         f"| queue drained after the end | {yes(r['drained'])} in {r['drain_s']} s; dead letters "
         f"{r['dead_letters_at_end']} |",
         f"| VmRSS flat (within each life, and across lives) | {yes(r['rss']['flat'])}, across "
         f"lives {_pct(r['rss']['across_lives_growth'])} |",
         f"| open fds flat | {yes(r['fds']['flat'])}, across lives "
         f"{_pct(r['fds']['across_lives_growth'])} |",
         f"| exit code on the final SIGTERM | {r['exit_code_on_sigterm']} |",
         "",
         f"Traffic ran {r['traffic_s']} s: {r['requests']} requests, {r['messages']} distinct "
         f"messages {r['messages_by_route']}, acked {r['acked_by_route']}; never acked "
         f"{r['never_acked']} (Salesforce would go on retrying); delivered though no Ack reached "
         f"the sender {r['delivered_without_ack_seen']}. Requests by kind "
         f"{r['requests_by_kind']} (sf-retry: an unacked message sent again after a back-off; "
         f"acked-retry: an acked one sent again). Receiver receipts {r['receipts']}; tokens "
         f"issued {r['tokens_issued']}, token endpoint answers {r['token_answers']}. "
         f"{r['kills']} SIGKILLs; {r['reloads_sent']} reloads sent, counted by obmguard "
         f"{r['reloads_counted']} (the sum of each life's last sampled counter: a reload just "
         "before a SIGKILL goes uncounted).\n",
         f"Ack latency of new messages (ms): {r['ack_latency_ms']}\n",
         "![queue depth, RSS and Ack latency over time](soak-chaos.png)\n"]
    if r["false_acks"]:
        L += ["## False Acks\n", "```", json.dumps(r["false_acks"][:50], indent=1), "```\n"]
    if r["acked_then_lost"]:
        L += ["## Acked, then lost\n", "```", json.dumps(r["acked_then_lost"][:50], indent=1),
              "```\n"]
    if r["unexpected_answers"]:
        L += ["## Answers other than an Ack where one was due (obmguard up)\n",
              "| route, kind -> status (phase) | count |", "|---|---|"]
        L += [f"| {k} | {v} |" for k, v in sorted(r["unexpected_answers"].items())]
        L.append("")
    if r["duplicates"]:
        L += ["## Duplicates delivered\n",
              "| receiver path | Notification Id | first (s) | again (s) | SIGKILL after first (s) | "
              "across a crash |", "|---|---|---|---|---|---|"]
        L += [f"| {d['path']} | {d['nid']} | {d['first']} | {d['again']} | "
              f"{d['kill_after_first_s']} | {d['across_crash']} |"
              for d in r["duplicates_detail"][:60]]
        L.append("")
    L += ["## Resident memory and open fds per life\n",
          "A SIGKILL and restart resets both, so each life (one process) is judged on its own "
          "(soak.py's rule: median of the last fifth vs the second fifth, after a "
          f"warm-up), and the medians of the full lives (a whole kill period) are compared, "
          "last vs first.\n",
          "| life from (s) | full | samples | VmRSS KB median (min-max) | growth | fds median (min-max) "
          "| growth |", "|---|---|---|---|---|---|---|"]
    for lr, lf in zip(r["rss"]["lives"], r["fds"]["lives"]):
        L.append(f"| {lr['from_s']} | {lr['full']} | {lr['samples']} | {lr['median']:.0f} ({lr['min']}-"
                 f"{lr['max']}) | {_pct(lr['growth'])} | {lf['median']:.0f} ({lf['min']}-"
                 f"{lf['max']}) | {_pct(lf['growth'])} |")
    L += ["\n## obmguard's log\n", f"{r.get('log', {}).get('levels')}\n", "```"]
    L += [f"{n:>6}  {msg}" for msg, n in r.get("log", {}).get("top", [])]
    L += ["```\n", "## Events\n", "| t (s) | event | |", "|---|---|---|"]
    L += [f"| {e['t']} | {e['event']} | "
          f"{', '.join(f'{k}={v}' for k, v in e.items() if k not in ('t', 'event'))} |"
          for e in r["events"]]
    L += ["\n## Answers\n", "| route | kind | phase | status | count |", "|---|---|---|---|---|"]
    L += [f"| {x['route']} | {x['kind']} | {x['phase']} | {x['status']} | {x['count']} |"
          for x in r["answers"]]
    L += ["\n## Samples\n",
          "| t (s) | pid | VmRSS KB | fds | queued | delivering | Ack p50 queued / direct (ms) "
          "| receipts |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {s['t']} | {s['pid']} | {s['rss_kb']} | {s['fds']} | {_n(s['queued'])} | "
          f"{_n(s['delivering'])} | {s['ack_p50_queued_ms']} / {s['ack_p50_direct_ms']} | "
          f"{s['receipts']} |" for s in r["samples"]]
    return "\n".join(L) + "\n"


def _pct(v):
    return "n/a" if v is None else f"{v * 100:+.1f}%"


def _n(v):
    return "-" if v is None else f"{v:g}"


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    ss = r["samples"]
    x = [s["t"] / 60 for s in ss]
    fig, ax = plt.subplots(3, 1, figsize=(13, 9), sharex=True)
    q_line = ax[0].plot(x, [None if s["queued"] is None else s["queued"] + (s["delivering"] or 0)
                   for s in ss], color="tab:blue", label="queued + delivering")
    ax[0].set_ylabel("queue depth (messages)")
    rss_line, = ax[1].plot(x, [s["rss_kb"] / 1024 if s["rss_kb"] else None for s in ss], color="tab:purple",
               label="VmRSS")
    ax[1].set_ylabel("obmguard VmRSS (MB)")
    fd = ax[1].twinx()
    fd_line, = fd.plot(x, [s["fds"] or None for s in ss], color="tab:gray", lw=0.8, label="open fds")
    fd.set_ylabel("open fds")
    lat_lines = ax[2].plot(x, [s["ack_p50_queued_ms"] for s in ss], color="tab:green",
                           label="Ack p50, queued routes")
    lat_lines += ax[2].plot(x, [s["ack_p50_direct_ms"] for s in ss], color="tab:brown",
                            label="Ack p50, direct route")
    ax[2].set_yscale("log")
    ax[2].yaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.5, 1, 2, 5, 10, 20, 50,
                                                                  100, 200, 500, 1000]))
    ax[2].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax[2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[2].set_ylabel("Ack latency p50 per 10 s (ms)")
    ax[2].set_xlabel("minutes")
    ev = r["events"]
    end = r["traffic_s"]
    for a in ax:
        for s, e in intervals(ev, "receiver_down", "receiver_up", end):
            a.axvspan(s / 60, e / 60, color="tab:red", alpha=0.15)
        for s, e in intervals(ev, "token_down", "token_up", end):
            a.axvspan(s / 60, e / 60, color="tab:orange", alpha=0.25)
        for e in ev:
            if e["event"] == "kill":
                a.axvline(e["t"] / 60, color="black", ls="--", lw=1)
            elif e["event"] == "reload":
                a.axvline(e["t"] / 60, color="tab:gray", ls=":", lw=0.6)
        for c in r["unexpected_exits"]:
            a.axvline(c["t"] / 60, color="red", lw=2)
        a.axvline(end / 60, color="tab:green", lw=1.5)
        a.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color="tab:red", alpha=0.15, label="receiver down"),
               Patch(color="tab:orange", alpha=0.25, label="token endpoint down"),
               Line2D([], [], color="black", ls="--", label="SIGKILL + restart"),
               Line2D([], [], color="tab:gray", ls=":", label="reload"),
               Line2D([], [], color="tab:green", label="traffic stops, drain")]
    ax[0].legend(handles=handles + q_line, loc="upper left", fontsize=8,
                 ncol=3)
    ax[1].legend(handles=[rss_line, fd_line], loc="upper left", fontsize=8)
    ax[2].legend(handles=lat_lines, loc="upper left", fontsize=8)
    fig.suptitle(f"obmguard chaos soak: {r['meta']['minutes']} min at {r['meta']['rate']} msg/s "
                 f"- false Acks {len(r['false_acks'])}, acked-then-lost "
                 f"{len(r['acked_then_lost'])}, duplicates {r['duplicates']} "
                 f"({r['duplicates_across_crash']} across a crash)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=50, help="requests per second (default 50)")
    ap.add_argument("--route-weights", type=lambda s: [float(x) for x in s.split(",")],
                    default=[20, 50, 30], help="direct,queued,inject (default 20,50,30)")
    ap.add_argument("--acked-retry-share", type=float, default=0.03,
                    help="share of requests re-sending an acked message (default 0.03)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies every event time below (0.1 for a 3-minute run)")
    ap.add_argument("--receiver-every", type=float, default=360)
    ap.add_argument("--receiver-down", type=float, default=120)
    ap.add_argument("--receiver-offset", type=float, default=60)
    ap.add_argument("--token-every", type=float, default=270)
    ap.add_argument("--token-down", type=float, default=60)
    ap.add_argument("--token-offset", type=float, default=130)
    ap.add_argument("--reload-every", type=float, default=60)
    ap.add_argument("--kill-every", type=float, default=300)
    ap.add_argument("--kill-offset", type=float, default=150)
    ap.add_argument("--crash-window", type=float, default=5.0,
                    help="a duplicate whose first delivery was at most this long before a "
                         "SIGKILL counts as 'across a crash' (default 5 s)")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--warmup", type=float, default=30,
                    help="seconds of each life left out of the RSS/fd judgement (default 30)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--results", default=str(C.BENCH / "results"))
    ap.add_argument("--name", default="soak-chaos", help="result file names (default soak-chaos)")
    ap.add_argument("--replot", metavar="JSON",
                    help="only rewrite the .md and .png from a result .json")
    a = ap.parse_args()
    if a.replot:
        r = json.loads(Path(a.replot).read_text())
        Path(a.replot).with_suffix(".md").write_text(markdown(r))
        plot(r, Path(a.replot).with_suffix(".png"))
        return
    C.raise_nofile()
    binary = C.obmguard_binary()
    if not binary.exists():
        sys.exit(f"{binary} not found: run bench/soak.sh, which builds it")
    work = C.CACHE / "chaos"
    shutil.rmtree(work, ignore_errors=True)   # a fresh store each run
    work.mkdir(parents=True)
    pki = C.make_pki(C.CACHE / "work" / "pki")

    receiver = Switchable(RECEIVER_PORT, ReceiverHandler)
    token = Switchable(TOKEN_PORT, TokenHandler)
    receiver.up()
    token.up()
    guard = Guard(work, pki, binary)
    guard.start()
    traffic = Traffic(S.Client(pki, PORT), random.Random(a.seed), a)
    sampler = Sampler(guard, traffic, a.sample_every)
    global T0
    T0 = time.monotonic()   # every time recorded is seconds since the traffic started
    start = 0.0
    end = start + a.minutes * 60
    chaos = Chaos([(start + t, act, arg) for t, act, arg in schedule(a, a.minutes * 60)],
                  guard, receiver, token)
    print(f"chaos soak: {a.minutes} min at {a.rate} msg/s, obmguard pid {guard.pid()}, work "
          f"{work}", flush=True)
    sampler.take()
    sampler.start()
    chaos.start()

    interval = 1.0 / a.rate
    sent = 0
    with ThreadPoolExecutor(max_workers=48) as pool:
        t = start
        while t < end:
            d = t - now()
            if d > 0:
                time.sleep(d)
            m, kind = traffic.next_request()
            pool.submit(traffic.send, m, kind)
            sent += 1
            t = start + sent * interval
    end_traffic = now()
    chaos.stop.set()
    chaos.join()
    with guard.lock:
        receiver.up()
        W.token_mode = "up"
        token.up()
    chaos.note("traffic_stopped")

    # Drain: everything is up; wait until the queue is empty and every acked message arrived.
    acked_q = {(ROUTES[m.route][1], m.nid) for m in traffic.acked if m.route in QUEUED}
    drained, t_drain = False, now()
    while now() - t_drain < a.drain_timeout:
        with guard.lock:
            try:
                waiting = len(guard.queue("queued")) + len(guard.queue("delivering"))
            except (subprocess.CalledProcessError, ValueError) as e:
                print(f"  queue list failed: {e}", flush=True)
                waiting = None
        got = {(p, nid) for _, p, ids, _ in list(W.receipts) for nid in ids}
        missing = len(acked_q - got)
        if waiting == 0 and missing == 0:
            drained = True
            break
        print(f"  drain: {waiting} waiting in the store, {missing} acked messages not yet "
              f"delivered", flush=True)
        time.sleep(5)
    drain_s = now() - t_drain
    time.sleep(2)  # let a last duplicate (if any) show up
    chaos.note("drained" if drained else "drain_timeout")
    sampler.stop.set()
    sampler.join()
    sampler.take()
    with guard.lock:
        dead = len(guard.queue("dead"))
        guard.svc.stop()
        exit_code = guard.svc.proc.returncode
    receiver.down()
    token.down()
    while not traffic.client.pool.empty():
        traffic.client.pool.get_nowait().close()

    r = analyse(traffic, chaos, sampler, end_traffic, drain_s, drained, dead, exit_code,
                a)
    r["log"] = log_excerpt(guard.var)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / f"{a.name}.md").write_text(markdown(r))
    try:
        plot(r, out / f"{a.name}.png")
    except ImportError:
        print("matplotlib missing: no plot (apt-get install -y python3-matplotlib)", flush=True)
    print(markdown(r).split("## Events")[0])
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
