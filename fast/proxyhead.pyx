# cython: language_level=3, boundscheck=False, wraparound=False
"""Header rewriting between a client and an upstream: the reverse proxy's per-request
header work, compiled. Pure functions, no I/O.

The same functions in pure Python are farts/proxy/headers.py: the reference this module
is tested against (tests/test_proxy_headers.py feeds both the same random header lists).
Header lists are (lowercase name, value) pairs as the parsers give them; a pair that is
kept goes out as the same tuple object (no copy).
"""

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


cdef object _tokens(object headers):
    """The header names listed in Connection (lowercase), or None."""
    cdef set tokens = None
    cdef bytes t
    for pair in headers:
        if pair[0] == _CONNECTION:
            for t in (<bytes>pair[1]).split(b","):
                t = t.strip().lower()
                if t:
                    if tokens is None:
                        tokens = set()
                    tokens.add(t)
    return frozenset(tokens) if tokens else None


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
