"""Open N mutual-TLS connections to a proxy, send one notification on each (keep-alive, so
every connection holds its HTTP state as well as its TLS state), then hold them all idle.

Prints `READY ok=<n> failed=<m>` on stdout once every connection is settled, then waits for
stdin to close (or --hold seconds) and closes them. Run by bench.py; usable by hand:
    python3 idle.py --port 18446 --pki .cache/work/pki --body .cache/work/body-1k.xml
"""

import argparse
import asyncio
import ssl
import sys

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import raise_nofile  # noqa: E402


async def one(host, port, ctx, request, sem, held):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), 20)
            if request is None:
                held.append(w)
                return True
            w.write(request)
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(r.readexactly(length), 20)
            if status != 200:
                w.close()
                return False
            held.append(w)
            return True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                ssl.SSLError):
            return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pki", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--hold", type=float, default=120)
    ap.add_argument("--handshake-only", action="store_true",
                    help="complete the TLS handshake and send nothing")
    a = ap.parse_args()
    raise_nofile()
    ctx = ssl.create_default_context(cafile=f"{a.pki}/ca.crt")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(f"{a.pki}/client.crt", f"{a.pki}/client.key")
    body = open(a.body, "rb").read()
    request = (f"POST /obm HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
               f"Content-Type: text/xml; charset=UTF-8\r\nSOAPAction: \"\"\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if a.handshake_only:
        request = None
    sem = asyncio.Semaphore(a.parallel)
    held = []
    results = await asyncio.gather(*(one(a.host, a.port, ctx, request, sem, held)
                                     for _ in range(a.n)))
    ok = sum(results)
    print(f"READY ok={ok} failed={a.n - ok}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), a.hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
