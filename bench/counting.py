"""Histogram observations and counter increments per second: farts' kept series
(fast/counting.pyx, what the hot paths call), farts' by-key calls (farts/metrics.py) and
prometheus_client's own labelled child, on latency-like values.

    PYTHONPATH=$PWD .venv/bin/python bench/counting.py [--n 1000000] [--smoke]

One process, one core; best of five timeit runs. CPU-bound, so a loaded machine
lowers every figure alike: compare the rows of one run.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.dirname(HERE))

import argparse  # noqa: E402
import random  # noqa: E402
import timeit  # noqa: E402

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client import Counter as ReferenceCounter  # noqa: E402
from prometheus_client import Histogram as ReferenceHistogram  # noqa: E402

from farts.metrics import LATENCY_BUCKETS, Metrics  # noqa: E402


def cases(values: list[float]) -> dict[str, callable]:
    m = Metrics()
    hist = m.histogram("h", "h", ("listener", "route"))
    count = m.counter("c", "c", ("listener", "route", "status"))
    series, child = hist.series_for(("http", "/a")), count.series_for(("http", "/a", 200))
    registry = CollectorRegistry()
    ref_hist = ReferenceHistogram("h", "h", ("listener", "route"), buckets=LATENCY_BUCKETS,
                                  registry=registry).labels("http", "/a")
    ref_count = ReferenceCounter("c", "c", ("listener", "route", "status"),
                                 registry=registry).labels("http", "/a", "200")
    name, label, status = "http", "/a", 200

    def kept_observe():
        for v in values:
            series.observe(v)

    def by_key_observe():
        for v in values:
            hist.observe(v, (name, label))

    def reference_observe():
        for v in values:
            ref_hist.observe(v)

    def kept_inc():
        for _ in values:
            child.inc()

    def by_key_inc():
        for _ in values:
            count.inc((name, label, status))

    def reference_inc():
        for _ in values:
            ref_count.inc()

    return {"observe, farts kept series": kept_observe, "observe, farts by key": by_key_observe,
            "observe, prometheus_client child": reference_observe, "inc, farts kept series": kept_inc,
            "inc, farts by key": by_key_inc, "inc, prometheus_client child": reference_inc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="calls per timed run")
    ap.add_argument("--smoke", action="store_true", help="10,000 calls per run (CI: the script works)")
    a = ap.parse_args()
    n = 10_000 if a.smoke else a.n
    rng = random.Random(19)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(n)]   # median ~1 ms, a long tail
    for what, run in cases(values).items():
        best = min(timeit.repeat(run, number=1, repeat=5))
        print(f"{what:36} {n / best / 1e6:7.2f} M/s  {best / n * 1e9:7.1f} ns each")


if __name__ == "__main__":
    main()
