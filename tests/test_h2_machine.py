"""The sans-IO HTTP/2 machine (farts/transport/h2conn.py) without sockets: the stream
transition table, and the machine against a real HTTP/2 client (the h2 library's
client side), bytes handed across by hand.  Raw frames (hyperframe) for what no
well-behaved client sends."""
from __future__ import annotations

import itertools

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from farts.transport.h2conn import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE,
    IDLE,
    OPEN,
    PREFACE,
    RECV_END,
    RECV_HEADERS,
    RECV_RST,
    SEND_END,
    SEND_RST,
    STREAM_TRANSITIONS,
    Body,
    BodyEnd,
    Closed,
    H2Limits,
    H2Machine,
    H2StateError,
    Malformed,
    RequestHead,
    Reset,
    Stream,
    WindowOpened,
    next_state,
)

STATES = (IDLE, OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, CLOSED)
EVENTS = (RECV_HEADERS, RECV_END, SEND_END, RECV_RST, SEND_RST)


# -- the table ---------------------------------------------------------------------------
def test_the_table_is_rfc9113_section_5_1_for_a_server_that_never_pushes():
    expected = {
        (IDLE, RECV_HEADERS): OPEN,
        (OPEN, RECV_END): HALF_CLOSED_REMOTE,
        (OPEN, SEND_END): HALF_CLOSED_LOCAL,
        (OPEN, RECV_RST): CLOSED, (OPEN, SEND_RST): CLOSED,
        (HALF_CLOSED_REMOTE, SEND_END): CLOSED,
        (HALF_CLOSED_REMOTE, RECV_RST): CLOSED, (HALF_CLOSED_REMOTE, SEND_RST): CLOSED,
        (HALF_CLOSED_LOCAL, RECV_END): CLOSED,
        (HALF_CLOSED_LOCAL, RECV_RST): CLOSED, (HALF_CLOSED_LOCAL, SEND_RST): CLOSED,
    }
    assert STREAM_TRANSITIONS == expected


@pytest.mark.parametrize("state,event", list(itertools.product(STATES, EVENTS)))
def test_every_pair_outside_the_table_is_refused(state, event):
    if (state, event) in STREAM_TRANSITIONS:
        assert next_state(state, event) == STREAM_TRANSITIONS[(state, event)]
    else:
        with pytest.raises(H2StateError):
            next_state(state, event)


def test_closed_is_final_and_every_path_from_idle_ends_closed():
    assert not [k for k in STREAM_TRANSITIONS if k[0] == CLOSED]
    for path in ([RECV_HEADERS, RECV_END, SEND_END], [RECV_HEADERS, SEND_END, RECV_END],
                 [RECV_HEADERS, RECV_RST], [RECV_HEADERS, RECV_END, SEND_RST]):
        s = Stream(1)
        for ev in path:
            s.to(ev)
        assert s.state == CLOSED
    s = Stream(1)
    with pytest.raises(H2StateError):
        s.to(SEND_END)   # nothing may be sent on an idle stream


# -- the machine against a real client -------------------------------------------------
class Pair:
    """A real h2 client and the machine, with the bytes moved by hand."""

    def __init__(self, limits: H2Limits | None = None, now: float = 0.0) -> None:
        self.now = now
        self.server = H2Machine(limits or H2Limits(), now)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.events: list = []        # the machine's
        self.client_events: list = []
        self.exchange()

    def exchange(self) -> None:
        for _ in range(10):   # until neither side has anything to say (bounded)
            out = self.client.data_to_send()
            if out:
                self.events += self.server.receive(out, self.now)
            back = self.server.data_to_send()
            if back:
                self.client_events += self.client.receive_data(back)
            if not out and not back:
                return

    def raw(self, data: bytes) -> list:
        """Bytes no well-behaved client sends, straight to the machine."""
        evs = self.server.receive(data, self.now)
        self.events += evs
        return evs

    def request(self, path: bytes = b"/", method: bytes = b"GET", end: bool = True, extra=()) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(b":method", method), (b":scheme", b"https"),
                                       (b":authority", b"localhost"), (b":path", path), *extra],
                                 end_stream=end)
        self.exchange()
        return sid

    def of(self, kind, list_=None):
        return [e for e in (self.events if list_ is None else list_) if type(e) is kind]


def goaway_code(data: bytes) -> int | None:
    """The error code of the GOAWAY frame in ``data`` (server frames), if any."""
    c = H2Connection(H2Configuration(client_side=True))
    c.initiate_connection()
    try:
        events = c.receive_data(data)
    except Exception:
        return None
    for e in events:
        if isinstance(e, ConnectionTerminated):
            return e.error_code
    return None


def test_a_request_and_its_answer_walk_the_table():
    p = Pair()
    sid = p.request(b"/a?x=1")
    [head] = p.of(RequestHead)
    assert head.ended and not head.too_large
    assert dict(head.headers)[b":path"] == b"/a?x=1"
    assert p.server.state(sid) == HALF_CLOSED_REMOTE
    p.server.send_head(sid, 200, [(b"content-length", b"2")], False)
    assert p.server.send_data(sid, b"ok", True) == 2
    assert p.server.state(sid) == CLOSED and p.server.active == 0
    p.exchange()
    [resp] = p.of(ResponseReceived, p.client_events)
    assert dict(resp.headers)[b":status"] == b"200"
    assert b"".join(e.data for e in p.of(DataReceived, p.client_events)) == b"ok"
    assert p.of(StreamEnded, p.client_events)


def test_an_interim_head_goes_before_the_answer_and_never_after_it():
    p = Pair()
    sid = p.request(b"/")
    assert p.server.send_interim(sid, 103, [(b"link", b"</s.css>; rel=preload")])
    assert not p.server.send_interim(sid, 200, [])           # not a 1xx
    p.server.send_head(sid, 200, [], True)
    assert not p.server.send_interim(sid, 103, [])           # the answer has gone
    p.exchange()
    [hint] = p.of(InformationalResponseReceived, p.client_events)
    assert dict(hint.headers)[b":status"] == b"103" and dict(hint.headers)[b"link"] == b"</s.css>; rel=preload"
    [resp] = p.of(ResponseReceived, p.client_events)
    assert dict(resp.headers)[b":status"] == b"200"
    assert p.client_events.index(hint) < p.client_events.index(resp)


def test_trailers_end_the_stream():
    p = Pair()
    sid = p.request()
    p.server.send_head(sid, 200, [], False)
    p.server.send_data(sid, b"body")
    p.server.send_trailers(sid, [(b"x-checksum", b"abc")])
    assert p.server.state(sid) == CLOSED
    p.exchange()
    [tr] = p.of(TrailersReceived, p.client_events)
    assert tr.headers == [(b"x-checksum", b"abc")]


def test_request_body_is_held_to_the_window_until_consumed():
    limits = H2Limits(stream_window=32768, connection_window=65535)
    p = Pair(limits)
    sid = p.request(b"/up", b"POST", end=False)
    assert p.server.state(sid) == OPEN
    sent = 0
    body = b"x" * 100_000
    while p.client.local_flow_control_window(sid) > 0:   # the client sends what it may
        n = min(p.client.local_flow_control_window(sid), 16384)
        p.client.send_data(sid, body[sent:sent + n])
        sent += n
        p.exchange()
    assert sent == 32768   # the stream's window, no more: nothing was consumed
    got = sum(len(e.data) for e in p.of(Body))
    assert got == 32768
    p.server.consumed(sid, got)   # the handler took it: the window comes back
    p.exchange()
    assert p.client.local_flow_control_window(sid) > 0
    p.client.send_data(sid, b"end", end_stream=True)
    p.exchange()
    assert p.of(BodyEnd) and p.server.state(sid) == HALF_CLOSED_REMOTE


def test_answer_before_the_body_resets_the_stream_no_error_and_frees_the_window():
    p = Pair(H2Limits(stream_window=32768, connection_window=65535))
    # Eight requests whose bodies are never read, each answered before its body ends:
    # twice the connection window in all.  Were the unread bytes kept, the connection
    # window would be 0 after four and the client stuck.
    for _ in range(8):
        sid = p.request(b"/up", b"POST", end=False)
        assert p.client.local_flow_control_window(sid) >= 16384
        p.client.send_data(sid, b"y" * 16384)
        p.exchange()
        p.server.send_head(sid, 413, [], True)
        assert p.server.state(sid) == CLOSED
        p.exchange()
    resets = p.of(StreamReset, p.client_events)
    assert len(resets) == 8 and {r.error_code for r in resets} == {ErrorCodes.NO_ERROR}
    assert p.client.outbound_flow_control_window >= 16384


def test_streams_over_the_limit_are_refused_not_the_connection():
    # A client that ignores the advertised limit: the fourth stream is refused alone.
    limits = H2Limits(max_concurrent_streams=3)
    raw = b""
    enc = Encoder()
    for sid in (1, 3, 5, 7):
        f = HeadersFrame(sid)
        f.data = enc.encode([(b":method", b"GET"), (b":scheme", b"https"),
                             (b":authority", b"localhost"), (b":path", b"/")])
        f.flags = {"END_HEADERS", "END_STREAM"}
        raw += f.serialize()
    m = H2Machine(limits, 0.0)
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + raw, 0.0)
    assert [e.stream_id for e in evs if type(e) is RequestHead] == [1, 3, 5]
    assert not [e for e in evs if type(e) is Closed]
    out = H2Connection(H2Configuration(client_side=True))
    out.initiate_connection()
    for sid in (1, 3, 5, 7):
        out.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                               (b":authority", b"localhost"), (b":path", b"/")], end_stream=True)
    resets = [e for e in out.receive_data(m.data_to_send()) if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(7, ErrorCodes.REFUSED_STREAM)]
    assert m.refused == 1 and m.active == 3


def test_rapid_reset_gets_goaway_enhance_your_calm():
    p = Pair(H2Limits(reset_burst=50, reset_rate=1.0))
    closed = []
    for _ in range(200):   # bounded: well past the burst
        sid = p.client.get_next_available_stream_id()
        p.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                    (b":authority", b"localhost"), (b":path", b"/")])
        p.client.reset_stream(sid, ErrorCodes.CANCEL)
        closed = p.of(Closed, p.raw(p.client.data_to_send()))
        if closed:
            break
    assert closed and closed[0].error == "ENHANCE_YOUR_CALM"
    # Each reset reached the adapter: the 50 of the burst, and the one over it.
    assert len(p.of(Reset)) == 51
    assert goaway_code(p.server.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM


def test_the_reset_budget_refills_with_time():
    p = Pair(H2Limits(reset_burst=10, reset_rate=10.0))
    for i in range(100):   # 5 resets per simulated second: never over the budget
        p.now = i / 5
        sid = p.client.get_next_available_stream_id()
        p.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                    (b":authority", b"localhost"), (b":path", b"/")])
        p.client.reset_stream(sid, ErrorCodes.CANCEL)
        assert not p.of(Closed, p.raw(p.client.data_to_send()))


@pytest.mark.parametrize("frame", ["ping", "settings", "empty data"])
def test_ping_settings_and_empty_data_floods_get_enhance_your_calm(frame):
    p = Pair(H2Limits(control_burst=20, control_rate=1.0))
    data = b""
    if frame == "empty data":
        p.request(b"/up", b"POST", end=False)
    for i in range(100):
        if frame == "empty data":
            f = DataFrame(1)
        elif frame == "ping":
            f = PingFrame(0)
            f.opaque_data = i.to_bytes(8, "big")
        else:
            f = SettingsFrame(0)
            f.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 65535}
        data += f.serialize()
    closed = p.of(Closed, p.raw(data))
    assert closed and closed[0].error == "ENHANCE_YOUR_CALM"


def test_continuation_flood_closes_with_bounded_memory():
    limits = H2Limits(max_header_list_size=4096)
    m = H2Machine(limits, 0.0)
    m.receive(PREFACE + SettingsFrame(0).serialize(), 0.0)
    h = HeadersFrame(1)
    h.data = Encoder().encode([(b":method", b"GET"), (b":scheme", b"https"),
                               (b":authority", b"localhost"), (b":path", b"/")])
    h.flags = {"END_STREAM"}   # no END_HEADERS: CONTINUATION frames follow, forever
    events = m.receive(h.serialize(), 0.0)
    for _ in range(60):  # bounded; h2's own cap is 64 frames
        c = ContinuationFrame(1)
        c.data = b"\x00" * 1000   # literal fields that never end the block
        events = m.receive(c.serialize(), 0.0)
        if events:
            break
    assert [type(e) for e in events] == [Closed]
    assert events[0].error == "ENHANCE_YOUR_CALM"
    assert goaway_code(m.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM


def test_header_list_over_the_limit_is_a_431_and_over_four_times_it_a_connection_error():
    p = Pair(H2Limits(max_header_list_size=1024))
    p.request(extra=[(b"x-big", b"a" * 2000)])
    [head] = p.of(RequestHead)
    assert head.too_large   # answered 431 by the adapter; the connection stays
    assert not p.of(Closed)
    p.request(extra=[(b"x-bomb", b"b" * 8000)])
    [closed] = p.of(Closed)
    assert closed.error == "COMPRESSION_ERROR"
    [term] = p.of(ConnectionTerminated, p.client_events)
    assert term.error_code == ErrorCodes.COMPRESSION_ERROR


def request_frame(sid: int, enc: Encoder, method: bytes = b"GET", extra=(),
                  flags=("END_HEADERS", "END_STREAM")) -> HeadersFrame:
    h = HeadersFrame(sid)
    h.data = enc.encode([(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost"),
                         (b":path", b"/"), *extra])
    h.flags = set(flags)
    return h


def get(sid: int, end: bool = True, enc: Encoder | None = None) -> bytes:
    flags = ("END_HEADERS", "END_STREAM") if end else ("END_HEADERS",)
    return request_frame(sid, enc or Encoder(), flags=flags).serialize()


def test_data_after_the_clients_end_stream_is_a_stream_error_and_the_connection_stays():
    m = H2Machine(H2Limits(), 0.0)
    enc = Encoder()
    d = DataFrame(1)
    d.data = b"late"
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + get(1, enc=enc) + d.serialize(), 0.0)
    evs = [e for e in evs if type(e) is not WindowOpened]
    assert [(type(e), e.stream_id) for e in evs] == [(RequestHead, 1), (Reset, 1)]
    assert evs[1].error_code == ErrorCodes.STREAM_CLOSED and m.state(1) == CLOSED
    evs = m.receive(get(3, enc=enc), 0.0)   # the connection goes on
    assert [type(e) for e in evs] == [RequestHead]


@pytest.mark.parametrize("fields, trailers", [
    ([(b"X-Upper", b"1")], None),
    ([(b"connection", b"close")], None),
    ([(b"te", b"gzip")], None),
    ([(b"x", b" padded")], None),
    ([(b":path", b"/again")], None),
    ([], [(b":path", b"/")]),          # a pseudo-header in trailers
])
def test_a_malformed_request_is_a_stream_error_and_the_connection_stays(fields, trailers):
    """RFC 9113 §8.1.1: PROTOCOL_ERROR on the stream; the next request is served."""
    m = H2Machine(H2Limits(), 0.0)
    enc = Encoder()
    h = request_frame(1, enc, b"POST", fields,
                      flags=["END_HEADERS"] if trailers else ["END_HEADERS", "END_STREAM"])
    data = h.serialize()
    if trailers:
        t = HeadersFrame(1)
        t.data = enc.encode(trailers)
        t.flags = {"END_HEADERS", "END_STREAM"}
        data += t.serialize()
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + data, 0.0)
    [bad] = [e for e in evs if type(e) is Malformed]
    assert bad.stream_id == 1 and bad.reason
    assert bool([e for e in evs if type(e) is RequestHead]) == bool(trailers)
    [rst] = [f for f in frames(m.data_to_send()) if type(f) is RstStreamFrame]
    assert (rst.stream_id, rst.error_code) == (1, ErrorCodes.PROTOCOL_ERROR)
    assert m.state(1) == CLOSED and not m.closed
    assert [type(e) for e in m.receive(get(3, enc=enc), 0.0)] == [RequestHead]


def test_a_body_that_is_not_its_content_length_is_malformed():
    m = H2Machine(H2Limits(), 0.0)
    enc = Encoder()
    h = request_frame(1, enc, b"POST", [(b"content-length", b"3")], flags=["END_HEADERS"])
    d = DataFrame(1)
    d.data = b"four"
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + h.serialize() + d.serialize(), 0.0)
    assert [type(e) for e in evs if type(e) is not WindowOpened] == [RequestHead, Malformed]
    assert m.state(1) == CLOSED and not m.closed
    assert [type(e) for e in m.receive(get(3, enc=enc), 0.0)] == [RequestHead]


def test_a_self_dependent_stream_is_refused_and_the_hpack_context_goes_on():
    m = H2Machine(H2Limits(), 0.0)
    enc = Encoder()
    h = request_frame(1, enc, extra=[(b"x-indexed", b"once")],
                      flags=["END_HEADERS", "END_STREAM", "PRIORITY"])
    h.depends_on = 1
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + h.serialize(), 0.0)
    assert not [e for e in evs if type(e) is RequestHead]
    [rst] = [f for f in frames(m.data_to_send()) if type(f) is RstStreamFrame]
    assert (rst.stream_id, rst.error_code) == (1, ErrorCodes.PROTOCOL_ERROR)
    # (its x-indexed field is an index into the dynamic table now)
    h = request_frame(3, enc, extra=[(b"x-indexed", b"once")])
    [head] = [e for e in m.receive(h.serialize(), 0.0) if type(e) is RequestHead]
    assert (b"x-indexed", b"once") in head.headers


def test_empty_continuation_flood_closes():
    m = H2Machine(H2Limits(), 0.0)
    h = HeadersFrame(1)
    h.data = Encoder().encode([(b":method", b"GET")])
    h.flags = {"END_STREAM"}
    data = PREFACE + SettingsFrame(0).serialize() + h.serialize() + ContinuationFrame(1).serialize() * 100
    evs = m.receive(data, 0.0)
    assert [e.error for e in evs if type(e) is Closed] == ["ENHANCE_YOUR_CALM"]


def test_provoked_stream_errors_count_like_resets():
    """MadeYouReset (CVE-2025-8671): stream errors on purpose instead of RST_STREAM
    frames (here WINDOW_UPDATE 0 on open streams) spend the same budget."""
    m = H2Machine(H2Limits(reset_burst=20, reset_rate=1.0), 0.0)
    enc = Encoder()
    data = PREFACE + SettingsFrame(0).serialize()
    for sid in range(1, 200, 2):
        data += get(sid, end=False, enc=enc) + b"\x00\x00\x04\x08\x00" + sid.to_bytes(4, "big") + b"\x00" * 4
    evs = m.receive(data, 0.0)
    assert [e.error for e in evs if type(e) is Closed] == ["ENHANCE_YOUR_CALM"]
    assert len([e for e in evs if type(e) is Reset]) == 21


@st.composite
def hostile_frames(draw) -> bytes:
    """A frame a hostile or broken client might send: any type, flags and stream (odd,
    even, 0, already used), payloads of every size around the fixed ones, sometimes a
    valid request header block."""
    t = draw(st.sampled_from([*range(10), 0x20]))
    sid = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]))
    if t == 1 and draw(st.booleans()):
        payload = Encoder().encode([(b":method", b"POST"), (b":scheme", b"https"),
                                    (b":authority", b"a"), (b":path", b"/")])
    else:
        payload = draw(st.one_of(st.binary(max_size=12), st.binary(min_size=4, max_size=4),
                                 st.binary(min_size=8, max_size=8)))
    flags = draw(st.integers(0, 255))
    return len(payload).to_bytes(3, "big") + bytes([t, flags]) + sid.to_bytes(4, "big") + payload


@given(st.lists(hostile_frames(), max_size=12), st.lists(st.sampled_from(["head", "data", "end", "consume"]),
                                                         max_size=6))
def test_any_frames_are_answered_never_a_crash(data, answers):
    """Whatever comes, the machine returns events (a Closed with an error code at
    worst) and bytes to write; the adapter's calls on the streams it was given work."""
    m = H2Machine(H2Limits(), 0.0)
    evs = m.receive(PREFACE + SettingsFrame(0).serialize(), 0.0)
    for frame in data:
        evs += m.receive(frame, 0.0)
        heads = [e.stream_id for e in evs if type(e) is RequestHead]
        for sid, what in zip(heads, answers, strict=False):
            if what == "head" and not m.head_sent(sid):
                m.send_head(sid, 200, [(b"x", b"1")], False)
            elif what == "data" and m.head_sent(sid):
                m.send_data(sid, b"d" * 10)
            elif what == "end" and m.head_sent(sid):
                m.end(sid)
            elif what == "consume":
                m.consumed(sid, 5)
        m.data_to_send()
    closed = [e for e in evs if type(e) is Closed]
    assert len(closed) <= 1 and m.closed == bool(closed)
    assert all(hasattr(ErrorCodes, c.error) for c in closed if not c.by_peer)


def frames(data: bytes) -> list:
    out = []
    while data:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9:9 + length]))
        out.append(f)
        data = data[9 + length:]
    return out


def test_a_frame_on_a_closed_stream_gets_rst_stream_closed_and_the_connection_stays():
    m = H2Machine(H2Limits(), 0.0)
    enc = Encoder()
    m.receive(PREFACE + SettingsFrame(0).serialize() + get(1, enc=enc), 0.0)
    m.send_head(1, 200, [], True)
    assert m.state(1) == CLOSED
    m.data_to_send()
    d = DataFrame(1)
    d.data = b"late"
    assert not [e for e in m.receive(d.serialize(), 0.0) if type(e) is Closed]
    [rst] = [f for f in frames(m.data_to_send()) if type(f) is RstStreamFrame]
    assert (rst.stream_id, rst.error_code) == (1, ErrorCodes.STREAM_CLOSED)
    assert [type(e) for e in m.receive(get(3, enc=enc), 0.0)] == [RequestHead]


def test_frames_errors_get_their_codes():
    # A DATA frame on stream 0 (PROTOCOL_ERROR), a frame over the max size
    # (FRAME_SIZE_ERROR), a window overflow (FLOW_CONTROL_ERROR), garbage HPACK
    # (COMPRESSION_ERROR).
    cases = []
    d0 = DataFrame(1)
    d0.stream_id = 0
    cases.append((d0.serialize(), "PROTOCOL_ERROR"))
    big = DataFrame(1)
    big.data = b"z" * 20000
    cases.append((big.serialize(), "FRAME_SIZE_ERROR"))
    h = HeadersFrame(1)
    h.data = b"\xff\xff\xff\xff\xff"
    h.flags = {"END_HEADERS"}
    cases.append((h.serialize(), "COMPRESSION_ERROR"))
    for data, code in cases:
        m = H2Machine(H2Limits(), 0.0)
        if code == "PROTOCOL_ERROR":  # (hyperframe refuses to build it: patch the id in)
            data = data[:5] + b"\x00\x00\x00\x00" + data[9:]
        evs = m.receive(PREFACE + SettingsFrame(0).serialize() + data, 0.0)
        assert [e.error for e in evs if type(e) is Closed] == [code], code


def test_flow_control_window_overflow_is_flow_control_error():
    m = H2Machine(H2Limits(), 0.0)
    from hyperframe.frame import WindowUpdateFrame
    w = WindowUpdateFrame(0)
    w.window_increment = 2**31 - 1
    evs = m.receive(PREFACE + SettingsFrame(0).serialize() + w.serialize() + w.serialize(), 0.0)
    assert [e.error for e in evs if type(e) is Closed] == ["FLOW_CONTROL_ERROR"]


def test_graceful_goaway_lets_open_streams_finish_and_refuses_new_ones():
    p = Pair()
    sid = p.request()
    p.server.goaway()
    p.exchange()
    [term] = p.of(ConnectionTerminated, p.client_events)
    assert term.error_code == ErrorCodes.NO_ERROR and term.last_stream_id == sid
    # The open stream is still answered.
    p.server.send_head(sid, 200, [], True)
    assert p.server.state(sid) == CLOSED
    # A stream opened after the GOAWAY is refused (h2's client will not open one:
    # a raw HEADERS frame).
    h = HeadersFrame(sid + 2)
    h.data = p.client.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"),
                                      (b":authority", b"localhost"), (b":path", b"/")])
    h.flags = {"END_HEADERS", "END_STREAM"}
    assert not p.of(RequestHead, p.raw(h.serialize()))
    [rst] = [f for f in frames(p.server.data_to_send()) if type(f) is RstStreamFrame]
    assert (rst.stream_id, rst.error_code) == (sid + 2, ErrorCodes.REFUSED_STREAM)


def test_a_client_goaway_or_reset_is_reported():
    p = Pair()
    sid = p.request(end=False)
    p.client.reset_stream(sid, ErrorCodes.CANCEL)
    p.exchange()
    assert [(r.stream_id, r.error_code) for r in p.of(Reset)] == [(sid, ErrorCodes.CANCEL)]
    assert p.server.active == 0
    g = GoAwayFrame(0)
    evs = p.raw(g.serialize())
    assert [(c.error, c.by_peer) for c in p.of(Closed, evs)] == [("NO_ERROR", True)]


def test_settings_from_the_client_open_windows():
    p = Pair()
    assert p.of(RemoteSettingsChanged, p.client_events)
    sid = p.request()
    p.server.send_head(sid, 200, [], False)
    # The client allows 65535 on the stream: the rest waits for its window update.
    assert p.server.send_data(sid, b"q" * 70000) == 65535
    assert p.server.window(sid) == 0
    p.client.increment_flow_control_window(65535)
    p.client.increment_flow_control_window(65535, sid)
    p.exchange()
    assert p.server.window(sid) == 65535
    raw_rst = RstStreamFrame(sid)
    raw_rst.error_code = 8
    p.raw(raw_rst.serialize())
    assert p.server.state(sid) == CLOSED


def test_a_head_and_its_reset_in_one_read_leave_nothing_to_answer():
    """The events of one read come out together: the stream is gone by the time the
    adapter answers its head, and answering it is a no-op, not an error."""
    p = Pair()
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                (b":authority", b"localhost"), (b":path", b"/")], end_stream=True)
    p.client.reset_stream(sid, ErrorCodes.CANCEL)
    evs = p.raw(p.client.data_to_send())
    assert [type(e) for e in evs] == [RequestHead, Reset]
    assert not p.server.is_open(sid)
    p.server.send_head(sid, 200, [], True)
    assert p.server.send_data(sid, b"x", True) == 0
    assert p.server.data_to_send() == b""


# -- the table against h2's own stream states ------------------------------------------
# The client's view of a stream, seen from the server: its half-closed (local), having
# sent END_STREAM, is the server's half-closed (remote), and the reverse.
H2_STATE_NAMES = {"IDLE": IDLE, "OPEN": OPEN, "HALF_CLOSED_REMOTE": HALF_CLOSED_LOCAL,
                  "HALF_CLOSED_LOCAL": HALF_CLOSED_REMOTE, "CLOSED": CLOSED}

ACTIONS = st.lists(st.tuples(st.sampled_from(["open", "data", "end", "reset", "answer", "body",
                                              "server_reset"]),
                             st.integers(0, 5), st.booleans()), max_size=40)


@given(ACTIONS)
def test_the_table_agrees_with_h2s_stream_states(actions):
    """Random client and server actions on a few streams: after each, every stream's
    state in our table is the state h2's client has for it, mirrored (differential: h2's
    stream state machine is the reference), and no valid sequence ends the connection."""
    p = Pair()
    opened: list[int] = []
    for kind, i, flag in actions:
        sid = opened[i % len(opened)] if opened else None
        try:
            if kind == "open" and len(opened) < 6:
                sid = p.client.get_next_available_stream_id()
                p.client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                            (b":authority", b"localhost"), (b":path", b"/")],
                                      end_stream=flag)
                opened.append(sid)
            elif sid is None:
                continue
            elif kind == "data":
                p.client.send_data(sid, b"d" * 10, end_stream=flag)
            elif kind == "end":
                p.client.end_stream(sid)
            elif kind == "reset":
                p.client.reset_stream(sid)
            elif kind == "answer" and p.server.is_open(sid):
                if p.server.head_sent(sid):
                    with pytest.raises(H2StateError):   # (a bug in the caller)
                        p.server.send_head(sid, 200, [], flag)
                    continue
                p.server.send_head(sid, 200, [], flag)
            elif kind == "body" and p.server.is_open(sid) and p.server.head_sent(sid):
                p.server.send_data(sid, b"b", flag)
            elif kind == "server_reset":
                p.server.reset(sid)
        except Exception as e:
            # An action h2's client refuses in its state (which also breaks its stream
            # state, h2's quirk): the sequence ends here.
            if type(e).__module__.startswith("h2"):
                return
            raise
        p.exchange()
        assert not p.of(Closed)
        for s in opened:
            h2_stream = p.client.streams.get(s)
            theirs = CLOSED if h2_stream is None else H2_STATE_NAMES[h2_stream.state_machine.state.name]
            assert p.server.state(s) == theirs, (s, p.server.state(s), theirs)


def test_many_streams_before_our_settings_are_refused_one_by_one_not_the_connection():
    """A client may open streams before our SETTINGS reach it: far over the limit, each
    extra one is refused alone; the connection stays (until the reset budget is spent)."""
    limits = H2Limits(max_concurrent_streams=2, reset_burst=100)
    m = H2Machine(limits, 0.0)
    enc = Encoder()
    evs = m.receive(PREFACE + SettingsFrame(0).serialize()
                    + b"".join(get(2 * i + 1, enc=enc) for i in range(30)), 0.0)
    assert [e.stream_id for e in evs if type(e) is RequestHead] == [1, 3]
    assert not [e for e in evs if type(e) is Closed] and m.refused == 28
