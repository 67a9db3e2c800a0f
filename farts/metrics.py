"""Metrics that cost a dict lookup and a C call on the hot path, or the C call alone,
exported through prometheus-client.

prometheus-client's own Counter takes a lock and walks label objects on every
``inc()``; at 100k requests/s per core that is a visible share of the budget. Here a
metric is a plain dict from a label tuple to its series, a count or a histogram's
buckets in C (fast/counting.pyx; one event loop, so no lock), and a collector turns the
dicts into Prometheus families only when /metrics is read. The hottest paths (every
request's count and latency) take their series once (``series_for``) and count into it
with one C call: no label tuple, no lookup, no bisect per request.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fast.counting import Count, Series

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Counter:
    __slots__ = ("name", "help", "labels", "values", "sources")

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        # label tuple -> its count, in C
        self.values: dict[tuple, Count] = {}
        # Functions returning more {labels: count} kept elsewhere (by the hottest paths,
        # which count in place and are summed here only when scraped).
        self.sources: list[Callable[[], dict[tuple, float]]] = []

    def inc(self, key: tuple = (), amount: float = 1) -> None:
        c = self.values.get(key)
        (c if c is not None else self.series_for(key)).add(amount)

    def series_for(self, key: tuple = ()) -> Count:
        """The series of ``key``, whose ``inc()`` counts one: for a hot path to keep. It is
        exported once something was added to it (as a key ``inc`` never reached is not)."""
        c = self.values.get(key)
        if c is None:
            c = self.values[key] = Count()
        return c

    def get(self, key: tuple = ()) -> float:
        c = self.values.get(key)
        return c.value if c is not None else 0

    def totals(self) -> dict[tuple, float]:
        out = {key: c.value for key, c in self.values.items() if c.counted}
        for source in self.sources:
            for key, value in source().items():
                out[key] = out.get(key, 0) + value
        return out

    def collect(self):
        fam = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self.totals().items():
            fam.add_metric([str(k) for k in key], value)
        return fam


class Gauge:
    """A gauge read from a function when scraped (open connections, sizes...)."""

    __slots__ = ("name", "help", "labels", "read")

    def __init__(self, name: str, help: str, read: Callable[[], dict[tuple, float] | float],
                 labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labels, self.read = name, help, tuple(labels), read

    def collect(self):
        fam = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        value = self.read()
        for key, v in (value.items() if isinstance(value, dict) else [((), value)]):
            fam.add_metric([str(k) for k in key], v)
        return fam


class Histogram:
    __slots__ = ("name", "help", "labels", "buckets", "series")

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.labels, self.buckets = name, help, tuple(labels), buckets
        # label tuple -> its counts per bucket (+Inf last) and sum, in C
        self.series: dict[tuple, Series] = {}

    def observe(self, value: float, key: tuple = ()) -> None:
        s = self.series.get(key)
        (s if s is not None else self.series_for(key)).observe(value)

    def series_for(self, key: tuple = ()) -> Series:
        """The series of ``key``, whose ``observe(value)`` counts one value: for a hot path
        to keep. It is exported once it counted a value (as a key ``observe`` never reached
        is not)."""
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series(self.buckets)
        return s

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        bounds = [repr(b) for b in self.buckets] + ["+Inf"]
        for key, s in self.series.items():
            counts = s.bucket_counts()
            if not any(counts):
                continue
            cumulative, running = [], 0
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            fam.add_metric([str(k) for k in key], cumulative, s.sum)
        return fam


class Metrics:
    """All the metrics of one node; each service registers its own at wiring time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._metrics: list = []
        self.registry.register(self)

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, read, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, read, labels))

    def histogram(self, name: str, help: str, labels: Iterable[str] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    def get(self, name: str):
        """The metric registered under ``name``, or None (read by the status page's sampler)."""
        return next((m for m in self._metrics if m.name == name), None)

    def _add(self, metric):
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def collect(self):  # the prometheus-client collector protocol
        for m in self._metrics:
            yield m.collect()

    def render(self) -> bytes:
        return generate_latest(self.registry)
