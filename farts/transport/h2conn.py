"""The server side of one HTTP/2 connection as a sans-IO state machine.

No socket, no loop, no clock: bytes go in (``receive(data, now)`` returns events), the
adapter says what it answers (``send_head``, ``send_data``, ``send_trailers``,
``reset``, ``goaway``) and takes the bytes to write (``data_to_send``).  The frames,
the connection's RFC 9113 checks (frame sizes, flow-control arithmetic, frames on
closed streams, CONTINUATION order) are the ``h2`` library's ``H2Connection``, its
HPACK swapped for the compiled ``fast.hpack``; this module adds what an edge server
needs around it:

- the stream states of RFC 9113 §5.1 as ONE table, ``STREAM_TRANSITIONS`` (state,
  event) -> next state; any other pair raises ``H2StateError``.  Drawn (a server that
  never pushes, so the reserved states are never entered)::

      IDLE ─recv headers─▶ OPEN ─recv END_STREAM─▶ HALF_CLOSED_REMOTE ─send END_STREAM─▶ CLOSED
                           OPEN ─send END_STREAM─▶ HALF_CLOSED_LOCAL  ─recv END_STREAM─▶ CLOSED
      OPEN, HALF_CLOSED_* ─send/recv RST_STREAM─▶ CLOSED

- limits (``H2Limits``): concurrent streams beyond the advertised limit are refused
  with REFUSED_STREAM (h2 itself would close the connection, so it is given no
  limit); a header list over ``max_header_list_size`` is a request the
  adapter answers 431 (one over the hard limit, an HPACK bomb, is a connection error
  from h2); a CONTINUATION sequence holding more than ``max_continuation_bytes`` closes
  the connection; resets (rapid reset, CVE-2023-44487), PINGs, SETTINGS and empty DATA
  frames are counted
  against token buckets (``Budget``) and a peer over one gets GOAWAY
  ENHANCE_YOUR_CALM; receive windows are fixed sizes (a stream's, the connection's)
  handed back only as the handler consumes the body (``consumed``), so a peer can make
  us hold at most the connection window of request bodies however slowly we read.
- the field rules of RFC 9113 §8.2-8.3 (``fast.h2fields``, compiled, in place of h2's
  header validation and normalization both ways): a malformed request or trailer
  section is a stream error PROTOCOL_ERROR (§8.1.1), reported as ``Malformed``; a
  response field the rules forbid raises ValueError in ``send_head``;
- events for the adapter: ``RequestHead``, ``Body``, ``BodyEnd``, ``Reset``,
  ``Malformed``, ``WindowOpened``, ``Closed``; nothing else of h2's leaves this module.

The asyncio adapter is ``h2connection.py``.
"""
from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import HPACKError
from hyperframe.frame import GoAwayFrame

from fast.h2fields import request_error, response_head, trailer_fields
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


class Stream:
    __slots__ = ("id", "state", "unacked", "head_sent")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.state = IDLE
        self.unacked = 0    # flow-controlled bytes received, not yet handed back
        self.head_sent = False

    def to(self, event: str) -> str:
        self.state = next_state(self.state, event)
        return self.state


def header_list_size(headers) -> int:
    """RFC 9113 §6.5.2: the uncompressed size, 32 bytes of overhead per field."""
    return sum(len(n) + len(v) + 32 for n, v in headers)


class H2Machine:
    __slots__ = ("conn", "limits", "streams", "resets", "controls", "closed", "error",
                 "requests", "refused", "goaway_sent", "out")

    def __init__(self, limits: H2Limits, now: float) -> None:
        self.limits = limits
        conn = self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=True, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        # HPACK compiled (fast/hpack.pyx, about 20x hpack's speed): both contexts are
        # replaced before any frame, so each direction has one context from its start.
        conn.encoder, conn.decoder = Encoder(), Decoder()
        advertised = {
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            # RFC 8441: WebSocket (and other protocols) over a stream, by extended CONNECT.
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
        }
        conn.local_settings = Settings(client=False, initial_values=advertised)
        conn.initiate_connection()
        # What h2 enforces itself, past the advertised values: a stream over the
        # advertised limit is refused here (a stream error, RFC 9113 §5.1.2; a client
        # may open many before our SETTINGS reach it), never by h2, which would close the
        # connection; refusals count against the reset budget, so a flood of them ends
        # in GOAWAY ENHANCE_YOUR_CALM.  A header list between the advertised size and
        # four times it is answered 431, over that h2 ends the connection.
        conn.local_settings = Settings(client=False, initial_values={
            **advertised,
            SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
            SettingCodes.MAX_HEADER_LIST_SIZE: 4 * limits.max_header_list_size,
        })
        conn.decoder.max_header_list_size = 4 * limits.max_header_list_size
        grow = limits.connection_window - conn.inbound_flow_control_window
        if grow > 0:
            conn.increment_flow_control_window(grow)
        self.streams: dict[int, Stream] = {}
        self.resets = Budget(limits.reset_rate, limits.reset_burst, now)
        self.controls = Budget(limits.control_rate, limits.control_burst, now)
        self.closed = False
        self.error = ""          # why the connection ended (an error code's name), if it did
        self.requests = 0
        self.refused = 0
        self.goaway_sent = False
        self.out = b""           # bytes to write before h2's (a graceful GOAWAY)

    # -- bytes in, events out ---------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list:
        if self.closed:
            return []
        conn = self.conn
        try:
            h2_events = conn.receive_data(data)
        except ProtocolError as e:   # h2 has queued the GOAWAY with the error's code
            code = e.error_code
            if isinstance(e.__cause__, HPACKError):
                # A header block that does not decode, or decodes past the hard limit
                # (an HPACK bomb): COMPRESSION_ERROR (RFC 9113 §4.3), where h2 says
                # PROTOCOL_ERROR or ENHANCE_YOUR_CALM.  Its GOAWAY is the last frame out.
                code = ErrorCodes.COMPRESSION_ERROR
                out = conn.data_to_send()
                if len(out) >= 17 and out[-14] == 0x7:   # (frame type GOAWAY, 8-byte payload)
                    out = out[:-17]
                self.out += out + _goaway(conn.highest_inbound_stream_id, code)
            return [self._ended(_code_name(code), False)]
        pending = getattr(conn.incoming_buffer, "_headers_buffer", None)
        if pending and sum(len(f.data) for f in pending) > self.limits.max_continuation_bytes:
            # A header block that never ends (CONTINUATION flood): h2 would hold up to
            # 64 frames of it; we hold no more than the limit.
            return [self._fail(ErrorCodes.ENHANCE_YOUR_CALM)]
        out: list = []
        streams = self.streams
        for ev in h2_events:
            t = type(ev)
            if t is DataReceived:
                if not ev.data and ev.stream_ended is None and not self.controls.spend(now):
                    # Empty DATA frames cost us work and the peer nothing (CVE-2019-9518).
                    out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
                    return out
                s = streams.get(ev.stream_id)
                if s is None:  # (a stream we reset meanwhile): hand its window back
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                s.unacked += ev.flow_controlled_length
                padding = ev.flow_controlled_length - len(ev.data)
                if padding:
                    self.consumed(s.id, padding)
                if ev.data:
                    out.append(Body(ev.stream_id, ev.data))
            elif t is RequestReceived:
                ev_out = self._on_request(ev, now)
                if ev_out is not None:
                    out.append(ev_out)
                    if ev.stream_ended is not None and type(ev_out) is RequestHead:
                        self._to(ev.stream_id, RECV_END)
            elif t is StreamEnded:
                s = streams.get(ev.stream_id)
                if s is not None and s.state in (OPEN, HALF_CLOSED_LOCAL):
                    out.append(BodyEnd(ev.stream_id))
                    self._to(ev.stream_id, RECV_END)
            elif t is StreamReset:
                # By the peer, or by h2 for a stream error of the peer's (a frame the
                # stream's state does not allow: RST_STREAM STREAM_CLOSED...).
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    s.to(RECV_RST if ev.remote_reset else SEND_RST)
                    self._release(s)
                    out.append(Reset(ev.stream_id, int(ev.error_code)))
                if ev.remote_reset and not self.resets.spend(now):
                    out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
                    return out
            elif t is WindowUpdated:
                out.append(WindowOpened(ev.stream_id))
            elif t is RemoteSettingsChanged:
                out.append(WindowOpened(0))   # the initial window may have grown
                if not self.controls.spend(now):
                    out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
                    return out
            elif t is PingReceived:
                if not self.controls.spend(now):
                    out.append(self._fail(ErrorCodes.ENHANCE_YOUR_CALM))
                    return out
            elif t is SettingsAcknowledged:
                conn.decoder.max_header_list_size = 4 * self.limits.max_header_list_size
            elif t is ConnectionTerminated:
                out.append(self._ended(_code_name(ev.error_code), True))
                return out
            elif t is TrailersReceived:
                # Request trailers: checked, not passed on (the body interface has none).
                why = request_error(ev.headers, True)
                if why is not None and ev.stream_id in streams:
                    self.reset(ev.stream_id, ErrorCodes.PROTOCOL_ERROR)
                    out.append(Malformed(ev.stream_id, why))
        return out

    def _on_request(self, ev: RequestReceived, now: float) -> RequestHead | Malformed | None:
        sid = ev.stream_id
        # The field rules of RFC 9113 §8.2-8.3, compiled (fast/h2fields.pyx), in place of
        # h2's: a malformed request is a stream error, the connection goes on.
        why = request_error(ev.headers)
        if why is not None:
            self.conn.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return Malformed(sid, why)
        if self.goaway_sent:
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return None
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.refused += 1
            if not self.resets.spend(now):   # refused streams count like resets
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM)
            return None
        s = self.streams[sid] = Stream(sid)
        s.to(RECV_HEADERS)
        self.requests += 1
        too_large = header_list_size(ev.headers) > self.limits.max_header_list_size
        return RequestHead(sid, ev.headers, ev.stream_ended is not None, too_large)

    def _to(self, sid: int, event: str) -> None:
        s = self.streams[sid]
        if s.to(event) == CLOSED:
            del self.streams[sid]
            self._release(s)

    def _release(self, s: Stream) -> None:
        """A closed stream's unread body bytes go back to the connection window."""
        if s.unacked:
            n, s.unacked = s.unacked, 0
            self.conn.acknowledge_received_data(n, s.id)

    def _fail(self, code: ErrorCodes) -> Closed:
        if not self.closed:
            self.conn.close_connection(code)
        return self._ended(_code_name(code), False)

    def _ended(self, error: str, by_peer: bool) -> Closed:
        self.closed = True
        self.error = error
        self.streams.clear()
        return Closed(error, by_peer)

    # -- what the adapter does ----------------------------------------------------------
    def data_to_send(self) -> bytes:
        if self.out:
            data, self.out = self.out + self.conn.data_to_send(), b""
            return data
        return self.conn.data_to_send()

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
        s.unacked -= n
        if n:
            self.conn.acknowledge_received_data(n, sid)

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
        self.conn.send_headers(sid, fields, end_stream=end)
        if end:
            self._sent_end(sid)

    def window(self, sid: int) -> int:
        """How many body bytes may go on the stream now (0: wait for WindowOpened)."""
        if not self.is_open(sid):
            return 0
        return max(0, self.conn.local_flow_control_window(sid))

    def send_data(self, sid: int, data: bytes, end: bool = False) -> int:
        """Sends what the windows allow of ``data`` (in frames of the peer's size); returns
        how much went.  ``end`` ends the stream when all of it went."""
        if not self.is_open(sid):
            return 0
        conn = self.conn
        total = len(data)
        n = min(total, max(0, conn.local_flow_control_window(sid)))
        ends = end and n == total
        size = conn.max_outbound_frame_size
        if n == total and n <= size:   # the usual case: one frame, no copy
            if n or ends:
                conn.send_data(sid, data, end_stream=ends)
        else:
            mv = memoryview(data)
            for i in range(0, n, size):
                j = min(i + size, n)
                conn.send_data(sid, mv[i:j].tobytes(), end_stream=ends and j == n)
        if ends:
            self._sent_end(sid)
        return n

    def send_trailers(self, sid: int, trailers: list) -> None:
        if self.is_open(sid):
            self.conn.send_headers(sid, trailer_fields(trailers), end_stream=True)
            self._sent_end(sid)

    def end(self, sid: int) -> None:
        if self.is_open(sid):
            self.conn.end_stream(sid)
            self._sent_end(sid)

    def _sent_end(self, sid: int) -> None:
        s = self.streams[sid]
        if s.state == OPEN:
            # Answered before the whole request came: ask the client to stop sending it
            # (RFC 9113 §8.1: RST_STREAM NO_ERROR after a complete response).
            self.reset(sid, ErrorCodes.NO_ERROR)
        else:
            self._to(sid, SEND_END)

    def reset(self, sid: int, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        s = self.streams.pop(sid, None)
        if s is None or self.closed:
            return
        s.to(SEND_RST)
        self.conn.reset_stream(sid, code)
        self._release(s)

    def goaway(self) -> None:
        """Graceful shutdown: a GOAWAY NO_ERROR naming the last stream taken; no new
        streams, those open finish (the adapter closes when none is left).  (h2's own
        close_connection would end the open streams too, so the frame is written here.)"""
        if not self.closed and not self.goaway_sent:
            self.goaway_sent = True
            self.out += self.conn.data_to_send() + _goaway(self.conn.highest_inbound_stream_id,
                                                            ErrorCodes.NO_ERROR)

    @property
    def active(self) -> int:
        return len(self.streams)


def _goaway(last_stream_id: int, code: int) -> bytes:
    f = GoAwayFrame(0)
    f.last_stream_id = last_stream_id
    f.error_code = code
    return f.serialize()


def _code_name(code) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
