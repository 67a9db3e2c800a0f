#!/usr/bin/env python3
"""HTTP/2 over TLS: farts-edge against nginx (http2 on), with h2load.

    python bench/h2.py [--rounds 3] [--seconds 5] [--clients 64] [--streams 10] [--h1] [--json FILE]

Both serve the same 1 KiB answer (bench/peers/body.py) over TLS 1.3 with the same
certificate (a local CA's, issued by farts.pki), one after another in --rounds
interleaved rounds, each pinned to core 0 (`taskset -c 0`):

  farts       farts-edge, a `kind = "static"` route on the HTTPS listener (ALPN h2)
  nginx       nginx, worker_processes 1, `listen ... ssl http2`, the file from memory
              (open_file_cache), sendfile off, access_log off

measured by `taskset -c 1 h2load -t1 -c64 -m10 -D5 --log-file=...` (the log gives
every request's time, from which p99 is taken).  --h1 measures HTTP/1.1 over TLS
instead (`h2load --h1 -m1`: the same client, one request at a time per connection).
The table keeps each target's best round; the ratio is farts-edge's over nginx's.

Bounded: every wait has a timeout, only 127.0.0.1 on free ports, everything under one
temp directory (printed), only the processes it started are stopped, by PID.  Processes
and nginx configs come from bench/http.py's helpers.  Not run in CI; nginx and h2load
come from ci/bench-setup and ci/setup (nghttp2-client).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_http", os.path.join(HERE, "http.py"))
H = importlib.util.module_from_spec(_spec)
sys.modules["bench_http"] = H
_spec.loader.exec_module(H)
from bench.nodeconf import local_node, node_toml  # noqa: E402  (bench/http.py put the repository on sys.path)

TARGETS = ["farts", "nginx"]


class H2Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.hb = H.Bench(argparse.Namespace(**{**vars(args), "size": 1024}))
        sys.path.insert(0, H.ROOT)
        from farts import pki
        certs = Path(self.hb.dir) / "certs"
        pki.make_ca(Path(self.hb.dir) / "ca")
        self.crt, self.key = certs / "localhost.crt", certs / "localhost.key"
        pki.issue(Path(self.hb.dir) / "ca", self.crt, self.key, ["localhost", "127.0.0.1"])

    def start(self, name: str) -> H.Server:
        a = self.args
        if name == "farts":
            d = self.hb.path(name)
            os.makedirs(os.path.join(d, "data", "certs"), exist_ok=True)
            for f in (self.crt, self.key):
                shutil.copy(f, os.path.join(d, "data", "certs", f.name))
            port, admin = H.free_port(), H.free_port()
            cfg = os.path.join(d, "farts.toml")
            with open(cfg, "w") as f:
                node = local_node(os.path.join(d, "data"), admin_port=admin)
                node["listeners"].update(http={"enabled": False}, https={"host": "127.0.0.1", "port": port})
                f.write(node_toml({**node, "routes": [{"prefix": "/bench", "kind": "static",
                                                       "body": self.hb.body.decode("ascii")}]}))
            log = os.path.join(d, "node.log")
            proc = self.hb.procs.start(name, H.pinned(a.server_cpu, [*self.hb.farts_command(), "serve",
                                                                     "--config", cfg]), log, cwd=H.ROOT)
            return H.Server(proc, port, "/bench", log, admin_port=admin)
        port = H.free_port()
        block = ("    access_log off;\n    sendfile off;\n    open_file_cache max=100;\n"
                 "    default_type text/plain;\n    keepalive_requests 1000000;\n"
                 f"    server {{\n        listen 127.0.0.1:{port} ssl http2 backlog=1024;\n"
                 f"        ssl_certificate {self.crt};\n        ssl_certificate_key {self.key};\n"
                 "        ssl_protocols TLSv1.3;\n"
                 f"        root {self.hb.www};\n"
                 "        location / {\n            rewrite ^ /bench break;\n        }\n    }")
        return self.hb._nginx(name, block, a.server_cpu)

    def ready(self, name: str, srv: H.Server) -> None:
        """Answers the exact body over HTTP/2 (and HTTP/1.1) within READY_TIMEOUT."""
        deadline = time.monotonic() + H.READY_TIMEOUT
        url = f"https://localhost:{srv.port}/bench"
        last = ""
        while time.monotonic() < deadline:
            if srv.proc.poll() is not None:
                raise H.BenchError(f"{name} exited; its log:\n" + H.tail(srv.log))
            out = subprocess.run(["curl", "-s", "--cacert", str(Path(self.hb.dir) / "ca" / "ca.crt"),
                                  "--resolve", f"localhost:{srv.port}:127.0.0.1",
                                  "--http1.1" if self.args.h1 else "--http2", "-w", "%{http_version}",
                                  url], capture_output=True, timeout=10)
            want = b"1.1" if self.args.h1 else b"2"
            if out.stdout == self.hb.body + want:
                self.load(srv, self.args.warmup)
                return
            last = out.stdout[-80:].decode("latin-1") + out.stderr[-200:].decode("latin-1")
            time.sleep(0.2)
        raise H.BenchError(f"{name} not ready: {last}; its log:\n" + H.tail(srv.log))

    def load(self, srv: H.Server, seconds: float, log_file: str | None = None) -> str:
        a = self.args
        argv = [a.h2load, "-t1", f"-c{a.clients}", f"-m{1 if a.h1 else a.streams}",
                f"-D{max(1, round(seconds))}", *(["--h1"] if a.h1 else []),
                *([f"--log-file={log_file}"] if log_file else []),
                f"https://127.0.0.1:{srv.port}/bench"]
        try:
            done = subprocess.run(H.pinned(a.client_cpu, argv), capture_output=True, text=True,
                                  timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise H.BenchError(f"h2load did not finish within {seconds + 60:.0f}s") from None
        if done.returncode != 0:
            raise H.BenchError(f"h2load exited with {done.returncode}: {done.stderr or done.stdout}")
        return done.stdout

    def measure(self, name: str, srv: H.Server) -> dict:
        a = self.args
        waited, _ = H.wait_idle(a.idle_wait)
        log_file = self.hb.path(f"{name}-requests.log")
        watch = H.CPUWatch({"server": srv.proc.pid})
        out = self.load(srv, a.seconds, log_file)
        r = watch.result()
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
        if not m:
            raise H.BenchError("h2load printed no req/s:\n" + out)
        r["rps"] = float(m.group(1))
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
        r["requests"], r["succeeded"], r["failed"] = int(m.group(1)), int(m.group(4)), int(m.group(5))
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        r["non_2xx"] = sum(map(int, m.groups()[1:])) if m else -1
        micros = []
        with open(log_file) as f:   # start time, status, microseconds per request
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    micros.append(int(parts[2]))
        os.unlink(log_file)
        micros.sort()
        r["p99_ms"] = round(micros[int(0.99 * (len(micros) - 1))] / 1000, 2) if micros else None
        r["p50_ms"] = round(micros[len(micros) // 2] / 1000, 2) if micros else None
        r["latency_cdf"] = [[q, micros[int(q * (len(micros) - 1))] / 1000]
                            for q in (0.5, 0.75, 0.9, 0.99, 0.999)] if micros else None
        r.update(name=name, ok=r["failed"] == 0 and r["non_2xx"] == 0, idle_wait_s=round(waited, 1))
        r["cpu_us_per_req"] = round(r.get("server_cpu_pct", 0) * 1e4 / r["rps"], 2) if r["rps"] else None
        print(f"  {name:9} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
              f"  server cpu {r.get('server_cpu_pct', 0):.0f}% = {r['cpu_us_per_req']} us/req"
              f"  (others {r.get('others_cpu_pct', 0):.0f}% of a core){'' if r['ok'] else '  ERRORS'}",
              flush=True)
        return r

    def close(self) -> None:
        self.hb.procs.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.hb.dir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each target counts")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--streams", type=int, default=10, help="concurrent streams per connection (-m)")
    p.add_argument("--h1", action="store_true", help="HTTP/1.1 over TLS instead (h2load --h1, -m1)")
    p.add_argument("--only", type=lambda s: s.split(","), default=TARGETS)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--upstream-cpu", default="1")
    p.add_argument("--idle-wait", type=float, default=5, help="seconds to wait for quiet cores before each run")
    p.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = p.parse_args(argv)

    def on_sigterm(signum, frame):  # stop the servers below, as on Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    bench = H2Bench(args)
    print(f"bench/h2.py: {'HTTP/1.1' if args.h1 else 'HTTP/2'} over TLS 1.3, -c{args.clients} "
          f"-m{1 if args.h1 else args.streams}, 1 KiB; files in {bench.hb.dir}", flush=True)
    results: list[dict] = []
    failed = False
    try:
        servers = {}
        for name in [t for t in TARGETS if t in args.only]:
            try:
                servers[name] = bench.start(name)
                bench.ready(name, servers[name])
            except H.BenchError as e:
                failed = True
                print(f"  {name}: FAILED: {e}", flush=True)
                servers.pop(name, None)
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for name, srv in servers.items():
                try:
                    r = bench.measure(name, srv)
                    failed |= not r["ok"]
                    results.append(r)
                except H.BenchError as e:
                    failed = True
                    print(f"  {name}: FAILED: {e}", flush=True)
    finally:
        bench.close()
    best: dict = {}
    for r in results:
        if r["name"] not in best or r["rps"] > best[r["name"]]["rps"]:
            best[r["name"]] = r
    f, n = best.get("farts"), best.get("nginx")
    if f and n:
        print(f"\nbest of {args.rounds}: farts-edge {f['rps']:.0f} req/s (p99 {f['p99_ms']} ms), "
              f"nginx {n['rps']:.0f} req/s (p99 {n['p99_ms']} ms): ratio {f['rps'] / n['rps']:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "only"}, "results": results,
                       "best": best}, out, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
