# ruff: noqa: E402  (the path fix below must run before "import dns")
"""Geo DNS: farts-edge against gdnsd (geoip plugin, same GeoLite2 database, same zone)
and Knot DNS (the same zone, static) on one core, in the same run.

Each server runs pinned to cpu 0, the load generator to cpu 1. Load generators:
``dnsload`` (bench/dnsload.c, built here: 100 queries in flight, recvmmsg/sendmmsg) and
Debian's ``dnsperf``. The query mix: 70% the geo name with an ECS /24 drawn from 1000
subnets the database places, 10% a static A, 10% MX at the apex, 10% NXDOMAIN; every
query carries EDNS and ECS. Also measured: the GeoLite2 index build (time, memory).

    bash ci/bench-setup
    .venv/bin/python bench/dns.py [--seconds 10] [--repeat 3] [--json out.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named dns.py: drop its folder from the path so "import dns" is dnspython.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time

import dns.edns
import dns.message
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nodeconf import node_toml

NODES = [("oregon", "us-west", 45.52, -122.68, "127.0.0.1", "127.0.0.11"),
         ("frankfurt", "eu-central", 50.11, 8.68, "127.0.0.2", "127.0.0.12"),
         ("singapore", "ap-southeast", 1.35, 103.82, "127.0.0.3", "127.0.0.13")]
SERVER_CPU, CLIENT_CPU = "0", "1"


def free_port() -> int:
    """A port free for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def subnets(db: str, count: int, seed: int = 1) -> list[str]:
    import maxminddb
    reader = maxminddb.open_database(db)
    rnd = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        net = ipaddress.ip_network((rnd.getrandbits(24) << 8, 24))
        rec = reader.get(net.network_address)
        if rec and "location" in rec:
            out.append(str(net))
    return out


def queries(db: str) -> list[bytes]:
    nets = subnets(db, 1000)
    rnd = random.Random(2)
    out = []
    for i in range(10000):
        r = rnd.random()
        name, rtype = (("edge.farts.test", "A") if r < 0.7 else ("www.farts.test", "A") if r < 0.8
                       else ("farts.test", "MX") if r < 0.9 else (f"n{i}.farts.test", "A"))
        addr, prefix = nets[i % len(nets)].split("/")
        q = dns.message.make_query(name, rtype, use_edns=0, payload=1232,
                                   options=[dns.edns.ECSOption(addr, int(prefix))])
        q.flags = 0   # authoritative traffic: RD clear, as resolvers send it
        out.append(q.to_wire())
    return out


# ---------------------------------------------------------------------------------------
# Servers


def dns_sections(port: int, db: str) -> dict:
    """The node's [dns] under test (bench/workers.py --route dns runs it too)."""
    return {"dns": {"enabled": True, "host": "127.0.0.1", "port": port, "zone": "farts.test",
                    "default_region": "eu-central", "rrl_rate": 0, "geoip_database": db,
                    "geo": [{"name": "edge", "answers": 2, "ttl": 30}],
                    "records": [{"name": "www", "type": "A", "value": "192.0.2.80"},
                                {"name": "@", "type": "MX", "value": "10 mail.farts.test."}]}}


def farts_serve(port: int, db: str) -> None:
    """Child mode: one DNSServer on the given port, ready line when the index is in."""
    import uvloop

    from farts import config
    from farts.dns import DNSServer
    from farts.members import Member, MemberMap

    cfg = config.parse(node_toml(dns_sections(port, db)), "bench.toml").dns
    members = MemberMap([Member(n[0], n[1], n[2], n[3], (n[4],)) for n in NODES])

    async def main():
        srv = DNSServer(cfg, members)
        await srv.start(wait_for_index=True)
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        f = srv.fast
        print(json.dumps({"hits": f.hits, "misses": f.misses, "recvmmsg": f.reads, "sendmmsg": f.sends,
                          "queries_per_recvmmsg": round((f.hits + f.misses) / max(f.reads, 1), 1)}
                         if f else {}), flush=True)
        await srv.stop()

    uvloop.run(main())


def gdnsd_files(d: Path, port: int, db: str) -> list[str]:
    (d / "zones").mkdir(parents=True)
    dcs = ", ".join(n[0] for n in NODES)
    coords = "\n".join(f"          {n[0]} => [ {n[2]}, {n[3]} ]" for n in NODES)
    # gdnsd answers with the nearest datacenter's addresses: two per datacenter, so the
    # answer has as many records as farts-edge's two nearest nodes.
    dcmap = "\n".join(f"          {n[0]} => [ {n[4]}, {n[5]} ]" for n in NODES)
    (d / "config").write_text(textwrap.dedent(f"""\
        options => {{
          listen => [ 127.0.0.1:{port} ]
          udp_threads => 1
          tcp_threads => 1
          run_dir => {d}/run
          state_dir => {d}/state
        }}
        plugins => {{ geoip => {{
          maps => {{ auto => {{
            geoip2_db => {db}
            datacenters => [ {dcs} ]
            auto_dc_coords => {{
{coords}
            }}
          }} }}
          resources => {{ edge => {{
            map => auto
            dcmap => {{
{dcmap}
            }}
          }} }}
        }} }}
        """))
    (d / "zones" / "farts.test").write_text(textwrap.dedent("""\
        @ 300 SOA ns1 hostmaster 1 3600 600 604800 30
        @ 300 NS ns1
        @ 300 MX 10 mail
        ns1 300 A 192.0.2.53
        www 300 A 192.0.2.80
        edge 30 DYNA geoip!edge
        """))
    return ["gdnsd", "-c", str(d), "start"]


def knot_files(d: Path, port: int) -> list[str]:
    for sub in ("run", "storage"):
        (d / sub).mkdir(parents=True)
    (d / "storage" / "farts.test.zone").write_text(textwrap.dedent("""\
        $ORIGIN farts.test.
        @ 300 SOA ns1 hostmaster 1 3600 600 604800 30
        @ 300 NS ns1
        @ 300 MX 10 mail
        ns1 300 A 192.0.2.53
        www 300 A 192.0.2.80
        edge 30 A 127.0.0.2
        edge 30 A 127.0.0.1
        """))
    (d / "knot.conf").write_text(textwrap.dedent(f"""\
        server:
          rundir: "{d}/run"
          listen: 127.0.0.1@{port}
          udp-workers: 1
          tcp-workers: 1
          background-workers: 1
        database:
          storage: "{d}/storage"
        zone:
          - domain: farts.test
            file: "farts.test.zone"
            storage: "{d}/storage"
        log:
          - target: stderr
            any: error
        """))
    return ["knotd", "-c", str(d / "knot.conf")]


def wait_answering(port: int, timeout: float = 120) -> None:
    q = dns.message.make_query("www.farts.test", "A").to_wire()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            try:
                s.sendto(q, ("127.0.0.1", port))
                s.recv(4096)
                return
            except OSError:
                time.sleep(0.2)
    raise RuntimeError(f"nothing answers on {port}")


class Server:
    def __init__(self, name: str, argv: list[str], port: int, ready_line: bool = False) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        if ready_line:
            line = self.proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{name}: {line!r} {self.proc.stderr.read()}")
        wait_answering(port)
        self._cpu0 = self.cpu()

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def run_dnsload(binary: Path, port: int, qfile: Path, seconds: float, inflight: int) -> dict:
    out = subprocess.run(["taskset", "-c", CLIENT_CPU, str(binary), "127.0.0.1", str(port), str(qfile),
                          str(seconds), str(inflight)], capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def run_dnsperf(port: int, qfile: Path, seconds: float) -> dict:
    # One ECS option for every query (dnsperf sends the same EDNS options each time).
    ecs = "0001" + "18" + "00" + "510245"   # 81.2.69.0/24: Europe in GeoLite2
    out = subprocess.run(["taskset", "-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                          "-d", str(qfile), "-l", str(seconds), "-c", "1", "-T", "1", "-q", "100",
                          "-E", f"8:{ecs}"], capture_output=True, text=True, timeout=seconds + 30)
    res = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Queries per second:"):
            res["qps"] = float(line.split(":")[1])
        elif line.startswith("Average Latency (s):"):
            res["avg_ms"] = float(line.split(":")[1].split()[0]) * 1e3
        elif line.startswith("Queries lost:"):
            res["lost"] = int(line.split(":")[1].split()[0])
    if "qps" not in res:
        raise RuntimeError(out.stdout + out.stderr)
    return res


def index_build_figures(db: str) -> dict:
    """In a fresh process: build time, RSS growth, index table bytes."""
    code = textwrap.dedent(f"""
        import json, resource, time, gc
        from farts.dns.geoindex import build
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter(); data = build({db!r}); seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_now = int(open('/proc/self/statm').read().split()[1]) * 4096
        print(json.dumps({{"seconds": seconds, "records": data.records, "ranges": data.index.ranges,
                          "locations": data.index.nloc, "table_bytes": data.index.nbytes,
                          "peak_rss_growth_mb": (peak - before) / 1024, "rss_after_mb": rss_now / 2**20}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    return json.loads(out.stdout)


def miss_path_rate(db: str, wires: list[bytes]) -> float:
    """Queries/s of Responder.respond (what the C reply cache calls on a miss), no sockets."""
    from farts import config
    from farts.dns.geoindex import GeoSource, build
    from farts.dns.responder import Responder
    from farts.dns.zone import Zone
    from farts.members import Member, MemberMap

    cfg = config.parse(node_toml(dns_sections(0, db)), "bench.toml").dns
    geo = GeoSource(db, 1e9, initial=build(db))
    r = Responder(Zone(cfg), MemberMap([Member(n[0], n[1], n[2], n[3], (n[4],)) for n in NODES]), geo)
    client = bytes([127, 0, 0, 1])
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        for w in wires:
            r.respond(w, client, False)
        best = max(best, len(wires) / (time.perf_counter() - started))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--only", default="farts,gdnsd,knot")
    ap.add_argument("--tools", default="dnsload,dnsperf")
    ap.add_argument("--json")
    ap.add_argument("--serve-farts", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from farts.dns.geoindex import default_database
    db = args.db or default_database()
    if args.serve_farts:
        farts_serve(args.serve_farts, db)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    try:
        binary = tmp / "dnsload"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / "dnsload.c")], check=True)
        wires = queries(db)
        qfile = tmp / "queries.bin"
        qfile.write_bytes(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
        pfile = tmp / "queries.txt"
        pfile.write_text("".join(f"{dns.message.from_wire(w).question[0].name.to_text()} "
                                 f"{dns.rdatatype.to_text(dns.message.from_wire(w).question[0].rdtype)}\n"
                                 for w in wires))
        targets = args.only.split(",")
        servers: dict[str, Server] = {}
        results: dict[str, dict] = {}
        try:   # all servers up at once (idle ones cost nothing), measured interleaved
            for target in targets:
                port = free_port()
                if target == "farts":
                    servers[target] = Server("farts", [sys.executable, __file__, "--serve-farts", str(port),
                                                       "--db", db], port, ready_line=True)
                elif target == "gdnsd":
                    servers[target] = Server("gdnsd", gdnsd_files(tmp / "gdnsd", port, db), port)
                else:
                    servers[target] = Server("knot", knot_files(tmp / "knot", port), port)
            for _ in range(args.repeat):
                for target in targets:
                    srv = servers[target]
                    for tool in args.tools.split(","):
                        if tool == "dnsload":
                            run_dnsload(binary, srv.port, qfile, 1, args.inflight)   # warm-up
                            cpu0 = srv.cpu()
                            r = run_dnsload(binary, srv.port, qfile, args.seconds, args.inflight)
                        else:
                            cpu0 = srv.cpu()
                            r = run_dnsperf(srv.port, pfile, args.seconds)
                        r["server_cpu"] = round((srv.cpu() - cpu0) / args.seconds, 2)
                        print(f"{target:6} {tool:8} {json.dumps(r)}", flush=True)
                        best = results.get(f"{target}/{tool}")
                        if best is None or r["qps"] > best["qps"]:
                            results[f"{target}/{tool}"] = r
        finally:
            for name, srv in servers.items():
                tail = srv.stop()
                if name == "farts" and tail.strip():
                    print("farts reply cache:", tail.strip().splitlines()[-1])
        print("\n| target | load generator | queries/s | avg | p99 | server CPU | queries per server CPU-s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for key, r in results.items():
            t, tool = key.split("/")
            p99 = f"{r['p99_ms']:.3f} ms" if "p99_ms" in r else "—"
            per_cpu = f"{r['qps'] / r['server_cpu']:,.0f}" if r["server_cpu"] else "—"
            print(f"| {t} | {tool} | {r['qps']:,.0f} | {r['avg_ms']:.3f} ms | {p99} | {r['server_cpu']:.0%} | {per_cpu} |")
        for tool in args.tools.split(","):
            f, g, k = (results.get(f"{t}/{tool}") for t in ("farts", "gdnsd", "knot"))
            if f and g:
                print(f"{tool}: farts/gdnsd = {f['qps'] / g['qps']:.2f}", end="")
                print(f", farts/knot = {f['qps'] / k['qps']:.2f}" if k else "")
        idx = index_build_figures(db)
        print("GeoLite2 index build:", json.dumps(idx))
        idx["miss_path_qps"] = miss_path_rate(db, wires)
        print(f"Responder.respond (the reply cache's miss path, no sockets): {idx['miss_path_qps']:,.0f} queries/s")
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results, "index": idx}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
