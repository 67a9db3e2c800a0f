"""The CDN's decisions alone (farts/cdn/decide.py): no sockets, no loop, time passed in."""
from __future__ import annotations

from farts.cdn import decide
from farts.cdn.decide import (
    FILL,
    HIT,
    JOIN,
    REVALIDATE,
    STALE,
    STALE_REFRESH,
    Revalidated,
    Take,
    UseStale,
    after_fill,
    on_origin,
    on_request,
    shape,
)
from farts.cdn.policy import format_date
from farts.cdn.store import Entry

T0 = 1_700_000_000.0  # when the origin answered
NEG_TTL = 30.0
MAX = 1 << 20


def take(headers, status=200, length=100, req_headers=(), negative_ttl=NEG_TTL):
    verdict = on_origin(b"k", status, list(headers), length, None, list(req_headers),
                        T0, T0, negative_ttl, MAX)
    assert isinstance(verdict, Take)
    return verdict


def stored(cc=b"max-age=60", extra=(), status=200, size=100):
    """An entry as the service stores it from an origin's answer at T0."""
    headers = [(b"cache-control", cc), *extra] if cc else list(extra)
    v = take(headers, status, size)
    assert v.cacheable
    return Entry(b"k", status, v.headers, size, "f", T0, T0, v.lifetime, v.initial_age, *v.windows)


# -- on_request ------------------------------------------------------------------------------
def test_nothing_stored_fills_or_joins_the_fill_in_flight():
    assert on_request(None, T0, False) == FILL
    assert on_request(None, T0, True) == JOIN


def test_fresh_is_a_hit_until_its_lifetime_ends():
    e = stored(b"max-age=60")
    assert on_request(e, T0, False) == HIT
    assert on_request(e, T0 + 59.9, True) == HIT  # a fill in flight does not matter
    # At the very edge, with no stale-while-revalidate: not stale-served (the service used
    # to serve it stale at exactly fresh_until, a zero-width window it had no right to).
    assert on_request(e, T0 + 60, False) == REVALIDATE


def test_age_from_the_origin_shortens_freshness():
    e = stored(b"max-age=60", [(b"age", b"50")])
    assert on_request(e, T0 + 9, False) == HIT
    assert on_request(e, T0 + 11, False) == REVALIDATE


def rcc(value: bytes) -> dict:
    from farts.cdn.policy import cache_control
    return cache_control([(b"cache-control", value)])


def test_request_max_age_and_min_fresh():
    """RFC 9111 §5.2.1.1 max-age: not a stored answer older than it; §5.2.1.3 min-fresh:
    only one still fresh for that long (an invalid argument counts as 0)."""
    e = stored(b"max-age=60")
    assert on_request(e, T0 + 10, False, rcc(b"max-age=20")) == HIT
    assert on_request(e, T0 + 30, False, rcc(b"max-age=20")) == REVALIDATE
    assert on_request(e, T0 + 30, True, rcc(b"max-age=20")) == JOIN
    assert on_request(e, T0 + 1, False, rcc(b"max-age=0")) == REVALIDATE
    assert on_request(e, T0 + 1, False, rcc(b"max-age=x")) == REVALIDATE
    assert on_request(e, T0 + 30, False, rcc(b"min-fresh=20")) == HIT
    assert on_request(e, T0 + 45, False, rcc(b"min-fresh=20")) == REVALIDATE
    assert on_request(e, T0 + 45, False, rcc(b"no-transform")) == HIT  # no bearing on it


def test_request_max_stale():
    """RFC 9111 §5.2.1.2: a stale answer up to max-stale seconds (any, without a value);
    §4.2.4 and §5.2.2.2/.8/.10: never when must-revalidate, proxy-revalidate or s-maxage."""
    e = stored(b"max-age=60")
    assert on_request(e, T0 + 70, False, rcc(b"max-stale=20")) == STALE_REFRESH
    assert on_request(e, T0 + 70, True, rcc(b"max-stale=20")) == STALE
    assert on_request(e, T0 + 90, False, rcc(b"max-stale=20")) == REVALIDATE
    assert on_request(e, T0 + 9999, False, rcc(b"max-stale")) == STALE_REFRESH
    assert on_request(e, T0 + 70, False, rcc(b"max-stale=20, max-age=65")) == REVALIDATE
    for cc in (b"max-age=60, must-revalidate", b"max-age=60, proxy-revalidate", b"s-maxage=60"):
        assert on_request(stored(cc), T0 + 70, False, rcc(b"max-stale")) == REVALIDATE


def test_request_no_cache_and_only_if_cached():
    """RFC 9111 §5.2.1.4 no-cache: not a stored answer without validation; §5.2.1.7
    only-if-cached: a stored answer or 504."""
    e = stored(b"max-age=60")
    assert on_request(e, T0 + 1, False, rcc(b"no-cache")) == REVALIDATE
    assert on_request(e, T0 + 1, False, rcc(b"only-if-cached")) == HIT
    assert on_request(None, T0, False, rcc(b"only-if-cached")) == decide.ONLY_CACHED
    assert on_request(e, T0 + 70, False, rcc(b"only-if-cached")) == decide.ONLY_CACHED
    assert on_request(e, T0 + 70, False, rcc(b"only-if-cached, max-stale")) == STALE_REFRESH
    assert on_request(e, T0 + 1, False, rcc(b"only-if-cached, no-cache")) == decide.ONLY_CACHED
    swr = stored(b"max-age=60, stale-while-revalidate=30")
    assert on_request(swr, T0 + 70, False, rcc(b"only-if-cached")) == STALE_REFRESH


def test_stale_within_stale_while_revalidate_is_served_and_refreshed_once():
    e = stored(b"max-age=60, stale-while-revalidate=30")
    assert on_request(e, T0 + 70, False) == STALE_REFRESH
    assert on_request(e, T0 + 70, True) == STALE   # the refresh is already in flight
    assert on_request(e, T0 + 90, False) == STALE_REFRESH
    assert on_request(e, T0 + 91, False) == REVALIDATE  # beyond the window
    assert on_request(e, T0 + 91, True) == JOIN


def test_must_revalidate_and_no_cache_allow_no_stale_answer():
    for cc in (b"max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=30",
               b"max-age=60, proxy-revalidate, stale-while-revalidate=30"):
        e = stored(cc)
        assert (e.swr, e.sie) == (0.0, 0.0)
        assert on_request(e, T0 + 61, False) == REVALIDATE
        assert after_fill(True, e, T0 + 61, None, (), b"", b"", False, True, False, 0) == decide.ERROR
    e = stored(b"no-cache, max-age=60, stale-while-revalidate=30")
    assert e.lifetime == 0.0
    assert on_request(e, T0, False) == REVALIDATE  # stored, but asked again every time


# -- on_origin -----------------------------------------------------------------------------------
def test_private_and_set_cookie_answers_are_not_stored_and_marked_private():
    for headers in ([(b"cache-control", b"private, max-age=60")],
                    [(b"cache-control", b"max-age=60"), (b"set-cookie", b"a=1")]):
        v = take(headers)
        assert not v.cacheable and v.private
        assert v.headers == headers  # passed on as they came (Set-Cookie included)
    v = take([(b"cache-control", b"max-age=60"), (b"transfer-encoding", b"chunked")])
    assert v.cacheable and not v.private
    assert all(k != b"transfer-encoding" for k, _ in v.headers)


def test_an_answer_to_an_authorized_request_is_for_that_client_only():
    """RFC 9111 §3.5: an answer to a request with Authorization is reused (stored, or
    handed to other waiting clients) only with public, s-maxage or must-revalidate."""
    auth = [(b"authorization", b"Bearer a")]
    v = take([(b"cache-control", b"max-age=60")], req_headers=auth)
    assert not v.cacheable and v.private
    for cc in (b"public, max-age=60", b"s-maxage=60", b"max-age=60, must-revalidate"):
        v = take([(b"cache-control", cc)], req_headers=auth)
        assert v.cacheable and not v.private


def test_negative_caching_uses_negative_ttl_unless_told():
    v = take([], status=404)
    assert v.cacheable and v.lifetime == NEG_TTL
    assert not take([], status=404, negative_ttl=0).cacheable
    v = take([(b"cache-control", b"max-age=5")], status=404, negative_ttl=0)
    assert v.cacheable and v.lifetime == 5
    assert not take([(b"cache-control", b"max-age=60")], status=500).cacheable


def test_too_large_and_authorized_answers_are_not_stored():
    assert not take([(b"cache-control", b"max-age=60")], length=MAX + 1).cacheable
    auth = [(b"authorization", b"x")]
    assert not take([(b"cache-control", b"max-age=60")], req_headers=auth).cacheable
    assert take([(b"cache-control", b"public, max-age=60")], req_headers=auth).cacheable


def test_vary_is_stored_by_variant_vary_star_is_not():
    """RFC 9111 §4.1: any Vary is stored by variant; Vary: * always fails to match."""
    v = take([(b"cache-control", b"max-age=60"), (b"vary", b"Accept-Encoding")])
    assert v.cacheable and v.names == (b"accept-encoding",)
    for vary, names in ((b"Cookie", (b"cookie",)),
                        (b"accept-encoding, user-agent", (b"accept-encoding", b"user-agent"))):
        v = take([(b"cache-control", b"max-age=60"), (b"vary", vary)])
        assert v.cacheable and v.names == names
    v = take([(b"cache-control", b"max-age=60"), (b"vary", b"*")])
    assert not v.cacheable and v.names == ()


def test_304_from_origin_refreshes_the_stale_entry():
    e = stored(b"max-age=60", [(b"etag", b'"v1"'), (b"content-type", b"image/png")], size=7)
    later = T0 + 100
    v = on_origin(b"k", 304, [(b"cache-control", b"max-age=120"), (b"etag", b'"v1"')], 0, e,
                  [], later, later, NEG_TTL, MAX)
    assert isinstance(v, Revalidated)
    n = v.entry
    assert (n.file, n.size, n.status) == (e.file, 7, 200)
    assert (b"content-type", b"image/png") in n.headers
    assert (b"cache-control", b"max-age=120") in n.headers
    assert (b"cache-control", b"max-age=60") not in n.headers
    assert on_request(n, later + 119, False) == HIT
    assert on_request(n, later + 121, False) == REVALIDATE
    # A 304 to an unconditional fill is only passed on.
    assert isinstance(on_origin(b"k", 304, [], 0, None, [], later, later, NEG_TTL, MAX), Take)


def test_origin_error_stands_in_the_stale_copy_within_stale_if_error():
    e = stored(b"max-age=60, stale-if-error=100")
    v = on_origin(b"k", 503, [], 0, e, [], T0 + 150, T0 + 150, NEG_TTL, MAX)
    assert isinstance(v, UseStale) and v.status == 503
    v = on_origin(b"k", 503, [], 0, e, [], T0 + 161, T0 + 161, NEG_TTL, MAX)
    assert isinstance(v, Take) and not v.cacheable  # beyond the window: the error itself
    v = on_origin(b"k", 404, [], 0, e, [], T0 + 150, T0 + 150, NEG_TTL, MAX)
    assert isinstance(v, Take)  # not an error of the origin's: the new answer


def test_conditional_headers_of_a_fill():
    e = stored(b"max-age=60", [(b"etag", b'"v1"'), (b"last-modified", format_date(T0 - 10))])
    assert decide.conditional_headers([(b"accept-encoding", b"gzip")], e) == [
        (b"accept-encoding", b"gzip"), (b"if-none-match", b'"v1"'),
        (b"if-modified-since", format_date(T0 - 10))]
    assert decide.conditional_headers([], None) == []


def test_a_fill_forwards_the_clients_fields_but_not_its_conditionals():
    """RFC 9111 §4.3.1: the cache revalidates with its own stored validators; a client's
    conditionals and Range (RFC 9110 §13.1, §14.2) are answered by the cache from the
    whole object, so they are not forwarded on a fill.  The client's other end-to-end
    fields are (RFC 9110 §7.6)."""
    forwarded = [(b"x-test", b"t"), (b"if-none-match", b'"mine"'), (b"range", b"bytes=0-1"),
                 (b"if-modified-since", b"x"), (b"if-match", b"*"), (b"if-unmodified-since", b"x"),
                 (b"if-range", b'"mine"'), (b"cookie", b"c=1")]
    assert decide.conditional_headers(forwarded, None) == [(b"x-test", b"t"), (b"cookie", b"c=1")]
    e = stored(b"max-age=60", [(b"etag", b'"v1"')])
    assert decide.conditional_headers(forwarded, e) == [(b"x-test", b"t"), (b"cookie", b"c=1"),
                                                        (b"if-none-match", b'"v1"')]


def test_variants_to_drop_bounds_a_uri():
    """RFC 9111 §4.1 lets a cache keep several variants; this one keeps at most a bound."""
    assert decide.variants_to_drop([], b"a", 2) == []
    assert decide.variants_to_drop([b"a"], b"b", 2) == []
    assert decide.variants_to_drop([b"a", b"b"], b"c", 2) == [b"a"]
    assert decide.variants_to_drop([b"a", b"b"], b"a", 2) == []  # a replacement is no more
    assert decide.variants_to_drop([b"a", b"b", b"c"], b"d", 1) == [b"a", b"b", b"c"]


# -- after_fill ----------------------------------------------------------------------------------
def after(failed=False, stale=None, at=T0, entry=None, names=(), fill_ae=b"", client_ae=b"",
          private=False, started=True, head_only=False, status=200, storing=False):
    return after_fill(failed, stale, at, entry, names, fill_ae, client_ae, private, started,
                      head_only, status, storing)


def test_after_a_failed_fill_stale_if_error_or_the_error():
    e = stored(b"max-age=60, stale-if-error=100")
    assert after(failed=True, stale=e, at=T0 + 160) == decide.SERVE_STALE
    assert after(failed=True, stale=e, at=T0 + 161) == decide.ERROR
    assert after(failed=True, stale=None) == decide.ERROR
    assert after(failed=True, stale=stored(b"max-age=60"), at=T0 + 60) == decide.ERROR  # no window


def test_after_a_revalidation_the_entry_answers():
    e = stored()
    assert after(entry=e, started=False) == decide.SERVE_ENTRY


def test_after_a_varying_fill_another_variant_is_fetched_for_itself():
    names = (b"accept-encoding",)
    assert after(names=names, fill_ae=b"gzip", client_ae=b"") == decide.OTHER_VARIANT
    assert after(names=names, fill_ae=b"gzip", client_ae=b"gzip") == decide.PASS
    assert after(names=(), fill_ae=b"gzip", client_ae=b"") == decide.PASS


def test_a_private_answer_goes_only_to_the_client_that_asked():
    assert after(private=True, started=True) == decide.PASS
    assert after(private=True, started=False) == decide.OWN_FETCH
    assert after(private=False, started=False) == decide.PASS


def test_a_client_joining_a_fill_that_is_being_stored_waits_for_the_entry():
    assert after(storing=True, started=False) == decide.AWAIT_ENTRY
    assert after(storing=True, started=False, head_only=True) == decide.AWAIT_ENTRY
    assert after(storing=True, started=True) == decide.PASS   # (its own fill: it had the bytes)
    names = (b"accept-encoding",)
    assert after(storing=True, started=False, names=names, fill_ae=b"gzip",
                 client_ae=b"") == decide.OTHER_VARIANT
    assert after(storing=True, started=False, private=True) == decide.OWN_FETCH


def test_heads_without_a_body():
    assert after(head_only=True) == decide.PASS_HEAD
    assert after(status=204) == decide.PASS_HEAD
    assert after(status=304) == decide.PASS_HEAD
    assert after(status=404) == decide.PASS


# -- shape -----------------------------------------------------------------------------------------
LM = format_date(T0 - 1000)


def test_conditional_requests_answer_304():
    e = stored(b"max-age=60", [(b"etag", b'"v1"'), (b"last-modified", LM)])
    assert shape([], e) == decide.WHOLE
    assert shape([(b"if-none-match", b'"v1"')], e) == decide.NOT_MODIFIED
    assert shape([(b"if-none-match", b'W/"v1", "v2"')], e) == decide.NOT_MODIFIED
    assert shape([(b"if-none-match", b"*")], e) == decide.NOT_MODIFIED
    assert shape([(b"if-none-match", b'"v2"')], e) == decide.WHOLE
    # If-None-Match wins over If-Modified-Since.
    assert shape([(b"if-none-match", b'"v2"'), (b"if-modified-since", format_date(T0))], e) == decide.WHOLE
    assert shape([(b"if-modified-since", format_date(T0))], e) == decide.NOT_MODIFIED
    assert shape([(b"if-modified-since", format_date(T0 - 2000))], e) == decide.WHOLE


def test_ranges_answer_206_or_416_or_whole():
    e = stored(b"max-age=60", [(b"etag", b'"v1"')], size=100)
    assert shape([(b"range", b"bytes=0-9")], e) == (0, 9)
    assert shape([(b"range", b"bytes=90-")], e) == (90, 99)
    assert shape([(b"range", b"bytes=-10")], e) == (90, 99)
    assert shape([(b"range", b"bytes=50-500")], e) == (50, 99)
    assert shape([(b"range", b"bytes=100-")], e) == decide.UNSATISFIABLE
    assert shape([(b"range", b"bytes=0-1,5-6")], e) == decide.WHOLE  # several: the whole
    assert shape([(b"range", b"items=0-1")], e) == decide.WHOLE
    assert shape([(b"range", b"bytes=0-9"), (b"if-range", b'"v1"')], e) == (0, 9)
    assert shape([(b"range", b"bytes=0-9"), (b"if-range", b'"v0"')], e) == decide.WHOLE
    neg = stored(None, status=404, size=100)
    assert shape([(b"range", b"bytes=0-9")], neg) == decide.WHOLE  # ranges of a 200 only


# -- other methods (RFC 9111 §3, §4.4) -----------------------------------------------
def test_on_method_passes_every_other_method_on():
    """RFC 9111 §3: a cache stores (and so answers) only what it understands; everything
    else, unsafe or unknown or OPTIONS, is forwarded (RFC 9110 §9.2.1)."""
    for m in (b"GET", b"HEAD"):
        assert decide.on_method(m, ()) is decide.CACHE
    for m in (b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"MKCOL", b"FROB"):
        assert decide.on_method(m, ()) is decide.PASS_ON


def test_on_method_route_restriction():
    """RFC 9110 §15.5.6: methods a target does not answer get 405; HEAD comes with GET
    (RFC 9110 §9.3.2)."""
    allowed = (b"GET", b"POST")
    assert decide.on_method(b"POST", allowed) is decide.PASS_ON
    assert decide.on_method(b"HEAD", allowed) is decide.CACHE
    assert decide.on_method(b"PUT", allowed) is decide.REFUSE
    assert decide.on_method(b"OPTIONS", allowed) is decide.REFUSE


def test_invalidated_targets():
    """RFC 9111 §4.4: after a non-error status to an unsafe method, the target URI; the
    Location and Content-Location URIs only when they share the target's origin."""
    args = ("http", b"cdn.example:8080", b"/media/a?x=1")
    assert decide.invalidated(b"POST", 200, [], *args) == [b"/media/a?x=1"]
    assert decide.invalidated(b"DELETE", 302, [], *args) == [b"/media/a?x=1"]
    for status in (100, 400, 404, 500, 503):  # errors (and interim answers) invalidate nothing
        assert decide.invalidated(b"POST", status, [], *args) == []
    for safe in (b"GET", b"HEAD", b"OPTIONS", b"TRACE"):
        assert decide.invalidated(safe, 200, [], *args) == []
    hs = [(b"location", b"b"), (b"content-location", b"http://CDN.example:8080/media/c?q")]
    assert decide.invalidated(b"PUT", 201, hs, *args) == [b"/media/a?x=1", b"/media/b", b"/media/c?q"]
    for other in (b"https://cdn.example:8080/media/b", b"http://cdn.example/media/b",
                  b"http://evil.example:8080/media/b", b"//evil.example/x"):
        assert decide.invalidated(b"PUT", 201, [(b"location", other)], *args) == [b"/media/a?x=1"]
    assert decide.invalidated(b"PATCH", 204, [(b"location", b"/media/a?x=1")], *args) == [b"/media/a?x=1"]


# -- HEAD (RFC 9110 §9.3.2, RFC 9111 §4.3.5) -----------------------------------------
def test_head_that_would_fetch_asks_with_head():
    """RFC 9110 §9.3.2: HEAD wants no content: what would fetch the body goes as HEAD."""
    assert decide.for_head(FILL) == decide.HEAD_THROUGH
    assert decide.for_head(REVALIDATE) == decide.HEAD_THROUGH
    for action in (HIT, STALE, STALE_REFRESH, JOIN, decide.ONLY_CACHED):
        assert decide.for_head(action) == action


def test_on_head_freshens_or_makes_stale():
    """RFC 9111 §4.3.5: matching validators (and Content-Length) update the stored fields
    and freshness (§3.2); a mismatch makes the stored answer stale."""
    e = stored(b"max-age=60", [(b"etag", b'"a"'), (b"x-v", b"1")], size=100)
    fresh = decide.on_head(e, 200, [(b"etag", b'"a"'), (b"x-v", b"2"), (b"cache-control", b"max-age=600")],
                           100, T0 + 100, T0 + 100, NEG_TTL)
    assert (b"x-v", b"2") in fresh.headers and (b"x-v", b"1") not in fresh.headers
    assert fresh.file == e.file and fresh.size == 100 and fresh.fresh_until == T0 + 700
    for hs, length in (([(b"etag", b'"b"')], 100), ([(b"etag", b'"a"')], 99), ([], -1),
                       ([(b"last-modified", format_date(T0))], -1)):
        assert decide.on_head(e, 200, hs, length, T0, T0, NEG_TTL) == decide.MAKE_STALE
    assert decide.on_head(e, 404, [(b"etag", b'"a"')], 100, T0, T0, NEG_TTL) is None
    assert decide.on_head(None, 200, [(b"etag", b'"a"')], 100, T0, T0, NEG_TTL) is None


def test_a_fills_answer_meets_the_clients_conditionals():
    """RFC 9110 §13.2.1, §13.1.2 (If-None-Match, weak comparison), §13.1.3."""
    hs = [(b"etag", b'W/"a"'), (b"last-modified", format_date(T0))]
    assert decide.fill_not_modified([(b"if-none-match", b'"a"')], 200, hs)
    assert not decide.fill_not_modified([(b"if-none-match", b'"b"')], 200, hs)
    assert decide.fill_not_modified([(b"if-modified-since", format_date(T0 + 1))], 200, hs)
    assert not decide.fill_not_modified([(b"if-modified-since", format_date(T0 - 1))], 200, hs)
    assert not decide.fill_not_modified([(b"if-none-match", b'"a"')], 404, hs)
    assert not decide.fill_not_modified([], 200, hs)


def test_a_304_for_another_representation_does_not_update():
    """RFC 9111 §4.3.4: a 304 with a strong validator updates only stored responses with
    the same one; a weak or absent ETag leaves the choice to the request's validators."""
    e = stored(b"max-age=60", [(b"etag", b'"a"')])
    assert on_origin(b"k", 304, [(b"etag", b'"b"')], -1, e, [], T0, T0, NEG_TTL, MAX) == decide.REFETCH
    for hs in ([(b"etag", b'"a"')], [(b"etag", b'W/"b"')], []):
        assert isinstance(on_origin(b"k", 304, hs, -1, e, [], T0, T0, NEG_TTL, MAX), Revalidated)


# -- partial content (farts/cdn/partial.py) ---------------------------------------------
def test_content_range_parses_one_known_length_span():
    from farts.cdn.partial import content_range
    assert content_range(b"bytes 0-99/1000") == (0, 99, 1000)
    # RFC 9110 §14.4: an unknown complete length, a span past it, or another unit: not
    # one storable span.
    for bad in (b"bytes 0-99/*", b"bytes 0-1000/1000", b"bytes 99-0/1000", b"items 0-1/2", b"bytes */1000", None):
        assert content_range(bad) is None


def test_origin_range_widens_the_clients_range():
    from farts.cdn.partial import origin_range
    assert origin_range(b"bytes=0-99", None, 65536) == b"bytes=0-65535"
    assert origin_range(b"bytes=100-200000", None, 65536) == b"bytes=100-200000"
    assert origin_range(b"bytes=1000-1099", 5000, 65536) == b"bytes=1000-4999"   # (the length known)
    assert origin_range(b"bytes=500-", None, 65536) == b"bytes=500-"
    assert origin_range(b"bytes=-10", None, 65536) == b"bytes=-65536"
    # Several ranges, other units, malformed: the whole object instead (RFC 9110 §14.2).
    for other in (b"bytes=0-1,5-6", b"items=0-1", b"bytes=5-1", b"bytes=x-", b"bytes=-"):
        assert origin_range(other, None, 65536) is None


def test_spans_merge_and_cover():
    from farts.cdn.partial import complete, covers, merged
    spans = merged([], 100, 199)
    spans = merged(spans, 300, 399)
    assert spans == [(100, 199), (300, 399)]
    assert covers(spans, 120, 180) and not covers(spans, 150, 350)
    spans = merged(spans, 200, 299)   # adjacent on both sides: one span
    assert spans == [(100, 399)] and covers(spans, 150, 350)
    assert not complete(spans, 400) and complete(merged(spans, 0, 150), 400)


def test_a_206_is_stored_combined_or_passed():
    from farts.cdn.partial import COMBINE, NEW, PASS, Partial, on_partial
    part = [(b"content-range", b"bytes 0-99/1000"), (b"etag", b'"v1"'), (b"cache-control", b"max-age=60")]
    assert on_partial(None, 206, part, 100, [], 0.0) == (NEW, (0, 99, 1000))   # RFC 9111 §3.3
    stored = Partial(b"k", [], 1000, b'"v1"', [(0, 99)], "f", T0, 60.0, 0.0)
    second = [(b"content-range", b"bytes 100-199/1000"), (b"etag", b'"v1"'), (b"cache-control", b"max-age=60")]
    assert on_partial(stored, 206, second, 100, [], 0.0) == (COMBINE, (100, 199, 1000))   # §3.4
    # §3.4: combined only with the same strong validator; another one starts anew.
    other = [(k, b'"v2"' if k == b"etag" else v) for k, v in second]
    assert on_partial(stored, 206, other, 100, [], 0.0)[0] == NEW
    weak = [(k, b'W/"v1"' if k == b"etag" else v) for k, v in second]
    assert on_partial(stored, 206, weak, 100, [], 0.0)[0] == PASS
    assert on_partial(None, 206, [h for h in part if h[0] != b"etag"], 100, [], 0.0)[0] == PASS
    # Not storable as a whole would not be (§3.3), several parts, a short length, a 200.
    assert on_partial(None, 206, [*part[:2], (b"cache-control", b"no-store")], 100, [], 0.0)[0] == PASS
    assert on_partial(None, 206, part, 50, [], 0.0)[0] == PASS
    assert on_partial(None, 206, [(b"content-type", b"multipart/byteranges; boundary=x"), *part[1:]],
                      100, [], 0.0)[0] == PASS
    assert on_partial(None, 200, part, 100, [], 0.0)[0] == PASS
