"""fast.http1: request/response parsers (differential against httptools) and writers."""

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast.http1 import (
    END,
    LAST_CHUNK,
    HTTPError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    encode_chunk,
    request_head,
    response_head,
    simple_response,
)

FEW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------
# Feeding helpers


def pieces(data, points):
    """``data`` cut at the given offsets."""
    cuts = sorted({p for p in points if 0 < p < len(data)})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def feed_all(parser, chunks):
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def summarize(events):
    """Events as comparable tuples, checking the event grammar on the way.

    Each message becomes (head, body) where head is a tuple of the Request/Response fields;
    an unfinished message at the end becomes ("partial", head, body) and an error
    ("error", status).
    """
    out = []
    head = None
    body = []
    for i, ev in enumerate(events):
        if isinstance(ev, (Request, Response)):
            assert head is None, "head inside a message"
            head, body = _fields(ev), []
        elif type(ev) is bytes:
            assert head is not None and ev, "body piece outside a message, or empty"
            body.append(ev)
        elif ev is END:
            assert head is not None, "END without a head"
            out.append((head, b"".join(body)))
            head = None
        else:
            assert isinstance(ev, HTTPError), ev
            assert i == len(events) - 1, "events after an HTTPError"
            assert 400 <= ev.status <= 599 and ev.reason
            if head is not None:
                out.append(("partial", head, b"".join(body)))
                head = None
            out.append(("error", ev.status))
    if head is not None:
        out.append(("partial", head, b"".join(body)))
    return out


def _fields(ev):
    if isinstance(ev, Request):
        assert ev.path + (b"?" + ev.query if b"?" in ev.target else b"") == ev.target or (
            not ev.target.startswith(b"/")
        )
        return (
            ev.method,
            ev.target,
            ev.version,
            tuple(ev.headers),
            ev.host,
            ev.keep_alive,
            ev.chunked,
            ev.content_length,
            ev.expect_continue,
            ev.upgrade,
        )
    return (
        ev.status,
        ev.reason,
        ev.version,
        tuple(ev.headers),
        ev.keep_alive,
        ev.chunked,
        ev.content_length,
    )


def parse_requests(data, chunks=None, **limits):
    parser = RequestParser(**limits)
    events = feed_all(parser, [data] if chunks is None else chunks)
    return summarize(events), parser


def all_ways(data, points=(), **limits):
    """Summary of ``data`` fed whole, cut at ``points`` and byte by byte, which must agree.

    Returns the summary and the bytes handed over by take_rest() (accumulated over feeds).
    """
    results = []
    for chunks in ([data], pieces(data, points), [data[i : i + 1] for i in range(len(data))]):
        summary, parser = parse_requests(data, chunks, **limits)
        results.append((summary, parser.take_rest()))
    assert results[1] == results[0], "split feeding changed the result"
    assert results[2] == results[0], "byte-by-byte feeding changed the result"
    return results[0]


# ---------------------------------------------------------------------------------------
# httptools reference


class _Ref:
    """httptools callbacks collecting each message: method, url, headers, body, keep-alive."""

    def __init__(self):
        self.messages = []
        self.parser = None

    def on_message_begin(self):
        self.messages.append(
            {"url": b"", "headers": [], "body": b"", "in_head": True, "done": False}
        )

    def on_url(self, url):
        self.messages[-1]["url"] += url

    def on_status(self, status):
        pass

    def on_header(self, name, value):
        msg = self.messages[-1]
        if msg["in_head"]:  # trailer fields also come through here; they are dropped
            # llhttp keeps trailing whitespace of a value; RFC 9110 §5.5 says to drop it
            msg["headers"].append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self):
        msg = self.messages[-1]
        msg["in_head"] = False
        msg["keep_alive"] = self.parser.should_keep_alive()
        if isinstance(self.parser, httptools.HttpRequestParser):
            msg["method"] = self.parser.get_method()
        else:
            msg["status"] = self.parser.get_status_code()

    def on_body(self, body):
        self.messages[-1]["body"] += body

    def on_message_complete(self):
        self.messages[-1]["done"] = True


def reference(data, response=False):
    """(outcome, messages, detail): outcome is "ok", "upgrade" (detail: offset) or "error"."""
    ref = _Ref()
    cls = httptools.HttpResponseParser if response else httptools.HttpRequestParser
    ref.parser = cls(ref)
    try:
        ref.parser.feed_data(data)
    except httptools.HttpParserUpgrade as exc:
        return "upgrade", ref.messages, exc.args[0]
    except httptools.HttpParserError as exc:
        return "error", ref.messages, str(exc)
    return "ok", ref.messages, None


def compare_requests(data, points=()):
    """Parse valid ``data`` all ways and check it against httptools field by field."""
    summary, rest = all_ways(data, points)
    outcome, messages, detail = reference(data)
    assert outcome in ("ok", "upgrade"), detail
    assert all(isinstance(m, tuple) and m[0] != "partial" and m[0] != "error" for m in summary), (
        summary
    )
    done = [m for m in messages if m["done"]]
    assert len(summary) == len(done)
    for (head, body), msg in zip(summary, done, strict=True):
        method, target, _v, headers, _h, keep_alive, *_, upgrade = head
        assert method == msg["method"]
        assert target == msg["url"]
        assert list(headers) == msg["headers"]
        assert body == msg["body"]
        assert keep_alive == msg["keep_alive"]
    last_upgrade = summary[-1][0][-1] if summary else None
    if outcome == "upgrade":
        assert last_upgrade is not None or summary[-1][0][0] == b"CONNECT"
        assert rest == data[detail:]
        if last_upgrade is not None:
            upgrade_value = dict(done[-1]["headers"])[b"upgrade"]
            assert last_upgrade == upgrade_value.lower()
    else:
        assert last_upgrade is None and rest == b""
    return summary


# ---------------------------------------------------------------------------------------
# Hand-written valid requests

BROWSER_GET = (
    b"GET /articles/edge?utm_source=news&page=2 HTTP/1.1\r\n"
    b"Host: www.Example.com:8443\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/articles/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=9f8e7d6c5b4a39281706; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"X-Very-Long-Header-Name-That-Is-Not-Interned-By-The-Parser-At-All-Really: \t yes \t\r\n"
    b"\r\n"
)
POST_LENGTH = (
    b"POST /api/items HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
    b'Content-Length: 27\r\n\r\n{"name": "x", "count": 12}\n'
)
POST_CHUNKED = (
    b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\nTrailer: x-sum\r\n\r\n"
    b"5;name=value;flag\r\nhello\r\n"
    b"0000000006\r\n world\r\n"
    b'1A;q="quoted"\r\n' + b"z" * 26 + b"\r\n"
    b"0\r\nX-Sum: abc\r\nX-Other: 1\r\n\r\n"
)
HTTP10_KEEPALIVE = (
    b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /c HTTP/1.0\r\n\r\n"
)
PIPELINED = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"\r\n"  # tolerated empty line between requests
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-Continue\r\n\r\nbody"
    b"PUT /3?x=1&y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET http://Proxy.Example:8080 HTTP/1.1\r\nHost: ignored\r\n\r\n"
    b"DELETE /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
)
WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: WebSocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
    b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET / HTTP/1.1\r\n\r\n"
)
CONNECT = b"CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x02\x00"

CORPUS = [BROWSER_GET, POST_LENGTH, POST_CHUNKED, HTTP10_KEEPALIVE, PIPELINED, WEBSOCKET, CONNECT]


@pytest.mark.parametrize(
    "data",
    CORPUS,
    ids=["browser", "post", "chunked", "http10", "pipelined", "websocket", "connect"],
)
def test_corpus_matches_httptools(data):
    compare_requests(data, points=[7, 30, 31, 100, len(data) - 3])


def test_long_values_with_tabs_and_8bit_bytes():
    value = b"\tab\tcd\xe9\xffgh ij\tkl mnopqrstu\t"
    [req, _] = RequestParser().feed(
        b"GET /" + b"x" * 40 + b" HTTP/1.1\r\n" + H + b"V:" + value + b"\r\n\r\n"
    )
    assert req.header(b"v") == value.strip(b"\t")


def test_browser_get_fields():
    [(head, body)], _ = all_ways(BROWSER_GET)
    events = RequestParser().feed(BROWSER_GET)
    req = events[0]
    assert events[1:] == [END] and body == b""
    assert req.method == b"GET" and req.version == 11
    assert req.path == b"/articles/edge" and req.query == b"utm_source=news&page=2"
    assert req.host == b"www.example.com"
    assert req.keep_alive and not req.chunked and req.content_length == -1
    assert not req.expect_continue and req.upgrade is None
    assert req.header(b"accept-language") == b"en-US,en;q=0.5"
    assert (
        req.header(b"x-very-long-header-name-that-is-not-interned-by-the-parser-at-all-really")
        == b"yes"
    )
    assert req.header(b"missing") is None
    assert len(req.headers) == 12


def test_pipelined_fields():
    summary = compare_requests(PIPELINED)
    assert [m[0][0] for m in summary] == [b"GET", b"POST", b"PUT", b"OPTIONS", b"GET", b"DELETE"]
    post, put, options, absolute = (m[0] for m in summary[1:5])
    assert post[7] == 4 and post[8] is True  # content_length, expect_continue
    assert put[6] is True and put[7] == -1  # chunked
    assert summary[2][1] == b"abc"
    assert options[1] == b"*"
    assert absolute[4] == b"proxy.example"  # host from the target
    events = RequestParser().feed(PIPELINED)
    absolute_req = [e for e in events if isinstance(e, Request)][4]
    assert absolute_req.path == b"/" and absolute_req.query == b""
    assert summary[-1][0][5] is False  # Connection: close


def test_chunked_body_and_trailers():
    [(head, body)] = compare_requests(POST_CHUNKED)
    assert body == b"hello world" + b"z" * 26
    assert head[6] is True and (b"trailer", b"x-sum") in head[3]
    assert all(name != b"x-sum" for name, _ in head[3])  # trailers are discarded


def test_http10_keep_alive():
    summary = compare_requests(HTTP10_KEEPALIVE)
    assert [m[0][5] for m in summary] == [True, True, False]
    assert [m[0][2] for m in summary] == [10, 10, 10]
    assert summary[0][0][4] == b""  # no Host in HTTP/1.0 is fine


@pytest.mark.parametrize(
    "connection,version,expected",
    [
        (None, b"1.1", True),
        (b"close", b"1.1", False),
        (b"Keep-Alive, CLOSE", b"1.1", False),
        (b"closed", b"1.1", True),
        (None, b"1.0", False),
        (b"keep-alive", b"1.0", True),
        (b"foo,  keep-alive ,", b"1.0", True),
        (b"keep-alive, close", b"1.0", False),
    ],
)
def test_keep_alive_rules(connection, version, expected):
    head = b"GET / HTTP/" + version + b"\r\nHost: a\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    [req, end] = RequestParser().feed(head + b"\r\n")
    assert req.keep_alive is expected and end is END


def test_host_forms():
    def host(value):
        events = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
        return events[0].host if isinstance(events[0], Request) else events[0].status

    assert host(b"Example.COM") == b"example.com"
    assert host(b"example.com:8080") == b"example.com"
    assert host(b"[::1]:8443") == b"[::1]"
    assert host(b"[2001:DB8::1]") == b"[2001:db8::1]"
    assert host(b"10.0.0.1:") == b"10.0.0.1"
    assert host(b"") == b""
    for bad in (b"a b", b"a/b", b"user@a", b"a:80x", b"[::1", b":80", b"[]"):
        assert host(bad) == 400, bad


def test_websocket_upgrade_take_rest():
    head_end = WEBSOCKET.index(b"\r\n\r\n") + 4
    for chunks in (
        [WEBSOCKET],
        [WEBSOCKET[i : i + 1] for i in range(len(WEBSOCKET))],
        [WEBSOCKET[:head_end], WEBSOCKET[head_end:]],
    ):
        parser = RequestParser()
        events = feed_all(parser, chunks)
        assert len(events) == 2 and events[1] is END
        assert events[0].upgrade == b"websocket"
        assert parser.take_rest() == WEBSOCKET[head_end:]
        assert parser.take_rest() == b""
        assert parser.feed(b"more") == [] and parser.take_rest() == b"more"
        assert not parser.idle and not parser.in_head and not parser.in_body


def test_upgrade_needs_connection_token_and_http11():
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    events = RequestParser().feed(data)
    assert [type(e) for e in events] == [Request, type(END)] * 2
    assert events[0].upgrade is None
    data = b"GET / HTTP/1.0\r\nConnection: upgrade, keep-alive\r\nUpgrade: h2c\r\n\r\nGET /"
    events = RequestParser().feed(data)
    assert events[0].upgrade is None and len(events) == 2


def test_upgrade_with_body_delivers_body_first():
    # h2c-style upgrade carrying a body: the body belongs to HTTP/1.1, then the switch.
    # (httptools switches right after the head and leaves the body in the new protocol.)
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabcPRI * HTTP/2.0"
    )
    parser = RequestParser()
    events = parser.feed(data)
    assert events[0].upgrade == b"h2c" and events[1:] == [b"abc", END]
    assert parser.take_rest() == b"PRI * HTTP/2.0"


def test_connect_hands_over():
    parser = RequestParser()
    events = parser.feed(CONNECT)
    assert events[0].method == b"CONNECT" and events[0].host == b"example.com"
    assert events[0].path == b"Example.com:443" and events[1:] == [END]
    assert parser.take_rest() == b"\x16\x03\x01\x02\x00"


def test_data_after_close_is_ignored():
    parser = RequestParser()
    events = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HT")
    assert len(events) == 2 and not events[0].keep_alive
    assert parser.feed(b"TP/1.1\r\nHost: a\r\n\r\n") == []
    assert not parser.idle


def test_state_properties():
    parser = RequestParser()
    assert parser.idle and not parser.in_head and not parser.in_body
    parser.feed(b"\r\n")
    assert parser.idle
    parser.feed(b"POST / HT")
    assert not parser.idle and parser.in_head and not parser.in_body
    parser.feed(b"TP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    assert not parser.idle and not parser.in_head and parser.in_body
    parser.feed(b"x")
    assert parser.in_body
    assert parser.feed(b"y") == [b"y", END]
    assert parser.idle and not parser.in_body
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    assert parser.in_body and not parser.in_head  # in the trailer section
    parser.feed(b"\r\n")
    assert parser.idle


def test_body_pieces_are_not_copied_when_whole():
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    piece = b"0123456789"
    events = parser.feed(piece)
    assert events[0] is piece and events[1] is END


# ---------------------------------------------------------------------------------------
# Generated valid requests

# Methods llhttp knows (it rejects other tokens; we do not, see INTENTIONAL below).
LLHTTP_METHODS = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"PATCH",
    b"OPTIONS",
    b"TRACE",
    b"PURGE",
    b"PROPFIND",
    b"REPORT",
    b"MKCOL",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"COPY",
    b"MOVE",
    b"LINK",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"QUERY",
]
TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Field names that steer framing or connection handling in one parser or the other.
SPECIAL = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"expect",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
}
PATH_CHARS = b"abcXYZ019-._~!$&'()*+,;=:@%/"
VALUE_CHARS = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))

tokens = st.binary(min_size=1, max_size=20).map(lambda b: bytes(TOKEN[c % len(TOKEN)] for c in b))
field_names = tokens.filter(lambda n: n.lower() not in SPECIAL)
field_values = st.builds(
    lambda pre, core, post: pre + core + post,
    st.sampled_from([b"", b" ", b"\t", b"  \t"]),
    st.lists(
        st.one_of(
            st.sampled_from([bytes([c]) for c in VALUE_CHARS]),
            st.sampled_from([b" ", b"\t", b" x "]),
        ),
        max_size=25,
    ).map(b"".join),
    st.sampled_from([b"", b" ", b"\t "]),
)
field_lists = st.lists(st.tuples(field_names, field_values), max_size=8)
paths = st.builds(
    lambda p, q: b"/" + p + (b"?" + q if q is not None else b""),
    st.binary(max_size=30).map(lambda b: bytes(PATH_CHARS[c % len(PATH_CHARS)] for c in b)),
    st.none()
    | st.binary(max_size=20).map(
        lambda b: bytes((PATH_CHARS + b"?")[c % (len(PATH_CHARS) + 1)] for c in b)
    ),
)


@st.composite
def chunked_bodies(draw):
    """(wire bytes, decoded body) of a chunked body with extensions and trailers."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    wire = b""
    for chunk in chunks:
        size = b"%x" % len(chunk)
        if draw(st.booleans()):
            size = size.upper()
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';name="v v";x']))
        wire += size + ext + b"\r\n" + chunk + b"\r\n"
    wire += b"0\r\n"
    for name, value in draw(st.lists(st.tuples(field_names, field_values), max_size=2)):
        wire += name + b":" + value + b"\r\n"
    return wire + b"\r\n", b"".join(chunks)


@st.composite
def requests(draw, last=False):
    """Wire bytes of one valid request; only a ``last`` one may end the connection."""
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    fields = draw(field_lists)
    host = (b"Host", draw(st.sampled_from([b"a", b"Example.COM:80", b"[::1]", b""])))
    if version == b"1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), host)
    if version == b"1.0":
        connection = draw(st.sampled_from([b"keep-alive", b"Keep-Alive"] + [None] * last))
    else:
        connection = draw(st.sampled_from([None, b"keep-alive"] + [b"close"] * last))
    if connection is not None:
        fields.insert(draw(st.integers(0, len(fields))), (b"Connection", connection))
    framing = draw(
        st.sampled_from(["none", "length", "chunked"] if version == b"1.1" else ["none", "length"])
    )
    body = b""
    if framing == "length":
        content = draw(st.binary(max_size=200))
        fields.append((b"Content-Length", b"%d" % len(content)))
        body = content
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked_bodies())[0]
    method = draw(st.sampled_from(LLHTTP_METHODS))
    head = method + b" " + draw(paths) + b" HTTP/" + version + b"\r\n"
    head += b"".join(name + b":" + value + b"\r\n" for name, value in fields)
    return head + b"\r\n" + body


@st.composite
def request_streams(draw):
    """1-3 pipelined requests, optionally followed by a websocket upgrade."""
    stream = b"".join(draw(st.lists(requests(), max_size=2)))
    if draw(st.integers(0, 4)) == 0:
        stream += (
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n"
            b"\r\n" + draw(st.binary(max_size=20))
        )
    else:
        stream += draw(requests(last=True))
    return stream


@FEW
@given(data=request_streams(), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_generated_requests_match_httptools(data, cuts):
    compare_requests(data, [c % (len(data) + 1) for c in cuts])


# ---------------------------------------------------------------------------------------
# Invalid input: never raise, agree with ourselves however fed, reject what httptools rejects

# Where httptools (llhttp) rejects bytes that we accept, on purpose:
#  * methods: any token is a method here (RFC 9110 §9.1); llhttp only knows a fixed list.
#  * "Data after `Connection: close`": after a request that ends the connection we stop
#    reading and drop the rest (RFC 9112 §9.6 says not to process it) rather than fail.
#  * "Duplicate Content-Length": identical repeated values are accepted (RFC 9110 §8.6).
#  * "Invalid `Transfer-Encoding` header value": we parse the field as a list, where empty
#    elements are allowed (RFC 9110 §5.6.1), so "chunked ," still ends in chunked.
#  * chunk extensions are ignored, so only control characters are refused in them; llhttp
#    checks their token/quoted-string grammar.
#  * "Pause on PRI/Upgrade": llhttp stops on the PRI method whatever the target and version;
#    here PRI is a token like any other, and the HTTP/2 preface "PRI * HTTP/2.0" a 400.
METHOD_ERRORS = (
    "Invalid method encountered",
    "Expected space after method",
    "Pause on PRI/Upgrade",
)
INTENTIONAL = (
    "Data after `Connection: close`",
    "Duplicate Content-Length",
    "Invalid `Transfer-Encoding` header value",
    "Invalid character in chunk extensions",
    "Missing expected CR after chunk extension",
)


def check_invalid(data, points=()):
    all_ways(data, points)
    # httptools fails at the first bad byte, we once a line is complete: finish any line.
    data += b"\r\n\r\n"
    (summary, _rest) = all_ways(data, points)
    outcome, _, detail = reference(data)
    if outcome != "error" or detail.startswith(INTENTIONAL):
        return
    heads = [m[1] if m[0] == "partial" else m[0] for m in summary if m[0] != "error"]
    if detail.startswith(METHOD_ERRORS) and any(h[0] not in LLHTTP_METHODS for h in heads):
        return
    if summary and summary[-1][0] != "error":
        # we stopped reading: the connection closes or changes protocol
        last = heads[-1]
        assert last[-1] is not None or last[0] == b"CONNECT" or not last[5], (detail, summary)
        return
    assert summary and summary[-1][0] == "error", (detail, summary)


MUTATION_BYTES = [
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"a",
    b"A",
    b",",
    b";",
    b"0",
    b"f",
    b"/",
    b"?",
    b"\r\n",
    b"\r\n\r\n",
    b"Transfer-Encoding: chunked",
    b"Content-Length: 5",
    b"Connection: close",
    b"\r\n ",
]


@st.composite
def mutated_requests(draw):
    data = draw(request_streams())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        junk = draw(st.sampled_from(MUTATION_BYTES) | st.binary(min_size=1, max_size=3))
        if kind == "replace":
            data = data[:at] + junk + data[at + len(junk) :]
        elif kind == "insert":
            data = data[:at] + junk + data[at:]
        else:
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
    return data


@FEW
@given(data=mutated_requests(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_mutated_requests(data, cuts):
    check_invalid(data, [c % (len(data) + 1) for c in cuts])


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=120), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_random_bytes(data, cuts):
    check_invalid(data, cuts)


# ---------------------------------------------------------------------------------------
# Errors and their statuses

H = b"Host: a\r\n"
ERRORS = [
    ("no spaces", b"GET\r\n" + H + b"\r\n", 400),
    ("HTTP/0.9 simple request", b"GET /\r\n\r\n", 400),
    ("bad method token", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("empty method", b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("two spaces", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space after version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("two-digit version", b"GET / HTTP/11.1\r\n" + H + b"\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority-form outside CONNECT", b"GET a:443 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk outside OPTIONS", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("other scheme", b"GET ftp://a/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form without host", b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non-ASCII target", b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("control char in target", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT without port", b"CONNECT a HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT origin-form", b"CONNECT /a HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
    ("missing Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Host fields", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("invalid Host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("field without colon", b"GET / HTTP/1.1\r\n" + H + b"Foo\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\n" + H + b"Foo : bar\r\n\r\n", 400),
    ("invalid name char", b"GET / HTTP/1.1\r\n" + H + b"Fo{o: bar\r\n\r\n", 400),
    ("empty name", b"GET / HTTP/1.1\r\n" + H + b": bar\r\n\r\n", 400),
    ("control char in value", b"GET / HTTP/1.1\r\n" + H + b"Foo: a\x01b\r\n\r\n", 400),
    ("DEL in value", b"GET / HTTP/1.1\r\n" + H + b"Foo: a\x7f\r\n\r\n", 400),
    # values and targets are checked eight bytes at a time: bad bytes inside long ones
    ("DEL in long value", b"GET / HTTP/1.1\r\n" + H + b"Foo: abcdef\x7fghijklmno\r\n\r\n", 400),
    (
        "control char in long value",
        b"GET / HTTP/1.1\r\n" + H + b"Foo: abcdefghij\x1fk\r\n\r\n",
        400,
    ),
    ("DEL in long target", b"GET /abcdefghij\x7fklmnop HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("8-bit byte in long target", b"GET /abcdefghijklmn\x80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"Foo: \x00\r\n\r\n", 400),
    ("CR in value", b"GET / HTTP/1.1\r\n" + H + b"Foo: a\rb\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"Foo: a\r\n  b\r\n\r\n", 400),
    ("bare LF after request line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare LF after field", b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
    ("bare LF ending head", b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    ("bare LF before request", b"\nGET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    (
        "Content-Length and Transfer-Encoding",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "differing Content-Length",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("Content-Length list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("signed Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("empty Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400),
    (
        "huge Content-Length",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding gzip",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "chunked not last",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "chunked twice",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    ("empty Transfer-Encoding", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n\r\n", 400),
    (
        "Transfer-Encoding in HTTP/1.0",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
]
CHUNKED = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
ERRORS += [
    ("invalid chunk size", CHUNKED + b"zz\r\n", 400),
    ("empty chunk size", CHUNKED + b"\r\n", 400),
    ("space after chunk size", CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size overflow", CHUNKED + b"fffffffffffffffff\r\n", 400),
    ("chunk data too long", CHUNKED + b"3\r\nabcd\r\n", 400),
    ("chunk data without CR", CHUNKED + b"3\r\nabc\n0\r\n\r\n", 400),
    ("chunk data followed by junk and LF", CHUNKED + b"3\r\nabcX\n0\r\n\r\n", 400),
    ("bare LF after chunk size", CHUNKED + b"3\nabc\r\n0\r\n\r\n", 400),
    ("control char in chunk extension", CHUNKED + b"3;a=\x01\r\nabc\r\n0\r\n\r\n", 400),
    ("invalid trailer", CHUNKED + b"0\r\nbad trailer\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,data,status", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_status(name, data, status):
    summary, _ = all_ways(data)
    assert summary[-1] == ("error", status)
    parser = RequestParser()
    events = parser.feed(data)
    assert isinstance(events[-1], HTTPError) and events[-1].status == status
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []
    assert not parser.idle


def test_error_follows_complete_events():
    good = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    events = RequestParser().feed(
        good
        + b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab"
        + b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"
    )
    assert [type(e) for e in events] == [Request, type(END), Request, bytes, type(END), HTTPError]
    assert events[-1].status == 400


def test_head_size_limit():
    def head(size):
        line = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
        return line + b"v" * (size - len(line) - 4) + b"\r\n\r\n"

    assert len(head(300)) == 300
    summary, _ = all_ways(head(300), max_header_bytes=300)
    assert summary[0][0][0] == b"GET"
    summary, _ = all_ways(head(301), max_header_bytes=300)
    assert summary == [("error", 431)]
    # without a terminator the limit still applies, before the head is complete
    parser = RequestParser(max_header_bytes=300)
    assert parser.feed(b"GET /" + b"a" * 290) == []
    assert parser.in_head
    assert [e.status for e in parser.feed(b"a" * 10)] == [431]
    # a long request line alone
    [error] = RequestParser(max_header_bytes=300).feed(b"GET /" + b"a" * 400 + b" HTTP/1.1\r\n")
    assert error.status == 431


def test_field_count_limit():
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9)) + H
    summary, _ = all_ways(head + b"\r\n", max_headers=10)
    assert len(summary[0][0][3]) == 10
    summary, _ = all_ways(head + b"X: y\r\n\r\n", max_headers=10)
    assert summary == [("error", 431)]


def test_many_fields():
    # past the parser's inline field storage (32) and its first heap growth (64)
    fields = [(b"x-%d" % i, b"v%d" % i) for i in range(90)]
    head = b"GET / HTTP/1.1\r\n" + H + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    summary, _ = all_ways(head + b"\r\n" + head + b"\r\n")
    assert [list(m[0][3]) for m in summary] == [[(b"host", b"a"), *fields]] * 2


def test_trailer_limits():
    trailers = b"0\r\n" + b"".join(b"T-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    summary, _ = all_ways(CHUNKED + trailers, max_headers=5)
    assert summary[0][1] == b""
    summary, _ = all_ways(CHUNKED + trailers, max_headers=4)
    assert summary[-1] == ("error", 431)
    summary, _ = all_ways(CHUNKED + b"0\r\nT: " + b"v" * 300 + b"\r\n\r\n", max_header_bytes=200)
    assert summary[-1] == ("error", 431)


def test_chunk_line_limit():
    parser = RequestParser(max_header_bytes=100)
    events = parser.feed(CHUNKED + b"1;" + b"x" * 200)
    assert events[-1].status == 400


# ---------------------------------------------------------------------------------------
# Response parser


def parse_responses(data, chunks=None, head=False, eof=False):
    parser = ResponseParser()
    if head:
        parser.expect_head_response()
    events = feed_all(parser, [data] if chunks is None else chunks)
    if eof:
        events += parser.feed_eof()
    return summarize(events), parser


def responses_all_ways(data, points=(), **kw):
    results = []
    for chunks in ([data], pieces(data, points), [data[i : i + 1] for i in range(len(data))]):
        summary, parser = parse_responses(data, chunks, **kw)
        results.append((summary, parser.take_rest()))
    assert results[1] == results[0] and results[2] == results[0]
    return results[0]


def compare_responses(data, points=(), close_delimited=False):
    (summary, _rest) = responses_all_ways(data, points, eof=close_delimited)
    outcome, messages, detail = reference(data, response=True)
    assert outcome in ("ok", "upgrade"), detail
    expected = [m for m in messages if m["done"] or close_delimited]
    assert len(summary) == len(expected)
    for (head, body), msg in zip(summary, expected, strict=True):
        status, _reason, _v, headers, keep_alive, chunked, _cl = head
        assert status == msg["status"]
        assert chunked == (dict(msg["headers"]).get(b"transfer-encoding") == b"chunked")
        assert list(headers) == msg["headers"]
        assert body == msg["body"]
        assert keep_alive == msg["keep_alive"]
    return summary


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n"
    b"Content-Length: 9\r\n\r\nHTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
    b"HTTP/1.1 500\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("data", RESPONSES)
def test_response_corpus_matches_httptools(data):
    compare_responses(data, points=[5, 17, 40, len(data) - 2])


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody until close",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
    ],
)
def test_close_delimited_response(data):
    [(head, body)] = compare_responses(data, points=[20, 30], close_delimited=True)
    assert head[4] is False and body == data[data.index(b"\r\n\r\n") + 4 :]


def test_response_fields():
    parser = ResponseParser()
    events = parser.feed(RESPONSES[1])
    resp = events[0]
    assert (resp.status, resp.reason, resp.version) == (200, b"OK", 11)
    assert resp.chunked and resp.content_length == -1 and resp.keep_alive
    assert resp.header(b"transfer-encoding") == b"chunked"
    assert events[1:] == [b"hello", b"!", END] and parser.idle
    assert parser.feed_eof() == []


def test_head_response_has_no_body():
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    (summary, _) = responses_all_ways(data, head=True)
    assert summary[0][1] == b"" and summary[0][0][6] == 1000 and summary[1][1] == b"ok"
    # the HEAD expectation is kept across interim responses
    data = b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    (summary, _) = responses_all_ways(data, head=True)
    assert [m[1] for m in summary] == [b"", b""]
    parser = ResponseParser()
    parser.expect_head_response()
    assert [type(e) for e in parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")] == [Response, type(END)]
    assert parser.idle and parser.feed_eof() == []


def test_switching_protocols_hands_over():
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00"
    (summary, rest) = responses_all_ways(data)
    assert summary[0][0][0] == 101 and rest == b"\x81\x00"


def test_feed_eof():
    parser = ResponseParser()
    assert parser.feed_eof() == []
    for partial in (
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"H",
    ):
        parser = ResponseParser()
        parser.feed(partial)
        [error] = parser.feed_eof()
        assert error.status == 502
        assert parser.feed(b"more") == [] and parser.feed_eof() == []


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ],
)
def test_response_errors_are_502(data):
    (summary, _) = responses_all_ways(data)
    assert summary[-1] == ("error", 502)


response_statuses = st.sampled_from([200, 200, 201, 204, 301, 304, 404, 500, 103])


@st.composite
def response_streams(draw):
    """(wire bytes, close_delimited) for 1-3 responses; the last may run until close."""
    out = b""
    count = draw(st.integers(1, 3))
    close_delimited = False
    for i in range(count):
        status = draw(response_statuses)
        fields = draw(field_lists)
        body = b""
        if status in (204, 304, 103):
            if status != 103 and draw(st.booleans()):
                fields.append((b"Content-Length", b"%d" % draw(st.integers(0, 50))))
        else:
            framing = draw(
                st.sampled_from(
                    ["length", "chunked", "close"] if i == count - 1 else ["length", "chunked"]
                )
            )
            if framing == "length":
                body = draw(st.binary(max_size=100))
                fields.append((b"Content-Length", b"%d" % len(body)))
            elif framing == "chunked":
                fields.append((b"Transfer-Encoding", b"chunked"))
                body = draw(chunked_bodies())[0]
            else:
                body = draw(st.binary(max_size=100))
                close_delimited = True
        reason = draw(st.sampled_from([b" OK", b" ", b"", b" Some Reason\t!"]))
        out += b"HTTP/1.1 %d" % status + reason + b"\r\n"
        out += b"".join(name + b":" + value + b"\r\n" for name, value in fields) + b"\r\n" + body
    return out, close_delimited


@FEW
@given(stream=response_streams(), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_generated_responses_match_httptools(stream, cuts):
    data, close_delimited = stream
    compare_responses(data, [c % (len(data) + 1) for c in cuts], close_delimited)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=120))
def test_response_random_bytes(data):
    (summary, _) = responses_all_ways(data + b"\r\n\r\n", [7, 20], eof=True)
    assert summary == [] or summary[-1] == ("error", 502) or isinstance(summary[-1][0], tuple)


# ---------------------------------------------------------------------------------------
# Writers


def parsed_by_httptools(data, response=True):
    outcome, messages, detail = reference(data, response=response)
    assert outcome == "ok", detail
    [msg] = messages
    assert msg["done"]
    return msg


def test_response_head_round_trip():
    head = response_head(
        200,
        [
            (b"Content-Type", "text/html; charset=utf-8"),
            ("X-Cafe", b"ok"),
            ("x-latin", "\u00e9t\u00e9"),
        ],
        5,
        True,
    )
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    msg = parsed_by_httptools(head + b"hello")
    assert msg["status"] == 200 and msg["keep_alive"] and msg["body"] == b"hello"
    assert msg["headers"] == [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"x-cafe", b"ok"),
        (b"x-latin", b"\xe9t\xe9"),
        (b"content-length", b"5"),
    ]


def test_response_head_chunked_and_close():
    head = response_head(404, [], -1, False)
    assert head == (
        b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    data = head + encode_chunk(b"x" * 300) + encode_chunk(b"") + encode_chunk(b"yz") + LAST_CHUNK
    msg = parsed_by_httptools(data)
    assert msg["body"] == b"x" * 300 + b"yz" and not msg["keep_alive"]
    [(resp, body)] = summarize(ResponseParser().feed(data))
    assert body == b"x" * 300 + b"yz" and resp[5] is True


def test_response_head_no_framing():
    assert (
        response_head(304, [(b"etag", b'"x"')], -2, True)
        == b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n'
    )
    assert response_head(299, (), -2, True) == b"HTTP/1.1 299 Unknown\r\n\r\n"
    assert response_head(
        101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], -2, True
    ).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


def test_reason_phrases():
    for code in (
        100,
        101,
        200,
        201,
        202,
        204,
        206,
        301,
        302,
        303,
        304,
        307,
        308,
        400,
        401,
        403,
        404,
        405,
        408,
        409,
        410,
        411,
        413,
        414,
        415,
        416,
        421,
        426,
        429,
        431,
        500,
        501,
        502,
        503,
        504,
        505,
    ):
        line = response_head(code, [], -2, True).split(b"\r\n")[0]
        assert line.startswith(b"HTTP/1.1 %d " % code) and not line.endswith(b"Unknown"), line


@pytest.mark.parametrize(
    "name,value",
    [
        (b"x", b"a\r\nInjected: 1"),
        (b"x", "a\nb"),
        (b"x", b"\x00"),
        (b"bad name", b"v"),
        (b"x:y", b"v"),
        (b"", b"v"),
        ("caf\u00e9\r", b"v"),
    ],
)
def test_writer_rejects_injection(name, value):
    with pytest.raises(ValueError):
        response_head(200, [(name, value)], 0, True)
    with pytest.raises(ValueError):
        request_head(b"GET", b"/", [(name, value)], -2)


def test_writer_argument_errors():
    with pytest.raises(TypeError):
        response_head(200, [(b"x", 5)], 0, True)
    with pytest.raises(UnicodeEncodeError):
        response_head(200, [(b"x", "\u20ac")], 0, True)
    with pytest.raises(ValueError):
        response_head(200, [], -3, True)
    with pytest.raises(ValueError):
        response_head(1000, [], 0, True)
    with pytest.raises(ValueError):
        request_head(b"GET", b"/a b", [], -2)
    with pytest.raises(ValueError):
        request_head(b"G T", b"/", [], -2)
    with pytest.raises(ValueError):
        simple_response(204, b"body")


@settings(max_examples=100, deadline=None)
@given(
    fields=field_lists,
    body=st.binary(max_size=3000),
    status=st.sampled_from([200, 404, 503]),
    chunked=st.booleans(),
    keep_alive=st.booleans(),
)
def test_generated_response_round_trip(fields, body, status, chunked, keep_alive):
    fields = [
        (n.decode("latin-1") if i % 2 else n, v.strip(b" \t")) for i, (n, v) in enumerate(fields)
    ]
    if chunked:
        data = response_head(status, fields, -1, keep_alive)
        data += (
            b"".join(encode_chunk(body[i : i + 700]) for i in range(0, len(body), 700)) + LAST_CHUNK
        )
    else:
        data = response_head(status, fields, len(body), keep_alive) + body
    msg = parsed_by_httptools(data)
    assert msg["status"] == status and msg["body"] == body and msg["keep_alive"] == keep_alive
    expected = [(n.encode("latin-1") if isinstance(n, str) else n).lower() for n, _ in fields]
    assert [n for n, _ in msg["headers"]][: len(fields)] == expected
    (summary, _) = responses_all_ways(data, [len(data) // 2])
    assert summary[0][1] == body


def test_request_head_round_trip():
    for length, body, wire in (
        (12, b"hello world!", b"hello world!"),
        (-1, b"hello", encode_chunk(b"hello") + LAST_CHUNK),
        (-2, b"", b""),
    ):
        data = request_head(b"POST", b"/p?q=1", [(b"Host", b"up.example"), ("X-A", "b")], length)
        data += wire
        msg = parsed_by_httptools(data, response=False)
        assert msg["method"] == b"POST" and msg["url"] == b"/p?q=1" and msg["body"] == body
        [(head, parsed_body)], _ = all_ways(data)
        assert parsed_body == body and head[4] == b"up.example"


def test_encode_chunk():
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"a") == b"1\r\na\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"x" * 4096).startswith(b"1000\r\n")
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_simple_response():
    data = simple_response(404, b"not found\n")
    assert data == (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 10\r\n\r\nnot found\n"
    )
    data = simple_response(503, b"x" * 5000, b"text/html", keep_alive=False)
    msg = parsed_by_httptools(data)
    assert msg["body"] == b"x" * 5000 and not msg["keep_alive"]
    assert (b"content-type", b"text/html") in msg["headers"]
    assert simple_response(204, b"") == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_handler_request_is_the_version_neutral_view_of_a_head():
    from fast.http1 import HandlerRequest

    wire = (b"POST /up?x=1 HTTP/1.1\r\nHost: A.example:8080\r\nTransfer-Encoding: chunked\r\n"
            b"X-Two: a\r\nX-Two: b\r\n\r\n0\r\n\r\n"
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n"
            b"Content-Length: 0\r\n\r\n")
    chunked, plain = [e for e in RequestParser().feed(wire) if type(e) is Request]
    old = RequestParser().feed(b"GET / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")[0]
    r = HandlerRequest(chunked, "tenant", "route", "10.0.0.1", "https", None, 1.5)
    assert (r.method, r.target, r.path, r.query, r.host) == (b"POST", b"/up?x=1", b"/up", b"x=1", b"a.example")
    assert r.header(b"x-two") == b"a" and r.header(b"nope") is None
    assert [v for k, v in r.headers if k == b"x-two"] == [b"a", b"b"]
    assert r.content_length == -1 and r.version == "1.1" and r.upgrade is None
    assert (r.tenant, r.route, r.client, r.scheme, r.body, r.start) == ("tenant", "route", "10.0.0.1", "https", None, 1.5)
    ws = HandlerRequest(plain, None, None, "c", "http", None, 0.0)
    assert ws.upgrade == b"websocket" and ws.content_length == 0
    h10 = HandlerRequest(old, None, None, "c", "http", None, 0.0)
    assert h10.version == "1.0" and h10.content_length == 3


def test_a_chunked_body_declaring_more_than_max_body_is_refused_at_its_size_line():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = RequestParser()
    p.max_body = 10
    events = p.feed(head + b"5\r\nhello\r\n")
    assert events[1:] == [b"hello"]
    # The second size line takes the declared total past 10: refused before its data.
    events = p.feed(b"6\r\n")
    assert type(events[-1]) is HTTPError and events[-1].status == 413
    # Exactly the limit is fine; the count starts again with the next message.
    p = RequestParser()
    p.max_body = 10
    events = p.feed(head + b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n" + head + b"a\r\n0123456789\r\n0\r\n\r\n")
    assert [e for e in events if type(e) is bytes] == [b"hello", b"world", b"0123456789"]
    assert not any(type(e) is HTTPError for e in events)
    assert RequestParser().max_body == -1   # no limit unless set


@given(st.lists(st.sampled_from([b"/", b".", b"..", b"%", b"%2e", b"a", b"b.c", b"-"]), min_size=0, max_size=12),
       st.sampled_from([b"", b"?q=%20&x=/."]))
def test_plain_path_is_exactly_no_percent_and_no_slash_dot_in_the_path(parts, query):
    path = b"/" + b"".join(parts)
    head = RequestParser().feed(b"GET " + path + query + b" HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert head.path == path
    assert head.plain_path == (b"%" not in path and b"/." not in path)
