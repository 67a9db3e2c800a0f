#!/usr/bin/env python3
"""TLS handshakes per second: farts-edge's HTTPS listener against nginx, new and resumed.

    python bench/tls.py [--rounds 3] [--seconds 5] [--procs 4] [--only farts,nginx] [--json FILE]

Both servers are the ones bench/h2.py starts (same certificate from a local CA: an
ECDSA P-256 key from farts.pki, TLS 1.3, server pinned to --server-cpu). The load is
--procs `openssl s_time` processes pinned to --client-cpu, each connecting again and
again for --seconds:

  new      `s_time -new`: a full handshake per connection (no resumption);
  resumed  `s_time -reuse`: the first handshake full, then the session resumed (TLS 1.3
           tickets, which both servers issue by default).

Each connection carries one request (`-www /bench`, HTTP/1.0, the 1 KiB answer, then
close): a TLS 1.3 session ticket arrives after the handshake, and s_time keeps a session
for -reuse only once it has read from it. Handshakes/s is the
sum over the processes of their connections divided by the window; the server's CPU
share over the window gives handshakes per server CPU-second, the fair figure when the
client core is the bound (`openssl` does as much crypto per handshake as the server).
The table keeps each target's best round per mode and prints farts/nginx ratios.

Bounded: every process has a timeout, only 127.0.0.1 on free ports, everything stopped
by PID (bench/http.py's process helpers). Not run in CI.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_h2", os.path.join(HERE, "h2.py"))
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)
H = B.H

MODES = {"new": "-new", "resumed": "-reuse"}
CONNECTIONS = re.compile(r"(\d+) connections in ([\d.]+)s")


def handshakes(srv, mode: str, seconds: float, procs: int, cpu: str, openssl: str) -> dict:
    watch = H.CPUWatch({"server": srv.proc.pid})
    argv = [openssl, "s_time", "-connect", f"127.0.0.1:{srv.port}", "-www", "/bench", MODES[mode],
            "-time", str(int(seconds))]
    children = [subprocess.Popen(H.pinned(cpu, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(procs)]
    outs = []
    for c in children:
        try:
            outs.append(c.communicate(timeout=seconds + 30)[0])
        except subprocess.TimeoutExpired:
            c.kill()
            outs.append(c.communicate()[0])
    r = watch.result()
    total = 0
    for out in outs:
        m = CONNECTIONS.findall(out)
        if not m:
            raise H.BenchError("s_time printed no connection count:\n" + out[-500:])
        total += int(m[0][0])     # (the first line: the connections of the timed run)
    r["handshakes_per_s"] = round(total / seconds)
    cpu_pct = r.get("server_cpu_pct") or 0
    r["per_server_cpu_s"] = round(total / seconds / (cpu_pct / 100)) if cpu_pct else None
    r["ok"] = all(c.returncode == 0 for c in children) and total > 0
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--procs", type=int, default=4, help="openssl s_time processes at once")
    p.add_argument("--only", type=lambda s: s.split(","), default=B.TARGETS)
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--openssl", default=shutil.which("openssl") or "openssl")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = p.parse_args(argv)
    # bench/h2.py's servers and readiness check (HTTP/1.1 over TLS), no warm-up load.
    h2args = argparse.Namespace(**vars(args), h1=True, warmup=0, clients=1, streams=1, upstream_cpu=args.client_cpu,
                                idle_wait=0)
    bench = B.H2Bench(h2args)
    print(f"bench/tls.py: TLS 1.3 handshakes, {args.procs} x openssl s_time on cpu {args.client_cpu}, "
          f"servers on cpu {args.server_cpu}; files in {bench.hb.dir}", flush=True)
    results, failed = [], False
    try:
        servers = {}
        for name in [t for t in B.TARGETS if t in args.only]:
            servers[name] = bench.start(name)
            bench.ready(name, servers[name])
        for rnd in range(args.rounds):
            for mode in args.modes:
                for name, srv in servers.items():
                    r = handshakes(srv, mode, args.seconds, args.procs, args.client_cpu, args.openssl)
                    r.update(name=name, mode=mode, round=rnd + 1)
                    failed |= not r["ok"]
                    results.append(r)
                    print(f"  round {rnd + 1} {mode:8} {name:6} {r['handshakes_per_s']:>7} handshakes/s, "
                          f"server cpu {r.get('server_cpu_pct', 0):.0f}% = {r['per_server_cpu_s']} per CPU-s"
                          f"{'' if r['ok'] else '  ERRORS'}", flush=True)
    except H.BenchError as e:
        print(f"FAILED: {e}", flush=True)
        failed = True
    finally:
        bench.close()
    best: dict = {}
    for r in results:
        k = (r["name"], r["mode"])
        if k not in best or r["handshakes_per_s"] > best[k]["handshakes_per_s"]:
            best[k] = r
    print("\n| mode | farts-edge /s | nginx /s | ratio | farts per CPU-s | nginx per CPU-s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in args.modes:
        f, n = best.get(("farts", mode)), best.get(("nginx", mode))
        if f and n:
            per = (f"{f['per_server_cpu_s'] / n['per_server_cpu_s']:.2f}x"
                   if f["per_server_cpu_s"] and n["per_server_cpu_s"] else "-")
            print(f"| {mode} | {f['handshakes_per_s']:,} | {n['handshakes_per_s']:,} | "
                  f"{f['handshakes_per_s'] / n['handshakes_per_s']:.2f}x | {f['per_server_cpu_s']:,} | "
                  f"{n['per_server_cpu_s']:,} | {per} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results}, out, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
