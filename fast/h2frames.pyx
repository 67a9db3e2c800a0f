# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/2 frames (RFC 9113 §4 and §6), compiled: a reader that cuts a byte stream into
parsed frames, and the serializers a server needs.  No I/O, no connection state.

``FrameReader.feed(data)`` returns the complete frames in ``data`` (plus what an
earlier call left), keeping the rest; each is a ``Frame`` with its fields filled by
type.  A frame RFC 9113 makes an error of by itself is a ``FrameError(code,
stream_id)`` in that list, in its place: ``stream_id`` 0 for a connection error (the
last item then: the reader is spent and returns nothing more), else a stream error on
that stream (the frames after it are read on):

- FRAME_SIZE_ERROR: a frame over ``max_frame_size`` (§4.2); RST_STREAM not 4 bytes,
  PING not 8, WINDOW_UPDATE not 4, SETTINGS not a multiple of 6 or an ACK with a
  payload, GOAWAY under 8, a padded or prioritised frame too short for its fields
  (§6); PRIORITY not 5 bytes is a stream error (§6.3);
- PROTOCOL_ERROR: any PUSH_PROMISE (this is the server's reader: clients cannot push,
  §8.4); DATA, HEADERS, PRIORITY, RST_STREAM or CONTINUATION
  on stream 0, SETTINGS, PING or GOAWAY on another (§6); padding as long as or
  longer than what it pads (§6.1, §6.2); a WINDOW_UPDATE of 0 (§6.9: a stream error on
  a stream); SETTINGS_ENABLE_PUSH other than 0/1, SETTINGS_MAX_FRAME_SIZE outside
  2^14..2^24-1, SETTINGS_ENABLE_CONNECT_PROTOCOL other than 0/1 (§6.5.2, RFC 8441);
- FLOW_CONTROL_ERROR: SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1 (§6.5.2).
Frames of unknown types are returned with their payload (the caller ignores them,
§5.5); reserved bits (stream ids, WINDOW_UPDATE) are ignored.

``hyperframe`` (h2's frame library) is the reference of ``tests/test_h2frames.py``;
where RFC 9113 and hyperframe differ (a WINDOW_UPDATE's reserved bit, padding equal to
what is left of a HEADERS frame) this module follows the RFC.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

# Frame types (§6) and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes (§7)
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x3, 0x6
ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, ENABLE_CONNECT_PROTOCOL = 0x2, 0x4, 0x5, 0x8

cdef enum:
    HEADER_LEN = 9
    T_DATA = 0
    T_HEADERS = 1
    T_PRIORITY = 2
    T_RST_STREAM = 3
    T_SETTINGS = 4
    T_PUSH_PROMISE = 5
    T_PING = 6
    T_GOAWAY = 7
    T_WINDOW_UPDATE = 8
    T_CONTINUATION = 9
    F_END_STREAM = 0x1
    F_END_HEADERS = 0x4
    F_PADDED = 0x8
    F_PRIORITY = 0x20
    E_PROTOCOL = 0x1
    E_FLOW_CONTROL = 0x3
    E_FRAME_SIZE = 0x6


class FrameError(Exception):
    """A frame RFC 9113 refuses by itself: ``code`` (§7), ``stream_id`` (0: the
    connection's error, else a stream error on that stream)."""

    def __init__(self, code: int, stream_id: int, message: str) -> None:
        super().__init__(message)
        self.code, self.stream_id = code, stream_id


cdef class Frame:
    """One frame.  ``data``: DATA's payload, HEADERS'/CONTINUATION's block fragment,
    PING's 8 bytes, GOAWAY's debug data, an unknown frame's payload (padding
    removed).  ``length``: the payload's length (what DATA takes of the flow-control
    windows).  ``value``: RST_STREAM's and GOAWAY's error code, WINDOW_UPDATE's
    increment.  ``settings``: SETTINGS' (id, value)
    pairs in order.  ``depends_on``/``weight``/``exclusive``: PRIORITY's and a
    prioritised HEADERS'.  ``last_stream_id``: GOAWAY's."""

    cdef public int type, flags
    cdef public unsigned int stream_id, length, value, last_stream_id, depends_on, weight
    cdef public bint exclusive
    cdef public bytes data
    cdef public list settings

    def __repr__(self):
        return f"Frame(type={self.type}, flags={self.flags:#x}, stream_id={self.stream_id}, length={self.length})"


cdef inline uint32_t be32(const uint8_t* p):
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef class FrameReader:
    cdef bytes buf
    cdef bint spent
    cdef public unsigned int max_frame_size

    def __init__(self, max_frame_size=16384):
        self.buf = b""
        self.spent = False
        self.max_frame_size = max_frame_size

    @property
    def buffered(self):
        """Bytes held for a frame not complete yet."""
        return len(self.buf)

    def feed(self, data):
        """The frames completed by ``data``, in order (and FrameErrors: see the module)."""
        if self.spent:
            return []
        cdef bytes buf = self.buf + data if self.buf else bytes(data)
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), pos = 0
        cdef uint32_t length
        cdef list out = []
        while n - pos >= HEADER_LEN:
            length = (<uint32_t>p[pos] << 16) | (<uint32_t>p[pos + 1] << 8) | p[pos + 2]
            if length > self.max_frame_size:
                out.append(FrameError(E_FRAME_SIZE, 0, f"a frame of {length} bytes, over the maximum"))
                self.spent = True
                break
            if n - pos - HEADER_LEN < length:
                break
            try:
                out.append(parse_frame(p + pos, buf, pos, length))
            except FrameError as e:
                out.append(e)
                if not e.stream_id:
                    self.spent = True
                    break
            pos += HEADER_LEN + length
        self.buf = b"" if self.spent else buf[pos:] if pos else buf
        return out


cdef Frame parse_frame(const uint8_t* h, bytes buf, Py_ssize_t at, uint32_t length):
    cdef Frame f = Frame.__new__(Frame)
    cdef int t = h[3], flags = h[4]
    cdef uint32_t sid = be32(h + 5) & 0x7FFFFFFF
    cdef const uint8_t* p = h + HEADER_LEN
    cdef uint32_t start = 0, end = length, pad = 0, i, ident, value
    f.type, f.flags, f.stream_id, f.length = t, flags, sid, length
    if t <= T_CONTINUATION and t != T_WINDOW_UPDATE:
        if (t == T_SETTINGS or t == T_PING or t == T_GOAWAY) and sid:
            raise FrameError(E_PROTOCOL, 0, f"frame type {t} on stream {sid}")
        if t != T_SETTINGS and t != T_PING and t != T_GOAWAY and not sid:
            raise FrameError(E_PROTOCOL, 0, f"frame type {t} on stream 0")
    if t == T_PUSH_PROMISE:
        raise FrameError(E_PROTOCOL, 0, "PUSH_PROMISE from a client")
    if t == T_DATA or t == T_HEADERS:
        if flags & F_PADDED:
            if length < 1:
                raise FrameError(E_FRAME_SIZE, 0, "a padded frame without its pad length")
            pad = p[0]
            start = 1
        if t == T_HEADERS and flags & F_PRIORITY:
            if length < start + 5:
                raise FrameError(E_FRAME_SIZE, 0, "a HEADERS frame too short for its priority")
            value = be32(p + start)
            f.exclusive = value >> 31
            f.depends_on = value & 0x7FFFFFFF
            f.weight = p[start + 4]
            start += 5
        # (§6.1: DATA's padding as long as the payload; §6.2: over what is left of
        # the block fragment: one rule, counted from after the pad length byte)
        if pad > length - start:
            raise FrameError(E_PROTOCOL, 0, "padding longer than the frame")
        end = length - pad
    elif t == T_PRIORITY:
        if length != 5:
            raise FrameError(E_FRAME_SIZE, sid, "PRIORITY is 5 bytes")
        value = be32(p)
        f.exclusive = value >> 31
        f.depends_on = value & 0x7FFFFFFF
        f.weight = p[4]
        return f
    elif t == T_RST_STREAM:
        if length != 4:
            raise FrameError(E_FRAME_SIZE, 0, "RST_STREAM is 4 bytes")
        f.value = be32(p)
        return f
    elif t == T_SETTINGS:
        if flags & 0x1 and length:
            raise FrameError(E_FRAME_SIZE, 0, "a SETTINGS ACK with a payload")
        if length % 6:
            raise FrameError(E_FRAME_SIZE, 0, "SETTINGS not a multiple of 6 bytes")
        f.settings = []
        for i in range(0, length, 6):
            ident = (<uint32_t>p[i] << 8) | p[i + 1]
            value = be32(p + i + 2)
            if (ident == 0x2 or ident == 0x8) and value > 1:
                raise FrameError(E_PROTOCOL, 0, f"setting {ident} must be 0 or 1")
            if ident == 0x4 and value > 0x7FFFFFFF:
                raise FrameError(E_FLOW_CONTROL, 0, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
            if ident == 0x5 and not 16384 <= value <= 16777215:
                raise FrameError(E_PROTOCOL, 0, "SETTINGS_MAX_FRAME_SIZE out of range")
            f.settings.append((ident, value))
        return f
    elif t == T_PING:
        if length != 8:
            raise FrameError(E_FRAME_SIZE, 0, "PING is 8 bytes")
    elif t == T_GOAWAY:
        if length < 8:
            raise FrameError(E_FRAME_SIZE, 0, "GOAWAY is at least 8 bytes")
        f.last_stream_id = be32(p) & 0x7FFFFFFF
        f.value = be32(p + 4)
        start = 8
    elif t == T_WINDOW_UPDATE:
        if length != 4:
            raise FrameError(E_FRAME_SIZE, 0, "WINDOW_UPDATE is 4 bytes")
        f.value = be32(p) & 0x7FFFFFFF
        if not f.value:
            raise FrameError(E_PROTOCOL, sid, "a WINDOW_UPDATE of 0")
        return f
    f.data = buf[at + HEADER_LEN + start:at + HEADER_LEN + end]
    return f


# -- serializing ----------------------------------------------------------------------
cdef bytes frame(int t, int flags, uint32_t sid, const uint8_t* payload, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEADER_LEN + n)
    cdef uint8_t* q = <uint8_t*>PyBytes_AS_STRING(out)
    q[0], q[1], q[2] = (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF
    q[3], q[4] = t, flags
    q[5], q[6], q[7], q[8] = (sid >> 24) & 0x7F, (sid >> 16) & 0xFF, (sid >> 8) & 0xFF, sid & 0xFF
    if n:
        memcpy(q + HEADER_LEN, payload, n)
    return out


cdef inline void put32(uint8_t* q, uint32_t v):
    q[0], q[1], q[2], q[3] = (v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF


def data_frame(unsigned int stream_id, bytes data, bint end_stream=False):
    return frame(T_DATA, F_END_STREAM if end_stream else 0, stream_id,
                 <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def headers_frames(unsigned int stream_id, bytes block, bint end_stream, Py_ssize_t max_frame_size):
    """A header block as HEADERS then CONTINUATION frames of at most ``max_frame_size``."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(block), i = 0, k
    cdef int flags = F_END_STREAM if end_stream else 0
    cdef list parts = []
    k = min(n, max_frame_size)
    parts.append(frame(T_HEADERS, flags | (F_END_HEADERS if k == n else 0), stream_id, p, k))
    i = k
    while i < n:
        k = min(n - i, max_frame_size)
        parts.append(frame(T_CONTINUATION, F_END_HEADERS if i + k == n else 0, stream_id, p + i, k))
        i += k
    return parts[0] if len(parts) == 1 else b"".join(parts)


def settings_frame(settings=(), bint ack=False):
    """``settings``: (id, value) pairs."""
    cdef bytearray body = bytearray()
    for ident, value in settings:
        body += (<int>ident).to_bytes(2, "big") + (<uint32_t>value).to_bytes(4, "big")
    cdef bytes b = bytes(body)
    return frame(T_SETTINGS, 0x1 if ack else 0, 0, <const uint8_t*>PyBytes_AS_STRING(b), len(b))


def window_update_frame(unsigned int stream_id, uint32_t increment):
    cdef uint8_t q[4]
    put32(q, increment & 0x7FFFFFFF)
    return frame(T_WINDOW_UPDATE, 0, stream_id, q, 4)


def rst_stream_frame(unsigned int stream_id, uint32_t code):
    cdef uint8_t q[4]
    put32(q, code)
    return frame(T_RST_STREAM, 0, stream_id, q, 4)


def ping_frame(bytes data, bint ack=False):
    if len(data) != 8:
        raise ValueError("PING carries 8 bytes")
    return frame(T_PING, 0x1 if ack else 0, 0, <const uint8_t*>PyBytes_AS_STRING(data), 8)


def goaway_frame(uint32_t last_stream_id, uint32_t code, bytes debug=b""):
    cdef bytes body = PyBytes_FromStringAndSize(NULL, 8 + len(debug))
    cdef uint8_t* q = <uint8_t*>PyBytes_AS_STRING(body)
    put32(q, last_stream_id & 0x7FFFFFFF)
    put32(q + 4, code)
    memcpy(q + 8, PyBytes_AS_STRING(debug), len(debug))
    return frame(T_GOAWAY, 0, 0, q, 8 + len(debug))
