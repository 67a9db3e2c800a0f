#!/usr/bin/env python3
"""Requests (or DNS queries) per server CPU-second of a fixed or a proxy route, or of the
geo DNS, by number of workers.

    python bench/workers.py [--workers 1,2] [--seconds 5] [--connections 64] [--route fixed|proxy|dns]

For each count, a node (`farts-edge serve`, ``[node] workers = N``) is started pinned
with taskset to cores 0..min(N, cores)-1, wrk (`-t1`) pinned to the last core; after a
one-second warm-up, wrk runs --seconds while the CPU time (user + system, from
/proc/PID/stat) of the node process and all its children is read before and after.
The figure is requests answered / server CPU seconds used: on a machine with fewer
cores than workers + wrk, req/s is bounded by the sharing, but the per-CPU-second
figure still says what a core of serving yields (1.0x = linear scaling). The proxy
route's upstream is an nginx (one process, the body from memory) on wrk's core; its CPU
is not the server's. Only 127.0.0.1, free ports, a temp directory; what it starts is
stopped by its PID.

--route dns: the node answers DNS on every worker (the query mix, zone and GeoLite2
database of bench/dns.py), loaded by --dns-clients dnsload processes (bench/dnsload.c,
one UDP socket each, 100 queries in flight between them) on the last core: the kernel
places each client's socket on one worker by the hash of its address, so several
clients reach every worker. The run starts once every worker has built its geo index.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # (for bench.nodeconf and bench.dns)
TICK = os.sysconf("SC_CLK_TCK")

from bench.nodeconf import local_node, node_toml  # noqa: E402

NGINX = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])   # utime, stime
    return total / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(tmp: Path, cpu: str, body: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX.format(dir=tmp, port=port, body=body))
    proc = subprocess.Popen(["taskset", "-c", cpu, "nginx", "-c", str(conf), "-p", f"{tmp}/", "-e",
                             f"{tmp}/error.log"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the nginx upstream did not start")


def start(workers: int, cpus: str, tmp: Path, routes: dict, listener: str = "http") -> tuple[subprocess.Popen, str]:
    """A node of ``workers`` with ``routes`` (its config's other sections: bench/nodeconf.py)."""
    data = tmp / f"w{workers}"
    data.mkdir()
    node = local_node(data, workers=workers, hosts=("127.0.0.1",))
    node["tenants"][0]["api_keys"] = ["k"]
    cfg = data / "farts.toml"
    cfg.write_text(node_toml({**node, **routes}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "farts.cli", "--log-level", "WARNING",
                             "serve", "--config", str(cfg)], stdout=subprocess.PIPE, env=env)
    buf, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline and b"Ctrl-C stops the node." not in buf:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            buf += os.read(proc.stdout.fileno(), 65536)
    m = re.search(rb"%s\s+(\w+://\S+)" % listener.encode(), buf)
    if m is None:
        proc.kill()
        raise SystemExit(f"node with {workers} workers did not start: {buf!r}")
    return proc, m.group(1).decode()


def dns_routes(tmp: Path) -> tuple[dict, Path, Path]:
    """The [dns] config (a free port), the dnsload binary and its query file."""
    import bench.dns as dnsbench  # (it drops bench/ from sys.path: "dns" is dnspython)
    from farts.dns.geoindex import default_database
    db = default_database()
    binary, qfile = tmp / "dnsload", tmp / "queries.bin"
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / "dnsload.c")], check=True)
        qfile.write_bytes(b"".join(len(w).to_bytes(2, "big") + w for w in dnsbench.queries(db)))
    sections = dnsbench.dns_sections(dnsbench.free_port(), db)
    sections["dns"]["nodes"] = [{"id": n[0], "region": n[1], "lat": n[2], "lon": n[3], "addresses": [n[4]]}
                                for n in dnsbench.NODES]
    return sections, binary, qfile


def indexes_built(admin: str) -> float:
    """Geo index builds summed over the node's workers (from its /metrics)."""
    import urllib.request
    text = urllib.request.urlopen(admin + "metrics", timeout=30).read().decode()
    m = re.search(r'^farts_dns_index_builds\{result="ok"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def dnsload(binary: Path, port: int, qfile: Path, seconds: float, clients: int, cpu: str) -> tuple[int, float, str]:
    """``clients`` dnsload processes at once: (answered, queries/s, the worst client's p99)."""
    procs = [subprocess.Popen(["taskset", "-c", cpu, str(binary), "127.0.0.1", str(port), str(qfile), str(seconds),
                               str(max(1, 100 // clients))], stdout=subprocess.PIPE, text=True)
             for _ in range(clients)]
    runs = [json.loads(p.communicate(timeout=seconds + 30)[0]) for p in procs]
    if any(r["other_rcode"] for r in runs):
        raise SystemExit(f"dnsload saw errors: {runs}")
    n = sum(r["answered"] for r in runs)
    return n, n / max(r["seconds"] for r in runs), f"{max(r['p99_ms'] for r in runs):.2f}ms"


def wrk(url: str, seconds: float, connections: int, cpu: str) -> tuple[int, float, str]:
    out = subprocess.run(["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                          url], capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    n = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    return n, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), p99


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", default="1,2")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--server-cpus", help="pin the node (all its workers) to these CPUs, e.g. 0 (default: "
                   "0..N-1 for N workers): every worker on wrk-free cores measures a worker's own cost")
    p.add_argument("--route", choices=("fixed", "proxy", "dns"), default="fixed")
    p.add_argument("--dns-clients", type=int, default=8, help="dnsload processes (--route dns)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    results = []
    body = "x" * 1024
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        upstream = None
        routes: dict = {"routes": [{"prefix": "/", "kind": "static", "body": body}]}
        if args.route == "proxy":
            upstream, port = start_upstream(Path(tmp), str(cores - 1), body)
            routes = {"upstreams": {"app": {"servers": [f"127.0.0.1:{port}"]}},
                      "routes": [{"prefix": "/", "kind": "proxy", "upstream": "app"}]}
        try:
            if args.route == "dns":
                run_dns(args, cores, Path(tmp), results)
            else:
                run_all(args, cores, Path(tmp), routes, results)
        finally:
            if upstream is not None:
                upstream.terminate()
                upstream.wait(10)
    report(args, results)
    return 0


def run_all(args, cores: int, tmp: Path, routes: dict, results: list) -> None:
    for workers in [int(w) for w in args.workers.split(",")]:
        cpus = args.server_cpus or f"0-{min(workers, cores) - 1}"
        proc, url = start(workers, cpus, tmp, routes)
        try:
            wrk(url, 1, args.connections, str(cores - 1))   # warm-up
            before = cpu_seconds(proc.pid)
            n, rps, p99 = wrk(url, args.seconds, args.connections, str(cores - 1))
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        row = {"route": args.route, "workers": workers, "server_cpus": cpus, "requests": n,
               "req_per_s": round(rps), "server_cpu_s": round(used, 2),
               "req_per_cpu_s": round(n / used) if used else None, "p99": p99}
        results.append(row)
        print(json.dumps(row), flush=True)


def run_dns(args, cores: int, tmp: Path, results: list) -> None:
    load = str(cores - 1)
    for workers in [int(w) for w in args.workers.split(",")]:
        cpus = f"0-{min(workers, cores) - 1}"
        routes, binary, qfile = dns_routes(tmp)
        proc, admin = start(workers, cpus, tmp, routes, "admin")
        port = routes["dns"]["port"]
        try:
            deadline = time.monotonic() + 300
            while indexes_built(admin) < workers and time.monotonic() < deadline:
                time.sleep(0.5)
            dnsload(binary, port, qfile, 1, args.dns_clients, load)   # warm-up
            before = cpu_seconds(proc.pid)
            n, qps, p99 = dnsload(binary, port, qfile, args.seconds, args.dns_clients, load)
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        row = {"route": "dns", "workers": workers, "server_cpus": cpus, "requests": n, "req_per_s": round(qps),
               "server_cpu_s": round(used, 2), "req_per_cpu_s": round(n / used) if used else None, "p99": p99,
               "clients": args.dns_clients}
        results.append(row)
        print(json.dumps(row), flush=True)


def report(args, results: list) -> None:
    base = results[0]["req_per_cpu_s"]
    for row in results:
        row["efficiency_vs_first"] = round(row["req_per_cpu_s"] / base, 2) if base else None
        print(f"workers={row['workers']}: {row['req_per_s']} req/s, {row['req_per_cpu_s']} req per server "
              f"CPU-second ({row['efficiency_vs_first']}x the first), p99 {row['p99']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": socket.gethostname(), "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
