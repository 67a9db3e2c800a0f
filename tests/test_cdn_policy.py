"""The CDN's pure parts: RFC 9111 freshness and storability, conditional requests, byte
ranges (against hand-computed cases and, for ranges, a brute-force reading of RFC 9110
§14.1.2), and the cache key layout."""
from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from farts.cdn import policy
from farts.cdn.key import accept_encoding, base_key, base_of, parse_vary, tenant_prefix, variant_key

NOW = 1_700_000_000.0


def h(**fields: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in fields.items()]


def test_freshness_lifetime_precedence():
    date = formatdate(NOW, usegmt=True)
    assert policy.freshness_lifetime(200, h(Cache_Control="max-age=60, s-maxage=600"), NOW, 0) == 600
    assert policy.freshness_lifetime(200, h(Cache_Control="max-age=60"), NOW, 0) == 60
    assert policy.freshness_lifetime(200, h(Cache_Control="max-age=60, no-cache"), NOW, 0) == 0
    assert policy.freshness_lifetime(200, h(Date=date, Expires=formatdate(NOW + 90, usegmt=True)), NOW, 0) == 90
    assert policy.freshness_lifetime(200, h(Expires="0"), NOW, 0) == 0  # invalid date: already expired
    # Heuristic: 10% of the time since Last-Modified.
    lm = formatdate(NOW - 1000, usegmt=True)
    assert policy.freshness_lifetime(200, h(Date=date, Last_Modified=lm), NOW, 0) == 100
    assert policy.freshness_lifetime(404, [], NOW, 30) == 30
    assert policy.freshness_lifetime(200, h(Cache_Control="max-age=abc"), NOW, 0) == 0


def test_storable():
    assert policy.storable(b"GET", 200, [], h(Cache_Control="max-age=60"), 0)
    assert not policy.storable(b"POST", 200, [], h(Cache_Control="max-age=60"), 0)
    assert not policy.storable(b"GET", 200, [], h(Cache_Control="private, max-age=60"), 0)
    assert not policy.storable(b"GET", 200, [], h(Cache_Control="no-store"), 0)
    assert not policy.storable(b"GET", 200, [], h(Cache_Control="max-age=60", Set_Cookie="a=1"), 0)
    assert not policy.storable(b"GET", 200, [], h(Vary="*"), 0)
    assert not policy.storable(b"GET", 200, h(Authorization="x"), h(Cache_Control="max-age=60"), 0)
    assert policy.storable(b"GET", 200, h(Authorization="x"), h(Cache_Control="s-maxage=60"), 0)
    assert not policy.storable(b"GET", 404, [], [], 0)
    assert policy.storable(b"GET", 404, [], [], 10)
    assert not policy.storable(b"GET", 500, [], h(Cache_Control="max-age=60"), 0)


def test_cdn_cache_control_takes_precedence():
    """RFC 9213 §2.1, §3: a CDN uses CDN-Cache-Control when it has a valid non-empty
    value, ignoring Cache-Control and Expires; else Cache-Control as usual."""
    date = formatdate(NOW, usegmt=True)
    both = h(Cdn_Cache_Control="max-age=600", Cache_Control="no-store, max-age=5")
    assert policy.storable(b"GET", 200, [], both, 0)
    assert policy.freshness_lifetime(200, both, NOW, 0) == 600
    veto = h(Cdn_Cache_Control="no-store", Cache_Control="max-age=600")
    assert not policy.storable(b"GET", 200, [], veto, 0)
    priv = h(Cdn_Cache_Control="private", Cache_Control="public, max-age=600")
    assert not policy.storable(b"GET", 200, [], priv, 0)
    expires = h(Date=date, Expires=formatdate(NOW + 90, usegmt=True), Cdn_Cache_Control="must-revalidate")
    assert policy.freshness_lifetime(200, expires, NOW, 0) == 0  # Expires ignored
    assert policy.freshness_lifetime(200, h(Cdn_Cache_Control="", Cache_Control="max-age=7"), NOW, 0) == 7
    swr = h(Cdn_Cache_Control="max-age=1, stale-while-revalidate=30",
            Cache_Control="max-age=1, must-revalidate")
    assert policy.stale_windows(swr) == (30, 0)
    assert policy.stale_windows(h(Cdn_Cache_Control="max-age=1, proxy-revalidate",
                                  Cache_Control="stale-if-error=9")) == (0, 0)


def test_storable_statuses():
    """RFC 9111 §3: a response may be stored when its status is heuristically cacheable
    (RFC 9110 §15.1) or it has explicit freshness (max-age, s-maxage, Expires) or public;
    §4.2.2: heuristic freshness only for heuristically cacheable statuses."""
    lm = formatdate(NOW - 1000, usegmt=True)
    for status in (302, 307, 403):
        assert not policy.storable(b"GET", status, [], [], 0)
        assert not policy.storable(b"GET", status, [], h(Last_Modified=lm), 0)
        assert policy.storable(b"GET", status, [], h(Cache_Control="max-age=60"), 0)
        assert policy.storable(b"GET", status, [], h(Expires=formatdate(NOW + 9, usegmt=True)), 0)
        assert policy.freshness_lifetime(status, h(Last_Modified=lm), NOW, 0) == 0
    assert policy.storable(b"GET", 302, [], h(Cdn_Cache_Control="s-maxage=9"), 0)
    for status in (206, 304, 401, 500, 503):
        assert not policy.storable(b"GET", status, [], h(Cache_Control="public, max-age=60"), 0)
    assert policy.freshness_lifetime(301, h(Last_Modified=lm), NOW, 0) == 100  # heuristic


def test_age_and_stale_windows():
    date = formatdate(NOW - 10, usegmt=True)
    assert policy.initial_age(h(Date=date, Age="5"), NOW - 1, NOW) == 10
    assert policy.initial_age(h(Age="30"), NOW - 1, NOW) == 31
    assert policy.stale_windows(h(Cache_Control="max-age=1, stale-while-revalidate=30, stale-if-error=60")) == (30, 60)
    assert policy.stale_windows(h(Cache_Control="max-age=1, must-revalidate, stale-while-revalidate=30")) == (0, 0)


def test_conditionals():
    lm = formatdate(NOW, usegmt=True).encode()
    assert policy.not_modified(h(If_None_Match='"a", W/"b"'), b'"b"', None)
    assert policy.not_modified(h(If_None_Match="*"), b'"b"', None)
    assert not policy.not_modified(h(If_None_Match='"a"'), b'"b"', lm)
    # If-None-Match wins over If-Modified-Since.
    assert not policy.not_modified(h(If_None_Match='"a"', If_Modified_Since=lm.decode()), b'"b"', lm)
    assert policy.not_modified(h(If_Modified_Since=formatdate(NOW + 1, usegmt=True)), None, lm)
    assert not policy.not_modified(h(If_Modified_Since=formatdate(NOW - 1, usegmt=True)), None, lm)
    assert not policy.not_modified(h(If_Modified_Since="garbage"), None, lm)


def test_updated_headers_replace_what_the_304_carries():
    stored = h(Etag='"1"', Cache_Control="max-age=1", Content_Type="text/plain")
    merged = policy.updated_headers(stored, h(Cache_Control="max-age=60", Date="x", Connection="close"))
    assert dict(merged) == {b"etag": b'"1"', b"content-type": b"text/plain", b"cache-control": b"max-age=60"}


def reference_range(spec: str, size: int):
    """RFC 9110 §14.1.2 for one range, read literally."""
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first, sep, last = spec[6:].partition("-")
    if not sep:
        return None
    if first == "":
        if not last.isdigit():
            return None
        n = int(last)
        return policy.UNSATISFIABLE if n == 0 or size == 0 else (max(0, size - n), size - 1)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    a = int(first)
    if last and int(last) < a:
        return None
    if a >= size:
        return policy.UNSATISFIABLE
    return a, min(int(last) if last else size - 1, size - 1)


@given(st.one_of(st.integers(0, 300).map(str), st.just("")), st.one_of(st.integers(0, 300).map(str), st.just("")),
       st.integers(0, 200), st.sampled_from(["bytes=", "bytes=", "items=", "bytes=1-2,"]))
def test_byte_range_against_the_rfc(first, last, size, unit):
    spec = f"{unit}{first}-{last}"
    assert policy.byte_range(spec.encode(), size) == reference_range(spec, size)


def test_byte_range_cases():
    assert policy.byte_range(b"bytes=0-0", 10) == (0, 0)
    assert policy.byte_range(b"bytes=5-", 10) == (5, 9)
    assert policy.byte_range(b"bytes=-3", 10) == (7, 9)
    assert policy.byte_range(b"bytes=-30", 10) == (0, 9)
    assert policy.byte_range(b"bytes=8-100", 10) == (8, 9)
    assert policy.byte_range(b"bytes=10-", 10) == policy.UNSATISFIABLE
    assert policy.byte_range(b"bytes=3-1", 10) is None
    assert policy.byte_range(b"bytes=0-1,3-4", 10) is None
    assert policy.byte_range(b"lines=1-2", 10) is None


def test_keys():
    k = base_key("demo", b"/media/a.jpg?x=1", "https", b"cdn.example")
    assert k == b"demo\0/media/a.jpg?x=1\0https\0cdn.example"
    assert k.startswith(tenant_prefix("demo", "/media/"))
    assert not k.startswith(tenant_prefix("dem"))  # one tenant id is never another's prefix
    assert not base_key("demo2", b"/media/a.jpg", "https", b"h").startswith(tenant_prefix("demo"))
    assert accept_encoding(b"gzip;q=1.0, br, identity;q=0, GZIP") == b"br,gzip"
    assert variant_key(k, (b"accept-encoding",), {b"accept-encoding": b"br, gzip"}.get) == k + b"\0ae=br,gzip"
    assert variant_key(k, (), None) == k
    assert parse_vary(b"Accept-Encoding") == (b"accept-encoding",)
    assert parse_vary(None) == ()


def test_vary_on_any_request_field():
    """RFC 9111 §4.1: a stored answer is selected by the values of every field its Vary
    names (whitespace in list values normalized); Vary: * never matches (not stored)."""
    k = base_key("demo", b"/m/a", "https", b"h")
    assert parse_vary(b"Accept-Encoding, X-Lang,cookie") == (b"accept-encoding", b"cookie", b"x-lang")
    assert parse_vary(b"X-Lang, *") is None
    names = parse_vary(b"X-Lang, Accept-Encoding")
    fields = {b"x-lang": b"en,  fr", b"accept-encoding": b"gzip"}
    assert variant_key(k, names, fields.get) == k + b"\0ae=gzip\0x-lang=en,fr"
    assert variant_key(k, names, {b"x-lang": b"en, fr", b"accept-encoding": b"gzip"}.get) == \
        variant_key(k, names, fields.get)
    assert variant_key(k, names, {b"x-lang": b"de"}.get) == k + b"\0ae=\0x-lang=de"
    assert variant_key(k, names, {}.get) != variant_key(k, names, {b"x-lang": b"de"}.get)
    assert base_of(variant_key(k, names, fields.get)) == k and base_of(k) == k


def test_origin_config_errors_name_the_key():
    import pytest

    from farts.config import ConfigError, parse
    with pytest.raises(ConfigError, match=r"x.toml: routes\[0\]\.origin: no CDN origin named 'nope'"):
        parse('[[routes]]\nprefix = "/m/"\nkind = "cdn"\norigin = "nope"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml: cdn\.origins\.a\.url: expected an http:// or https:// URL"):
        parse('[cdn.origins.a]\nurl = "ftp://x"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"cdn\.origins\.a\.url: required for kind = \"http\""):
        parse('[cdn.origins.a]\nkind = "http"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"cdn\.origins\.b\.bucket: required for kind = \"s3\""):
        parse('[cdn.origins.b]\nkind = "s3"\nurl = "http://127.0.0.1:9000"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"cdn\.capacity_bytes: expected a positive number"):
        parse('[cdn]\ncapacity_bytes = 0\n', "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml: routes\[0\]\.methods: must include \"GET\""):
        parse('[cdn.origins.a]\nurl = "http://o"\n[[routes]]\nprefix = "/m/"\nkind = "cdn"\n'
              'origin = "a"\nmethods = ["POST"]\n', "x.toml")


def test_forward_headers_end_to_end_only():
    """RFC 9110 §7.6.1: hop-by-hop fields and those named in Connection are not
    forwarded; §7.6.3: a proxy appends its Via; X-Forwarded-For gains the client."""
    hs = [(b"host", b"edge"), (b"connection", b"keep-alive, X-Secret"), (b"keep-alive", b"5"),
          (b"x-secret", b"s"), (b"te", b"trailers"), (b"transfer-encoding", b"chunked"),
          (b"content-length", b"3"), (b"upgrade", b"h2c"), (b"x-test", b"t1"),
          (b"cookie", b"a=1"), (b"via", b"1.0 first"), (b"x-forwarded-for", b"10.0.0.1"),
          (b"content-type", b"text/x")]
    out = policy.forward_headers(hs, "127.0.0.9")
    assert out == [(b"x-test", b"t1"), (b"cookie", b"a=1"), (b"content-type", b"text/x"),
                   (b"via", b"1.0 first, 1.1 farts-edge"), (b"x-forwarded-for", b"10.0.0.1, 127.0.0.9")]
    assert policy.forward_headers([], "::1") == [(b"via", b"1.1 farts-edge"), (b"x-forwarded-for", b"::1")]


def test_response_headers_drop_connection_fields():
    """RFC 9110 §7.6.1 for answers passed on."""
    hs = [(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"transfer-encoding", b"chunked"),
          (b"location", b"/a"), (b"set-cookie", b"s=1")]
    assert policy.response_headers(hs) == [(b"location", b"/a"), (b"set-cookie", b"s=1")]


def test_private_and_no_cache_with_field_names():
    """RFC 9111 §5.2.2.7: a qualified private keeps only the named fields out of a shared
    cache (the rest may be stored); §5.2.2.4: a qualified no-cache forbids sending the
    named fields from the cache without revalidation (this cache keeps them out too) and
    leaves the rest reusable while fresh."""
    hs = h(Cache_Control='max-age=60, private="X-User, x-plan", no-cache="X-Token"',
           X_User="alice", X_Plan="pro", X_Token="t", Etag='"e"')
    assert policy.storable(b"GET", 200, [], hs, 0)
    assert policy.freshness_lifetime(200, hs, NOW, 0) == 60
    assert not policy.must_revalidate(hs)
    assert [k for k, _ in policy.stored_headers(hs)] == [b"cache-control", b"etag"]
    assert not policy.storable(b"GET", 200, [], h(Cache_Control='private=""'), 0)
    assert not policy.storable(b"GET", 200, [], h(Cache_Control="private, max-age=60"), 0)
    assert policy.freshness_lifetime(200, h(Cache_Control="no-cache, max-age=60"), NOW, 0) == 0
    assert policy.stale_windows(h(Cache_Control='no-cache="a", stale-while-revalidate=9')) == (9, 0)
    # a 304 that names a field keeps it out of the merged fields as well (§4.3.4)
    merged = policy.updated_headers(h(X_Token="old", Etag='"e"'),
                                    h(Cache_Control='no-cache="x-token"', X_Token="new"))
    assert merged == [(b"etag", b'"e"'), (b"cache-control", b'no-cache="x-token"')]
