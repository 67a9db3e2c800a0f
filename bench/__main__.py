"""farts-edge's benchmark harness (bench/harness/): `python -m bench COMMAND` from the
repository root.

  run [SCENARIO...] [--smoke] [--out DIR] [--workers 1,2,4]
                                            the scenarios (default: all; with --smoke, the
                                            quick subset), peers side by side, one JSON
                                            document per run in bench/results/ (or DIR);
                                            --workers: once per worker count
  report [RUN.json...] [--out DIR]          Markdown + PNG plots into bench/reports/<run>/
                                            (default: the latest run)
  project --target PROFILE [RUN.json...]    PROJECTED capacity on a hardware class
  calibrate [--seconds S] [--save PROFILE]  this machine on the calibration micro-workload;
                                            --save writes it into bench/profiles/PROFILE.toml
                                            (run it on a machine of that class)
  list                                      scenarios, their targets, what each needs

`bash ci/bench-setup` installs the peers; the real runs are by hand on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from bench.harness import calibrate, project, report, run
from bench.harness.scenarios import SCENARIOS, missing


def list_scenarios() -> int:
    for sc in SCENARIOS.values():
        smoke = "smoke" if sc.smoke else "full only"
        print(f"{sc.name:12} {sc.about} [bench/{sc.script}; {smoke}]")
        if sc.unsupported:
            print(f"{'':12}   not measurable yet: {sc.unsupported}")
        for target, needs in sc.targets.items():
            lacking = missing(needs)
            print(f"{'':12}   {target:22} {'ok' if not lacking else 'missing ' + ', '.join(lacking)}")
    return 0


def save_calibration(name: str, cal: dict) -> None:
    path = os.path.join(project.PROFILES, f"{name}.toml")
    if not os.path.exists(path):
        raise SystemExit(f"no profile {path}")
    with open(path) as f:
        text = f.read()
    if "\n[calibration]" in text:
        raise SystemExit(f"{path} already has a [calibration]: remove it first to replace it")
    with open(path, "a") as f:
        f.write("\n# Measured by `python -m bench calibrate --save` on a machine of this class.\n[calibration]\n"
                + "".join(f"{k} = {json.dumps(cal[k])}\n" for k in
                          ("single_per_s", "multi_per_s", "processes", "python", "measured", "workload")))
    print(f"calibration saved into {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run scenarios")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    p.add_argument("--smoke", action="store_true", help="a few seconds per scenario: the plumbing only")
    p.add_argument("--out", help="folder for the run JSON and the scripts' files (default bench/results)")
    p.add_argument("--calibrate-seconds", type=float, help="calibration before the run (0: none)")
    p.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], metavar="N,N,...",
                   help="run each scenario once per worker count (scripts with a --workers option; "
                        "the others are reported as not supporting it): the report's scaling dimension")
    p = sub.add_parser("report", help="Markdown + plots from run JSON")
    p.add_argument("runs", nargs="*", metavar="RUN.json")
    p.add_argument("--out", help="report folder (default bench/reports/<run id>)")
    p = sub.add_parser("project", help="PROJECTED capacity on a hardware class")
    p.add_argument("--target", required=True, help="a profile in bench/profiles (e.g. i5-13500)")
    p.add_argument("runs", nargs="*", metavar="RUN.json")
    p.add_argument("--json", action="store_true", help="the projection as JSON")
    p = sub.add_parser("calibrate", help="this machine on the calibration micro-workload")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--save", metavar="PROFILE", help="write the result into bench/profiles/PROFILE.toml")
    sub.add_parser("list", help="scenarios and what they need")
    a = ap.parse_args(argv)
    if a.command == "run":
        return run.main(a.scenarios, a.smoke, a.out, a.calibrate_seconds, a.workers)
    if a.command == "report":
        return report.main(a.runs, a.out)
    if a.command == "project":
        return project.main(a.target, a.runs, a.json)
    if a.command == "calibrate":
        cal = calibrate.measure(a.seconds)
        print(json.dumps(cal, indent=1))
        if a.save:
            save_calibration(a.save, cal)
        return 0
    return list_scenarios()


if __name__ == "__main__":
    sys.exit(main())
