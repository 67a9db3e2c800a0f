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
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

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

cdef struct _Buf:
    char *p
    Py_ssize_t n
    Py_ssize_t cap
    bint heap

DEF _STACK = 2048


cdef int _put(_Buf *b, const char *s, Py_ssize_t k) except -1:
    cdef Py_ssize_t cap
    cdef char *q
    if b.n + k > b.cap:
        cap = max(b.cap * 2, b.n + k)
        if b.heap:
            q = <char *>realloc(b.p, cap)
        else:
            q = <char *>malloc(cap)
            if q != NULL:
                memcpy(q, b.p, b.n)
        if q == NULL:
            raise MemoryError()
        b.p, b.cap, b.heap = q, cap, True
    memcpy(b.p + b.n, s, k)
    b.n += k
    return 0


cdef inline int _put_bytes(_Buf *b, bytes s) except -1:
    return _put(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef int _put_field(_Buf *b, bytes name, bytes value) except -1:
    _put_bytes(b, name)
    _put(b, b": ", 2)
    _put_bytes(b, value)
    _put(b, b"\r\n", 2)
    return 0


cdef int _put_framing(_Buf *b, long long length) except -1:
    """As fast.http1's writers frame: >= 0 a length, -1 chunked, -2 no field."""
    cdef char digits[24]
    cdef int i = 24
    if length >= 0:
        _put(b, b"content-length: ", 16)
        while True:
            i -= 1
            digits[i] = <char>(48 + length % 10)
            length //= 10
            if length == 0:
                break
        _put(b, digits + i, 24 - i)
        _put(b, b"\r\n", 2)
    elif length == -1:
        _put(b, b"transfer-encoding: chunked\r\n", 28)
    elif length != -2:
        raise ValueError("length must be >= 0, -1 (chunked) or -2 (no framing field)")
    return 0


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
        cdef int i = 24
        cdef unsigned long long v
        cdef Py_ssize_t k = PyBytes_GET_SIZE(self.prefix)
        cdef bytes out
        _last_id += 1
        v = _last_id
        while True:
            i -= 1
            digits[i] = <char>(48 + v % 10)
            v //= 10
            if v == 0:
                break
        out = PyBytes_FromStringAndSize(NULL, k + 24 - i)
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(self.prefix), k)
        memcpy(PyBytes_AS_STRING(out) + k, digits + i, 24 - i)
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
    cdef bytes name, ip
    cdef object pair
    cdef _Buf b
    cdef char stack[_STACK]
    b.p, b.n, b.cap, b.heap = stack, 0, _STACK, False
    try:
        _put_bytes(&b, method)
        _put(&b, b" ", 1)
        _put_bytes(&b, target)
        _put(&b, b" HTTP/1.1\r\nhost: ", 17)
        # Host goes first, but the client's Host may come anywhere: its place is kept,
        # the kept fields written after it, and the value filled in at the end.
        for pair in headers:
            name = pair[0]
            if _same(name, _HOST):
                if host is None:
                    host = pair[1]
                break
        _put_bytes(&b, host if host is not None else fallback_host)
        _put(&b, b"\r\n", 2)
        for pair in headers:
            name = pair[0]
            if _maybe_dropped(name) and name in _REQUEST_DROP:
                if _same(name, _XFF):
                    xff = pair[1] if xff is None else xff + b", " + pair[1]
                continue
            if _same(name, _HOST) or (extra is not None and name in <frozenset>extra):
                continue
            if _same(name, _XRID):
                rid = pair[1]
            _put_field(&b, name, pair[1])
        ip = client.encode()
        _put(&b, b"x-forwarded-for: ", 17)
        if xff:
            _put_bytes(&b, xff)
            _put(&b, b", ", 2)
        _put_bytes(&b, ip)
        _put(&b, b"\r\nx-forwarded-proto: ", 21)
        _put_bytes(&b, scheme.encode())
        _put(&b, b"\r\n", 2)
        if rid is None:
            rid = (<RequestIds>new_request_id).next() if type(new_request_id) is RequestIds else new_request_id()
            _put_field(&b, _XRID, rid)
        _put_framing(&b, length)
        _put(&b, b"\r\n", 2)
        return PyBytes_FromStringAndSize(b.p, b.n), rid
    finally:
        if b.heap:
            free(b.p)


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
    cdef bytes name, keep, close
    cdef object pair
    cdef _Buf b
    cdef char stack[_STACK]
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body)
    cdef char *out
    b.p, b.n, b.cap, b.heap = stack, 0, _STACK, False
    try:
        _put_bytes(&b, _status_line(status))
        for pair in headers:
            name = pair[0]
            if (_maybe_dropped(name) and name in _RESPONSE_DROP) or \
                    (extra is not None and name in <frozenset>extra):
                continue
            if _same(name, _XRID):
                has_rid = True
            _put_field(&b, name, pair[1])
        if not has_rid:
            _put_field(&b, _XRID, request_id)
        _put_framing(&b, length)
        keep = PyBytes_FromStringAndSize(NULL, b.n + 2 + nb)
        out = PyBytes_AS_STRING(keep)
        memcpy(out, b.p, b.n)
        memcpy(out + b.n, b"\r\n", 2)
        memcpy(out + b.n + 2, PyBytes_AS_STRING(body), nb)
        close = PyBytes_FromStringAndSize(NULL, b.n + 21 + nb)
        out = PyBytes_AS_STRING(close)
        memcpy(out, b.p, b.n)
        memcpy(out + b.n, b"connection: close\r\n\r\n", 21)
        memcpy(out + b.n + 21, PyBytes_AS_STRING(body), nb)
        return keep, close
    finally:
        if b.heap:
            free(b.p)
