"""farts/metrics.py and its C series (fast/counting.pyx): the exposition is the one the
plain-Python metrics wrote, byte for byte, and a histogram counts as prometheus_client's
own does."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ReferenceHistogram

from farts.metrics import LATENCY_BUCKETS, Metrics
from farts.workers.metrics import Sum, View, snapshot
from fast.counting import Count, Series

# What farts/metrics.py rendered before its series were in C (commit adfc82f), for the
# counts of ``count_some`` below.
EXPOSITION = """\
# HELP farts_http_requests_total HTTP requests answered
# TYPE farts_http_requests_total counter
farts_http_requests_total{listener="http",route="/a",status="200"} 2.0
farts_http_requests_total{listener="http",route="-",status="400"} 3.0
farts_http_requests_total{listener="http",route="/b",status="503"} 0.0
# HELP farts_http_request_duration_seconds Time to answer
# TYPE farts_http_request_duration_seconds histogram
""" + "".join(f'farts_http_request_duration_seconds_bucket{{le="{le}",listener="http",route="/a"}} {n}\n'
              for le, n in [("0.0005", "3.0"), ("0.001", "3.0"), ("0.0025", "3.0"), ("0.005", "4.0"),
                            ("0.01", "4.0"), ("0.025", "4.0"), ("0.05", "4.0"), ("0.1", "4.0"),
                            ("0.25", "4.0"), ("0.5", "5.0"), ("1.0", "5.0"), ("2.5", "5.0"),
                            ("5.0", "5.0"), ("10.0", "6.0"), ("+Inf", "7.0")]) + """\
farts_http_request_duration_seconds_count{listener="http",route="/a"} 7.0
farts_http_request_duration_seconds_sum{listener="http",route="/a"} 19.8039
""" + "".join(f'farts_http_request_duration_seconds_bucket{{le="{le}",listener="admin",route="/"}} '
              f'{"1.0" if le in ("2.5", "5.0", "10.0", "+Inf") else "0.0"}\n'
              for le in [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]) + """\
farts_http_request_duration_seconds_count{listener="admin",route="/"} 1.0
farts_http_request_duration_seconds_sum{listener="admin",route="/"} 2.0
# HELP farts_dns_seconds DNS
# TYPE farts_dns_seconds histogram
farts_dns_seconds_bucket{le="2e-05"} 1.0
farts_dns_seconds_bucket{le="0.0001"} 1.0
farts_dns_seconds_bucket{le="0.001"} 1.0
farts_dns_seconds_bucket{le="+Inf"} 2.0
farts_dns_seconds_count 2.0
farts_dns_seconds_sum 0.50002
# HELP farts_open Open
# TYPE farts_open gauge
farts_open 3.0
"""


def count_some(children: bool) -> Metrics:
    """The same counts, by label tuple or (``children``) through series kept by the caller."""
    m = Metrics()
    req = m.counter("farts_http_requests_total", "HTTP requests answered", ("listener", "route", "status"))
    lat = m.histogram("farts_http_request_duration_seconds", "Time to answer", ("listener", "route"))
    dns = m.histogram("farts_dns_seconds", "DNS", (), buckets=(0.00002, 0.0001, 0.001))
    if children:
        ok, latency = req.series_for(("http", "/a", 200)), lat.series_for(("http", "/a"))
        # Taken, never counted into: not exported (as before, a key nothing counted).
        req.series_for(("http", "/never", 200))
        lat.series_for(("http", "/never"))
        ok.inc()
        ok.inc()
        req.series_for(("http", "-", 400)).add(3)
    else:
        req.inc(("http", "/a", 200))
        req.inc(("http", "/a", 200))
        req.inc(("http", "-", 400), 3)
    req.inc(("http", "/b", 503), 0)
    for v in (0.0004, 0.0005, 0.003, 0.3, 7.5, 12.0, 0.0):
        if children:
            latency.observe(v)
        else:
            lat.observe(v, ("http", "/a"))
    lat.observe(2, ("admin", "/"))
    dns.observe(0.00002)
    dns.observe(0.5)
    m.gauge("farts_open", "Open", lambda: 3)
    return m


@pytest.mark.parametrize("children", [False, True])
def test_the_exposition_is_the_plain_python_metrics_one(children):
    assert count_some(children).render().decode() == EXPOSITION


def test_a_series_taken_and_one_counted_by_key_are_the_same():
    m = Metrics()
    req = m.counter("c", "c", ("route",))
    lat = m.histogram("h", "h", ("route",))
    child, series = req.series_for(("/a",)), lat.series_for(("/a",))
    assert req.series_for(("/a",)) is child and lat.series_for(("/a",)) is series
    assert req.totals() == {} and req.get(("/a",)) == 0
    child.inc()
    req.inc(("/a",), 2)
    assert req.get(("/a",)) == 3 and req.totals() == {("/a",): 3}
    assert req.series_for(("/a",)) is req.values[("/a",)]
    series.observe(0.002)
    lat.observe(0.2, ("/a",))
    assert list(lat.series[("/a",)]) == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0.202]


def test_series_reads_as_the_list_it_replaced():
    s = Series((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0, -2.0):
        s.observe(v)
    assert len(s) == 4 and s[:-1] == [3, 1, 1] and s[-1] == s.sum == 4.0
    assert s.count == 5 and s.bucket_counts() == [3, 1, 1]
    s.observe(float("inf"))
    assert s[2] == 2 and s[-1] == s[3] == float("inf") and s[-4] == 3
    with pytest.raises(IndexError):
        s[4]
    with pytest.raises(IndexError):
        s[-5]


def test_series_refuses_what_it_cannot_count():
    with pytest.raises(ValueError, match="increase"):
        Series((1.0, 1.0))
    with pytest.raises(ValueError, match="increase"):
        Series((1.0, float("nan")))
    s = Series((1.0,))
    with pytest.raises(ValueError, match="3 bucket counts for 2 buckets"):
        s.add([1, 2, 3], 0.0)
    with pytest.raises(ValueError, match="a count is a number >= 0"):
        s.add([1, -1], 0.0)
    assert s.count == 0   # (nothing of a refused add was counted)
    c = Count()
    for bad in (-1, -0.5, float("nan"), "1", None):
        with pytest.raises(ValueError, match="counter amount"):
            c.add(bad)
    assert not c.counted and c.value == 0


def test_a_count_stays_an_int_until_a_fraction_is_added():
    c = Count()
    c.add(0)
    assert c.counted and c.value == 0 and type(c.value) is int
    c.inc()
    c.add(2**40)
    assert c.value == 2**40 + 1 and type(c.value) is int
    c.add(0.5)
    c.add(2.0)
    assert c.value == 2**40 + 3.5 and type(c.value) is float


def test_workers_series_summed_through_the_view():
    """A worker's histogram, as its snapshot reports it, read back by the node's View."""
    worker = Metrics()
    worker.histogram("h", "h", ("route",)).observe(0.003, ("/a",))
    node = Metrics()
    own = node.histogram("h", "h", ("route",))
    own.observe(0.3, ("/a",))
    total = Sum(node)
    total.update(0, snapshot(worker))
    read = View(total).get("h")
    assert list(read.series[("/a",)]) == [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0.303]


def reference_counts(buckets: tuple, values: list[float]) -> tuple[list[float], float]:
    """prometheus_client's own Histogram: its cumulative bucket counts and its sum (written
    only when no bound is negative: no bound is, here)."""
    h = ReferenceHistogram("h", "h", buckets=buckets, registry=CollectorRegistry())
    for v in values:
        h.observe(v)
    samples = next(iter(h.collect())).samples
    return ([s.value for s in samples if s.name == "h_bucket"],
            next(s.value for s in samples if s.name == "h_sum"))


bounds = st.lists(st.floats(0, 1e6), min_size=1, max_size=20, unique=True).map(
    lambda b: tuple(sorted(b)))
values = st.lists(st.one_of(st.floats(allow_nan=False), st.sampled_from(LATENCY_BUCKETS),
                            st.floats(0, 0.02)), max_size=60)


@given(bounds, values)
def test_a_histogram_counts_as_prometheus_clients(buckets, observed):
    m = Metrics()
    h = m.histogram("h", "h", ("k",), buckets=buckets)
    for v in observed:
        h.observe(v, ("x",))
    want_buckets, want_sum = reference_counts(buckets, observed)
    if not observed:
        assert h.series == {} and not next(iter(m.collect())).samples
        return
    fam = h.collect()
    got_buckets = [s.value for s in fam.samples if s.name == "h_bucket"]
    got_sum = next(s.value for s in fam.samples if s.name == "h_sum")
    assert got_buckets == want_buckets
    assert got_sum == want_sum or (math.isnan(got_sum) and math.isnan(want_sum))
