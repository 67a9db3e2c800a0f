#!/usr/bin/env python3
"""CDN cache hits: farts-edge against nginx proxy_cache, in front of the same origin, with wrk.

    python bench/cdn.py [--rounds 5] [--seconds 5] [--connections 64] [--sizes 1024,102400] [--json FILE]
                        [--misses]

--misses measures cache misses instead: every request asks for a key never seen before
(the object's path with a new query, which every cache keys on), so each is filled from
the origin and stored (wrk -s MISSES_LUA; the prefix is new per measurement).

The origin is an nginx (worker_processes 1, pinned to the wrk core) serving one object per
size with Cache-Control: max-age=3600.  The caches under test all run at once, pinned to
core 0 (`taskset -c 0`; an idle one costs nothing):

  farts-cdn        farts-edge, a `kind = "cdn"` route (objects up to memory_object_bytes,
                   16 KiB by default, are answered from memory; larger ones by sendfile)
  nginx-cache      nginx proxy_cache, worker_processes 1, sendfile on, access_log off
  nginx-cache-nosf the same with sendfile off (nginx's better setting for small objects)

Each is warmed (the object is fetched until the answer is a cache hit), then measured in
--rounds interleaved rounds, each `taskset -c 1 wrk -t1 -cN -dS --latency URL` per target
and size; the table keeps each target's best round (req/s) and its lowest server CPU time
per answer, so that other people's work on a shared machine hurts every target alike.
Processes, ports, waits and stops come from bench/http.py's helpers (Procs, pinned,
wait_ready, run_wrk, CPUWatch).  Not run in CI; ci/bench-setup installs wrk and nginx.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_http", os.path.join(HERE, "http.py"))
H = importlib.util.module_from_spec(_spec)
sys.modules["bench_http"] = H
_spec.loader.exec_module(H)
from bench.nodeconf import local_node, node_toml  # noqa: E402  (bench/http.py put the repository on sys.path)

TARGETS = ["farts-cdn", "nginx-cache", "nginx-cache-nosf"]
MISSES_LUA = """-- bench/cdn.py --misses: every request a new cache key
local prefix, n = "x", 0
function init(args) prefix = args[1] or tostring(os.time()) end
function request()
  n = n + 1
  return wrk.format("GET", wrk.path .. "?miss=" .. prefix .. "-" .. n)
end
"""


def node_sections(data_dir: str, port: int, admin_port: int, origin_port: int) -> dict:
    """farts-cdn's node: one tenant, a `kind = "cdn"` route on / in front of the origin
    (bench/nodeconf.py's sections: bench/hot_callgrind.py adds a route)."""
    return {**local_node(data_dir, port, admin_port),
            "cdn": {"origins": {"o": {"url": f"http://127.0.0.1:{origin_port}/"}}},
            "routes": [{"prefix": "/", "kind": "cdn", "origin": "o"}]}


class CDNBench:
    def __init__(self, args) -> None:
        self.args = args
        # bench/http.py's Bench writes nginx configs and starts them pinned; reused here.
        self.hb = H.Bench(argparse.Namespace(**{**vars(args), "size": 1024}))
        self.www = os.path.join(self.hb.dir, "origin-files")
        os.makedirs(self.www)
        for size in args.sizes:
            with open(os.path.join(self.www, f"obj-{size}"), "wb") as f:
                f.write(os.urandom(size))
        self.origin = self._origin()

    def body(self, size: int) -> bytes:
        with open(os.path.join(self.www, f"obj-{size}"), "rb") as f:
            return f.read()

    def _origin(self) -> H.Server:
        port = H.free_port()
        block = ("    access_log off;\n    default_type application/octet-stream;\n"
                 f"    server {{\n        listen 127.0.0.1:{port};\n        root {self.www};\n"
                 "        location / {\n            add_header Cache-Control \"max-age=3600\";\n"
                 "        }\n    }")
        srv = self.hb._nginx("origin", block, self.args.client_cpu)
        size = self.args.sizes[0]
        H.wait_ready(srv.proc, srv.port, f"/obj-{size}", self.body(size), srv.log)
        return srv

    def start(self, name: str) -> H.Server:
        a = self.args
        if name == "farts-cdn":
            d = self.hb.path(name)
            os.makedirs(d, exist_ok=True)
            port, admin = H.free_port(), H.free_port()
            cfg = os.path.join(d, "farts.toml")
            with open(cfg, "w") as f:
                f.write(node_toml(node_sections(os.path.join(d, "data"), port, admin, self.origin.port)))
            log = os.path.join(d, "node.log")
            proc = self.hb.procs.start(name, H.pinned(a.server_cpu, [*self.hb.farts_command(), "serve",
                                                                     "--config", cfg]), log, cwd=H.ROOT)
            return H.Server(proc, port, "/", log, admin_port=admin)
        port = H.free_port()
        cache = self.hb.path(name, "cache")
        sendfile = "on" if name == "nginx-cache" else "off"
        block = (f"    access_log off;\n    sendfile {sendfile};\n"
                 f"    proxy_cache_path {cache} levels=1:2 keys_zone=c:10m max_size=1g inactive=1h;\n"
                 f"    server {{\n        listen 127.0.0.1:{port};\n"
                 "        location / {\n"
                 f"            proxy_pass http://127.0.0.1:{self.origin.port};\n"
                 "            proxy_cache c;\n            proxy_cache_valid 200 1h;\n"
                 "            proxy_cache_lock on;\n"
                 "            add_header X-Cache $upstream_cache_status;\n        }\n    }")
        return self.hb._nginx(name, block, a.server_cpu)

    def ready(self, name: str, srv: H.Server) -> None:
        """Each object answered, whole, from the cache."""
        for size in self.args.sizes:
            path = f"/obj-{size}"
            H.wait_ready(srv.proc, srv.port, path, self.body(size), srv.log)
            for _ in range(20):
                _, headers, _ = H.get("127.0.0.1", srv.port, path)
                if {k.lower(): v for k, v in headers.items()}.get("x-cache") == "HIT":
                    break
                time.sleep(0.1)
            else:
                raise H.BenchError(f"{name}: {path} never became a cache hit")
            H.run_wrk(self.args, f"http://127.0.0.1:{srv.port}{path}", self.args.warmup)

    def measure(self, name: str, srv: H.Server, size: int) -> dict:
        a = self.args
        waited, busy = H.wait_idle(a.idle_wait)
        watch = H.CPUWatch({"server": srv.proc.pid})
        script: tuple[str, ...] = ()
        if a.misses:
            lua = self.hb.path("misses.lua")
            with open(lua, "w") as f:
                f.write(MISSES_LUA)
            script = (lua, f"{name}-{size}-{time.monotonic_ns()}")
        r, _ = H.run_wrk(a, f"http://127.0.0.1:{srv.port}/obj-{size}", a.seconds, script)
        r.update(watch.result())
        r.update(name=name, size=size, misses=a.misses, ok=not r["non_2xx_3xx"] and not any(r["socket_errors"].values()),
                 mib_per_s=round(r["rps"] * size / 2 ** 20, 1), idle_wait_s=round(waited, 1),
                 busy_before=busy)
        # CPU time of the server per answer: steadier than req/s on a shared machine.
        r["cpu_us_per_req"] = round(r.get("server_cpu_pct", 0) * 1e4 / r["rps"], 2) if r["rps"] else None
        print(f"  {name:17} {size:>7} B  {r['rps']:>9.0f} req/s  {r['mib_per_s']:>8.1f} MiB/s"
              f"  server cpu {r.get('server_cpu_pct', 0):.0f}% = {r['cpu_us_per_req']} us/req"
              f"  (others {r.get('others_cpu_pct', 0):.0f}% of a core)", flush=True)
        return r

    def close(self) -> None:
        self.hb.procs.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.hb.dir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each target counts")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 102400])
    p.add_argument("--only", type=lambda s: s.split(","), default=TARGETS)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--upstream-cpu", default="1")
    p.add_argument("--idle-wait", type=float, default=5, help="seconds to wait for quiet cores before each run")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--misses", action="store_true", help="a new key per request: measure misses, not hits")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = p.parse_args(argv)

    def on_sigterm(signum, frame):  # stop the servers below, as on Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    bench = CDNBench(args)
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
        # Interleaved rounds: every target gets the same chance at a quiet moment of a
        # shared machine; the table keeps each one's best round.
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for size in args.sizes:
                for name, srv in servers.items():
                    try:
                        results.append(bench.measure(name, srv, size))
                    except H.BenchError as e:
                        failed = True
                        print(f"  {name}: FAILED: {e}", flush=True)
    finally:
        bench.close()
    best: dict = {}
    for r in results:
        k = (r["name"], r["size"])
        if k not in best or r["rps"] > best[k]["rps"]:
            best[k] = r
    by = best
    cpu_best = {}
    for r in results:  # the lowest CPU time per answer of each, over all rounds
        k = (r["name"], r["size"])
        if r["cpu_us_per_req"] and (k not in cpu_best or r["cpu_us_per_req"] < cpu_best[k]):
            cpu_best[k] = r["cpu_us_per_req"]
    print("\nsize      farts-cdn req/s   best nginx req/s   ratio   farts MiB/s   nginx MiB/s"
          "   cpu us/req farts / nginx")
    for size in args.sizes:
        f = by.get(("farts-cdn", size))
        ng = [by[(n, size)] for n in ("nginx-cache", "nginx-cache-nosf") if (n, size) in by]
        if f and ng:
            best = max(ng, key=lambda r: r["rps"])
            print(f"{size:>7} B  {f['rps']:>14.0f}   {best['rps']:>14.0f} ({best['name']})"
                  f"  {f['rps'] / best['rps']:.2f}x  {f['mib_per_s']:>10.1f}   {best['mib_per_s']:>10.1f}"
                  f"   {cpu_best.get(('farts-cdn', size))} / {cpu_best.get((best['name'], size))}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failed or not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
