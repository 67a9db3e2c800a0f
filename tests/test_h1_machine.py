"""The HTTP/1.1 server connection's state machine (farts/transport/h1.py), without
sockets: every transition of both tables, the events refused in the wrong state, and
the behaviours built on them (keep-alive, pipelining, 100-continue, upgrade, body
discarding, deadlines)."""
from __future__ import annotations

import pytest

from farts.transport import h1
from farts.transport.h1 import (
    BODY_TRANSITIONS,
    CLOSED,
    CONTINUE,
    DISCARDING,
    DONE,
    HANDLING,
    HEAD,
    HEADER_TIMEOUT,
    IDLE,
    IDLE_TIMEOUT,
    NONE,
    OPEN,
    RESPONDING,
    STALLED,
    SWITCHED,
    TRANSITIONS,
    H1Machine,
    H1StateError,
)
from farts.transport.http import Fixed, Response
from fast.http1 import END, HTTPError
from fast.http1 import Request as RequestHead

STATES = (IDLE, HEAD, HANDLING, RESPONDING, DONE, SWITCHED, CLOSED)
EVENTS = (h1.PART, h1.HEAD_IN, h1.RESPOND, h1.STARTED, h1.FINISHED, h1.NEXT, h1.SWITCH, h1.CLOSE)
BODY_STATES = (NONE, OPEN, DISCARDING)
BODY_EVENTS = (h1.B_START, h1.B_END, h1.B_DISCARD)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSE_GET = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
POST5 = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
EXPECT = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
WS = (b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Version: 13\r\n\r\n")


def machine(now: float = 0.0) -> H1Machine:
    return H1Machine(16384, 100, header_timeout=10.0, idle_timeout=60.0, now=now)


def drain(m: H1Machine) -> list:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


# -- the tables themselves ------------------------------------------------------------------
TABLE_PAIRS = ([("state", "_to", TRANSITIONS, st, ev) for st in STATES for ev in EVENTS]
               + [("body", "_body_to", BODY_TRANSITIONS, st, ev) for st in BODY_STATES for ev in BODY_EVENTS])


@pytest.mark.parametrize(("attr", "move", "table", "state", "event"), TABLE_PAIRS)
def test_every_pair_of_both_tables(attr, move, table, state, event):
    """Each (state, event) of the connection table and of the body table: the listed
    ones move where the table says, every other one is refused and changes nothing."""
    m = machine()
    setattr(m, attr, state)
    if (state, event) in table:
        getattr(m, move)(event)
        assert getattr(m, attr) == table[(state, event)]
    else:
        with pytest.raises(H1StateError):
            getattr(m, move)(event)
        assert getattr(m, attr) == state


def test_every_state_can_be_reached_and_left_except_closed():
    targets = set(TRANSITIONS.values())
    sources = {s for s, _ in TRANSITIONS}
    assert set(STATES) <= targets | {IDLE}
    assert set(STATES) <= sources


# -- one request at a time --------------------------------------------------------------------
def test_bodyless_request_comes_straight_back_and_keep_alive_returns_to_idle():
    m = machine()
    head = m.receive(GET, 1.0)
    assert type(head) is RequestHead and head.path == b"/a"
    assert m.state == HANDLING and m.requests == 1 and not m.pending
    assert m.respond(2.0) is True
    assert m.state == IDLE and m.idle_since == 2.0


def test_partial_head_is_state_head_with_its_deadline_start():
    m = machine()
    assert m.receive(GET[:10], 5.0) is None
    assert m.state == HEAD and m.head_started == 5.0
    assert m.receive(GET[10:20], 6.0) is None
    assert m.state == HEAD and m.head_started == 5.0   # started when the head did
    head = m.receive(GET[20:], 7.0)
    assert head is not None and m.state == HANDLING and m.head_started == 0.0


def test_response_by_a_task_goes_through_responding():
    m = machine()
    m.receive(GET, 0.0)
    m.response_started()
    assert m.state == RESPONDING
    assert m.response_done(3.0) is True
    assert m.state == IDLE


def test_connection_close_request_ends_in_closed():
    m = machine()
    m.receive(CLOSE_GET, 0.0)
    assert m.keep_alive is False
    assert m.respond(1.0) is False
    assert m.state == CLOSED


def test_http10_without_keep_alive_closes():
    m = machine()
    m.receive(b"GET / HTTP/1.0\r\n\r\n", 0.0)
    assert m.respond(0.0) is False and m.state == CLOSED


# -- events in the wrong state -------------------------------------------------------------------
@pytest.mark.parametrize("call", ["respond", "response_done", "response_started", "switch"])
def test_response_events_before_any_request_are_refused(call):
    m = machine()
    with pytest.raises(H1StateError):
        getattr(m, call)(*([0.0] if call in ("respond", "response_done") else []))
    assert m.state == IDLE


def test_done_before_started_and_twice_started_are_refused():
    m = machine()
    m.receive(GET, 0.0)
    with pytest.raises(H1StateError):
        m.response_done(0.0)
    m.response_started()
    with pytest.raises(H1StateError):
        m.response_started()
    with pytest.raises(H1StateError):
        m.respond(0.0)      # a task's response ends with response_done, not respond


def test_nothing_but_close_after_closed():
    m = machine()
    m.close()
    assert m.state == CLOSED
    m.close()  # closing twice is harmless (socket lost after we closed it)
    for call, args in (("respond", (0.0,)), ("response_started", ()), ("switch", ())):
        with pytest.raises(H1StateError):
            getattr(m, call)(*args)
    assert m.receive(GET, 0.0) is None and m.next_event() is None


# -- pipelining ---------------------------------------------------------------------------
def test_pipelined_request_waits_for_the_response_in_flight():
    m = machine()
    assert m.receive(GET + GET.replace(b"/a", b"/b"), 0.0) is None
    first = m.next_event()
    assert first.path == b"/a" and m.state == HANDLING
    assert m.next_event() is END
    assert m.next_event() is None       # /b waits
    m.response_started()
    assert m.next_event() is None       # still waits while the response is written
    m.response_done(1.0)
    second = m.next_event()
    assert second.path == b"/b" and m.requests == 2


def test_a_bodyless_request_behind_queued_events_is_queued_too():
    m = machine()
    m.receive(GET + GET, 0.0)
    m.next_event()
    assert m.receive(GET, 0.0) is None  # not the fast path: others wait before it
    assert len(m.pending) == 5      # END of the first, then two heads and their ENDs


def test_parse_error_of_a_later_request_is_answered_in_its_turn():
    m = machine()
    m.receive(GET + b"BAD\r\n\r\n", 0.0)
    m.next_event()
    m.next_event()  # END
    assert m.next_event() is None
    assert m.error_bytes(400, "x").startswith(b"HTTP/1.1 400")  # (the first is unanswered)
    m.respond(0.0)
    err = m.next_event()
    assert type(err) is HTTPError and err.status == 400
    assert m.error_bytes(err.status, err.reason).startswith(b"HTTP/1.1 400")


def test_too_much_pending_and_little_pending():
    m = machine()
    m.receive(GET * 200, 0.0)  # 400 events
    assert m.too_much_pending and not m.little_pending
    m.next_event()
    for _ in range(399):
        m.pending.pop()
    assert m.little_pending


# -- request bodies --------------------------------------------------------------------------
def test_body_open_then_ends_with_end():
    m = machine()
    assert m.receive(POST5 + b"ab", 0.0) is None
    head = m.next_event()
    assert head.method == b"POST" and m.body == OPEN
    assert m.next_event() == b"ab"
    m.receive(b"cde", 1.0)
    assert drain(m) == [b"cde", END]
    assert m.body == NONE
    assert m.respond(2.0) is True and m.state == IDLE


def test_answer_before_the_body_discards_the_rest_and_the_next_request_parses():
    m = machine()
    m.receive(POST5 + b"ab", 0.0)
    m.next_event()
    assert m.respond(1.0) is True
    assert m.state == IDLE and m.body == DISCARDING
    assert m.error_bytes(400, "bad") == b""     # a second answer would misframe
    m.receive(b"cde" + GET, 2.0)
    assert drain(m)[:3] == [b"ab", b"cde", END]
    assert m.body == NONE and m.requests == 2 and m.state == HANDLING


def test_deadline_while_a_body_is_discarded_is_the_stalled_one():
    m = machine()
    m.receive(POST5, 0.0)
    m.next_event()
    m.respond(0.0)
    assert m.check_timeouts(59.0) is None
    assert m.check_timeouts(61.0) == STALLED


# -- 100-continue -------------------------------------------------------------------------------
def test_continue_is_sent_once_when_the_body_is_wanted():
    m = machine()
    assert m.receive(EXPECT, 0.0) is None   # (a head with a body waits in the queue)
    head = m.next_event()
    assert m.expect_continue and m.state == HANDLING
    assert m.continue_bytes() == CONTINUE
    assert m.continue_bytes() == b""
    resp = Response(200, [], b"ok")
    assert m.framed(resp, head).endswith(b"ok")
    assert m.keep_alive is True


def test_answer_without_continue_closes_the_connection():
    m = machine()
    assert m.receive(EXPECT, 0.0) is None   # (a head with a body waits in the queue)
    head = m.next_event()
    data = m.fixed_bytes(Fixed(404, b"no"), head)
    assert b"connection: close" in data.lower()
    assert m.keep_alive is False
    assert m.respond(0.0) is False


def test_no_continue_before_a_request():
    assert machine().continue_bytes() == b""


def test_no_continue_once_an_answer_has_started():
    # A handler that answers first and reads the body later: a 100 then would land in
    # the middle of its response.
    m = machine()
    assert m.receive(EXPECT, 0.0) is None
    head = m.next_event()
    data = m.framed(Response(200, [], None, content_length=-1), head)
    m.response_started()
    assert b"connection: close" in data.lower() and not m.expect_continue
    assert m.continue_bytes() == b""


# -- interim answers (103 Early Hints) ----------------------------------------------------------
HINT = [(b"link", b"</s.css>; rel=preload")]


def test_an_interim_answer_only_while_its_request_is_handled_and_nothing_has_started():
    m = machine()
    head = m.receive(GET, 0.0)
    assert m.state == HANDLING
    assert m.interim_bytes(103, HINT, head) == b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
    for status in (100, 101, 200, 99):   # 100 is continue_bytes', 101 switch's, the rest not interim
        assert m.interim_bytes(status, HINT, head) == b""
    m.fixed_bytes(Fixed(200, b"ok"), head)
    m.respond(0.0)
    assert m.interim_bytes(103, HINT, head) == b""           # answered: too late


def test_no_interim_answer_to_http10_or_for_another_request():
    m = machine()
    head = m.receive(b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n", 0.0)
    assert m.state == HANDLING and m.interim_bytes(103, HINT, head) == b""   # RFC 9110 §15.2
    m2 = machine()
    first = m2.receive(GET, 0.0)
    m2.fixed_bytes(Fixed(200, b"ok"), first)
    m2.respond(0.0)
    second = m2.receive(GET, 0.0)
    assert m2.interim_bytes(103, HINT, first) == b""          # a late hint of the first request
    assert m2.interim_bytes(103, HINT, second) != b""


# -- response bytes ---------------------------------------------------------------------------
def test_streamed_body_framing_is_decided_once_by_the_machine():
    m = machine()
    head = m.receive(GET, 0.0)
    data = m.framed(Response(200, [], None, content_length=-1), head)
    assert b"transfer-encoding: chunked" in data and m.chunked and m.send_body and m.keep_alive


def test_http10_gets_an_unknown_length_body_delimited_by_close_not_chunks():
    m = machine()
    head = m.receive(b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", 0.0)
    assert m.keep_alive
    data = m.framed(Response(200, [], None, content_length=-1), head)
    assert b"chunked" not in data and b"content-length" not in data
    assert not m.chunked and m.send_body and not m.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodyless_status_sends_no_body_even_when_streamed(status):
    m = machine()
    head = m.receive(GET, 0.0)
    data = m.framed(Response(status, [], None, content_length=-1), head)
    assert b"chunked" not in data and not m.chunked and not m.send_body


def test_head_request_gets_no_body():
    m = machine()
    head = m.receive(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    fixed = Fixed(200, b"hello")
    assert m.fixed_bytes(fixed, head) == fixed.keep[:-5]
    assert m.framed(Response(200, [], b"hello"), head).endswith(b"content-length: 5\r\n\r\n")


def test_no_content_has_no_length_field():
    m = machine()
    head = m.receive(GET, 0.0)
    data = m.framed(Response(204, [], b""), head)
    assert b"content-length" not in data and b"transfer-encoding" not in data


def test_pieces_are_chunked_only_when_asked():
    assert H1Machine.piece(b"abc", True) == b"3\r\nabc\r\n"
    assert H1Machine.piece(b"abc", False) == b"abc"
    assert H1Machine.end_bytes(True) == b"0\r\n\r\n" and H1Machine.end_bytes(False) == b""


def test_upgrade_heads():
    ws = H1Machine.upgrade_head(101, [(b"sec-websocket-accept", b"K")], b"websocket")
    assert ws == (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                  b"sec-websocket-accept: K\r\n\r\n")
    events = H1Machine.upgrade_head(200, [(b"content-type", b"text/event-stream")], None)
    assert events == (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                      b"transfer-encoding: chunked\r\n\r\n")


# -- upgrade / switch -----------------------------------------------------------------------------
def test_upgrade_switches_and_hands_over_the_bytes_after_the_head():
    m = machine()
    head = m.receive(WS + b"\x81\x00", 0.0)
    assert head is not None and head.upgrade == b"websocket"
    assert m.switching and m.keep_alive is False
    assert m.receive(b"\x88\x00", 1.0) is None and m.next_event() is None
    assert m.switch() == b"\x81\x00\x88\x00"
    assert m.state == SWITCHED
    assert m.check_timeouts(1e9) is None
    m.close()
    assert m.state == CLOSED


def test_upgrade_not_taken_is_answered_and_closes():
    m = machine()
    m.receive(WS, 0.0)
    assert m.respond(0.0) is False and m.state == CLOSED


def test_upgrade_after_the_head_arrived_in_pieces():
    m = machine()
    m.receive(WS[:5], 0.0)
    m.receive(WS[5:] + b"x", 0.0)
    assert m.state == HANDLING
    assert m.switch() == b"x"


def test_upgrade_behind_a_pipelined_request_is_refused():
    m = machine()
    m.receive(GET + WS, 0.0)
    m.next_event()
    m.next_event()
    m.respond(0.0)
    assert m.next_event().upgrade == b"websocket"
    assert m.switch() == b""  # its own END is no obstacle
    m2 = machine()
    m2.receive(POST5.replace(b"Host: x", b"Host: x\r\nConnection: upgrade\r\nUpgrade: x"), 0.0)
    m2.next_event()
    with pytest.raises(H1StateError):
        m2.switch()        # a body after an upgrade request
    assert m2.state == HANDLING


def test_connect_reads_nothing_after_it():
    m = machine()
    head = m.receive(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 0.0)
    assert head is not None and m.switching and not m.keep_alive


# -- deadlines ----------------------------------------------------------------------------------
def _fresh(m):
    pass  # no request yet: the header deadline runs from the connection's start (0)


def _answered_at_20(m):
    m.receive(GET, 0.0)
    m.respond(20.0)


def _head_begun_at_50(m):
    _answered_at_20(m)
    m.receive(b"GET /", 50.0)


@pytest.mark.parametrize(("setup", "due", "kind"), [
    (_fresh, 10.0, HEADER_TIMEOUT),          # the first request's header deadline
    (_answered_at_20, 80.0, IDLE_TIMEOUT),   # idle after a response
    (_head_begun_at_50, 60.0, HEADER_TIMEOUT),  # from the first byte of a head
])
def test_deadlines(setup, due, kind):
    m = machine()
    setup(m)
    assert m.check_timeouts(due - 1.0) is None
    assert m.check_timeouts(due + 1.0) == kind


def test_next_head_partly_in_when_the_response_ends_starts_its_deadline():
    m = machine()
    m.receive(GET, 0.0)
    m.response_started()
    m.receive(b"GET /b HT", 3.0)
    assert m.state == RESPONDING
    m.response_done(4.0)
    assert m.state == HEAD and m.head_started == 4.0


def test_stalled_response_deadline_moves_with_progress():
    m = machine()
    m.receive(GET, 0.0)
    m.response_started()
    assert m.check_timeouts(61.0) == STALLED
    m.progress(30.0)
    assert m.check_timeouts(61.0) is None


def test_closed_connection_has_no_deadlines():
    m = machine()
    m.close()
    assert m.check_timeouts(1e9) is None


def test_end_of_a_chunked_body_carries_the_trailers_and_is_parsed_back():
    from fast.http1 import ResponseParser

    end = H1Machine.end_bytes(True, [(b"x-checksum", b"abc"), ("server-timing", "db;dur=3")])
    assert end == b"0\r\nx-checksum: abc\r\nserver-timing: db;dur=3\r\n\r\n"
    assert H1Machine.end_bytes(True, None) == H1Machine.end_bytes(True, []) == b"0\r\n\r\n"
    assert H1Machine.end_bytes(False, [(b"x-a", b"b")]) == b""  # a known length has no trailers
    # A client's parser takes the body and the trailer section, and the connection goes on.
    parser = ResponseParser()
    wire = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + H1Machine.piece(b"hello", True) + end)
    events = parser.feed(wire)
    assert b"".join(e for e in events if type(e) is bytes) == b"hello"
    assert events[-1] is END


@pytest.mark.parametrize("field", [(b"x-a", b"b\r\nx-evil: 1"), (b"x a", b"b"), (b"", b"b"), (b"x:a", b"b")])
def test_a_trailer_that_would_break_the_framing_is_refused(field):
    with pytest.raises(ValueError):
        H1Machine.end_bytes(True, [field])


def test_an_empty_chunked_body_in_one_read_ends_its_body_and_the_next_request_parses():
    m = H1Machine(65536, 100, 5.0, 5.0, 0.0)
    data = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert m.receive(data, 0.0) is None       # not the bodyless fast path: END is queued
    head = m.next_event()
    assert type(head) is RequestHead and m.body == OPEN
    assert m.next_event() is END and m.body == NONE
    assert m.respond(0.0) is True and m.state == IDLE
    m.receive(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz", 0.0)
    assert type(m.next_event()) is RequestHead and m.body == OPEN


def test_a_head_from_ready_headers_is_framed_once_per_connection():
    """A tuple of headers (a handler's ready ones, e.g. a CDN hit's) is framed once and the
    head reused while status and length are the same; anything else is framed anew."""
    m = machine()
    ready = ((b"etag", b'"e1"'), (b"age", b"3"))
    head = m.receive(GET, 0.0)
    first = m.framed(Response(200, ready, None, content_length=10), head)
    assert first == b'HTTP/1.1 200 OK\r\netag: "e1"\r\nage: 3\r\ncontent-length: 10\r\n\r\n'
    m.respond(0.0)
    head = m.receive(GET, 0.0)
    assert m.framed(Response(200, ready, None, content_length=10), head) is first
    m.respond(0.0)
    head = m.receive(GET, 0.0)
    other = m.framed(Response(200, ready, None, content_length=11), head)   # another length
    assert other.endswith(b"content-length: 11\r\n\r\n")
    m.respond(0.0)
    head = m.receive(GET, 0.0)
    assert m.framed(Response(206, ready, None, content_length=11), head).startswith(b"HTTP/1.1 206")
    m.respond(0.0)
    head = m.receive(GET, 0.0)
    assert m.framed(Response(200, ((b"age", b"4"),), None, content_length=11), head).endswith(
        b"age: 4\r\ncontent-length: 11\r\n\r\n")   # other headers: framed anew
    m.respond(0.0)
    head = m.receive(CLOSE_GET, 0.0)   # a closing answer is never the kept one
    assert m.framed(Response(200, ready, None, content_length=10), head).endswith(
        b"content-length: 10\r\nconnection: close\r\n\r\n")
