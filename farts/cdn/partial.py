"""Partial content: storing an origin's 206 and combining ranges (RFC 9111 §3.3, §3.4).

With ``cdn.range_fill_min_bytes`` set, a Range request that finds nothing stored asks
the origin for that range (widened to at least that many bytes) instead of the whole
object. A 206 the cache may store (one range, a known complete length, a strong ETag,
storable as its 200 would be, no Vary) is written at its offset into one file of the
complete length; the byte spans held are the ``Partial``'s. A later 206 with the same
strong validator and length is combined with it (§3.4: the spans merge, the newer
fields replace the stored ones); another validator replaces it. Ranges inside one
span are answered from the file; once the spans cover every byte, the file is a whole
object and becomes an ordinary entry. Pure functions; the service does the I/O.
"""
from __future__ import annotations

from . import policy


class Partial:
    """What is stored of one object: its file (complete length, holes where nothing
    is), the spans held ((first, last) inclusive, sorted, disjoint, not adjacent), the
    fields of the newest 206 (without Content-Range and Content-Length)."""

    __slots__ = ("key", "headers", "length", "etag", "spans", "file", "response_time", "initial_age",
                 "lifetime", "fresh_until")

    def __init__(self, key: bytes, headers: list, length: int, etag: bytes, spans: list, file: str,
                 response_time: float, lifetime: float, initial_age: float) -> None:
        self.key, self.headers, self.length, self.etag = key, headers, length, etag
        self.spans, self.file = spans, file
        self.response_time, self.lifetime, self.initial_age = response_time, lifetime, initial_age
        self.fresh_until = response_time + lifetime - initial_age

    @property
    def held(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)


def content_range(value: bytes | None) -> tuple[int, int, int] | None:
    """``bytes first-last/length`` (RFC 9110 §14.4) as (first, last, length); None for
    anything else, an unknown length (``*``) included."""
    if value is None:
        return None
    unit, _, rest = value.strip().partition(b" ")
    span, slash, length = rest.partition(b"/")
    first, dash, last = span.strip().partition(b"-")
    if unit.lower() != b"bytes" or not slash or not dash:
        return None
    if not (first.isdigit() and last.isdigit() and length.strip().isdigit()):
        return None
    a, b, n = int(first), int(last), int(length)
    return (a, b, n) if a <= b < n else None


def origin_range(value: bytes, length: int | None, min_bytes: int) -> bytes | None:
    """The Range a fill asks the origin for, for a client's one byte range ``value``:
    widened to at least ``min_bytes`` (so that later ranges nearby find it stored), to
    the end of the object when ``length`` is known; None when the field is not one
    byte range (several ranges, other units, malformed: the whole object is fetched)."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = (p.strip() for p in spec.strip().partition(b"-"))
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    if not first:  # the last N bytes
        return b"bytes=-%d" % max(int(last), min_bytes)
    a = int(first)
    if last and int(last) < a:
        return None
    if not last:
        return b"bytes=%d-" % a
    b = max(int(last), a + min_bytes - 1)
    if length is not None:
        b = min(b, length - 1)
    return b"bytes=%d-%d" % (a, b)


def merged(spans: list, first: int, last: int) -> list:
    """``spans`` with (first, last) added: sorted, overlapping and adjacent ones joined."""
    out = []
    for a, b in sorted([*spans, (first, last)]):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def covers(spans: list, first: int, last: int) -> bool:
    """Is every byte of (first, last) held, in one span?"""
    return any(a <= first and last <= b for a, b in spans)


def complete(spans: list, length: int) -> bool:
    return spans == [(0, length - 1)]


# -- a 206 from the origin -------------------------------------------------------------
NEW = "new"          # store it as a new partial object (nothing stored, or another validator)
COMBINE = "combine"  # same strong validator and length as the stored one: add its span
PASS = "pass"        # not storable as partial content: pass it on to the client only


def on_partial(stored: Partial | None, status: int, headers: list, content_length: int,
               request_headers: list, negative_ttl: float) -> tuple[str, tuple[int, int, int] | None]:
    """What a fill does with the origin's answer to a Range request: (NEW | COMBINE |
    PASS, its (first, last, length) when it is one stored range)."""
    if status != 206:
        return PASS, None
    span = content_range(policy.header(headers, b"content-range"))
    etag = policy.header(headers, b"etag")
    if (span is None or content_length != span[1] - span[0] + 1
            or etag is None or etag.startswith(b"W/")   # §3.4: a strong validator
            or policy.header(headers, b"vary") is not None
            # §3.3: storable as the whole response would be (206, like 200, is
            # heuristically cacheable: RFC 9110 §15.3.7)
            or not policy.storable(b"GET", 200, request_headers, headers, negative_ttl)
            or policy.unqualified(policy.directives(headers)[0], b"no-cache")):
        return PASS, None
    if stored is not None and stored.etag == etag and stored.length == span[2]:
        return COMBINE, span
    return NEW, span


def kept_headers(headers: list) -> list:
    """The fields stored with partial content: those of the newest 206 (§3.4), without
    what describes that one part."""
    return [(k, v) for k, v in policy.stored_headers(headers) if k != b"content-range"]
