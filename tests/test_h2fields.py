"""fast.h2fields: the RFC 9113 field rules, differential against h2's: requests against
its inbound validation (h2.utilities.validate_headers), the same lists taken, the same
refused; response heads against its outbound normalization and validation."""

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import (
    HeaderValidationFlags,
    normalize_outbound_headers,
    validate_headers,
    validate_outbound_headers,
)
from hpack import HeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast.h2fields import request_error, response_head, trailer_fields

FEW = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.one_of(
    st.sampled_from([b":method", b":scheme", b":path", b":authority", b":protocol", b":status",
                     b":foo", b":", b"host", b"te", b"connection", b"upgrade", b"keep-alive",
                     b"user-agent", b"x-a", b"X-A", b"a:b", b"", b"a b", b"\xff"]),
    st.binary(max_size=6))
values = st.one_of(
    st.sampled_from([b"GET", b"CONNECT", b"https", b"/", b"", b"localhost", b"other", b"trailers",
                     b"TRAILERS", b"gzip", b"websocket", b" x", b"x\t", b"a\rb", b"a\x00", b"\x7f"]),
    st.binary(max_size=6))


def request(method=b"GET", extra=()):
    return [(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost"),
            (b":path", b"/"), *extra]


lists = st.one_of(
    st.lists(st.tuples(names, values), max_size=8),
    st.lists(st.tuples(names, values), max_size=3).map(lambda xs: request(extra=xs)),
    st.tuples(st.sampled_from([b"GET", b"CONNECT", b"POST"]), st.permutations(request()[1:]),
              st.lists(st.tuples(names, values), max_size=2))
    .map(lambda t: [(b":method", t[0]), *t[1], *t[2]]),
)


def h2_takes(headers, trailer: bool) -> bool:
    flags = HeaderValidationFlags(is_client=False, is_trailer=trailer, is_response_header=False,
                                  is_push_promise=False)
    try:
        list(validate_headers(headers, flags))
        return True
    except ProtocolError:
        return False


@FEW
@given(headers=lists, trailer=st.booleans())
def test_the_same_lists_are_taken_as_by_h2(headers, trailer):
    why = request_error(headers, trailer)
    assert (why is None) == h2_takes(headers, trailer), why


def test_reasons():
    assert request_error(request()) is None
    assert request_error(request(extra=[(b"Host", b"x")])).startswith("a character")
    assert request_error(request(extra=[(b"te", b"gzip")])) == "te other than trailers"
    assert request_error(request(extra=[(b":path", b"/")])) == "a second b':path'"
    assert request_error(request(method=b"CONNECT")) == "a CONNECT with :scheme or :path"
    assert request_error([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *request()[1:]]) is None
    assert request_error([(b"x", b"1")], trailer=True) is None
    assert request_error([(b":path", b"/")], trailer=True) == "a pseudo-header in trailers"


RESPONSE = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=True,
                                 is_push_promise=False)
lower_names = st.one_of(st.sampled_from([b"content-type", b"authorization", b"cookie", b"connection",
                                         b"te", b"x-a", b"set-cookie"]),
                        st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1,
                                max_size=8).map(str.encode))
clean_values = st.text("abc =;/ \t\x7f\u00e9", max_size=30).map(lambda s: s.encode("latin-1"))


def h2_sends(status: int, headers) -> list:
    fields = normalize_outbound_headers([(b":status", str(status).encode()), *headers], RESPONSE)
    return [(bytes(n), bytes(v), *((True,) if isinstance(f, HeaderTuple) and not f.indexable else ()))
            for f in validate_outbound_headers(fields, RESPONSE) for n, v in (f,)]


@FEW
@given(status=st.integers(100, 599), headers=st.lists(st.tuples(lower_names, clean_values), max_size=6))
def test_a_response_head_is_what_h2_would_send(status, headers):
    try:
        want = h2_sends(status, headers)
    except ProtocolError:   # (te other than trailers)
        with pytest.raises(ValueError):
            response_head(status, headers)
        return
    assert response_head(status, headers) == want


@pytest.mark.parametrize("field", [
    (b"x", b"a\r\nset-cookie: injected"), (b"x", b"a\x00"), (b"X-Upper", b"1"), (b"", b"1"),
    (b":status", b"200"), (b"a b", b"1"), (b"te", b"gzip"),
])
def test_a_field_rfc_9113_forbids_is_refused_before_anything_is_sent(field):
    with pytest.raises(ValueError):
        response_head(200, [field])
    with pytest.raises(ValueError):
        trailer_fields([field])
