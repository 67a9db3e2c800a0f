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

from farts.metrics import Counter, Gauge, Histogram, Metrics

PUSH_INTERVAL = 1.0   # seconds: what a worker that dies may take with it of its counters
# Seconds between a worker's reports of its open connections, when they changed (those a
# crash loses: farts_worker_lost_connections_total is as of the last one).
OPEN_INTERVAL = 0.1
CUMULATIVE = ("counter", "histogram")
# Gauges of a state, not a quantity: combined over the workers, the node process's own
# (idle: its listeners are the workers') left out. An upstream server is up when every
# worker sees it up (the lowest); a geo index is as old and as large as the workers' (each
# builds its own copy of the same file: the oldest, the most ranges).
STATES = {"farts_proxy_upstream_up": min, "farts_dns_index_age_seconds": max, "farts_dns_index_ranges": max}


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
                    states[key] = STATES[name](states.get(key, value), value)
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


class View:
    """The node's metrics with the workers' last reports added, read by name as the status
    page's sampler reads a ``Metrics`` (``get(name)``: a Counter, Gauge or Histogram).
    Label values come back as text (as in the exposition)."""

    def __init__(self, total: Sum) -> None:
        self.total = total

    def get(self, name: str):
        own = self.total.own.get(name)
        if own is None:
            return None
        fam = own.collect()
        samples = [(s.name, s.labels, s.value) for s in fam.samples]
        for snap in self.total.latest.values():
            samples += [tuple(s) for f in snap if f[0] == fam.name for s in f[3]]
        samples += [(sample, dict(labels), v) for (f, sample, labels), v in self.total.retired.items()
                    if f == fam.name]

        def key(labels: dict) -> tuple:
            return tuple(labels.get(label, "") for label in own.labels)
        if isinstance(own, Counter):
            out = Counter(own.name, own.help, own.labels)
            for _, labels, v in samples:
                out.inc(key(labels), v)
            return out
        if isinstance(own, Gauge):
            values: dict[tuple, float] = {}
            for _, labels, v in samples:
                values[key(labels)] = values.get(key(labels), 0) + v
            return Gauge(own.name, own.help, lambda: values, own.labels)
        return self._histogram(own, samples, key)

    @staticmethod
    def _histogram(own: Histogram, samples: list, key) -> Histogram:
        out = Histogram(own.name, own.help, own.labels, own.buckets)
        bounds = [repr(b) for b in own.buckets] + ["+Inf"]
        cumulative: dict[tuple, list[float]] = {}
        for sample, labels, v in samples:
            k = key({n: x for n, x in labels.items() if n != "le"})
            row = cumulative.setdefault(k, [0.0] * (len(bounds) + 1))
            if sample.endswith("_bucket") and labels.get("le") in bounds:
                row[bounds.index(labels["le"])] += v
            elif sample.endswith("_sum"):
                row[-1] += v
        for k, row in cumulative.items():
            counts = [row[0]] + [row[i] - row[i - 1] for i in range(1, len(bounds))]
            out.series_for(k).add(counts, row[-1])
        return out
