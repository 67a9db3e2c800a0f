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
from fast.http1 import END, Response, ResponseParser, closing, request_head, response_head

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


# -- raw_answer: the upstream's bytes rewritten directly ---------------------------------
# Answers as upstreams write them: any case, optional whitespace, the framing and hop-by-hop
# fields, now and then a byte or a line the parser refuses or leaves to its own paths.
def mostly(good, rare):
    """``good`` nine times in ten, else ``rare``: most answers are ones raw_answer takes,
    so that the comparison, not the refusal, is what is tested."""
    return st.tuples(st.integers(0, 9), good, rare).map(lambda t: t[2] if t[0] == 0 else t[1])


raw_names = mostly(st.from_regex(rb"\A[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,30}\Z"),
                   st.sampled_from([b"Content-Type", b"content-length", b"Content-Length", b"Connection",
                                    b"Keep-Alive", b"X-Request-Id", b"Upgrade", b"TE", b"Trailer",
                                    b"Proxy-Connection", b"X-A", b"Set-Cookie", b"Transfer-Encoding",
                                    b"Close", b"Bad Name", b"", b"X\x80"]))
raw_values = mostly(st.from_regex(rb"\A[ \t]{0,2}([!-~]([ \t!-~]{0,20}[!-~])?)?[ \t]{0,2}\Z"),
                    st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Close", b"x-a", b"5", b"0",
                                     b"5, 5", b"+5", b"chunked", b"\xe9t\xe9", b"a\x00b", b"1" * 20]))
raw_lines = st.lists(st.tuples(raw_names, raw_values).map(lambda f: f[0] + b":" + f[1] + b"\r\n"), max_size=8)
status_lines = mostly(
    st.from_regex(rb"\AHTTP/1\.1 [2-5][0-9]{2}( [ -~]{0,12})?\r\n\Z"),
    st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 \r\n", b"HTTP/1.0 200 OK\r\n",
                     b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 103 Early Hints\r\n", b"HTTP/1.1 200 OK\n",
                     b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 200 O\x01K\r\n", b"\r\nHTTP/1.1 200 OK\r\n",
                     b"HTTP/1.1 999 Nine\r\n"]))


@FEW
@given(status_lines, raw_lines, mostly(st.sampled_from([0, 3, 5, 40]), st.none()), st.binary(min_size=40, max_size=60),
       st.sampled_from([b"", b"junk"]), st.sampled_from([b"r-1", b"node-abc-7"]),
       mostly(st.just(False), st.just(True)))
def test_raw_answer_is_what_the_parser_and_client_answer_make(status, lines, length, tail, before, rid, cut):
    """raw_answer accepts only what ResponseParser reads as one whole answer, and writes
    what client_answer writes from the parser's fields: its status, its keep-alive, its end."""
    head = status + b"".join(lines) + (b"content-length: %d\r\n" % length if length is not None else b"") + b"\r\n"
    data = before + head + tail
    if cut and tail:
        data = data[:len(before) + len(head) // 2]
    got = proxyhead.raw_answer(data, len(before), rid)
    if got is None:
        return
    status_code, keep_alive, end, body_len, keep = got
    answer = ResponseParser().feed(data[len(before):end])
    resp = answer[0]
    assert isinstance(resp, Response) and answer[-1] is END and len(answer) == (3 if body_len else 2)
    body = answer[1] if body_len else b""
    assert (resp.status, resp.keep_alive, len(body)) == (status_code, keep_alive, body_len)
    assert data[end - body_len:end] == body
    assert (keep, closing(keep, body_len)) == proxyhead.client_answer(resp.status, resp.headers, rid, body, len(body))


def test_raw_answer_reads_answers_one_after_another():
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: up-1\r\n\r\nhi"
    two = b"HTTP/1.1 503 Busy\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
    data = one + two
    first = proxyhead.raw_answer(data, 0, b"r")
    assert first[:4] == (200, True, len(one), 2)
    assert first[4] == b"HTTP/1.1 200 OK\r\nx-request-id: up-1\r\ncontent-length: 2\r\n\r\nhi"
    second = proxyhead.raw_answer(data, first[2], b"r2")
    assert second[:4] == (503, False, len(data), 0)
    assert closing(second[4], 0) == (b"HTTP/1.1 503 Service Unavailable\r\nx-request-id: r2\r\n"
                                     b"content-length: 0\r\nconnection: close\r\n\r\n")
    # Not whole in the data: the parser's to read when the rest comes.
    assert proxyhead.raw_answer(data[:-3], first[2], b"r2") is None
    assert proxyhead.raw_answer(one[:-1], 0, b"r") is None


@FEW
@given(st.sampled_from([200, 404, 503]), st.lists(st.tuples(st.sampled_from([b"etag", b"x-a", b"server"]),
                                                         st.text("abcXYZ 019-/", max_size=20).map(str.encode)),
                                               max_size=4),
       st.binary(max_size=50))
def test_closing_is_the_close_framing_response_head_writes(status, headers, body):
    keep = response_head(status, headers, len(body), True) + body
    assert closing(keep, len(body)) == response_head(status, headers, len(body), False) + body


def test_closing_refuses_what_is_not_a_framed_response():
    with pytest.raises(ValueError):
        closing(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nhi", 2)
    with pytest.raises(ValueError):
        closing(b"hi", 5)
