"""The reverse proxy, end to end: real upstreams (aiohttp, and a raw asyncio server for
misbehaviour) in a thread of this process, a real node subprocess, curl and httpx."""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import subprocess
import threading
import time

import httpx
import pytest
from aiohttp import web
from conftest import free_port

BLOCK = random.Random(7).randbytes(64 * 1024)
BIG = 20 * 1024 * 1024


def block(i: int) -> bytes:
    return i.to_bytes(8, "big") + BLOCK[8:]


def big_sha256(size: int) -> str:
    h = hashlib.sha256()
    i = 0
    while size > 0:
        piece = block(i)[:size]
        h.update(piece)
        size -= len(piece)
        i += 1
    return h.hexdigest()


class App:
    """An aiohttp upstream that echoes, streams, sleeps, cuts off; counts what it sees."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.peers: set = set()
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        self.requests = 0
        self.peers = set()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.peers.add(request.transport.get_extra_info("peername"))
        action = request.path.rstrip("/").rsplit("/", 1)[-1]
        q = request.query
        if action == "big":
            size = int(q.get("size", BIG))
            resp = web.StreamResponse(headers={"X-Server": self.name})
            if "chunked" in q:
                resp.enable_chunked_encoding()
            else:
                resp.content_length = size
            await resp.prepare(request)
            if request.method == "HEAD":
                return resp
            i = 0
            while size > 0:
                piece = block(i)[:size]
                await resp.write(piece)
                size -= len(piece)
                i += 1
            await resp.write_eof()
            return resp
        if action == "ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(f"hello from {self.name}, request id {request.headers.get('X-Request-Id')}")
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
                elif msg.type == web.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws
        if action == "slow":
            await asyncio.sleep(float(q.get("delay", "2")))
            return web.Response(text="slow done")
        if action == "cut":
            resp = web.StreamResponse()
            resp.content_length = 1024 * 1024
            await resp.prepare(request)
            await resp.write(b"x" * 100_000)
            await asyncio.sleep(0.05)
            request.transport.close()
            return resp
        if action == "status":
            return web.Response(status=int(q["code"]), headers={"ETag": '"v1"'})
        if action == "hop":
            return web.Response(text="hop", headers={
                "Connection": "x-hop-resp", "X-Hop-Resp": "1", "Keep-Alive": "timeout=5",
                "Trailer": "x-t", "X-End-To-End": "yes"})
        h = hashlib.sha256()
        n = 0
        first = b""
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
            if len(first) < 4096:
                first += chunk[:4096]
        return web.json_response({
            "server": self.name, "method": request.method, "path": request.path,
            "query": request.query_string, "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": n, "body_sha256": h.hexdigest(), "body": first.decode("latin-1"),
        })


class RawServer:
    """Misbehaving HTTP: answers the first request of a connection and closes silently on
    the second (the stale keep-alive race, made certain); junk; 1xx before the answer."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if served:  # a reused connection: drop it without a word
                    break
                if path.endswith(b"/garbage"):
                    writer.write(b"HELLO THERE\r\n\r\n")
                    break
                if path.endswith(b"/interim"):
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
                served += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


class Upstreams:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.a, self.b, self.raw = App("A"), App("B"), RawServer()
        for s in (self.a, self.b, self.raw):
            self.run(s.start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        for app in (self.a, self.b):
            self.run(app.runner.cleanup())
        self.raw.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def ups():
    u = Upstreams()
    yield u
    u.close()


@pytest.fixture
def node(ups, node_factory):
    ups.a.reset()
    ups.b.reset()
    dead = free_port()
    a, b, raw = (f"127.0.0.1:{p}" for p in (ups.a.port, ups.b.port, ups.raw.port))
    n = node_factory(f"""
        [upstreams.main]
        servers = ["{a}"]
        [upstreams.rr]
        servers = ["{a}", "{b}"]
        [upstreams.half]
        servers = ["{a}", "127.0.0.1:{dead}"]
        fail_timeout = 30
        [upstreams.dead]
        servers = ["127.0.0.1:{dead}"]
        [upstreams.slow]
        servers = ["{a}"]
        read_timeout = 0.5
        [upstreams.raw]
        servers = ["{raw}"]
        [upstreams.piped]
        servers = ["{a}"]
        pipeline = 8

        [[routes]]
        prefix = "/app/"
        kind = "proxy"
        upstream = "main"
        [[routes]]
        prefix = "/rr/"
        kind = "proxy"
        upstream = "rr"
        [[routes]]
        prefix = "/half/"
        kind = "proxy"
        upstream = "half"
        [[routes]]
        prefix = "/dead/"
        kind = "proxy"
        upstream = "dead"
        [[routes]]
        prefix = "/slow/"
        kind = "proxy"
        upstream = "slow"
        [[routes]]
        prefix = "/raw/"
        kind = "proxy"
        upstream = "raw"
        [[routes]]
        prefix = "/piped/"
        kind = "proxy"
        upstream = "piped"
        [[routes]]
        prefix = "/small/"
        kind = "proxy"
        upstream = "main"
        max_body_bytes = 1000
    """)
    n.dead = dead
    return n


def metric(node, name: str, **labels) -> float:
    text = httpx.get(node.url("admin", "/metrics")).text
    total = 0.0
    found = False
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, f"no {name} {labels} in metrics:\n{text}"
    return total


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


# -- tests -------------------------------------------------------------------------------

def test_echo_headers_rewritten_and_bodies_streamed(node, ups):
    url = node.url("http", "/app/echo?x=1&y=two")
    r = curl("-i", url, "-H", "X-Forwarded-For: 10.1.1.1", "-H", "Connection: keep-alive, X-Hop",
             "-H", "X-Hop: secret", "-H", "Keep-Alive: timeout=9", "-H", "TE: trailers",
             "-H", "Proxy-Connection: keep-alive", "-H", "X-Custom: kept")
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    echo = json.loads(body)
    hs = {k.lower(): v for k, v in echo["headers"]}
    assert echo["server"] == "A" and echo["method"] == "GET"
    assert echo["path"] == "/app/echo" and echo["query"] == "x=1&y=two"
    assert hs["host"] == f"127.0.0.1:{node.port('http')}"          # Host as the client sent it
    assert hs["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert hs["x-forwarded-proto"] == "http"
    assert hs["x-request-id"].startswith("test-node-")
    # ... and the client gets the same id back, to quote in a report.
    assert f"x-request-id: {hs['x-request-id']}\r\n".encode() in head.lower()
    assert hs["x-custom"] == "kept"
    for hop in ("x-hop", "te", "proxy-connection", "trailer", "upgrade"):
        assert hop not in hs, hop
    assert hs.get("connection", "keep-alive").lower() == "keep-alive"  # ours, if any
    assert "timeout=9" not in hs.get("keep-alive", "")

    # HTTPS: X-Forwarded-Proto follows the client's scheme; a client X-Request-Id is kept.
    r = curl("--cacert", str(node.ca), node.url("https", "/app/echo"), "-H", "X-Request-Id: abc-123")
    assert r.returncode == 0, r.stderr
    hs = {k.lower(): v for k, v in json.loads(r.stdout)["headers"]}
    assert hs["x-forwarded-proto"] == "https" and hs["x-request-id"] == "abc-123"
    assert hs["x-forwarded-for"] == "127.0.0.1"

    # Response hop-by-hop headers are not passed on; end-to-end ones are.
    r = httpx.get(node.url("http", "/app/hop"))
    assert r.status_code == 200 and r.text == "hop"
    assert r.headers["x-end-to-end"] == "yes"
    for hop in ("x-hop-resp", "keep-alive", "trailer"):
        assert hop not in r.headers, hop

    with httpx.Client() as c:
        # POST with Content-Length.
        r = c.post(node.url("http", "/app/echo"), content=b"hello world")
        echo = r.json()
        assert echo["method"] == "POST" and echo["body"] == "hello world"
        assert {k.lower(): v for k, v in echo["headers"]}["content-length"] == "11"

        # A chunked upload of a streamed 5 MiB body arrives whole.
        pieces = [random.Random(i).randbytes(100_000 + i) for i in range(50)]
        want = hashlib.sha256(b"".join(pieces))

        def gen():
            yield from pieces

        r = c.put(node.url("http", "/app/echo"), content=gen())
        echo = r.json()
        hs = {k.lower(): v for k, v in echo["headers"]}
        assert hs.get("transfer-encoding") == "chunked"
        assert echo["body_len"] == sum(map(len, pieces))
        assert echo["body_sha256"] == want.hexdigest()

    # curl: a chunked upload from stdin.
    data = random.Random(3).randbytes(300_000)
    r = subprocess.run(["curl", "-sS", "-T", "-", "-H", "Transfer-Encoding: chunked",
                        node.url("http", "/app/echo")], input=data, capture_output=True, timeout=20)
    assert json.loads(r.stdout)["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_keepalive_reuse(node, ups):
    with httpx.Client() as c:
        for i in range(20):
            r = c.get(node.url("http", f"/app/echo?i={i}"))
            assert r.status_code == 200 and r.json()["query"] == f"i={i}"
    assert ups.a.requests == 20
    assert len(ups.a.peers) <= 3, ups.a.peers
    assert metric(node, "farts_proxy_pool_idle", upstream="main") >= 1
    assert metric(node, "farts_proxy_requests_total", upstream="main", outcome="ok") == 20


def test_round_robin_and_a_down_server(node, ups):
    with httpx.Client() as c:
        seen = [c.get(node.url("http", "/rr/echo")).json()["server"] for _ in range(10)]
    assert seen.count("A") == 5 and seen.count("B") == 5, seen

    dead = f"127.0.0.1:{node.dead}"
    with httpx.Client() as c:
        for _ in range(10):
            r = c.get(node.url("http", "/half/echo"))
            assert r.status_code == 200 and r.json()["server"] == "A"
        # A POST after a connect failure goes to the other server too: nothing was sent.
        r = c.post(node.url("http", "/half/echo"), content=b"x" * 1000)
        assert r.status_code == 200 and r.json()["body_len"] == 1000
    assert metric(node, "farts_proxy_upstream_up", upstream="half", server=dead) == 0
    assert metric(node, "farts_proxy_upstream_up", upstream="half",
                  server=f"127.0.0.1:{ups.a.port}") == 1
    assert metric(node, "farts_proxy_retries_total", upstream="half") >= 1
    # Marked down after max_fails (2) connect failures: it is then skipped, not retried.
    assert metric(node, "farts_proxy_requests_total", upstream="half", server=dead,
                  outcome="connect_error") == 2


def test_errors_502_504(node, ups):
    r = curl("-i", node.url("http", "/dead/x"))
    assert r.stdout.startswith(b"HTTP/1.1 502"), r.stdout
    assert b"502 Bad Gateway" in r.stdout

    t = time.monotonic()
    r = httpx.get(node.url("http", "/slow/slow?delay=3"), timeout=10)
    assert r.status_code == 504, r.text
    assert r.headers["x-request-id"].startswith("test-node-")   # the proxy's own errors carry it too
    assert time.monotonic() - t < 2.5

    r = httpx.get(node.url("http", "/raw/garbage"))
    assert r.status_code == 502

    # The upstream cuts the body short: the client connection is cut too (never a
    # response that looks complete), and the node carries on.
    with pytest.raises(httpx.HTTPError):
        httpx.get(node.url("http", "/app/cut"))
    assert httpx.get(node.url("http", "/app/echo")).status_code == 200
    assert metric(node, "farts_proxy_requests_total", upstream="main", outcome="body_error") == 1
    assert metric(node, "farts_proxy_requests_total", upstream="dead", outcome="connect_error") == 1
    assert metric(node, "farts_proxy_requests_total", upstream="slow", outcome="timeout") == 1
    log = node.log()
    assert "connect failed" in log and "no response within 0.5s" in log
    assert "connection lost mid-body" in log
    assert node.alive()


def test_stale_keepalive_retried_and_interim_skipped(node, ups):
    raw = ups.raw
    before = raw.connections
    with httpx.Client() as c:
        # 1xx from the upstream is skipped.
        r = c.get(node.url("http", "/raw/interim"))
        assert r.status_code == 200 and r.text == "fresh"
        # The pooled connection dies as the next request goes out: replayed on a fresh one.
        for _ in range(3):
            r = c.get(node.url("http", "/raw/x"))
            assert r.status_code == 200 and r.text == "fresh"
        # Not for a POST: it may have had an effect.
        r = c.post(node.url("http", "/raw/x"), content=b"")
        assert r.status_code == 502
    assert raw.connections - before == 4
    assert metric(node, "farts_proxy_requests_total", upstream="raw", outcome="stale") == 3
    assert metric(node, "farts_proxy_retries_total", upstream="raw") == 3


def test_large_response_streamed(node, ups):
    pid = node.proc.pid
    # Warm up (imports, buffers), then measure the peak RSS around 20 MiB transfers.
    assert httpx.get(node.url("http", "/app/big?size=1000000")).status_code == 200
    peak_before = rss_peak_kib(pid)

    r = subprocess.run(f"curl -sS --max-time 20 '{node.url('http', '/app/big')}' | sha256sum",
                       shell=True, capture_output=True, timeout=30)
    assert r.stdout.split()[0].decode() == big_sha256(BIG), r.stderr

    # A slow reader: a proxy that buffered would hold the whole body meanwhile.
    with httpx.stream("GET", node.url("http", "/app/big?chunked=1"), timeout=20) as resp:
        assert resp.headers["x-server"] == "A"
        assert "content-length" not in resp.headers
        h = hashlib.sha256()
        n = 0
        for piece in resp.iter_raw():
            h.update(piece)
            n += len(piece)
            if n < 1024 * 1024 <= n + len(piece):
                time.sleep(1.0)
            elif n < 1024 * 1024:
                time.sleep(0.01)
    assert n == BIG and h.hexdigest() == big_sha256(BIG)
    growth = rss_peak_kib(pid) - peak_before
    # Streaming holds well under 1 MiB here; a proxy that buffers grows by ~16 MiB.
    assert growth < 8 * 1024, f"node peak RSS grew by {growth} KiB"


def test_client_disconnect_mid_download(node, ups):
    for _ in range(3):
        with httpx.stream("GET", node.url("http", "/app/big"), timeout=20) as resp:
            got = 0
            for piece in resp.iter_raw():
                got += len(piece)
                if got > 2 * 1024 * 1024:
                    break
    deadline = time.monotonic() + 5
    while metric(node, "farts_proxy_requests_total", upstream="main", outcome="client_gone") < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.get(node.url("http", "/app/big?size=300000"))
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == big_sha256(300000)
    assert node.alive()


def test_head_and_bodiless_responses(node, ups):
    r = curl("-I", node.url("http", "/app/big?size=12345"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/1.1 200")
    assert re.search(rb"(?i)content-length: 12345\r\n", r.stdout), r.stdout
    with httpx.Client() as c:
        # On one client connection: HEAD, 204, 304, then a GET still framed right.
        r = c.head(node.url("http", "/app/big?size=12345"))
        assert r.status_code == 200 and r.headers["content-length"] == "12345" and r.content == b""
        r = c.get(node.url("http", "/app/status?code=204"))
        assert r.status_code == 204 and r.content == b""
        r = c.get(node.url("http", "/app/status?code=304"))
        assert r.status_code == 304 and r.headers["etag"] == '"v1"'
        r = c.get(node.url("http", "/app/big?size=5000"))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == big_sha256(5000)
    assert len(ups.a.peers) == 1  # the upstream connection was reused all along


# -- the pure parts, without sockets -------------------------------------------------------

@pytest.mark.parametrize("impl", ["fast.proxyhead", "farts.proxy.headers"])
def test_header_rewriting(impl):
    import importlib

    from farts.proxy.headers import origin_form
    rewriting = importlib.import_module(impl)   # the compiled one and its reference
    request_headers, response_headers = rewriting.request_headers, rewriting.response_headers

    hs = [(b"host", b"example.com"), (b"connection", b"Keep-Alive, X-Secret"),
          (b"x-secret", b"1"), (b"keep-alive", b"300"), (b"te", b"trailers"),
          (b"upgrade", b"websocket"), (b"proxy-connection", b"x"), (b"transfer-encoding", b"chunked"),
          (b"content-length", b"5"), (b"x-forwarded-for", b"1.1.1.1"),
          (b"x-forwarded-for", b"2.2.2.2"), (b"x-forwarded-proto", b"gopher"),
          (b"expect", b"100-continue"), (b"accept", b"*/*")]
    out, rid = request_headers(hs, "9.9.9.9", "https", lambda: b"gen-1", None, b"fallback:1")
    assert out == [(b"host", b"example.com"), (b"accept", b"*/*"),
                   (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 9.9.9.9"),
                   (b"x-forwarded-proto", b"https"), (b"x-request-id", b"gen-1")]
    assert rid == b"gen-1"
    out, rid = request_headers([(b"x-request-id", b"mine")], "::1", "http", lambda: b"no", None, b"up:80")
    assert out == [(b"host", b"up:80"), (b"x-request-id", b"mine"),
                   (b"x-forwarded-for", b"::1"), (b"x-forwarded-proto", b"http")]
    assert rid == b"mine"
    # An absolute-form target's authority is the Host the edge routed by: it replaces the
    # client's Host header, and Connection cannot remove it.
    out, _ = request_headers([(b"host", b"localhost"), (b"connection", b"host")], "::1", "http",
                             lambda: b"r", b"other.test:8080", b"up:80")
    assert out[0] == (b"host", b"other.test:8080") and [h for h in out if h[0] == b"host"] == [out[0]]
    from farts.proxy.headers import authority_of
    assert authority_of(b"http://other.test/private/x") == b"other.test"
    assert authority_of(b"http://h:81?q") == b"h:81"
    assert authority_of(b"/x") is None

    assert response_headers([(b"connection", b"x-a"), (b"x-a", b"1"), (b"content-length", b"3"),
                             (b"transfer-encoding", b"chunked"), (b"set-cookie", b"a=1"),
                             (b"set-cookie", b"b=2")], b"r-1") == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                                                                   (b"x-request-id", b"r-1")]
    assert response_headers([(b"x-request-id", b"app")], b"r-1") == [(b"x-request-id", b"app")]

    assert origin_form(b"/a?b") == b"/a?b"
    assert origin_form(b"http://h:1/p/q?x=1") == b"/p/q?x=1"
    assert origin_form(b"http://h?x") == b"/?x"
    assert origin_form(b"https://h") == b"/"
    assert origin_form(b"*") == b"*"


def test_server_choice_and_health():
    from farts.metrics import Metrics
    from farts.proxy import ProxyHandler, ProxyStats
    from farts.proxy.config import Upstream

    metrics = Metrics()
    stats = ProxyStats(metrics)
    up = Upstream(servers=["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], max_fails=2, fail_timeout=5)
    p = ProxyHandler("g", up, "n1", stats)
    ProxyHandler("other", Upstream(servers=["10.0.0.9:80"]), "n1", stats)  # metrics shared
    a, b, c = p.servers
    assert [p.pick() for _ in range(6)] == [a, b, c, a, b, c]
    assert not b.failed()           # one failure: still up
    assert b.failed()               # max_fails in a row: down
    assert [p.pick() for _ in range(4)] == [a, c, a, c]
    assert p.pick(exclude=[a]) is c
    time.sleep(0.01)
    for s in (a, a, c, c):
        s.failed()
    # All down: the one that comes back first (b, marked down first) rather than none.
    assert p.pick() is b
    assert p.pick(exclude=[b]) is a
    assert p.pick(exclude=[a, b, c]) is None
    b.succeeded()
    assert p.pick() is b
    text = metrics.render().decode()
    assert 'farts_proxy_upstream_up{server="10.0.0.1:80",upstream="g"} 0.0' in text
    assert 'farts_proxy_upstream_up{server="10.0.0.2:80",upstream="g"} 1.0' in text
    assert 'farts_proxy_upstream_up{server="10.0.0.9:80",upstream="other"} 1.0' in text
    assert p.new_request_id().startswith(b"n1-")
    assert p.new_request_id() != p.new_request_id()
    p.close()


def test_concurrent_requests(node, ups):
    async def main():
        limits = httpx.Limits(max_connections=30)
        async with httpx.AsyncClient(limits=limits, timeout=20) as c:
            async def one(i: int):
                if i % 2:
                    body = random.Random(i).randbytes(50_000 + i)
                    r = await c.post(node.url("http", f"/app/echo?i={i}"), content=body)
                    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
                else:
                    r = await c.get(node.url("http", f"/rr/big?size={100_000 + i}"))
                    assert hashlib.sha256(r.content).hexdigest() == big_sha256(100_000 + i)
            await asyncio.gather(*(one(i) for i in range(120)))

    asyncio.run(main())
    assert ups.a.requests + ups.b.requests == 120
    assert metric(node, "farts_proxy_pool_idle", upstream="main") <= 32
    assert metric(node, "farts_proxy_requests_total", outcome="ok") == 120


def raw_exchange(node, head: bytes, then: bytes = b"", wait_for: bytes = b"") -> tuple[bytes, bytes]:
    """Sends head, reads until wait_for shows up (if given), sends then; returns (early, rest)."""
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(head)
    early = b""
    while wait_for and wait_for not in early:
        chunk = s.recv(4096)
        if not chunk:
            break
        early += chunk
    s.sendall(then)
    rest = b""
    while chunk := s.recv(65536):
        rest += chunk
    s.close()
    return early, rest


def test_expect_100_continue_is_answered_when_the_body_is_wanted(node, ups):
    body = b"q" * 5000
    early, rest = raw_exchange(
        node, b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
              b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
        then=body, wait_for=b"\r\n\r\n")
    assert early.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert rest.startswith(b"HTTP/1.1 200 ") or early.count(b"HTTP/1.1 200 ")
    echoed = json.loads((early + rest).split(b"\r\n\r\n", 2)[2])
    assert echoed["body_len"] == 5000 and echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_over_the_limit_gets_413_without_continue(node, ups):
    early, rest = raw_exchange(
        node, b"POST /small/echo HTTP/1.1\r\nHost: localhost\r\n"
              b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n", wait_for=b"\r\n\r\n")
    assert early.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in early + rest


def test_chunked_upload_over_the_route_limit_is_413(node, ups):
    before = ups.a.requests
    chunks = b"".join(b"190\r\n" + b"y" * 400 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    _, rest = raw_exchange(node, b"POST /small/echo HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert rest.startswith(b"HTTP/1.1 413 ")
    # Under the limit the same route passes the body through.
    r = httpx.post(node.url("http", "/small/echo"), content=iter([b"z" * 400, b"z" * 400]))
    assert r.status_code == 200 and r.json()["body_len"] == 800
    assert ups.a.requests >= before + 1


def test_request_bodies_are_read_before_the_upstream_sees_the_request(node, ups):
    before = ups.a.requests
    # A chunk declaring 4 GiB: refused (413) when its size line is read.
    _, rest = raw_exchange(node, b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n100000000\r\nabc")
    assert rest.startswith(b"HTTP/1.1 413 ")
    # A client that goes away mid-body: nothing reached the application.
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
    s.close()
    # A small chunked upload arrives whole, with its length.
    r = httpx.post(node.url("http", "/app/echo"), content=iter([b"a" * 10, b"b" * 10]))
    hs = {k.lower(): v for k, v in r.json()["headers"]}
    assert r.json()["body"] == "a" * 10 + "b" * 10
    assert hs.get("content-length") == "20" and "transfer-encoding" not in hs
    assert ups.a.requests == before + 1   # only the last one


def test_websocket_passes_through_to_an_application_that_speaks_it(node, ups):
    from websockets.sync.client import connect

    url = node.url("http", "/app/ws").replace("http://", "ws://")
    with connect(url, open_timeout=10) as ws:
        first = ws.recv(timeout=10)
        assert first.startswith("hello from A, request id test-node-")
        for i in range(20):
            ws.send(f"m{i}")
            assert ws.recv(timeout=10) == f"m{i}".join(["echo:", ""])
        big = bytes(range(256)) * 4000           # 1 MB each way, past every buffer
        ws.send(big)
        assert ws.recv(timeout=20) == big[::-1]
    # An application that refuses the switch: its answer goes back as it is.
    r = httpx.get(node.url("http", "/app/status?code=426"),
                  headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert r.status_code == 426
    # Over TLS to the edge as well.
    import ssl
    ctx = ssl.create_default_context(cafile=str(node.ca))
    with connect(node.url("https", "/app/ws").replace("https://", "wss://"), ssl=ctx, open_timeout=10) as ws:
        assert ws.recv(timeout=10).startswith("hello from A")
        ws.send("tls")
        assert ws.recv(timeout=10) == "echo:tls"
    assert metric(node, "farts_proxy_requests_total", upstream="main", outcome="upgraded") == 2


def test_bad_chunk_while_the_upstream_reads_gets_400(node, ups):
    _, rest = raw_exchange(node, b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    assert rest.startswith(b"HTTP/1.1 400 ")


def test_a_bad_chunk_in_the_first_read_leaves_no_handler_coroutine_unawaited(node, ups):
    # Head and bad chunk line in one read: the connection fails before the proxy's
    # coroutine had its first step. It must still run (and end), never be dropped.
    for _ in range(5):
        _, rest = raw_exchange(node, b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
        assert rest.startswith(b"HTTP/1.1 400 ")
    assert httpx.get(node.url("http", "/app/echo")).status_code == 200   # (the loop went on)
    assert "never awaited" not in node.log()


def test_a_large_unread_body_then_an_error_keeps_the_connection_usable(node, ups):
    # The upstream cannot be reached: the 300 kB body (past the pause threshold) is never
    # read by anyone; after the 502 the same connection must serve the next request.
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"POST /dead/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 300000\r\n\r\n"
              + b"b" * 300000)
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 502 ")
    s.sendall(b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    rest = b""
    while chunk := s.recv(65536):
        rest += chunk
    s.close()
    assert b"HTTP/1.1 200 " in first + rest


def test_an_interim_100_from_the_upstream_is_not_its_answer():
    from farts.clock import FakeClock
    from farts.transport.client import ClientConnection, Deadlines, Pool
    from fast.http1 import ResponseParser

    conn = ClientConnection(Pool("127.0.0.1", 1, 1, Deadlines(FakeClock())))
    conn.events.extend(ResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n"))
    assert not conn.has_final_head()
    conn.events.extend(ResponseParser().feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    assert conn.has_final_head()


def test_a_client_gone_while_the_upstream_thinks_is_counted_and_the_node_carries_on(node, ups):
    before = ups.a.requests
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"GET /app/slow?delay=1.5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    deadline = time.monotonic() + 10
    while ups.a.requests == before:   # the upstream has the request
        assert time.monotonic() < deadline
        time.sleep(0.02)
    s.close()

    def gone() -> float:
        try:
            return metric(node, "farts_proxy_requests_total", upstream="main", outcome="client_gone")
        except AssertionError:   # (no such series yet)
            return 0.0
    while gone() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.get(node.url("http", "/app/echo"))
    assert r.status_code == 200 and r.json()["server"] == "A"


def test_pipelined_requests_are_answered_in_order(node, ups):
    # Three requests in one write: each waits for the one before it to be answered.
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"".join(b"GET /app/echo?n=%d HTTP/1.1\r\nHost: localhost\r\n%s\r\n"
                       % (i, b"Connection: close\r\n" if i == 2 else b"") for i in range(3)))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert [json.loads(m.group(1))["query"] for m in re.finditer(rb"\r\n\r\n(\{.*?\})(?=HTTP/|$)", data)] == \
        ["n=0", "n=1", "n=2"]


def test_gets_from_many_clients_go_pipelined_and_each_gets_its_own_answer(node, ups):
    """pipeline = 8: the GETs that reach the node in one loop turn go to aiohttp several
    to a write; each client gets the answer to its own request (with a big streamed body
    among them), and the answers go on after a streamed one."""
    port = node.port("http")

    def get_all(paths: list[str]) -> list[bytes]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in paths]
        for s, path in zip(socks, paths, strict=True):   # (all sent before any is read: one turn of the node)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        out = []
        for s in socks:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            out.append(data)
        return out

    for round_ in range(20):
        paths = [f"/piped/echo?r={round_}&i={i}" for i in range(24)]
        paths[5] = f"/piped/big?size={300_000 + round_}"
        for path, data in zip(paths, get_all(paths), strict=True):
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            if "big" in path:
                assert hashlib.sha256(body).hexdigest() == big_sha256(300_000 + round_)
            else:
                assert json.loads(body)["query"] == path.split("?")[1]
        try:
            if metric(node, "farts_proxy_pipelined_total", upstream="piped") > 0:
                break
        except AssertionError:   # (no such series yet)
            pass
    else:
        raise AssertionError("no GET went pipelined in 20 rounds")
    assert metric(node, "farts_proxy_requests_total", upstream="piped", outcome="ok") == 24 * (round_ + 1)
