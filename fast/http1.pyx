# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/1.1 wire format (RFC 9112): incremental request/response parsers and head writers.

Sans-IO: ``feed()`` takes whatever bytes the transport produced and returns a list of
events; the writers return bytes.  Nothing here touches sockets, clocks or asyncio.

Event stream of both parsers, in order: a head object (``Request`` / ``Response``), zero or
more non-empty ``bytes`` body pieces, ``END``; repeated for each pipelined message.  Invalid
input yields one ``HTTPError`` after the events that preceded it, and the parser is dead.

Choices where RFC 9112 leaves room (the differential test against httptools lists the
places where we knowingly differ from it):

* Lines must end in CRLF.  A bare LF in a head, chunk-size line or trailer section is a 400:
  parsers that disagree about line endings are how requests get smuggled past a proxy, and
  httptools (llhttp) rejects bare LF as well.  Empty lines (CRLF) before a request line are
  skipped (RFC 9112 §2.2).
* Any token is accepted as a method; the request-target must be origin-form, ``*`` (OPTIONS
  only), absolute-form with an http/https scheme, or authority-form ``host:port`` (CONNECT
  only), made of visible ASCII.  For absolute- and authority-form, ``host`` comes from the
  target, as RFC 9112 §3.3 makes it authoritative; absolute-form ``path`` is the path part.
* Transfer-Encoding must end in chunked and name chunked only once, else 400 (RFC 9112
  §6.3); it is a 400 in HTTP/1.0 (§6.1: such framing is faulty) and together with
  Content-Length.  Identical repeated Content-Length fields are accepted (RFC 9110 §8.6).
* After a request without keep-alive completes, further bytes are discarded: the server
  must not act on requests sent after ``Connection: close`` (RFC 9112 §9.6).
* After an upgrade request (Connection: upgrade + Upgrade, HTTP/1.1), a CONNECT request or
  a 101 response, parsing stops and ``take_rest()`` hands the following bytes over.  An
  upgrade request's body, if framed, is delivered first (that is what h2c needs).
* Every ResponseParser error is reported as 502: the proxy's answer to a bad upstream.
* Chunk-size lines (extensions included) are bounded by ``max_header_bytes``; the trailer
  section gets the same byte and field-count limits as the head.
"""

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy

from fast.bytescan cimport all_in


cdef extern from "Python.h":
    # Declared here rather than cimported: the cpython .pxd takes `char *`, and the parser
    # hands out pointers into immutable input as `const char *`.
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    # Header tuples are kept as owned pointers until the head is complete (see _keep_field).
    PyObject *PyTuple_New(Py_ssize_t n) except NULL
    void PyTuple_SET_ITEM(PyObject *t, Py_ssize_t i, PyObject *o)
    list PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, PyObject *o)
    void Py_INCREF(PyObject *o)
    void Py_DECREF(PyObject *o)


cdef extern from "<limits.h>":
    const long long LLONG_MAX


# ----------------------------------------------------------------------------------------
# Byte classes (RFC 9110 §5.6.2 token, §5.5 field-vchar, RFC 3986 reg-name)

cdef unsigned char _TOKEN_LOWER[256]    # lowercased token char, 0 for non-token bytes
cdef unsigned char _FIELD_CHAR[256]     # 1 for HTAB, SP, VCHAR and obs-text
cdef unsigned char _TARGET_CHAR[256]    # 1 for visible ASCII (0x21-0x7e)
cdef unsigned char _REGNAME_CHAR[256]   # 1 for unreserved, sub-delims and '%'
cdef unsigned char _LOWER[256]          # ASCII lowercase of any byte
cdef signed char _HEXVAL[256]           # value of a hex digit, -1 otherwise


cdef void _init_tables() noexcept:
    cdef int c
    cdef const char *tchars = b"!#$%&'*+-.^_`|~"
    cdef const char *rchars = b"-._~!$&'()*+,;=%"
    cdef const char *q
    for c in range(256):
        _LOWER[c] = c + 32 if 65 <= c <= 90 else c
        _TOKEN_LOWER[c] = _LOWER[c] if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 0
        _REGNAME_CHAR[c] = 1 if _TOKEN_LOWER[c] else 0
        _FIELD_CHAR[c] = 1 if (c == 9 or 32 <= c <= 126 or c >= 128) else 0
        _TARGET_CHAR[c] = 1 if 33 <= c <= 126 else 0
        if 48 <= c <= 57:
            _HEXVAL[c] = c - 48
        elif 97 <= c <= 102:
            _HEXVAL[c] = c - 87
        elif 65 <= c <= 70:
            _HEXVAL[c] = c - 55
        else:
            _HEXVAL[c] = -1
    q = tchars
    while q[0]:
        _TOKEN_LOWER[<unsigned char>q[0]] = <unsigned char>q[0]
        q += 1
    q = rchars
    while q[0]:
        _REGNAME_CHAR[<unsigned char>q[0]] = 1
        q += 1


_init_tables()


# ----------------------------------------------------------------------------------------
# Interned field names.  Browsers send the same dozen names on every request; handing out
# one shared bytes object per name saves an allocation per field, and lets the parser spot
# the fields that drive framing with a pointer comparison.

cdef bytes _N_HOST = b"host"
cdef bytes _N_CONTENT_LENGTH = b"content-length"
cdef bytes _N_TRANSFER_ENCODING = b"transfer-encoding"
cdef bytes _N_CONNECTION = b"connection"
cdef bytes _N_EXPECT = b"expect"
cdef bytes _N_UPGRADE = b"upgrade"

cdef tuple _COMMON_NAMES = (
    _N_HOST, _N_CONTENT_LENGTH, _N_TRANSFER_ENCODING, _N_CONNECTION, _N_EXPECT, _N_UPGRADE,
    b"user-agent", b"accept", b"accept-language", b"accept-encoding", b"accept-charset",
    b"cookie", b"referer", b"origin", b"authorization", b"cache-control", b"pragma",
    b"content-type", b"content-encoding", b"if-none-match", b"if-modified-since", b"range",
    b"if-range", b"if-match", b"if-unmodified-since", b"te", b"trailer", b"dnt", b"priority",
    b"upgrade-insecure-requests", b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site",
    b"sec-fetch-user", b"sec-ch-ua", b"sec-ch-ua-mobile", b"sec-ch-ua-platform",
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept", b"x-forwarded-for",
    b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"x-requested-with", b"forwarded",
    b"via", b"keep-alive", b"proxy-connection", b"date", b"server", b"etag", b"last-modified",
    b"expires", b"age", b"vary", b"location", b"set-cookie", b"content-range",
    b"accept-ranges", b"access-control-allow-origin", b"strict-transport-security",
    b"x-content-type-options", b"x-frame-options", b"content-security-policy", b"alt-svc",
    b"www-authenticate", b"retry-after", b"link",
)

cdef enum:
    _SLOTS = 512            # open-addressing table, kept at most ~15 % full
    _INTERN_MAX = 64        # longer names are never interned (and are lowercased in place)
    _STACK_OUT = 1024       # writers: a typical head fits on the stack
    _INLINE_FIELDS = 32     # header tuples a parser holds without a heap allocation

cdef PyObject *_name_slot[_SLOTS]


cdef inline unsigned int _name_hash(const char *s, Py_ssize_t n) noexcept:
    # A few bytes and the length spread the ~70 common names well enough; equality is
    # settled by memcmp, and hashing every byte would cost more than the collisions do.
    return (<unsigned int>n * 0x9E3779B1u
            ^ (<unsigned char>s[0]) * 0x45D9F3Bu
            ^ (<unsigned char>s[n - 1]) * 0x27D4EB2Du
            ^ (<unsigned char>s[n >> 1]) * 0x165667B1u) >> 7


cdef void _init_names() noexcept:
    cdef unsigned int i
    cdef bytes name
    for name in _COMMON_NAMES:      # _COMMON_NAMES keeps every entry alive
        i = _name_hash(name, len(name)) & (_SLOTS - 1)
        while _name_slot[i] != NULL:
            i = (i + 1) & (_SLOTS - 1)
        _name_slot[i] = <PyObject *>name


_init_names()


cdef inline bint _same(const char *a, const char *b, Py_ssize_t n) noexcept:
    # Inline equality for short names: a libc memcmp call costs more than the comparison.
    cdef uint64_t x, y
    while n >= 8:
        memcpy(&x, a, 8)
        memcpy(&y, b, 8)
        if x != y:
            return False
        a += 8
        b += 8
        n -= 8
    while n > 0:
        if a[0] != b[0]:
            return False
        a += 1
        b += 1
        n -= 1
    return True


cdef inline object _interned(const char *low, Py_ssize_t n):
    cdef unsigned int i = _name_hash(low, n) & (_SLOTS - 1)
    cdef PyObject *o = _name_slot[i]
    while o != NULL:
        if PyBytes_GET_SIZE(<object>o) == n and _same(PyBytes_AS_STRING(<object>o), low, n):
            return <object>o
        i = (i + 1) & (_SLOTS - 1)
        o = _name_slot[i]
    return None


cdef bytes _M_GET = b"GET"
cdef bytes _M_HEAD = b"HEAD"
cdef bytes _M_POST = b"POST"
cdef bytes _M_PUT = b"PUT"
cdef bytes _M_DELETE = b"DELETE"
cdef bytes _M_OPTIONS = b"OPTIONS"
cdef bytes _M_PATCH = b"PATCH"
cdef bytes _M_CONNECT = b"CONNECT"
cdef bytes _EMPTY = b""
cdef bytes _SLASH = b"/"


cdef inline bytes _method(const char *s, Py_ssize_t n):
    # Shared objects for the usual methods; CONNECT and OPTIONS are later recognised by identity.
    if n == 3:
        if memcmp(s, b"GET", 3) == 0:
            return _M_GET
        if memcmp(s, b"PUT", 3) == 0:
            return _M_PUT
    elif n == 4:
        if memcmp(s, b"POST", 4) == 0:
            return _M_POST
        if memcmp(s, b"HEAD", 4) == 0:
            return _M_HEAD
    elif n == 5:
        if memcmp(s, b"PATCH", 5) == 0:
            return _M_PATCH
    elif n == 6:
        if memcmp(s, b"DELETE", 6) == 0:
            return _M_DELETE
    elif n == 7:
        if memcmp(s, b"OPTIONS", 7) == 0:
            return _M_OPTIONS
        if memcmp(s, b"CONNECT", 7) == 0:
            return _M_CONNECT
    return PyBytes_FromStringAndSize(s, n)


cdef inline bint _field_value_ok(const char *s, Py_ssize_t n) noexcept:
    # (values are most of a head's bytes: checked eight at a time; obs-text is valid)
    return all_in(s, n, _FIELD_CHAR, 0)


cdef bint _plain_path(const char *s, Py_ssize_t n) noexcept:
    """No "%" and no "/." in the path: nothing a router must look at twice (dot
    segments, percent-encoding); found with memchr, about free next to the parse."""
    cdef const char *p
    if memchr(s, b'%', n) != NULL:
        return False
    p = <const char *>memchr(s, b'.', n)
    while p != NULL:
        if p > s and p[-1] == b'/':
            return False
        p = <const char *>memchr(p + 1, b'.', n - (p + 1 - s)) if p + 1 < s + n else NULL
    return True


cdef inline bint _target_ok(const char *s, Py_ssize_t n) noexcept:
    # Visible ASCII only (0x21-0x7e), eight bytes at a time.  For each word the test is
    # exact: a byte below 0x21, at or above 0x80, or equal to 0x7f sets its high bit.
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&x, s + i, 8)
        y = x ^ 0x7F7F7F7F7F7F7F7FULL
        if ((x - 0x2121212121212121ULL) | x | (y - 0x0101010101010101ULL)) & 0x8080808080808080ULL:
            return False
        i += 8
    while i < n:
        if not _TARGET_CHAR[<unsigned char>s[i]]:
            return False
        i += 1
    return True


cdef inline Py_ssize_t _list_item(const char *s, Py_ssize_t n, Py_ssize_t i,
                                  Py_ssize_t *start, Py_ssize_t *end) noexcept:
    """The comma-list element starting at ``i`` (RFC 9110 §5.6.1), OWS trimmed, as
    [start, end); returns where the next element starts (n + 1 after the last)."""
    cdef Py_ssize_t a = i, e
    while i < n and s[i] != b',':
        i += 1
    e = i
    while a < e and (s[a] == b' ' or s[a] == b'\t'):
        a += 1
    while e > a and (s[e - 1] == b' ' or s[e - 1] == b'\t'):
        e -= 1
    start[0] = a
    end[0] = e
    return i + 1


cdef inline bint _ieq(const char *s, Py_ssize_t n, const char *lit, Py_ssize_t litn) noexcept:
    # Case-insensitive comparison with a lowercase ASCII literal.
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if _LOWER[<unsigned char>s[i]] != <unsigned char>lit[i]:
            return False
    return True


cdef bytes _lowered(bytes value):
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    cdef const char *s = PyBytes_AS_STRING(value)
    cdef bytes out
    cdef char *d
    for i in range(n):
        if _LOWER[<unsigned char>s[i]] != <unsigned char>s[i]:
            break
    else:
        return value
    out = PyBytes_FromStringAndSize(NULL, n)
    d = PyBytes_AS_STRING(out)
    for i in range(n):
        d[i] = _LOWER[<unsigned char>s[i]]
    return out


cdef object _host_of(const char *s, Py_ssize_t n, object value, bint *has_port):
    """Lowercased host of a Host field value or an authority, port removed; None if invalid.

    ``value`` (the field value as a bytes object, or None) is returned unchanged when it is
    already the answer, which is the common case and saves an allocation.
    """
    cdef Py_ssize_t i, hend
    cdef bint upper = False
    cdef bytes out
    cdef char *d
    has_port[0] = False
    if n == 0:
        return _EMPTY
    if s[0] == b'[':
        # IP-literal (RFC 3986 §3.2.2): hex, ':' and '.', or IPvFuture's reg-name characters
        hend = 1
        while hend < n and s[hend] != b']':
            if not (_REGNAME_CHAR[<unsigned char>s[hend]] or s[hend] == b':'):
                return None
            hend += 1
        if hend == n or hend == 1:
            return None
        hend += 1
    else:
        hend = 0
        while hend < n and _REGNAME_CHAR[<unsigned char>s[hend]]:
            hend += 1
        if hend == 0:
            return None
    if hend < n:
        if s[hend] != b':':
            return None
        for i in range(hend + 1, n):
            if not (b'0' <= s[i] <= b'9'):
                return None
        has_port[0] = hend + 1 < n
    for i in range(hend):
        if _LOWER[<unsigned char>s[i]] != <unsigned char>s[i]:
            upper = True
            break
    if hend == n and not upper and value is not None:
        return value
    out = PyBytes_FromStringAndSize(NULL, hend)
    d = PyBytes_AS_STRING(out)
    for i in range(hend):
        d[i] = _LOWER[<unsigned char>s[i]]
    return out


# ----------------------------------------------------------------------------------------
# Events

cdef object _first_value(list headers, bytes name):
    cdef tuple pair
    for pair in headers:
        if <bytes>pair[0] == name:
            return pair[1]
    return None


@cython.freelist(64)
cdef class Request:
    """A parsed request head.  Body pieces and END follow it in the event list.
    (Fields in http1.pxd.)"""

    def header(self, bytes name):
        """First value of the field ``name`` (given in lowercase), or None."""
        return _first_value(self.headers, name)

    def __repr__(self):
        return "<Request %r %r HTTP/%d.%d>" % (
            self.method, self.target, self.version // 10, self.version % 10)


@cython.freelist(64)
cdef class HandlerRequest:
    """The version-neutral request a handler sees (farts/transport/http.py names it
    ``Request``), over an HTTP/1 head: compiled because every handler call makes one and
    reads it several times (a Python class with properties cost a CDN hit 0.4 us).
    (Fields in http1.pxd.)"""

    def __cinit__(self, Request head not None, tenant, route, str client, str scheme, body,
                  double start, conn=None):
        self._head = head
        self._conn = conn
        self.tenant = tenant
        self.route = route
        self.client = client
        self.scheme = scheme
        self.body = body
        self.start = start

    @property
    def method(self):
        return self._head.method

    @property
    def target(self):
        return self._head.target

    @property
    def path(self):
        return self._head.path

    @property
    def query(self):
        return self._head.query

    @property
    def host(self):
        return self._head.host

    @property
    def headers(self):
        """(lowercase name, value), in order."""
        return self._head.headers

    def header(self, bytes name):
        """First value of ``name`` (lowercase), or None."""
        return _first_value(self._head.headers, name)

    @property
    def version(self):
        """"1.0" or "1.1" (an HTTP/2 request says "2")."""
        return "1.1" if self._head.version == 11 else "1.0"

    @property
    def upgrade(self):
        """The protocol the client asks to switch to (HTTP/1.1 Upgrade with Connection:
        upgrade; over HTTP/2 the :protocol of an extended CONNECT), lowercase, or None."""
        return self._head.upgrade

    @property
    def content_length(self):
        """The body's declared length; -1 when not known in advance (chunked)."""
        return -1 if self._head.chunked else self._head.content_length

    def send_interim(self, int status, headers):
        """A 1xx interim answer (103 Early Hints) ahead of the final one, written at once;
        False when it cannot be (an HTTP/1.0 client, RFC 9110 §15.2; the answer already
        started; the connection gone)."""
        return self._conn is not None and self._conn.send_interim(self._head, status, headers)


@cython.freelist(16)
cdef class Response:
    """A parsed response head.  Body pieces and END follow it in the event list.
    (Fields in http1.pxd.)"""

    def header(self, bytes name):
        """First value of the field ``name`` (given in lowercase), or None."""
        return _first_value(self.headers, name)

    def __repr__(self):
        return "<Response HTTP/%d.%d %d %r>" % (
            self.version // 10, self.version % 10, self.status, self.reason)


@cython.final
cdef class HTTPError:
    """Invalid input: the status to answer with and a short reason.  The parser is dead."""

    cdef readonly int status
    cdef readonly str reason

    def __init__(self, int status, str reason):
        self.status = status
        self.reason = reason

    def __repr__(self):
        return "HTTPError(%d, %r)" % (self.status, self.reason)


@cython.final
cdef class _End:
    def __repr__(self):
        return "END"


cdef _End _END = _End()
END = _END


# ----------------------------------------------------------------------------------------
# Parsers

cdef enum:
    # line-oriented states (bytes up to the next LF may be carried over in _pending)
    S_IDLE = 0          # between messages
    S_HEAD = 1          # start line seen, reading field lines
    S_CHUNK_SIZE = 2
    S_TRAILERS = 3
    # payload states
    S_BODY = 4          # Content-Length body, _remaining bytes left
    S_CHUNK_DATA = 5    # _remaining bytes of the current chunk left
    S_CHUNK_CR = 6      # CRLF that closes chunk data
    S_CHUNK_LF = 7
    S_EOF_BODY = 8      # response body delimited by connection close
    # terminal states
    S_UPGRADED = 9      # connection handed over; later input collects in _rest
    S_CLOSED = 10       # last message done; later input is discarded
    S_DEAD = 11         # an HTTPError was reported


cdef class _Parser:
    cdef Py_ssize_t _max_head
    cdef Py_ssize_t _max_fields
    cdef int _state
    cdef int _after            # state to enter once the current message is complete
    cdef bint _dead_is_502     # responses: every error is the proxy's 502
    cdef bytes _pending        # unterminated line carried over to the next feed
    cdef bytes _rest           # bytes after a protocol switch
    cdef const char *_why
    # The most a chunked body may declare in chunk sizes (-1: no limit): a larger one is
    # refused (413) when its size line is read, before any of its data is handed out.
    cdef public long long max_body
    # per message
    cdef long long _declared   # chunk sizes declared by the current body so far
    cdef Py_ssize_t _head_len  # bytes of the head (or trailer section) so far
    cdef Py_ssize_t _nfields
    # Header tuples of the head being parsed, as owned references: the list is built once
    # at its final size instead of being regrown while fields arrive.  _fields points to
    # _inline_fields until a head has more fields than that.
    cdef PyObject **_fields
    cdef Py_ssize_t _nkept, _fields_cap
    cdef PyObject *_inline_fields[_INLINE_FIELDS]
    cdef long long _remaining
    cdef long long _cl
    cdef bint _te_seen, _te_last_chunked, _te_bad
    cdef bint _conn_close, _conn_keep_alive, _conn_upgrade
    cdef int _nhost
    cdef object _host
    cdef object _upgrade_value
    cdef bint _expect_continue

    cdef int _configure(self, Py_ssize_t max_header_bytes, Py_ssize_t max_headers) except -1:
        if max_header_bytes < 16 or max_headers < 1:
            raise ValueError("max_header_bytes must be >= 16 and max_headers >= 1")
        self._max_head = max_header_bytes
        self._max_fields = max_headers
        self._pending = _EMPTY
        self._rest = _EMPTY
        self._state = S_IDLE
        self._fields = self._inline_fields
        self._fields_cap = _INLINE_FIELDS
        self.max_body = -1
        return 0

    def __dealloc__(self):
        self._drop_fields()
        if self._fields != self._inline_fields:
            free(self._fields)

    @cython.final
    cdef void _drop_fields(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self._nkept):
            Py_DECREF(self._fields[i])
        self._nkept = 0

    @cython.final
    cdef int _keep_field(self, object name, object value) except -1:
        cdef PyObject **grown
        cdef PyObject *t
        cdef Py_ssize_t cap
        if self._nkept == self._fields_cap:
            cap = self._fields_cap * 2
            if self._fields == self._inline_fields:
                grown = <PyObject **>malloc(cap * sizeof(PyObject *))
                if grown != NULL:
                    memcpy(grown, self._inline_fields, self._nkept * sizeof(PyObject *))
            else:
                grown = <PyObject **>realloc(self._fields, cap * sizeof(PyObject *))
            if grown == NULL:
                raise MemoryError()
            self._fields = grown
            self._fields_cap = cap
        t = PyTuple_New(2)
        Py_INCREF(<PyObject *>name)
        PyTuple_SET_ITEM(t, 0, <PyObject *>name)
        Py_INCREF(<PyObject *>value)
        PyTuple_SET_ITEM(t, 1, <PyObject *>value)
        self._fields[self._nkept] = t
        self._nkept += 1
        return 0

    @cython.final
    cdef list _take_fields(self):
        cdef list headers = PyList_New(self._nkept)
        cdef Py_ssize_t i
        for i in range(self._nkept):
            PyList_SET_ITEM(headers, i, self._fields[i])     # steals the reference
        self._nkept = 0
        return headers

    @property
    def idle(self):
        """No message in progress and nothing buffered (between keep-alive requests)."""
        return self._state == S_IDLE and PyBytes_GET_SIZE(self._pending) == 0

    @property
    def in_head(self):
        """Part of a message head is buffered (the header-timeout window)."""
        return self._state == S_HEAD or (
            self._state == S_IDLE and PyBytes_GET_SIZE(self._pending) != 0)

    @property
    def in_body(self):
        return S_CHUNK_SIZE <= self._state <= S_EOF_BODY

    def take_rest(self):
        """Bytes received after a protocol switch (returned once, then cleared)."""
        cdef bytes rest = self._rest
        self._rest = _EMPTY
        return rest

    cdef inline int _fail(self, int status, const char *why) noexcept:
        self._why = why
        return status

    cdef int _start_line(self, const char *s, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef int _end_head(self, list events) except -1:
        raise NotImplementedError

    @cython.final
    cdef list _feed(self, bytes data):
        cdef list events = []
        cdef int st = self._state
        cdef int err = 0
        cdef bytes buf
        cdef const char *b
        cdef const char *nl
        cdef Py_ssize_t n, p = 0, scan = 0, start, take
        if st >= S_UPGRADED:
            if st == S_UPGRADED:
                self._rest += data
            return events
        if PyBytes_GET_SIZE(self._pending):
            # Only an unterminated line is ever carried over, and it holds no LF: skip it.
            scan = PyBytes_GET_SIZE(self._pending)
            buf = self._pending + data
            self._pending = _EMPTY
        else:
            buf = data
        b = PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        while p < n:
            st = self._state
            if st <= S_TRAILERS:
                start = p if p > scan else scan
                nl = <const char *>memchr(b + start, b'\n', n - start)
                if nl == NULL:
                    err = self._partial_line(n - p)
                    if err == 0:
                        self._pending = buf if p == 0 else PyBytes_FromStringAndSize(b + p, n - p)
                    break
                err = self._line(b + p, nl + 1 - (b + p), events)
                if err:
                    break
                p = nl + 1 - b
            elif st <= S_CHUNK_DATA:
                take = n - p
                if take > self._remaining:
                    take = <Py_ssize_t>self._remaining
                events.append(buf if take == n else PyBytes_FromStringAndSize(b + p, take))
                p += take
                self._remaining -= take
                if self._remaining == 0:
                    if st == S_BODY:
                        self._message_done(events)
                    else:
                        self._state = S_CHUNK_CR
            elif st == S_CHUNK_CR:
                if b[p] != b'\r':
                    err = self._fail(400, b"missing CRLF after chunk data")
                    break
                p += 1
                self._state = S_CHUNK_LF
            elif st == S_CHUNK_LF:
                if b[p] != b'\n':
                    err = self._fail(400, b"missing CRLF after chunk data")
                    break
                p += 1
                self._state = S_CHUNK_SIZE
            elif st == S_EOF_BODY:
                events.append(buf if p == 0 else PyBytes_FromStringAndSize(b + p, n - p))
                p = n
            else:
                break
        if err:
            self._state = S_DEAD
            self._drop_fields()
            events.append(HTTPError(502 if self._dead_is_502 else err, self._why.decode("ascii")))
        elif self._state == S_UPGRADED and p < n:
            self._rest = buf if p == 0 else PyBytes_FromStringAndSize(b + p, n - p)
        return events

    @cython.final
    cdef int _partial_line(self, Py_ssize_t k) noexcept:
        # Refuse as soon as the bytes buffered for a line exceed what a complete one may hold,
        # so that a peer cannot make us buffer without bound.
        if self._state == S_CHUNK_SIZE:
            if k > self._max_head:
                return self._fail(400, b"chunk size line too long")
        elif self._head_len + k > self._max_head:
            return self._fail(431, b"header section too large")
        return 0

    @cython.final
    cdef int _line(self, const char *s, Py_ssize_t full, list events) except -1:
        """One complete line of ``full`` bytes including its LF; returns 0 or an error status."""
        cdef int st = self._state
        cdef Py_ssize_t n = full - 2
        # The size limit is checked before the content, the same order as for a partial
        # line, so that the error does not depend on where the input was split.
        if st == S_CHUNK_SIZE:
            if full > self._max_head:
                return self._fail(400, b"chunk size line too long")
        elif self._head_len + full > self._max_head:
            return self._fail(431, b"header section too large")
        if n < 0 or s[n] != b'\r':
            return self._fail(400, b"line not terminated by CRLF")
        if st == S_HEAD:
            self._head_len += full
            if n == 0:
                return self._end_head(events)
            self._nfields += 1
            if self._nfields > self._max_fields:
                return self._fail(431, b"too many header fields")
            return self._field(s, n, True)
        if st == S_IDLE:
            if n == 0:
                return 0            # empty line before a start line (RFC 9112 §2.2)
            self._begin_message()
            self._head_len = full
            self._state = S_HEAD
            return self._start_line(s, n)
        if st == S_CHUNK_SIZE:
            return self._chunk_size(s, n)
        # S_TRAILERS: parsed for validity and limits, then dropped
        self._head_len += full
        if n == 0:
            self._message_done(events)
            return 0
        self._nfields += 1
        if self._nfields > self._max_fields:
            return self._fail(431, b"too many trailer fields")
        return self._field(s, n, False)

    @cython.final
    cdef int _begin_message(self) except -1:
        self._nfields = 0
        self._cl = -1
        self._te_seen = self._te_last_chunked = self._te_bad = False
        self._conn_close = self._conn_keep_alive = self._conn_upgrade = False
        self._nhost = 0
        self._host = None
        self._upgrade_value = None
        self._expect_continue = False
        self._drop_fields()
        return 0

    @cython.final
    cdef void _message_done(self, list events):
        events.append(_END)
        self._head_len = 0
        self._state = self._after

    @cython.final
    cdef int _field(self, const char *s, Py_ssize_t n, bint keep) except -1:
        """Parse the field line ``s[:n]``; append it to the headers when ``keep``."""
        cdef char low[_INTERN_MAX]
        cdef unsigned char lc
        cdef Py_ssize_t i = 0, j, k, m = n if n < _INTERN_MAX else _INTERN_MAX
        cdef object name
        cdef bytes value
        cdef char *d
        while i < m:
            lc = _TOKEN_LOWER[<unsigned char>s[i]]
            if lc == 0:
                break
            low[i] = <char>lc
            i += 1
        if i == _INTERN_MAX:
            while i < n and _TOKEN_LOWER[<unsigned char>s[i]]:
                i += 1
        if i == n or s[i] != b':':
            if i == 0 and (s[0] == b' ' or s[0] == b'\t'):
                return self._fail(400, b"obsolete line folding")
            if i < n and (s[i] == b' ' or s[i] == b'\t'):
                return self._fail(400, b"whitespace before colon")
            return self._fail(400, b"invalid header field name")
        if i == 0:
            return self._fail(400, b"empty header field name")
        j = i + 1
        while j < n and (s[j] == b' ' or s[j] == b'\t'):
            j += 1
        k = n
        while k > j and (s[k - 1] == b' ' or s[k - 1] == b'\t'):
            k -= 1
        if not _field_value_ok(s + j, k - j):
            return self._fail(400, b"invalid character in header field value")
        if not keep:
            return 0
        if i <= _INTERN_MAX:
            name = _interned(low, i)
            if name is None:
                name = PyBytes_FromStringAndSize(low, i)
        else:
            name = PyBytes_FromStringAndSize(NULL, i)
            d = PyBytes_AS_STRING(name)
            for m in range(i):
                d[m] = _TOKEN_LOWER[<unsigned char>s[m]]
        value = PyBytes_FromStringAndSize(s + j, k - j)
        self._keep_field(name, value)
        if name is _N_HOST:
            return self._on_host(s + j, k - j, value)
        if name is _N_CONTENT_LENGTH:
            return self._on_content_length(s + j, k - j)
        if name is _N_TRANSFER_ENCODING:
            self._on_transfer_encoding(s + j, k - j)
        elif name is _N_CONNECTION:
            self._on_connection(s + j, k - j)
        elif name is _N_EXPECT:
            if _ieq(s + j, k - j, b"100-continue", 12):
                self._expect_continue = True
        elif name is _N_UPGRADE:
            if self._upgrade_value is None:
                self._upgrade_value = value
        return 0

    @cython.final
    cdef int _on_host(self, const char *s, Py_ssize_t n, bytes value) except -1:
        cdef bint has_port
        self._nhost += 1
        self._host = _host_of(s, n, value, &has_port)
        if self._host is None:
            return self._fail(400, b"invalid Host")
        return 0

    @cython.final
    cdef int _on_content_length(self, const char *s, Py_ssize_t n) noexcept:
        cdef long long v = 0
        cdef int d
        cdef Py_ssize_t i
        if n == 0:
            return self._fail(400, b"invalid Content-Length")
        for i in range(n):
            d = s[i] - 48
            if d < 0 or d > 9:
                return self._fail(400, b"invalid Content-Length")
            if v > (LLONG_MAX - d) // 10:
                return self._fail(400, b"Content-Length too large")
            v = v * 10 + d
        if self._cl >= 0 and self._cl != v:
            return self._fail(400, b"conflicting Content-Length")
        self._cl = v
        return 0

    @cython.final
    cdef void _on_transfer_encoding(self, const char *s, Py_ssize_t n) noexcept:
        # Codings accumulate over repeated fields; empty list elements are allowed (RFC 9110
        # §5.6.1).  Only "is chunked last, and only there" matters for framing.
        cdef Py_ssize_t i = 0, a, e
        self._te_seen = True
        while i <= n:
            i = _list_item(s, n, i, &a, &e)
            if a == e:
                continue
            if self._te_last_chunked:
                self._te_bad = True
            self._te_last_chunked = _ieq(s + a, e - a, b"chunked", 7)

    @cython.final
    cdef void _on_connection(self, const char *s, Py_ssize_t n) noexcept:
        cdef Py_ssize_t i = 0, a, e
        while i <= n:
            i = _list_item(s, n, i, &a, &e)
            if _ieq(s + a, e - a, b"close", 5):
                self._conn_close = True
            elif _ieq(s + a, e - a, b"keep-alive", 10):
                self._conn_keep_alive = True
            elif _ieq(s + a, e - a, b"upgrade", 7):
                self._conn_upgrade = True

    @cython.final
    cdef int _chunk_size(self, const char *s, Py_ssize_t n) noexcept:
        cdef long long size = 0
        cdef Py_ssize_t i = 0
        cdef int d
        while i < n:
            d = _HEXVAL[<unsigned char>s[i]]
            if d < 0:
                break
            if size > (LLONG_MAX >> 4):
                return self._fail(400, b"chunk size too large")
            size = size * 16 + d
            i += 1
        if i == 0 or (i < n and s[i] != b';'):
            return self._fail(400, b"invalid chunk size")
        if self.max_body >= 0:
            if size > self.max_body - self._declared:
                return self._fail(413, b"request body too large")
            self._declared += size
        # Extensions are ignored, but control characters in them are still refused.
        for i in range(i, n):
            if not _FIELD_CHAR[<unsigned char>s[i]]:
                return self._fail(400, b"invalid chunk extension")
        if size == 0:
            self._state = S_TRAILERS
            self._head_len = 0
            self._nfields = 0
        else:
            self._remaining = size
            self._state = S_CHUNK_DATA
        return 0


@cython.final
cdef class RequestParser(_Parser):
    """Incremental HTTP/1.x request parser: ``feed(bytes) -> list`` of events."""

    cdef Request _req
    cdef object _target_host    # host from an absolute- or authority-form target

    # __cinit__ rather than __init__: the fields must be valid even if __init__ is skipped.
    def __cinit__(self, Py_ssize_t max_header_bytes=16384, Py_ssize_t max_headers=100):
        self._configure(max_header_bytes, max_headers)

    def feed(self, bytes data not None):
        """Parse ``data``; return the events it completes (see the module docstring)."""
        return self._feed(data)

    cdef int _start_line(self, const char *s, Py_ssize_t n) except -1:
        cdef const char *sp = <const char *>memchr(s, b' ', n)
        cdef const char *v
        cdef const char *t
        cdef const char *q
        cdef Py_ssize_t mlen, tlen, i, a
        cdef bytes method, target
        cdef Request req
        cdef bint has_port
        if sp == NULL:
            return self._fail(400, b"malformed request line")
        mlen = sp - s
        if mlen == 0:
            return self._fail(400, b"malformed request line")
        for i in range(mlen):
            if not _TOKEN_LOWER[<unsigned char>s[i]]:
                return self._fail(400, b"invalid method")
        # request-line = method SP request-target SP HTTP-version, single spaces (RFC 9112 §3)
        if n - mlen < 11:
            return self._fail(400, b"malformed request line")
        v = s + n - 8
        if (s[n - 9] != b' ' or memcmp(v, b"HTTP/", 5) != 0 or not (b'0' <= v[5] <= b'9')
                or v[6] != b'.' or not (b'0' <= v[7] <= b'9')):
            return self._fail(400, b"malformed request line")
        t = sp + 1
        tlen = v - 1 - t
        if not _target_ok(t, tlen):
            return self._fail(400, b"invalid request target")
        req = Request.__new__(Request)
        self._req = req
        self._target_host = None
        method = _method(s, mlen)
        target = PyBytes_FromStringAndSize(t, tlen)
        req.method = method
        req.target = target
        req.query = _EMPTY
        if method is _M_CONNECT:
            # authority-form: uri-host ":" port (RFC 9112 §3.2.3)
            self._target_host = _host_of(t, tlen, None, &has_port)
            if self._target_host is None or not has_port or PyBytes_GET_SIZE(self._target_host) == 0:
                return self._fail(400, b"invalid CONNECT target")
            req.path = target
        elif t[0] == b'/':
            q = <const char *>memchr(t, b'?', tlen)
            if q == NULL:
                req.path = target
            else:
                req.path = PyBytes_FromStringAndSize(t, q - t)
                req.query = PyBytes_FromStringAndSize(q + 1, t + tlen - q - 1)
        elif tlen == 1 and t[0] == b'*':
            if method is not _M_OPTIONS:
                return self._fail(400, b"asterisk-form target is for OPTIONS only")
            req.path = target
        else:
            if tlen > 7 and _ieq(t, 7, b"http://", 7):
                a = 7
            elif tlen > 8 and _ieq(t, 8, b"https://", 8):
                a = 8
            else:
                return self._fail(400, b"invalid request target")
            i = a
            while i < tlen and t[i] != b'/' and t[i] != b'?':
                i += 1
            self._target_host = _host_of(t + a, i - a, None, &has_port)
            if self._target_host is None or PyBytes_GET_SIZE(self._target_host) == 0:
                return self._fail(400, b"invalid request target")
            q = <const char *>memchr(t + i, b'?', tlen - i)
            if q == NULL:
                q = t + tlen
            else:
                req.query = PyBytes_FromStringAndSize(q + 1, t + tlen - q - 1)
            req.path = PyBytes_FromStringAndSize(t + i, q - t - i) if q > t + i else _SLASH
        if v[5] != b'1' or v[7] > b'1':
            return self._fail(505, b"HTTP version not supported")
        req.plain_path = _plain_path(PyBytes_AS_STRING(req.path), PyBytes_GET_SIZE(req.path))
        req.version = 11 if v[7] == b'1' else 10
        return 0

    cdef int _end_head(self, list events) except -1:
        cdef Request req = self._req
        cdef int version = req.version
        cdef bint keep_alive
        self._req = None
        if self._nhost > 1:
            return self._fail(400, b"multiple Host fields")
        if self._nhost == 0 and version == 11:
            return self._fail(400, b"missing Host")
        if self._te_seen:
            if version == 10:
                return self._fail(400, b"Transfer-Encoding in HTTP/1.0")
            if self._cl >= 0:
                return self._fail(400, b"both Content-Length and Transfer-Encoding")
            if self._te_bad or not self._te_last_chunked:
                return self._fail(400, b"chunked is not the final transfer coding")
        req.headers = self._take_fields()
        if self._target_host is not None:
            req.host = self._target_host
        elif self._host is not None:
            req.host = self._host
        else:
            req.host = _EMPTY
        req.content_length = self._cl
        req.chunked = self._te_seen
        req.expect_continue = self._expect_continue
        if version == 11:
            keep_alive = not self._conn_close
            if self._conn_upgrade and self._upgrade_value is not None:
                req.upgrade = _lowered(self._upgrade_value)
        else:
            keep_alive = self._conn_keep_alive and not self._conn_close
        req.keep_alive = keep_alive
        events.append(req)
        if req.upgrade is not None or req.method is _M_CONNECT:
            self._after = S_UPGRADED
        else:
            self._after = S_IDLE if keep_alive else S_CLOSED
        if req.method is _M_CONNECT:
            # A CONNECT request has no content; what follows belongs to the tunnel.
            self._message_done(events)
        elif self._te_seen:
            self._declared = 0
            self._state = S_CHUNK_SIZE
        elif self._cl > 0:
            self._remaining = self._cl
            self._state = S_BODY
        else:
            self._message_done(events)
        return 0


@cython.final
cdef class ResponseParser(_Parser):
    """Incremental HTTP/1.x response parser for the reverse proxy's upstream connections."""

    cdef Response _resp
    cdef bint _head_request

    def __cinit__(self, Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=200):
        self._configure(max_header_bytes, max_headers)
        self._dead_is_502 = True

    def expect_head_response(self):
        """The next final response answers a HEAD request: it has no body."""
        self._head_request = True

    def feed(self, bytes data not None):
        """Parse ``data``; return the events it completes (see the module docstring)."""
        return self._feed(data)

    def feed_eof(self):
        """The upstream closed the connection: finish a close-delimited body or report 502."""
        cdef int st = self._state
        if st >= S_UPGRADED:
            return []
        if st == S_EOF_BODY:
            self._state = S_CLOSED
            return [_END]
        if st == S_IDLE and PyBytes_GET_SIZE(self._pending) == 0:
            self._state = S_CLOSED
            return []
        self._state = S_DEAD
        self._pending = _EMPTY
        return [HTTPError(502, "upstream closed the connection mid-response")]

    cdef int _start_line(self, const char *s, Py_ssize_t n) except -1:
        # status-line = HTTP-version SP status-code SP [ reason-phrase ]; a missing final SP
        # is tolerated as many servers omit it with an empty reason.
        cdef Response resp
        cdef Py_ssize_t i
        if (n < 12 or memcmp(s, b"HTTP/", 5) != 0 or not (b'0' <= s[5] <= b'9') or s[6] != b'.'
                or not (b'0' <= s[7] <= b'9') or s[8] != b' '
                or not (b'1' <= s[9] <= b'9') or not (b'0' <= s[10] <= b'9')
                or not (b'0' <= s[11] <= b'9') or (n > 12 and s[12] != b' ')):
            return self._fail(502, b"malformed status line")
        for i in range(13, n):
            if not _FIELD_CHAR[<unsigned char>s[i]]:
                return self._fail(502, b"invalid reason phrase")
        if s[5] != b'1' or s[7] > b'1':
            return self._fail(502, b"unsupported HTTP version")
        resp = Response.__new__(Response)
        resp.version = 11 if s[7] == b'1' else 10
        resp.status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
        resp.reason = PyBytes_FromStringAndSize(s + 13, n - 13) if n > 13 else _EMPTY
        self._resp = resp
        return 0

    cdef int _end_head(self, list events) except -1:
        cdef Response resp = self._resp
        cdef int status = resp.status
        cdef bint no_body, keep_alive
        self._resp = None
        if self._te_seen:
            if self._cl >= 0:
                return self._fail(502, b"both Content-Length and Transfer-Encoding")
            if self._te_bad:
                return self._fail(502, b"chunked applied more than once")
        # RFC 9112 §6.3: these responses never have content, whatever the fields say.
        no_body = status < 200 or status == 204 or status == 304
        if status >= 200:
            no_body = no_body or self._head_request
            self._head_request = False
        resp.headers = self._take_fields()
        resp.chunked = self._te_seen and self._te_last_chunked
        resp.content_length = self._cl
        if resp.version == 11:
            keep_alive = not self._conn_close
        else:
            keep_alive = self._conn_keep_alive and not self._conn_close
        if not no_body and not resp.chunked and self._cl < 0:
            keep_alive = False      # the body runs until the connection closes
        resp.keep_alive = keep_alive
        events.append(resp)
        if status == 101:
            self._after = S_UPGRADED
        elif status < 200 or keep_alive:
            self._after = S_IDLE
        else:
            self._after = S_CLOSED
        if no_body or self._cl == 0:
            self._message_done(events)
        elif resp.chunked:
            self._state = S_CHUNK_SIZE
        elif self._cl > 0:
            self._remaining = self._cl
            self._state = S_BODY
        else:
            self._state = S_EOF_BODY
        return 0


# ----------------------------------------------------------------------------------------
# Writers

_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 103: b"Early Hints", 200: b"OK", 201: b"Created",
    202: b"Accepted", 204: b"No Content", 206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 410: b"Gone", 411: b"Length Required",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable", 421: b"Misdirected Request", 426: b"Upgrade Required",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

LAST_CHUNK = b"0\r\n\r\n"


cdef struct _Out:
    char *buf
    Py_ssize_t len
    Py_ssize_t cap
    bint heap


cdef int _put(_Out *o, const char *s, Py_ssize_t k) except -1:
    cdef Py_ssize_t cap
    cdef char *nb
    if o.len + k > o.cap:
        cap = o.cap * 2
        if cap < o.len + k:
            cap = o.len + k
        if o.heap:
            nb = <char *>realloc(o.buf, cap)
        else:
            nb = <char *>malloc(cap)
            if nb != NULL:
                memcpy(nb, o.buf, o.len)
        if nb == NULL:
            raise MemoryError()
        o.buf = nb
        o.cap = cap
        o.heap = True
    memcpy(o.buf + o.len, s, k)
    o.len += k
    return 0


cdef int _put_int(_Out *o, long long v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return _put(o, tmp + i, 24 - i)


cdef bytes _latin1(object s):
    if type(s) is bytes:
        return <bytes>s
    if type(s) is str:
        return (<str>s).encode("latin-1")
    raise TypeError("header names and values must be bytes or str, not %s" % type(s).__name__)


cdef int _put_fields(_Out *o, object headers) except -1:
    # Names and values are checked because they may come from upstreams or applications:
    # a CR or LF slipping through would let them forge extra fields or whole responses.
    cdef bytes bn, bv
    cdef const char *s
    cdef Py_ssize_t i, k
    for name, value in headers:
        bn = _latin1(name)
        bv = _latin1(value)
        s = PyBytes_AS_STRING(bn)
        k = PyBytes_GET_SIZE(bn)
        if k == 0:
            raise ValueError("empty header name")
        for i in range(k):
            if not _TOKEN_LOWER[<unsigned char>s[i]]:
                raise ValueError("invalid header name %r" % (bn,))
        s = PyBytes_AS_STRING(bv)
        for i in range(PyBytes_GET_SIZE(bv)):
            if not _FIELD_CHAR[<unsigned char>s[i]]:
                raise ValueError("invalid character in value of header %r" % (bn,))
        _put(o, PyBytes_AS_STRING(bn), k)
        _put(o, b": ", 2)
        _put(o, s, PyBytes_GET_SIZE(bv))
        _put(o, b"\r\n", 2)
    return 0


cdef int _put_framing(_Out *o, long long content_length) except -1:
    if content_length >= 0:
        _put(o, b"content-length: ", 16)
        _put_int(o, content_length)
        _put(o, b"\r\n", 2)
    elif content_length == -1:
        _put(o, b"transfer-encoding: chunked\r\n", 28)
    elif content_length != -2:
        raise ValueError("content_length must be >= 0, -1 (chunked) or -2 (no framing field)")
    return 0


cdef int _put_status_line(_Out *o, int status) except -1:
    cdef char code[3]
    cdef bytes reason
    if not 100 <= status <= 999:
        raise ValueError("status must be a three-digit code")
    reason = _REASONS.get(status, b"Unknown")
    code[0] = <char>(48 + status // 100)
    code[1] = <char>(48 + status // 10 % 10)
    code[2] = <char>(48 + status % 10)
    _put(o, b"HTTP/1.1 ", 9)
    _put(o, code, 3)
    _put(o, b" ", 1)
    _put(o, PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason))
    _put(o, b"\r\n", 2)
    return 0


# The reason phrases of the node's own error answers (Fixed.error).
REASONS = {426: "Upgrade Required", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Content Too Large", 421: "Misdirected Request",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


cdef class Fixed:
    """A whole response, framed once: one variant keeps the connection, one closes it
    (farts/transport/http.py's Fixed). Compiled: the transport reads its fields in C on
    every answer it writes, and the proxy makes one per whole upstream answer. (Fields
    in http1.pxd.)"""

    def __init__(self, int status, bytes body, bytes content_type=b"text/plain; charset=utf-8",
                 headers=()):
        self.status = status
        hs = [(b"content-type", content_type), *headers]
        self.keep = response_head(status, hs, len(body), True) + body
        self.close = response_head(status, hs, len(body), False) + body
        self.body_len = len(body)
        # Times written by the connection itself, per listener name: counted here, in
        # place, because this is the hottest path (the listener's metrics sum it).
        self.served = {}

    @classmethod
    def error(cls, int status, str reason=""):
        text = f"{status} {REASONS.get(status, 'Error')}"
        return cls(status, (f"{text}: {reason}" if reason else text).encode() + b"\n")


def closing(bytes keep, Py_ssize_t body_len):
    """The close framing of a whole response framed to keep the connection (``keep``:
    head then ``body_len`` bytes of body): ``connection: close`` as the head's last field,
    as ``response_head(..., keep_alive=False)`` writes it. For answers whose close framing
    is rarely wanted (the proxy's), made only when a connection closes after one."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(keep)
    cdef Py_ssize_t head = n - body_len - 2    # up to the blank line
    cdef const char *k = PyBytes_AS_STRING(keep)
    if body_len < 0 or head < 2 or memcmp(k + head - 2, b"\r\n\r\n", 4) != 0:
        raise ValueError("not a framed response")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 19)
    cdef char *o = PyBytes_AS_STRING(out)
    memcpy(o, k, head)
    memcpy(o + head, b"connection: close\r\n", 19)
    memcpy(o + head + 19, k + head, n - head)
    return out


def response_head(int status, headers, long long content_length, bint keep_alive):
    """``HTTP/1.1`` status line, ``headers``, framing field, ``connection: close`` if not
    ``keep_alive``, blank line.  ``content_length``: >= 0 length, -1 chunked, -2 none."""
    cdef char stack[_STACK_OUT]
    cdef _Out o
    o.buf = stack
    o.len = 0
    o.cap = _STACK_OUT
    o.heap = False
    try:
        _put_status_line(&o, status)
        _put_fields(&o, headers)
        _put_framing(&o, content_length)
        if not keep_alive:
            _put(&o, b"connection: close\r\n", 19)
        _put(&o, b"\r\n", 2)
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        if o.heap:
            free(o.buf)


def request_head(bytes method not None, bytes target not None, headers, long long content_length):
    """``method target HTTP/1.1``, ``headers``, framing field (as in response_head), blank line."""
    cdef char stack[_STACK_OUT]
    cdef _Out o
    cdef Py_ssize_t i
    cdef const char *s
    if PyBytes_GET_SIZE(method) == 0 or PyBytes_GET_SIZE(target) == 0:
        raise ValueError("empty method or target")
    s = PyBytes_AS_STRING(method)
    for i in range(PyBytes_GET_SIZE(method)):
        if not _TOKEN_LOWER[<unsigned char>s[i]]:
            raise ValueError("invalid method %r" % (method,))
    s = PyBytes_AS_STRING(target)
    for i in range(PyBytes_GET_SIZE(target)):
        if not _TARGET_CHAR[<unsigned char>s[i]]:
            raise ValueError("invalid request target %r" % (target,))
    o.buf = stack
    o.len = 0
    o.cap = _STACK_OUT
    o.heap = False
    try:
        _put(&o, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method))
        _put(&o, b" ", 1)
        _put(&o, s, PyBytes_GET_SIZE(target))
        _put(&o, b" HTTP/1.1\r\n", 11)
        _put_fields(&o, headers)
        _put_framing(&o, content_length)
        _put(&o, b"\r\n", 2)
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        if o.heap:
            free(o.buf)


def encode_chunk(bytes data not None):
    """One chunk of a chunked body; b"" for empty data so that it never reads as the last chunk."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t digits = 0, v = n
    cdef bytes out
    cdef char *d
    cdef const char *hexdigits = b"0123456789abcdef"
    cdef int i
    if n == 0:
        return _EMPTY
    while v:
        digits += 1
        v >>= 4
    out = PyBytes_FromStringAndSize(NULL, digits + n + 4)
    d = PyBytes_AS_STRING(out)
    v = n
    for i in range(<int>digits - 1, -1, -1):
        d[i] = hexdigits[v & 15]
        v >>= 4
    d[digits] = b'\r'
    d[digits + 1] = b'\n'
    memcpy(d + digits + 2, PyBytes_AS_STRING(data), n)
    d[digits + 2 + n] = b'\r'
    d[digits + 3 + n] = b'\n'
    return out


def simple_response(int status, bytes body not None,
                    bytes content_type not None=b"text/plain; charset=utf-8",
                    bint keep_alive=True):
    """A complete response with a fixed body.  1xx, 204 and 304 get neither body nor
    content fields (RFC 9110 §15), so ``body`` must then be empty."""
    cdef char stack[_STACK_OUT]
    cdef _Out o
    cdef bint bodyless = status < 200 or status == 204 or status == 304
    if bodyless and PyBytes_GET_SIZE(body):
        raise ValueError("status %d cannot have a body" % status)
    o.buf = stack
    o.len = 0
    o.cap = _STACK_OUT
    o.heap = False
    try:
        _put_status_line(&o, status)
        if not bodyless:
            _put_fields(&o, ((b"content-type", content_type),))
        _put_framing(&o, -2 if bodyless else PyBytes_GET_SIZE(body))
        if not keep_alive:
            _put(&o, b"connection: close\r\n", 19)
        _put(&o, b"\r\n", 2)
        _put(&o, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        if o.heap:
            free(o.buf)
