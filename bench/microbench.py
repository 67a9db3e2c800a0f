"""The timing loop the fast/ micro-benchmarks share.

Short interleaved rounds, best round kept: on a shared machine the best round is the
one least disturbed by other processes, and interleaving spreads any drift evenly.
"""
from __future__ import annotations

import time
from collections.abc import Callable

ROUND = 0.25  # seconds per measurement round


def _rate(run_batch: Callable[[], object], per_batch: int, seconds: float) -> float:
    """Runs batches for about ``seconds``; returns operations per second."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        run_batch()
        count += per_batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def best_rates(contenders: dict[str, tuple[Callable[[], object], int]], seconds: float) -> dict[str, float]:
    """{label: (run_batch, operations per batch)} -> {label: best operations/s}."""
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(max(1, round(seconds / ROUND))):
        for label, (batch, per_batch) in contenders.items():
            best[label] = max(best[label], _rate(batch, per_batch, ROUND))
    return best
