"""Takes docs/status.png, the README's picture of the status page, from a real cluster.

Starts `farts-edge up --nodes 3` in a temporary folder (ports 8080, 9100, ... on
127.0.0.1-3 must be free), its /widget/ upstream a local server that answers after a
delay, runs a mixed load for --seconds (HTTP, CDN, pub/sub publishes to SSE subscribers,
DNS queries, MongoDB writes and reads, a few slow upstream requests), rising and falling
so the charts have a shape, then screenshots node 1's page in Debian's chromium.

    python ops/status_screenshot.py --seconds 120 --out docs/status.png
"""
from __future__ import annotations

import argparse
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


class Delayed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        ms = int(self.path.rsplit("/", 1)[1]) if self.path.rsplit("/", 1)[1].isdigit() else 5
        time.sleep(ms / 1000)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--out", default="docs/status.png")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from farts import quickstart

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Delayed)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="farts-shot-"))
    configs = quickstart.prepare_cluster(tmp, 3)
    for path in configs:
        path.write_text(path.read_text().replace('servers = ["127.0.0.1:3000"]',
                                                 f'servers = ["127.0.0.1:{upstream.server_address[1]}"]'))
    key = tomllib.loads(configs[0].read_text())["tenants"][0]["api_keys"][0]
    proc = subprocess.Popen([sys.executable, "-m", "farts.cli", "up", "--nodes", "3", "--data-dir", str(tmp)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    out = b""
    deadline = time.monotonic() + 60
    while b"Ctrl-C stops the cluster." not in out and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            out += os.read(proc.stdout.fileno(), 65536)
    if b"Ctrl-C stops the cluster." not in out:
        print(out.decode(errors="replace"))
        proc.kill()
        return 1
    stop = threading.Event()
    started = time.monotonic()

    def level() -> float:   # 0..1, rising and falling over the run
        return 0.5 + 0.5 * math.sin((time.monotonic() - started) / args.seconds * 3 * math.pi)

    def web(i: int) -> None:
        with httpx.Client(timeout=10) as c:
            n = 0
            while not stop.is_set():
                c.get(f"http://127.0.0.{i}:8080/")
                c.get(f"http://127.0.0.{i}:8080/media/hello.txt")
                c.get(f"http://127.0.0.{i}:8080/widget/5")
                n += 1
                if n % 97 == 0:
                    c.get(f"http://127.0.0.{i}:8080/widget/{120 + 30 * i}")   # a slow one
                time.sleep(0.02 * (1.2 - level()) * i)

    def pubsub() -> None:
        subs = [httpx.stream("GET", f"http://127.0.0.{i}:8080/live/sse", params={"channel": "thread-1"},
                             timeout=None) for i in (1, 2, 3) for _ in range(3)]
        for s in subs:
            s.__enter__()
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                c.post("http://127.0.0.1:8080/api/publish", json={"channel": "thread-1", "data": {"text": "hi"}},
                       headers={"authorization": f"Bearer {key}"})
                time.sleep(0.05 + 0.2 * (1 - level()))
        for s in subs:
            s.__exit__(None, None, None)

    def dns() -> None:
        import dns.message
        import dns.query
        while not stop.is_set():
            for i in (1, 2, 3):
                q = dns.message.make_query("edge.farts.test", "A")
                try:
                    dns.query.udp(q, f"127.0.0.{i}", port=5353, timeout=2)
                except Exception:  # noqa: BLE001 - load only
                    pass
            time.sleep(0.05)

    def db() -> None:
        import pymongo
        client = pymongo.MongoClient("mongodb://127.0.0.1:27017/", serverSelectionTimeoutMS=5000)
        coll = client.app.comments
        n = 0
        while not stop.is_set():
            coll.insert_one({"n": n, "text": "hello"})
            coll.find_one({"n": n})
            n += 1
            time.sleep(0.03 * (1.2 - level()))
        client.close()

    workers = [threading.Thread(target=web, args=(i,)) for i in (1, 2, 3)]
    workers += [threading.Thread(target=f) for f in (pubsub, dns, db)]
    for w in workers:
        w.start()
    try:
        time.sleep(args.seconds)
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto("http://127.0.0.1:9100/")
            page.wait_for_function("() => document.querySelectorAll('#members tbody tr[data-state=alive]')"
                                   ".length === 3", timeout=30_000)
            time.sleep(2)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        upstream.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
