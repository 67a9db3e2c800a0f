"""Instructions per proxied request, counted by callgrind: a figure a loaded machine
does not move (requests/s on a shared machine do).

The server under test (farts-edge's proxy route, nginx ``proxy_pass``, or the shared
upstream nginx alone) runs under ``valgrind --tool=callgrind --instr-atstart=no``;
once it answers, instrumentation is switched on, a warm-up runs, the counters are
zeroed, then ``h2load --h1 -c C -n SMALL`` and ``-n LARGE`` run, each followed by a
dump. Instructions per request = (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL): startup,
idle-loop ticks and per-run constants cancel out. The upstream (nginx, body from memory,
as in bench/http.py) runs natively beside it.

    PYTHONPATH=$PWD .venv/bin/python bench/proxy_callgrind.py [--target farts|nginx|upstream]
        [--small 5000] [--large 20000] [--connections 10] [--top 25] [--tree DIR] [--pipeline N]

Prints Ir per request and the top functions (self cost) of the LARGE run, from
callgrind_annotate; the output files stay in the printed temp directory. User-space
instructions only: the kernel's share (the syscalls) is not counted, so compare the
syscalls per request separately (``--strace``: natively, strace attached for LARGE requests).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# bench/http.py would shadow the stdlib's http package (urllib imports it): this folder off sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import argparse  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

ROOT = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(HERE, "peers"), ROOT]
from body import make_body  # noqa: E402

from bench.callgrind import control, per_unit, top_functions  # noqa: E402
from bench.proxy_inprocess import node_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(d: str, name: str, block: str) -> list[str]:
    os.makedirs(os.path.join(d, name, "tmp"), exist_ok=True)
    path = os.path.join(d, name, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/{name}/nginx.pid;
error_log {d}/{name}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/{name}/tmp/body;
    proxy_temp_path {d}/{name}/tmp/proxy;
    fastcgi_temp_path {d}/{name}/tmp/fastcgi;
    uwsgi_temp_path {d}/{name}/tmp/uwsgi;
    scgi_temp_path {d}/{name}/tmp/scgi;
    access_log off;
{block}
}}
""")
    return ["nginx", "-c", path, "-p", f"{d}/{name}/", "-e", f"{d}/{name}/error.log"]


def upstream(d: str, port: int) -> list[str]:
    """The shared upstream of bench/http.py: nginx, the body from memory, endless keep-alive."""
    return nginx_conf(d, "upstream", f"""    sendfile off;
    open_file_cache max=100;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {d}/www;
        location / {{ rewrite ^ /bench break; }}
    }}""")


def nginx_proxy(d: str, port: int, up_port: int) -> list[str]:
    return nginx_conf(d, "proxy", f"""    upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")


def farts(d: str, port: int, up_port: int, python: str, pipeline: int) -> list[str]:
    os.makedirs(os.path.join(d, "farts"), exist_ok=True)
    path = os.path.join(d, "farts", "farts.toml")
    with open(path, "w") as f:
        f.write(node_config(f"{d}/farts/data", port, free_port(), f"127.0.0.1:{up_port}", pipeline))
    return [python, "-m", "farts.cli", "serve", "--config", path]


def wait_ready(url: str, body: bytes, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200 and r.read() == body:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {timeout}s")


def h2load(url: str, n: int, c: int) -> None:
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(c), url],
                         capture_output=True, text=True, timeout=1800).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m or int(m.group(2)) != n:
        raise SystemExit(f"h2load: not all {n} requests succeeded:\n{out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("farts", "nginx", "upstream"), default="farts")
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--strace", action="store_true", help="count syscalls per request instead (no valgrind)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--pipeline", type=int, default=1, help="farts: [upstreams.up] pipeline (1: off)")
    ap.add_argument("--tree", default=ROOT, help="the farts-edge tree the node runs (default: this one)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="farts-callgrind-")
    os.makedirs(f"{d}/www")
    body = make_body(1024)
    with open(f"{d}/www/bench", "wb") as f:
        f.write(body)
    up_port, port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        if a.target == "upstream":
            argv, port = upstream(d, up_port), up_port
        else:
            procs.append(subprocess.Popen(upstream(d, up_port), stdout=subprocess.DEVNULL,
                                          stderr=open(f"{d}/upstream.log", "w")))
            wait_ready(f"http://127.0.0.1:{up_port}/x", body, procs[0], 30)
            argv = (farts(d, port, up_port, a.python, a.pipeline) if a.target == "farts"
                    else nginx_proxy(d, port, up_port))
        out = f"{d}/callgrind.out"
        wrap = [] if a.strace else ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                    f"--callgrind-out-file={out}"]
        env = dict(os.environ, PYTHONPATH=a.tree)
        proc = subprocess.Popen([*wrap, *argv], cwd=a.tree, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(f"{d}/server.log", "w"))
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/proxy/x"
        wait_ready(url, body, proc, 600)
        if a.strace:   # attached for the measured requests only
            h2load(url, a.warmup, a.connections)
            tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(proc.pid), "-o", f"{d}/strace.txt"],
                                      stderr=subprocess.DEVNULL)
            time.sleep(2)
            h2load(url, a.large, a.connections)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
            text = open(f"{d}/strace.txt").read()
            print(text)
            total = [line.split()[3] for line in text.splitlines() if line.endswith(" total")]
            if total:
                print(f"{a.target}: {int(total[0]) / a.large:.2f} syscalls per request "
                      f"(strace attached for {a.large} requests; {d})")
            return
        control(proc.pid, "-i", "on")
        h2load(url, a.warmup, a.connections)
        control(proc.pid, "-z")
        per, counted, dump = per_unit(proc.pid, out, lambda n: h2load(url, n, a.connections), a.small, a.large)
        print(f"{a.target}: {per:,.0f} instructions per request ({counted} requests; -c {a.connections}; {d})")
        top_functions(dump, a.large, "request", a.top)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
