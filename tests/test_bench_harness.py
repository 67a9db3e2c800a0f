"""The benchmark harness (python -m bench): its smoke run drives the real bench scripts
(bench/db.py always, bench/http.py with wrk where wrk is installed) against real
servers, and the report and projection are made from that run's JSON. The figures of
a smoke run mean nothing; what is checked is that every part is produced and conforms."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import goals, project, report
from bench.harness.run import plan, run_scenario
from bench.harness.scenarios import (
    SCENARIOS,
    Scenario,
    cdn_rows,
    db_rows,
    dns_rows,
    fanout_rows,
    h2_rows,
    http_rows,
    replication_rows,
)
from bench.harness.schema import SCHEMA, row, validate

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_run_then_report_and_projection(tmp_path):
    scenarios = ["db"] + (["http-fixed"] if shutil.which("wrk") else [])
    done = bench("run", *scenarios, "--smoke", "--out", str(tmp_path), "--calibrate-seconds", "0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("run-*-smoke.json")
    doc = json.loads(path.read_text())
    assert validate(doc) == [], validate(doc)
    assert doc["schema"] == SCHEMA and doc["smoke"] is True
    assert doc["calibration"]["single_per_s"] > 0 and doc["machine"]["logical_cpus"] >= 1
    assert [s["name"] for s in doc["scenarios"]] == scenarios
    assert all(s["status"] == "ok" for s in doc["scenarios"]), doc["scenarios"]
    db = [r for r in doc["results"] if r["scenario"] == "db"]
    assert {r["target"] for r in db} == {"farts-db", "embedded-lmdb"}
    ours = [r for r in db if r["target"] == "farts-db"]
    assert {r["variant"] for r in ours} == {"ping x1", "find_one x1", "insert_one x1"}
    for r in ours:  # the server's CPU was measured: per-CPU-second throughput exists
        assert r["throughput"] > 0 and r["per_cpu_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["latency_cdf"][0][0] == 0.5 and r["latency_cdf"][-1][0] == 0.999
    if "http-fixed" in scenarios:
        http = {r["target"]: r for r in doc["results"] if r["scenario"] == "http-fixed"}
        assert "farts-fixed" in http and http["farts-fixed"]["peer"] is False
        assert http["farts-fixed"]["throughput"] > 0 and http["farts-fixed"]["server_cpu_s"] > 0

    out = tmp_path / "report"
    done = bench("report", str(path), "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (out / "report.md").read_text()
    assert "SMOKE" in text and "## db" in text and "PROJECTED" in text
    for scenario in scenarios:
        assert (out / f"{scenario}.png").stat().st_size > 1000
        assert (out / f"{scenario}-cdf.png").stat().st_size > 1000
    for name in project.load_profiles():
        assert name in text or project.load_profiles()[name]["title"] in text
    if "http-fixed" in scenarios:  # both sides of the fixed-route goal ran: its verdict is there
        assert "## Issue 19's targets in this run" in text and "| http-fixed | 1024 B | nginx-static-tuned |" in text

    done = bench("project", "--target", "i5-13500", str(path), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PROJECTED" in done.stdout and "Assumptions:" in done.stdout
    assert "ASSUMED 0.9" in done.stdout  # no workers dimension yet: the scaling is an assumption
    assert "MongoDB queries/s (find_one)" in done.stdout


def test_goal_verdicts_need_the_ratio_and_the_tail():
    def side(rps, p99):
        return {"throughput": rps, "p99_ms": p99}
    summaries = {("proxy", "1024 B", "farts-proxy", 1): side(100.0, 2.0),
                 ("proxy", "1024 B", "nginx-proxy", 1): side(95.0, 1.5),
                 ("http-fixed", "1024 B", "farts-fixed", 1): side(90.0, 1.0),
                 ("http-fixed", "1024 B", "nginx-static-tuned", 1): side(100.0, 9.0),
                 ("cdn-hits", "1 KiB", "farts-cdn", 2): side(500.0, 1.0),  # workers=2: not a verdict
                 ("cdn-hits", "1 KiB", "nginx-cache", 1): side(100.0, 1.0),
                 ("cdn-hits", "100 KiB", "farts-cdn", 1): side(120.0, 1.0),
                 ("cdn-hits", "100 KiB", "nginx-cache", 1): side(100.0, 1.0),
                 ("cdn-hits", "100 KiB", "nginx-cache-nosf", 1): side(150.0, 1.0)}
    got = {v["goal"].scenario + v["goal"].variant: v for v in goals.verdicts(summaries)}
    assert set(got) == {"proxy1024 B", "http-fixed1024 B", "cdn-hits100 KiB"}
    # against the best of nginx's two caches: 120 / 150, not 120 / 100
    assert got["cdn-hits100 KiB"]["peer"] == "nginx-cache-nosf" and not got["cdn-hits100 KiB"]["met"]
    got = {v["goal"].scenario: v for v in goals.verdicts(summaries)}
    assert got["proxy"]["met"] and round(got["proxy"]["p99_ratio"], 3) == 1.333
    assert not got["http-fixed"]["met"] and round(got["http-fixed"]["ratio"], 2) == 0.9
    summaries[("proxy", "1024 B", "farts-proxy", 1)] = side(100.0, 3.1)  # throughput met, tail not
    assert not {v["goal"].scenario: v for v in goals.verdicts(summaries)}["proxy"]["met"]
    text = "\n".join(goals.markdown(summaries))
    assert "| proxy | 1024 B | nginx-proxy | 1.05 | >= 1.0 | 2.07 | <= 2.0 | **no** | callgrind" in text


def test_unmeasurable_and_uninstalled_are_reported_not_run(tmp_path):
    entry, rows = run_scenario(SCENARIOS["fanout-100k"], False, str(tmp_path))
    assert entry["status"] == "skipped" and "15000" in entry["reason"] and rows == []
    fake = Scenario("x", "x", "http.py", {"farts-x": ("exe:wrk",), "peer-x": ("exe:no-such-tool-here",)},
                    lambda t, s: [], lambda d, c: [])
    chosen, skipped = plan(fake, smoke=False)
    assert "peer-x" not in chosen and "no-such-tool-here" in skipped["peer-x"]
    no_workers = Scenario("y", "y", "ws_codec.py", {"farts-y": ()}, lambda t, s: [], lambda d, c: [])
    entry, rows = run_scenario(no_workers, True, str(tmp_path), workers=2)
    assert entry["status"] == "skipped" and "--workers" in entry["reason"] and rows == []


def test_projection_factors_measured_where_possible():
    prof = project.load_profiles()["ryzen5-5600x"]
    here = {"single_per_s": 100_000, "multi_per_s": 190_000, "processes": 2, "parallel_speedup": 1.9}
    assumed = project.factors(prof, here, "Intel(R) Xeon(R) Processor")
    assert [f[1] for f in assumed] == [1.4, 7.9] and assumed[0][2].startswith("ASSUMED")
    on_class = project.factors(prof, here, "AMD Ryzen 5 5600X 6-Core Processor")
    assert [f[1] for f in on_class] == [1.0, 1.9] and on_class[0][2].startswith("MEASURED")
    saved = dict(prof, calibration={"single_per_s": 150_000, "multi_per_s": 1_050_000, "processes": 12})
    measured = project.factors(saved, here, "Intel(R) Xeon(R) Processor")
    assert [f[1] for f in measured] == [1.5, 7.0] and all(f[2].startswith("MEASURED") for f in measured)


def test_normalisers_derive_cpu_seconds_and_per_cpu_throughput():
    http_doc = {"params": {"size": 1024}, "results": [
        {"name": "farts-fixed", "ok": True, "rps": 1000.0, "p50_ms": 1.0, "p75_ms": 1.5, "p90_ms": 2.0,
         "p99_ms": 4.0, "server_cpu_pct": 50.0, "duration_s": 10.0},
        {"name": "nginx-proxy", "ok": False, "error": "socket errors", "rps": 10.0, "duration_s": 10.0},
        {"name": "uvicorn", "ok": False, "error": "never answered"}]}
    fixed, nginx = http_rows("proxy")(http_doc, {})
    assert fixed["server_cpu_s"] == 5.0 and fixed["per_cpu_s"] == 2000.0 and fixed["peer"] is False
    assert fixed["latency_cdf"] == [[0.5, 1.0], [0.75, 1.5], [0.9, 2.0], [0.99, 4.0]]
    assert nginx["peer"] is True and nginx["ok"] is False and nginx["per_cpu_s"] is None
    fan = fanout_rows({"params": {"seconds": 5}, "results": [
        {"name": "farts", "subscribers": 1000, "ok": True, "deliveries_per_s": 5e5, "p50_ms": 2.0,
         "p99_ms": 9.0, "server_cpu_pct": 100.0, "per_server_cpu_s": 5e5, "kib_per_conn": 3.5}]}, {"scenario": "fanout-1k"})
    assert fan[0]["variant"] == "1000 subscribers" and fan[0]["server_cpu_s"] == 5.0
    doc = {"schema": SCHEMA, "run_id": "r", "started": "s", "finished": "f", "smoke": True, "argv": [],
           "machine": {}, "calibration": None, "scenarios": [], "results": [*fan, fixed]}
    assert validate(doc) == []
    bad = dict(doc, results=[dict(fixed, throughput="fast", latency_cdf=[[99, 1.0]])])
    problems = validate(bad)
    assert any("throughput" in p for p in problems) and any("latency_cdf" in p for p in problems)
    rows = db_rows({"results": [{"target": "farts", "workload": "find_one", "clients": 16, "ops": 800.0,
                                 "p50": 1.0, "p99": 3.0, "seconds": 2.0, "server_cpu_pct": 80.0,
                                 "cdf": [[0.5, 1.0], [0.99, 3.0]]}]}, {})
    assert rows[0]["target"] == "farts-db" and rows[0]["per_cpu_s"] == 1000.0


def test_normalisers_of_the_scripts_the_ci_smoke_does_not_run():
    """The --json shapes of bench/cdn.py, h2.py, dns.py and replication.py (as their smoke
    runs wrote them), into rows that conform."""
    cdn = cdn_rows([{"name": "farts-cdn", "size": 1024, "rps": r, "ok": True, "p50_ms": 1.0, "p99_ms": 3.0,
                     "duration_s": 1.0, "server_cpu_pct": 50.0, "cpu_us_per_req": 5.0, "mib_per_s": 1.0}
                    for r in (900.0, 1000.0)], {"scenario": "cdn-misses"})
    [best] = cdn
    assert best["throughput"] == 1000.0 and best["per_cpu_s"] == 200_000.0 and best["variant"] == "1 KiB"
    h2 = h2_rows({"args": {"seconds": 5}, "results": [{"name": "nginx", "ok": False}], "best": {
        "farts": {"rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "server_cpu_pct": 25.0,
                  "latency_cdf": [[0.5, 1.0], [0.99, 2.0]]},
        "nginx": {"rps": 200.0, "server_cpu_pct": 50.0}}}, {})
    assert [(r["target"], r["ok"], r["per_cpu_s"]) for r in h2] == [("farts", True, 400.0), ("nginx", False, 400.0)]
    dns = dns_rows({"results": {"farts/dnsload": {"qps": 1000.0, "sent": 1000, "lost": 50, "server_cpu": 0.5,
                                                  "p50_ms": 0.2, "p99_ms": 1.0},
                                "gdnsd/dnsperf": {"qps": 2000.0, "lost": 0, "server_cpu": 0.5, "avg_ms": 0.1}}},
                   {"seconds": 10.0})
    assert [(r["target"], r["ok"], r["server_cpu_s"]) for r in dns] == [("farts-dns", False, 5.0), ("gdnsd", True, 5.0)]
    repl = replication_rows({"params": {"rate": 100, "seconds": 2}, "ok": True,
                             "lag": {"written": 200, "rate": 99.0, "ack_p50": 0.005, "ack_p99": 0.02,
                                     "node-2": {"seen": 200, "p50": 0.01, "p99": 0.03, "max": 0.04},
                                     "node-3": {"seen": 200, "p50": 0.02, "p99": 0.05, "max": 0.06}}}, {})
    assert repl[0]["p99_ms"] == 50.0 and repl[0]["per_cpu_s"] is None
    for r in [*cdn, *h2, *dns, *repl]:
        assert validate({"schema": SCHEMA, "run_id": "r", "started": "s", "finished": "f", "smoke": True,
                         "argv": [], "machine": {}, "calibration": None, "scenarios": [], "results": [r]}) == []


def test_worker_scaling_is_measured_when_runs_have_workers(tmp_path):
    rows = [row("proxy", "farts-proxy", metric="requests/s", throughput=t, variant="1024 B", workers=w,
                p99_ms=2.0, duration_s=10.0, server_cpu_pct=pct, latency_cdf=[[0.5, 1.0], [0.99, 2.0]])
            for w, t, pct in ((1, 30000.0, 100.0), (2, 54000.0, 200.0), (4, 96000.0, 400.0))]
    rows.append(row("proxy", "nginx-proxy", metric="requests/s", throughput=90000.0, variant="1024 B",
                    p99_ms=1.0, duration_s=10.0, server_cpu_pct=100.0))
    doc = {"schema": SCHEMA, "run_id": "t", "started": "s", "finished": "f", "smoke": False, "argv": [],
           "machine": {"cpu_model": "x", "usable_cpus": 2, "logical_cpus": 2, "hypervisor": True,
                       "mem_gib": 1, "kernel": "k", "python": "3", "loadavg": [0, 0, 0], "git": "g", "tools": {}},
           "calibration": None, "scenarios": [], "results": rows, "path": "t.json"}
    assert validate({k: v for k, v in doc.items() if k != "path"}) == []
    p = project.project([doc], project.load_profiles()["i5-13500"])
    [proj] = p["rows"]
    assert proj["scaling"] == 0.8 and proj["scaling_basis"].startswith("MEASURED: 4 workers")
    assert proj["projected"] == 30000.0 * 1.6 * 11.2 * 0.8
    folder = report.write([doc], str(tmp_path))
    assert (tmp_path / "proxy-scaling.png").stat().st_size > 1000
    text = Path(folder).read_text()
    assert "proxy-scaling.png" in text and "SMOKE" not in text


def test_profiles_cite_their_figures():
    profiles = project.load_profiles()
    assert {"i5-13500", "ryzen5-5600x", "xeon-e5-2680v4"} <= set(profiles)
    for prof in profiles.values():
        for score in prof.get("scores", []):
            assert score["source"].startswith("https://") and ("single" in score or "multi" in score)
        for key in ("per_core_basis", "parallel_basis"):
            assert prof["projection"][key].startswith(("PUBLISHED", "ASSUMED", "MEASURED"))
