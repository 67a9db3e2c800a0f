"""The GeoIP rebuild on real nodes: how long the master's download, checks and the
transfer of the database to every node over the mesh take.

N `farts-edge serve` processes (default 3) with [db] and [master]; a loopback HTTP server
serves a tar.gz of a MaxMind database (default: the GeoLite2 City bundled with
maxminddb-geolite2, 57 MB) and its .sha256; a per-second cron runs `geoip_rebuild`. The
figures: from the start of the master's run to the database in use on the master
(download, digest, extraction, type check; with --dns the index build too), and from
there to every other node having pulled, checked and installed it.

    .venv/bin/python bench/geoip_publish.py [--nodes 3] [--dns] [--database PATH]
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/http.py shadows the standard library)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import http.server  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from bench.mesh import Node, wait  # noqa: E402
from bench.nodeconf import node_toml  # noqa: E402
from farts import pki  # noqa: E402


def serve(archive: bytes) -> str:
    files = {"/db.tar.gz": archive,
             "/db.tar.gz.sha256": f"{hashlib.sha256(archive).hexdigest()}  db.tar.gz\n".encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("content-length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/db.tar.gz"


def installed(node: Node) -> bool:
    try:
        return any(line.startswith("farts_master_geoip_total{") and 'event="installed"' in line
                   and float(line.rsplit(" ", 1)[1]) >= 1 for line in node.get("/metrics").decode().splitlines())
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--database", default="", help="an .mmdb (default: the bundled GeoLite2 City)")
    ap.add_argument("--dns", action="store_true", help="DNS on every node: its index is built from the database")
    args = ap.parse_args()
    from farts.dns.geoindex import default_database
    path = Path(args.database or default_database())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        tar.add(path, arcname="GeoLite2-City_bench/GeoLite2-City.mmdb")
    url = serve(out.getvalue())
    ids = [f"node-{i}" for i in range(1, args.nodes + 1)]
    extra = node_toml({"db": {"enabled": True, "port": 0, "sync": False},
             "master": {"enabled": True, "nodes": ids, "lease_seconds": 3.0,
                        "geoip": {"url": url, "database_type": ""},
                        "crons": [{"name": "geoip", "schedule": "* * * * * */2", "action": "task",
                                   "task": "geoip_rebuild", "timeout": 600}]},
             **({"dns": {"enabled": True, "port": 0, "geo": [{"name": "edge"}]}} if args.dns else {})})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki.make_ca(root / "ca")
        nodes: list[Node] = []
        try:
            for node_id in ids:
                nodes.append(Node(root, node_id, [nodes[0].mesh()] if nodes else [], extra))
            assert wait(lambda: all(len(n.states()) == len(ids) for n in nodes), 60), "the mesh did not form"
            assert wait(lambda: any(installed(n) for n in nodes), 300), "no node installed the database"
            master = next(n for n in nodes if installed(n))
            assert wait(lambda: all(installed(n) for n in nodes), 300), "not every node installed it"
            done = time.time()
            run = json.loads(master.get("/api/master/crons"))["crons"][0]["history"][-1]
            published = json.loads(master.get("/api/master"))["geoip"]
        finally:
            for n in nodes:
                n.proc.terminate()
                n.proc.wait()
    mb = path.stat().st_size / 1e6
    print(f"{path.name}: {mb:.1f} MB, archive {len(out.getvalue()) / 1e6:.1f} MB, {args.nodes} nodes"
          f"{' with DNS' if args.dns else ''}")
    print(f"  master: run started -> in use and offered   {published['published'] - run['started']:.2f} s")
    print(f"  every other node pulled, checked, installed  {done - published['published']:.2f} s "
          f"(polled every 50 ms; {mb * (args.nodes - 1) / max(1e-9, done - published['published']):.0f} MB/s sent)")


if __name__ == "__main__":
    main()
