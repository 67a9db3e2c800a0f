"""Instructions per request on the hot routes, counted by callgrind: the fixed route and
CDN hits (1 KiB from memory, 100 KiB by sendfile), or bare uvloop+httptools' fixed answer
for comparison. A figure a loaded machine does not move (requests/s on a shared one do).

One node (or the bare server) runs under ``valgrind --tool=callgrind --instr-atstart=no``
with a static route (/bench, 1 KiB, as bench/http.py's farts-fixed) and a CDN route (/,
in front of an nginx origin with Cache-Control: max-age=3600, as bench/cdn.py). For each
target in turn: a warm-up (the CDN object becomes a hit), the counters zeroed, then
``h2load --h1 -c C -n SMALL`` and ``-n LARGE``, each followed by a dump; instructions
per request = (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL), so startup and per-run
constants cancel out (bench/proxy_callgrind.py's method). The loop's timers do not: their
share grows with the wall time the run takes under valgrind (a loaded machine's runs
count more), so the read path's own figure (libuv's stream read callback, inclusive:
parse, route, answer, write) is printed beside the total; compare that one.

    PYTHONPATH=$PWD .venv/bin/python bench/hot_callgrind.py [--only fixed,cdn-1k,cdn-100k|bare]
        [--small 2000] [--large 8000] [--connections 8]

User-space instructions only (the kernel's share, the syscalls, is not counted).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

ROOT = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(HERE, "peers"), ROOT]
from body import make_body  # noqa: E402

from bench.callgrind import control, dumps  # noqa: E402
from bench.cdn import H, node_sections  # noqa: E402
from bench.nodeconf import node_toml  # noqa: E402
from bench.proxy_callgrind import h2load, nginx_conf, wait_ready  # noqa: E402

SIZES = {"cdn-1k": 1024, "cdn-100k": 102400}


def origin(d: str, port: int) -> list[str]:
    return nginx_conf(d, "origin", f"""    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location / {{ add_header Cache-Control "max-age=3600"; }}
    }}""")


def static_route() -> dict:
    """bench/http.py's farts-fixed route (1 KiB), beside the CDN route."""
    return {"prefix": "/bench", "kind": "static", "body": make_body(1024).decode("ascii")}


def read_path_ir(dump: str) -> int:
    """Ir inclusive of libuv's stream read callback: the requests' own work (parse, route,
    answer, write), without the loop's timers, whose share per request grows with the
    wall time valgrind takes (and so with the machine's load)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                         capture_output=True, text=True, timeout=600).stdout
    for line in out.splitlines():
        if "uv__stream_io" in line and re.match(r"\s*[\d,]+ ", line):
            return int(line.split()[0].replace(",", ""))
    raise SystemExit(f"no uv__stream_io in {dump}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="fixed,cdn-1k,cdn-100k",
                    help="comma-separated: fixed, cdn-1k, cdn-100k (one node), or bare")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=8000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--tree", default=ROOT, help="the farts-edge tree the node runs (default: this one)")
    a = ap.parse_args()
    targets = a.only.split(",")
    d = tempfile.mkdtemp(prefix="farts-hot-callgrind-")
    os.makedirs(f"{d}/www")
    os.makedirs(f"{d}/farts")
    bodies = {"fixed": make_body(1024), "bare": make_body(1024)}
    for name, size in SIZES.items():
        bodies[name] = os.urandom(size)
        with open(f"{d}/www/obj-{size}", "wb") as f:
            f.write(bodies[name])
    port = H.free_port()
    paths = {"fixed": "/bench", "bare": "/bench", **{n: f"/obj-{s}" for n, s in SIZES.items()}}
    procs = H.Procs()
    try:
        if targets == ["bare"]:
            argv = [a.python, os.path.join(HERE, "peers", "bare_httptools.py"), "--port", str(port)]
        else:
            origin_port = H.free_port()
            procs.start("origin", origin(d, origin_port), f"{d}/origin.log")
            with open(f"{d}/farts/farts.toml", "w") as f:
                # workers = 1: the listeners in the process valgrind counts (the default,
                # "auto", would serve them from worker processes it does not see).
                node = node_sections(f"{d}/farts/data", port, H.free_port(), origin_port)
                node["node"]["workers"] = 1
                node["routes"].append(static_route())
                f.write(node_toml(node))
            argv = [a.python, "-m", "farts.cli", "serve", "--config", f"{d}/farts/farts.toml"]
        out = f"{d}/callgrind.out"
        proc = procs.start("server", ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                      f"--callgrind-out-file={out}", *argv], f"{d}/server.log",
                           cwd=a.tree, env=dict(os.environ, PYTHONPATH=a.tree))
        for i, name in enumerate(targets):
            url = f"http://127.0.0.1:{port}{paths[name]}"
            wait_ready(url, bodies[name], proc, 600)
            if i == 0:   # (callgrind answers its control only once the program runs)
                control(proc.pid, "-i", "on")
            h2load(url, a.warmup, a.connections)
            control(proc.pid, "-z")
            (n1, dump1, ir1), (n2, dump2, ir2) = dumps(proc.pid, out, lambda n, url=url: h2load(url, n, a.connections),
                                                      (a.small, a.large))
            rp1, rp2 = read_path_ir(dump1), read_path_ir(dump2)
            per = (ir2 - ir1) / (n2 - n1)
            print(f"{name}: {per:,.0f} instructions per request, {(rp2 - rp1) / (n2 - n1):,.0f} of them "
                  f"in the read path (Ir {ir1:,} for {n1} requests, {ir2:,} for {n2}; -c {a.connections}; "
                  f"{dump2})", flush=True)
        print(f"(where the instructions go: callgrind_annotate --inclusive=yes {d}/callgrind.out.N)")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
