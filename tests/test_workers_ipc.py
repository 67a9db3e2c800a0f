"""The workers' IPC framing (sans-IO) and the sum of the processes' metrics."""
from __future__ import annotations

import pytest

from farts.metrics import Metrics
from farts.workers.ipc import HEADER, FrameError, Framer, encode
from farts.workers.metrics import Sum, snapshot


def test_frames_split_anywhere_come_out_whole_and_in_order():
    msgs = [{"t": "event", "ev": {"seq": i, "data": "x" * i}} for i in range(50)]
    wire = b"".join(encode(m) for m in msgs)
    for step in (1, 7, 4096):
        framer, out = Framer(), []
        for i in range(0, len(wire), step):
            out += framer.feed(wire[i:i + step])
        assert out == msgs
        assert not framer.buf


@pytest.mark.parametrize("frame", [
    HEADER.pack(10**9) + b"x",                 # over the limit: refused before it is read
    HEADER.pack(1) + b"\xc1",                  # not msgpack
    encode({"no": "type"}),                    # not a message
    HEADER.pack(2) + b"\x92\x01",              # truncated inside (a list of 2 with 1)
])
def test_bad_frames_are_refused(frame):
    with pytest.raises(FrameError):
        Framer(max_frame=1 << 20).feed(frame)


def families(text: bytes) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_sum_adds_workers_and_keeps_the_counters_of_those_gone():
    node, worker = Metrics(), Metrics()
    for m, n in ((node, 1), (worker, 10)):
        m.counter("reqs_total", "requests", ("route",)).inc(("/a",), n)
        m.gauge("open", "open connections", lambda n=n: n)
        m.histogram("lat_seconds", "latency").observe(0.001 * n)
    total = Sum(node)
    total.update(0, snapshot(worker))
    total.update(1, snapshot(worker))
    got = families(total.render())
    assert got['reqs_total{route="/a"}'] == 21
    assert got["open"] == 21
    assert got["lat_seconds_count"] == 3
    total.retire(1)   # counters and histograms stay in the sum, the gauge goes
    got = families(total.render())
    assert got['reqs_total{route="/a"}'] == 21
    assert got["lat_seconds_count"] == 3
    assert got["open"] == 11


def test_an_upstream_is_up_when_every_worker_sees_it_up():
    node, a, b = Metrics(), Metrics(), Metrics()
    for m, up in ((node, 1), (a, 1), (b, 0)):
        m.gauge("farts_proxy_upstream_up", "up", lambda up=up: {("app", "s1"): up}, ("upstream", "server"))
    total = Sum(node)
    total.update(0, snapshot(a))
    assert families(total.render())['farts_proxy_upstream_up{server="s1",upstream="app"}'] == 1
    total.update(1, snapshot(b))
    assert families(total.render())['farts_proxy_upstream_up{server="s1",upstream="app"}'] == 0


def test_the_status_page_reads_the_workers_through_the_view():
    from farts.admin.status import Reader
    from farts.workers.metrics import View

    node, worker = Metrics(), Metrics()
    for m, n in ((node, 1), (worker, 10)):
        m.counter("farts_http_requests_total", "requests", ("listener", "route", "status")).inc(("http", "/", 200), n)
        m.gauge("farts_http_connections_open", "open", lambda n=n: {("http",): n}, ("listener",))
        h = m.histogram("farts_http_request_duration_seconds", "latency", ("listener", "route"))
        for _ in range(n):
            h.observe(0.002, ("http", "/"))
    total = Sum(node)
    total.update(0, snapshot(worker))
    read = Reader(View(total))
    assert read.totals("farts_http_requests_total") == {("http", "/", "200"): 11}
    assert read.totals("farts_http_connections_open") == {("http",): 11}
    bounds, counts = read.histogram("farts_http_request_duration_seconds", lambda k: True)
    assert sum(counts) == 11 and counts[bounds.index(0.0025)] == 11
    assert read.get("not_registered") is None
