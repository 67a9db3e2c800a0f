"""Header rewriting between client and upstream: pure functions, no I/O.

``connection_tokens``, ``request_headers`` and ``response_headers`` here are the
reference of the compiled ones in fast/proxyhead.pyx, which the proxy uses: readable,
and fed the same inputs by the differential test (tests/test_proxy_headers.py). Which
fields are dropped is defined once, there. The proxy's hot path uses the compiled
``upstream_request`` and ``client_answer`` (rewrite and wire bytes in one call), which the
same test holds to fast.http1's writers applied to these. ``authority_of`` and
``origin_form`` are used as they are.
"""
from __future__ import annotations

from fast.proxyhead import REQUEST_DROP, RESPONSE_DROP


def connection_tokens(headers) -> frozenset | None:
    """The header names listed in Connection (also hop-by-hop), or None."""
    tokens = None
    for name, value in headers:
        if name == b"connection":
            for t in value.split(b","):
                t = t.strip().lower()
                if t:
                    if tokens is None:
                        tokens = set()
                    tokens.add(t)
    return frozenset(tokens) if tokens else None


def request_headers(headers, client: str, scheme: str, new_request_id, authority: bytes | None,
                    fallback_host: bytes):
    """Headers for the upstream request: ``headers`` are (lowercase name, value) pairs.

    Returns ``(headers, request_id)``. Host is the host the request was routed by: the
    client's Host header, or for an absolute-form target its authority (RFC 9112 §3.2.2
    says the target wins), so the application sees the tenant the edge chose.
    """
    extra = connection_tokens(headers)
    out = []
    xff = None
    rid = None
    host = authority
    for name, value in headers:
        if name in REQUEST_DROP:
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            continue
        if name == b"host":
            # Always written by us, first, even if Connection lists it.
            if host is None:
                host = value
            continue
        if extra is not None and name in extra:
            continue
        if name == b"x-request-id":
            rid = value
        out.append((name, value))
    out.insert(0, (b"host", host if host is not None else fallback_host))
    ip = client.encode()
    out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if rid is None:
        rid = new_request_id()
        out.append((b"x-request-id", rid))
    return out, rid


def response_headers(headers, request_id: bytes) -> list:
    """Headers for the client: hop-by-hop ones dropped, and the request's X-Request-Id
    echoed (unless the upstream answered with its own), so a client can quote it."""
    extra = connection_tokens(headers)
    out = [h for h in headers if h[0] not in RESPONSE_DROP and (extra is None or h[0] not in extra)]
    if not any(h[0] == b"x-request-id" for h in out):
        out.append((b"x-request-id", request_id))
    return out


def authority_of(target: bytes) -> bytes | None:
    """``host:port`` of an absolute-form target, None for the origin form."""
    if target[:1] == b"/" or target == b"*":
        return None
    start = target.find(b"://")
    if start < 0:
        return None
    start += 3
    end = len(target)
    for sep in (b"/", b"?"):
        i = target.find(sep, start)
        if 0 <= i < end:
            end = i
    return target[start:end]


def origin_form(target: bytes) -> bytes:
    """An absolute-form target (``http://host/path?q``) as the origin-form ``/path?q``."""
    if target[:1] == b"/" or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    slash = target.find(b"/", scheme_end + 3)
    if slash < 0:
        q = target.find(b"?", scheme_end + 3)
        return b"/" + (target[q:] if q >= 0 else b"")
    return target[slash:]
