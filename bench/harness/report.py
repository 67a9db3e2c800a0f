"""`python -m bench report [RUN.json...]`: a Markdown report with PNG plots.

Into bench/reports/<run id>/ (or --out): report.md; per scenario a throughput and p99
bar chart with the peers side by side; a scaling plot where the runs have more than
one worker count; latency CDFs where the scripts give distributions (wrk's and the DB
bench's percentiles); and the PROJECTED capacity of one node of each hardware class.
Several runs: each figure is the median over the runs, p99 also its maximum.
"""
from __future__ import annotations

import os
import statistics

from . import goals, project

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(HERE, "reports")


def group(runs: list[dict]) -> dict[tuple, list[dict]]:
    """(scenario, variant, target, workers) -> the rows of every run, in scenario order."""
    out: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run["results"]:
            out.setdefault((r["scenario"], r["variant"], r["target"], r["workers"]), []).append(r)
    return out


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(rows: list[dict]) -> dict:
    return {"throughput": med(r["throughput"] for r in rows), "p50_ms": med(r["p50_ms"] for r in rows),
            "p99_ms": med(r["p99_ms"] for r in rows),
            "p99_max_ms": max((r["p99_ms"] for r in rows if r["p99_ms"] is not None), default=None),
            "server_cpu_pct": med(r["server_cpu_pct"] for r in rows),
            "per_cpu_s": med(r["per_cpu_s"] for r in rows), "ok": all(r["ok"] for r in rows),
            "runs": len(rows), "metric": rows[0]["metric"], "peer": rows[0]["peer"]}


def _n(v, spec=",.0f", unit="") -> str:
    return "-" if v is None else format(v, spec) + unit


def plot_scenario(scenario: str, items: list[tuple[tuple, dict]], path: str) -> None:
    import matplotlib.pyplot as plt

    labels = [f"{k[2]}\n{k[1]}" + (f"\n{k[3]} workers" if k[3] > 1 else "") for k, _ in items]
    colors = ["tab:orange" if not s["peer"] else "tab:blue" for _, s in items]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(items) + 4), 4.5))
    ax1.bar(range(len(items)), [s["throughput"] or 0 for _, s in items], color=colors)
    ax1.set_title(f"{scenario}: throughput ({items[0][1]['metric']})")
    ax2.bar(range(len(items)), [s["p99_ms"] or 0 for _, s in items], color=colors)
    ax2.set_title(f"{scenario}: p99 (ms, median of runs)")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(items)), labels, fontsize=7, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, "orange: farts-edge, blue: peers", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cdf(scenario: str, rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        pts = sorted(r["latency_cdf"], key=lambda p: p[0])
        ax.plot([p[1] for p in pts], [p[0] for p in pts], marker="o",
                linestyle="-" if not r["peer"] else "--", label=f"{r['target']} {r['variant']}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of requests at or under")
    save_lines(fig, ax, f"{scenario}: latency CDF (the percentiles the load generator reports)", path)


def plot_scaling(scenario: str, items: list[tuple[tuple, dict]], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple, list[tuple[int, float]]] = {}
    for k, s in items:
        if s["per_cpu_s"]:
            lines.setdefault((k[2], k[1]), []).append((k[3], s["per_cpu_s"]))
    for (target, variant), pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{target} {variant}")
    ax.set_xlabel("workers")
    ax.set_ylabel(f"{items[0][1]['metric']} per server CPU-second")
    save_lines(fig, ax, f"{scenario}: scaling by workers (flat = linear)", path)


def save_lines(fig, ax, title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(runs: list[dict], out: str | None) -> str:
    import matplotlib
    matplotlib.use("Agg")

    name = runs[-1]["run_id"] + (f"+{len(runs) - 1}" if len(runs) > 1 else "")
    folder = os.path.abspath(out or os.path.join(DEFAULT_OUT, name))
    os.makedirs(folder, exist_ok=True)
    groups = group(runs)
    scenarios = list(dict.fromkeys(k[0] for k in groups))
    last = runs[-1]
    m, cal = last["machine"], last.get("calibration")
    md = [f"# farts-edge benchmark report: {name}", ""]
    if any(r["smoke"] for r in runs):
        md += ["**SMOKE run(s): a few seconds per scenario to check the plumbing. The figures below "
               "are not measurements; do not quote them.**", ""]
    md += [f"Runs: {', '.join(r['run_id'] for r in runs)} ({last['started']} .. {last['finished']}); "
           f"git {m['git']}.", "",
           f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} CPUs"
           f"{' (VM)' if m['hypervisor'] else ''}, {m['mem_gib']} GiB, kernel {m['kernel']}, "
           f"Python {m['python']}, load {m['loadavg']}; {', '.join(f'{k}: {v}' for k, v in m['tools'].items())}.", ""]
    if cal:
        md += [f"Calibration ({cal['workload']}): {cal['single_per_s']:,} units/s on one core, "
               f"{cal['multi_per_s']:,} on {cal['processes']} processes ({cal['parallel_speedup']}x)"
               + (f"; load average {cal['loadavg'][0]} then: other work shared the cores, the all-core "
                  "figure is not this machine's" if cal["loadavg"][0] > 0.5 * cal["processes"] else "")
               + ".", ""]
    md += ["Each figure: the server under test pinned to one core, the load generator on another; "
           "per server CPU-s = throughput / the server's CPU share (requests per CPU-second of the "
           "server process). Several runs: medians, p99 also its maximum.", ""]
    md += ["## Scenarios", "", "| scenario | status | seconds | targets | not run |", "| --- | --- | ---: | --- | --- |"]
    for run in runs:
        for sc in run["scenarios"]:
            skipped = "; ".join(f"{t}: {w}" for t, w in sc["skipped_targets"].items())
            md.append(f"| {sc['name']} | {sc['status']}{': ' + sc['reason'] if sc['reason'] else ''} | "
                      f"{sc['seconds']:.0f} | {', '.join(sc['targets'])} | {skipped} |")
    md.append("")
    md += goals.markdown({k: summary(v) for k, v in groups.items()})
    for scenario in scenarios:
        items = [(k, summary(v)) for k, v in groups.items() if k[0] == scenario]
        md += [f"## {scenario}", "", f"| target | variant | workers | {items[0][1]['metric']} | p50 | p99 "
               "(median / max) | server CPU | per server CPU-s | runs | ok |",
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for k, s in items:
            md.append(f"| {k[2]} | {k[1]} | {k[3]} | {_n(s['throughput'])} | {_n(s['p50_ms'], '.2f')} ms | "
                      f"{_n(s['p99_ms'], '.2f')} / {_n(s['p99_max_ms'], '.2f')} ms | {_n(s['server_cpu_pct'], '.0f', '%')} | "
                      f"{_n(s['per_cpu_s'])} | {s['runs']} | {'ok' if s['ok'] else 'FAILED'} |")
        ours = {k[1]: s for k, s in items if not s["peer"] and k[3] == 1}
        for k, s in items:
            if s["peer"] and k[1] in ours and s["throughput"] and ours[k[1]]["throughput"]:
                md.append(f"\nfarts-edge / {k[2]} ({k[1]}): {ours[k[1]]['throughput'] / s['throughput']:.3g}x "
                          "throughput" + (f", {ours[k[1]]['per_cpu_s'] / s['per_cpu_s']:.3g}x per server CPU-s"
                                          if ours[k[1]]["per_cpu_s"] and s["per_cpu_s"] else ""))
        png = f"{scenario}.png"
        plot_scenario(scenario, items, os.path.join(folder, png))
        md += ["", f"![{scenario}: throughput and p99]({png})", ""]
        cdf_rows = [v[-1] for k, v in groups.items() if k[0] == scenario and v[-1]["latency_cdf"]]
        if cdf_rows:
            plot_cdf(scenario, cdf_rows, os.path.join(folder, f"{scenario}-cdf.png"))
            md += [f"![{scenario}: latency CDF]({scenario}-cdf.png)", ""]
        if len({k[3] for k, _ in items}) > 1:
            plot_scaling(scenario, items, os.path.join(folder, f"{scenario}-scaling.png"))
            md += [f"![{scenario}: scaling by workers]({scenario}-scaling.png)", ""]
    md += ["## PROJECTED capacity of one node per hardware class", "",
           "Not measured: derived from the figures above with the assumptions listed under each "
           "table (`python -m bench project --target NAME` prints one).", ""]
    for prof in project.load_profiles().values():
        md.append(project.markdown(project.project(runs, prof)))
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def main(paths: list[str], out: str | None) -> int:
    try:
        runs = project.load_runs(paths)
        path = write(runs, out)
    except (project.ProjectError, OSError, ValueError) as e:
        print(f"report: {e}")
        return 1
    print(f"report: {path}")
    return 0
