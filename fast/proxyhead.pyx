# cython: language_level=3, boundscheck=False, wraparound=False
"""Header rewriting between a client and an upstream: the reverse proxy's per-request
header work, compiled. Pure functions, no I/O.

The same functions in pure Python are farts/proxy/headers.py: the reference this module
is tested against (tests/test_proxy_headers.py feeds both the same random header lists).
Header lists are (lowercase name, value) pairs as the parsers give them; a pair that is
kept goes out as the same tuple object (no copy).

``upstream_request`` and ``client_answer`` are the hot path's: the rewrite and the
serialisation in one call, straight into the bytes that go on the wire (no list of
pairs, no second pass). They trust their input to be what fast.http1's parsers let
through (field names are tokens, values have no CR/LF/NUL: the parsers reject the
rest), so they do not check every character again as fast.http1's writers do; the
differential test holds them to ``request_head(*request_headers(...))`` and
``response_head(response_headers(...))``.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

from fast.bytescan cimport all_in

from fast.http1 import response_head

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
# Framing is redone by the writer (request_head / response_head); Expect is answered by
# the transport; the X-Forwarded-* ones are rebuilt.
REQUEST_DROP = HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for",
                             b"x-forwarded-proto"}
RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}

cdef frozenset _REQUEST_DROP = REQUEST_DROP
cdef frozenset _RESPONSE_DROP = RESPONSE_DROP
cdef bytes _CONNECTION = b"connection"
cdef bytes _HOST = b"host"
cdef bytes _XFF = b"x-forwarded-for"
cdef bytes _XFP = b"x-forwarded-proto"
cdef bytes _XRID = b"x-request-id"
cdef tuple _XFP_HTTP = (_XFP, b"http")
cdef tuple _XFP_HTTPS = (_XFP, b"https")

# A quick "is not dropped" before the set lookup (most fields are kept): the lengths and
# first bytes of the names REQUEST_DROP holds (RESPONSE_DROP's too), taken from the set.
assert RESPONSE_DROP <= REQUEST_DROP
cdef unsigned long long _drop_lengths = 0
cdef bint _drop_first[256]
for _name in REQUEST_DROP:
    _drop_lengths |= 1ULL << len(_name)
    _drop_first[_name[0]] = True


cdef inline bint _maybe_dropped(bytes name):
    cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
    return 0 < k < 64 and (_drop_lengths >> k) & 1 and _drop_first[<unsigned char>PyBytes_AS_STRING(name)[0]]


cdef inline bint _same(bytes a, bytes b):
    """a == b, without the generic comparison's calls."""
    return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b) and \
        memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(a)) == 0


cdef object _tokens(object headers):
    """The header names listed in Connection (lowercase), or None."""
    cdef set tokens = None
    cdef object one = None   # the value of the only Connection field (the usual case)
    cdef int seen = 0
    cdef bytes t
    for pair in headers:
        name = pair[0]
        if type(name) is bytes and _same(<bytes>name, _CONNECTION):
            seen += 1
            one = pair[1]
    if seen == 0:
        return None
    if seen == 1:
        found = _tokens_of.get(one, _MISSING)
        if found is not _MISSING:
            return found
    for pair in headers:
        if pair[0] == _CONNECTION:
            for t in (<bytes>pair[1]).split(b","):
                t = t.strip().lower()
                if t:
                    if tokens is None:
                        tokens = set()
                    tokens.add(t)
    found = frozenset(tokens) if tokens else None
    if seen == 1 and len(_tokens_of) < _TOKENS_KEPT:
        _tokens_of[one] = found
    return found


# The tokens of Connection values seen before: the same few ("keep-alive", "close",
# "upgrade") come with nearly every message, and splitting them was a fifth of
# client_answer. Bounded: the values come from clients and upstreams.
cdef dict _tokens_of = {}
cdef int _TOKENS_KEPT = 256
cdef object _MISSING = object()


def connection_tokens(headers):
    """The header names listed in Connection (also hop-by-hop), or None."""
    return _tokens(headers)


def request_headers(headers, str client, str scheme, new_request_id, authority,
                    bytes fallback_host):
    """Headers for the upstream request and its X-Request-Id: ``(headers, request_id)``.
    Host first (the absolute-form target's ``authority`` when there is one, else the
    client's Host, else ``fallback_host``), hop-by-hop and framing fields dropped,
    X-Forwarded-For/-Proto rebuilt, X-Request-Id kept or made by ``new_request_id()``."""
    cdef object extra = _tokens(headers)
    cdef list out = [None]   # (the Host field's place)
    cdef object xff = None
    cdef object rid = None
    cdef object host = authority
    cdef bytes ip
    for pair in headers:
        name = pair[0]
        if name in _REQUEST_DROP:
            if name == _XFF:
                xff = pair[1] if xff is None else xff + b", " + pair[1]
            continue
        if name == _HOST:
            # Always written by us, first, even if Connection lists it.
            if host is None:
                host = pair[1]
            continue
        if extra is not None and name in <frozenset>extra:
            continue
        if name == _XRID:
            rid = pair[1]
        out.append(pair)
    out[0] = (_HOST, host if host is not None else fallback_host)
    ip = client.encode()
    out.append((_XFF, xff + b", " + ip if xff else ip))
    if scheme == "http":
        out.append(_XFP_HTTP)
    elif scheme == "https":
        out.append(_XFP_HTTPS)
    else:
        out.append((_XFP, scheme.encode()))
    if rid is None:
        rid = new_request_id()
        out.append((_XRID, rid))
    return out, rid


def response_headers(headers, bytes request_id):
    """Headers for the client: hop-by-hop ones dropped, and the request's X-Request-Id
    echoed (unless the upstream answered with its own), so a client can quote it."""
    cdef object extra = _tokens(headers)
    cdef list out = []
    cdef bint has_rid = False
    for pair in headers:
        name = pair[0]
        if name in _RESPONSE_DROP or (extra is not None and name in <frozenset>extra):
            continue
        if name == _XRID:
            has_rid = True
        out.append(pair)
    if not has_rid:
        out.append((_XRID, request_id))
    return out


# -- the hot path: straight to wire bytes ---------------------------------------------
# Each writer filters once (the kept fields in a list, their size summed), then fills a
# bytes object of the exact size: one allocation, no growing buffer.

cdef inline char *_put(char *p, const char *s, Py_ssize_t k):
    memcpy(p, s, k)
    return p + k


cdef inline char *_put_bytes(char *p, bytes s):
    return _put(p, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef inline Py_ssize_t _field_size(bytes name, bytes value):
    return PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4


cdef inline char *_put_field(char *p, bytes name, bytes value):
    p = _put_bytes(p, name)
    p = _put(p, b": ", 2)
    p = _put_bytes(p, value)
    return _put(p, b"\r\n", 2)


cdef char *_put_fields(char *p, list fields):
    for pair in fields:
        p = _put_field(p, pair[0], pair[1])
    return p


cdef int _digits(unsigned long long v, char *out):
    """``v`` in decimal at the end of ``out`` (24 bytes); returns where it starts."""
    cdef int i = 24
    while True:
        i -= 1
        out[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            return i


cdef Py_ssize_t _framing_size(long long length, char *digits, int *start) except -1:
    """The size of the framing field as fast.http1's writers write it: >= 0 a length,
    -1 chunked, -2 none; the length's digits go into ``digits`` from ``start``."""
    if length >= 0:
        start[0] = _digits(length, digits)
        return 16 + 24 - start[0] + 2
    if length == -1:
        return 28
    if length == -2:
        return 0
    raise ValueError("length must be >= 0, -1 (chunked) or -2 (no framing field)")


cdef char *_put_framing(char *p, long long length, char *digits, int start):
    if length >= 0:
        p = _put(p, b"content-length: ", 16)
        p = _put(p, digits + start, 24 - start)
        return _put(p, b"\r\n", 2)
    if length == -1:
        return _put(p, b"transfer-encoding: chunked\r\n", 28)
    return p


cdef unsigned long long _last_id = 0   # (one counter for the process: ids stay unique across groups)


cdef class RequestIds:
    """New X-Request-Id values: ``prefix`` (the node and a per-process boot tag) and a
    counter (unique, cheap); called like any ``new_request_id``."""

    cdef bytes prefix

    def __init__(self, bytes prefix not None):
        self.prefix = prefix

    cdef bytes next(self):
        global _last_id
        cdef char digits[24]
        cdef int start
        cdef bytes out
        _last_id += 1
        start = _digits(_last_id, digits)
        out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(self.prefix) + 24 - start)
        _put(_put_bytes(PyBytes_AS_STRING(out), self.prefix), digits + start, 24 - start)
        return out

    def __call__(self):
        return self.next()


def upstream_request(bytes method, bytes target, headers, str client, str scheme, new_request_id,
                     authority, bytes fallback_host, long long length):
    """``request_head(method, target, *request_headers(...), length)`` in one step:
    ``(the upstream request's head bytes, its X-Request-Id)``."""
    cdef object extra = _tokens(headers)
    cdef object xff = None
    cdef object rid = None
    cdef object host = authority
    cdef bytes name, forwarded, proto, out
    cdef object pair
    cdef list kept = []
    cdef Py_ssize_t size = 0
    cdef bint new_rid = False
    cdef char digits[24]
    cdef int start = 24
    cdef char *p
    for pair in headers:
        name = pair[0]
        if _maybe_dropped(name) and name in _REQUEST_DROP:
            if _same(name, _XFF):
                xff = pair[1] if xff is None else xff + b", " + pair[1]
            continue
        if _same(name, _HOST):
            # Always written by us, first, even if Connection lists it.
            if host is None:
                host = pair[1]
            continue
        if extra is not None and name in <frozenset>extra:
            continue
        if _same(name, _XRID):
            rid = pair[1]
        kept.append(pair)
        size += _field_size(name, pair[1])
    if host is None:
        host = fallback_host
    forwarded = client.encode()
    if xff:
        forwarded = xff + b", " + forwarded
    proto = b"http" if scheme == "http" else b"https" if scheme == "https" else scheme.encode()
    if rid is None:
        rid = (<RequestIds>new_request_id).next() if type(new_request_id) is RequestIds else new_request_id()
        new_rid = True
        size += _field_size(_XRID, rid)
    size += (PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + 17 + PyBytes_GET_SIZE(host) + 2
             + 17 + PyBytes_GET_SIZE(forwarded) + 21 + PyBytes_GET_SIZE(proto) + 2
             + _framing_size(length, digits, &start) + 2)
    out = PyBytes_FromStringAndSize(NULL, size)
    p = _put_bytes(PyBytes_AS_STRING(out), method)
    p = _put(p, b" ", 1)
    p = _put_bytes(p, target)
    p = _put(p, b" HTTP/1.1\r\nhost: ", 17)
    p = _put_bytes(p, host)
    p = _put(p, b"\r\n", 2)
    p = _put_fields(p, kept)
    p = _put(p, b"x-forwarded-for: ", 17)
    p = _put_bytes(p, forwarded)
    p = _put(p, b"\r\nx-forwarded-proto: ", 21)
    p = _put_bytes(p, proto)
    p = _put(p, b"\r\n", 2)
    if new_rid:
        p = _put_field(p, _XRID, rid)
    p = _put_framing(p, length, digits, start)
    _put(p, b"\r\n", 2)
    return out, rid


cdef dict _status_lines = {}


cdef bytes _status_line(int status):
    """``HTTP/1.1 200 OK\\r\\n``, as fast.http1 writes it (made by it once per status)."""
    line = _status_lines.get(status)
    if line is None:
        head = response_head(status, (), -2, True)
        line = _status_lines[status] = head[:len(head) - 2]
    return line


def client_answer(int status, headers, bytes request_id, bytes body, long long length):
    """A whole answer for the client, both ways a connection can go on: ``(keep, close)``,
    each ``response_head(status, response_headers(headers, request_id), length, keep_alive)
    + body`` (``close`` with its ``connection: close`` field)."""
    cdef object extra = _tokens(headers)
    cdef bint has_rid = False
    cdef bytes name, line, keep, close
    cdef object pair
    cdef list kept = []
    cdef Py_ssize_t head = 0
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body)
    cdef char digits[24]
    cdef int start = 24
    cdef char *p
    for pair in headers:
        name = pair[0]
        if (_maybe_dropped(name) and name in _RESPONSE_DROP) or \
                (extra is not None and name in <frozenset>extra):
            continue
        if _same(name, _XRID):
            has_rid = True
        kept.append(pair)
        head += _field_size(name, pair[1])
    line = _status_line(status)
    if not has_rid:
        head += _field_size(_XRID, request_id)
    head += PyBytes_GET_SIZE(line) + _framing_size(length, digits, &start)
    keep = PyBytes_FromStringAndSize(NULL, head + 2 + nb)
    p = _put_fields(_put_bytes(PyBytes_AS_STRING(keep), line), kept)
    if not has_rid:
        p = _put_field(p, _XRID, request_id)
    p = _put_framing(p, length, digits, start)
    _put(_put(p, b"\r\n", 2), PyBytes_AS_STRING(body), nb)
    close = PyBytes_FromStringAndSize(NULL, head + 21 + nb)
    p = _put(PyBytes_AS_STRING(close), PyBytes_AS_STRING(keep), head)
    _put(_put(p, b"connection: close\r\n\r\n", 21), PyBytes_AS_STRING(body), nb)
    return keep, close


# -- raw answers: the upstream's head bytes rewritten, no parser events ----------------------
# The usual upstream answer (HTTP/1.1, final status, Content-Length, the whole body in the
# read) is read and rewritten here in one pass over its bytes: no Response object, no
# header tuples. Anything else (a 1xx, chunked or close-delimited framing, HTTP/1.0, a
# Connection field naming other fields, a byte outside the plain ranges, a head split
# over reads) is None, and fast.http1's ResponseParser reads it as before: it alone says
# what is invalid, so this is only ever a shortcut through input it would accept.

cdef unsigned char _NAME_LOWER[256]   # lowercased tchar (RFC 9110 §5.6.2), 0 otherwise
cdef unsigned char _PLAIN[256]        # HTAB, SP and VCHAR (no obs-text: left to the parser)
for _c in range(256):
    _PLAIN[_c] = _c == 9 or 32 <= _c <= 126
    _NAME_LOWER[_c] = (_c + 32 if 65 <= _c <= 90 else _c) if (
        48 <= _c <= 57 or 65 <= _c <= 90 or 97 <= _c <= 122 or chr(_c) in "!#$%&'*+-.^_`|~") else 0

DEF _RAW_MAX_HEAD = 65536   # ResponseParser's defaults: a longer head is the parser's to refuse
DEF _RAW_MAX_FIELDS = 200

cdef enum:
    _F_KEEP = 0
    _F_DROP = 1
    _F_LENGTH = 2
    _F_CONNECTION = 3
    _F_RID = 4
    _F_OTHER = 5     # (transfer-encoding: the parser's)


cdef inline bint _plain(const char *s, Py_ssize_t n) noexcept:
    """Every byte of ``s[:n]`` is HTAB, SP or VCHAR (no obs-text: left to the parser)."""
    return all_in(s, n, _PLAIN, 0xFFFFFFFFFFFFFFFFULL)


cdef int _kind(const unsigned char *low, Py_ssize_t n) noexcept:
    """What a (lowercased) field name means to the proxy's answer."""
    if n == 5 and memcmp(low, b"close", 5) == 0:
        return _F_OTHER   # (a field Connection: close would name: client_answer drops it)
    if n == 14 and memcmp(low, b"content-length", 14) == 0:
        return _F_LENGTH
    if n == 10:
        if memcmp(low, b"connection", 10) == 0:
            return _F_CONNECTION
        if memcmp(low, b"keep-alive", 10) == 0:
            return _F_DROP
    if n == 12 and memcmp(low, b"x-request-id", 12) == 0:
        return _F_RID
    if n == 17 and memcmp(low, b"transfer-encoding", 17) == 0:
        return _F_OTHER
    if (n == 16 and memcmp(low, b"proxy-connection", 16) == 0) or (n == 2 and memcmp(low, b"te", 2) == 0) \
            or (n == 7 and (memcmp(low, b"trailer", 7) == 0 or memcmp(low, b"upgrade", 7) == 0)):
        return _F_DROP
    return _F_KEEP


cdef bint _connection_close(const char *s, Py_ssize_t n, bint *other) noexcept:
    """The Connection value lists "close"; ``other``: it lists a name but close/keep-alive."""
    cdef Py_ssize_t i = 0, a, e, k
    cdef bint close = False
    cdef unsigned char low[10]
    while i < n:
        while i < n and (s[i] == b' ' or s[i] == b'\t' or s[i] == b','):
            i += 1
        a = i
        while i < n and s[i] != b',':
            i += 1
        e = i
        while e > a and (s[e - 1] == b' ' or s[e - 1] == b'\t'):
            e -= 1
        if e == a:
            continue
        if e - a == 5 or e - a == 10:
            for k in range(e - a):
                low[k] = _NAME_LOWER[<unsigned char>s[a + k]]
            if e - a == 5 and memcmp(low, b"close", 5) == 0:
                close = True
                continue
            if e - a == 10 and memcmp(low, b"keep-alive", 10) == 0:
                continue
        other[0] = True
    return close


def raw_answer(bytes data, Py_ssize_t at, bytes request_id):
    """The whole answer at ``data[at:]`` for the client, when it is the usual kind (see
    above): ``(status, keep_alive, end, body_len, keep)``: the upstream keeps the
    connection, the answer's end in ``data``, and the client's bytes that keep its
    connection as ``client_answer`` writes them from the parser's fields (its close
    framing, rarely wanted, is fast.http1.closing of them). None: not that kind, or not
    whole in ``data``; the parser is to read it."""
    cdef const char *b = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char *s = b + at
    cdef const char *nl
    cdef Py_ssize_t p, line, i, j, k, m, head = 0, body_at, nb
    cdef Py_ssize_t nkept = 0
    cdef Py_ssize_t kept[_RAW_MAX_FIELDS * 4]   # name start, name length, value start, value length
    cdef unsigned char low[24]
    cdef int status, kind
    cdef long long length = -1, v
    cdef bint close = False, other = False, has_rid = False
    cdef char digits[24]
    cdef int start = 24
    cdef bytes status_line, keep
    cdef char *o
    if at < 0 or n - at < 17 or memcmp(s, b"HTTP/1.1 ", 9) != 0 or not (b'2' <= s[9] <= b'5') \
            or not (b'0' <= s[10] <= b'9') or not (b'0' <= s[11] <= b'9'):
        return None
    status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    if status == 204 or status == 304:
        return None   # (no body whatever the fields say: the Response path's)
    nl = <const char *>memchr(s, b'\n', n - at)
    if nl == NULL or nl - s < 13 or (nl - 1)[0] != b'\r' or (nl - s > 13 and s[12] != b' '):
        return None
    if not _plain(s + 13, nl - s - 14):
        return None
    p = nl + 1 - b
    while True:
        nl = <const char *>memchr(b + p, b'\n', n - p)
        if nl == NULL or nl - (b + at) >= _RAW_MAX_HEAD:
            return None
        line = nl - (b + p) - 1          # without CRLF
        if line < 0 or (nl - 1)[0] != b'\r':
            return None
        if line == 0:
            p = nl + 1 - b
            break
        if nkept == _RAW_MAX_FIELDS:
            return None
        i = 0
        while i < line and _NAME_LOWER[<unsigned char>b[p + i]]:
            if i < 24:
                low[i] = _NAME_LOWER[<unsigned char>b[p + i]]
            i += 1
        if i == 0 or i == line or b[p + i] != b':':
            return None
        j = i + 1
        while j < line and (b[p + j] == b' ' or b[p + j] == b'\t'):
            j += 1
        k = line
        while k > j and (b[p + k - 1] == b' ' or b[p + k - 1] == b'\t'):
            k -= 1
        if not _plain(b + p + j, k - j):
            return None
        kind = _kind(low, i) if i <= 24 else _F_KEEP
        if kind == _F_LENGTH:
            if k == j or k - j > 18:
                return None
            v = 0
            for m in range(j, k):
                if not (b'0' <= b[p + m] <= b'9'):
                    return None
                v = v * 10 + (b[p + m] - 48)
            if length >= 0 and length != v:
                return None
            length = v
        elif kind == _F_CONNECTION:
            close = _connection_close(b + p + j, k - j, &other) or close
            if other:
                return None
        elif kind == _F_OTHER:
            return None
        elif kind != _F_DROP:
            if kind == _F_RID:
                has_rid = True
            kept[nkept * 4] = p
            kept[nkept * 4 + 1] = i
            kept[nkept * 4 + 2] = p + j
            kept[nkept * 4 + 3] = k - j
            nkept += 1
            head += i + (k - j) + 4
        p = nl + 1 - b
    if length < 0 or length > n - p:
        return None
    body_at = p
    nb = <Py_ssize_t>length
    status_line = _status_line(status)
    if not has_rid:
        head += _field_size(_XRID, request_id)
    head += PyBytes_GET_SIZE(status_line) + _framing_size(length, digits, &start)
    keep = PyBytes_FromStringAndSize(NULL, head + 2 + nb)
    o = _put_bytes(PyBytes_AS_STRING(keep), status_line)
    for i in range(nkept):
        for j in range(kept[i * 4 + 1]):
            o[j] = <char>_NAME_LOWER[<unsigned char>b[kept[i * 4] + j]]
        o = _put(o + kept[i * 4 + 1], b": ", 2)
        o = _put(o, b + kept[i * 4 + 2], kept[i * 4 + 3])
        o = _put(o, b"\r\n", 2)
    if not has_rid:
        o = _put_field(o, _XRID, request_id)
    o = _put_framing(o, length, digits, start)
    _put(_put(o, b"\r\n", 2), b + body_at, nb)
    return status, not close, body_at + nb, nb, keep
