"""Metrics that cost a dict update on the hot path, exported through prometheus-client.

prometheus-client's own Counter takes a lock and walks label objects on every
``inc()``; at 100k requests/s per core that is a visible share of the budget. Here a
counter is a plain dict from a label tuple to a number (one event loop, so no lock),
and a collector turns the dicts into Prometheus families only when /metrics is read.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Counter:
    __slots__ = ("name", "help", "labels", "values", "sources")

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[tuple, float] = {}
        # Functions returning more {labels: count} kept elsewhere (by the hottest paths,
        # which count in place and are summed here only when scraped).
        self.sources: list[Callable[[], dict[tuple, float]]] = []

    def inc(self, key: tuple = (), amount: float = 1) -> None:
        v = self.values
        v[key] = v.get(key, 0) + amount

    def get(self, key: tuple = ()) -> float:
        return self.values.get(key, 0)

    def totals(self) -> dict[tuple, float]:
        out = dict(self.values)
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
        # label tuple -> [count per bucket (+Inf last)..., sum]
        self.series: dict[tuple, list[float]] = {}

    def observe(self, value: float, key: tuple = ()) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * (len(self.buckets) + 2)
        s[bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, s in self.series.items():
            cumulative, running = [], 0
            for bound, n in zip((*self.buckets, float("inf")), s[:-1], strict=True):
                running += n
                cumulative.append((repr(bound) if bound != float("inf") else "+Inf", running))
            fam.add_metric([str(k) for k in key], cumulative, s[-1])
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
