"""HTTP/2 against a real node on loopback: every route kind through real clients (curl
--http2 and --http2-prior-knowledge, nghttp, httpx with http2=True), ALPN on the HTTPS
listener and h2c with prior knowledge on the plain one; bad input over raw sockets (a
real h2 client for the well-formed part, hyperframe/hpack frames for what no client
sends), each answered with its error while another connection is served."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes, Settings
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from test_cdn import OriginThread
from test_proxy import Upstreams, block

from farts.transport.h2conn import PREFACE

pytestmark = [
    pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client (ci/setup installs it)"),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]



def base_config() -> str:
    from conftest import BASE_CONFIG
    return (BASE_CONFIG.replace("[listeners.http]\nport = 0", "[listeners.http]\nport = 0\nh2c = true")
            .replace("[listeners.admin]\nport = 0", "[listeners.admin]\nport = 0\nh2c = true"))


def routes(app_port: int, origin_port: int) -> str:
    return f"""
[limits]
max_header_bytes = 4096
max_concurrent_streams = 4
slow_request_seconds = 0.1

[upstreams.main]
servers = ["127.0.0.1:{app_port}"]

[cdn]
capacity_bytes = 67108864
flush_interval = 0.2
memory_object_bytes = 4096

[cdn.origins.test]
url = "http://127.0.0.1:{origin_port}/files/"

[[routes]]
prefix = "/a"
kind = "static"
body = "route a\\n"

[[routes]]
prefix = "/app/"
kind = "proxy"
upstream = "main"

[[routes]]
prefix = "/media/"
kind = "cdn"
origin = "test"

[[routes]]
prefix = "/healthz"
kind = "admin"

[[routes]]
prefix = "/live"
kind = "pubsub"
[[routes]]
prefix = "/api/publish"
kind = "pubsub"
"""


@pytest.fixture(scope="module")
def ups():
    u = Upstreams()
    yield u
    u.close()


@pytest.fixture(scope="module")
def origin():
    t = OriginThread()
    yield t.origin
    t.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, ups, origin):
    from conftest import start_node
    n = start_node(tmp_path_factory.mktemp("h2"), routes(ups.a.port, origin.port), base=base_config())
    yield n
    n.stop()


def https(node, path: str) -> str:
    return node.url("https", path).replace("127.0.0.1", "localhost")


def tls(node) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(node.ca))


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", *args], capture_output=True, timeout=30)


def nghttp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nghttp", *args], capture_output=True, timeout=30)


def metric(node, name: str, **labels) -> float:
    text = httpx.get(node.url("admin", "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- real clients, every route -------------------------------------------------------------
def test_curl_gets_h2_by_alpn_and_by_prior_knowledge_and_http11_still_works(node):
    out = curl("-i", "--http2", "--cacert", str(node.ca), https(node, "/a"))
    assert out.stdout.startswith(b"HTTP/2 200"), out.stdout
    assert out.stdout.endswith(b"\r\n\r\nroute a\n")
    out = curl("-i", "--http2-prior-knowledge", node.url("http", "/a"))
    assert out.stdout.startswith(b"HTTP/2 200") and out.stdout.endswith(b"route a\n")
    # The same plain listener still speaks HTTP/1.1 (the first bytes decide).
    out = curl("-i", node.url("http", "/a"))
    assert out.stdout.startswith(b"HTTP/1.1 200") and out.stdout.endswith(b"route a\n")
    out = curl("-i", "--http1.1", "--cacert", str(node.ca), https(node, "/a"))
    assert out.stdout.startswith(b"HTTP/1.1 200")


def test_nghttp_on_every_route(node, ups, origin):
    body = bytes(range(256)) * 400
    origin.put("/files/n.bin", body, Cache_Control="max-age=60")
    for base in (node.url("http", ""), https(node, "")):
        out = nghttp(base + "/media/n.bin")   # the miss that fills (the key has scheme and host)
        assert out.stdout == body
        out = nghttp("-v", base + "/a")
        assert out.returncode == 0, out.stderr
        assert b":status: 200" in out.stdout and out.stdout.count(b"route a\n") == 1
        out = nghttp("-v", base + "/app/echo?x=1")
        assert b":status: 200" in out.stdout
        echoed = json.loads(out.stdout[out.stdout.index(b"{"):out.stdout.rindex(b"}") + 1])
        assert (echoed["method"], echoed["path"], echoed["query"]) == ("GET", "/app/echo", "x=1")
        out = nghttp("-v", "-H", "range: bytes=100-199", base + "/media/n.bin")
        assert b":status: 206" in out.stdout and b"content-range: bytes 100-199/102400" in out.stdout
        assert body[100:200] in out.stdout
        out = nghttp("-v", base + "/healthz")
        assert b":status: 200" in out.stdout and b'"ok": true' in out.stdout
    assert origin.count("/files/n.bin") == 2   # the ranges were hits from disk


def test_curl_cdn_hit_with_a_range_and_the_proxy_over_h2(node, origin):
    body = bytes(range(256)) * 1000
    origin.put("/files/c.bin", body, Cache_Control="max-age=60")
    url = https(node, "/media/c.bin")
    out = curl("--http2", "--cacert", str(node.ca), url)
    assert out.stdout == body
    out = curl("--http2", "--cacert", str(node.ca), "-D", "/dev/stderr", "-r", "1000-2999", url)
    assert out.stdout == body[1000:3000]
    assert out.stderr.startswith(b"HTTP/2 206") and b"x-cache: HIT" in out.stderr
    assert origin.count("/files/c.bin") == 1
    out = curl("--http2", "--cacert", str(node.ca), "-d", "posted body", https(node, "/app/echo"))
    echoed = json.loads(out.stdout)
    assert (echoed["method"], echoed["body"]) == ("POST", "posted body")


def test_httpx_http2_streams_bodies_both_ways_through_the_proxy(node):
    upload = bytes(range(256)) * 8192   # 2 MiB: many windows' worth each way
    size = 3_000_000
    with httpx.Client(http2=True, verify=tls(node), timeout=30) as client:
        r = client.post(https(node, "/app/echo"), content=upload)
        assert r.http_version == "HTTP/2" and r.status_code == 200
        echoed = r.json()
        assert echoed["body_len"] == len(upload)
        assert echoed["body_sha256"] == hashlib.sha256(upload).hexdigest()
        assert ["Host", "localhost:" + str(node.port("https"))] in echoed["headers"]

        def chunks():
            for i in range(0, len(upload), 100_000):
                yield upload[i:i + 100_000]
        r = client.post(https(node, "/app/echo"), content=chunks())   # no length: streamed
        assert r.json()["body_len"] == len(upload)
        r = client.get(https(node, f"/app/big?size={size}"))
        expect = b""
        i = 0
        while len(expect) < size:
            expect += block(i)
            i += 1
        assert r.http_version == "HTTP/2" and r.content == expect[:size]
        r = client.get(https(node, f"/app/big?size={size}&chunked=1"))
        assert r.content == expect[:size]
        r = client.head(https(node, "/app/big?size=5"))
        assert r.status_code == 200 and r.content == b""


def test_many_concurrent_streams_on_one_connection(node):
    async def main():
        async with httpx.AsyncClient(http2=True, verify=tls(node), timeout=30) as client:
            rs = await asyncio.gather(*[client.get(https(node, f"/app/echo?i={i}")) for i in range(40)]
                                      + [client.get(https(node, "/a")) for _ in range(40)])
            return rs
    rs = asyncio.run(main())
    assert {r.http_version for r in rs} == {"HTTP/2"}
    assert [r.json()["query"] for r in rs[:40]] == [f"i={i}" for i in range(40)]
    assert {r.text for r in rs[40:]} == {"route a\n"}


def test_metrics_split_by_protocol_and_h2_slow_requests_counted(node):
    before_slow = metric(node, "farts_http_slow_requests_total", listener="https", route="/app/")
    before_h2 = metric(node, "farts_http_requests_by_protocol_total", listener="https", protocol="2")
    with httpx.Client(http2=True, verify=tls(node), timeout=30) as client:
        assert client.get(https(node, "/app/slow?delay=0.3")).text == "slow done"
        assert client.get(https(node, "/a")).status_code == 200
        # Read over HTTP/2 too: h2c on the admin listener.
        out = curl("--http2-prior-knowledge", node.url("admin", "/metrics"))
        assert b"farts_http_connections_by_protocol" in out.stdout
        assert 'farts_http_connections_by_protocol{listener="https",protocol="2"} 1.0' in out.stdout.decode()
    assert metric(node, "farts_http_slow_requests_total", listener="https", route="/app/") == before_slow + 1
    assert metric(node, "farts_http_requests_by_protocol_total", listener="https", protocol="2") == before_h2 + 2
    assert curl(node.url("http", "/a")).returncode == 0   # (one of its own: the test stands alone)
    assert metric(node, "farts_http_requests_by_protocol_total", listener="http", protocol="1.1") >= 1


def test_event_stream_over_h2(node):
    with httpx.Client(http2=True, verify=tls(node), timeout=10) as client:
        with client.stream("GET", https(node, "/live/sse"), params={"channel": "h2"}) as resp:
            assert resp.http_version == "HTTP/2" and resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            r = httpx.post(node.url("http", "/api/publish"), json={"channel": "h2", "data": "over h2"},
                           headers={"authorization": "Bearer demo-key"})
            assert r.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["data"] == "over h2"
                    break


# -- bad input: raw connections -------------------------------------------------------------
def frames_of(data: bytes) -> tuple[list, bytes]:
    """The whole frames in ``data`` and what is left of the next one."""
    out = []
    while len(data) >= 9:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        f.parse_body(memoryview(data[9:9 + length]))
        out.append(f)
        data = data[9 + length:]
    return out, data


class Raw:
    """A plain h2c connection that sends whatever bytes the test gives and reads frames."""

    def __init__(self, node) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
        self.enc = Encoder()
        self.frames: list = []
        self.rest = b""
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def headers(self, sid: int, path: bytes = b"/a", end: bool = True, extra=(), method=b"GET") -> bytes:
        h = HeadersFrame(sid)
        h.data = self.enc.encode([(b":method", method), (b":scheme", b"http"),
                                  (b":authority", b"localhost"), (b":path", path), *extra])
        h.flags = {"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"}
        return h.serialize()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server closed after its GOAWAY; what it said is in read()

    def read_until(self, done) -> list:
        """Reads frames until ``done(frames)`` or the server closes (bounded by the timeout)."""
        while not done(self.frames):
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            got, self.rest = frames_of(self.rest + data)
            self.frames += got
        return self.frames

    def goaway(self) -> GoAwayFrame | None:
        self.read_until(lambda fs: any(type(f) is GoAwayFrame for f in fs))
        return next((f for f in self.frames if type(f) is GoAwayFrame), None)

    def status(self, sid: int) -> bytes | None:
        from hpack import Decoder
        dec = Decoder()
        found = None
        for f in self.frames:
            if type(f) is HeadersFrame:
                fields = dict(dec.decode(f.data, raw=True))
                if f.stream_id == sid and b":status" in fields:
                    found = fields[b":status"]
        return found

    def close(self) -> None:
        self.sock.close()


def served_meanwhile(node) -> None:
    """Another connection is served while a bad one is open."""
    with httpx.Client(http2=True, verify=tls(node), timeout=10) as client:
        r = client.get(https(node, "/a"))
        assert (r.http_version, r.status_code, r.text) == ("HTTP/2", 200, "route a\n")


def ended(sid: int, or_goaway: bool = True):
    """Reading stops when stream ``sid`` has ended (or the connection, if ``or_goaway``)."""
    return lambda fs: any(f.stream_id == sid and "END_STREAM" in f.flags for f in fs
                          if type(f) in (HeadersFrame, DataFrame)) or (
        or_goaway and any(type(f) is GoAwayFrame for f in fs))


def test_oversized_header_list_gets_431_and_the_connection_stays(node):
    out = curl("-i", "--http2", "--cacert", str(node.ca), "-H", "x-big: " + "a" * 6000, https(node, "/a"))
    assert out.stdout.startswith(b"HTTP/2 431")
    raw = Raw(node)
    try:
        raw.send(raw.headers(1, extra=[(b"x-big", b"b" * 6000)]) + raw.headers(3))
        raw.read_until(ended(3))
        assert raw.status(1) == b"431" and raw.status(3) == b"200"
        served_meanwhile(node)
    finally:
        raw.close()


def goaway_for(node, build, code) -> None:
    """What ``build(raw)`` returns, sent on one connection, gets GOAWAY ``code``; another
    connection is served meanwhile."""
    raw = Raw(node)
    try:
        raw.send(build(raw))
        served_meanwhile(node)
        g = raw.goaway()
        assert g is not None and g.error_code == code
    finally:
        raw.close()


def test_hpack_bomb_is_a_compression_error(node):
    # One 4000-byte field stored in the dynamic table, then referenced again and again:
    # a small block that decodes to far more than the header list limit.
    goaway_for(node, lambda raw: raw.headers(1, extra=[(b"x-bomb", b"c" * 4000)] * 8),
               ErrorCodes.COMPRESSION_ERROR)


def test_a_frame_on_a_closed_stream_is_a_stream_error(node):
    raw = Raw(node)
    try:
        raw.send(raw.headers(1))
        raw.read_until(ended(1))
        late = DataFrame(1)
        late.data = b"late"
        raw.send(late.serialize() + raw.headers(3))
        raw.read_until(ended(3))
        [rst] = [f for f in raw.frames if type(f) is RstStreamFrame]
        assert (rst.stream_id, rst.error_code) == (1, ErrorCodes.STREAM_CLOSED)
        assert raw.status(3) == b"200"   # the connection goes on
        served_meanwhile(node)
    finally:
        raw.close()


def test_rapid_reset_flood_gets_enhance_your_calm_while_others_are_served(node):
    before = metric(node, "farts_http2_events_total", listener="http", event="goaway_enhance_your_calm")

    def flood(raw: Raw) -> bytes:
        out = b""
        for i in range(1000):   # bounded: far past the reset budget
            rst = RstStreamFrame(2 * i + 1)
            rst.error_code = ErrorCodes.CANCEL
            out += raw.headers(2 * i + 1, path=b"/app/slow?delay=5") + rst.serialize()
        return out
    goaway_for(node, flood, ErrorCodes.ENHANCE_YOUR_CALM)
    assert metric(node, "farts_http2_events_total", listener="http",
                  event="goaway_enhance_your_calm") == before + 1


@pytest.mark.parametrize("kind", ["ping", "settings", "continuation"])
def test_control_and_continuation_floods_get_enhance_your_calm(node, kind):
    def flood(raw: Raw) -> bytes:
        out = b""
        if kind == "continuation":
            h = HeadersFrame(1)
            h.data = raw.enc.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"localhost"), (b":path", b"/a")])
            h.flags = {"END_STREAM"}   # the header block never ends
            out = h.serialize()
        for i in range(60 if kind == "continuation" else 1000):
            if kind == "ping":
                f = PingFrame(0)
                f.opaque_data = i.to_bytes(8, "big")
            elif kind == "settings":
                f = SettingsFrame(0)
                f.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 65535}
            else:
                f = ContinuationFrame(1)
                f.data = b"\x00" * 1000
            out += f.serialize()
        return out
    goaway_for(node, flood, ErrorCodes.ENHANCE_YOUR_CALM)


def test_streams_over_the_limit_are_refused(node):
    raw = Raw(node)
    try:
        # max_concurrent_streams = 4 in this node's config; six requests at once that
        # stay open (the upstream takes a moment): the last two are refused, alone.
        raw.send(b"".join(raw.headers(2 * i + 1, path=b"/app/slow?delay=0.5") for i in range(6)))
        raw.read_until(lambda fs: all(ended(s)(fs) for s in (1, 3, 5, 7)))
        refused = sorted(f.stream_id for f in raw.frames
                         if type(f) is RstStreamFrame and f.error_code == ErrorCodes.REFUSED_STREAM)
        assert refused == [9, 11]
        assert [raw.status(s) for s in (1, 3, 5, 7)] == [b"200"] * 4
        served_meanwhile(node)
    finally:
        raw.close()


def test_graceful_goaway_on_shutdown_lets_the_stream_in_progress_finish(ups, origin, node_factory):
    node = node_factory(routes(ups.a.port, origin.port), base=base_config())
    raw = Raw(node)
    try:
        raw.send(raw.headers(1, path=b"/app/slow?delay=1"))
        raw.read_until(lambda fs: any(type(f) is SettingsFrame for f in fs))
        node.proc.send_signal(signal.SIGTERM)
        raw.read_until(ended(1, or_goaway=False))
        g = raw.goaway()
        assert g is not None and (g.error_code, g.last_stream_id) == (ErrorCodes.NO_ERROR, 1)
        assert raw.status(1) == b"200"
        assert any(type(f) is DataFrame and f.data == b"slow done" for f in raw.frames)
    finally:
        raw.close()
    assert node.proc.wait(10) == 0


def test_responses_to_a_client_that_does_not_read_stay_within_its_window(node):
    """A client with a small window that never reads: the server sends that much, then
    waits; the connection does not hold the whole answer for it."""
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.local_settings = Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: 1024})
    c.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", node.port("http")), timeout=1)
    try:
        c.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
                           (b":path", b"/app/big?size=2000000")], end_stream=True)
        sock.sendall(c.data_to_send())
        got = 0
        head = False
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break   # nothing more comes: the server waits for our window
            assert data
            for ev in c.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    head = True
                elif isinstance(ev, DataReceived):
                    got += len(ev.data)
            sock.sendall(c.data_to_send())
        assert head and got <= 1024   # our stream window: not a byte more
        served_meanwhile(node)
    finally:
        sock.close()


def h2_client(node) -> tuple[H2Connection, ssl.SSLSocket]:
    """An h2-library client connection over TLS (ALPN h2) to the node, preface queued."""
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    ctx = tls(node)
    ctx.set_alpn_protocols(["h2"])
    return c, ctx.wrap_socket(socket.create_connection(("127.0.0.1", node.port("https")), timeout=10),
                              server_hostname="localhost")


def test_websocket_over_h2_by_extended_connect(node):
    """RFC 8441 from a client on the h2 library (frames by wsproto): the server's
    SETTINGS allow extended CONNECT, /live answers 200, and the WebSocket commands and
    events of the pub/sub service flow in DATA frames; a plain CONNECT gets 501."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    c, sock = h2_client(node)
    ws = FrameProtocol(client=True, extensions=[])
    got: list = []   # (kind, value) from the server, in order

    def pump(until) -> None:
        sock.sendall(c.data_to_send())
        while not until():
            data = sock.recv(65536)
            assert data, "the server closed"
            for ev in c.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    got.append(("status", ev.stream_id, dict(ev.headers)[b":status"]))
                elif isinstance(ev, DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_id != 1:   # (the 501's body)
                        continue
                    ws.receive_bytes(ev.data)
                    for f in ws.received_frames():
                        if f.opcode is Opcode.TEXT:
                            got.append(("message", ev.stream_id, json.loads(f.payload)))
                        elif f.opcode is Opcode.CLOSE:
                            got.append(("close", ev.stream_id, f.payload[0]))
                elif isinstance(ev, (StreamReset, StreamEnded)):
                    got.append(("end", ev.stream_id, getattr(ev, "error_code", 0)))
            sock.sendall(c.data_to_send())

    try:
        pump(lambda: c.remote_settings.enable_connect_protocol == 1)
        c.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                           (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/live"),
                           (b"sec-websocket-version", b"13")])
        pump(lambda: any(g[0] == "status" for g in got))
        assert got[0] == ("status", 1, b"200")
        c.send_data(1, bytes(ws.send_data(json.dumps({"op": "subscribe", "channel": "ws2"}), fin=True)))
        pump(lambda: any(g[0] == "message" for g in got))
        r = httpx.post(node.url("http", "/api/publish"), json={"channel": "ws2", "data": "via h2"},
                       headers={"authorization": "Bearer demo-key"})
        assert r.status_code == 200
        pump(lambda: any(g[0] == "message" and g[2].get("data") == "via h2" for g in got))
        # The client closes: the server answers the close frame and ends the stream.
        c.send_data(1, bytes(ws.close(1000)))
        pump(lambda: any(g[:2] == ("end", 1) for g in got))
        assert ("close", 1, 1000) in got
        # A plain CONNECT (a tunnel) is not served.
        c.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        pump(lambda: any(g[:2] == ("status", 3) for g in got))
        assert ("status", 3, b"501") in got
    finally:
        sock.close()


def test_websocket_over_h2_to_the_proxy_passes_through_to_the_application(node, ups):
    """An extended CONNECT on a proxy route: the application's WebSocket (an HTTP/1.1
    101 upstream) answers through the tunnel, in DATA frames on the h2 stream."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    c, sock = h2_client(node)
    ws = FrameProtocol(client=True, extensions=[])
    texts: list[str] = []
    status: list[bytes] = []

    def pump(until) -> None:
        sock.sendall(c.data_to_send())
        while not until():
            data = sock.recv(65536)
            assert data, "the server closed"
            for ev in c.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    status.append(dict(ev.headers)[b":status"])
                elif isinstance(ev, DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    ws.receive_bytes(ev.data)
                    texts.extend(f.payload for f in ws.received_frames() if f.opcode is Opcode.TEXT)
            sock.sendall(c.data_to_send())

    try:
        pump(lambda: c.remote_settings.enable_connect_protocol == 1)
        c.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                           (b":authority", b"localhost"), (b":path", b"/app/ws"),
                           (b"sec-websocket-version", b"13")])
        pump(lambda: status and texts)
        assert status == [b"200"] and texts[0].startswith("hello from A")
        c.send_data(1, bytes(ws.send_data("over h2", fin=True)))
        pump(lambda: len(texts) == 2)
        assert texts[1] == "echo:over h2"
    finally:
        sock.close()


def test_nodes_http2_client_and_coalesced_cdn_misses_on_one_connection(node, origin):
    """Node's http2 module: many streams at once on one TLS connection, among them
    twenty for the same uncached object (one origin fetch), the proxy and a fixed route."""
    body = bytes(range(256)) * 2000
    origin.put("/files/co.bin", body, Cache_Control="max-age=60")
    origin.delay["/files/co.bin"] = 0.3   # the misses arrive while the first is filling
    script = os.path.join(os.path.dirname(__file__), "node", "h2_client.js")
    paths = ["/media/co.bin"] * 20 + ["/a", "/app/echo?node=1"]
    out = subprocess.run(["node", script, https(node, ""), str(node.ca), *paths],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == len(paths) and {a["version"] for a in answers} == {"h2"}
    media = [a for a in answers if a["path"] == "/media/co.bin"]
    assert {(a["status"], a["length"], a["sha256"]) for a in media} == {
        (200, len(body), hashlib.sha256(body).hexdigest())}
    assert origin.count("/files/co.bin") == 1
    assert [a["status"] for a in answers if a["path"] != "/media/co.bin"] == [200, 200]
