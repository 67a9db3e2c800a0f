# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The field rules of RFC 9113 §8.2 and §8.3 for a request's header list (or its
trailers), compiled: one pass over the fields, no allocation when they hold.

``request_error(headers, trailer)`` returns None for a list a server may take, else why
not (a request that breaks these is malformed: a stream error PROTOCOL_ERROR, §8.1.1):

- names: not empty, no character in 0x00-0x20, 0x41-0x5a (uppercase) or 0x7f-0xff, no
  colon but a pseudo-header's first; values: no NUL, CR or LF, no leading or trailing
  space or tab (§8.2.1);
- no connection-specific field (connection, proxy-connection, keep-alive,
  transfer-encoding, upgrade), ``te`` only ``trailers`` (§8.2.2);
- pseudo-headers: only :method, :scheme, :authority, :path, :protocol, each once,
  all before the regular fields, none in trailers; :method always; :scheme and :path
  except for a CONNECT without :protocol, which must have neither; :protocol only on
  CONNECT (RFC 8441); :path not empty (§8.3.1);
- :authority or host, one host at most, equal when both are there.

The same rules as h2's inbound validation (``h2.utilities.validate_headers``), which
is the reference of ``tests/test_h2fields.py``.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

cdef frozenset CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"])

cdef enum:
    P_METHOD = 1
    P_SCHEME = 2
    P_AUTHORITY = 4
    P_PATH = 8
    P_PROTOCOL = 16

cdef dict PSEUDO = {b":method": P_METHOD, b":scheme": P_SCHEME, b":authority": P_AUTHORITY,
                    b":path": P_PATH, b":protocol": P_PROTOCOL}


cdef str name_error(bytes name):
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i
    cdef uint8_t c
    if n == 0:
        return "an empty field name"
    for i in range(n):
        c = p[i]
        if c <= 0x20 or c >= 0x7f or 0x41 <= c <= 0x5a or (c == 0x3a and i > 0):
            return f"a character not allowed in the field name {name!r}"
    return None


cdef str value_error(bytes value):
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef uint8_t c
    if n == 0:
        return None
    for i in range(n):
        c = p[i]
        if c == 0 or c == 0x0a or c == 0x0d:
            return "NUL, CR or LF in a field value"
    if p[0] == 0x20 or p[0] == 0x09 or p[n - 1] == 0x20 or p[n - 1] == 0x09:
        return "a field value starting or ending with white space"
    return None


def request_error(headers, bint trailer=False):
    """None when ``headers`` ((name, value) pairs of bytes) is a valid request header
    list (``trailer``: a trailer section), else the reason."""
    cdef int seen = 0, bit
    cdef bint regular = False
    cdef bytes name, value, method = None, authority = None, host = None
    cdef str why
    for h in headers:
        name, value = h[0], h[1]
        why = name_error(name)
        if why is None:
            why = value_error(value)
        if why is not None:
            return why
        if (<const uint8_t*>PyBytes_AS_STRING(name))[0] == 0x3a:
            bit = PSEUDO.get(name, 0)
            if not bit:
                return f"an unknown pseudo-header {name!r}"
            if seen & bit:
                return f"a second {name!r}"
            if regular:
                return f"{name!r} after a regular field"
            seen |= bit
            if bit == P_METHOD:
                method = value
            elif bit == P_AUTHORITY:
                authority = value
            elif bit == P_PATH and not value and not trailer:
                return "an empty :path"
            continue
        regular = True
        if name in CONNECTION_SPECIFIC:
            return f"the connection-specific field {name!r}"
        if name == b"te" and value.lower() != b"trailers":
            return "te other than trailers"
        if name == b"host" and not trailer:
            if host is not None:
                return "two host fields"
            host = value
    if trailer:
        return "a pseudo-header in trailers" if seen else None
    if not seen & P_METHOD:
        return "no :method"
    if method == b"CONNECT" and not seen & P_PROTOCOL:
        if seen & (P_SCHEME | P_PATH):
            return "a CONNECT with :scheme or :path"
    elif seen & (P_SCHEME | P_PATH) != (P_SCHEME | P_PATH):
        return "no :scheme or no :path"
    if seen & P_PROTOCOL and method != b"CONNECT":
        return ":protocol on a method other than CONNECT"
    if authority is None and host is None:
        return "neither :authority nor host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    return None


# -- what we send ---------------------------------------------------------------------
# Kept out of the HPACK tables (never indexed), as h2 and nghttp2 do: credentials, and
# cookies short enough to guess.
cdef frozenset SECRET = frozenset([b"authorization", b"proxy-authorization"])
cdef dict STATUS = {}


cdef list outbound(list out, headers):
    cdef bytes name, value
    cdef const uint8_t* p
    cdef Py_ssize_t n, a, b
    cdef str why
    for h in headers:
        name, value = h[0], h[1]
        why = name_error(name)
        if why is None and (<const uint8_t*>PyBytes_AS_STRING(name))[0] == 0x3a:
            why = f"the pseudo-header {name!r} from a handler"
        if why is not None:
            raise ValueError(why)
        if name in CONNECTION_SPECIFIC:
            continue
        p = <const uint8_t*>PyBytes_AS_STRING(value)
        n = PyBytes_GET_SIZE(value)
        a, b = 0, n
        while a < b and (p[a] == 0x20 or p[a] == 0x09):
            a += 1
        while b > a and (p[b - 1] == 0x20 or p[b - 1] == 0x09):
            b -= 1
        if a or b != n:
            value = value[a:b]
        why = value_error(value)
        if why is not None:
            raise ValueError(f"{why} ({name!r})")
        if name == b"te" and value.lower() != b"trailers":
            raise ValueError("te other than trailers")
        if name in SECRET or (name == b"cookie" and b - a < 20):
            out.append((name, value, True))
        else:
            out.append((name, value))
    return out


def response_head(int status, headers):
    """The field list of a response head: ``:status`` then ``headers`` ((name, value)
    bytes pairs, names lowercase): connection-specific fields dropped, values trimmed
    of surrounding white space, credentials and short cookies marked never-indexed
    (a third item, True).  ValueError for a name or value RFC 9113 §8.2.1 forbids, a
    pseudo-header, or a te other than trailers."""
    cdef bytes code = STATUS.get(status)
    if code is None:
        if not 100 <= status <= 999:
            raise ValueError(f"status {status}")
        code = STATUS[status] = str(status).encode()
    return outbound([(b":status", code)], headers)


def trailer_fields(headers):
    """A trailer section's fields, by response_head's rules (no :status)."""
    return outbound([], headers)
