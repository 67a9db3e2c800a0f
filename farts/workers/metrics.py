"""Metrics summed across the processes of a node.

Each worker sends a snapshot of its registry (``snapshot``: the samples of every family,
as plain data) when the node asks at scrape, and every ``PUSH_INTERVAL`` (what is left
of a worker that dies); the node adds them to its own samples (``Sum``). Samples with the same name and labels are added: counters and gauges (open
connections, subscriptions...) and histogram buckets, sums and counts all add up. The
counters of a worker that exited are kept (``retire``), so a restart never makes a
node's counter go back.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from farts.metrics import Metrics

PUSH_INTERVAL = 1.0   # seconds: what a worker that dies may take with it of its counters
CUMULATIVE = ("counter", "histogram")
# Gauges of a state, not a quantity: the lowest of the workers' (an upstream server is
# up when every worker sees it up; the node process's own, idle, is left out).
STATES = ("farts_proxy_upstream_up",)


def snapshot(metrics: Metrics) -> list:
    """[[family, type, help, [[sample, {label: value}, value], ...]], ...]"""
    return [[fam.name, fam.type, fam.documentation, [[s.name, s.labels, s.value] for s in fam.samples]]
            for fam in metrics.collect()]


class Sum:
    """The node's own metrics plus the workers' latest snapshots plus retired counters."""

    def __init__(self, own: Metrics) -> None:
        self.own = own
        self.latest: dict[int, list] = {}     # worker index -> its last snapshot
        self.retired: dict[tuple, float] = {}
        self.families: dict[str, tuple[str, str]] = {}   # name -> (type, help) of retired ones

    def update(self, worker: int, snap: list) -> None:
        self.latest[worker] = snap

    def retire(self, worker: int) -> None:
        """The worker exited: its counters stay in the sums, its gauges go."""
        for name, kind, doc, samples in self.latest.pop(worker, ()):
            if kind in CUMULATIVE:
                self.families[name] = (kind, doc)
                for sample, labels, value in samples:
                    key = (name, sample, tuple(sorted(labels.items())))
                    self.retired[key] = self.retired.get(key, 0) + value

    def families_now(self) -> list[Metric]:
        fams: dict[str, Metric] = {}
        values: dict[tuple, float] = {}

        def add(name, sample, labels, value) -> None:
            key = (name, sample, labels)
            values[key] = values.get(key, 0) + value

        states: dict[tuple, float] = {}
        workers = [s for snap in self.latest.values() for s in snap]
        for name, kind, doc, samples in [*(s for s in snapshot(self.own) if s[0] not in STATES), *workers]:
            if name not in fams:   # (listed even with no samples yet, as by one process)
                fams[name] = Metric(name, doc, kind)
            for sample, labels, value in samples:
                key = (name, sample, tuple(sorted(labels.items())))
                if name in STATES:
                    states[key] = min(states.get(key, value), value)
                else:
                    add(*key, value)
        values.update(states)
        for (name, sample, labels), value in self.retired.items():
            if name not in fams:
                fams[name] = Metric(name, self.families[name][1], self.families[name][0])
            add(name, sample, labels, value)
        for (name, sample, labels), value in values.items():
            fams[name].add_sample(sample, dict(labels), value)
        return list(fams.values())

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.families_now()))
        return generate_latest(registry)


class _Families:
    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self):
        return self.fams
