#!/usr/bin/env python3
"""HTTP/1.1 throughput of farts-edge against real peers, with wrk.

    python bench/http.py [--seconds 10] [--connections 64] [--only NAMES] [--json FILE] [--profile]

Every target serves the same 1 KiB body (bench/peers/body.py) over keep-alive; one after
another, each is started pinned to one core (`taskset -c 0`), checked (200 and the exact
body), warmed up for --warmup seconds, then measured by
`taskset -c 1 wrk -t1 -c64 -d10s --latency URL`, then stopped by its PID.

Targets (--only takes a comma-separated subset, in any order; they run in this order):
  farts-fixed            farts-edge, a `kind = "static"` route (fixed response)
  farts-proxy            farts-edge, a `kind = "proxy"` route to the shared upstream, GETs pipelined
                         8 deep to it (--proxy-pipeline; 1: one request per connection, as nginx)
  nginx-static           nginx, worker_processes 1, Debian-default-like (sendfile on, access log on)
  nginx-static-tuned     the same with sendfile off, open_file_cache max=100, access_log off
  nginx-proxy            nginx proxy_pass to the shared upstream, upstream keepalive 128 (farts-edge: pool_size 128, its default)
  uvicorn                uvicorn --http httptools --loop uvloop, a raw ASGI app
  bare-uvloop-httptools  an asyncio.Protocol + httptools on uvloop: the ceiling of Python

The shared upstream of the two proxies is one more nginx (worker_processes 1, serving
the body from memory via open_file_cache, no access log), pinned by default to the wrk
core (--upstream-cpu), so that the proxy under test has core 0 to itself exactly like
the static targets, and both proxies see the same upstream.

A run is bounded in time (every wait has a timeout), binds only 127.0.0.1 on free
ports, writes its configs, logs and profiles to one temp directory (printed), and
stops only the processes it started, by PID. A target whose wrk run reports
"Non-2xx or 3xx responses", socket errors, or whose server dies, is marked failed and
the exit status is 1. Not run in CI; `ci/bench-setup` installs wrk, nginx and py-spy.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# This file is called http.py: with its folder first on sys.path, `import http.client`
# (here or in any module we import) would find this file instead of the stdlib package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS)
sys.path.append(ROOT)   # (last: for bench/nodeconf.py, not to shadow anything)
from body import make_body  # noqa: E402

from bench.nodeconf import local_node, node_toml, proxy_to  # noqa: E402

TARGETS = [
    "farts-fixed",
    "farts-proxy",
    "nginx-static",
    "nginx-static-tuned",
    "nginx-proxy",
    "uvicorn",
    "bare-uvloop-httptools",
]
RATIOS = [
    ("farts-fixed", "bare-uvloop-httptools"),
    ("farts-fixed", "nginx-static-tuned"),
    ("farts-proxy", "nginx-proxy"),
]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class BenchError(Exception):
    """A target could not be measured; the message says why."""


# ---------------------------------------------------------------- processes


class Procs:
    """Every process this run started, so that it can stop them, and only them, by PID."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[str, subprocess.Popen]] = {}

    def start(self, name: str, argv: list[str], log_path: str, cwd: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.running[proc.pid] = (name, proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int | None:
        if proc.pid not in self.running:
            return proc.returncode
        del self.running[proc.pid]
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc in list(self.running.values())[::-1]:
            self.stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    """taskset execs the command, so the PID Popen returns is the server's own."""
    return ["taskset", "-c", cpu, *argv] if cpu not in (None, "", "none") else argv


def get(url_host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, path: str, body: bytes, log_path: str,
               timeout: float = READY_TIMEOUT) -> dict:
    """Polls until the server answers 200 with exactly `body`; returns its headers."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before answering; its log:\n"
                             + tail(log_path))
        try:
            status, headers, got = get("127.0.0.1", port, path)
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if status == 200 and got == body:
                return headers
            last = f"status {status}, {len(got)} body bytes (want 200 and the {len(body)}-byte body)"
            if status != 200 or len(got) != len(body):
                # A wrong answer will not fix itself; one more try in case of a race.
                time.sleep(0.2)
                status, headers, got = get("127.0.0.1", port, path)
                if status == 200 and got == body:
                    return headers
                raise BenchError(f"GET {path}: {last}; body starts {got[:200]!r}; its log:\n"
                                 + tail(log_path))
        time.sleep(0.1)
    raise BenchError(f"not ready after {timeout:.0f}s ({last}); its log:\n" + tail(log_path))


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (and its reaped children) in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime


def cpu_busy() -> dict[str, tuple[int, int, int]]:
    """Per-cpu (busy, irq + softirq, total) jiffies from /proc/stat."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    out[name[3:]] = (sum(v[:8]) - idle, v[5] + v[6], sum(v[:8]))
    except OSError:
        pass
    return out


class CPUWatch:
    """CPU use over one wrk run: the server's own share of a core, and each core's busy %."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.proc0 = {k: proc_cpu_seconds(p) for k, p in pids.items()}
        self.cpu0 = cpu_busy()
        self.children0 = self._children()

    @staticmethod
    def _children() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def result(self) -> dict:
        wall = time.monotonic() - self.t0
        out: dict = {}
        for k, pid in self.pids.items():
            now, before = proc_cpu_seconds(pid), self.proc0.get(k)
            if now is not None and before is not None and wall > 0:
                out[f"{k}_cpu_pct"] = round(100 * (now - before) / wall, 1)
        if wall > 0:  # wrk, reaped by now: the only child that ended during the run
            out["wrk_cpu_pct"] = round(100 * (self._children() - self.children0) / wall, 1)
        cpu1 = cpu_busy()
        out["core_busy_pct"] = {c: round(100 * (cpu1[c][0] - b) / max(1, cpu1[c][2] - t), 1)
                                for c, (b, _, t) in self.cpu0.items() if c in cpu1}
        irq = sum(100 * (cpu1[c][1] - i) / max(1, cpu1[c][2] - t)
                  for c, (_, i, t) in self.cpu0.items() if c in cpu1)
        out["irq_cpu_pct"] = round(irq, 1)
        ours = sum(v for k, v in out.items() if k.endswith("_cpu_pct"))
        out["others_cpu_pct"] = round(max(0.0, sum(out["core_busy_pct"].values()) - ours), 1)
        return out


def wait_idle(max_wait: float, threshold: float = 15.0) -> tuple[float, dict[str, float]]:
    """Waits (at most max_wait seconds) for a second in which every core is under
    threshold % busy: other people's builds on a shared machine skew a run far more
    than anything measured here. Returns the seconds waited and the last busy %."""
    t0 = time.monotonic()
    busy: dict[str, float] = {}
    while True:
        before = cpu_busy()
        time.sleep(1.0)
        after = cpu_busy()
        busy = {c: round(100 * (after[c][0] - b) / max(1, after[c][2] - t), 1)
                for c, (b, _, t) in before.items() if c in after}
        waited = time.monotonic() - t0
        if all(v < threshold for v in busy.values()) or waited >= max_wait:
            return waited, busy


# ---------------------------------------------------------------- wrk

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS_S[m.group(2)] * 1e3


def parse_wrk(out: str) -> dict:
    r: dict = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise BenchError("wrk printed no Requests/sec:\n" + out)
    r["rps"] = float(m.group(1))
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        r["latency_avg_ms"], r["latency_stdev_ms"], r["latency_max_ms"] = (
            _ms(m.group(1)), _ms(m.group(2)), _ms(m.group(3)))
    dist = out.split("Latency Distribution", 1)[-1] if "Latency Distribution" in out else ""
    for pct, val in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)", dist, re.M):
        r[f"p{pct}_ms"] = _ms(val)
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    if m:
        r["requests"] = int(m.group(1))
        r["duration_s"] = float(m.group(2)) * _UNITS_S[m.group(3)]
        r["bytes_read"] = int(float(m.group(4)) * _UNITS_B[m.group(5)])
        if r["requests"]:
            r["bytes_per_response"] = round(r["bytes_read"] / r["requests"])
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    r["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = (dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
                          if m else {})
    return r


def run_wrk(args, url: str, seconds: float, script: tuple[str, ...] = ()) -> tuple[dict, str]:
    """script: (a wrk Lua file, its arguments...), e.g. bench/cdn.py --misses' new key per request."""
    lua = ["-s", script[0], url, "--", *script[1:]] if script else [url]
    argv = pinned(args.client_cpu, [args.wrk, "-t1", f"-c{args.connections}",
                                    f"-d{max(1, round(seconds))}s", "--latency", *lua])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 30:.0f}s") from None
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout), done.stdout


# ---------------------------------------------------------------- targets


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen
    port: int
    path: str
    log: str
    stop_signal: int = signal.SIGTERM
    admin_port: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.body = make_body(args.size)
        self.dir = tempfile.mkdtemp(prefix="farts-bench-")
        self.procs = Procs()
        self.www = os.path.join(self.dir, "www")
        os.makedirs(self.www)
        with open(os.path.join(self.www, "bench"), "wb") as f:
            f.write(self.body)
        self.upstream: Server | None = None

    # -- helpers

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def _nginx(self, name: str, http_block: str, cpu: str | None) -> Server:
        d = self.path(name)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        conf = f"""# {name}: written by bench/http.py
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{http_block}
}}
"""
        conf_path = os.path.join(d, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        log = os.path.join(d, "stderr.log")
        argv = [self.args.nginx, "-c", conf_path, "-p", d + "/", "-e", f"{d}/error.log"]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise BenchError(f"nginx -t rejects {conf_path}:\n{check.stderr}")
        port = int(re.search(r"listen 127\.0\.0\.1:(\d+)", conf).group(1))
        proc = self.procs.start(name, pinned(cpu, argv), log)
        return Server(proc, port, "/bench", log, signal.SIGTERM)

    def _mime(self) -> str:
        if os.path.exists("/etc/nginx/mime.types"):
            return "    include /etc/nginx/mime.types;\n"
        return "    types { text/html html; text/plain txt; }\n"

    def _nginx_static(self, name: str, tuned: bool) -> Server:
        port = free_port()
        if tuned:
            io = ("    sendfile off;\n    open_file_cache max=100;\n    access_log off;\n")
        else:
            io = (f"    sendfile on;\n    tcp_nopush on;\n    access_log {self.path(name)}/access.log;\n")
        block = (f"{io}    types_hash_max_size 2048;\n{self._mime()}"
                 f"    default_type application/octet-stream;\n    gzip on;\n"
                 f"    server {{\n        listen 127.0.0.1:{port};\n        server_name _;\n"
                 f"        root {self.www};\n"
                 f"        location / {{\n            try_files $uri $uri/ =404;\n        }}\n    }}")
        return self._nginx(name, block, self.args.server_cpu)

    def shared_upstream(self) -> Server:
        """One nginx for both proxies: the body from memory, no log, endless keep-alive."""
        if self.upstream is None:
            port = free_port()
            block = ("    sendfile off;\n    open_file_cache max=100;\n    access_log off;\n"
                     "    keepalive_requests 1000000;\n    keepalive_timeout 300s;\n"
                     "    default_type text/plain;\n"
                     f"    server {{\n        listen 127.0.0.1:{port} backlog=1024;\n"
                     f"        root {self.www};\n"
                     "        location / {\n            rewrite ^ /bench break;\n        }\n    }")
            up = self._nginx("upstream", block, self.args.upstream_cpu)
            wait_ready(up.proc, up.port, "/anything", self.body, up.log)
            self.upstream = up
        return self.upstream

    def farts_command(self) -> list[str]:
        script = os.path.join(os.path.dirname(self.args.python), "farts-edge")
        if os.path.exists(script):
            return [script]
        return [self.args.python, "-m", "farts.cli"]

    def farts_config(self, name: str, http_port: int, admin_port: int, upstream_port: int | None) -> str:
        sections = local_node(self.path(name, "data"), http_port, admin_port)
        routes = [{"prefix": "/bench", "kind": "static", "body": self.body.decode("ascii")}]
        if upstream_port is not None:
            proxy = proxy_to(f"127.0.0.1:{upstream_port}", self.args.proxy_pipeline)
            sections["upstreams"], routes = proxy["upstreams"], routes + proxy["routes"]
        return node_toml({**sections, "routes": routes}, f"{name}: written by bench/http.py")

    def _farts(self, name: str, proxy: bool) -> Server:
        d = self.path(name)
        os.makedirs(d, exist_ok=True)
        up_port = self.shared_upstream().port if proxy else None
        port, admin = free_port(), free_port()
        cfg_path = os.path.join(d, "farts.toml")
        with open(cfg_path, "w") as f:
            f.write(self.farts_config(name, port, admin, up_port))
        log = os.path.join(d, "node.log")
        argv = [*self.farts_command(), "serve", "--config", cfg_path]
        proc = self.procs.start(name, pinned(self.args.server_cpu, argv), log, cwd=ROOT)
        srv = Server(proc, port, "/proxy" if proxy else "/bench", log, signal.SIGTERM, admin)
        if proxy:
            srv.notes.append(f"upstream nginx on cpu {self.args.upstream_cpu}")
        return srv

    def start(self, name: str) -> Server:
        a = self.args
        if name == "farts-fixed":
            return self._farts(name, proxy=False)
        if name == "farts-proxy":
            return self._farts(name, proxy=True)
        if name == "nginx-static":
            return self._nginx_static(name, tuned=False)
        if name == "nginx-static-tuned":
            return self._nginx_static(name, tuned=True)
        if name == "nginx-proxy":
            up = self.shared_upstream()
            port = free_port()
            block = ("    access_log off;\n"
                     f"    upstream up {{\n        server 127.0.0.1:{up.port};\n        keepalive 128;\n    }}\n"
                     f"    server {{\n        listen 127.0.0.1:{port};\n"
                     "        location / {\n            proxy_pass http://up;\n"
                     "            proxy_http_version 1.1;\n"
                     '            proxy_set_header Connection "";\n        }\n    }')
            srv = self._nginx(name, block, a.server_cpu)
            srv.path = "/proxy"
            srv.notes.append(f"upstream nginx on cpu {a.upstream_cpu}")
            return srv
        if name == "uvicorn":
            port = free_port()
            log = self.path("uvicorn.log")
            argv = [a.python, "-m", "uvicorn", "--app-dir", PEERS, "asgi_app:app",
                    "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                    "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
                    "--lifespan", "off", "--backlog", "1024"]
            env = dict(os.environ, BENCH_BODY_SIZE=str(a.size))
            proc = self.procs.start(name, pinned(a.server_cpu, argv), log, env=env)
            return Server(proc, port, "/bench", log)
        if name == "bare-uvloop-httptools":
            port = free_port()
            log = self.path("bare.log")
            argv = [a.python, os.path.join(PEERS, "bare_httptools.py"), "--port", str(port),
                    "--size", str(a.size)]
            proc = self.procs.start(name, pinned(a.server_cpu, argv), log)
            return Server(proc, port, "/bench", log)
        raise ValueError(name)

    # -- one target

    def measure(self, name: str) -> dict:
        a = self.args
        result: dict = {"name": name, "ok": False, "notes": []}
        srv: Server | None = None
        try:
            srv = self.start(name)
            result["notes"] += srv.notes
            headers = wait_ready(srv.proc, srv.port, srv.path, self.body, srv.log)
            result["server_header"] = headers.get("Server") or headers.get("server") or ""
            url = f"http://127.0.0.1:{srv.port}{srv.path}"
            result["url"] = url
            if a.wait_idle > 0:
                waited, busy = wait_idle(a.wait_idle)
                result["idle_wait_s"] = round(waited, 1)
                if any(v >= 15.0 for v in busy.values()):
                    result["notes"].append("machine busy before the run: " + "/".join(
                        f"{v:.0f}" for _, v in sorted(busy.items())) + "% per core")
            if a.warmup > 0:
                run_wrk(a, url, a.warmup)
            pids = {"server": srv.proc.pid}
            if self.upstream is not None and srv.path == "/proxy":
                pids["upstream"] = self.upstream.proc.pid
            runs = []
            for _ in range(a.repeat):
                watch = CPUWatch(pids)
                stats, raw = run_wrk(a, url, a.seconds)
                stats.update(watch.result())
                stats["wrk_output"] = raw
                runs.append(stats)
            # The median run by requests/s (the only one with --repeat 1); errors of any run count.
            stats = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
            result.update(stats)
            if stats.get("server_cpu_pct"):
                # Requests per CPU-second of the server: steadier than requests/s when other
                # processes steal the wrk core (the server then idles, waiting for requests).
                result["rps_per_server_cpu"] = stats["rps"] / (stats["server_cpu_pct"] / 100)
            if len(runs) > 1:
                result["runs_rps"] = [r["rps"] for r in runs]
                stats = dict(stats, non_2xx_3xx=sum(r["non_2xx_3xx"] for r in runs),
                             socket_errors={k: sum(r["socket_errors"].get(k, 0) for r in runs)
                                            for k in ("connect", "read", "write", "timeout")})
            problems = []
            if stats["non_2xx_3xx"]:
                problems.append(f"{stats['non_2xx_3xx']} non-2xx/3xx responses")
            errors = {k: v for k, v in stats["socket_errors"].items() if v}
            if errors:
                problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
            if srv.proc.poll() is not None:
                problems.append(f"server exited with {srv.proc.returncode} during the run:\n"
                                + tail(srv.log))
            if self.upstream is not None and self.upstream.proc.poll() is not None:
                problems.append("the upstream nginx died:\n" + tail(self.upstream.log))
            if not problems:
                # The server must still answer correctly after the load.
                wait_ready(srv.proc, srv.port, srv.path, self.body, srv.log, timeout=5)
            if srv.admin_port:
                self._save_metrics(name, srv.admin_port, result)
            if name in ("farts-fixed", "farts-proxy") and a.profile and not problems:
                result["profile"] = self.profile(name, srv, url)
            result["ok"] = not problems
            if problems:
                result["error"] = "; ".join(problems)
        except BenchError as e:
            result["error"] = str(e)
        finally:
            if srv is not None:
                rc = self.procs.stop(srv.proc, srv.stop_signal)
                result["exit_status"] = rc
                result["log"] = srv.log
            access_log = self.path(name, "access.log")
            if os.path.exists(access_log):  # nginx-static's: one line per request, ~100 MB
                os.remove(access_log)
        return result

    def _save_metrics(self, name: str, admin_port: int, result: dict) -> None:
        try:
            status, _, text = get("127.0.0.1", admin_port, "/metrics")
        except (OSError, http.client.HTTPException) as e:
            result["notes"].append(f"/metrics: {e}")
            return
        path = self.path(name, "metrics.txt")
        with open(path, "wb") as f:
            f.write(text)
        result["metrics"] = path if status == 200 else f"{path} (status {status})"

    # -- py-spy

    def profile(self, name: str, srv: Server, url: str) -> dict:
        """A second wrk run of the same length with py-spy recording the node.

        The table keeps the unprofiled number; this run's rate is reported beside the
        profile because sampling slows the node down.
        """
        a = self.args
        pyspy = a.py_spy or shutil.which("py-spy") or os.path.join(os.path.dirname(a.python), "py-spy")
        if not os.path.exists(pyspy) and not shutil.which(pyspy):
            return {"error": f"py-spy not found (tried {pyspy}); pip install py-spy into the venv"}
        out: dict = {}
        raw_path = self.path(name, "profile.collapsed.txt")
        svg_path = self.path(name, "profile.svg")
        log = self.path(name, "py-spy.log")

        def spy_argv(seconds: float, fmt: str, output: str) -> list[str]:
            argv = [pyspy, "record", "--pid", str(srv.proc.pid), "--rate", str(a.profile_rate),
                    "--duration", str(max(1, round(seconds))), "--function",
                    "--format", fmt, "--output", output]
            if a.profile_native:
                argv.append("--native")
            return pinned(a.client_cpu, argv)  # py-spy shares the wrk core

        # Collapsed stacks (for the own-time table) while wrk runs.
        spy = self.procs.start("py-spy", spy_argv(a.seconds, "raw", raw_path), log)
        time.sleep(0.5)  # attach before the load starts
        try:
            stats, _ = run_wrk(a, url, a.seconds)
            out["rps_while_profiled"] = stats["rps"]
            out["p99_ms_while_profiled"] = stats.get("p99_ms")
        except BenchError as e:
            out["wrk_error"] = str(e)
        try:
            spy.wait(a.seconds + 30)
        except subprocess.TimeoutExpired:
            pass
        rc = self.procs.stop(spy)
        if rc != 0 or not os.path.exists(raw_path):
            out["error"] = f"py-spy exited with {rc}:\n" + tail(log)
            return out
        out["collapsed"] = raw_path
        out.update(own_time(raw_path, a.profile_top))
        # A flamegraph SVG from a short second recording (py-spy writes one format per run).
        spy = self.procs.start("py-spy", spy_argv(min(5, a.seconds), "flamegraph", svg_path), log)
        time.sleep(0.5)
        try:
            run_wrk(a, url, min(5, a.seconds))
        except BenchError:
            pass
        try:
            spy.wait(40)
        except subprocess.TimeoutExpired:
            pass
        if self.procs.stop(spy) == 0 and os.path.exists(svg_path):
            out["flamegraph"] = svg_path
        return out

    def close(self) -> None:
        if self.upstream is not None:
            self.procs.stop(self.upstream.proc)
            self.upstream = None
        self.procs.stop_all()


def own_time(collapsed_path: str, top: int) -> dict:
    """Own (leaf) and total (inclusive) samples per function from py-spy's raw format."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    with open(collapsed_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [fr for fr in stack.split(";") if fr]
            # py-spy puts the thread ("process 123:\"python\"", "thread (0x..)") first.
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            samples += n
            own[frames[-1]] += n
            for fr in set(frames):
                total[fr] += n
    rows = [{"function": fn, "own": n, "own_pct": 100 * n / samples if samples else 0,
             "total_pct": 100 * total[fn] / samples if samples else 0}
            for fn, n in own.most_common(top)]
    return {"samples": samples, "top_own": rows}


# ---------------------------------------------------------------- report


def fmt_ms(v) -> str:
    return "-" if v is None else (f"{v:.2f}ms" if v < 100 else f"{v:.0f}ms")


def report(results: list[dict], args) -> str:
    lines = []
    header = (f"{'name':<23} {'requests/s':>11} {'req/cpu-s':>10} {'p50':>9} {'p99':>9} {'B/resp':>7} "
              f"{'srv cpu':>7} {'wrk cpu':>7} {'irq':>4} {'others':>6} {'cores busy':>10}  status")
    lines += [header, "-" * len(header)]
    for r in results:
        rps = f"{r['rps']:,.0f}" if "rps" in r else "-"
        status = "ok" if r["ok"] else "FAILED: " + r.get("error", "?").splitlines()[0]
        if "upstream_cpu_pct" in r:
            status += f" (upstream nginx {r['upstream_cpu_pct']:.0f}%)"
        status += "".join(f"; {n}" for n in r.get("notes", []) if n.startswith("machine busy"))
        srv_cpu = f"{r['server_cpu_pct']:.0f}%" if "server_cpu_pct" in r else "-"
        wrk_cpu = f"{r['wrk_cpu_pct']:.0f}%" if "wrk_cpu_pct" in r else "-"
        others = f"{r['others_cpu_pct']:.0f}%" if "others_cpu_pct" in r else "-"
        irq = f"{r['irq_cpu_pct']:.0f}%" if "irq_cpu_pct" in r else "-"
        cores = "/".join(f"{v:.0f}" for _, v in sorted(r.get("core_busy_pct", {}).items())) or "-"
        eff = f"{r['rps_per_server_cpu']:,.0f}" if "rps_per_server_cpu" in r else "-"
        lines.append(f"{r['name']:<23} {rps:>11} {eff:>10} {fmt_ms(r.get('p50_ms')):>9} "
                     f"{fmt_ms(r.get('p99_ms')):>9} {r.get('bytes_per_response', '-'):>7} "
                     f"{srv_cpu:>7} {wrk_cpu:>7} {irq:>4} {others:>6} {cores:>10}  {status}")
    lines.append("req/cpu-s = requests/s divided by the server's CPU share (requests per "
                 "CPU-second of the server process)")
    lines.append("CPU over the wrk run, in % of one core: srv = the server process, wrk = wrk, "
                 "irq = irq + softirq (loopback TCP), others = everything else\n(other "
                 "processes on the machine, e.g. builds; not the proxies' upstream, shown in "
                 "status); cores busy = each core (cpu0/cpu1), anyone's")
    lines.append("")
    by = {r["name"]: r for r in results if r["ok"]}
    for a, b in RATIOS:
        if a in by and b in by:
            ratio = by[a]["rps"] / by[b]["rps"]
            p99 = (f", p99 x{by[a]['p99_ms'] / by[b]['p99_ms']:.2f}"
                   if by[a].get("p99_ms") and by[b].get("p99_ms") else "")
            eff = (f", per server CPU-second {by[a]['rps_per_server_cpu'] / by[b]['rps_per_server_cpu']:.2f}"
                   if by[a].get("rps_per_server_cpu") and by[b].get("rps_per_server_cpu") else "")
            lines.append(f"{a} / {b}: {ratio:.2f} (requests/s{eff}{p99})")
        else:
            missing = ", ".join(n for n in (a, b) if n not in by)
            lines.append(f"{a} / {b}: n/a ({missing} not measured)")
    return "\n".join(lines)


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def main(argv: list[str] | None = None) -> int:
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    ap = argparse.ArgumentParser(description="wrk: farts-edge against nginx, uvicorn and bare uvloop+httptools",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="targets: " + ", ".join(TARGETS))
    ap.add_argument("--seconds", type=float, default=10, help="wrk duration per target (default 10)")
    ap.add_argument("--warmup", type=float, default=1, help="warm-up wrk run per target, seconds (0: none)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="wrk runs per target; the table shows the median one (default 1)")
    ap.add_argument("--wait-idle", type=float, default=30, metavar="SECONDS",
                    help="before each target, wait up to this long for every core to be "
                         "under 15%% busy (0: don't; default 30)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    ap.add_argument("--only", action="append", default=[],
                    help="comma-separated targets to run (repeatable); default all")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--size", type=int, default=1024, help="response body bytes (default 1024)")
    ap.add_argument("--proxy-pipeline", type=int, default=8,
                    help="farts-proxy: [upstreams.up] pipeline, GETs per upstream write (default 8; 1: off)")
    ap.add_argument("--server-cpu", default="0", help="taskset -c for the server under test (default 0)")
    ap.add_argument("--client-cpu", default="1", help="taskset -c for wrk (and py-spy) (default 1)")
    ap.add_argument("--upstream-cpu", default="1",
                    help="taskset -c for the proxies' upstream nginx (default 1, with wrk; 'none': unpinned)")
    ap.add_argument("--python", default=venv_python if os.path.exists(venv_python) else sys.executable,
                    help="interpreter for farts-edge, uvicorn and the bare server (default: .venv)")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--profile", action="store_true",
                    help="after farts-fixed's and farts-proxy's runs, one more run under py-spy record; prints the files")
    ap.add_argument("--profile-native", action="store_true",
                    help="py-spy --native (shows Cython/C frames; slower sampling)")
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--profile-top", type=int, default=15, help="functions listed by own time")
    ap.add_argument("--py-spy", default="", help="py-spy binary (default: PATH, then the venv)")
    args = ap.parse_args(argv)

    names = [n.strip() for chunk in args.only for n in chunk.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    selected = [t for t in TARGETS if not names or t in names]
    for tool in (args.wrk, "taskset"):
        if not shutil.which(tool):
            ap.error(f"{tool} not found; run ci/bench-setup")
    if any(t.startswith("nginx") or t == "farts-proxy" for t in selected) and not shutil.which(args.nginx):
        ap.error(f"{args.nginx} not found; run ci/bench-setup")
    if args.seconds < 1:
        ap.error("--seconds must be at least 1")
    if not 1 <= args.repeat <= 20:
        ap.error("--repeat must be 1-20")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)

    bench = Bench(args)
    started = datetime.datetime.now(datetime.UTC)
    print(f"farts-edge HTTP bench: {len(selected)} targets, {args.size}-byte body, keep-alive, "
          f"wrk -t1 -c{args.connections} -d{args.seconds:g}s --latency (warm-up {args.warmup:g}s"
          f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''})")
    print(f"  server on cpu {args.server_cpu}, wrk on cpu {args.client_cpu}; proxies' upstream: "
          f"nginx worker_processes 1 on cpu {args.upstream_cpu} (shares wrk's core, leaving the proxy "
          f"under test its core alone)")
    print(f"  {os.cpu_count()} cpus, python {platform.python_version()} ({args.python}), "
          f"{tool_version([args.wrk, '-v'])}, {tool_version([args.nginx, '-v'])}")
    print(f"  files: {bench.dir}", flush=True)
    results = []
    interrupted = False
    try:
        for name in selected:
            print(f"- {name} ...", end=" ", flush=True)
            r = bench.measure(name)
            results.append(r)
            if r["ok"]:
                runs = (" (runs: " + ", ".join(f"{x:,.0f}" for x in r["runs_rps"]) + ")"
                        if "runs_rps" in r else "")
                print(f"{r['rps']:,.0f} req/s, p99 {fmt_ms(r.get('p99_ms'))}{runs}", flush=True)
            else:
                print(f"FAILED: {r.get('error')}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; stopping what this run started", flush=True)
    finally:
        bench.close()

    print()
    print(report(results, args))
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        print(f"\npy-spy on {r['name']} (pid sampled at {args.profile_rate}/s, "
              f"{'native' if args.profile_native else 'Python'} frames):")
        if "rps_while_profiled" in prof:
            print(f"  while profiled: {prof['rps_while_profiled']:,.0f} req/s, "
                  f"p99 {fmt_ms(prof.get('p99_ms_while_profiled'))}")
        if prof.get("error"):
            print("  " + prof["error"])
        if prof.get("top_own"):
            print(f"  top {len(prof['top_own'])} by own time, of {prof['samples']} non-idle samples:")
            print(f"  {'own%':>6} {'total%':>7}  function")
            for row in prof["top_own"]:
                print(f"  {row['own_pct']:6.1f} {row['total_pct']:7.1f}  {row['function']}")
        for key in ("collapsed", "flamegraph"):
            if prof.get(key):
                print(f"  {key}: {prof[key]}")
    if args.json:
        doc = {
            "started": started.isoformat(timespec="seconds"),
            "params": {k: v for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "wrk": tool_version([args.wrk, "-v"]), "nginx": tool_version([args.nginx, "-v"])},
            "files": bench.dir,
            "results": results,
            "ratios": {f"{a}/{b}": (next(r["rps"] for r in results if r["name"] == a and r["ok"]) /
                                    next(r["rps"] for r in results if r["name"] == b and r["ok"]))
                       for a, b in RATIOS
                       if {a, b} <= {r["name"] for r in results if r["ok"]}},
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nJSON: {args.json}")
    return 1 if interrupted or not results or not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
