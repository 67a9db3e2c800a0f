"""The status page's sampler, without sockets: real Metrics objects, a FakeClock, the
peer message's validation."""
from __future__ import annotations

import pytest

from farts.admin.status import Sampler, StatusSample, quantile
from farts.clock import FakeClock
from farts.metrics import Metrics
from farts.peer import BadMessage, Envelope


def node_metrics():
    m = Metrics()
    requests = m.counter("farts_http_requests_total", "", ("listener", "route", "status"))
    latency = m.histogram("farts_http_request_duration_seconds", "", ("listener", "route"))
    slow = m.counter("farts_http_slow_requests_total", "", ("listener", "route", "tenant", "region"))
    return m, requests, latency, slow


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.15)      # all in (0.1, 0.2]
    assert quantile(0.99, bounds, [90, 0, 10, 0]) == pytest.approx(0.2 + 0.2 * 0.9)
    assert quantile(0.5, bounds, [0, 0, 0, 5]) == 0.4     # in +Inf: the largest bound is all we know
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None


def test_rates_by_route_and_class_leave_the_admin_listener_out():
    m, requests, latency, slow = node_metrics()
    clock = FakeClock()
    s = Sampler("n1", "eu", "0.1.0", 50.0, 8.0, m, clock, interval=1.0, history=60)
    s.start()
    for _ in range(30):
        requests.inc(("http", "/a", 200))
        latency.observe(0.003, ("http", "/a"))
    for _ in range(10):
        requests.inc(("http", "/a", 503))
        latency.observe(0.3, ("http", "/a"))
    for _ in range(50):
        requests.inc(("admin", "/", 200))      # the page's own requests
        latency.observe(5.0, ("admin", "/"))
    slow.inc(("http", "/a", "demo", "eu"), 3)
    clock.advance(2.0)   # two samples: all of the above falls in the first
    first = s.rings["n1"][0]
    sample = s.latest["n1"]
    assert sample["rps"] == 0 and sample["slow_per_min"] == 3   # the second second was idle
    assert first[1] == 40   # rps of the first sample: 40 requests in 1 s, admin left out
    assert s.rings["n1"][0][4] == 3
    # p50 within the 2.5-5 ms bucket, p99 within 250-500 ms (the admin's 5 s left out).
    assert 2.5 <= sample["p50_ms"] <= 5 and 250 <= sample["p99_ms"] <= 500
    clock.advance(1.0)
    requests.inc(("http", "/b", 404), 4)
    clock.advance(1.0)
    assert s.latest["n1"]["routes"] == [["/b", "4xx", 4.0]]
    # Slow requests per minute forget what is older than a minute.
    clock.advance(61.0)
    assert s.latest["n1"]["slow_per_min"] == 0
    assert len(s.rings["n1"]) == 60     # history / interval points, no more
    s.stop()


def test_services_that_are_off_are_absent_from_the_sample():
    m, *_ = node_metrics()
    clock = FakeClock()
    s = Sampler("n1", "eu", "0.1.0", 0.0, 0.0, m, clock)
    s.start()
    clock.advance(1.0)
    assert not {"pubsub", "cdn", "dns", "db"} & set(s.latest["n1"])
    m.counter("farts_db_commands_total", "", ("command", "outcome")).inc(("find", "ok"), 5)
    clock.advance(1.0)
    assert s.latest["n1"]["db"]["ops_ps"] == 5.0


class FakeBus:
    def __init__(self):
        self.handlers, self.sent = {}, []

    def subscribe(self, cls, fn):
        self.handlers[cls] = fn

    def broadcast(self, msg):
        self.sent.append(msg)
        return 1


def test_samples_go_to_peers_and_come_from_them():
    m, *_ = node_metrics()
    clock = FakeClock()
    s = Sampler("n1", "eu", "0.1.0", 0.0, 0.0, m, clock)
    bus = FakeBus()
    s.peer(bus)
    s.start()
    clock.advance(1.0)
    assert [msg.value["node"] for msg in bus.sent] == ["n1"]
    wire = StatusSample.from_wire(bus.sent[0].to_wire())
    peer_sample = {**wire.value, "node": "n2", "rps": 7.0}
    bus.handlers[StatusSample](StatusSample(peer_sample), Envelope("n2"))
    bus.handlers[StatusSample](StatusSample({**peer_sample, "node": "n3"}), Envelope("n2"))  # not its own
    assert s.latest["n2"]["rps"] == 7.0 and "n3" not in s.latest
    assert s.hello()["history"]["n2"][0][1] == 7.0


@pytest.mark.parametrize("body", [
    [], {"t": 1}, {"node": "a"}, {"node": "a", "t": 1, "rps": float("nan")},
    {"node": "a", "t": 1, "routes": [["/", "2xx", 1]] * 201}, {"node": "a", "t": 1, "p99_ms": "slow"},
    {"node": "a", "t": 1, "pad": "x" * 70000},
])
def test_a_bad_sample_from_a_peer_is_refused(body):
    with pytest.raises(BadMessage):
        StatusSample.from_wire(body)


def test_replication_lag_per_origin_is_in_the_sample_when_replication_runs():
    m, *_ = node_metrics()
    m.counter("farts_db_commands_total", "", ("command", "outcome")).inc(("find", "ok"), 5)
    lag = {("n2",): 12.5, ("n3",): 0.0}
    m.gauge("farts_db_replication_lag_ms", "", lambda: lag, ("origin",))
    clock = FakeClock()
    s = Sampler("n1", "eu", "0.1.0", 50.0, 8.0, m, clock, interval=1.0, history=60)
    s.start()
    clock.advance(1.0)
    assert s.latest["n1"]["db"]["lag_ms"] == {"n2": 12.5, "n3": 0.0}
    s.stop()
