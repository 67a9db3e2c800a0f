#!/usr/bin/env python3
"""Before/after speed of two source trees in one run: bench/http.py, bench/fanout.py, bench/cdn.py.

    python bench/ab.py --before DIR --after DIR [--rounds 6] [--seconds 5]
                       [--only http,fanout,cdn] [--subscribers 1000,10000] [--smoke]

Each tree is a checkout of farts-edge with its compiled fast/*.so in place (a git
worktree plus the .so files). The bench scripts that run are the ones next to this
file, for both trees; what differs is the farts-edge code their servers import: each
script is started with PYTHONPATH=<tree>, which every process it starts inherits, and
the venv's `farts-edge` console script (sys.path: its own bin/ folder, then PYTHONPATH,
then site-packages, where the editable install's finder comes last) then imports
`farts` and `fast` from that tree. Two checks make sure of it:

- before the first run, one short bench/http.py farts-fixed run per tree with
  PYTHONVERBOSE=1: the server's log names the file of every module it imported, and
  each farts/ and fast/ file must be inside the tree;
- while each script runs, every `farts-edge serve` process it starts is found under
  /proc (a descendant of the script), and the fast/*.so files mapped into it
  (/proc/PID/maps) must all come from the tree's fast/ folder, and its PYTHONPATH must
  be the tree. A run where that fails, or where no server was seen, counts as failed.

Per round and scenario the two trees run one after the other, the order flipping from
one round (and one scenario) to the next, so that two rounds are A B B A: slow drift of
the machine hits both alike. Use an even --rounds. The defaults (6 rounds, 5 s per
target, quiet machine) take about 14 minutes on 2 cores: each round runs every scenario
once per tree, about 70 s per tree.

Scenarios (--only):
  http    bench/http.py --only farts-fixed,farts-proxy,nginx-proxy,nginx-static-tuned
          --proxy-pipeline 1
          (the nginx targets are the same binary on both sides: anchors whose
          after/before ratio shows the run's noise)
  fanout  bench/fanout.py --only farts --subscribers 1000,10000 --no-perf
  cdn     bench/cdn.py --only farts-cdn --sizes 1024,102400 --rounds 1

Each script writes --json into the results folder (printed at the start and the end),
beside its output (*.log). At the end, one Markdown table per scenario: the median
over the rounds of each side, after/before, the median p99 of each side, after/before
per server CPU-second, and the spread of each side's runs ((max - min) / median); a
throughput ratio under --threshold (0.95) is flagged. summary.json and tables.md in the
same folder hold the same.

--smoke: one round, 2 s per target, 1 s warm-ups, no idle waits (about a minute and a
half): checks the plumbing and the trees, measures nothing worth keeping.

Exit status: 0 all ran, were verified, and nothing is flagged; 1 a run failed or a
tree could not be verified; 3 all ran but a throughput ratio is under --threshold.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ["http", "fanout", "cdn"]
HTTP_FARTS = ["farts-fixed", "farts-proxy"]
HTTP_ANCHORS = ["nginx-proxy", "nginx-static-tuned"]
CDN_SIZES = [1024, 102400]
CLIENT_CPU = 1  # the scripts' default --client-cpu; their servers run on cpu 0
RUN_TIMEOUT = 1800.0  # a bound on one script run, seconds

_stop_requested = False


class ABError(Exception):
    pass


# ---------------------------------------------------------------- trees


def tree_env(tree: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONSAFEPATH", None)
    return env


VERBOSE_PATH = re.compile(r"^# (?:code object from|extension module '[^']+' loaded from) '?([^']+?)'?$")


def serve_check(tree: str, python: str, out: str, label: str) -> int:
    """One short bench/http.py farts-fixed run with PYTHONVERBOSE=1: the server's log then
    names the file of every module it imported; each farts/ and fast/ one must be in the
    tree. Returns how many there were."""
    json_path = os.path.join(out, f"preflight-{label}.json")
    argv = [python, os.path.join(HERE, "http.py"), "--only", "farts-fixed", "--seconds", "1",
            "--warmup", "0", "--wait-idle", "0", "--python", python, "--json", json_path]
    with open(os.path.join(out, f"preflight-{label}.log"), "wb") as log:
        done = subprocess.run(argv, cwd=HERE, env=dict(tree_env(tree), PYTHONVERBOSE="1"),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              timeout=180)
    try:
        with open(json_path) as f:
            node_log = json.load(f)["results"][0]["log"]
        with open(node_log, errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ABError(f"--{label} {tree}: the preflight farts-fixed run (exit {done.returncode}) "
                      f"left no server log ({e}); see {out}/preflight-{label}.log") from None
    files = [m.group(1) for m in map(VERBOSE_PATH.match, lines) if m]
    ours = [p for p in files if re.search(r"/(farts|fast)/", p) and "site-packages" not in p]
    outside = [p for p in ours if not p.startswith(tree + os.sep)]
    if outside or not any("/fast/" in p for p in ours) or not any("/farts/" in p for p in ours):
        raise ABError(f"--{label} {tree}: the server imported {len(ours)} farts/fast files, "
                      f"{len(outside)} from elsewhere, e.g. {outside[:3]}; log {node_log}")
    return len(ours)


def check_tree(tree: str, python: str, label: str, out: str) -> dict:
    """The tree's layout, and where a real `farts-edge serve` under tree_env imports from."""
    if not os.path.isfile(os.path.join(tree, "farts", "__init__.py")):
        raise ABError(f"--{label} {tree}: no farts/__init__.py")
    sos = sorted(glob.glob(os.path.join(tree, "fast", "*.so")))
    if not sos:
        raise ABError(f"--{label} {tree}: no compiled fast/*.so (build them or copy them in)")
    warnings = []
    for pyx in sorted(glob.glob(os.path.join(tree, "fast", "*.pyx"))):
        stem = os.path.basename(pyx)[:-4]
        built = [s for s in sos if os.path.basename(s).split(".")[0] == stem]
        if not built:
            warnings.append(f"fast/{stem}.pyx has no compiled .so")
        elif os.path.getmtime(pyx) > max(os.path.getmtime(s) for s in built):
            warnings.append(f"fast/{stem}.pyx is newer than its .so (rebuild?)")
    n = serve_check(tree, python, out, label)
    return {"tree": tree, "server_modules_checked": n, "so": [os.path.basename(s) for s in sos],
            "warnings": warnings, "git": git_head(tree)}


def git_head(tree: str) -> str:
    try:
        done = subprocess.run(["git", "-C", tree, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    head = done.stdout.strip()[:70] or "?"
    return head + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------- /proc watch


def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


class ServerWatch(threading.Thread):
    """Finds the `farts-edge serve` processes under one PID and what fast/*.so they map."""

    SO = re.compile(r"\s(/\S*/fast/[^/\s]+\.so)$")

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.done = threading.Event()
        self.servers: dict[int, dict] = {}

    def run(self) -> None:
        try:  # this thread only: onto the scripts' client core (wrk's), off the server's
            os.sched_setaffinity(threading.get_native_id(), {CLIENT_CPU})
        except (OSError, ValueError):
            pass
        while not self.done.is_set():
            try:
                self.scan()
            except Exception as e:  # noqa: BLE001 - a watcher must not kill the run
                self.servers.setdefault(-1, {"error": repr(e)})
            self.done.wait(self.interval)

    def scan(self) -> None:
        parents = _ppid_map()
        kids: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            kids.setdefault(ppid, []).append(pid)
        stack, below = [self.root_pid], []
        while stack:
            for k in kids.get(stack.pop(), []):
                below.append(k)
                stack.append(k)
        for pid in below:
            argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
            args = [a.decode(errors="replace") for a in argv if a]
            if "serve" not in args or not any(a.endswith("farts-edge") or a == "farts.cli" for a in args):
                continue
            s = self.servers.get(pid)
            if s is None:
                env = dict(kv.split(b"=", 1) for kv in _read(f"/proc/{pid}/environ").split(b"\0")
                           if b"=" in kv)
                try:
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                except OSError:
                    cwd = "?"
                s = self.servers[pid] = {"argv": args, "cwd": cwd, "so": set(),
                                         "pythonpath": env.get(b"PYTHONPATH", b"").decode()}
            for line in _read(f"/proc/{pid}/maps").decode(errors="replace").splitlines():
                m = self.SO.search(line)
                if m:
                    s["so"].add(m.group(1))

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        try:
            self.scan()  # a last look (the servers are usually gone by now)
        except Exception:  # noqa: BLE001
            pass

    def verdict(self, tree: str) -> tuple[bool, str, list[dict]]:
        """True when at least one server ran and every one ran the tree's code."""
        seen = [dict(v, pid=k, so=sorted(v["so"])) for k, v in self.servers.items() if k > 0]
        if not seen:
            return False, "no farts-edge server seen", seen
        bad = []
        for s in seen:
            if not s["so"]:
                bad.append(f"pid {s['pid']}: no fast/*.so mapped when looked at")
            wrong = [p for p in s["so"] if not p.startswith(os.path.join(tree, "fast") + os.sep)]
            if wrong:
                bad.append(f"pid {s['pid']} mapped {wrong[0]}")
            if s["pythonpath"] != tree:
                bad.append(f"pid {s['pid']} PYTHONPATH={s['pythonpath']!r}")
        if bad:
            return False, "; ".join(bad), seen
        n_so = len({os.path.basename(p) for s in seen for p in s["so"]})
        return True, f"{len(seen)} server(s), {n_so} fast/*.so, all from {tree}/fast", seen


# ---------------------------------------------------------------- runs


def scenario_argv(name: str, a, json_path: str) -> list[str]:
    py = a.python
    if name == "http":
        return [py, os.path.join(HERE, "http.py"), "--only", ",".join(HTTP_FARTS + HTTP_ANCHORS),
                "--seconds", f"{a.seconds:g}", "--warmup", f"{a.warmup:g}", "--repeat", "1",
                "--wait-idle", f"{a.wait_idle:g}", "--python", py, "--json", json_path,
                # Like with like: a before-tree without the upstream's pipeline key refuses
                # the config, so both sides run the proxy unpipelined.
                "--proxy-pipeline", "1"]
    if name == "fanout":
        return [py, os.path.join(HERE, "fanout.py"), "--only", "farts", "--subscribers", a.subscribers,
                "--seconds", f"{a.seconds:g}", "--warmup", f"{max(1.0, a.warmup):g}", "--repeat", "1",
                "--settle", f"{a.settle:g}", "--wait-idle", f"{a.wait_idle:g}", "--no-perf",
                "--python", py, "--json", json_path]
    if name == "cdn":
        return [py, os.path.join(HERE, "cdn.py"), "--only", "farts-cdn", "--rounds", "1",
                "--sizes", ",".join(map(str, CDN_SIZES)), "--seconds", f"{a.seconds:g}",
                "--warmup", f"{a.warmup:g}", "--idle-wait", f"{a.wait_idle:g}", "--python", py,
                "--json", json_path]
    raise ValueError(name)


_current: subprocess.Popen | None = None


def run_one(name: str, label: str, tree: str, rnd: int, a, out: str) -> dict:
    global _current
    stem = f"r{rnd + 1}-{name}-{label}"
    json_path = os.path.join(out, stem + ".json")
    log_path = os.path.join(out, stem + ".log")
    argv = scenario_argv(name, a, json_path)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ PYTHONPATH=" + tree + " " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=HERE, env=tree_env(tree), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    _current = proc
    watch = ServerWatch(proc.pid)
    watch.start()
    try:
        try:
            rc = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = stop_script(proc)
        except KeyboardInterrupt:
            stop_script(proc)  # Ctrl-C: let the script stop its servers before we go
            raise
    finally:
        watch.stop()
        _current = None
    verified, how, servers = watch.verdict(tree)
    run = {"scenario": name, "side": label, "tree": tree, "round": rnd + 1, "exit_status": rc,
           "seconds": round(time.monotonic() - t0, 1), "json": json_path, "log": log_path,
           "verified": verified, "verification": how, "servers": servers, "samples": []}
    try:
        with open(json_path) as f:
            run["samples"] = samples(name, json.load(f))
    except (OSError, ValueError) as e:
        run["error"] = f"no JSON from the script ({e})"
    return run


def stop_script(proc: subprocess.Popen) -> int:
    """The scripts stop every process they started on SIGTERM (or Ctrl-C)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def samples(name: str, doc) -> list[dict]:
    """One row per measured thing: key, throughput, p99, per server CPU-second, ok."""
    rows = []
    if name == "http":
        for r in doc["results"]:
            rows.append({"key": r["name"], "anchor": r["name"] in HTTP_ANCHORS, "value": r.get("rps"),
                         "p99_ms": r.get("p99_ms"), "per_cpu": r.get("rps_per_server_cpu"),
                         "ok": r["ok"], "error": r.get("error")})
    elif name == "fanout":
        for r in doc["results"]:
            rows.append({"key": f"{r['name']} N={r['subscribers']:,}", "anchor": False,
                         "value": r.get("deliveries_per_s"), "p99_ms": r.get("p99_ms"),
                         "per_cpu": r.get("per_server_cpu_s"), "ok": r["ok"], "error": r.get("error"),
                         "kib_per_conn": r.get("kib_per_conn")})
    elif name == "cdn":
        for r in doc:
            cpu = r.get("cpu_us_per_req")
            rows.append({"key": f"{r['name']} {r['size'] // 1024} KiB", "anchor": False,
                         "value": r.get("rps"), "p99_ms": r.get("p99_ms"),
                         "per_cpu": 1e6 / cpu if cpu else None, "ok": r["ok"], "error": None})
    return rows


# ---------------------------------------------------------------- report

UNITS = {"http": "requests/s", "fanout": "deliveries/s", "cdn": "cache hits/s"}


def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    m = med(xs)
    return (max(xs) - min(xs)) / m if len(xs) > 1 and m else None


def summarize(runs: list[dict], threshold: float) -> dict:
    out: dict = {}
    for name in SCENARIOS:
        keys: dict[str, dict] = {}
        for run in runs:
            if run["scenario"] != name:
                continue
            for s in run["samples"]:
                k = keys.setdefault(s["key"], {"anchor": s["anchor"], "before": [], "after": []})
                if s["ok"] and s["value"] and run["verified"]:
                    k[run["side"]].append(s)
        rows = []
        for key, k in keys.items():
            b, a = k["before"], k["after"]
            bm, am = med([s["value"] for s in b]), med([s["value"] for s in a])
            bc, ac = med([s["per_cpu"] for s in b]), med([s["per_cpu"] for s in a])
            ratio = am / bm if am and bm else None
            rows.append({"key": key, "anchor": k["anchor"], "runs": [len(b), len(a)],
                         "before": bm, "after": am, "ratio": ratio,
                         "p99_before_ms": med([s["p99_ms"] for s in b]),
                         "p99_after_ms": med([s["p99_ms"] for s in a]),
                         "per_cpu_ratio": ac / bc if ac and bc else None,
                         "spread_before": spread([s["value"] for s in b]),
                         "spread_after": spread([s["value"] for s in a]),
                         "before_runs": [s["value"] for s in b], "after_runs": [s["value"] for s in a],
                         "flag": ratio is not None and ratio < threshold and not k["anchor"]})
        if rows:
            out[name] = rows
    return out


def _n(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def tables(summary: dict, threshold: float) -> str:
    out = []
    for name, rows in summary.items():
        out.append(f"### {name} ({UNITS[name]}; median of each side's runs)\n")
        out.append("| target | before | after | after/before | p99 before | p99 after "
                   "| per server CPU-s after/before | spread before / after | runs | |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
            eff = "-" if r["per_cpu_ratio"] is None else f"{r['per_cpu_ratio']:.3f}"
            if r["anchor"]:
                note = "anchor (same nginx both sides: the noise)"
            elif r["ratio"] is None:
                note = "**NOT MEASURED**"
            elif r["flag"]:
                note = f"**DROP: under {threshold:.2f}**"
            else:
                note = "ok"
            out.append(f"| {r['key']} | {_n(r['before'])} | {_n(r['after'])} | {ratio} "
                       f"| {_ms(r['p99_before_ms'])} | {_ms(r['p99_after_ms'])} | {eff} "
                       f"| {_pct(r['spread_before'])} / {_pct(r['spread_after'])} "
                       f"| {r['runs'][0]} / {r['runs'][1]} | {note} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--before", required=True, help="the tree before the change")
    ap.add_argument("--after", required=True, help="the tree after the change")
    ap.add_argument("--rounds", type=int, default=6, help="rounds, each running both trees (default 6; even)")
    ap.add_argument("--seconds", type=float, default=5, help="measured seconds per target (default 5)")
    ap.add_argument("--warmup", type=float, default=1, help="warm-up seconds per target (default 1)")
    ap.add_argument("--settle", type=float, default=2, help="bench/fanout.py --settle (default 2)")
    ap.add_argument("--wait-idle", type=float, default=10,
                    help="each script's bound on waiting for quiet cores before a target (default 10)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: http,fanout,cdn")
    ap.add_argument("--subscribers", default="1000,10000", help="bench/fanout.py --subscribers")
    ap.add_argument("--threshold", type=float, default=0.95, help="flag after/before under this")
    ap.add_argument("--python", default=sys.executable,
                    help="the venv interpreter; its bin/farts-edge starts the servers (default: this one)")
    ap.add_argument("--out", help="results folder (default: a new temp folder)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 round, 2 s per target, no idle waits: plumbing only, not a measurement")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.seconds, a.warmup, a.settle, a.wait_idle = 1, 2, 1, 0.5, 0
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    if not only or any(x not in SCENARIOS for x in only):
        ap.error(f"--only: comma-separated from {','.join(SCENARIOS)}")
    if a.rounds < 1 or a.seconds < 1:
        ap.error("--rounds >= 1, --seconds >= 1")
    a.before, a.after = os.path.realpath(a.before), os.path.realpath(a.after)
    a.python = os.path.abspath(a.python)  # not realpath: a venv's python is a symlink
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            ap.error(f"{tool} not found; run ci/bench-setup")
    if ("http" in only or "cdn" in only) and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        ap.error("nginx not found; run ci/bench-setup")
    script = os.path.join(os.path.dirname(a.python), "farts-edge")
    if not os.path.exists(script):
        # Without it the scripts fall back to `python -m farts.cli` with cwd = this
        # checkout, whose farts would then shadow PYTHONPATH.
        ap.error(f"{script} not found: --python must be the venv's, with farts-edge installed")

    def on_sigterm(signum, frame):
        global _stop_requested
        _stop_requested = True
        if _current is not None and _current.poll() is None:
            _current.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_sigterm)

    out = a.out or tempfile.mkdtemp(prefix="farts-ab-")
    os.makedirs(out, exist_ok=True)
    print(f"ab: checking where each tree's server imports from (results: {out})", flush=True)
    trees = {}
    for label in ("before", "after"):
        try:
            trees[label] = check_tree(getattr(a, label), a.python, label, out)
        except (ABError, subprocess.TimeoutExpired) as e:
            print(f"ab: {e}", file=sys.stderr)
            return 1
    started = datetime.datetime.now(datetime.UTC)
    print(f"farts-edge before/after: {', '.join(only)}; {a.rounds} round(s), {a.seconds:g} s per "
          f"target{' (SMOKE: plumbing only, not a measurement)' if a.smoke else ''}")
    for label, t in trees.items():
        print(f"  {label:6} {t['tree']}  [{t['git']}]: a farts-edge serve imported all its "
              f"{t['server_modules_checked']} farts/fast files from it")
        for w in t["warnings"]:
            print(f"         WARNING: {w}")
    if a.before == a.after:
        print("  note: --before and --after are the same tree (an A/A run: the noise)")
    print(f"  scripts: {HERE}; python {platform.python_version()} ({a.python}); "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    print(f"  results: {out}", flush=True)

    runs: list[dict] = []
    try:
        for rnd in range(a.rounds):
            for si, name in enumerate(only):
                order = ["before", "after"] if (rnd + si) % 2 == 0 else ["after", "before"]
                for label in order:
                    if _stop_requested:
                        raise KeyboardInterrupt
                    print(f"- round {rnd + 1}/{a.rounds} {name:6} {label:6} ...", end=" ", flush=True)
                    run = run_one(name, label, getattr(a, label), rnd, a, out)
                    runs.append(run)
                    vals = ", ".join(f"{s['key']} {_n(s['value'])}" + ("" if s["ok"] else " FAILED")
                                     for s in run["samples"])
                    status = "ok" if run["exit_status"] == 0 else f"exit {run['exit_status']}"
                    print(f"{run['seconds']:.0f}s, {status}; {vals or run.get('error', '?') + '; log ' + run['log']}", flush=True)
                    print(f"    {'verified' if run['verified'] else 'NOT VERIFIED'}: {run['verification']}",
                          flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; the tables below hold the runs so far", flush=True)

    summary = summarize(runs, a.threshold)
    text = tables(summary, a.threshold)
    print()
    print(f"Before: {trees['before']['git']} ({a.before}); after: {trees['after']['git']} ({a.after}); "
          f"{a.rounds} round(s) in ABBA order, {a.seconds:g} s per target; "
          f"{started:%Y-%m-%d %H:%M} UTC\n")
    print(text)
    failed = [r for r in runs if r["exit_status"] != 0 or not r["verified"] or "error" in r]
    for r in failed:
        print(f"FAILED: round {r['round']} {r['scenario']} {r['side']}: exit {r['exit_status']}, "
              f"{'verified' if r['verified'] else 'not verified (' + r['verification'] + ')'}"
              f"{'; ' + r['error'] if 'error' in r else ''}; log {r['log']}")
    flagged = [f"{n} {r['key']}" for n, rows in summary.items() for r in rows if r["flag"]]
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "argv": sys.argv, "params": vars(a),
                   "trees": trees, "runs": runs, "summary": summary, "flagged": flagged}, f, indent=1)
    print(f"results: {out} (summary.json, tables.md, one .json and .log per run)")
    if _stop_requested:
        print("stopped by SIGTERM: the tables hold the runs until then")
    if failed or _stop_requested:
        return 1
    if flagged:
        print(f"under {a.threshold}: {', '.join(flagged)}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
