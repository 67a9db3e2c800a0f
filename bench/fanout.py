#!/usr/bin/env python3
"""Pub/sub fanout of farts-edge against the `websockets` library and socketify (uWebSockets).

    python bench/fanout.py [--subscribers 1000,10000] [--seconds 10] [--only NAMES]
                           [--rate EVENTS_PER_S] [--repeat R] [--json FILE] [--profile]

One publisher, N subscribers of one channel, on loopback, 100-byte event data. For each
N and each target, one after another:

1. the server is started pinned to --server-cpu (`taskset -c 0`) with RLIMIT_NOFILE
   raised to 20000, and its VmRSS (/proc/PID/status) read once it listens;
2. --client-procs subscriber processes, pinned to --client-cpu and niced (--subscriber-nice)
   so that the publisher on the same core is never kept waiting, open N WebSocket
   connections to `GET /live`; each subscribes and waits for its `subscribed` reply.
   --client c (the default where `cc` exists): bench/peers/fanout_sub.c, one epoll loop,
   built into the run's temp dir; --client python: bench/fanout_client.py, raw asyncio
   Protocols on uvloop. Both count frames by walking the frame headers (no JSON
   decoding) and speak the same stdin/stdout protocol. After --settle seconds idle the
   server's VmRSS is read again: (after - before) / N is the RSS per idle subscribed
   connection;
3. one publisher process (bench/fanout_client.py, uvloop, on the clients' core, niced up
   by --publisher-nice) POSTs events to `/api/publish`, --window requests in flight over
   as many keep-alive connections (closed loop: each answer releases the next request),
   or at most --rate events/s; each event's data is 100 bytes of JSON carrying the
   publisher's CLOCK_MONOTONIC time (system-wide, so comparable across processes);
4. after --warmup seconds, --repeat windows of --seconds each: deliveries/s is the sum
   over the subscriber processes of the data frames they received in the window, each
   divided by its own window length; publish-to-delivery latency comes from every
   --sample-every'th connection reading the timestamp out of every event it gets; with
   --perf (default where perf exists) `perf stat` counts the server's write/writev/
   sendto/sendmsg/io_uring_enter syscalls, giving deliveries per send syscall, and for
   farts the fanout's flushes (farts_pubsub_flushes_total on the admin port) give send
   syscalls per flush; the best window (by
   deliveries/s; with --rate, by p99) is reported;
5. the publisher stops; the clients' totals must reach published × N (every event to
   every subscriber: `complete` column) within --drain seconds, and no subscriber may
   have been dropped; then everything is stopped by PID.

Targets (--only takes a comma-separated subset):
  farts       `farts-edge serve`, routes of kind "pubsub" at /live and /api/ (tenant from
              Host; the publisher sends the tenant's API key), as deployed: `[pubsub]
              io_uring = "auto"`, the sends of one flush in one io_uring submission
              (fast/uring.pyx) where the kernel allows it (the `io_uring` field of the
              result says whether it did, from the node's farts_pubsub_io_uring)
  farts-send  the same with `io_uring = "off"`: one send() per subscriber per flush
  websockets  bench/peers/websockets_pubsub.py: websockets' asyncio server on uvloop,
              `broadcast()`; publish by POST to a second port (minimal HTTP/1.1 on the
              same loop: websockets serves GETs only)
  socketify   bench/peers/socketify_pubsub.py: uWS topics, `App.publish`; publish by POST
              on the same port

A target fails (exit status 1) if its server dies, a subscriber cannot subscribe, a
publish gets an error, a subscriber is dropped, or deliveries are missing after the
drain. Not run in CI; `ci/bench-setup` installs socketify and py-spy.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")
CLIENT = os.path.join(HERE, "fanout_client.py")
C_SUBSCRIBER = os.path.join(PEERS, "fanout_sub.c")

# The process, CPU and py-spy helpers of the HTTP bench (its file name shadows the stdlib
# `http` package, so it is loaded by path under another name).
_spec = importlib.util.spec_from_file_location("bench_http", os.path.join(HERE, "http.py"))
bench_http = sys.modules["bench_http"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_http)
from bench.nodeconf import local_node, node_toml  # noqa: E402  (bench/http.py put the repository on sys.path)

Procs, BenchError, free_port, tail, pinned = (bench_http.Procs, bench_http.BenchError,
                                              bench_http.free_port, bench_http.tail, bench_http.pinned)
proc_cpu_seconds, cpu_busy, own_time, wait_idle = (bench_http.proc_cpu_seconds, bench_http.cpu_busy,
                                                   bench_http.own_time, bench_http.wait_idle)

TARGETS = ["farts", "farts-send", "websockets", "socketify"]
# target -> [pubsub] io_uring; None: the key is not written (its default, auto), so that
# bench/ab.py can run this script against a tree from before the key existed
FARTS = {"farts": None, "farts-send": "off"}
RATIOS = [("farts", "websockets"), ("farts", "socketify"), ("farts", "farts-send")]
API_KEY = "bench-key"
NOFILE = 20000


def raise_nofile() -> None:
    """10,000 connections need more than 1024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < NOFILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))


def process_setup(nice: int):
    """preexec_fn for every process started: the file limit, then the nice value."""
    def setup() -> None:
        raise_nofile()
        if nice:
            try:
                os.nice(nice)
            except PermissionError:
                pass  # a negative value needs root; the run prints the values asked
    return setup


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_listening(proc: subprocess.Popen, ports: list[int], log: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before listening; its log:\n"
                             + tail(log))
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)
    if pending:
        raise BenchError(f"port {pending[0]} not listening after {timeout:.0f}s; log:\n" + tail(log))


class Child:
    """A client process driven by lines on its standard input, answering JSON lines."""

    def __init__(self, procs: Procs, name: str, argv: list[str], log: str, nice: int = 0) -> None:
        errlog = open(log, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=errlog, preexec_fn=process_setup(nice))
        finally:
            errlog.close()
        procs.running[self.proc.pid] = (name, self.proc)
        self.name, self.log, self.buf = name, log, b""

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError(f"{self.name} is gone ({e}); its log:\n" + tail(self.log)) from None

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no answer within {timeout:.0f}s; its log:\n" + tail(self.log))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise BenchError(f"{self.name} exited ({self.proc.poll()}); its log:\n" + tail(self.log))
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def ask_all(children: list[Child], command: str, timeout: float, answers: int = 1) -> list[list[dict]]:
    for c in children:
        c.send(command)
    return [[c.read(timeout) for _ in range(answers)] for c in children]


CDF_POINTS = (0.5, 0.75, 0.9, 0.99, 0.999)  # the publish-to-delivery latency CDF in --json


def percentile(sorted_values: list[int], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1000.0


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="farts-fanout-")
        self.procs = Procs()
        self.admin: int | None = None   # the farts target's admin port (its metrics)
        self.c_subscriber = None
        if args.client == "c":
            self.c_subscriber = self.path("fanout_sub")
            done = subprocess.run([args.cc, "-O2", "-o", self.c_subscriber, C_SUBSCRIBER],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise BenchError(f"{args.cc} could not build {C_SUBSCRIBER}:\n{done.stderr}")

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- servers: (proc, subscribe port, publish port, log)

    def start(self, name: str, tag: str) -> tuple[subprocess.Popen, int, int, str, int | None]:
        a = self.args
        d = self.path(tag)
        os.makedirs(d, exist_ok=True)
        log = os.path.join(d, "server.log")
        port, admin = free_port(), None
        if name in FARTS:
            admin = free_port()
            cfg = os.path.join(d, "farts.toml")
            with open(cfg, "w") as f:
                f.write(farts_config(os.path.join(d, "data"), port, admin, FARTS[name]))
            script = os.path.join(os.path.dirname(a.python), "farts-edge")
            cmd = [script] if os.path.exists(script) else [a.python, "-m", "farts.cli"]
            argv, pub_port = [*cmd, "serve", "--config", cfg], port
        elif name == "websockets":
            pub_port = free_port()
            argv = [a.python, os.path.join(PEERS, "websockets_pubsub.py"), "--port", str(port),
                    "--publish-port", str(pub_port)]
        elif name == "socketify":
            argv, pub_port = [a.python, os.path.join(PEERS, "socketify_pubsub.py"), "--port", str(port)], port
        else:
            raise ValueError(name)
        errlog = open(log, "ab")
        try:
            proc = subprocess.Popen(pinned(a.server_cpu, argv), cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=errlog, stderr=subprocess.STDOUT,
                                    preexec_fn=process_setup(a.server_nice))
        finally:
            errlog.close()
        self.procs.running[proc.pid] = (name, proc)
        wait_listening(proc, sorted({port, pub_port}), log)
        return proc, port, pub_port, log, admin

    def subscriber_argv(self, port: int, connections: int) -> list[str]:
        a = self.args
        if self.c_subscriber:
            return pinned(a.client_cpu, [self.c_subscriber, "127.0.0.1", str(port), "127.0.0.1", "/live",
                                         "bench", str(connections), str(a.sample_every), "200",
                                         str(a.timeout)])
        return self.client_argv("subscribe", port, ["--connections", str(connections),
                                                    "--sample-every", str(a.sample_every)])

    def client_argv(self, mode: str, port: int, extra: list[str]) -> list[str]:
        a = self.args
        return pinned(a.client_cpu, [a.python, CLIENT, mode, "--port", str(port), "--host-header",
                                     "127.0.0.1", "--timeout", str(a.timeout), *extra])

    # -- one target at one N

    def measure(self, name: str, n: int) -> dict:
        a = self.args
        tag = f"{name}-{n}"
        r: dict = {"name": name, "subscribers": n, "ok": False, "notes": []}
        subs: list[Child] = []
        pub: Child | None = None
        proc, self.admin = None, None
        try:
            proc, port, pub_port, log, self.admin = self.start(name, tag)
            r["log"] = log
            time.sleep(0.5)
            rss0 = vm_rss_kib(proc.pid)
            shares = [n // a.client_procs + (1 if i < n % a.client_procs else 0)
                      for i in range(a.client_procs)]
            t0 = time.monotonic()
            for i, share in enumerate(s for s in shares if s):
                subs.append(Child(self.procs, f"subscribers-{i}", self.subscriber_argv(port, share),
                                  self.path(tag, f"sub{i}.log"), nice=a.subscriber_nice))
            budget = a.timeout * (2 + n / 200)
            ready = [c.read(budget) for c in subs]
            failed = sum(x["failed"] for x in ready)
            if failed:
                errs = [e for x in ready for e in x["errors"]][:3]
                raise BenchError(f"{failed} of {n} subscribers could not subscribe: {errs}")
            r["connect_s"] = round(time.monotonic() - t0, 1)
            time.sleep(a.settle)
            rss1 = vm_rss_kib(proc.pid)
            if rss0 is not None and rss1 is not None:
                r["rss_before_kib"], r["rss_after_kib"] = rss0, rss1
                r["kib_per_conn"] = (rss1 - rss0) / n

            if a.wait_idle > 0:
                waited, busy = wait_idle(a.wait_idle)
                r["idle_wait_s"] = round(waited, 1)
                if any(v >= 15.0 for v in busy.values()):
                    r["notes"].append("machine busy before publishing: " + "/".join(
                        f"{v:.0f}" for _, v in sorted(busy.items())) + "% per core")
            pub_extra = ["--window", str(a.window), "--rate", str(a.rate), "--size", str(a.size)]
            if name in FARTS:
                pub_extra += ["--api-key", API_KEY]
            pub = Child(self.procs, "publisher", self.client_argv("publish", pub_port, pub_extra),
                        self.path(tag, "pub.log"), nice=a.publisher_nice)
            pub.read(a.timeout)
            time.sleep(a.warmup)
            windows = []
            for _ in range(a.repeat):
                windows.append(self.window(proc.pid, subs, pub))
                if proc.poll() is not None:
                    break
            # Closed loop: the window with the most deliveries; at a fixed --rate every
            # window delivers the same, and the best is the one with the lowest p99.
            best = (min(windows, key=lambda w: w["p99_ms"] if w["p99_ms"] is not None else float("inf"))
                    if a.rate else max(windows, key=lambda w: w["deliveries_per_s"]))
            r.update(best)
            if a.repeat > 1:
                r["windows"] = [round(w["deliveries_per_s"]) for w in windows]
            if a.profile and name in FARTS:
                r["profile"] = self.profile(proc.pid, subs, pub, tag)
            pub.send("stop")
            done = pub.read(a.timeout + 5)
            r["published"] = done["published"]
            r["publish_answer_p99_ms"] = done["answer_latency"].get("p99_ms")
            problems = []
            if done["errors"]:
                problems.append(f"{done['errors']} publish errors: {done['first_errors']}")
            # Drain: every published event must reach every subscriber.
            want = done["published"] * n
            deadline, got, last, totals = time.monotonic() + a.drain, -1, None, []
            while time.monotonic() < deadline:
                totals = [x[0] for x in ask_all(subs, "totals", a.timeout)]
                got = sum(t["frames"] for t in totals)
                if got >= want or got == last:
                    break
                last = got
                time.sleep(0.5)
            r["complete_pct"] = 100.0 * got / want if want else None
            dropped = sum(t["dropped"] for t in totals)
            if dropped:
                codes: dict = {}
                for t in totals:
                    for k, v in t["close_codes"].items():
                        codes[k] = codes.get(k, 0) + v
                problems.append(f"{dropped} subscribers dropped (close codes {codes})")
            if got != want:
                problems.append(f"{got:,} of {want:,} deliveries arrived ({r['complete_pct']:.2f}%)")
            if proc.poll() is not None:
                problems.append(f"server exited with {proc.returncode}:\n" + tail(log))
            r["ok"] = not problems
            if problems:
                r["error"] = "; ".join(problems)
        except BenchError as e:
            r["error"] = str(e)
        finally:
            for c in ([pub] if pub else []) + subs:
                try:
                    c.send("quit")
                except BenchError:
                    pass
            for c in ([pub] if pub else []) + subs:
                self.procs.stop(c.proc)
            if proc is not None:
                r["exit_status"] = self.procs.stop(proc)
        return r

    def window(self, server_pid: int, subs: list[Child], pub: Child) -> dict:
        a = self.args
        pub_cpu0 = proc_cpu_seconds(pub.proc.pid) or 0
        cpu0, busy0, t0 = proc_cpu_seconds(server_pid), cpu_busy(), time.monotonic()
        client_cpu0 = sum(proc_cpu_seconds(c.proc.pid) or 0 for c in subs)
        perf = self.count_sends(server_pid) if a.perf else None
        flushes0 = self.farts_metric("farts_pubsub_flushes_total")
        first = [x[0] for x in ask_all(subs, "mark", a.timeout)]
        time.sleep(a.seconds)
        second = ask_all(subs, "mark", a.timeout, answers=2)
        wall = time.monotonic() - t0
        flushes1 = self.farts_metric("farts_pubsub_flushes_total")
        io_uring = self.farts_metric("farts_pubsub_io_uring")
        cpu1, busy1 = proc_cpu_seconds(server_pid), cpu_busy()
        client_cpu1 = sum(proc_cpu_seconds(c.proc.pid) or 0 for c in subs)
        rate = sum((end["frames"] - start["frames"]) / (end["t"] - start["t"])
                   for start, (end, _) in zip(first, second, strict=True))
        lat = sorted(v for _, samples in second for v in samples["latency_us"])
        w = {"deliveries_per_s": rate, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
             "latency_cdf": [[q, percentile(lat, q)] for q in CDF_POINTS] if lat else None,
             "latency_samples": sum(s["sampled"] for _, s in second),
             "core_busy_pct": {c: round(100 * (busy1[c][0] - b) / max(1, busy1[c][2] - t), 1)
                               for c, (b, _, t) in busy0.items() if c in busy1}}
        if io_uring is not None:
            w["io_uring"] = bool(io_uring)
        if cpu0 is not None and cpu1 is not None:
            w["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
            if w["server_cpu_pct"] > 0:
                w["per_server_cpu_s"] = rate / (w["server_cpu_pct"] / 100)
        w["subscriber_procs_cpu_pct"] = round(100 * (client_cpu1 - client_cpu0) / wall, 1)
        w["publisher_cpu_pct"] = round(100 * ((proc_cpu_seconds(pub.proc.pid) or 0) - pub_cpu0) / wall, 1)
        if perf is not None:
            sends = self.sends_counted(perf)
            if sends is not None and rate > 0:
                # perf counted over --seconds starting just before the first mark: close
                # enough to the window to say how many deliveries one send carries.
                w["sends_per_s"] = sends / a.seconds
                w["deliveries_per_send"] = rate / w["sends_per_s"] if sends else None
                if flushes0 is not None and flushes1 is not None and flushes1 > flushes0:
                    # the same caveat: perf's --seconds against this window's flushes
                    w["sends_per_flush"] = w["sends_per_s"] / ((flushes1 - flushes0) / wall)
        return w

    def farts_metric(self, name: str) -> int | None:
        """A metric without labels from the farts node's admin /metrics (None elsewhere)."""
        if self.admin is None:
            return None
        try:
            _, _, body = bench_http.get("127.0.0.1", self.admin, "/metrics", self.args.timeout)
        except OSError:
            return None
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
        return None

    SEND_EVENTS = ("syscalls:sys_enter_write", "syscalls:sys_enter_writev",
                   "syscalls:sys_enter_sendto", "syscalls:sys_enter_sendmsg",
                   "syscalls:sys_enter_io_uring_enter")

    def count_sends(self, pid: int) -> tuple[subprocess.Popen, str]:
        """`perf stat` of the server's write-like syscalls for the next --seconds."""
        out = self.path(f"perf-{pid}-{time.monotonic_ns()}.csv")
        argv = ["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(self.SEND_EVENTS), "-p", str(pid),
                "--", "sleep", str(self.args.seconds)]
        proc = self.procs.start("perf", pinned(self.args.client_cpu, argv), out + ".log")
        return proc, out

    def sends_counted(self, perf: tuple[subprocess.Popen, str]) -> int | None:
        proc, out = perf
        try:
            proc.wait(self.args.timeout)
        except subprocess.TimeoutExpired:
            pass
        self.procs.stop(proc)
        total, seen = 0, 0
        try:
            with open(out) as f:
                for line in f:
                    fields = line.strip().split(",")
                    if len(fields) > 2 and fields[2] in self.SEND_EVENTS and fields[0].isdigit():
                        total += int(fields[0])
                        seen += 1
        except OSError:
            return None
        return total if seen else None

    def profile(self, server_pid: int, subs: list[Child], pub: Child, tag: str) -> dict:
        """py-spy on the server for one more window (the table keeps the unprofiled one)."""
        a = self.args
        pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(a.python), "py-spy")
        if not os.path.exists(pyspy):
            return {"error": "py-spy not found; run ci/bench-setup"}
        raw = self.path(tag, "profile.collapsed.txt")
        argv = [pyspy, "record", "--pid", str(server_pid), "--rate", "200", "--duration",
                str(max(1, round(a.seconds))), "--function", "--format", "raw", "--output", raw]
        if a.profile_native:
            argv.append("--native")
        spy = self.procs.start("py-spy", pinned(a.client_cpu, argv), self.path(tag, "py-spy.log"))
        time.sleep(0.5)
        w = self.window(server_pid, subs, pub)
        try:
            spy.wait(a.seconds + 30)
        except subprocess.TimeoutExpired:
            pass
        rc = self.procs.stop(spy)
        out = {"deliveries_per_s_while_profiled": w["deliveries_per_s"]}
        if rc != 0 or not os.path.exists(raw):
            out["error"] = f"py-spy exited with {rc}:\n" + tail(self.path(tag, "py-spy.log"))
            return out
        out["collapsed"] = raw
        out.update(own_time(raw, 15))
        return out


def farts_config(data_dir: str, port: int, admin: int, io_uring: str | None) -> str:
    node = local_node(data_dir, port, admin)
    node["tenants"][0].update(api_keys=[API_KEY], secret="bench-secret")
    return node_toml({**node, "limits": {"max_connections": NOFILE, "max_connections_per_ip": NOFILE},
                      "pubsub": {"io_uring": io_uring} if io_uring else {},
                      "routes": [{"prefix": "/live", "kind": "pubsub"}, {"prefix": "/api/", "kind": "pubsub"}]},
                     "written by bench/fanout.py")


# ---------------------------------------------------------------- report


def fmt(v, spec: str = ",.0f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def report(results: list[dict]) -> str:
    lines = ["| target | subscribers | deliveries/s | per server CPU-s | p50 | p99 | server CPU "
             "| subscribers / publisher CPU | cores busy | deliveries / send syscall | send syscalls / flush "
             "| KiB RSS / idle conn | complete |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if not r["ok"] and "deliveries_per_s" not in r:
            lines.append(f"| {r['name']} | {r['subscribers']:,} | FAILED: "
                         f"{r.get('error', '?').splitlines()[0][:150]} | | | | | | | | | | |")
            continue
        flag = "" if r["ok"] else " (FAILED: " + r.get("error", "?").splitlines()[0][:100] + ")"
        flag += "".join(f" ({n})" for n in r.get("notes", []))
        flag += {True: " (io_uring)", False: " (send())"}.get(r.get("io_uring"), "")
        lines.append(
            f"| {r['name']}{flag} | {r['subscribers']:,} | {fmt(r.get('deliveries_per_s'))} "
            f"| {fmt(r.get('per_server_cpu_s'))} | {fmt(r.get('p50_ms'), '.1f', ' ms')} "
            f"| {fmt(r.get('p99_ms'), '.1f', ' ms')} | {fmt(r.get('server_cpu_pct'), '.0f', '%')} "
            f"| {fmt(r.get('subscriber_procs_cpu_pct'), '.0f', '%')} / {fmt(r.get('publisher_cpu_pct'), '.0f', '%')} "
            f"| {'/'.join(f'{v:.0f}' for _, v in sorted(r.get('core_busy_pct', {}).items())) or '-'} "
            f"| {fmt(r.get('deliveries_per_send'), '.2f')} | {fmt(r.get('sends_per_flush'), '.2f')} "
            f"| {fmt(r.get('kib_per_conn'), '.2f')} | {fmt(r.get('complete_pct'), '.2f', '%')} |")
    lines.append("")
    for n in sorted({r["subscribers"] for r in results}):
        by = {r["name"]: r for r in results if r["subscribers"] == n and r["ok"]}
        for a, b in RATIOS:
            if a in by and b in by:
                mem = (f", RSS/conn {by[a]['kib_per_conn'] / by[b]['kib_per_conn']:.2f}"
                       if by[a].get("kib_per_conn") and by[b].get("kib_per_conn") else "")
                lines.append(f"N={n:,}: {a} / {b}: deliveries/s {by[a]['deliveries_per_s'] / by[b]['deliveries_per_s']:.2f}"
                             f", per server CPU-s {by[a].get('per_server_cpu_s', 0) / max(1, by[b].get('per_server_cpu_s', 0)):.2f}"
                             f"{mem}")
            else:
                missing = ", ".join(x for x in (a, b) if x not in by)
                lines.append(f"N={n:,}: {a} / {b}: n/a ({missing} not measured)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    ap = argparse.ArgumentParser(description="pub/sub fanout: farts-edge against websockets and socketify",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="targets: " + ", ".join(TARGETS))
    ap.add_argument("--subscribers", default="1000,10000", help="comma-separated N (default 1000,10000)")
    ap.add_argument("--seconds", type=float, default=10, help="measured window, seconds (default 10)")
    ap.add_argument("--repeat", type=int, default=1, help="windows per run; the best is reported")
    ap.add_argument("--warmup", type=float, default=2, help="publishing before the first window, seconds")
    ap.add_argument("--settle", type=float, default=2, help="idle seconds before reading RSS after subscribing")
    ap.add_argument("--drain", type=float, default=15, help="bound on waiting for the last deliveries, seconds")
    ap.add_argument("--wait-idle", type=float, default=30, metavar="SECONDS",
                    help="before publishing, wait up to this long for every core to be under 15%% "
                         "busy (others' builds skew a run; 0: don't; default 30)")
    ap.add_argument("--only", action="append", default=[], help="comma-separated targets (repeatable)")
    ap.add_argument("--rate", type=float, default=0, help="events/s in all; 0 = closed loop (default)")
    ap.add_argument("--window", type=int, default=2, help="publish requests in flight (default 2)")
    ap.add_argument("--size", type=int, default=100, help="event data bytes (default 100)")
    ap.add_argument("--client", choices=("c", "python"), default="c" if shutil.which("cc") else "python",
                    help="subscriber processes: bench/peers/fanout_sub.c (built with --cc; default "
                         "where a C compiler exists) or bench/fanout_client.py on uvloop")
    ap.add_argument("--cc", default="cc", help="C compiler for --client c")
    ap.add_argument("--client-procs", type=int, default=4, help="subscriber processes (default 4)")
    ap.add_argument("--sample-every", type=int, default=20,
                    help="every K-th subscriber reads the latency of each event (default 20)")
    ap.add_argument("--subscriber-nice", type=int, default=10,
                    help="nice value of the subscriber processes, so that the publisher sharing "
                         "their core is never kept waiting (default 10; 0: same priority)")
    ap.add_argument("--server-nice", type=int, default=0,
                    help="nice value of the server under test (default 0; a negative value, as "
                         "root, shields it from other people's builds on a shared machine)")
    ap.add_argument("--publisher-nice", type=int, default=-5,
                    help="nice value of the publisher (default -5 where allowed: with one or two "
                         "requests in flight, a publisher kept waiting by other processes idles "
                         "the server)")
    ap.add_argument("--server-cpu", default="0", help="taskset -c for the server (default 0; 'none')")
    ap.add_argument("--client-cpu", default="1", help="taskset -c for clients and publisher (default 1)")
    ap.add_argument("--timeout", type=float, default=30, help="bound on each wait, seconds")
    ap.add_argument("--python", default=venv_python if os.path.exists(venv_python) else sys.executable)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--perf", action=argparse.BooleanOptionalAction, default=bool(shutil.which("perf")),
                    help="count the server's write/send syscalls with `perf stat` during each window "
                         "(deliveries per send; default: on where perf exists)")
    ap.add_argument("--profile", action="store_true", help="one more window on farts under py-spy")
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native")
    args = ap.parse_args(argv)

    names = [x.strip() for chunk in args.only for x in chunk.split(",") if x.strip()]
    unknown = [x for x in names if x not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    selected = [t for t in TARGETS if not names or t in names]
    try:
        counts = [int(x) for x in args.subscribers.split(",") if x.strip()]
    except ValueError:
        ap.error("--subscribers takes comma-separated integers")
    if not counts or any(not 1 <= c <= 15000 for c in counts):
        ap.error("--subscribers: each N must be 1-15000 (one process holds at most 20000 files)")
    if args.seconds < 1 or not 1 <= args.repeat <= 20 or args.client_procs < 1 or args.window < 1:
        ap.error("--seconds >= 1, --repeat 1-20, --client-procs >= 1, --window >= 1")
    if "socketify" in selected and subprocess.run([args.python, "-c", "import socketify"],
                                                  capture_output=True).returncode != 0:
        print("socketify does not import in this Python; skipping it (run ci/bench-setup)")
        selected.remove("socketify")
    if not shutil.which("taskset"):
        args.server_cpu = args.client_cpu = "none"

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        bench = Bench(args)
    except BenchError as e:
        print(e)
        return 1
    started = datetime.datetime.now(datetime.UTC)
    print(f"farts-edge fanout bench: {', '.join(selected)}; N = {', '.join(map(str, counts))}; "
          f"{args.size}-byte event data; publisher: {'closed loop' if not args.rate else f'{args.rate:g} events/s'}, "
          f"{args.window} in flight; {args.repeat} window(s) of {args.seconds:g}s after {args.warmup:g}s warm-up")
    print(f"  server on cpu {args.server_cpu}; {args.client_procs} subscriber processes ({args.client}) "
          f"and the publisher (uvloop) on cpu {args.client_cpu}; nice: server {args.server_nice}, "
          f"publisher {args.publisher_nice}, subscribers {args.subscriber_nice}; "
          f"{os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"  command: {' '.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}")
    print(f"  files: {bench.dir}", flush=True)
    results: list[dict] = []
    interrupted = False
    try:
        for n in counts:
            for name in selected:
                print(f"- {name} N={n:,} ...", end=" ", flush=True)
                r = bench.measure(name, n)
                results.append(r)
                if "deliveries_per_s" in r:
                    print(f"{r['deliveries_per_s']:,.0f} deliveries/s, p99 {fmt(r.get('p99_ms'), '.1f', ' ms')}, "
                          f"server {fmt(r.get('server_cpu_pct'), '.0f', '%')}, "
                          f"{fmt(r.get('kib_per_conn'), '.2f')} KiB/conn"
                          + ("" if r["ok"] else f"; FAILED: {r['error']}"), flush=True)
                else:
                    print(f"FAILED: {r.get('error')}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; stopping what this run started", flush=True)
    finally:
        bench.procs.stop_all()

    print()
    print(report(results))
    for r in results:
        prof = r.get("profile")
        if prof:
            print(f"\npy-spy on {r['name']} N={r['subscribers']:,} "
                  f"({fmt(prof.get('deliveries_per_s_while_profiled'))} deliveries/s while profiled):")
            if prof.get("error"):
                print("  " + prof["error"])
            for row in prof.get("top_own", []):
                print(f"  {row['own_pct']:6.1f} {row['total_pct']:7.1f}  {row['function']}")
            if prof.get("collapsed"):
                print(f"  collapsed stacks: {prof['collapsed']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started.isoformat(timespec="seconds"), "params": vars(args),
                       "files": bench.dir, "results": results}, f, indent=2)
        print(f"\nJSON: {args.json}")
    return 1 if interrupted or not results or not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
