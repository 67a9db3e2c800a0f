"""The webhook scheduler (sans-IO, time passed in by a FakeClock), signatures, and the
request-forgery policy."""
from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from farts.clock import FakeClock
from farts.webhooks import signing, ssrf
from farts.webhooks.delivery import (
    DEAD,
    DELIVERED,
    DROPPED,
    FAIL,
    GONE,
    OK,
    REJECTED,
    RETRY,
    Delivery,
    Scheduler,
)


def sched(**kw) -> Scheduler:
    opts = dict(window=3600.0, backoff_min=1.0, backoff_max=600.0, max_in_flight=100, per_destination=10,
                breaker_failures=3, breaker_cooldown=30.0, rng=random.Random(7))
    opts.update(kw)
    return Scheduler(**opts)


def test_due_deliveries_are_taken_once_and_delivered():
    clock = FakeClock()
    s = sched()
    now = clock.wall()
    s.add(Delivery("a", "http://x:80", now, due=now))
    s.add(Delivery("b", "http://x:80", now, due=now + 5))
    assert [d.id for d in s.take(now)] == ["a"]
    assert s.take(now) == []                      # in flight: not handed out again
    assert s.wakeup(now) == now + 5
    assert s.finished("a", now, OK)[0] == DELIVERED
    assert len(s) == 1
    clock.advance(5)
    assert [d.id for d in s.take(clock.wall())] == ["b"]


def test_backoff_doubles_with_jitter_up_to_the_cap_then_dead_after_the_window():
    clock = FakeClock()
    s = sched(window=4000.0, breaker_failures=1000)
    start = clock.wall()
    s.add(Delivery("a", "http://x:80", start, due=start))
    delays = []
    while True:
        now = clock.wall()
        (d,) = s.take(now)
        result, d = s.finished("a", now, FAIL)
        if result == DEAD:
            break
        assert result == RETRY
        delays.append(d.due - now)
        clock.advance(d.due - now)
    for i, delay in enumerate(delays):
        base = min(600.0, 2.0 ** i)
        assert base / 2 <= delay <= base                 # jitter: half to all of the step
    assert max(delays) <= 600.0 and delays[-1] >= 300.0     # capped, and reached the cap
    # the last attempt inside the window, and no retry left in it (a delay is at most 600)
    assert start + 3400.0 < clock.wall() <= start + 4000.0
    assert len(s) == 0


def test_retry_after_lengthens_the_delay():
    s = sched()
    s.add(Delivery("a", "d", 0.0, due=0.0))
    s.take(0.0)
    result, d = s.finished("a", 0.0, FAIL, retry_after=120.0)
    assert result == RETRY and d.due == 120.0


def test_gone_is_dead_at_once_and_rejected_is_retried():
    s = sched()
    s.add(Delivery("a", "d", 0.0, due=0.0))
    s.add(Delivery("b", "d", 0.0, due=0.0))
    s.take(0.0)
    assert s.finished("a", 0.0, GONE)[0] == DEAD
    assert s.finished("b", 0.0, REJECTED)[0] == RETRY


def test_per_destination_limit_and_global_limit():
    s = sched(per_destination=2, max_in_flight=3)
    for i in range(5):
        s.add(Delivery(f"x{i}", "X", 0.0, due=0.0))
    for i in range(5):
        s.add(Delivery(f"y{i}", "Y", 0.0, due=0.0 + 0.001 * i))
    taken = s.take(1.0)
    assert len(taken) == 3
    assert sum(d.dest == "X" for d in taken) <= 2 and sum(d.dest == "Y" for d in taken) <= 2
    assert s.take(1.0) == []                               # full
    s.finished(taken[0].id, 1.0, OK)
    more = s.take(1.0)
    assert len(more) == 1
    busy = {k: v.in_flight for k, v in s.dests.items()}
    assert max(busy.values()) <= 2 and sum(busy.values()) == 3


def test_circuit_breaker_cooldown_and_half_open_probe():
    s = sched(breaker_failures=2, breaker_cooldown=30.0, backoff_min=0.001, backoff_max=0.001)
    for i in range(4):
        s.add(Delivery(f"d{i}", "X", 0.0, due=0.0))
    a, b, c, d = s.take(0.0)
    s.finished(a.id, 1.0, FAIL)
    s.finished(b.id, 1.0, FAIL)                # second in a row: open until 31
    assert s.take(10.0) == []                  # a and b are due again, but the circuit is open
    assert s.wakeup(10.0) == 31.0
    s.finished(c.id, 10.0, REJECTED)           # an answer (4xx): the receiver is up, the circuit closes
    assert s.dests["X"].open_until == 0.0
    s.finished(d.id, 10.0, FAIL)
    # open again after two failures in a row
    again = s.take(11.0)
    for x in again:
        s.finished(x.id, 11.0, FAIL)
    assert s.dests["X"].open_until == 41.0
    assert s.take(40.0) == []
    probe = s.take(41.0)
    assert len(probe) == 1                     # half-open: one probe
    assert s.take(41.0) == []
    s.finished(probe[0].id, 42.0, FAIL)        # the probe failed: open again
    assert s.dests["X"].open_until == 72.0
    probe = s.take(72.0)
    assert len(probe) == 1
    s.finished(probe[0].id, 72.0, OK)          # closed: the rest go
    assert s.dests["X"].open_until == 0.0
    assert len(s.take(72.0)) == len(s) == 3


def test_removed_while_in_flight_finishes_dropped():
    s = sched()
    s.add(Delivery("a", "X", 0.0, due=0.0))
    s.take(0.0)
    s.remove("a")
    assert s.finished("a", 1.0, FAIL)[0] == DROPPED
    assert len(s) == 0 and s.take(10_000.0) == []


def test_readded_delivery_is_not_started_twice():
    s = sched(per_destination=1)
    s.add(Delivery("a", "X", 0.0, due=0.0))
    s.add(Delivery("b", "X", 0.0, due=0.0))
    (first,) = s.take(0.0)
    other = "b" if first.id == "a" else "a"
    s.add(Delivery(other, "X", 0.0, due=0.0))    # a new state for the parked one (e.g. retried by hand)
    s.finished(first.id, 0.0, OK)
    assert [d.id for d in s.take(0.0)] == [other]
    assert s.take(0.0) == []


# ---- signatures ----

def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = signing.envelope("wh_1", "comment.created", 1_700_000_000, {"text": "hi"})
    hs = dict(signing.headers(b"s3cret", "wh_1", "comment.created", 2, 1_700_000_005, body))
    want = hmac.new(b"s3cret", b"1700000005." + body, hashlib.sha256).hexdigest()
    assert hs[signing.SIGNATURE] == b"v1=" + want.encode()
    assert hs[signing.ID] == b"wh_1" and hs[signing.ATTEMPT] == b"2" and hs[signing.TIMESTAMP] == b"1700000005"
    assert signing.verify(b"s3cret", hs[signing.TIMESTAMP], hs[signing.SIGNATURE], body, 1_700_000_100)
    assert not signing.verify(b"other", hs[signing.TIMESTAMP], hs[signing.SIGNATURE], body, 1_700_000_100)
    assert not signing.verify(b"s3cret", hs[signing.TIMESTAMP], hs[signing.SIGNATURE], body + b" ", 1_700_000_100)
    assert not signing.verify(b"s3cret", hs[signing.TIMESTAMP], hs[signing.SIGNATURE], body, 1_700_001_000)
    assert not signing.verify(b"s3cret", b"soon", hs[signing.SIGNATURE], body, 1_700_000_100)


def test_envelope_refuses_what_is_not_json():
    with pytest.raises(ValueError):
        signing.envelope("wh_1", "e", 0, {"x": float("nan")})
    with pytest.raises(TypeError):
        signing.envelope("wh_1", "e", 0, {"x": object()})


# ---- request forgery ----

@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.16.0.9", "169.254.169.254",
                                     "fe80::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "100.64.0.1", "fd00::1",
                                     "::ffff:127.0.0.1", "240.0.0.1", "2002:7f00:1::1", "2002:a00:1::1",
                                     "2002:a9fe:a9fe::", "fec0::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe"])
def test_internal_addresses_are_refused_by_default(address):
    policy = ssrf.Policy()
    assert policy.problem(address) is not None
    with pytest.raises(ssrf.Refused):
        policy.check("hooks.example", ["93.184.215.14", address])   # one bad address is enough


def test_public_addresses_pass_and_allowances_open_what_they_name():
    assert ssrf.Policy().check("example.com", ["93.184.215.14"]) == "93.184.215.14"
    assert ssrf.Policy().problem("2606:2800:220:1::1") is None
    loop = ssrf.Policy(allow_loopback=True)
    assert loop.problem("127.0.0.1") is None and loop.problem("::1") is None
    assert loop.problem("10.0.0.1") is not None and loop.problem("169.254.169.254") is not None
    private = ssrf.Policy(allow_private=True)
    assert private.problem("10.0.0.1") is None and private.problem("127.0.0.1") is not None
    nets = ssrf.Policy(allow_networks=["169.254.10.0/24"])
    assert nets.problem("169.254.10.5") is None and nets.problem("169.254.169.254") is not None
    assert ssrf.Policy().problem("2002:5db8:d70e::1") is None                 # 6to4 of a public address
    assert ssrf.Policy().problem("64:ff9b::5db8:d70e") is None               # NAT64 of a public address
    assert private.problem("2002:a00:1::1") is None                           # 6to4 of 10.0.0.1
    with pytest.raises(ssrf.Refused):
        ssrf.Policy().check("nothing.example", [])


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///x", "http://user:pw@example.com/",
                                 "http://example.com/a b", "javascript:alert(1)", "http://example.com:99999/", 7])
def test_bad_urls_are_refused(url):
    with pytest.raises(ssrf.Refused):
        ssrf.parse_url(url)


def test_destination_key_and_target():
    d = ssrf.parse_url("https://[2001:db8::1]/hook?x=1")
    assert d.key == "https://[2001:db8::1]:443" and d.target == b"/hook?x=1"
    assert ssrf.parse_url("http://Example.com").target == b"/"
