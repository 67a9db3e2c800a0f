"""fast.proxyhead, the proxy's compiled header rewriting: the same answers as the
pure-Python reference (farts/proxy/headers.py) on random header lists, and what it
writes parses back (h11) as the fields it meant."""
from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farts.proxy import headers as reference
from fast import proxyhead
from fast.http1 import request_head, response_head

FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Names the rewriting treats specially, mixed with ordinary ones (and ones that only a
# Connection header makes hop-by-hop).
NAMES = [b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
         b"transfer-encoding", b"upgrade", b"content-length", b"expect", b"x-forwarded-for",
         b"x-forwarded-proto", b"x-request-id", b"accept", b"x-a", b"x-b", b"set-cookie"]
names = st.one_of(st.sampled_from(NAMES), st.from_regex(rb"\A[a-z][a-z0-9-]{0,10}\Z"))
values = st.one_of(st.from_regex(rb"\A[!-~]([ !-~]{0,20}[!-~])?\Z"),
                   # Connection lists: tokens, spaces, empty elements, any case
                   st.lists(st.sampled_from([b"X-A", b"x-b", b"Keep-Alive", b"host", b"", b" close "]),
                            max_size=4).map(b",".join))
header_lists = st.lists(st.tuples(names, values), max_size=12)
authorities = st.one_of(st.none(), st.sampled_from([b"other.test:8080", b"h"]))


def rid_source():
    n = iter(range(1, 1000))
    return lambda: b"gen-%d" % next(n)


@FEW
@given(header_lists, st.sampled_from(["9.9.9.9", "::1"]), st.sampled_from(["http", "https"]),
       authorities)
def test_request_headers_match_the_reference(hs, client, scheme, authority):
    got = proxyhead.request_headers(hs, client, scheme, rid_source(), authority, b"up:80")
    want = reference.request_headers(hs, client, scheme, rid_source(), authority, b"up:80")
    assert got == want
    # What goes on the wire parses back as these fields, in order.
    out, _ = got
    parsed = h11.Connection(h11.SERVER)
    parsed.receive_data(request_head(b"GET", b"/x", out, -2))
    ev = parsed.next_event()
    assert isinstance(ev, h11.Request), ev
    assert [(n, v) for n, v in ev.headers] == [(n, v.strip(b" ")) for n, v in out]


@FEW
@given(header_lists, st.sampled_from([b"r-1", b"node-abc-7"]))
def test_response_headers_match_the_reference(hs, rid):
    got = proxyhead.response_headers(hs, rid)
    assert got == reference.response_headers(hs, rid)
    assert proxyhead.connection_tokens(hs) == reference.connection_tokens(hs)
    parsed = h11.Connection(h11.CLIENT)
    parsed.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    parsed.receive_data(response_head(200, got, 0, True))
    ev = parsed.next_event()
    assert isinstance(ev, h11.Response), ev
    assert [(n, v) for n, v in ev.headers if n != b"content-length"] == [(n, v.strip(b" ")) for n, v in got]


@pytest.mark.parametrize("impl", [proxyhead, reference], ids=["fast", "reference"])
def test_kept_fields_are_the_same_objects(impl):
    accept = (b"accept", b"*/*")
    out, _ = impl.request_headers([accept], "1.2.3.4", "http", lambda: b"r", None, b"up:80")
    assert out[1] == accept
    if impl is proxyhead:   # (the compiled one does not copy what it keeps)
        assert out[1] is accept


methods_targets = st.tuples(st.sampled_from([b"GET", b"HEAD", b"DELETE"]),
                            st.sampled_from([b"/", b"/x?y=1", b"/a/b"]))


@FEW
@given(header_lists, methods_targets, st.sampled_from(["9.9.9.9", "::1"]),
       st.sampled_from(["http", "https", "ws"]), authorities, st.sampled_from([-2, -1, 0, 12345]))
def test_upstream_request_is_the_reference_head(hs, mt, client, scheme, authority, length):
    """The hot path's one call writes what request_head writes of request_headers."""
    method, target = mt
    got = proxyhead.upstream_request(method, target, hs, client, scheme, rid_source(), authority,
                                     b"up:80", length)
    out, rid = reference.request_headers(hs, client, scheme, rid_source(), authority, b"up:80")
    assert got == (request_head(method, target, out, length), rid)


@FEW
@given(header_lists, st.sampled_from([b"r-1", b"node-abc-7"]), st.sampled_from([200, 404, 502, 599]),
       st.sampled_from([b"", b"x", b"body\r\n" * 300]))
def test_client_answer_is_the_reference_response(hs, rid, status, body):
    """Both framings of a whole answer are what response_head writes of response_headers."""
    keep, close = proxyhead.client_answer(status, hs, rid, body, len(body))
    fields = reference.response_headers(hs, rid)
    assert keep == response_head(status, fields, len(body), True) + body
    assert close == response_head(status, fields, len(body), False) + body


def test_the_writers_frame_as_fast_http1_does():
    hs = [(b"accept", b"*/*")]
    assert proxyhead.upstream_request(b"GET", b"/", hs, "1.2.3.4", "http", lambda: b"r", None,
                                      b"up:80", -1)[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    with pytest.raises(ValueError):
        proxyhead.upstream_request(b"GET", b"/", hs, "1.2.3.4", "http", lambda: b"r", None, b"up:80", -3)
    # A head longer than the writers' stack buffer (many fields) grows onto the heap.
    many = [(b"x-%d" % i, b"v" * 100) for i in range(100)]
    keep, _ = proxyhead.client_answer(200, many, b"r", b"", 0)
    assert keep == response_head(200, [*many, (b"x-request-id", b"r")], 0, True)


def test_connection_tokens_are_remembered_by_value_and_stay_right():
    """The compiled one keeps the tokens of the Connection values it has seen (bounded):
    a value seen again, and values past the bound, answer as the reference does."""
    for i in range(600):
        hs = [(b"connection", b"Keep-Alive, x-%d" % (i % 300))]
        assert proxyhead.connection_tokens(hs) == reference.connection_tokens(hs)
    two = [(b"connection", b"close"), (b"connection", b"x-a")]
    assert proxyhead.connection_tokens(two) == frozenset({b"close", b"x-a"})
    assert proxyhead.connection_tokens([(b"connection", b" , ")]) is None


def test_request_ids_count_up_behind_their_prefix_and_are_used_in_place():
    ids = proxyhead.RequestIds(b"n1-abc-")
    first = ids()
    n = int(first.removeprefix(b"n1-abc-"))
    other = proxyhead.RequestIds(b"n1-abc-")   # (another upstream group: the same counter)
    assert (other(), ids()) == (b"n1-abc-%d" % (n + 1), b"n1-abc-%d" % (n + 2))
    head, rid = proxyhead.upstream_request(b"GET", b"/", [], "1.2.3.4", "http", ids, None, b"up:80", -2)
    assert rid == b"n1-abc-%d" % (n + 3) and head.endswith(b"x-request-id: " + rid + b"\r\n\r\n")
