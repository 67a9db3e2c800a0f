"""One result schema for every scenario: what `run` writes and `report`/`project` read.

A run document (one JSON file per `python -m bench run`):

    {"schema": SCHEMA, "run_id", "started", "finished", "smoke", "argv",
     "machine": {...machine.describe()}, "calibration": {...calibrate.measure()} | null,
     "scenarios": [{"name", "status": "ok" | "failed" | "skipped", "reason", "script",
                    "argv", "exit_status", "seconds", "log", "raw_json", "targets",
                    "skipped_targets": {target: why}}],
     "results": [row, ...]}

A row is one measured thing (a target of a scenario at one variant):

    scenario, target, peer (False for farts-edge's own targets), variant (e.g. "1 KiB",
    "1000 subscribers", "find_one x16"), workers (server processes; 1 unless the script
    reports more), metric (the unit of throughput), throughput, p50_ms, p99_ms,
    duration_s, server_cpu_pct (% of one core over the measured window), server_cpu_s
    (CPU-seconds the server used in it), per_cpu_s (throughput per server CPU-second),
    ok, error, latency_cdf ([[fraction, ms], ...] where the script gives a distribution),
    extra (scenario-specific figures).
"""
from __future__ import annotations

SCHEMA = "farts-edge-bench/1"

ROW_KEYS = {
    "scenario": str, "target": str, "peer": bool, "variant": str, "workers": int, "metric": str,
    "throughput": (int, float), "p50_ms": (int, float, type(None)), "p99_ms": (int, float, type(None)),
    "duration_s": (int, float, type(None)), "server_cpu_pct": (int, float, type(None)),
    "server_cpu_s": (int, float, type(None)), "per_cpu_s": (int, float, type(None)),
    "ok": bool, "error": (str, type(None)), "latency_cdf": (list, type(None)), "extra": dict,
}
SCENARIO_KEYS = {"name": str, "status": str, "reason": (str, type(None)), "script": str,
                 "argv": list, "exit_status": (int, type(None)), "seconds": (int, float),
                 "log": (str, type(None)), "raw_json": (str, type(None)), "targets": list,
                 "skipped_targets": dict}
RUN_KEYS = {"schema": str, "run_id": str, "started": str, "finished": str, "smoke": bool,
            "argv": list, "machine": dict, "calibration": (dict, type(None)),
            "scenarios": list, "results": list}
STATUSES = ("ok", "failed", "skipped")


def row(scenario: str, target: str, *, metric: str, throughput: float, variant: str = "",
        workers: int | None = None, p50_ms: float | None = None, p99_ms: float | None = None,
        duration_s: float | None = None, server_cpu_pct: float | None = None,
        per_cpu_s: float | None = None, ok: bool = True, error: str | None = None,
        latency_cdf: list | None = None, extra: dict | None = None) -> dict:
    """A row; server CPU-seconds and per-CPU-second throughput derived where the script
    gave only the CPU share."""
    server_cpu_s = None
    if server_cpu_pct is not None and duration_s:
        server_cpu_s = server_cpu_pct / 100 * duration_s
    if per_cpu_s is None and server_cpu_pct:
        per_cpu_s = throughput / (server_cpu_pct / 100)
    return {"scenario": scenario, "target": target, "peer": not target.startswith("farts"),
            "variant": variant, "workers": int(workers or 1), "metric": metric,
            "throughput": float(throughput), "p50_ms": p50_ms, "p99_ms": p99_ms,
            "duration_s": duration_s, "server_cpu_pct": server_cpu_pct, "server_cpu_s": server_cpu_s,
            "per_cpu_s": per_cpu_s, "ok": bool(ok), "error": error, "latency_cdf": latency_cdf,
            "extra": extra or {}}


def _check(doc: dict, keys: dict, where: str) -> list[str]:
    problems = []
    for key, kind in keys.items():
        if key not in doc:
            problems.append(f"{where}: no {key!r}")
        elif not isinstance(doc[key], kind) or (kind is int and isinstance(doc[key], bool)):
            problems.append(f"{where}: {key!r} is {type(doc[key]).__name__}: {doc[key]!r:.60}")
    return problems


def validate(doc: dict) -> list[str]:
    """Every way `doc` departs from the run schema (empty: it conforms)."""
    problems = _check(doc, RUN_KEYS, "run")
    if problems:
        return problems
    if doc["schema"] != SCHEMA:
        problems.append(f"run: schema {doc['schema']!r}, want {SCHEMA!r}")
    for i, sc in enumerate(doc["scenarios"]):
        problems += _check(sc, SCENARIO_KEYS, f"scenarios[{i}]")
        if sc.get("status") not in STATUSES:
            problems.append(f"scenarios[{i}]: status {sc.get('status')!r}")
    for i, r in enumerate(doc["results"]):
        problems += _check(r, ROW_KEYS, f"results[{i}]")
        cdf = r.get("latency_cdf") or []
        if any(len(p) != 2 or not 0 < p[0] <= 1 for p in cdf):
            problems.append(f"results[{i}]: latency_cdf points must be [fraction in (0, 1], ms]")
    return problems
