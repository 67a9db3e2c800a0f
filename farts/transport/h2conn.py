"""The server side of one HTTP/2 connection as a sans-IO state machine.

No socket, no loop, no clock: bytes go in (``receive(data, now)`` returns events), the
adapter says what it answers (``send_head``, ``send_data``, ``send_trailers``,
``reset``, ``goaway``) and takes the bytes to write (``data_to_send``).  The byte
work is compiled: frames ``fast.h2frames``, HPACK ``fast.hpack``, the field rules
``fast.h2fields``; the ``h2``/``hpack``/``hyperframe`` libraries are the tests'
references only (differential tests, and h2's client as the peer in
tests/test_h2_machine.py).  This module is the connection (RFC 9113):

- the preface, then a SETTINGS frame first (§3.4); our SETTINGS and connection
  window at the start; the peer's SETTINGS applied and acknowledged, ours taking
  effect on its ACK; PING answered; GOAWAY in and out;
- the stream states of RFC 9113 §5.1 as ONE table, ``STREAM_TRANSITIONS`` (state,
  event) -> next state; any other pair raises ``H2StateError``.  Drawn (a server that
  never pushes, so the reserved states are never entered)::

      IDLE ─recv headers─▶ OPEN ─recv END_STREAM─▶ HALF_CLOSED_REMOTE ─send END_STREAM─▶ CLOSED
                           OPEN ─send END_STREAM─▶ HALF_CLOSED_LOCAL  ─recv END_STREAM─▶ CLOSED
      OPEN, HALF_CLOSED_* ─send/recv RST_STREAM─▶ CLOSED

- the errors: connection errors end in GOAWAY with their code (PROTOCOL_ERROR for a
  frame on an idle stream, an even or reused stream id, a frame between HEADERS and
  its CONTINUATION; FRAME_SIZE_ERROR and the frame rules from fast.h2frames;
  FLOW_CONTROL_ERROR for a window overflow or a peer sending past the connection
  window; COMPRESSION_ERROR for a block that does not decode); stream errors are
  RST_STREAM (STREAM_CLOSED for a frame on a half-closed or closed stream,
  FLOW_CONTROL_ERROR past the stream window, PROTOCOL_ERROR for a malformed request:
  the field rules of §8.2-8.3, a content-length that is not the body's, §8.1.1,
  reported as ``Malformed``); late frames of a stream we reset are ignored (§5.4.2);
- flow control both ways: we send within the peer's windows (``window``,
  ``WindowOpened``); receive windows are fixed sizes (a stream's, the connection's)
  handed back only as the handler consumes the body (``consumed``), so a peer can make
  us hold at most the connection window of request bodies however slowly we read;
- limits (``H2Limits``): concurrent streams beyond the advertised limit are refused
  with REFUSED_STREAM; a header list over ``max_header_list_size`` is a request the
  adapter answers 431 (over four times it, an HPACK bomb, the decoder stops:
  COMPRESSION_ERROR); a header block of more than ``max_continuation_bytes`` or 64
  CONTINUATION frames closes the connection; resets (rapid reset, CVE-2023-44487),
  resets the peer provokes with stream errors (CVE-2025-8671), PINGs, SETTINGS and
  empty DATA frames are counted against token buckets (``Budget``) and a peer over one
  gets GOAWAY ENHANCE_YOUR_CALM; a response field the rules forbid raises ValueError
  in ``send_head``;
- events for the adapter: ``RequestHead``, ``Body``, ``BodyEnd``, ``Reset``,
  ``Malformed``, ``WindowOpened``, ``Closed``.

The asyncio adapter is ``h2connection.py``.
"""
from __future__ import annotations

from collections import OrderedDict
from enum import IntEnum

from hpack.exceptions import HPACKError

from fast.h2fields import request_error, response_head, trailer_fields
from fast.h2frames import (
    FrameError,
    FrameReader,
    data_frame,
    goaway_frame,
    headers_frames,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from fast.hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Stream states (RFC 9113 §5.1).  RESERVED_LOCAL/REMOTE exist only for server push,
# which this server never does (and clients cannot), so no event leads to them.
IDLE, OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, CLOSED = (
    "idle", "open", "half-closed (remote)", "half-closed (local)", "closed")
# Events that move a stream
RECV_HEADERS, RECV_END, SEND_END, RECV_RST, SEND_RST = (
    "recv HEADERS", "recv END_STREAM", "send END_STREAM", "recv RST_STREAM", "send RST_STREAM")

STREAM_TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, RECV_HEADERS): OPEN,
    (OPEN, RECV_END): HALF_CLOSED_REMOTE,
    (OPEN, SEND_END): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_REMOTE, SEND_END): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_END): CLOSED,
    **{(s, e): CLOSED for s in (OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL)
       for e in (RECV_RST, SEND_RST)},
}

_NEXT: dict[str, dict[str, str]] = {}
for (_state, _event), _to_state in STREAM_TRANSITIONS.items():
    _NEXT.setdefault(_state, {})[_event] = _to_state
del _state, _event, _to_state


class H2StateError(Exception):
    """An event the stream's state does not allow (a bug in the caller)."""


def next_state(state: str, event: str) -> str:
    try:
        return _NEXT[state][event]
    except KeyError:
        raise H2StateError(f"{event} in state {state}") from None


class H2Limits:
    """What one connection may make the server hold or do (see the module docstring)."""

    __slots__ = ("max_concurrent_streams", "max_header_list_size", "stream_window",
                 "connection_window", "max_frame_size", "max_continuation_bytes",
                 "reset_rate", "reset_burst", "control_rate", "control_burst")

    def __init__(self, max_concurrent_streams: int = 100, max_header_list_size: int = 16384,
                 stream_window: int = 256 * 1024, connection_window: int = 1024 * 1024,
                 max_frame_size: int = 16384, max_continuation_bytes: int | None = None,
                 reset_rate: float = 50.0, reset_burst: int = 200,
                 control_rate: float = 50.0, control_burst: int = 200) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_frame_size = max_frame_size
        # A header block is HPACK-compressed, so its bytes are fewer than the list's.
        self.max_continuation_bytes = (max_continuation_bytes if max_continuation_bytes is not None
                                       else 2 * max_header_list_size)
        self.reset_rate, self.reset_burst = reset_rate, reset_burst
        self.control_rate, self.control_burst = control_rate, control_burst


class Budget:
    """A token bucket: ``burst`` events at once, ``rate`` more per second after."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = now

    def spend(self, now: float) -> bool:
        """Takes one token; False when none is left (the peer is over the budget)."""
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


# -- events for the adapter ------------------------------------------------------------
class RequestHead:
    """A request's header section: ``headers`` as h2 gives them (pseudo-headers first,
    names lowercase bytes); ``ended``: no body follows; ``too_large``: the list is over
    max_header_list_size (answer 431)."""

    __slots__ = ("stream_id", "headers", "ended", "too_large")

    def __init__(self, stream_id: int, headers, ended: bool, too_large: bool) -> None:
        self.stream_id, self.headers, self.ended, self.too_large = stream_id, headers, ended, too_large


class Body:
    __slots__ = ("stream_id", "data")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id, self.data = stream_id, data


class BodyEnd:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class Reset:
    """The peer reset the stream (or it was refused): forget it."""

    __slots__ = ("stream_id", "error_code")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id, self.error_code = stream_id, error_code


class WindowOpened:
    """The peer's receive window grew (``stream_id`` 0: the connection's): blocked
    sends may go on."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class Malformed:
    """A request (or its trailers) that breaks RFC 9113 §8.2/§8.3 (``reason``): its
    stream was reset PROTOCOL_ERROR (a stream error, §8.1.1); the connection goes on."""

    __slots__ = ("stream_id", "reason")

    def __init__(self, stream_id: int, reason: str) -> None:
        self.stream_id, self.reason = stream_id, reason


class Closed:
    """The connection is over: a GOAWAY went out (``error``: its code's name; what to
    write is in data_to_send) or came in.  The adapter closes after writing."""

    __slots__ = ("error", "by_peer")

    def __init__(self, error: str, by_peer: bool) -> None:
        self.error, self.by_peer = error, by_peer


class ErrorCodes(IntEnum):
    """RFC 9113 §7."""
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


# SETTINGS identifiers (RFC 9113 §6.5.2, RFC 8441)
HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE, ENABLE_CONNECT_PROTOCOL = 0x1, 0x3, 0x4, 0x5, 0x6, 0x8
DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
REMEMBERED_RESETS = 256   # streams we reset whose late frames are ignored (§5.4.2)
MAX_CONTINUATIONS = 64    # CONTINUATION frames in one header block


class Stream:
    __slots__ = ("id", "state", "unacked", "head_sent", "send_window", "recv_window",
                 "expected", "received")

    def __init__(self, stream_id: int, send_window: int = DEFAULT_WINDOW,
                 recv_window: int = DEFAULT_WINDOW, expected: int = -1) -> None:
        self.id = stream_id
        self.state = IDLE
        self.unacked = 0    # flow-controlled bytes received, not yet handed back
        self.head_sent = False
        self.send_window = send_window   # what the peer lets us send
        self.recv_window = recv_window   # what we let the peer send
        self.expected = expected         # the request's content-length (-1: none)
        self.received = 0                # body bytes received

    def to(self, event: str) -> str:
        self.state = next_state(self.state, event)
        return self.state


def _content_length(headers) -> int:
    """The content-length of a request's fields (-1: none; -2: not a number, or two
    that differ: malformed, RFC 9110 §8.6)."""
    found = -1
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return -2
            n = int(value)
            if found >= 0 and n != found:
                return -2
            found = n
    return found


def _join_cookies(headers: list) -> list:
    """RFC 9113 §8.2.3: a cookie split over fields is one field again, "; " between."""
    cookies = [v for n, v in headers if n == b"cookie"]
    if len(cookies) < 2:
        return headers
    return [f for f in headers if f[0] != b"cookie"] + [(b"cookie", b"; ".join(cookies))]


class H2Machine:
    __slots__ = ("limits", "streams", "resets", "controls", "closed", "error", "requests",
                 "refused", "goaway_sent", "out", "reader", "decoder", "encoder", "prefaced",
                 "pre", "settled", "highest", "reset_by_us", "pending", "send_window",
                 "recv_window", "initial_send", "initial_recv", "max_send_frame",
                 "settings_acked", "now")

    def __init__(self, limits: H2Limits, now: float) -> None:
        self.limits = limits
        self.streams: dict[int, Stream] = {}
        self.resets = Budget(limits.reset_rate, limits.reset_burst, now)
        self.controls = Budget(limits.control_rate, limits.control_burst, now)
        self.closed = False
        self.error = ""          # why the connection ended (an error code's name), if it did
        self.requests = 0
        self.refused = 0
        self.goaway_sent = False
        self.reader = FrameReader(limits.max_frame_size)
        # A header list between the advertised size and four times it is answered 431;
        # over that (an HPACK bomb) the decoder stops and the connection ends.
        self.decoder = Decoder(4 * limits.max_header_list_size)
        self.encoder = Encoder()
        self.prefaced = False
        self.pre = b""           # the client preface, while it is incomplete
        self.settled = False     # the client's first SETTINGS came (§3.4)
        self.highest = 0         # the highest stream id the client opened
        self.reset_by_us: OrderedDict[int, None] = OrderedDict()
        self.pending: list | None = None   # a header block awaiting CONTINUATION
        self.send_window = DEFAULT_WINDOW  # the connection's, the peer's grant
        self.recv_window = limits.connection_window
        self.initial_send = DEFAULT_WINDOW
        self.initial_recv = DEFAULT_WINDOW  # our stream window once our SETTINGS are acked
        self.max_send_frame = 16384
        self.settings_acked = False
        self.now = now           # (of the read being handled)
        self.out = [settings_frame([
            (MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
            (MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
            (INITIAL_WINDOW_SIZE, limits.stream_window),
            (MAX_FRAME_SIZE, limits.max_frame_size),
            # RFC 8441: WebSocket (and other protocols) over a stream, by extended CONNECT.
            (ENABLE_CONNECT_PROTOCOL, 1),
        ])]
        if limits.connection_window > DEFAULT_WINDOW:
            self.out.append(window_update_frame(0, limits.connection_window - DEFAULT_WINDOW))

    # -- bytes in, events out ---------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list:
        if self.closed:
            return []
        self.now = now
        if not self.prefaced:
            pre = self.pre + data
            if len(pre) < len(PREFACE):
                if not PREFACE.startswith(pre):
                    return [self._fail(ErrorCodes.PROTOCOL_ERROR)]
                self.pre = pre
                return []
            if not pre.startswith(PREFACE):
                return [self._fail(ErrorCodes.PROTOCOL_ERROR)]
            self.prefaced, self.pre = True, b""
            data = pre[len(PREFACE):]
        out: list = []
        for f in self.reader.feed(data):
            if type(f) is FrameError:
                if f.stream_id:
                    self._stream_error(f.stream_id, f.code, out)
                    continue
                out.append(self._fail(f.code))
                return out
            t = f.type
            if self.pending is not None:
                if t != 9 or f.stream_id != self.pending[0]:   # (§6.10: nothing in between)
                    out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
                    return out
            elif not self.settled:
                if t != 4 or f.flags & 1:   # §3.4: the preface ends with a SETTINGS frame
                    out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
                    return out
                self.settled = True
            if t == 0:
                self._on_data(f, out, now)
            elif t == 1:
                # (a stream depending on itself, §5.3.1, is refused once the block is
                # decoded: the HPACK context goes on whatever becomes of the stream)
                self_dependent = f.flags & 0x20 and f.depends_on == f.stream_id
                if f.flags & 0x4:
                    self._on_headers(f.stream_id, f.flags, f.data, self_dependent, out, now)
                else:
                    self.pending = [f.stream_id, f.flags, [f.data], len(f.data), self_dependent]
                    self._check_pending(out)
            elif t == 9:
                if self.pending is None:
                    out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
                    return out
                p = self.pending
                p[2].append(f.data)
                p[3] += len(f.data)
                if f.flags & 0x4:
                    self.pending = None
                    self._on_headers(p[0], p[1], b"".join(p[2]), p[4], out, now)
                else:
                    self._check_pending(out)
            elif t == 3:
                self._on_rst(f.stream_id, f.value, out, now)
            elif t == 8:
                self._on_window_update(f.stream_id, f.value, out)
            elif t == 4:
                self._on_settings(f, out, now)
            elif t == 6:
                if not f.flags & 1:
                    if not self.controls.spend(now):
                        out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
                    else:
                        self.out.append(ping_frame(f.data, ack=True))
            elif t == 7:
                out.append(self._ended(_code_name(f.value), True))
            elif t == 2 and f.depends_on == f.stream_id:   # (§5.3.1: on itself)
                self._stream_error(f.stream_id, ErrorCodes.PROTOCOL_ERROR, out)
            if self.closed:
                return out
        return out

    def _check_pending(self, out: list) -> None:
        p = self.pending
        if p[3] > self.limits.max_continuation_bytes or len(p[2]) > MAX_CONTINUATIONS:
            # A header block that never ends (CONTINUATION flood, of full or of empty
            # frames): we hold no more than the limit.
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))

    def _is_idle(self, sid: int) -> bool:
        return sid > self.highest

    def _on_data(self, f, out: list, now: float) -> None:
        sid, n = f.stream_id, f.length
        if n > self.recv_window:
            out.append(self._fail(ErrorCodes.FLOW_CONTROL_ERROR))
            return
        self.recv_window -= n
        s = self.streams.get(sid)
        if s is None or s.state not in (OPEN, HALF_CLOSED_LOCAL):
            if s is None and self._is_idle(sid):
                out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
                return
            self._window_back(n)   # (the bytes of a stream that is gone)
            if sid not in self.reset_by_us:
                self._stream_error(sid, ErrorCodes.STREAM_CLOSED, out)
            return
        if n > s.recv_window:
            self._window_back(n)
            self._stream_error(sid, ErrorCodes.FLOW_CONTROL_ERROR, out)
            return
        s.recv_window -= n
        data = f.data
        end = f.flags & 1
        if not n and not end and not self.controls.spend(now):
            # Empty DATA frames cost us work and the peer nothing (CVE-2019-9518).
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
            return
        s.received += len(data)
        if s.expected >= 0 and (s.received > s.expected or (end and s.received != s.expected)):
            self._window_back(n)
            self._malformed(s.id, "a body that is not its content-length", out)
            return
        s.unacked += n
        if n > len(data):
            self.consumed(sid, n - len(data))   # (padding)
        if data:
            out.append(Body(sid, data))
        if end:
            out.append(BodyEnd(sid))
            self._to(sid, RECV_END)

    def _on_headers(self, sid: int, flags: int, block: bytes, self_dependent: bool, out: list,
                    now: float) -> None:
        try:   # (decoded whatever becomes of the stream: the HPACK context goes on)
            headers = self.decoder.decode(block)
        except HPACKError:
            # A header block that does not decode, or decodes past the hard limit (an
            # HPACK bomb): COMPRESSION_ERROR (RFC 9113 §4.3).
            out.append(self._fail(ErrorCodes.COMPRESSION_ERROR))
            return
        end = flags & 1
        if self_dependent:
            self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR, out)
            return
        s = self.streams.get(sid)
        if s is not None:   # trailers
            if s.state != OPEN:
                self._stream_error(sid, ErrorCodes.STREAM_CLOSED, out)
            elif not end:
                self._malformed(sid, "trailers without END_STREAM", out)
            else:
                why = request_error(headers, True)
                if why is None and s.expected >= 0 and s.received != s.expected:
                    why = "a body that is not its content-length"
                if why is not None:
                    self._malformed(sid, why, out)
                else:   # (not passed on: the body interface has none)
                    out.append(BodyEnd(sid))
                    self._to(sid, RECV_END)
            return
        if not sid & 1:
            out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
            return
        if not self._is_idle(sid):   # a stream that was and is closed
            if sid not in self.reset_by_us:
                self._stream_error(sid, ErrorCodes.STREAM_CLOSED, out)
            return
        self.highest = sid
        headers = _join_cookies(headers)
        # The field rules of RFC 9113 §8.2-8.3, compiled (fast/h2fields.pyx): a
        # malformed request is a stream error, the connection goes on.
        why = request_error(headers)
        expected = _content_length(headers)
        if why is None and (expected == -2 or (end and expected > 0)):
            why = "a content-length that is not a number, or not the body's"
        if why is not None:
            self._malformed(sid, why, out)
            return
        if self.goaway_sent:
            self._send_rst(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            # A stream over the advertised limit is refused (a stream error, §5.1.2: a
            # client may open many before our SETTINGS reach it); refusals count like
            # resets, so a flood of them ends in GOAWAY ENHANCE_YOUR_CALM.
            self._send_rst(sid, ErrorCodes.REFUSED_STREAM)
            self.refused += 1
            if not self.resets.spend(now):
                out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
            return
        s = self.streams[sid] = Stream(sid, self.initial_send, self.initial_recv, expected)
        s.to(RECV_HEADERS)
        self.requests += 1
        # (the list's size as RFC 9113 §6.5.2 counts it, 32 bytes a field, from the decoder)
        too_large = self.decoder.list_size > self.limits.max_header_list_size
        out.append(RequestHead(sid, headers, bool(end), too_large))
        if end:
            self._to(sid, RECV_END)

    def _on_rst(self, sid: int, code: int, out: list, now: float) -> None:
        s = self.streams.pop(sid, None)
        if s is not None:
            s.to(RECV_RST)
            self._release(s)
            out.append(Reset(sid, code))
        elif self._is_idle(sid):
            out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))   # (§6.4: on an idle stream)
            return
        if not self.resets.spend(now):   # rapid reset (CVE-2023-44487)
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))

    def _on_window_update(self, sid: int, n: int, out: list) -> None:
        if not sid:
            self.send_window += n
            if self.send_window > MAX_WINDOW:
                out.append(self._fail(ErrorCodes.FLOW_CONTROL_ERROR))
            else:
                out.append(WindowOpened(0))
            return
        s = self.streams.get(sid)
        if s is None:
            if self._is_idle(sid):
                out.append(self._fail(ErrorCodes.PROTOCOL_ERROR))
            return
        s.send_window += n
        if s.send_window > MAX_WINDOW:
            self._stream_error(sid, ErrorCodes.FLOW_CONTROL_ERROR, out)
        else:
            out.append(WindowOpened(sid))

    def _on_settings(self, f, out: list, now: float) -> None:
        if f.flags & 1:   # our SETTINGS took effect: the stream window we advertised
            if not self.settings_acked:
                self.settings_acked = True
                delta = self.limits.stream_window - self.initial_recv
                self.initial_recv = self.limits.stream_window
                for s in self.streams.values():
                    s.recv_window += delta
            return
        for ident, value in f.settings:
            if ident == HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif ident == INITIAL_WINDOW_SIZE:
                delta = value - self.initial_send
                self.initial_send = value
                for s in self.streams.values():
                    s.send_window += delta
                    if s.send_window > MAX_WINDOW:
                        out.append(self._fail(ErrorCodes.FLOW_CONTROL_ERROR))
                        return
            elif ident == MAX_FRAME_SIZE:
                self.max_send_frame = value
        self.out.append(settings_frame(ack=True))
        out.append(WindowOpened(0))   # the initial window may have grown
        if not self.controls.spend(now):
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))

    def _stream_error(self, sid: int, code: int, out: list) -> None:
        """RST_STREAM ``code``; the adapter forgets the stream if it had it."""
        s = self.streams.pop(sid, None)
        self._send_rst(sid, code)
        if s is not None:
            s.to(SEND_RST)
            self._release(s)
            out.append(Reset(sid, int(code)))
        self._provoked(out)

    def _malformed(self, sid: int, why: str, out: list) -> None:
        s = self.streams.pop(sid, None)
        self._send_rst(sid, ErrorCodes.PROTOCOL_ERROR)
        if s is not None:
            s.to(SEND_RST)
            self._release(s)
        out.append(Malformed(sid, why))
        self._provoked(out)

    def _provoked(self, out: list) -> None:
        """Resets the peer makes us send count like its own (MadeYouReset,
        CVE-2025-8671: stream errors on purpose instead of RST_STREAM frames)."""
        if not self.resets.spend(self.now):
            out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))

    def _send_rst(self, sid: int, code: int) -> None:
        self.out.append(rst_stream_frame(sid, code))
        resets = self.reset_by_us
        resets[sid] = None
        if len(resets) > REMEMBERED_RESETS:
            resets.popitem(last=False)

    def _to(self, sid: int, event: str) -> None:
        s = self.streams[sid]
        if s.to(event) == CLOSED:
            del self.streams[sid]
            self._release(s)

    def _release(self, s: Stream) -> None:
        """A closed stream's unread body bytes go back to the connection window."""
        if s.unacked:
            n, s.unacked = s.unacked, 0
            self._window_back(n)

    def _window_back(self, n: int) -> None:
        if n and not self.closed:
            self.recv_window += n
            self.out.append(window_update_frame(0, n))

    def _fail(self, code: int) -> Closed:
        if not self.closed:
            self.out.append(goaway_frame(self.highest, code))
        return self._ended(_code_name(code), False)

    def _ended(self, error: str, by_peer: bool) -> Closed:
        self.closed = True
        self.error = error
        self.streams.clear()
        return Closed(error, by_peer)

    # -- what the adapter does ----------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def state(self, sid: int) -> str:
        s = self.streams.get(sid)
        return CLOSED if s is None else s.state

    def is_open(self, sid: int) -> bool:
        """The stream is still there to answer on."""
        return sid in self.streams and not self.closed

    def consumed(self, sid: int, n: int) -> None:
        """The handler took ``n`` bytes of the stream's body: hand them back to the peer."""
        s = self.streams.get(sid)
        if s is None or self.closed:
            return
        n = min(n, s.unacked)
        if n:
            s.unacked -= n
            self._window_back(n)
            if s.state == OPEN or s.state == HALF_CLOSED_LOCAL:   # (it may send more)
                s.recv_window += n
                self.out.append(window_update_frame(sid, n))

    def head_sent(self, sid: int) -> bool:
        """The response head is out (an error can no longer be answered, only reset)."""
        s = self.streams.get(sid)
        return s is None or s.head_sent

    def send_head(self, sid: int, status: int, headers: list, end: bool) -> None:
        """(Nothing, when the stream is gone: events of one read are handed out together,
        so a stream may be reset by the peer, or the connection closed, by the time the
        adapter answers its head.)"""
        s = self.streams.get(sid)
        if s is None or self.closed:
            return
        if s.head_sent:
            raise H2StateError(f"a second response head on stream {sid}")
        fields = response_head(status, headers)   # (ValueError: nothing was sent)
        s.head_sent = True
        self.out.append(headers_frames(sid, self.encoder.encode(fields), end, self.max_send_frame))
        if end:
            self._sent_end(s)

    def send_interim(self, sid: int, status: int, headers: list) -> bool:
        """A 1xx interim head (103 Early Hints) before the response's: a HEADERS frame
        without END_STREAM (RFC 9113 §8.1); False once the head has gone, or the stream."""
        s = self.streams.get(sid)
        if s is None or self.closed or s.head_sent or not 102 <= status <= 199:
            return False
        fields = response_head(status, headers)   # (ValueError: nothing was sent)
        self.out.append(headers_frames(sid, self.encoder.encode(fields), False, self.max_send_frame))
        return True

    def window(self, sid: int) -> int:
        """How many body bytes may go on the stream now (0: wait for WindowOpened)."""
        s = self.streams.get(sid)
        if s is None or self.closed:
            return 0
        return max(0, min(s.send_window, self.send_window))

    def send_data(self, sid: int, data: bytes, end: bool = False) -> int:
        """Sends what the windows allow of ``data`` (in frames of the peer's size); returns
        how much went.  ``end`` ends the stream when all of it went."""
        s = self.streams.get(sid)
        if s is None or self.closed:
            return 0
        total = len(data)
        n = min(total, max(0, min(s.send_window, self.send_window)))
        ends = end and n == total
        size = self.max_send_frame
        if n == total and n <= size:   # the usual case: one frame
            if n or ends:
                self.out.append(data_frame(sid, data if type(data) is bytes else bytes(data), ends))
        else:
            mv = memoryview(data)
            for i in range(0, n, size):
                j = min(i + size, n)
                self.out.append(data_frame(sid, mv[i:j].tobytes(), ends and j == n))
        s.send_window -= n
        self.send_window -= n
        if ends:
            self._sent_end(s)
        return n

    def send_trailers(self, sid: int, trailers: list) -> None:
        s = self.streams.get(sid)
        if s is not None and not self.closed:
            block = self.encoder.encode(trailer_fields(trailers))
            self.out.append(headers_frames(sid, block, True, self.max_send_frame))
            self._sent_end(s)

    def end(self, sid: int) -> None:
        s = self.streams.get(sid)
        if s is not None and not self.closed:
            self.out.append(data_frame(sid, b"", True))
            self._sent_end(s)

    def _sent_end(self, s: Stream) -> None:
        if s.state == OPEN:
            # Answered before the whole request came: ask the client to stop sending it
            # (RFC 9113 §8.1: RST_STREAM NO_ERROR after a complete response).
            self.reset(s.id, ErrorCodes.NO_ERROR)
        else:
            self._to(s.id, SEND_END)

    def reset(self, sid: int, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        s = self.streams.pop(sid, None)
        if s is None or self.closed:
            return
        s.to(SEND_RST)
        self._send_rst(sid, code)
        self._release(s)

    def goaway(self) -> None:
        """Graceful shutdown: a GOAWAY NO_ERROR naming the last stream taken; no new
        streams, those open finish (the adapter closes when none is left)."""
        if not self.closed and not self.goaway_sent:
            self.goaway_sent = True
            self.out.append(goaway_frame(self.highest, ErrorCodes.NO_ERROR))

    @property
    def active(self) -> int:
        return len(self.streams)


def _code_name(code) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
