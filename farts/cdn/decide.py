"""What the CDN does with a request, as pure functions: facts in, an action out.

No clock (``now`` is passed in), no I/O, no loop: the service (farts/cdn/service.py)
executes the actions.  Three moments ask for a decision:

  on_request   a client's request met the cache: the stored entry (or None), whether a
               fill of its key is in flight, now → HIT, STALE (+ background revalidation
               unless one runs), JOIN the fill in flight, FILL, REVALIDATE.
  on_origin    a fill's origin answered (or its fetch failed): → store the 304's merged
               entry, stand the stale copy in (stale-if-error), or take the new answer
               (cacheable?, Vary names, private?, the headers to keep).
  after_fill   a client waited on a fill that answered → serve the revalidated entry,
               serve the stale copy on the fill's error, fetch another Vary variant,
               fetch its own private answer, or pass the fill's answer on.
  shape        how an entry answers this request: whole, 304, 206 (first, last) or 416.
  on_method    GET/HEAD meet the cache; any other method is passed on to the origin, or
               refused when the route restricts its methods.
  invalidated  the targets whose stored answers a passed-on unsafe request invalidates.
"""
from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from . import policy
from .key import parse_vary
from .store import Entry

# -- on_request -----------------------------------------------------------------------
HIT = "hit"                # fresh: answer from the entry
STALE = "stale"            # stale within stale-while-revalidate, a refresh is in flight
STALE_REFRESH = "stale+refresh"  # the same, and start the (conditional) refresh
JOIN = "join"              # a fill of this key is in flight: wait for its answer
FILL = "fill"              # nothing usable stored: fetch
REVALIDATE = "revalidate"  # stale beyond stale-while-revalidate: conditional fetch
ONLY_CACHED = "only-if-cached"  # the client wants only a stored answer, none will do: 504
HEAD_THROUGH = "head-through"    # HEAD, nothing fresh stored: a HEAD to the origin, no fill


def for_head(action: str) -> str:
    """A HEAD that would fill (or revalidate) asks the origin with HEAD instead: the body
    is not fetched for a request that wants none (RFC 9110 §9.3.2); the answer may
    freshen a stored GET answer (on_head)."""
    return HEAD_THROUGH if action is FILL or action is REVALIDATE else action


def on_request(entry: Entry | None, now: float, filling: bool, rcc: dict | None = None) -> str:
    """``entry`` is what is stored for the request's key (None when nothing, or when its
    file has gone); ``filling`` whether a fill of that key is in flight; ``rcc``: the
    request's Cache-Control directives when the cache honours them (RFC 9111 §5.2.1)."""
    if entry is not None:
        if not rcc:
            if now < entry.fresh_until:
                return HIT
            if entry.swr and now - entry.fresh_until <= entry.swr:  # (no window: none at all,
                return STALE if filling else STALE_REFRESH          # not even at its edge)
        else:
            use = acceptable(entry, now, rcc)
            if use is HIT:
                return HIT
            if use is STALE:
                return STALE if filling else STALE_REFRESH
    if rcc and b"only-if-cached" in rcc:  # §5.2.1.7
        return ONLY_CACHED
    if filling:
        return JOIN
    return FILL if entry is None else REVALIDATE


def acceptable(entry: Entry, now: float, rcc: dict) -> str | None:
    """May ``entry`` answer a request with these Cache-Control directives (RFC 9111
    §5.2.1): HIT (fresh enough), STALE (stale, but within stale-while-revalidate or the
    request's max-stale), or None (go to the origin)."""
    if b"no-cache" in rcc:  # §5.2.1.4: not without a successful validation
        return None
    age = now - entry.response_time + entry.initial_age
    if b"max-age" in rcc:  # §5.2.1.1 (an invalid argument: as 0)
        limit = policy.seconds(rcc[b"max-age"])
        if age > (limit or 0.0):
            return None
    if b"min-fresh" in rcc:  # §5.2.1.3
        want = policy.seconds(rcc[b"min-fresh"])
        if entry.lifetime - age < (want or 0.0):
            return None
    if now < entry.fresh_until:
        return HIT
    stale_for = now - entry.fresh_until
    if entry.swr and stale_for <= entry.swr:
        return STALE
    if b"max-stale" in rcc and not policy.must_revalidate(entry.headers):  # §5.2.1.2, §4.2.4
        arg = rcc[b"max-stale"]
        limit = policy.seconds(arg) if arg is not None else float("inf")
        if limit is not None and stale_for <= limit:
            return STALE
    return None


def stale_if_error(entry: Entry | None, now: float) -> bool:
    """May ``entry`` stand in for an origin that failed (RFC 5861 stale-if-error)?"""
    return entry is not None and entry.sie > 0 and now - entry.fresh_until <= entry.sie


# A client's own validators and ranges are for the cache to answer (shape), not the origin:
# a fill asks for the whole object, with the stored entry's validators.
CLIENT_CONDITIONALS = frozenset((b"if-none-match", b"if-modified-since", b"if-match",
                                 b"if-unmodified-since", b"if-range", b"range"))


def conditional_headers(forwarded: list, stale: Entry | None) -> list:
    """The request fields a fill sends its origin: ``forwarded`` (the client's end-to-end
    fields, policy.forward_headers) without the client's conditionals, with the stale
    entry's validators."""
    headers = [h for h in forwarded if h[0] not in CLIENT_CONDITIONALS]
    if stale is not None:
        if stale.etag is not None:
            headers.append((b"if-none-match", stale.etag))
        if stale.last_modified is not None:
            headers.append((b"if-modified-since", stale.last_modified))
    return headers


def variants_to_drop(stored: list[bytes], new: bytes, bound: int) -> list[bytes]:
    """The variants of one URI (``stored``, oldest first) to drop so that with ``new``
    there are at most ``bound`` (cdn.max_variants_per_uri)."""
    rest = [k for k in stored if k != new]
    return rest[:max(0, len(rest) + 1 - bound)]


# -- on_origin ------------------------------------------------------------------------
class Revalidated:
    """The origin answered 304 to a conditional fill: the stale entry, refreshed."""
    __slots__ = ("entry",)

    def __init__(self, entry: Entry) -> None:
        self.entry = entry


class UseStale:
    """The origin answered an error while the stale copy may stand in for it."""
    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


class Take:
    """A new answer: stream it to the waiting clients, store it when ``cacheable``.
    ``headers``: what is stored and what the other waiting clients get; ``own``: what the
    client whose request started the fill gets (with the fields a qualified private or
    no-cache keeps from the others)."""
    __slots__ = ("cacheable", "names", "private", "headers", "own", "lifetime", "initial_age",
                 "windows")

    def __init__(self, cacheable: bool, names: tuple[bytes, ...], private: bool, headers: list,
                 lifetime: float, initial_age: float, windows: tuple[float, float],
                 own: list | None = None) -> None:
        self.cacheable = cacheable
        self.names = names
        self.private = private
        self.headers = headers
        self.own = headers if own is None else own
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.windows = windows


def on_origin(key: bytes, status: int, headers: list, content_length: int, stale: Entry | None,
              request_headers: list, request_time: float, response_time: float,
              negative_ttl: float, max_object_bytes: int) -> Revalidated | UseStale | Take | str:
    """The origin's answer to a fill (``stale``: the entry it revalidates, or None);
    REFETCH when a 304 cannot update ``stale``."""
    if status == 304 and stale is not None:
        if not same_strong_validator(stale, headers):
            return REFETCH
        return Revalidated(refreshed(stale, headers, request_time, response_time, negative_ttl))
    if status >= 500 and stale_if_error(stale, response_time):
        return UseStale(status)
    names = parse_vary(policy.header(headers, b"vary"))
    cacheable = (names is not None and status != 304
                 and policy.storable(b"GET", status, request_headers, headers, negative_ttl)
                 and content_length <= max_object_bytes)
    cc = policy.directives(headers)[0]
    # For the client that asked only: private, Set-Cookie, and answers to a request with
    # Authorization that a shared cache may not reuse (RFC 9111 §3.5).
    private = (policy.header(headers, b"set-cookie") is not None
               or policy.unqualified(cc, b"private")
               or (policy.header(request_headers, b"authorization") is not None
                   and not (b"public" in cc or b"s-maxage" in cc or b"must-revalidate" in cc)))
    if cacheable:
        kept = policy.stored_headers(headers)
        own = [(k, v) for k, v in headers if k not in policy.HOP_BY_HOP]
    else:
        kept = own = [(k, v) for k, v in headers if k not in policy.CONNECTION_FIELDS]
    return Take(cacheable, names or (), private, kept,
                policy.freshness_lifetime(status, headers, response_time, negative_ttl),
                policy.initial_age(headers, request_time, response_time),
                policy.stale_windows(headers), own)


REFETCH = "refetch"  # on_origin: a 304 for another representation: ask again, unconditionally


def same_strong_validator(stored: Entry, headers: list) -> bool:
    """May a 304 update ``stored`` (RFC 9111 §4.3.4)?  Not when it carries a strong ETag
    other than the stored one: it validated another representation."""
    etag = policy.header(headers, b"etag")
    return etag is None or etag.startswith(b"W/") or etag == stored.etag


def refreshed(stored: Entry, headers: list, request_time: float, response_time: float,
              negative_ttl: float) -> Entry:
    """``stored`` with the fields of a 304 or a HEAD answer (RFC 9111 §3.2, §4.3.4): same
    body and file, new headers and freshness."""
    merged = policy.updated_headers(stored.headers, headers)
    return Entry(stored.key, stored.status, merged, stored.size, stored.file, request_time,
                 response_time, policy.freshness_lifetime(stored.status, merged, response_time, negative_ttl),
                 policy.initial_age(headers, request_time, response_time),
                 *policy.stale_windows(merged))


MAKE_STALE = "make-stale"  # on_head: the stored answer no longer matches the origin's


def on_head(stored: Entry | None, status: int, headers: list, content_length: int,
            request_time: float, response_time: float, negative_ttl: float) -> Entry | str | None:
    """What a 200 to a HEAD the cache sent does to the stored GET answer (RFC 9111
    §4.3.5): the stored entry freshened with its fields when the validators it carries
    (ETag, Last-Modified) match the stored ones and its Content-Length, if any, the
    stored size; else MAKE_STALE (nothing to compare counts as no match); None when
    nothing is stored or the status is not 200."""
    if stored is None or status != 200:
        return None
    etag = policy.header(headers, b"etag")
    last_modified = policy.header(headers, b"last-modified")
    if ((etag is None and last_modified is None and content_length < 0)
            or (etag is not None and etag != stored.etag)
            or (last_modified is not None and last_modified != stored.last_modified)
            or (content_length >= 0 and content_length != stored.size)):
        return MAKE_STALE
    return refreshed(stored, headers, request_time, response_time, negative_ttl)


# -- after_fill -----------------------------------------------------------------------
SERVE_ENTRY = "serve-entry"      # the fill revalidated (304) or stored: answer from its entry
SERVE_STALE = "serve-stale"      # the fill failed and the stale copy may stand in
ERROR = "error"                  # the fill failed: answer its error
OTHER_VARIANT = "other-variant"  # the answer varies and this client selects another variant
OWN_FETCH = "own-fetch"          # a private answer was for the client that asked: fetch again
AWAIT_ENTRY = "await-entry"      # every byte is in and being stored: answer from the entry
PASS_HEAD = "pass-head"          # pass the answer's head on (HEAD, 204, 304)
PASS = "pass"                    # pass the answer on, its body followed as it is written


def after_fill(failed: bool, stale: Entry | None, at: float, entry: Entry | None,
               names: tuple[bytes, ...], fill_variant: bytes, client_variant: bytes, private: bool,
               started: bool, head_only: bool, status: int, storing: bool = False) -> str:
    """A client's next step once the fill it waited on answered (or failed) at ``at``.
    ``stale``: the entry this client could fall back on; ``started``: this client's
    request started the fill (an answer for one client is never handed to another);
    ``fill_variant``/``client_variant``: the variant keys the fill's request and this
    client's select (compared when the answer varies, ``names``); ``storing``: the fill
    has its whole body and is storing it (fsync, rename).  A client that joins then waits
    for the entry: whoever had the last byte of a miss and asks again gets a HIT."""
    if failed:
        return SERVE_STALE if stale_if_error(stale, at) else ERROR
    if entry is not None:
        return SERVE_ENTRY
    if names and fill_variant != client_variant:
        return OTHER_VARIANT
    if private and not started:
        return OWN_FETCH
    if storing and not started:
        return AWAIT_ENTRY
    if head_only or status in (204, 304):
        return PASS_HEAD
    return PASS


def fill_not_modified(request_headers: list, status: int, headers: list) -> bool:
    """Does a client's conditional GET/HEAD match the 200 a fill is passing on (its ETag,
    Last-Modified)?  Then it gets a 304, as from a stored answer (RFC 9110 §13.2.1, the
    cache evaluating the conditionals on the representation it selected)."""
    return status == 200 and policy.not_modified(
        request_headers, policy.header(headers, b"etag"), policy.header(headers, b"last-modified"))


# -- shape ----------------------------------------------------------------------------
WHOLE = "whole"
NOT_MODIFIED = "not-modified"
UNSATISFIABLE = "unsatisfiable"


def shape(headers: list, entry: Entry) -> str | tuple[int, int]:
    """How ``entry`` answers a request with these fields: WHOLE, NOT_MODIFIED (304),
    UNSATISFIABLE (416), or (first, last) for a 206."""
    if policy.not_modified(headers, entry.etag, entry.last_modified):
        return NOT_MODIFIED
    rng = policy.header(headers, b"range")
    if rng is not None and entry.status == 200:
        if_range = policy.header(headers, b"if-range")
        if if_range is None or if_range in (entry.etag, entry.last_modified):
            r = policy.byte_range(rng, entry.size)
            if r == policy.UNSATISFIABLE:
                return UNSATISFIABLE
            if r is not None:
                return r
    return WHOLE


# -- other methods --------------------------------------------------------------------
CACHE = "cache"      # GET, HEAD: the cache answers (on_request)
PASS_ON = "pass-on"  # to the origin as it is, its answer back; nothing stored
REFUSE = "refuse"    # the route's methods do not include it: 405


def on_method(method: bytes, allowed: tuple[bytes, ...]) -> str:
    """What meets a request's method.  Only GET and HEAD are answered from the cache;
    unsafe methods (POST, PUT, DELETE, PATCH, unknown ones) and safe ones this cache
    does not store (OPTIONS, TRACE) go through to the origin (RFC 9111 §3, §4.4), unless
    ``allowed`` (the route's methods; empty: every method) leaves them out."""
    if allowed and method not in allowed and not (method == b"HEAD" and b"GET" in allowed):
        return REFUSE
    if method == b"GET" or method == b"HEAD":
        return CACHE
    return PASS_ON


def invalidated(method: bytes, status: int, headers: list, scheme: str, host: bytes,
                target: bytes) -> list[bytes]:
    """The targets (origin-form) whose stored answers the origin's answer to a passed-on
    request invalidates (RFC 9111 §4.4): after a non-error status (2xx, 3xx) to an unsafe
    method, the target URI, and the URIs of Location and Content-Location when they have
    the same origin (scheme and authority) as the target."""
    if method in policy.SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [target]
    for name in (b"location", b"content-location"):
        t = same_origin_target(policy.header(headers, name), scheme, host, target)
        if t is not None and t not in out:
            out.append(t)
    return out


def same_origin_target(ref: bytes | None, scheme: str, host: bytes, target: bytes) -> bytes | None:
    """A URI reference (resolved against the request's URI) as an origin-form target
    when it has the request's origin, else None."""
    if not ref:
        return None
    base = f"{scheme}://{host.decode('latin-1')}{target.decode('latin-1')}"
    try:
        parts = urlsplit(urljoin(base, ref.strip().decode("latin-1")))
    except ValueError:
        return None
    if parts.scheme.lower() != scheme or parts.netloc.lower() != host.decode("latin-1").lower():
        return None
    return ((parts.path or "/") + ("?" + parts.query if parts.query else "")).encode("latin-1")
