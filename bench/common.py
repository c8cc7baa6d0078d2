"""Shared pieces of the benchmark and the soak: the PKI, the notification bodies, the
configuration of the backend, nginx, haproxy and obmguard, and process accounting from /proc.

Everything listens on 127.0.0.1 only. Nothing here judges results: bench.py and soak.py do.
"""

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"

ORG_ID = "00D5e000000AbCdEAK"
ACTION_ID = "04k5e000000XyZaAAK"
SESSION_ID = "00D5e000000AbCd!AQ4AQFakeSessionValue"
CLIENT_CN = "proxy.salesforce.com"
OTHER_CN = "other.example.com"

ACK = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
       '"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse '
       'xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>'
       '</soapenv:Body></soapenv:Envelope>')
NACK = ACK.replace("<Ack>true</Ack>", "<Ack>false</Ack>")

# Cores: the proxy under test gets PROXY_CPU alone; generator, backend and orchestrator share
# LOAD_CPU.
LOAD_CPU = 0
PROXY_CPU = 1

PORTS = {
    "backend": 18080,
    "backend-xcore": 18081,
    "nginx": 18443,
    "haproxy": 18444,
    "obmguard-audit": 18445,
    "obmguard-strip": 18446,
    "obmguard-queued": 18447,
    "admin-audit": 18545,
    "admin-strip": 18546,
    "admin-queued": 18547,
}

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- PKI (ECDSA P-256 everywhere)

def _key(path):
    sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(path)])


def _ca(d, name, cn):
    _key(d / f"{name}.key")
    sh(["openssl", "req", "-x509", "-new", "-key", str(d / f"{name}.key"), "-sha256",
        "-days", "3650", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(d / f"{name}.crt")])


def _leaf(d, name, cn, ca, ext):
    _key(d / f"{name}.key")
    (d / f"{name}.ext").write_text(ext)
    sh(["openssl", "req", "-new", "-key", str(d / f"{name}.key"), "-subj", f"/CN={cn}",
        "-out", str(d / f"{name}.csr")])
    sh(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.crt"),
        "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-days", "825", "-sha256",
        "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt")])


def make_pki(d: Path):
    """CA, server (127.0.0.1), client (CN proxy.salesforce.com), a second client of the same CA
    with another CN, and a client from an untrusted 'rogue' CA. Reused when present."""
    if (d / "done").exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    _ca(d, "ca", "obmguard bench CA")
    _ca(d, "rogue", "rogue CA")
    server_ext = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                  "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    client_ext = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                  "extendedKeyUsage=clientAuth\n")
    _leaf(d, "server", "localhost", "ca", server_ext)
    _leaf(d, "client", CLIENT_CN, "ca", client_ext)
    _leaf(d, "other", OTHER_CN, "ca", client_ext)
    _leaf(d, "rogue-client", CLIENT_CN, "rogue", client_ext)
    # haproxy wants certificate and key in one file.
    (d / "server.pem").write_text((d / "server.crt").read_text() + (d / "server.key").read_text())
    (d / "done").write_text("ok\n")
    return d


# ---------------------------------------------------------------- bodies

def sfid18(id15):
    """The 18-character form of a 15-character Salesforce id (case-checksum suffix)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        suffix += alphabet[bits]
    return id15 + suffix


def notification(notifications=1, filler=0, org=ORG_ID, session=SESSION_ID, ids=None):
    """A notification in Salesforce's shape (see src/testkit/messages.rs); `filler` characters
    of an sf:Description field per Account make bigger bodies with at most 100 notifications.
    `ids` gives the Notification Ids (valid 18-character ids, see `notification_id`); by
    default they are numbered from 0."""
    if ids is None:
        ids = [f"04l5e{i:010d}AAA" for i in range(notifications)]
    base = "https://acme.my.salesforce.com/services/Soap"
    org15 = org[:15]
    s = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
         f'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
         f'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
         f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n <soapenv:Body>\n'
         f'  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">\n'
         f'   <OrganizationId>{org}</OrganizationId>\n   <ActionId>{ACTION_ID}</ActionId>\n'
         f'   <SessionId>{session}</SessionId>\n'
         f'   <EnterpriseUrl>{base}/c/59.0/{org15}</EnterpriseUrl>\n'
         f'   <PartnerUrl>{base}/u/59.0/{org15}</PartnerUrl>\n')
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 64)[:filler]
    for i, nid in enumerate(ids):
        desc = f"     <sf:Description>{text}</sf:Description>\n" if filler else ""
        s += (f'   <Notification>\n    <Id>{nid}</Id>\n'
              f'    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">\n'
              f'     <sf:Id>0015e{i:010d}AAA</sf:Id>\n     <sf:Name>Acme Ltd {i}</sf:Name>\n'
              f'{desc}    </sObject>\n   </Notification>\n')
    s += "  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n"
    return s.encode()


def notification_id(n, prefix="04l5e"):
    """The n-th valid 18-character Notification Id (key prefix 04l) under `prefix`."""
    return sfid18(f"{prefix}{n:0{15 - len(prefix)}d}")


def sized_notification(target):
    """About `target` bytes: one notification per ~500 bytes (at most 100), padded with filler."""
    n = max(1, min(100, target // 500))
    lo = len(notification(n, 1))
    filler = max(1, (target - lo) // n + 1)
    return notification(n, filler)


def write_bodies(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    bodies = {"1k": notification(), "5k": sized_notification(5 * 1024),
              "50k": sized_notification(50 * 1024)}
    for name, b in bodies.items():
        (d / f"body-{name}.xml").write_bytes(b)
    return {k: d / f"body-{k}.xml" for k in bodies}


# ---------------------------------------------------------------- configurations

def backend_conf(d: Path, name="backend"):
    """nginx as the receiver: plain HTTP, keep-alive, answers the Ack (and a Nack and a 500 for
    the soak), discarding the request body."""
    ack = ACK.replace("'", "\\'")
    nack = NACK.replace("'", "\\'")
    return f"""worker_processes 1;
worker_rlimit_nofile 16384;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp-{name};
  client_max_body_size 10m;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{PORTS[name]} backlog=4096;
    default_type text/xml;
    location = /ack {{ return 200 '{ack}'; }}
    location = /nack {{ return 200 '{nack}'; }}
    location = /broken {{ return 500 'oops'; }}
  }}
}}
"""


def nginx_conf(d: Path, pki: Path):
    return f"""worker_processes 1;
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp-nginx;
  proxy_temp_path {d}/tmp-nginx-proxy;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_max_body_size 1m;
  # Buffer bodies up to 64 KB in memory (the default 16 KB would spill 50 KB bodies to disk).
  client_body_buffer_size 64k;
  upstream backend {{
    server 127.0.0.1:{PORTS['backend']};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl backlog=4096;
    ssl_certificate {pki}/server.crt;
    ssl_certificate_key {pki}/server.key;
    ssl_protocols TLSv1.3;
    ssl_client_certificate {pki}/ca.crt;
    ssl_verify_client on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    allow 127.0.0.1/32;
    deny all;
    location = /obm {{
      if ($ssl_client_s_dn !~ "(^|,)CN={re.escape(CLIENT_CN)}(,|$)") {{ return 403; }}
      proxy_pass http://backend/ack;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
      proxy_buffering on;
    }}
  }}
}}
"""


def haproxy_conf(d: Path, pki: Path):
    return f"""global
  nbthread 1
  maxconn 8000
  pidfile {d}/haproxy.pid
  # Big enough for a whole 50 KB body (http-buffer-request waits for at most one buffer).
  tune.bufsize 65536
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 30s
  timeout http-request 10s
  timeout http-keep-alive 60s
  option http-buffer-request
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required alpn http/1.1
  tcp-request connection reject unless {{ src 127.0.0.1/32 }}
  http-request deny deny_status 404 unless {{ path /obm }}
  http-request deny deny_status 403 unless {{ ssl_c_s_dn(cn) -m str {CLIENT_CN} }}
  default_backend be
backend be
  http-request set-path /ack
  server backend 127.0.0.1:{PORTS['backend']} pool-max-conn 64
"""


def obmguard_conf(d: Path, pki: Path, mode: str, extra_routes=(), limits="", message="",
                  audit_log=None, tables=""):
    """obmguard.toml and policies/ for one instance; returns the config path. The route /obm
    forwards to the backend's Ack (`tables`: more tables of its policy, e.g. [delivery]);
    `extra_routes` adds (name, path, upstream, extra lines of the [message] table[, session_id
    mode (default `mode`)[, more tables]]). `limits` is appended to obmguard.toml after its
    [limits] keys (so it may open further tables, e.g. [store]). `mode` is the session id
    mode, or `queued`: strip, with /obm in queued delivery and the store in the instance's var
    directory (on the same disk as everything else). The benchmark sends one body over and
    over, so that route does not dedupe: every message is committed."""
    d.mkdir(parents=True, exist_ok=True)
    # Logs live apart from the configuration, as in a deployment (/etc vs /var/log): obmguard
    # watches its configuration directory for changes.
    var = d.parent / f"{d.name}-var"
    var.mkdir(exist_ok=True)
    # Its own copy of the server certificate, key and CA, as in a deployment: obmguard also
    # watches their directory, and the load generators read the client's files in pki/.
    tls = d / "tls"
    tls.mkdir(exist_ok=True)
    for f in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / f, tls / f)
    pol = d / "policies"
    pol.mkdir(exist_ok=True)
    port = PORTS[f"obmguard-{mode}"]
    admin = PORTS[f"admin-{mode}"]
    store, delivery, session = "", "", mode
    if mode == "queued":
        session = "strip"
        store = f'[store]\npath = "{var / "store"}"\n'
        delivery = '[delivery]\nmode = "queued"\ndedupe = false\nconcurrency = 32\n'
    (d / "obmguard.toml").write_text(f"""[server]
listen = ["127.0.0.1:{port}"]
tls_cert = "{tls}/server.crt"
tls_key = "{tls}/server.key"
admin_listen = "127.0.0.1:{admin}"
policies = "policies"
audit_log = "{audit_log or var / 'audit.jsonl'}"
threads = 1

[client_cert]
ca_bundle = "{tls}/ca.crt"

[source]
allow = ["127.0.0.1/32"]

[limits]
# Every client of the benchmark comes from 127.0.0.1 (the default is 512 per source).
max_connections = 16384
max_connections_per_source = 16384
{limits}
{store}""")
    routes = [("obm", "/obm", f"http://127.0.0.1:{PORTS['backend']}/ack", message, session,
               tables + delivery)]
    routes += list(extra_routes)
    for name, path, upstream, message_extra, *more in routes:
        session = more[0] if more else mode
        route_tables = more[1] if len(more) > 1 else ""
        (pol / f"{name}.toml").write_text(f"""name = "{name}"
path = "{path}"
upstream = "{upstream}"
upstream_timeout_ms = 5000
# Like nginx's and haproxy's keep-alive pools to the same backend (obmguard's default is one
# connection per message: see upstream_keepalive in policies/README.md).
upstream_keepalive = true

[message]
organization_ids = ["{ORG_ID}"]
session_id = "{session}"
{message_extra}
[identity]
subject_cn = ["{CLIENT_CN}"]
{route_tables}""")
    return d / "obmguard.toml"


# ---------------------------------------------------------------- processes and /proc

def proc_tree(pid):
    """pid and all its descendants."""
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pid):
    """utime+stime of one process (all its threads), in clock ticks; 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def stat_cpu():
    """Busy ticks (all but idle and iowait) of the whole machine and of each core, and the
    machine's softirq ticks (`softirq`)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *v = line.split()
            v = [int(x) for x in v[:8]]
            out[name] = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            if name == "cpu":
                out["softirq"] = v[6]
    return out


class Service:
    """A long-running process pinned to one core. `pids()` is its process tree, so nginx's
    master and worker are both counted."""

    def __init__(self, name, cmd, cpu, log, env=None, ready=None, cwd=None):
        self.name, self.cmd, self.cpu, self.log = name, cmd, cpu, log
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                     start_new_session=True)
        if ready:
            ready(self)

    def pids(self):
        return proc_tree(self.proc.pid)

    def cpu_ticks(self):
        return sum(cpu_ticks(p) for p in self.pids())

    def rss_kb(self):
        return sum(rss_kb(p) for p in self.pids())

    def fds(self):
        return sum(fd_count(p) for p in self.pids())

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()


def wait_tcp(port, what, timeout=20.0, proc=None):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def metrics(admin_port):
    """The admin listener's /metrics as {series: value} ({} if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def fsync_cost(directory: Path):
    """What one small synchronous write costs on the disk under `directory`, from PostgreSQL's
    pg_test_fsync (8 kB writes, 2 s per method): {method: ops/s}, or {} without it."""
    import glob
    tools = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_test_fsync"))
    if not tools:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run([tools[-1], "-s", "2", "-f", str(directory / "fsync.test")],
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    res, section = {}, None
    for line in out.splitlines():
        if line.startswith("Compare file sync methods using one"):
            section = "one 8kB write"
        elif line.startswith("Compare"):
            section = None
        elif section and "ops/sec" in line:
            parts = line.split()
            name = parts[0]
            try:
                res[name] = float(parts[parts.index("ops/sec") - 1])
            except (ValueError, IndexError):
                pass
    return res


def wait_ready(admin_port, what, timeout=20.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout}s")


def start_backend(work: Path, cpu=LOAD_CPU, name="backend"):
    """The receiver. `backend-xcore` is a second one on the proxies' core, for the latency
    baseline that crosses cores as proxied requests do."""
    (work / f"tmp-{name}").mkdir(parents=True, exist_ok=True)
    conf = work / f"{name}.conf"
    conf.write_text(backend_conf(work, name))
    s = Service(name, ["nginx", "-c", str(conf), "-p", str(work)], cpu, work / f"{name}.log")
    wait_tcp(PORTS[name], name, proc=s.proc)
    return s


def start_nginx(work: Path, pki: Path):
    for t in ("tmp-nginx", "tmp-nginx-proxy"):
        (work / t).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(nginx_conf(work, pki))
    s = Service("nginx", ["nginx", "-c", str(conf), "-p", str(work)], PROXY_CPU,
                work / "nginx.log")
    wait_tcp(PORTS["nginx"], "nginx", proc=s.proc)
    return s


def start_haproxy(work: Path, pki: Path):
    conf = work / "haproxy.cfg"
    conf.write_text(haproxy_conf(work, pki))
    s = Service("haproxy", ["haproxy", "-W", "-db", "-f", str(conf)], PROXY_CPU,
                work / "haproxy.log")
    wait_tcp(PORTS["haproxy"], "haproxy", proc=s.proc)
    return s


def start_obmguard(work: Path, pki: Path, binary: Path, mode: str, extra_routes=(), limits="",
                   message="", env=None, audit_log=None):
    d = work / f"obmguard-{mode}"
    for x in (d, work / f"obmguard-{mode}-var"):
        if x.exists():
            shutil.rmtree(x)
    conf = obmguard_conf(d, pki, mode, extra_routes, limits, message, audit_log)
    var = work / f"obmguard-{mode}-var"
    s = Service(f"obmguard-{mode}",
                [str(binary), "serve", "--config", str(conf), "--upgrade-sock",
                 str(var / "upgrade.sock")],
                PROXY_CPU, var / "obmguard.log", env=env or {}, cwd=var)
    wait_ready(PORTS[f"admin-{mode}"], s.name, proc=s.proc)
    return s


def obmguard_binary():
    env = os.environ.get("OBMGUARD_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "obmguard"
