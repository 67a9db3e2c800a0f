"""`python -m bench project --target PROFILE [RUN.json...]`: each scenario's capacity on a
hardware class, PROJECTED from what this machine measured.

    capacity = (throughput per server CPU-second, measured here, one worker)
             x per_core   (a core of the target against a core here)
             x parallel   (how many one-core equivalents all the target's threads give)
             x scaling    (per-CPU-second efficiency of N workers against one, measured
                           when the runs have a workers dimension, else assumed)

per_core and parallel come from the profile's calibration when one was measured on such
a machine (`python -m bench calibrate --save PROFILE`), else from its [projection]
figures, each with its basis (published scores or stated assumptions). Every assumption
is printed with the figures; the load generator is assumed to run elsewhere.
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import tomllib

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = os.path.join(HERE, "profiles")
P99_LIMIT_MS = 100.0
ASSUMED_SCALING = 0.9  # issue 19's target: N workers give >= 0.9 of N x one worker per CPU-second
EVENTS_PER_SUBSCRIBER_S = 1.0  # the operator question's assumed event rate per subscriber
RAM_SHARE_FOR_CONNECTIONS = 0.5
OPERATOR_QUESTIONS = {  # what an operator asks of one node, and which scenario answers it
    "HTTP requests/s (fixed answer)": "http-fixed",
    "HTTP requests/s through the reverse proxy": "proxy",
    "HTTPS (h2) requests/s": "tls-h2",
    "CDN hits/s": "cdn-hits",
    "DNS queries/s": "dns",
    "MongoDB queries/s (find_one)": "db",
    "pub/sub subscribers": "fanout",
}


class ProjectError(Exception):
    pass


def load_profiles(folder: str = PROFILES) -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.toml"))):
        with open(path, "rb") as f:
            try:
                prof = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ProjectError(f"{path}: {e}") from None
        for key in ("name", "title", "cores", "threads", "projection"):
            if key not in prof:
                raise ProjectError(f"{path}: no {key!r}")
        for key in ("per_core_vs_host", "per_core_basis", "parallel_speedup", "parallel_basis"):
            if key not in prof["projection"]:
                raise ProjectError(f"{path}: [projection] has no {key!r}")
        prof["path"] = path
        out[prof["name"]] = prof
    return out


def load_runs(paths: list[str]) -> list[dict]:
    if not paths:
        found = sorted(glob.glob(os.path.join(HERE, "results", "run-*.json")), key=os.path.getmtime)
        paths = found[-1:]
    if not paths:
        raise ProjectError("no run JSON given and none in bench/results/: run `python -m bench run` first")
    runs = []
    for p in paths:
        with open(p) as f:
            doc = json.load(f)
        doc["path"] = p
        runs.append(doc)
    return runs


def factors(prof: dict, host_cal: dict | None, host_model: str = "") -> list[tuple[str, float, str]]:
    """(name, value, basis) of per_core and parallel for one profile: measured on this
    machine when it is of the profile's class, else from a calibration saved into the
    profile, else the profile's published or assumed figures."""
    cal, proj = prof.get("calibration"), prof["projection"]
    if host_cal and any(m in host_model for m in prof.get("match", [])):
        return [("per_core", 1.0, f"MEASURED: the runs are from this class ({host_model})"),
                ("parallel", host_cal["parallel_speedup"],
                 f"MEASURED: calibration on this machine's {host_cal['processes']} processes")]
    if cal and host_cal:
        return [("per_core", cal["single_per_s"] / host_cal["single_per_s"],
                 f"MEASURED: calibration {cal['single_per_s']:,}/s there ({cal.get('measured', '?')}) against "
                 f"{host_cal['single_per_s']:,}/s here"),
                ("parallel", cal["multi_per_s"] / cal["single_per_s"],
                 f"MEASURED: calibration on {cal['processes']} processes there")]
    return [("per_core", proj["per_core_vs_host"], proj["per_core_basis"]),
            ("parallel", proj["parallel_speedup"], proj["parallel_basis"])]


def scaling(rows: list[dict]) -> tuple[float, str]:
    """Per-CPU-second efficiency of the most workers measured against one worker."""
    by_workers: dict[int, list[float]] = {}
    for r in rows:
        if r["per_cpu_s"]:
            by_workers.setdefault(r["workers"], []).append(r["per_cpu_s"])
    most = max(by_workers, default=1)
    if most > 1 and 1 in by_workers:
        eff = statistics.median(by_workers[most]) / statistics.median(by_workers[1])
        return eff, f"MEASURED: {most} workers at {eff:.2f} of one worker's per-CPU-second throughput"
    return ASSUMED_SCALING, (f"ASSUMED {ASSUMED_SCALING}: the runs have no workers dimension (one worker "
                             "only); issue 19's target for near-linear scaling")


def project(runs: list[dict], prof: dict) -> dict:
    host = next((r for r in reversed(runs) if r.get("calibration")), None)
    host_cal = host["calibration"] if host else None
    fac = factors(prof, host_cal, host["machine"].get("cpu_model", "") if host else "")
    per_core, parallel = fac[0][1], fac[1][1]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run["results"]:
            if not r["peer"] and r["ok"]:
                groups.setdefault((r["scenario"], r["variant"], r["target"]), []).append(r)
    rows, notes = [], set()
    for (scenario, variant, target), rs in sorted(groups.items()):
        one = [r for r in rs if r["workers"] == 1 and r["per_cpu_s"]]
        if not one:
            notes.add(f"{scenario}: no per-CPU-second figure (the script measures no server CPU): not projected")
            continue
        eff, eff_basis = scaling(rs)
        per_cpu = statistics.median(r["per_cpu_s"] for r in one)
        p99s = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
        capacity = per_cpu * per_core * parallel * eff
        note = []
        if p99s and max(p99s) > P99_LIMIT_MS:
            note.append(f"p99 {max(p99s):.0f} ms > {P99_LIMIT_MS:.0f} ms at the measured load: holds less")
        cpu = statistics.median(r["server_cpu_pct"] or 0 for r in one)
        if cpu < 50:
            note.append(f"server at {cpu:.0f}% of a core: not saturated (the load generator or other work on the machine was the limit)")
        if scenario == "db" and rs[0]["extra"].get("workload", "").startswith(("insert", "update")):
            note.append("writes wait for fsync (group commit): the disk bounds it, not the CPU")
        out = {"scenario": scenario, "variant": variant, "target": target, "metric": rs[0]["metric"],
               "measured_per_cpu_s": per_cpu, "measured_runs": len(one),
               "p99_ms_median": statistics.median(p99s) if p99s else None,
               "p99_ms_max": max(p99s) if p99s else None, "scaling": eff, "scaling_basis": eff_basis,
               "projected": capacity, "notes": note}
        if scenario.startswith("fanout"):
            out["subscribers"] = rs[0]["extra"].get("subscribers", 0)
            kib = statistics.median([r["extra"]["kib_per_conn"] for r in rs if r["extra"].get("kib_per_conn")]
                                    or [0]) or None
            out["subscribers_cpu"] = capacity / EVENTS_PER_SUBSCRIBER_S
            out["subscribers_memory"] = (prof.get("ram_gib", 0) * RAM_SHARE_FOR_CONNECTIONS * 2**20 / kib
                                         if kib and prof.get("ram_gib") else None)
        rows.append(out)
    assumptions = [f"{name} = {value:.2f}: {basis}" for name, value, basis in fac]
    assumptions += sorted({f"scaling = {r['scaling']:.2f}: {r['scaling_basis']}" for r in rows})
    assumptions += [
        "throughput per server CPU-second is this machine's (the median over the runs, one worker, "
        "server pinned to one core, load generator on another): the target's load generators are elsewhere",
        "the server's CPU-seconds are its process's (user + system, loopback TCP): interrupt and softirq work "
        "a real NIC adds on other cores is not in them, so a real link holds less",
        f"capacity is stated at p99 <= {P99_LIMIT_MS:.0f} ms: every figure's measured p99 is shown; the closed-loop "
        "runs measure p99 at saturation, so a p99 under the limit there holds at the projected rate",
        f"subscribers: each receives {EVENTS_PER_SUBSCRIBER_S:g} event/s (subscribers = deliveries/s / "
        f"{EVENTS_PER_SUBSCRIBER_S:g}), and at most {RAM_SHARE_FOR_CONNECTIONS:.0%} of an assumed "
        f"{prof.get('ram_gib', '?')} GiB holds connections (kib_per_conn measured here)",
        *sorted(notes)]
    return {"target": prof["name"], "title": prof["title"], "threads": prof["threads"],
            "cores": prof["cores"], "host_calibration": host_cal, "assumptions": assumptions, "rows": rows,
            "runs": [r["path"] for r in runs], "any_smoke": any(r.get("smoke") for r in runs)}


def answers(p: dict) -> list[tuple[str, str]]:
    """The operator's questions with the projected figure that answers each: from the
    points measured with p99 within the limit; for subscribers, the one with the most
    subscribers (deliveries per CPU-second fall as N grows)."""
    out = []
    for question, scenario in OPERATOR_QUESTIONS.items():
        rows = [r for r in p["rows"] if r["scenario"].startswith(scenario)]
        if scenario == "db":
            rows = [r for r in rows if r["variant"].startswith("find_one")]
        if not rows:
            out.append((question, "not measured in these runs"))
            continue
        within = [r for r in rows if r["p99_ms_max"] is None or r["p99_ms_max"] <= P99_LIMIT_MS]
        if not within:
            worst = min(rows, key=lambda r: r["p99_ms_max"])
            out.append((question, f"no measured point had p99 <= {P99_LIMIT_MS:.0f} ms (lowest: "
                        f"{fmt_ms(worst['p99_ms_max'])}, {worst['variant']}): not answered"))
            continue
        if scenario == "fanout":
            best = max(within, key=lambda r: (r["subscribers"], r["projected"]))
            held = min(x for x in (best["subscribers_cpu"], best["subscribers_memory"]) if x)
            out.append((question, f"{held:,.0f} ({best['variant']} measured; CPU bound {best['subscribers_cpu']:,.0f}"
                        + (f", memory bound {best['subscribers_memory']:,.0f}" if best["subscribers_memory"] else "")
                        + f"; p99 {fmt_ms(best['p99_ms_max'])})"))
            continue
        best = max(within, key=lambda r: r["projected"])
        out.append((question, f"{best['projected']:,.0f} {best['metric']} ({best['variant']}; "
                    f"p99 measured {fmt_ms(best['p99_ms_max'])})"))
    return out


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def markdown(p: dict) -> str:
    lines = [f"### PROJECTED: one node on {p['title']}", ""]
    if p["any_smoke"]:
        lines += ["**From a --smoke run: plumbing only, these figures mean nothing.**", ""]
    lines += ["| question (p99 <= 100 ms) | PROJECTED answer |", "| --- | --- |"]
    lines += [f"| {q} | {a} |" for q, a in answers(p)]
    lines += ["", "| scenario | variant | target | measured per server CPU-s | scaling | PROJECTED | "
              "p99 measured (median / max) | notes |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in p["rows"]:
        lines.append(f"| {r['scenario']} | {r['variant']} | {r['target']} | {r['measured_per_cpu_s']:,.0f} "
                     f"{r['metric']} | {r['scaling']:.2f} | **{r['projected']:,.0f}** {r['metric']} | "
                     f"{fmt_ms(r['p99_ms_median'])} / {fmt_ms(r['p99_ms_max'])} | {'; '.join(r['notes'])} |")
    lines += ["", "Assumptions:", *[f"- {a}" for a in p["assumptions"]], ""]
    return "\n".join(lines)


def main(target: str, paths: list[str], as_json: bool) -> int:
    try:
        profiles = load_profiles()
        if target not in profiles:
            print(f"no profile {target!r}; known: {', '.join(profiles)}")
            return 2
        p = project(load_runs(paths), profiles[target])
    except (ProjectError, OSError, ValueError) as e:
        print(f"project: {e}")
        return 1
    print(json.dumps(p, indent=1) if as_json else markdown(p))
    return 0
