"""The instruction-count method of bench/proxy_callgrind.py and bench/dns_callgrind.py:
a server under ``valgrind --tool=callgrind --instr-atstart=no``, counters zeroed after
a warm-up, two loads of different sizes each followed by a dump, and instructions per
unit of work = (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL): startup, idle ticks and
per-run constants cancel out."""
from __future__ import annotations

import glob
import re
import subprocess
import time
from collections.abc import Callable


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=600)


def total_ir(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def dumps(pid: int, out: str, load: Callable[[int], object], counts) -> list[tuple[int, str, int]]:
    """Runs ``load(n)`` for each count on the server ``pid`` (instrumentation on, warmed up,
    counters zeroed), each followed by a dump next to ``out`` (which zeroes the counters):
    (count, dump file, Ir) per run."""
    runs = []
    for n in counts:
        load(n)
        before = set(glob.glob(out + "*"))
        control(pid, "-d")
        time.sleep(1)
        (dump,) = set(glob.glob(out + "*")) - before
        runs.append((n, dump, total_ir(dump)))
    return runs


def per_unit(pid: int, out: str, load: Callable[[int], object], small: int, large: int) -> tuple[float, str, str]:
    """Ir per unit of ``load`` from a SMALL and a LARGE run: (Ir per unit, what was counted,
    the LARGE run's dump)."""
    (n1, _, ir1), (n2, dump2, ir2) = dumps(pid, out, load, (small, large))
    return (ir2 - ir1) / (n2 - n1), f"Ir {ir1:,} for {n1}, {ir2:,} for {n2}", dump2


def top_functions(dump: str, units: int, unit: str, top: int) -> None:
    """Prints the functions of ``dump`` by self cost, per ``unit`` (``units`` of them)."""
    ann = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=99", dump], capture_output=True,
                         text=True, timeout=600).stdout
    rows = [line for line in ann.splitlines() if re.match(r"\s*[\d,]+ \(", line)]
    print(f"top functions of the {units}-{unit} run (self Ir per {unit}, share):")
    for line in rows[:top]:
        ir, rest = line.split(" (", 1)
        share, fn = rest.split(")", 1)
        print(f"  {int(ir.replace(',', '')) / units:9,.1f}  {share:>6}  {fn.strip()[:110]}")
