"""RFC 9111 as a shared cache applies it, as pure functions: no clock (``now`` is passed
in), no I/O.  Headers are lists of (lowercase name, value) bytes pairs, as fast.http1
gives them."""
from __future__ import annotations

import re
from email.utils import formatdate, parsedate_to_datetime

Headers = list[tuple[bytes, bytes]]

# Status codes cacheable by default (RFC 9110 §15.1) that this cache stores.
HEURISTIC_STATUSES = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
NEGATIVE_STATUSES = frozenset((404, 410))
# Not stored with the object: they describe one connection or one answer.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"te", b"trailer", b"upgrade", b"content-length", b"date", b"age",
                        b"set-cookie", b"server", b"proxy-authenticate", b"via"))
# Describe one connection: never passed on.
CONNECTION_FIELDS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                               b"te", b"trailer", b"upgrade", b"content-length"))
HEURISTIC_FRACTION = 0.1   # of the time since Last-Modified (RFC 9111 §4.2.2)
HEURISTIC_MAX = 86400.0


def header(headers: Headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


# One directive: a token, then optionally = and a token or a quoted string, which may hold
# commas (private="a, b"; RFC 9111 §5.2, RFC 9110 §5.6.4).
_DIRECTIVE = re.compile(rb'\s*([^\s=,"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')


def cache_control(headers: Headers, field: bytes = b"cache-control") -> dict[bytes, bytes | None]:
    """Directives of every Cache-Control field (or ``field``): lowercase name → argument
    (unquoted) or None."""
    out: dict[bytes, bytes | None] = {}
    for k, v in headers:
        if k != field:
            continue
        for m in _DIRECTIVE.finditer(v):
            arg = m.group(2)
            if arg is not None:
                arg = arg.strip()
                if arg[:1] == b'"':
                    arg = re.sub(rb"\\(.)", rb"\1", arg[1:-1])
            out.setdefault(m.group(1).lower(), arg)
    return out


def directives(headers: Headers) -> tuple[dict[bytes, bytes | None], bool]:
    """The response's directives for this cache, and whether they come from
    CDN-Cache-Control: when that field has a non-empty value, it alone decides (RFC 9213
    §2.1: Cache-Control and Expires are then ignored); else Cache-Control."""
    targeted = cache_control(headers, b"cdn-cache-control")
    if targeted:
        return targeted, True
    return cache_control(headers), False


def unqualified(cc: dict, name: bytes) -> bool:
    """Is directive ``name`` there without field names (``private``, ``no-cache``: RFC 9111
    §5.2.2.4, §5.2.2.7)?  An empty list counts as none."""
    return name in cc and not cc[name]


def named_fields(cc: dict) -> frozenset:
    """The fields a qualified ``private="a, b"`` or ``no-cache="a, b"`` names: never stored
    (private) or never sent from the cache without revalidation (no-cache), so this cache
    keeps neither (RFC 9111 §5.2.2.4, §5.2.2.7)."""
    return frozenset(n.strip().lower() for d in (b"private", b"no-cache") if cc.get(d)
                     for n in cc[d].split(b",") if n.strip())


def seconds(arg: bytes | None) -> float | None:
    """A delta-seconds argument; None when missing or not a number."""
    if arg is None or not arg.isdigit():
        return None
    return float(arg)


def http_date(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def format_date(ts: float) -> bytes:
    return formatdate(ts, usegmt=True).encode()


def storable(method: bytes, status: int, request_headers: Headers, headers: Headers,
             negative_ttl: float) -> bool:
    """May a shared cache store this response (RFC 9111 §3)?  Responses to requests with
    Authorization, with Set-Cookie, private, no-store or Vary: * are not stored."""
    if method not in (b"GET", b"HEAD"):
        return False
    cc, targeted = directives(headers)
    if b"no-store" in cc or unqualified(cc, b"private"):
        return False
    if header(headers, b"set-cookie") is not None:
        return False
    if header(request_headers, b"authorization") is not None and not (
            b"public" in cc or b"s-maxage" in cc or b"must-revalidate" in cc):
        return False
    req_cc = cache_control(request_headers)
    if b"no-store" in req_cc:
        return False
    vary = header(headers, b"vary")
    if vary is not None and b"*" in vary:
        return False
    if status in NEGATIVE_STATUSES:
        return negative_ttl > 0 or _explicit(cc, headers, targeted)
    if status in (200, 203, 300, 301, 308):
        return True
    # Any other final status the cache understands, with explicit freshness or public
    # (RFC 9111 §3); not 204 (no body to store), 206 (no partial content is stored), 304,
    # 401, nor server errors but 501.
    return (status in (302, 303, 307, 501) or 400 <= status < 500 and status != 401) \
        and (_explicit(cc, headers, targeted) or b"public" in cc)


def _explicit(cc: dict, headers: Headers, targeted: bool = False) -> bool:
    return (b"s-maxage" in cc or b"max-age" in cc
            or not targeted and header(headers, b"expires") is not None)


def freshness_lifetime(status: int, headers: Headers, response_time: float,
                       negative_ttl: float) -> float:
    """Seconds the response stays fresh after it was generated (RFC 9111 §4.2.1)."""
    cc, targeted = directives(headers)
    if unqualified(cc, b"no-cache"):
        return 0.0
    for name in (b"s-maxage", b"max-age"):
        if name in cc:
            v = seconds(cc[name])
            return v if v is not None else 0.0
    expires = None if targeted else header(headers, b"expires")
    if expires is not None:
        exp = http_date(expires)
        date = http_date(header(headers, b"date")) or response_time
        return max(0.0, exp - date) if exp is not None else 0.0
    if status in NEGATIVE_STATUSES:
        return negative_ttl
    last_modified = http_date(header(headers, b"last-modified"))
    if last_modified is not None and status in HEURISTIC_STATUSES:
        date = http_date(header(headers, b"date")) or response_time
        return min(HEURISTIC_MAX, max(0.0, (date - last_modified) * HEURISTIC_FRACTION))
    return 0.0


def initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """Age of the response when it arrived (RFC 9111 §4.2.3)."""
    age = seconds(header(headers, b"age")) or 0.0
    date = http_date(header(headers, b"date"))
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    return max(apparent, age + (response_time - request_time))


def stale_windows(headers: Headers) -> tuple[float, float]:
    """(stale-while-revalidate, stale-if-error) seconds (RFC 5861); must-revalidate and
    proxy-revalidate forbid both."""
    cc, _ = directives(headers)
    if b"must-revalidate" in cc or b"proxy-revalidate" in cc or unqualified(cc, b"no-cache"):
        return 0.0, 0.0
    return (seconds(cc.get(b"stale-while-revalidate")) or 0.0,
            seconds(cc.get(b"stale-if-error")) or 0.0)


def must_revalidate(headers: Headers) -> bool:
    """May a stale copy never be served without revalidation (RFC 9111 §4.2.4, §5.2.2.2,
    §5.2.2.8; s-maxage carries proxy-revalidate's meaning, §5.2.2.10)?"""
    cc, _ = directives(headers)
    return (b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc
            or unqualified(cc, b"no-cache"))


def stored_headers(headers: Headers) -> Headers:
    """The fields kept with the object and sent with every answer from the cache: not the
    hop-by-hop ones, nor those a qualified private or no-cache names."""
    named = named_fields(directives(headers)[0])
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


def updated_headers(stored: Headers, fresh: Headers) -> Headers:
    """Stored fields with those of a 304 (or a HEAD's 200) replacing them (RFC 9111 §3.2,
    §4.3.4); then the fields the merged directives name are left out (stored_headers)."""
    new = {k for k, _ in stored_headers(fresh)}
    return stored_headers([(k, v) for k, v in stored if k not in new] + stored_headers(fresh))


def _etags(value: bytes) -> list[bytes]:
    return [t.strip().removeprefix(b"W/") for t in value.split(b",")]


def not_modified(request_headers: Headers, etag: bytes | None, last_modified: bytes | None) -> bool:
    """Does the client's conditional GET/HEAD match what is stored (RFC 9110 §13.2.2)?
    If-None-Match takes precedence over If-Modified-Since (weak comparison)."""
    inm = header(request_headers, b"if-none-match")
    if inm is not None:
        if etag is None:
            return False
        return inm.strip() == b"*" or etag.removeprefix(b"W/") in _etags(inm)
    ims = header(request_headers, b"if-modified-since")
    if ims is not None and last_modified is not None:
        since, modified = http_date(ims), http_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False


UNSATISFIABLE = (-1, -1)


def byte_range(value: bytes, size: int) -> tuple[int, int] | None:
    """One range of a Range field as (first, last) inclusive; None to send the whole
    object (no bytes unit, several ranges, or a malformed field, RFC 9110 §14.2);
    UNSATISFIABLE when no byte of the object is in it."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:  # suffix: the last N bytes
        if not last.isdigit():
            return None
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    a = int(first)
    b = int(last) if last else size - 1
    if last and b < a:
        return None
    if a >= size:
        return UNSATISFIABLE
    return a, min(b, size - 1)


# -- requests passed on to the origin ------------------------------------------------
# Safe methods (RFC 9110 §9.2.1): they never invalidate what is stored.
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
# Request fields never sent on (RFC 9110 §7.6.1 hop-by-hop; framing is redone by the
# writer; Host is the origin's own; Expect is answered by the transport).
REQUEST_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                                b"transfer-encoding", b"upgrade", b"content-length", b"host",
                                b"expect", b"x-forwarded-for"))
VIA = b"1.1 farts-edge"


def connection_names(headers: Headers) -> frozenset:
    """The field names a Connection field lists (hop-by-hop too, RFC 9110 §7.6.1)."""
    return frozenset(t.strip().lower() for k, v in headers if k == b"connection"
                     for t in v.split(b",") if t.strip())


def forward_headers(headers: Headers, client: str, drop: frozenset = frozenset()) -> Headers:
    """The end-to-end fields of a client's request as the origin gets them (RFC 9110
    §7.6): hop-by-hop ones and those named in Connection dropped (and ``drop``), Via and
    X-Forwarded-For extended with this hop."""
    named = connection_names(headers)
    out, via, xff = [], None, None
    for k, v in headers:
        if k == b"via":
            via = v if via is None else via + b", " + v
        elif k == b"x-forwarded-for":
            xff = v if xff is None else xff + b", " + v
        elif k not in REQUEST_HOP_BY_HOP and k not in named and k not in drop:
            out.append((k, v))
    ip = client.encode()
    out.append((b"via", via + b", " + VIA if via else VIA))
    out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    return out


def response_headers(headers: Headers) -> Headers:
    """An origin's answer passed on: the fields describing its connection dropped."""
    named = connection_names(headers)
    return [(k, v) for k, v in headers if k not in CONNECTION_FIELDS and k not in named]
