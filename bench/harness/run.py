"""`python -m bench run`: the scenarios one after another, one JSON document per run.

Each scenario's script runs in its own session (process group) with PYTHONPATH = this
checkout (so the servers it starts run this tree's code), its output in a log and its
--json next to it; a script that overruns its bound is stopped with SIGTERM (the
scripts then stop what they started), then SIGKILL, by its group id.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

from . import calibrate, machine
from .scenarios import SCENARIOS, Scenario, missing
from .schema import SCHEMA, validate

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
DEFAULT_OUT = os.path.join(BENCH, "results")
TIMEOUT = {True: 300.0, False: 3600.0}  # per scenario, smoke / full


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def plan(sc: Scenario, smoke: bool) -> tuple[list[str], dict[str, str]]:
    """The targets to run and, for the others, why not."""
    chosen, skipped = [], {}
    for target, needs in sc.targets.items():
        if smoke and sc.smoke_targets and target not in sc.smoke_targets:
            continue
        lacking = missing(needs)
        if lacking:
            skipped[target] = "needs " + ", ".join(n.split(":", 1)[1] for n in lacking) + " (ci/bench-setup)"
        else:
            chosen.append(target)
    return chosen, skipped


def stop_group(proc: subprocess.Popen) -> int:
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def takes_workers(script: str) -> bool:
    """Whether a bench script has a --workers option (servers with N worker processes)."""
    with open(os.path.join(BENCH, script)) as f:
        return '"--workers"' in f.read()


def run_scenario(sc: Scenario, smoke: bool, out_dir: str, workers: int | None = None) -> tuple[dict, list[dict]]:
    entry = {"name": sc.name, "status": "skipped", "reason": None, "script": f"bench/{sc.script}",
             "argv": [], "exit_status": None, "seconds": 0.0, "log": None, "raw_json": None,
             "targets": [], "skipped_targets": {}, "workers": workers}
    if sc.unsupported:
        entry["reason"] = sc.unsupported
        return entry, []
    targets, skipped = plan(sc, smoke)
    entry["targets"], entry["skipped_targets"] = targets, skipped
    first = next(iter(sc.targets))
    if first not in targets:
        entry["reason"] = f"{first}: {skipped.get(first, 'not selected')}"
        return entry, []
    stem = sc.name + (f"-w{workers}" if workers else "")
    raw, log = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.log")
    args = sc.argv(targets, smoke)
    if workers:
        if not takes_workers(sc.script):
            entry["reason"] = f"bench/{sc.script} has no --workers option yet: not run per worker count"
            return entry, []
        args += ["--workers", str(workers)]
    if sc.script in ("http.py", "fanout.py", "cdn.py", "h2.py"):
        args += ["--python", sys.executable]
    argv = [sys.executable, os.path.join(BENCH, sc.script), *args, sc.json_flag, raw]
    entry.update(argv=argv[1:], log=log)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.monotonic()
    with open(log, "wb") as f:
        f.write(("$ " + " ".join(argv) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(TIMEOUT[smoke])
    except subprocess.TimeoutExpired:
        rc = stop_group(proc)
        entry["reason"] = f"stopped after {TIMEOUT[smoke]:.0f} s"
    except KeyboardInterrupt:
        stop_group(proc)
        raise
    entry["exit_status"], entry["seconds"] = rc, round(time.monotonic() - t0, 1)
    rows: list[dict] = []
    try:
        with open(raw) as f:
            doc = json.load(f)
        entry["raw_json"] = raw
        rows = sc.rows(doc, {"scenario": sc.name, "seconds": 1.0 if smoke else 10.0, "smoke": smoke})
        # A script run with several server workers says so in its parameters (or per
        # result, which the normalisers read): the report's scaling dimension.
        params = (doc.get("params") or doc.get("args") or {}) if isinstance(doc, dict) else {}
        if isinstance(params.get("workers"), int) and params["workers"] > 1:
            for r in rows:
                r["workers"] = r["workers"] if r["workers"] > 1 else params["workers"]
    except (OSError, ValueError) as e:
        entry["reason"] = entry["reason"] or f"no JSON from the script ({type(e).__name__}: {e}); see {log}"
    except (KeyError, TypeError, IndexError) as e:
        entry["reason"] = f"the script's JSON lacks what the harness reads ({type(e).__name__}: {e}): {raw}"
    failed = rc != 0 or not rows or not all(r["ok"] for r in rows)
    entry["status"] = "failed" if failed else "ok"
    if failed and not entry["reason"]:
        bad = [f"{r['target']} {r['variant']}: {r['error']}" for r in rows if not r["ok"]]
        entry["reason"] = "; ".join(bad)[:500] or f"exit status {rc}; see {log}"
    return entry, rows


def main(names: list[str], smoke: bool, out: str | None, calibrate_seconds: float | None,
         workers: list[int] | None = None) -> int:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    selected = [SCENARIOS[n] for n in names] or [s for s in SCENARIOS.values() if s.smoke or not smoke]
    started = datetime.datetime.now(datetime.UTC)
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if smoke else "")
    out = os.path.abspath(out or DEFAULT_OUT)
    files = os.path.join(out, run_id)
    os.makedirs(files, exist_ok=True)
    doc = {"schema": SCHEMA, "run_id": run_id, "started": now(), "finished": "", "smoke": smoke,
           "argv": sys.argv, "machine": machine.describe(), "calibration": None, "scenarios": [],
           "results": []}
    print(f"bench run {run_id}: {', '.join(s.name for s in selected)}"
          f"{' (SMOKE: plumbing only, figures not worth keeping)' if smoke else ''}; files in {files}",
          flush=True)
    seconds = calibrate_seconds if calibrate_seconds is not None else (0.6 if smoke else 6.0)
    if seconds > 0:
        doc["calibration"] = calibrate.measure(seconds)
        c = doc["calibration"]
        print(f"  calibration: {c['single_per_s']:,} units/s on one core, {c['multi_per_s']:,} on "
              f"{c['processes']} ({c['parallel_speedup']}x)", flush=True)
    try:
        for sc, n in [(sc, n) for sc in selected for n in (workers or [None])]:
            print(f"- {sc.name}{f' with {n} workers' if n else ''} ...", end=" ", flush=True)
            entry, rows = run_scenario(sc, smoke, files, n)
            for r in rows:  # the count asked for, unless the script reported its own
                r["workers"] = r["workers"] if r["workers"] > 1 or not n else n
            doc["scenarios"].append(entry)
            doc["results"] += rows
            extra = "".join(f"; {t} skipped: {why}" for t, why in entry["skipped_targets"].items())
            print(f"{entry['status']} ({entry['seconds']:.0f} s, {len(rows)} rows)"
                  f"{': ' + entry['reason'] if entry['reason'] else ''}{extra}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the document holds the scenarios run so far", flush=True)
    doc["finished"] = now()
    problems = validate(doc)
    path = os.path.join(out, f"run-{run_id}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"JSON: {path}")
    for p in problems:
        print(f"SCHEMA: {p}", file=sys.stderr)
    ran = [s for s in doc["scenarios"] if s["status"] != "skipped"]
    return 1 if problems or not ran or any(s["status"] == "failed" for s in ran) else 0
