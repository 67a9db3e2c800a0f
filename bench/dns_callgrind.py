"""Instructions per DNS query, counted by callgrind: a figure a loaded machine does not
move (queries/s on a shared machine do). The method of bench/proxy_callgrind.py.

The server under test (farts-edge's DNSServer as bench/dns.py runs it, or gdnsd with
its geoip plugin, same zone, database and query mix) runs under ``valgrind
--tool=callgrind --instr-atstart=no``; once it answers, instrumentation is switched on,
a warm-up runs (every distinct query once: the reply cache is full), the counters are
zeroed, then ``dnsload`` (on another core, as in bench/dns.py) sends exactly --small and then --large queries (100 in
flight), each followed by a dump. Instructions per query = (Ir(LARGE) - Ir(SMALL)) /
(LARGE - SMALL): startup, idle ticks and per-run constants cancel out.

    PYTHONPATH=$PWD .venv/bin/python bench/dns_callgrind.py [--target farts|gdnsd]
        [--small 20000] [--large 60000] [--top 25] [--strace | --perf]

User-space instructions only: the kernel's share (recvmmsg, sendmmsg, epoll_wait) is
not counted; ``--strace`` runs the server natively with strace -c attached for the
LARGE run and prints syscalls per query (strace slows the server, so its batches are
larger than in an unobserved run: farts' own batch counters, printed for farts, are the
figure for that). ``--stat``: perf stat's software counters over the LARGE run (CPU
time, context switches, syscalls, each per query), which need no hardware counters and
barely slow the server: the steadiest CPU-per-query comparison on a shared machine.
``--tool dnsperf`` drives these native modes with dnsperf for --seconds. ``--perf`` samples the native server with ``perf record -e cpu-clock``
(a timer, no hardware counters needed) during the LARGE run and prints the top symbols,
the kernel's included: where the time goes, not the instructions.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# bench/dns.py would shadow dnspython's "dns" package: this folder off sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("bench_dns", os.path.join(HERE, "dns.py"))
bench_dns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_dns)   # (it puts the tree's root on sys.path)
from bench.callgrind import control, per_unit, top_functions  # noqa: E402


def dnsload(binary: Path, port: int, qfile: Path, count: int) -> dict:
    out = subprocess.run(["taskset", "-c", bench_dns.CLIENT_CPU, str(binary), "127.0.0.1", str(port), str(qfile), "3600", "100", str(count)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"dnsload: {out.stderr}")
    r = json.loads(out.stdout)
    if r["answered"] != count:
        raise SystemExit(f"dnsload: {r['answered']} of {count} queries answered: {r}")
    return r


def dnsperf(port: int, wires: list[bytes], tmp: Path, seconds: float) -> int:
    """bench/dns.py's dnsperf run (one ECS subnet for all, as it cannot vary options);
    the queries completed."""
    names = tmp / "queries.txt"
    if not names.exists():
        names.write_text("".join(f"{q.question[0].name.to_text()} {bench_dns.dns.rdatatype.to_text(q.question[0].rdtype)}\n"
                                 for q in map(bench_dns.dns.message.from_wire, wires)))
    r = bench_dns.run_dnsperf(port, names, seconds)
    return round(r["qps"] * seconds)


def attached(observer: list[str], work) -> int:
    """Runs ``work()`` (a load; returns the queries answered) with ``observer`` attached
    to the server for its duration (stopped by SIGINT, as perf and strace expect)."""
    obs = subprocess.Popen(observer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    n = work()
    obs.send_signal(signal.SIGINT)
    obs.wait(120)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("farts", "gdnsd"), default="farts")
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--large", type=int, default=60000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--strace", action="store_true", help="count syscalls per query instead (no valgrind)")
    ap.add_argument("--perf", action="store_true", help="sample where the time goes instead (no valgrind)")
    ap.add_argument("--stat", action="store_true",
                    help="CPU time, context switches and syscalls per query instead (perf stat, no valgrind)")
    ap.add_argument("--tool", choices=("dnsload", "dnsperf"), default="dnsload",
                    help="load generator of --strace/--perf/--stat (dnsperf: for --seconds)")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--tree", default=ROOT, help="the farts-edge tree the server runs (default: this one)")
    ap.add_argument("--db", help="GeoLite2 City file (default: the one the node uses)")
    a = ap.parse_args()
    from farts.dns.geoindex import default_database
    db = a.db or default_database()
    tmp = Path(tempfile.mkdtemp(prefix="farts-dns-callgrind-"))
    proc = None
    try:
        binary = tmp / "dnsload"
        subprocess.run(["gcc", "-O2", "-o", str(binary), os.path.join(HERE, "dnsload.c")], check=True)
        wires = bench_dns.queries(db)
        qfile = tmp / "queries.bin"
        qfile.write_bytes(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
        port = bench_dns.free_port()
        if a.target == "farts":
            argv = [a.python, os.path.join(a.tree, "bench", "dns.py"), "--serve-farts", str(port), "--db", db]
        else:
            argv = bench_dns.gdnsd_files(tmp / "gdnsd", port, db)
        out = str(tmp / "callgrind.out")
        native = a.strace or a.perf or a.stat
        wrap = [] if native else ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                    f"--callgrind-out-file={out}"]
        proc = subprocess.Popen(["taskset", "-c", bench_dns.SERVER_CPU, *wrap, *argv], cwd=a.tree, env=dict(os.environ, PYTHONPATH=a.tree),
                                stdout=subprocess.PIPE, stderr=open(tmp / "server.log", "w"), text=True)
        if a.target == "farts":   # (it answers before its geo index is built: wait for the index)
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise SystemExit(f"farts: {line!r}, see {tmp / 'server.log'}")
        bench_dns.wait_answering(port, timeout=1200)
        if native:
            dnsload(binary, port, qfile, len(wires))   # every distinct query once: the cache is warm
            work = (lambda: dnsload(binary, port, qfile, a.large)["answered"]) if a.tool == "dnsload" else \
                (lambda: dnsperf(port, wires, tmp, a.seconds))
            if a.perf:
                data = tmp / "perf.data"
                n = attached(["perf", "record", "-e", "cpu-clock", "-o", str(data), "-p", str(proc.pid)], work)
                report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym"],
                                        capture_output=True, text=True, timeout=600).stdout
                rows = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
                print(f"{a.target} ({a.tool}, {n} queries): top symbols by share of cpu-clock samples:")
                print("\n".join(rows[:a.top]))
            elif a.stat:
                data = tmp / "stat.csv"
                events = ["task-clock", "context-switches", "raw_syscalls:sys_enter", "syscalls:sys_enter_recvmmsg",
                          "syscalls:sys_enter_sendmmsg", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait"]
                n = attached(["perf", "stat", "-x,", "-o", str(data), "-e", ",".join(events), "-p", str(proc.pid)],
                             work)
                print(f"{a.target} ({a.tool}), {n} queries, per query:")
                for line in data.read_text().splitlines():
                    f = line.split(",")
                    if len(f) > 3 and f[2] in events and f[0].replace(".", "").isdigit():
                        value = float(f[0]) * (1000 if f[2] == "task-clock" else 1) / n   # (task-clock: ms)
                        unit = " us of CPU" if f[2] == "task-clock" else ""
                        print(f"  {f[2]:30} {value:10.4f}{unit}")
            else:
                n = attached(["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(tmp / "strace.txt")], work)
                text = (tmp / "strace.txt").read_text()
                print(text)
                for line in text.splitlines():
                    f = line.split()
                    if len(f) >= 5 and f[-1] in ("recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "total"):
                        print(f"  {f[-1]:11} {int(f[3]) / n:.4f} per query ({n / int(f[3]):.1f} queries per call)")
        else:
            control(proc.pid, "-i", "on")
            dnsload(binary, port, qfile, len(wires))   # every distinct query once: the cache is warm
            control(proc.pid, "-z")
            per, counted, dump = per_unit(proc.pid, out, lambda n: dnsload(binary, port, qfile, n), a.small, a.large)
            print(f"{a.target}: {per:,.0f} instructions per query ({counted} queries; 100 in flight)")
            top_functions(dump, a.large, "query", a.top)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                tail, _ = proc.communicate(timeout=120)
                if a.target == "farts" and tail.strip():
                    print("farts reply cache:", tail.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if native:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"callgrind files in {tmp}")


if __name__ == "__main__":
    main()
