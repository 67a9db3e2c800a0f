# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""WebSocket frames (RFC 6455 §5), server side: an encoder for server→client frames and an
incremental decoder for client→server frames.

Sans-IO: ``FrameDecoder.feed()`` takes whatever bytes the transport produced and returns a
list of events; the encoders return bytes.  The HTTP upgrade handshake is done elsewhere
(wsproto); no extension is negotiated, so every RSV bit must be zero.

Encoding is a pure function of its arguments and server frames are unmasked (§5.1), so a
published event is encoded once and the same bytes object is written to every subscriber.

Decoder events, in order of arrival: ``Message`` (a complete, reassembled, unmasked text or
binary message), ``Ping``, ``Pong``, ``Close`` and at most one ``ProtocolError``.  After a
``Close`` or a ``ProtocolError`` the decoder ignores further input (``feed()`` returns []);
the caller answers a Close with a Close (``encode_close(ev.code)`` echoes it, 1005 giving an
empty close payload) and a ProtocolError with ``encode_close(ev.close_code)``, then closes
the connection.  Pings are not answered here: the caller sends ``encode_pong(ev.payload)``.

Choices where RFC 6455 leaves room, all close code 1002 unless stated:

* An unmasked client frame, any RSV bit, an opcode other than 0, 1, 2, 8, 9, 10, a control
  frame that is fragmented or longer than 125 bytes, a continuation frame outside a message,
  a data frame inside a fragmented message, a payload length not in its minimal form (§5.2
  "the minimal number of bytes MUST be used") or with the 64-bit length's top bit set.
* A frame longer than ``max_frame_size``, or a fragment that takes a message past
  ``max_message_size``: 1009, decided from the frame header, before the payload is read.
* Text is validated as its bytes arrive (a DFA carried across fragments): invalid UTF-8 is
  1007 as soon as it cannot be the prefix of a valid message, as wsproto and Autobahn
  (§6.4 "fail fast") expect; a text message that ends inside a character is 1007 too.
* Close payloads: empty is code 1005; 1 byte is invalid; received codes must be 1000-1003,
  1007-1014 (IANA's registry: 1012-1014 were registered after the RFC) or 3000-4999; the
  reason must be UTF-8 (else 1007).
* Every error depends only on the bytes, never on how they were split between feeds.

Memory: a frame's payload goes straight, unmasked, into the bytes object that the Message
event hands out when the frame is a whole message that is small or already fully received;
otherwise into a buffer that grows with the bytes actually received (a header announcing a
large frame reserves nothing), freed when the message is complete.
"""

cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)


OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

cdef enum:
    _CONT = 0x0
    _TEXT = 0x1
    _BINARY = 0x2
    _CLOSE = 0x8
    _PING = 0x9
    _PONG = 0xA
    _MAX_CONTROL = 125
    _DIRECT_MAX = 16384     # a frame this small gets its final bytes object at its header
    _CHUNK = 16384          # unmask and validate in blocks that stay in L1/L2

cdef bytes _EMPTY = b""


# ----------------------------------------------------------------------------------------
# UTF-8 validation: a DFA over the well-formed byte sequences of Unicode Table 3-7 (no
# overlong forms, no surrogates, nothing above U+10FFFF), with an ASCII fast path.  The state
# is carried across calls, so a text message is checked piece by piece as it arrives.

cdef enum:
    U_ACCEPT = 0    # between characters
    U_REJECT = 1
    U_CONT1 = 2     # one continuation byte (80-BF) missing
    U_CONT2 = 3     # two
    U_CONT3 = 4     # three
    U_E0 = 5        # after E0: A0-BF, then one more
    U_ED = 6        # after ED: 80-9F (no surrogates), then one more
    U_F0 = 7        # after F0: 90-BF, then two more
    U_F4 = 8        # after F4: 80-8F (≤ U+10FFFF), then two more
    U_STATES = 9

cdef unsigned char _UTF8[U_STATES * 256]   # next state, by state and byte
# The same DFA as a "shift DFA": state s is the number 6*s, and the row of a byte holds the
# next state of every state, 6 bits each: next = (_ROW[byte] >> state) & 63.  The table
# load does not depend on the state, so a step costs a shift and a mask on the critical path.
cdef uint64_t _ROW[256]

cdef enum:
    U8_OK = 0               # U_ACCEPT * 6: the bytes so far are whole characters
    U8_BAD = U_REJECT * 6   # absorbing: once invalid, always invalid


cdef void _init_utf8() noexcept:
    cdef int s, c
    for s in range(U_STATES):
        for c in range(256):
            _UTF8[s * 256 + c] = U_REJECT
    for c in range(0x80):
        _UTF8[U_ACCEPT * 256 + c] = U_ACCEPT
    for c in range(0xC2, 0xE0):
        _UTF8[U_ACCEPT * 256 + c] = U_CONT1
    _UTF8[U_ACCEPT * 256 + 0xE0] = U_E0
    for c in range(0xE1, 0xF0):
        _UTF8[U_ACCEPT * 256 + c] = U_CONT2
    _UTF8[U_ACCEPT * 256 + 0xED] = U_ED
    _UTF8[U_ACCEPT * 256 + 0xF0] = U_F0
    for c in range(0xF1, 0xF4):
        _UTF8[U_ACCEPT * 256 + c] = U_CONT3
    _UTF8[U_ACCEPT * 256 + 0xF4] = U_F4
    for c in range(0x80, 0xC0):
        _UTF8[U_CONT1 * 256 + c] = U_ACCEPT
        _UTF8[U_CONT2 * 256 + c] = U_CONT1
        _UTF8[U_CONT3 * 256 + c] = U_CONT2
    for c in range(0xA0, 0xC0):
        _UTF8[U_E0 * 256 + c] = U_CONT1
    for c in range(0x80, 0xA0):
        _UTF8[U_ED * 256 + c] = U_CONT1
    for c in range(0x90, 0xC0):
        _UTF8[U_F0 * 256 + c] = U_CONT2
    for c in range(0x80, 0x90):
        _UTF8[U_F4 * 256 + c] = U_CONT2
    for c in range(256):
        _ROW[c] = 0
        for s in range(U_STATES):
            _ROW[c] |= (<uint64_t>(_UTF8[s * 256 + c] * 6)) << (s * 6)


_init_utf8()


cdef inline int _utf8(int state, const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """The DFA state (U8_OK, U8_BAD or a partial character) after ``n`` more bytes."""
    cdef Py_ssize_t i = 0
    cdef uint64_t a, b, st = state
    while i + 8 <= n:
        memcpy(&a, s + i, 8)
        if st == U8_OK and not (a & 0x8080808080808080ULL):
            # ASCII run: 32 bytes at a time while it lasts
            i += 8
            while i + 32 <= n:
                memcpy(&a, s + i, 8)
                memcpy(&b, s + i + 8, 8)
                a |= b
                memcpy(&b, s + i + 16, 8)
                a |= b
                memcpy(&b, s + i + 24, 8)
                if (a | b) & 0x8080808080808080ULL:
                    break
                i += 32
            continue
        st = (_ROW[s[i]] >> st) & 63
        st = (_ROW[s[i + 1]] >> st) & 63
        st = (_ROW[s[i + 2]] >> st) & 63
        st = (_ROW[s[i + 3]] >> st) & 63
        st = (_ROW[s[i + 4]] >> st) & 63
        st = (_ROW[s[i + 5]] >> st) & 63
        st = (_ROW[s[i + 6]] >> st) & 63
        st = (_ROW[s[i + 7]] >> st) & 63
        if st == U8_BAD:
            return U8_BAD
        i += 8
    while i < n:
        st = (_ROW[s[i]] >> st) & 63
        i += 1
    return <int>st


def is_valid_utf8(bytes data):
    """True if ``data`` is well-formed UTF-8 (what ``data.decode("utf-8")`` accepts)."""
    return _utf8(U8_OK, <const unsigned char *>PyBytes_AS_STRING(data),
                 PyBytes_GET_SIZE(data)) == U8_OK


# ----------------------------------------------------------------------------------------
# Masking (§5.3): XOR with the 4-byte key, 8 bytes at a time with the key repeated twice.
# ``phase`` is the payload offset modulo 4 at which ``src`` starts.

cdef inline void _unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                         const unsigned char *mask, int phase) noexcept nogil:
    cdef unsigned char key[8]
    cdef uint64_t k, w
    cdef Py_ssize_t i = 0
    cdef int j
    for j in range(8):
        key[j] = mask[(phase + j) & 3]
    memcpy(&k, key, 8)
    while i + 32 <= n:
        memcpy(&w, src + i, 8)
        w ^= k
        memcpy(dst + i, &w, 8)
        memcpy(&w, src + i + 8, 8)
        w ^= k
        memcpy(dst + i + 8, &w, 8)
        memcpy(&w, src + i + 16, 8)
        w ^= k
        memcpy(dst + i + 16, &w, 8)
        memcpy(&w, src + i + 24, 8)
        w ^= k
        memcpy(dst + i + 24, &w, 8)
        i += 32
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 7]
        i += 1


# ----------------------------------------------------------------------------------------
# Close codes (§7.4)

cdef inline bint _close_code_ok(int code) noexcept:
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


# ----------------------------------------------------------------------------------------
# Encoding

cdef inline Py_ssize_t _header_size(Py_ssize_t n) noexcept:
    if n <= 125:
        return 2
    if n <= 0xFFFF:
        return 4
    return 10


cdef inline void _write_header(unsigned char *h, int b0, Py_ssize_t n, bint masked) noexcept:
    cdef int m = 0x80 if masked else 0
    cdef int i
    cdef uint64_t v
    h[0] = <unsigned char>b0
    if n <= 125:
        h[1] = <unsigned char>(m | n)
    elif n <= 0xFFFF:
        h[1] = <unsigned char>(m | 126)
        h[2] = <unsigned char>(n >> 8)
        h[3] = <unsigned char>(n & 0xFF)
    else:
        h[1] = <unsigned char>(m | 127)
        v = <uint64_t>n
        for i in range(8):
            h[9 - i] = <unsigned char>(v & 0xFF)
            v >>= 8


cdef int _check_frame(int opcode, Py_ssize_t n, bint fin) except -1:
    if opcode & 8:
        if opcode != _CLOSE and opcode != _PING and opcode != _PONG:
            raise ValueError("unknown opcode %d" % opcode)
        if n > _MAX_CONTROL:
            raise ValueError("control frame payload over 125 bytes")
        if not fin:
            raise ValueError("control frames cannot be fragmented")
    elif opcode != _CONT and opcode != _TEXT and opcode != _BINARY:
        raise ValueError("unknown opcode %d" % opcode)
    return 0


cdef bytes _frame(int opcode, const char *payload, Py_ssize_t n, bint fin):
    cdef Py_ssize_t hn = _header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hn + n)
    cdef unsigned char *o = <unsigned char *>PyBytes_AS_STRING(out)
    _write_header(o, (0x80 if fin else 0) | opcode, n, False)
    if n:
        memcpy(o + hn, payload, n)
    return out


def encode_frame(int opcode, bytes payload, bint fin=True):
    """One unmasked (server→client) frame.  Raises ValueError for an unknown opcode and for
    a control frame that is fragmented or over 125 bytes.  Text payloads are not checked
    here (a fragment may end inside a character); ``encode_text`` checks them."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    _check_frame(opcode, n, fin)
    return _frame(opcode, PyBytes_AS_STRING(payload), n, fin)


def encode_text(bytes data):
    """A whole text message in one frame; ValueError if ``data`` is not UTF-8."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char *s = PyBytes_AS_STRING(data)
    if _utf8(U8_OK, <const unsigned char *>s, n) != U8_OK:
        raise ValueError("text message is not valid UTF-8")
    return _frame(_TEXT, s, n, True)


def encode_binary(bytes data):
    """A whole binary message in one frame."""
    return _frame(_BINARY, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), True)


def encode_ping(bytes payload=b""):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    _check_frame(_PING, n, True)
    return _frame(_PING, PyBytes_AS_STRING(payload), n, True)


def encode_pong(bytes payload=b""):
    """The answer to ``Ping(payload)`` (§5.5.3: same application data)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    _check_frame(_PONG, n, True)
    return _frame(_PONG, PyBytes_AS_STRING(payload), n, True)


def encode_close(int code, bytes reason=b""):
    """A close frame.  ``code`` must be one an endpoint may send (1000-1003, 1007-1014,
    3000-4999), or 1005 with no reason for a close frame without a payload (so that echoing
    a received ``Close`` is always ``encode_close(ev.code)``); ``reason`` is UTF-8 of at most
    123 bytes.  Anything else raises ValueError."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(reason)
    cdef unsigned char buf[_MAX_CONTROL]
    if code == 1005 and n == 0:
        return _frame(_CLOSE, NULL, 0, True)
    if not _close_code_ok(code):
        raise ValueError("close code %d cannot be sent" % code)
    if n > _MAX_CONTROL - 2:
        raise ValueError("close reason over 123 bytes")
    if _utf8(U8_OK, <const unsigned char *>PyBytes_AS_STRING(reason), n) != U8_OK:
        raise ValueError("close reason is not valid UTF-8")
    buf[0] = <unsigned char>(code >> 8)
    buf[1] = <unsigned char>(code & 0xFF)
    if n:
        memcpy(buf + 2, PyBytes_AS_STRING(reason), n)
    return _frame(_CLOSE, <const char *>buf, n + 2, True)


def encode_masked_frame(int opcode, bytes payload, bytes mask, bint fin=True):
    """One masked (client→server) frame with the 4-byte masking key ``mask``; for tests and
    load generators (a real client must draw a fresh unpredictable key per frame, §5.3)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t hn = _header_size(n) + 4
    cdef bytes out
    cdef unsigned char *o
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    _check_frame(opcode, n, fin)
    out = PyBytes_FromStringAndSize(NULL, hn + n)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    _write_header(o, (0x80 if fin else 0) | opcode, n, True)
    memcpy(o + hn - 4, PyBytes_AS_STRING(mask), 4)
    _unmask(o + hn, <const unsigned char *>PyBytes_AS_STRING(payload), n,
            <const unsigned char *>PyBytes_AS_STRING(mask), 0)
    return out


# ----------------------------------------------------------------------------------------
# Events

@cython.final
@cython.freelist(64)
cdef class Message:
    """A complete text (OP_TEXT, UTF-8 validated) or binary (OP_BINARY) message."""

    cdef readonly int opcode
    cdef readonly bytes data

    def __init__(self, int opcode, bytes data):
        self.opcode = opcode
        self.data = data

    def __eq__(self, other):
        if type(other) is not Message:
            return NotImplemented
        return self.opcode == (<Message>other).opcode and self.data == (<Message>other).data

    def __repr__(self):
        return "Message(%s, %r)" % ("OP_TEXT" if self.opcode == _TEXT else "OP_BINARY",
                                    self.data)


@cython.final
cdef class Ping:
    """The caller answers with ``encode_pong(payload)``."""

    cdef readonly bytes payload

    def __init__(self, bytes payload):
        self.payload = payload

    def __eq__(self, other):
        if type(other) is not Ping:
            return NotImplemented
        return self.payload == (<Ping>other).payload

    def __repr__(self):
        return "Ping(%r)" % (self.payload,)


@cython.final
cdef class Pong:
    cdef readonly bytes payload

    def __init__(self, bytes payload):
        self.payload = payload

    def __eq__(self, other):
        if type(other) is not Pong:
            return NotImplemented
        return self.payload == (<Pong>other).payload

    def __repr__(self):
        return "Pong(%r)" % (self.payload,)


@cython.final
cdef class Close:
    """The peer's close frame: ``code`` (1005 when it had no payload) and its UTF-8 reason."""

    cdef readonly int code
    cdef readonly str reason

    def __init__(self, int code, str reason=""):
        self.code = code
        self.reason = reason

    def __eq__(self, other):
        if type(other) is not Close:
            return NotImplemented
        return self.code == (<Close>other).code and self.reason == (<Close>other).reason

    def __repr__(self):
        return "Close(%d, %r)" % (self.code, self.reason)


@cython.final
cdef class ProtocolError:
    """Invalid input: the code to close with (1002, 1007 or 1009) and a short reason.  It is
    the last event; the decoder is dead."""

    cdef readonly int close_code
    cdef readonly str reason

    def __init__(self, int close_code, str reason):
        self.close_code = close_code
        self.reason = reason

    def __eq__(self, other):
        if type(other) is not ProtocolError:
            return NotImplemented
        return (self.close_code == (<ProtocolError>other).close_code
                and self.reason == (<ProtocolError>other).reason)

    def __repr__(self):
        return "ProtocolError(%d, %r)" % (self.close_code, self.reason)


# ----------------------------------------------------------------------------------------
# Decoder

cdef enum:
    S_HEADER = 0
    S_PAYLOAD = 1
    S_CLOSED = 2    # a Close was received
    S_DEAD = 3      # a ProtocolError was reported


@cython.final
cdef class FrameDecoder:
    """Client→server frames in, events out (see the module docstring)."""

    cdef Py_ssize_t _max_message
    cdef Py_ssize_t _max_frame
    cdef int _state
    cdef int _err_code
    cdef const char *_why
    # the frame header being read
    cdef unsigned char _hdr[14]
    cdef int _hdr_len
    cdef int _hdr_need
    # the current frame
    cdef int _opcode
    cdef bint _fin
    cdef unsigned char _mask[4]
    cdef Py_ssize_t _plen           # payload length
    cdef Py_ssize_t _pdone          # payload bytes received
    cdef unsigned char *_dst        # where the current frame's payload goes (direct/control)
    # the current message
    cdef int _msg_opcode            # 0: none in progress
    cdef int _utf8_state
    cdef Py_ssize_t _msg_len        # bytes of completed fragments
    cdef bytes _direct              # the whole message, written in place
    cdef unsigned char *_buf        # otherwise: growable buffer
    cdef Py_ssize_t _cap
    cdef unsigned char _ctl[_MAX_CONTROL]

    def __init__(self, Py_ssize_t max_message_size=1 << 20, max_frame_size=None):
        """``max_frame_size`` defaults to ``max_message_size``."""
        cdef Py_ssize_t max_frame = max_message_size if max_frame_size is None else max_frame_size
        if max_message_size < 0 or max_frame < 0:
            raise ValueError("size limits must be >= 0")
        self._max_message = max_message_size
        self._max_frame = max_frame
        self._state = S_HEADER
        self._hdr_len = 0
        self._hdr_need = 2
        self._msg_opcode = 0

    def __dealloc__(self):
        free(self._buf)

    cdef inline int _fail(self, int code, const char *why) noexcept:
        self._err_code = code
        self._why = why
        return code

    cdef void _drop_message(self) noexcept:
        self._msg_opcode = 0
        self._msg_len = 0
        self._direct = None
        free(self._buf)
        self._buf = NULL
        self._cap = 0

    cdef int _first_two(self) noexcept:
        """Checks what the first two header bytes settle; sets how long the header is."""
        cdef int b0 = self._hdr[0], b1 = self._hdr[1]
        cdef int opcode = b0 & 0x0F
        cdef int len7 = b1 & 0x7F
        if b0 & 0x70:
            return self._fail(1002, b"reserved bits set without an extension")
        if opcode & 8:
            if opcode != _CLOSE and opcode != _PING and opcode != _PONG:
                return self._fail(1002, b"unknown opcode")
            if not (b0 & 0x80):
                return self._fail(1002, b"fragmented control frame")
            if len7 > _MAX_CONTROL:
                return self._fail(1002, b"control frame payload over 125 bytes")
        elif opcode == _CONT:
            if self._msg_opcode == 0:
                return self._fail(1002, b"continuation frame outside a message")
        elif opcode == _TEXT or opcode == _BINARY:
            if self._msg_opcode != 0:
                return self._fail(1002, b"new data frame inside a fragmented message")
        else:
            return self._fail(1002, b"unknown opcode")
        if not (b1 & 0x80):
            return self._fail(1002, b"unmasked client frame")
        self._hdr_need = 6 if len7 < 126 else (8 if len7 == 126 else 14)
        return 0

    cdef int _begin_frame(self, Py_ssize_t available) except -1:
        """The header is complete; ``available`` payload bytes are in the current input."""
        cdef const unsigned char *h = self._hdr
        cdef int len7 = h[1] & 0x7F
        cdef uint64_t v = len7
        cdef Py_ssize_t plen
        cdef int i, moff = 2
        if len7 == 126:
            v = (<uint64_t>h[2] << 8) | h[3]
            if v <= 125:
                return self._fail(1002, b"payload length not in minimal form")
            moff = 4
        elif len7 == 127:
            v = 0
            for i in range(2, 10):
                v = (v << 8) | h[i]
            if v >> 63:
                return self._fail(1002, b"payload length with the top bit set")
            if v <= 0xFFFF:
                return self._fail(1002, b"payload length not in minimal form")
            moff = 10
        if v > <uint64_t>self._max_frame:
            return self._fail(1009, b"frame larger than the limit")
        plen = <Py_ssize_t>v
        memcpy(self._mask, h + moff, 4)
        self._opcode = h[0] & 0x0F
        self._fin = (h[0] & 0x80) != 0
        self._plen = plen
        self._pdone = 0
        self._hdr_len = 0
        self._hdr_need = 2
        self._state = S_PAYLOAD
        if self._opcode & 8:
            self._dst = self._ctl
            return 0
        if plen > self._max_message - self._msg_len:
            return self._fail(1009, b"message larger than the limit")
        if self._opcode != _CONT:
            self._msg_opcode = self._opcode
            self._utf8_state = U8_OK
            if self._fin and (plen <= _DIRECT_MAX or plen <= available):
                self._direct = (PyBytes_FromStringAndSize(NULL, plen) if plen else _EMPTY)
                self._dst = <unsigned char *>PyBytes_AS_STRING(self._direct)
                return 0
        self._dst = NULL        # the growable buffer
        return 0

    cdef int _payload(self, const unsigned char *src, Py_ssize_t n) except -1:
        """Unmasks ``n`` payload bytes of the current frame (n <= what remains of it)."""
        cdef unsigned char *d
        cdef unsigned char *grown
        cdef Py_ssize_t need, cap, k
        cdef bint text = self._msg_opcode == _TEXT and not (self._opcode & 8)
        if self._dst != NULL:
            d = self._dst + self._pdone
        else:
            need = self._msg_len + self._pdone + n
            if need > self._cap:
                cap = self._cap * 2 if self._cap else 4096
                if cap < need:
                    cap = need
                if cap > self._max_message:
                    cap = need if need > self._max_message else self._max_message
                grown = <unsigned char *>realloc(self._buf, cap)
                if grown == NULL:
                    raise MemoryError()
                self._buf = grown
                self._cap = cap
            d = self._buf + self._msg_len + self._pdone
        while n > 0:
            k = n if n < _CHUNK else _CHUNK
            _unmask(d, src, k, self._mask, self._pdone & 3)
            if text:
                self._utf8_state = _utf8(self._utf8_state, d, k)
                if self._utf8_state == U8_BAD:
                    return self._fail(1007, b"invalid UTF-8 in a text message")
            self._pdone += k
            d += k
            src += k
            n -= k
        return 0

    cdef int _end_frame(self, list events) except -1:
        cdef int opcode = self._opcode
        cdef Py_ssize_t n = self._plen
        cdef int code
        cdef bytes data
        cdef Message msg
        self._state = S_HEADER
        if opcode == _PING:
            events.append(Ping(PyBytes_FromStringAndSize(<const char *>self._ctl, n)))
        elif opcode == _PONG:
            events.append(Pong(PyBytes_FromStringAndSize(<const char *>self._ctl, n)))
        elif opcode == _CLOSE:
            if n == 0:
                events.append(Close(1005, ""))
            elif n == 1:
                return self._fail(1002, b"close payload of 1 byte")
            else:
                code = (self._ctl[0] << 8) | self._ctl[1]
                if not _close_code_ok(code):
                    return self._fail(1002, b"invalid close code")
                if _utf8(U8_OK, self._ctl + 2, n - 2) != U8_OK:
                    return self._fail(1007, b"close reason is not valid UTF-8")
                events.append(Close(code, (<const char *>self._ctl + 2)[:n - 2].decode("utf-8")))
            self._state = S_CLOSED
            self._drop_message()
        else:
            if self._dst == NULL:
                self._msg_len += n
            if not self._fin:
                return 0
            if self._msg_opcode == _TEXT and self._utf8_state != U8_OK:
                return self._fail(1007, b"text message ends inside a UTF-8 sequence")
            if self._dst != NULL:
                data = self._direct
            else:
                data = PyBytes_FromStringAndSize(<const char *>self._buf, self._msg_len)
            msg = Message.__new__(Message)      # skips the __init__ call
            msg.opcode = self._msg_opcode
            msg.data = data
            events.append(msg)
            self._drop_message()
        return 0

    def feed(self, bytes data):
        """Events for ``data`` (any number of bytes, split anywhere)."""
        cdef list events = []
        cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), p = 0, take
        cdef int err = 0
        if self._state >= S_CLOSED:
            return events
        while True:
            if self._state == S_HEADER:
                if p == n:
                    break
                take = self._hdr_need - self._hdr_len
                if take > n - p:
                    take = n - p
                memcpy(self._hdr + self._hdr_len, b + p, take)
                self._hdr_len += take
                p += take
                if self._hdr_len < self._hdr_need:
                    break
                if self._hdr_need == 2:
                    err = self._first_two()
                    if err:
                        break
                    continue
                err = self._begin_frame(n - p)
                if err:
                    break
            elif self._state == S_PAYLOAD:
                take = self._plen - self._pdone
                if take > n - p:
                    take = n - p
                if take:
                    err = self._payload(b + p, take)
                    if err:
                        break
                    p += take
                if self._pdone < self._plen:
                    break
                err = self._end_frame(events)
                if err:
                    break
            else:
                break
        if err:
            self._state = S_DEAD
            self._drop_message()
            events.append(ProtocolError(self._err_code, self._why.decode("ascii")))
        return events
