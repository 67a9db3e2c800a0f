"""The CDN end to end: a real origin (aiohttp, in a thread of this process) that counts
requests and can be slowed, fail or change content; real node subprocesses; curl and
httpx as clients."""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import ssl
import subprocess
import threading
import time
from email.utils import formatdate

import httpx
import pytest
from aiohttp import web
from conftest import WORKERS_1_AND_3

BIG = 8 * 1024 * 1024
BIG_BODY = random.Random(4).randbytes(BIG)


class Origin:
    """Objects by path: (status, headers, body); optional per-path delay and failure."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[int, dict, bytes]] = {}
        self.delay: dict[str, float] = {}
        self.trickle: dict[str, float] = {}   # path -> seconds between 64 KiB pieces
        self.counts: dict[str, int] = {}
        self.seen_headers: dict[str, list] = {}  # (case-insensitive CIMultiDicts)
        self.finished: set[str] = set()       # trickled paths whose body was all sent
        self.down = False
        self.port = 0
        # Methods other than GET and HEAD: (method, path, body) as the origin read them,
        # and the answer per path (status, headers; default 200).
        self.writes: list[tuple[str, str, bytes]] = []
        self.write_answers: dict[str, tuple[int, dict]] = {}
        self.echo: dict[str, str] = {}   # path -> a request field whose value ends the body
        self.methods: list[tuple[str, str]] = []  # (method, path) of every request
        self.wrong_304: set[str] = set()  # paths answering any If-None-Match with a 304 for another ETag
        self.early_hints: dict[str, str] = {}  # path -> the Link of a 103 sent before the answer
        self.ranges: set[str] = set()     # paths answering one byte range with a 206

    def put(self, path: str, body: bytes, status: int = 200, **headers: str) -> None:
        self.objects[path] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)

    def count(self, path: str) -> int:
        return self.counts.get(path, 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.counts[path] = self.counts.get(path, 0) + 1
        self.methods.append((request.method, path))
        self.seen_headers.setdefault(path, []).append(request.headers.copy())
        if self.down:
            return web.Response(status=503, text="down")
        if path in self.early_hints:   # (aiohttp has no API for 1xx: the bytes themselves)
            request.transport.write(f"HTTP/1.1 103 Early Hints\r\nLink: {self.early_hints[path]}\r\n\r\n".encode())
        if request.method not in ("GET", "HEAD"):
            self.writes.append((request.method, path, await request.read()))
            status, headers = self.write_answers.get(path, (200, {}))
            return web.Response(status=status, headers=headers, body=f"{request.method} done".encode())
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        if path not in self.objects:
            return web.Response(status=404, text="no such object")
        status, headers, body = self.objects[path]
        etag = headers.get("ETag")
        if path in self.wrong_304 and request.headers.get("If-None-Match"):
            return web.Response(status=304, headers={**headers, "ETag": '"someone-else"'})
        if etag and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if path in self.echo:
            body = body + request.headers.get(self.echo[path], "-").encode()
        if path in self.ranges and request.headers.get("Range"):
            first, stop, _ = request.http_range.indices(len(body))
            return web.Response(status=206, body=body[first:stop], headers={
                **headers, "Content-Range": f"bytes {first}-{stop - 1}/{len(body)}"})
        if path in self.trickle:
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            for i in range(0, len(body), 65536):
                await resp.write(body[i:i + 65536])
                await asyncio.sleep(self.trickle[path])
            await resp.write_eof()
            self.finished.add(path)
            return resp
        return web.Response(status=status, headers=headers, body=body)


class OriginThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.origin = Origin()
        asyncio.run_coroutine_threadsafe(self.origin.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.origin.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def origin():
    t = OriginThread()
    yield t.origin
    t.close()


def cdn_config(port: int, capacity: int = 64 * 1024 * 1024, extra: str = "", read_timeout: float = 1.0) -> str:
    return f"""
[cdn]
capacity_bytes = {capacity}
flush_interval = 0.2
memory_object_bytes = 4096
{extra}

[cdn.origins.test]
url = "http://127.0.0.1:{port}/files/"
read_timeout = {read_timeout}

[[routes]]
prefix = "/media/"
kind = "cdn"
origin = "test"
"""


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def purge(node, **spec) -> dict:
    r = httpx.post(node.url("admin", "/api/cache/purge"), json=spec, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def metric_values(node) -> dict[str, float]:
    """Unlabelled samples of the node's /metrics."""
    out = {}
    for line in httpx.get(node.url("admin", "/metrics")).text.splitlines():
        name, _, value = line.partition(" ")
        if not line.startswith("#") and "{" not in name and value:
            out[name] = float(value)
    return out


def labelled(node, name: str, **labels) -> float:
    """The sum of the node's samples of ``name`` that carry ``labels``."""
    total = 0.0
    for line in httpx.get(node.url("admin", "/metrics")).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@WORKERS_1_AND_3
def test_miss_then_hit_and_head(origin, node_factory):
    origin.put("/files/a.txt", b"hello cdn\n" * 100, Cache_Control="max-age=60", Content_Type="text/plain",
               ETag='"a1"')
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/a.txt")
    r1 = httpx.get(url)
    assert r1.status_code == 200 and r1.content == b"hello cdn\n" * 100
    assert r1.headers["x-cache"] == "MISS"
    # (The object is installed once its file is settled (fsync, rename), a moment after
    # the answer has gone out; a request in that window waits for it: a HIT.)
    r2 = httpx.get(url)
    assert r2.status_code == 200 and r2.content == r1.content
    assert r2.headers["x-cache"] == "HIT"
    assert r2.headers["etag"] == '"a1"' and r2.headers["content-type"] == "text/plain"
    assert 0 <= int(r2.headers["age"]) <= 60 and "set-cookie" not in r2.headers
    h = httpx.head(url)
    assert h.status_code == 200 and h.headers["content-length"] == "1000" and h.content == b""
    assert origin.count("/files/a.txt") == 1
    # A bigger object than the memory tier goes by sendfile; HEAD of it too.
    origin.put("/files/big.bin", BIG_BODY[:300_000], Cache_Control="max-age=60")
    big = node.url("http", "/media/big.bin")
    assert httpx.get(big).content == BIG_BODY[:300_000]
    out = curl("-D", "-", "-o", "/dev/null", "-I", big).stdout.decode()
    assert "x-cache: HIT" in out
    assert "content-length: 300000" in out.lower()
    got = curl(big).stdout
    assert got == BIG_BODY[:300_000]
    assert origin.count("/files/big.bin") == 1
    metrics = httpx.get(node.url("admin", "/metrics")).text
    assert "farts_cdn_hits_total 4.0" in metrics


def test_a_hit_from_memory_is_counted_in_place_and_not_timed(origin, node_factory):
    """A hit from memory is the handler's ready Fixed: the connection writes it and counts
    it by route and status in place, as a static route's answer, and does not time it."""
    origin.put("/files/c.txt", b"counted\n", Cache_Control="max-age=60")
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/c.txt")
    assert wait_for(lambda: httpx.get(url).headers["x-cache"] == "HIT")
    counted = labelled(node, "farts_http_requests_total", listener="http", route="/media/", status="200")
    timed = labelled(node, "farts_http_request_duration_seconds_count", listener="http", route="/media/")
    for _ in range(3):
        assert httpx.get(url).headers["x-cache"] == "HIT"
    assert labelled(node, "farts_http_requests_total", listener="http", route="/media/",
                    status="200") == counted + 3
    assert labelled(node, "farts_http_request_duration_seconds_count", listener="http", route="/media/") == timed


@WORKERS_1_AND_3
def test_concurrent_cold_misses_make_one_origin_request(origin, node_factory):
    body = random.Random(1).randbytes(200_000)
    origin.put("/files/cold.bin", body, Cache_Control="max-age=60")
    origin.delay["/files/cold.bin"] = 0.5
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/cold.bin")

    async def many():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=20) as client:
            return await asyncio.gather(*[client.get(url) for _ in range(100)])

    answers = asyncio.run(many())
    assert all(r.status_code == 200 and r.content == body for r in answers)
    assert origin.count("/files/cold.bin") == 1
    m = metric_values(node)
    # One miss; the others waited for it (or, on a slow machine, came after it: hits).
    assert m["farts_cdn_misses_total"] == 1 and m["farts_cdn_coalesced_total"] >= 1
    assert m["farts_cdn_coalesced_total"] + m["farts_cdn_hits_total"] == 99


def test_restart_keeps_hits(origin, node_factory):
    origin.put("/files/keep.bin", b"k" * 50_000, Cache_Control="max-age=600")
    origin.put("/files/small.txt", b"small", Cache_Control="max-age=600")
    cfg = cdn_config(origin.port)
    node = node_factory(cfg)
    for p in ("/media/keep.bin", "/media/small.txt"):
        assert httpx.get(node.url("http", p)).status_code == 200
    node.stop()
    node2 = node_factory(cfg, base=_same_dir(node))
    for p, body in (("/media/keep.bin", b"k" * 50_000), ("/media/small.txt", b"small")):
        r = httpx.get(node2.url("http", p))
        assert r.status_code == 200 and r.content == body and r.headers["x-cache"] == "HIT"
    assert origin.count("/files/keep.bin") == 1 and origin.count("/files/small.txt") == 1


def _same_dir(node) -> str:
    """A base config whose data_dir is the first node's (a restart of the same node)."""
    from conftest import BASE_CONFIG
    return BASE_CONFIG.replace("{data_dir}", str(node.data_dir)).replace("{", "{{").replace("}", "}}")


def test_kill_during_fill_is_not_served_truncated(origin, node_factory):
    origin.put("/files/huge.bin", BIG_BODY, Cache_Control="max-age=600")
    origin.trickle["/files/huge.bin"] = 0.01
    cfg = cdn_config(origin.port)
    node = node_factory(cfg)
    with httpx.stream("GET", node.url("http", "/media/huge.bin"), timeout=20) as r:
        got = 0
        for chunk in r.iter_bytes():
            got += len(chunk)
            if got > 1024 * 1024:
                # Streaming miss: the client has its first MiB while the origin still sends.
                assert "/files/huge.bin" not in origin.finished
                node.stop(signal.SIGKILL)
                break
    assert node.proc.returncode == -signal.SIGKILL
    del origin.trickle["/files/huge.bin"]
    node2 = node_factory(cfg, base=_same_dir(node))
    r = httpx.get(node2.url("http", "/media/huge.bin"), timeout=20)
    assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(BIG_BODY).digest()
    assert r.headers["x-cache"] == "MISS"
    assert origin.count("/files/huge.bin") == 2
    # The interrupted fill's temp file went at start; the new fill's was renamed in place.
    assert wait_for(lambda: not any((node.data_dir / "cache" / "tmp").iterdir()))
    assert httpx.get(node2.url("http", "/media/huge.bin"), timeout=20).headers["x-cache"] == "HIT"


@WORKERS_1_AND_3
def test_range_with_curl(origin, node_factory):
    body = bytes(range(256)) * 400  # 102400 bytes
    origin.put("/files/r.bin", body, Cache_Control="max-age=60", ETag='"r1"')
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/r.bin")
    assert httpx.get(url).status_code == 200
    assert httpx.head(url).headers.get("x-cache") == "HIT"
    out = curl("-D", "/dev/stderr", "-r", "100-199", url)
    assert out.stdout == body[100:200]
    assert b"206" in out.stderr.split(b"\r\n")[0]
    assert b"content-range: bytes 100-199/102400" in out.stderr
    out = curl("-r", "-10", url)
    assert out.stdout == body[-10:]
    out = curl("-o", "/dev/null", "-w", "%{http_code}", "-r", "200000-", url)
    assert out.stdout == b"416"
    assert origin.count("/files/r.bin") == 1


@WORKERS_1_AND_3
def test_conditional_requests_get_304(origin, node_factory):
    lm = formatdate(time.time() - 3600, usegmt=True)
    origin.put("/files/c.txt", b"conditional", Cache_Control="max-age=60", ETag='"c1"', Last_Modified=lm)
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/c.txt")
    assert httpx.get(url).status_code == 200
    r = httpx.get(url, headers={"If-None-Match": '"c1"'})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == '"c1"'
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    r = httpx.get(url, headers={"If-Modified-Since": formatdate(time.time(), usegmt=True)})
    assert r.status_code == 304
    r = httpx.get(url, headers={"If-Modified-Since": formatdate(time.time() - 7200, usegmt=True)})
    assert r.status_code == 200 and r.content == b"conditional"
    assert origin.count("/files/c.txt") == 1


def test_conditional_request_on_a_miss_or_joining_a_fill_gets_304(origin, node_factory):
    """RFC 9110 §13.2.1: the cache evaluates a client's conditionals on the representation
    it selected, the origin's 200 to the fill included (the fill itself asks for the
    whole object: the cache needs it)."""
    origin.put("/files/j.txt", b"joined", Cache_Control="max-age=60", ETag='"j1"')
    origin.delay["/files/j.txt"] = 0.3
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/j.txt")

    async def both():
        async with httpx.AsyncClient(timeout=20) as client:
            return await asyncio.gather(client.get(url, headers={"If-None-Match": '"j1"'}),
                                        client.get(url), client.get(url, headers={"If-None-Match": '"x"'}))

    cond, plain, other = asyncio.run(both())
    assert cond.status_code == 304 and cond.content == b"" and cond.headers["etag"] == '"j1"'
    assert plain.status_code == 200 and plain.content == b"joined"
    assert other.status_code == 200 and other.content == b"joined"
    assert origin.count("/files/j.txt") == 1
    assert "If-None-Match" not in origin.seen_headers["/files/j.txt"][-1]


def test_stale_while_revalidate_and_revalidation(origin, node_factory):
    origin.put("/files/s.txt", b"version 1", Cache_Control="max-age=1, stale-while-revalidate=30")
    origin.put("/files/v.txt", b"validated", Cache_Control="max-age=1", ETag='"v1"')
    node = node_factory(cdn_config(origin.port))
    s_url, v_url = node.url("http", "/media/s.txt"), node.url("http", "/media/v.txt")
    assert httpx.get(s_url).content == b"version 1"
    assert httpx.get(v_url).content == b"validated"
    time.sleep(2.1)
    origin.put("/files/s.txt", b"version 2", Cache_Control="max-age=60, stale-while-revalidate=30")
    r = httpx.get(s_url)  # stale, answered at once; the refresh runs behind it
    assert r.content == b"version 1" and r.headers["x-cache"] == "STALE"
    assert wait_for(lambda: origin.count("/files/s.txt") == 2)
    assert wait_for(lambda: httpx.get(s_url).content == b"version 2")
    # Without stale-while-revalidate: a conditional request to the origin, 304 (whose
    # Cache-Control replaces the stored one), served.
    origin.put("/files/v.txt", b"validated", Cache_Control="max-age=600", ETag='"v1"')
    r = httpx.get(v_url)
    assert r.content == b"validated" and r.headers["x-cache"] == "REVALIDATED"
    assert origin.seen_headers["/files/v.txt"][-1].get("If-None-Match") == '"v1"'
    assert httpx.get(v_url).headers["x-cache"] == "HIT"
    assert origin.count("/files/v.txt") == 2


def test_stale_if_error_and_origin_errors(origin, node_factory):
    origin.put("/files/e.txt", b"still here", Cache_Control="max-age=1, stale-if-error=60")
    origin.put("/files/slow.txt", b"late", Cache_Control="max-age=60")
    origin.delay["/files/slow.txt"] = 3
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/e.txt")
    assert httpx.get(url).content == b"still here"
    time.sleep(1.5)
    origin.down = True
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"still here" and r.headers["x-cache"] == "STALE"
    r = httpx.get(node.url("http", "/media/nothing.txt"))
    assert r.status_code == 503  # origin errors pass through, not stored
    origin.down = False
    assert httpx.get(node.url("http", "/media/nothing.txt")).status_code == 404
    assert httpx.get(node.url("http", "/media/slow.txt"), timeout=10).status_code == 504
    assert origin.count("/files/nothing.txt") == 2


def test_private_and_set_cookie_are_not_stored(origin, node_factory):
    origin.put("/files/p.txt", b"private", Cache_Control="private, max-age=60")
    origin.put("/files/ck.txt", b"cookie", Cache_Control="max-age=60", Set_Cookie="sid=1")
    origin.put("/files/ns.txt", b"nostore", Cache_Control="no-store")
    node = node_factory(cdn_config(origin.port))
    for name in ("p", "ck", "ns"):
        for _ in range(2):
            assert httpx.get(node.url("http", f"/media/{name}.txt")).status_code == 200
        assert origin.count(f"/files/{name}.txt") == 2


def test_eviction_order_under_small_capacity(origin, node_factory):
    for i in range(4):
        origin.put(f"/files/o{i}.bin", bytes([i]) * 10_000, Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port, capacity=30_000))
    get = lambda i: httpx.get(node.url("http", f"/media/o{i}.bin"))  # noqa: E731
    for i in range(3):
        get(i)
    get(0)      # o0 is now the most recent: o1 is the least recent
    get(3)      # over capacity: o1 goes
    assert [get(i).headers["x-cache"] for i in (0, 2, 3)] == ["HIT", "HIT", "HIT"]
    assert [origin.count(f"/files/o{i}.bin") for i in range(4)] == [1, 1, 1, 1]
    assert get(1).headers["x-cache"] == "MISS"
    assert origin.count("/files/o1.bin") == 2
    # o1 went for o3; then o0 (least recent after the hits on o0, o2, o3) went for o1, once
    # o1 is stored (a moment after its client had it).
    assert wait_for(lambda: metric_values(node).get("farts_cdn_evictions_total") == 2)
    assert get(0).headers["x-cache"] == "MISS"


@WORKERS_1_AND_3
def test_purge_by_key_prefix_and_tenant(origin, node_factory):
    for p in ("a/1", "a/2", "b/1"):
        origin.put(f"/files/{p}", p.encode(), Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    fetch = lambda p, host="localhost": httpx.get(node.url("http", f"/media/{p}"), headers={"Host": host})  # noqa: E731
    for p in ("a/1", "a/2", "b/1"):
        fetch(p)
        fetch(p, "other.test")
    assert purge(node, tenant="demo", key="/media/a/1") == {"purged": 1}
    assert fetch("a/1").headers["x-cache"] == "MISS"
    assert fetch("a/2").headers["x-cache"] == "HIT"
    assert purge(node, tenant="demo", prefix="/media/a/") == {"purged": 2}
    assert fetch("a/2").headers["x-cache"] == "MISS"
    assert fetch("b/1").headers["x-cache"] == "HIT"
    assert fetch("a/2", "other.test").headers["x-cache"] == "HIT"  # other tenant untouched
    assert purge(node, tenant="other") == {"purged": 3}
    assert fetch("b/1", "other.test").headers["x-cache"] == "MISS"
    assert fetch("b/1").headers["x-cache"] == "HIT"
    r = httpx.post(node.url("admin", "/api/cache/purge"), content=b"{nope")
    assert r.status_code == 400
    r = httpx.post(node.url("admin", "/api/cache/purge"), json={"prefix": "/x"})
    assert r.status_code == 400 and "tenant" in r.json()["error"]


@WORKERS_1_AND_3
def test_tenant_isolation(origin, node_factory):
    origin.put("/files/t.txt", b"tenant A's version", Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    assert httpx.get(node.url("http", "/media/t.txt")).content == b"tenant A's version"
    origin.put("/files/t.txt", b"tenant B's version", Cache_Control="max-age=600")
    r = httpx.get(node.url("http", "/media/t.txt"), headers={"Host": "other.test"})
    assert r.content == b"tenant B's version" and r.headers["x-cache"] == "MISS"
    assert httpx.get(node.url("http", "/media/t.txt")).content == b"tenant A's version"


def test_vary_accept_encoding(origin, node_factory):
    origin.put("/files/v.js", b"plain js", Cache_Control="max-age=600", Vary="Accept-Encoding")
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/v.js")
    assert httpx.get(url, headers={"Accept-Encoding": "identity"}).headers["x-cache"] == "MISS"
    assert httpx.get(url, headers={"Accept-Encoding": "identity"}).headers["x-cache"] == "HIT"
    r = httpx.get(url, headers={"Accept-Encoding": "gzip"})
    assert r.headers["x-cache"] == "MISS"
    assert origin.seen_headers["/files/v.js"][-1].get("Accept-Encoding") == "gzip"
    assert httpx.get(url, headers={"Accept-Encoding": "gzip"}).headers["x-cache"] == "HIT"
    assert origin.count("/files/v.js") == 2


def test_tls_hit_is_read_in_chunks(origin, node_factory):
    body = random.Random(9).randbytes(500_000)
    origin.put("/files/tls.bin", body, Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    url = node.url("https", "/media/tls.bin").replace("127.0.0.1", "localhost")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(node.ca))) as c:
        assert c.get(url).content == body
        r = c.get(url)
        assert r.content == body and r.headers["x-cache"] == "HIT"


def test_private_s3_bucket_with_sigv4(monkeypatch, node_factory):
    # moto checks signatures once its first N (setup) actions are done.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "4")
    import boto3
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="setup")
        iam.create_user(UserName="cdn")
        key = iam.create_access_key(UserName="cdn")["AccessKey"]
        iam.put_user_policy(UserName="cdn", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="assets")
        body = random.Random(3).randbytes(70_000)
        s3.put_object(Bucket="assets", Key="img/a b.bin", Body=body, CacheControl="max-age=600")
        assert httpx.get(f"{url}/assets/img/a%20b.bin").status_code == 403  # private
        node = node_factory(f"""
[cdn.origins.bucket]
kind = "s3"
url = "{url}"
bucket = "assets"
access_key_id = "{key['AccessKeyId']}"
secret_access_key = "{key['SecretAccessKey']}"

[cdn.origins.anonymous]
kind = "s3"
url = "{url}"
bucket = "assets"

[[routes]]
prefix = "/s3/"
kind = "cdn"
origin = "bucket"

[[routes]]
prefix = "/anon/"
kind = "cdn"
origin = "anonymous"
""")
        first = httpx.get(node.url("http", "/s3/img/a%20b.bin"))
        assert first.status_code == 200 and first.content == body and first.headers["x-cache"] == "MISS"
        again = curl("-D", "/dev/stderr", node.url("http", "/s3/img/a%20b.bin"))
        assert again.stdout == body and b"x-cache: HIT" in again.stderr
        assert httpx.get(node.url("http", "/anon/img/a%20b.bin")).status_code == 403
    finally:
        server.stop()


def test_quickstart_media_route_on_the_built_in_origin(tmp_path):
    import re

    from conftest import start_node

    from farts import quickstart
    data = tmp_path / "node"
    config = quickstart.prepare(data)
    text = re.sub(r"(?m)^port = \d+", "port = 0", config.read_text())
    node = start_node(tmp_path, base=text.replace("{", "{{").replace("}", "}}"))
    try:
        url = node.url("http", "/media/hello.txt")
        first = httpx.get(url)
        assert first.status_code == 200 and first.content.startswith(b"hello from the farts-edge CDN")
        assert first.headers["x-cache"] == "MISS" and first.headers["etag"]
        assert httpx.get(url).headers["x-cache"] == "HIT"
        for path in ("/media/../farts.toml", "/media/%2e%2e/farts.toml"):  # outside origin/
            out = curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", node.url("http", path))
            assert out.stdout == b"400"   # refused before routing (dot segments)
    finally:
        node.stop()


def test_up_cdn_origin_flag(capsys, tmp_path):
    from farts import cli, config, quickstart
    path = quickstart.prepare(tmp_path)
    assert config.load(path).cdn.origins["media"].kind == "dir"
    args = cli.build_parser().parse_args(["up", "--cdn-origin", "https://media.example.com/assets/"])
    cli._up_flags_into(path, args)   # what `up` does before it starts the node
    media = config.load(path).cdn.origins["media"]
    assert (media.kind, media.url) == ("http", "https://media.example.com/assets/")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--cdn-origin", "ftp://x"])
    assert "expected an http:// or https:// URL" in capsys.readouterr().err


def test_recency_survives_a_restart(origin, node_factory):
    for i in range(4):
        origin.put(f"/files/r{i}.bin", bytes([i]) * 10_000, Cache_Control="max-age=600")
    cfg = cdn_config(origin.port, capacity=30_000)
    node = node_factory(cfg)
    get = lambda n, i: httpx.get(n.url("http", f"/media/r{i}.bin"))  # noqa: E731
    for i in (0, 1, 2, 0):
        get(node, i)
    time.sleep(0.6)  # > flush_interval: the recency order is in LMDB
    node.stop()
    node2 = node_factory(cfg, base=_same_dir(node))
    get(node2, 3)  # over capacity: the least recent before the restart (r1) goes
    assert [get(node2, i).headers["x-cache"] for i in (0, 2, 3)] == ["HIT", "HIT", "HIT"]
    assert get(node2, 1).headers["x-cache"] == "MISS"


def test_limits_negative_ttl_and_origin_down(origin, node_factory):
    origin.put("/files/big.bin", BIG_BODY[:200_000], Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port, extra="max_object_bytes = 100000\nnegative_ttl = 60") + """
[cdn.origins.nowhere]
url = "http://127.0.0.1:9/"
[[routes]]
prefix = "/down/"
kind = "cdn"
origin = "nowhere"
""")
    for _ in range(2):  # too big to store: passed through each time, whole
        r = httpx.get(node.url("http", "/media/big.bin"))
        assert r.status_code == 200 and r.content == BIG_BODY[:200_000]
    assert origin.count("/files/big.bin") == 2
    for _ in range(2):  # a 404 kept for negative_ttl
        assert httpx.get(node.url("http", "/media/missing")).status_code == 404
    assert origin.count("/files/missing") == 1
    r = httpx.get(node.url("http", "/down/x"))
    assert r.status_code == 502 and "cannot connect" in r.text
    metrics = httpx.get(node.url("admin", "/metrics")).text
    assert 'farts_cdn_origin_errors_total{status="502"} 1.0' in metrics


def test_head_on_a_miss_and_methods(origin, node_factory):
    """RFC 9110 §9.3.2: HEAD asks for no content, so a HEAD that finds nothing stored is a
    HEAD to the origin, not a fetch of the whole body; the GET after it fills."""
    origin.put("/files/h.txt", b"head first", Cache_Control="max-age=600", ETag='"h1"')
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/h.txt")
    h = httpx.head(url)
    assert h.status_code == 200 and h.headers["content-length"] == "10" and h.content == b""
    assert h.headers["etag"] == '"h1"' and h.headers["x-cache"] == "MISS"
    assert origin.methods == [("HEAD", "/files/h.txt")]
    assert wait_for(lambda: httpx.get(url).headers["x-cache"] == "HIT")
    assert httpx.get(url).content == b"head first"
    h = httpx.head(url)  # stored: answered by the cache
    assert h.headers["x-cache"] == "HIT" and h.headers["content-length"] == "10"
    assert [m for m, _ in origin.methods] == ["HEAD", "GET"]


def test_head_freshens_a_stored_get(origin, node_factory):
    """RFC 9111 §4.3.5: a 200 to a HEAD whose validators and Content-Length match a stored
    GET answer updates its fields (§3.2); one that does not match makes it stale.  (The
    HEADs carry Cache-Control: no-cache, §5.2.1.4, so they reach the origin.)"""
    origin.put("/files/hf", b"body", Cache_Control="max-age=600", ETag='"f1"', X_Version="1")
    node = node_factory(cdn_config(origin.port, extra='request_cache_control = "honor"'))
    url = node.url("http", "/media/hf")
    assert httpx.get(url).content == b"body"
    assert wait_for(lambda: _hit(url))
    origin.put("/files/hf", b"body", Cache_Control="max-age=600", ETag='"f1"', X_Version="2")
    h = httpx.head(url, headers={"Cache-Control": "no-cache"})
    assert h.headers["x-cache"] == "MISS" and h.headers["x-version"] == "2"
    assert origin.methods[-1] == ("HEAD", "/files/hf")
    r = httpx.get(url)
    assert r.headers["x-cache"] == "HIT" and r.headers["x-version"] == "2" and r.content == b"body"
    assert [m for m, _ in origin.methods] == ["GET", "HEAD"]
    # The origin's object changed (another ETag): the HEAD makes the stored one stale, so
    # the next GET revalidates and gets the new body.
    origin.put("/files/hf", b"new body", Cache_Control="max-age=600", ETag='"f2"', X_Version="3")
    h = httpx.head(url, headers={"Cache-Control": "no-cache"})
    assert h.headers["etag"] == '"f2"' and h.headers["content-length"] == "8"
    r = httpx.get(url)
    assert r.content == b"new body" and r.headers["x-cache"] == "MISS"
    assert origin.methods[-1] == ("GET", "/files/hf")
    assert origin.seen_headers["/files/hf"][-1]["If-None-Match"] == '"f1"'



def test_concurrent_private_answers_are_not_shared(origin, node_factory):
    origin.put("/files/me.txt", b"yours only", Cache_Control="private", Set_Cookie="sid=42")
    origin.delay["/files/me.txt"] = 0.3
    origin.put("/files/huge-err.txt", b"broken", status=500)
    origin.delay["/files/huge-err.txt"] = 0.3
    node = node_factory(cdn_config(origin.port))

    async def many(path: str, n: int):
        async with httpx.AsyncClient(timeout=20) as client:
            return await asyncio.gather(*[client.get(node.url("http", path)) for _ in range(n)])

    answers = asyncio.run(many("/media/me.txt", 10))
    assert all(r.status_code == 200 and r.headers["set-cookie"] == "sid=42" for r in answers)
    assert origin.count("/files/me.txt") == 10  # each client its own origin answer
    answers = asyncio.run(many("/media/huge-err.txt", 10))
    assert all(r.status_code == 500 for r in answers)
    assert origin.count("/files/huge-err.txt") == 1  # an error is shared by the waiters, not stored
    assert httpx.get(node.url("http", "/media/huge-err.txt")).status_code == 500
    assert origin.count("/files/huge-err.txt") == 2


def _hit(url: str) -> bool:
    return httpx.get(url).headers["x-cache"] == "HIT"


def test_unsafe_methods_go_through_and_invalidate(origin, node_factory):
    """RFC 9111 §4.4: a cache passes unsafe methods on, and a non-error answer to one
    invalidates the target URI and the same-origin Location/Content-Location URIs."""
    origin.put("/files/doc", b"v1", Cache_Control="max-age=600")
    origin.put("/files/other", b"o1", Cache_Control="max-age=600")
    origin.put("/files/far", b"f1", Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    doc, other, far = (node.url("http", f"/media/{p}") for p in ("doc", "other", "far"))
    for u in (doc, other, far):
        httpx.get(u)
        assert wait_for(lambda u=u: _hit(u))
    # POST with a streamed (chunked) body reaches the origin whole, with its fields.
    pieces = [b"a" * 70000, b"b" * 70000, b"c"]
    r = httpx.post(doc, content=iter(pieces), headers={"X-Test": "t1", "Content-Type": "text/x"})
    assert r.status_code == 200 and r.content == b"POST done" and r.headers["x-cache"] == "PASS"
    assert origin.writes[-1] == ("POST", "/files/doc", b"".join(pieces))
    seen = origin.seen_headers["/files/doc"][-1]
    assert seen["X-Test"] == "t1" and seen["Content-Type"] == "text/x"
    # §4.4: the target URI is invalidated: the next GET goes to the origin.
    origin.put("/files/doc", b"v2", Cache_Control="max-age=600")
    r = httpx.get(doc)
    assert r.content == b"v2" and r.headers["x-cache"] == "MISS"
    assert wait_for(lambda: _hit(doc))
    # §4.4: an error answer (here 500) invalidates nothing.
    origin.write_answers["/files/doc"] = (500, {})
    assert httpx.delete(doc).status_code == 500
    assert _hit(doc)
    # §4.4: Location and Content-Location of the same origin are invalidated too; one of
    # another origin is not (and the target itself is, whatever they say).
    origin.write_answers["/files/doc"] = (201, {"Location": "/media/other",
                                                "Content-Location": "http://elsewhere.example/media/far"})
    r = httpx.put(doc, content=b"new")
    assert r.status_code == 201 and r.headers["location"] == "/media/other"
    assert origin.writes[-1] == ("PUT", "/files/doc", b"new")
    assert not _hit(other) and _hit(far)
    # PATCH and an unknown method go through and invalidate as well.
    del origin.write_answers["/files/doc"]
    assert wait_for(lambda: _hit(doc))
    assert httpx.request("PATCH", doc, content=b"p").status_code == 200
    assert not _hit(doc)
    assert wait_for(lambda: _hit(doc))
    # (MKCOL: a method the cache knows nothing of, that the test origin's parser accepts)
    out = curl("-X", "MKCOL", "-D", "-", doc).stdout.decode()
    assert out.startswith("HTTP/1.1 200") and out.endswith("MKCOL done")
    assert origin.writes[-1][0] == "MKCOL" and not _hit(doc)
    # OPTIONS (safe, not cached) goes through and invalidates nothing (§4.4: unsafe only).
    assert wait_for(lambda: _hit(doc))
    r = httpx.options(doc)
    assert r.status_code == 200 and r.content == b"OPTIONS done" and _hit(doc)


def test_route_methods_restrict_with_405_and_body_limit(origin, node_factory):
    """RFC 9110 §15.5.6: a 405 carries Allow with the methods the target answers; the
    route's body limit holds for bodies passed on (RFC 9110 §15.5.14, 413)."""
    origin.put("/files/x", b"x", Cache_Control="max-age=600")
    cfg = cdn_config(origin.port) + '''
[[routes]]
prefix = "/ro/"
kind = "cdn"
origin = "test"
methods = ["GET", "POST"]
max_body_bytes = 1000
'''
    node = node_factory(cfg)
    url = node.url("http", "/ro/x")
    r = httpx.put(url, content=b"no")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    assert "this route answers GET, HEAD, POST" in r.text
    assert origin.writes == []
    assert httpx.head(url).status_code == 200 and httpx.get(url).content == b"x"
    assert httpx.post(url, content=b"ok").content == b"POST done"
    r = httpx.post(url, content=b"z" * 5000)
    assert r.status_code == 413 and len(origin.writes) == 1
    # A chunked body passes the limit while it streams: 413, and the origin never gets a
    # whole request (its chunked body has no last chunk).
    r = httpx.post(url, content=iter([b"a" * 600, b"b" * 600]))
    assert r.status_code == 413 and len(origin.writes) == 1


@WORKERS_1_AND_3
def test_end_to_end_request_fields_reach_the_origin(origin, node_factory):
    """RFC 9110 §7.6.1: hop-by-hop fields and those the Connection field names are not
    forwarded, the rest are; §7.6.3: the cache adds its Via. With workers, the same: the
    worker's proxy hop to the node process is taken off (farts/workers/hop.py)."""
    origin.put("/files/e2e", b"e", Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    r = httpx.get(node.url("http", "/media/e2e"),
                  headers={"X-Test-Id": "case-7", "User-Agent": "cache-tests", "Authorization": "Bearer t",
                           "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Via": "1.0 client-proxy",
                           "X-Forwarded-For": "10.9.8.7", "If-None-Match": '"client"', "Range": "bytes=0-0"})
    assert r.status_code == 200 and r.content == b"e"  # (a miss answers whole: RFC 9110 §14.2 allows it)
    seen = origin.seen_headers["/files/e2e"][-1]
    assert seen["X-Test-Id"] == "case-7" and seen["User-Agent"] == "cache-tests"
    assert seen["Authorization"] == "Bearer t"
    assert "X-Hop" not in seen and "Keep-Alive" not in seen
    assert seen["Via"] == "1.0 client-proxy, 1.1 farts-edge"
    assert seen["X-Forwarded-For"] == "10.9.8.7, 127.0.0.1" and "X-Forwarded-Proto" not in seen
    # the client's conditionals and Range are the cache's to answer: a fill asks for it all
    assert "If-None-Match" not in seen and "Range" not in seen


def test_vary_on_any_request_field_with_a_bound(origin, node_factory):
    """RFC 9111 §4.1: a stored answer whose Vary names a field is used only for requests
    with the same value of it; here at most cdn.max_variants_per_uri variants per URI."""
    origin.put("/files/lang", b"hello ", Cache_Control="max-age=600", Vary="X-Lang")
    origin.echo["/files/lang"] = "X-Lang"
    node = node_factory(cdn_config(origin.port, extra="max_variants_per_uri = 2"))
    url = node.url("http", "/media/lang")

    def get(lang: str) -> httpx.Response:
        return httpx.get(url, headers={"X-Lang": lang})

    for lang in ("en", "fr"):
        r = get(lang)
        assert r.content == b"hello " + lang.encode() and r.headers["x-cache"] == "MISS"
        assert wait_for(lambda lang=lang: get(lang).headers["x-cache"] == "HIT")
    for lang in ("en", "fr"):
        r = get(lang)
        assert r.content == b"hello " + lang.encode() and r.headers["x-cache"] == "HIT"
    assert origin.count("/files/lang") == 2
    # A third variant: the oldest (en) is dropped, fr stays.
    assert get("de").content == b"hello de"
    assert wait_for(lambda: get("de").headers["x-cache"] == "HIT")
    assert get("fr").headers["x-cache"] == "HIT"
    r = get("en")
    assert r.content == b"hello en" and r.headers["x-cache"] == "MISS"
    assert origin.count("/files/lang") == 4


def test_cdn_cache_control_decides_for_the_edge(origin, node_factory):
    """RFC 9213 §3: CDN-Cache-Control directs this cache, Cache-Control (passed on to the
    client as it is) then does not; RFC 9111 §3: a 302 with explicit freshness is stored."""
    origin.put("/files/cdn-only", b"edge", Cache_Control="no-store", CDN_Cache_Control="max-age=600")
    origin.put("/files/browser-only", b"browser", Cache_Control="max-age=600", CDN_Cache_Control="no-store")
    origin.put("/files/moved", b"", status=302, Location="/media/cdn-only", Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/cdn-only")
    r = httpx.get(url)
    assert r.content == b"edge" and r.headers["cache-control"] == "no-store"
    assert wait_for(lambda: _hit(url))
    r = httpx.get(url)
    assert r.headers["cache-control"] == "no-store" and r.headers["cdn-cache-control"] == "max-age=600"
    assert origin.count("/files/cdn-only") == 1
    other = node.url("http", "/media/browser-only")
    for _ in range(3):
        assert httpx.get(other).headers["x-cache"] == "MISS"
    assert origin.count("/files/browser-only") == 3
    moved = node.url("http", "/media/moved")
    assert wait_for(lambda: httpx.get(moved).headers["x-cache"] == "HIT")
    r = httpx.get(moved)
    assert r.status_code == 302 and r.headers["location"] == "/media/cdn-only"
    assert origin.count("/files/moved") == 1


def test_request_cache_control_when_honoured(origin, node_factory):
    """RFC 9111 §5.2.1 with cdn.request_cache_control = "honor": no-cache (§5.2.1.4) and
    max-age (§5.2.1.1) make the cache validate with the origin; only-if-cached
    (§5.2.1.7) answers from the cache or 504; max-stale (§5.2.1.2) takes a stale copy."""
    origin.put("/files/rcc", b"v1", Cache_Control="max-age=600", ETag='"r1"')
    origin.put("/files/old", b"o1", Cache_Control="max-age=1", ETag='"o1"')
    node = node_factory(cdn_config(origin.port, extra='request_cache_control = "honor"'))
    url = node.url("http", "/media/rcc")
    only = {"Cache-Control": "only-if-cached"}
    r = httpx.get(node.url("http", "/media/never"), headers=only)
    assert r.status_code == 504 and origin.count("/files/never") == 0
    httpx.get(url)
    assert wait_for(lambda: _hit(url))
    assert httpx.get(url, headers=only).headers["x-cache"] == "HIT"
    n = origin.count("/files/rcc")
    for cc in ("no-cache", "max-age=0"):
        r = httpx.get(url, headers={"Cache-Control": cc})
        assert r.status_code == 200 and r.content == b"v1" and r.headers["x-cache"] == "REVALIDATED"
        n += 1
        assert origin.count("/files/rcc") == n
        assert origin.seen_headers["/files/rcc"][-1]["If-None-Match"] == '"r1"'
    # Once stale (its max-age=1 passed: polled, bounded), only-if-cached gets 504 and
    # max-stale the stale copy.
    old = node.url("http", "/media/old")
    stale_ok = {"Cache-Control": "max-stale"}
    assert httpx.get(old).content == b"o1"
    assert wait_for(lambda: httpx.get(old, headers=stale_ok).headers["x-cache"] != "MISS")  # stored
    assert wait_for(lambda: httpx.get(old, headers=only).status_code == 504)
    r = httpx.get(old, headers=stale_ok)
    assert r.content == b"o1" and r.headers["x-cache"] == "STALE"


def test_request_cache_control_ignored_by_default(origin, node_factory):
    """RFC 9111 §5.2.1: request directives state the client's preferences; by default
    this cache, like nginx, answers fresh objects from the cache whatever they say."""
    origin.put("/files/ign", b"v1", Cache_Control="max-age=600")
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/ign")
    httpx.get(url)
    assert wait_for(lambda: _hit(url))
    r = httpx.get(url, headers={"Cache-Control": "no-cache"})
    assert r.headers["x-cache"] == "HIT" and origin.count("/files/ign") == 1


def test_private_and_no_cache_with_field_names(origin, node_factory):
    """RFC 9111 §5.2.2.7 private="X-User": stored without X-User; §5.2.2.4
    no-cache="X-Token": reused while fresh without X-Token.  The client whose request
    fetched it gets both."""
    origin.put("/files/q", b"shared", Cache_Control='max-age=600, private="X-User", no-cache="X-Token"',
               X_User="alice", X_Token="t1", X_Other="kept")
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/q")
    r = httpx.get(url)
    assert r.headers["x-user"] == "alice" and r.headers["x-token"] == "t1" and r.content == b"shared"
    assert wait_for(lambda: _hit(url))
    r = httpx.get(url)
    assert r.headers["x-cache"] == "HIT" and r.content == b"shared" and r.headers["x-other"] == "kept"
    assert "x-user" not in r.headers and "x-token" not in r.headers
    assert origin.count("/files/q") == 1


def test_authorized_answers_are_not_shared(origin, node_factory):
    """RFC 9111 §3.5: an answer to a request with Authorization (now forwarded to the
    origin) is not reused for another request, not even one that waited on the same
    fetch, unless it says public, s-maxage or must-revalidate."""
    origin.put("/files/acct", b"account of ", Cache_Control="max-age=600")
    origin.echo["/files/acct"] = "Authorization"
    origin.delay["/files/acct"] = 0.3
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/acct")

    async def each_user(n: int):
        async with httpx.AsyncClient(timeout=20) as client:
            return await asyncio.gather(*[client.get(url, headers={"Authorization": f"Bearer u{i}"})
                                          for i in range(n)])

    answers = asyncio.run(each_user(6))
    assert [r.content for r in answers] == [f"account of Bearer u{i}".encode() for i in range(6)]
    assert origin.count("/files/acct") == 6
    r = httpx.get(url, headers={"Authorization": "Bearer u9"})
    assert r.content == b"account of Bearer u9" and r.headers["x-cache"] == "MISS"


def test_a_304_for_another_etag_is_not_used(origin, node_factory):
    """RFC 9111 §4.3.4: a 304 whose strong ETag differs from the stored one does not
    update it; the cache asks again without conditionals."""
    origin.put("/files/w", b"old", Cache_Control="max-age=1", ETag='"w1"')
    node = node_factory(cdn_config(origin.port))
    url = node.url("http", "/media/w")
    assert httpx.get(url).content == b"old"
    assert wait_for(lambda: httpx.get(url).headers["x-cache"] != "MISS")  # stored
    origin.put("/files/w", b"new", Cache_Control="max-age=600", ETag='"w2"')
    origin.wrong_304.add("/files/w")
    # Once stale (max-age=1; polled, bounded) the revalidation gets the wrong 304, and the
    # answer is the new object from an unconditional request, not the old one refreshed.
    assert wait_for(lambda: httpx.get(url).content == b"new")
    seen = origin.seen_headers["/files/w"]
    assert seen[-2]["If-None-Match"] == '"w1"' and "If-None-Match" not in seen[-1]
    r = httpx.get(url)
    assert r.content == b"new" and r.headers["etag"] == '"w2"'


@WORKERS_1_AND_3
def test_early_hints_are_relayed_and_never_stored(origin, node_factory):
    """RFC 9111 §3 and RFC 8297: the origin's 103 Early Hints reach the client on a miss and
    on a request passed through, and are not stored (a hit has none); an HTTP/1.0 client
    gets none (RFC 9110 §15.2). With workers the CDN is in the node process, behind the
    worker's reverse proxy, which passes the 103 on (farts/proxy/interim.py)."""
    from conftest import BASE_CONFIG
    node = node_factory(cdn_config(origin.port),
                        base=BASE_CONFIG.replace("[listeners.http]\nport = 0\n", "[listeners.http]\nport = 0\nh2c = true\n"))
    for path in ("page", "old", "form", "h2"):
        origin.put(f"/files/{path}", b"the page", Cache_Control="max-age=60")
        origin.early_hints[f"/files/{path}"] = "</style.css>; rel=preload"
    url = node.url("http", "/media/page")
    miss = curl("-si", url).stdout
    assert miss.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"), miss
    assert miss.endswith(b"\r\n\r\nthe page")
    hit = curl("-si", url).stdout
    assert hit.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in hit and b"x-cache: HIT" in hit, hit
    assert origin.count("/files/page") == 1
    old = curl("-si", "--http1.0", node.url("http", "/media/old")).stdout
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in old, old
    post = curl("-si", "-X", "POST", "-d", "x=1", node.url("http", "/media/form")).stdout
    assert post.startswith(b"HTTP/1.1 103 Early Hints\r\n") and b"\r\n\r\nHTTP/1.1 200 OK\r\n" in post, post
    # Over HTTP/2 (h2c here): a HEADERS frame with :status 103 before the answer's.
    h2 = curl("-si", "--http2-prior-knowledge", node.url("http", "/media/h2")).stdout
    assert h2.startswith(b"HTTP/2 103"), h2
    assert b"link: </style.css>; rel=preload" in h2.split(b"\r\n\r\n")[0] and b"\r\n\r\nHTTP/2 200" in h2, h2


# -- partial content (RFC 9111 §3.3, §3.4), with cdn.range_fill_min_bytes -----------------
RANGE_FILL = "range_fill_min_bytes = 65536"
PIECE = 65536


def ranged(url: str, spec: str) -> tuple[bytes, dict[str, str]]:
    """curl -r: the body and the answer's fields (lowercase names)."""
    out = curl("-D", "/dev/stderr", "-r", spec, url)
    lines = out.stderr.decode("latin-1").split("\r\n")
    fields = dict((k.lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln))
    fields["status"] = lines[0].split()[1]
    return out.stdout, fields


def origin_ranges(origin, path: str) -> list:
    return [h.get("Range") for h in origin.seen_headers.get(path, [])]


def test_a_206_is_stored_and_later_ranges_are_answered_from_it(origin, node_factory):
    # RFC 9111 §3.3: a cache that supports Range may store an incomplete (206) response.
    origin.put("/files/p.bin", BIG_BODY, Cache_Control="max-age=60", ETag='"p1"')
    origin.ranges.add("/files/p.bin")
    node = node_factory(cdn_config(origin.port, extra=RANGE_FILL))
    url = node.url("http", "/media/p.bin")
    body, fields = ranged(url, "100-199")
    assert fields["status"] == "206" and body == BIG_BODY[100:200]
    assert fields["content-range"] == f"bytes 100-199/{BIG}" and fields["x-cache"] == "MISS"
    # Only the range, widened to range_fill_min_bytes, was asked of the origin.
    assert origin_ranges(origin, "/files/p.bin") == [f"bytes=100-{100 + PIECE - 1}"]
    body, fields = ranged(url, "5000-5999")   # inside the stored part
    assert fields["status"] == "206" and fields["x-cache"] == "HIT" and body == BIG_BODY[5000:6000]
    assert fields["content-range"] == f"bytes 5000-5999/{BIG}"
    body, fields = ranged(url, "1000000-1000099")   # outside it: the origin again
    assert fields["x-cache"] == "MISS" and body == BIG_BODY[1000000:1000100]
    assert origin.count("/files/p.bin") == 2
    body, fields = ranged(url, "1000050-1000149")   # inside the second part
    assert fields["x-cache"] == "HIT" and body == BIG_BODY[1000050:1000150]
    # Past the complete length the stored part knows: 416 (RFC 9110 §15.5.17), no fetch.
    out = curl("-D", "/dev/stderr", "-o", "/dev/null", "-w", "%{http_code}", "-r", f"{BIG + 10}-", url)
    assert out.stdout == b"416" and f"content-range: bytes */{BIG}".encode() in out.stderr.lower()
    assert origin.count("/files/p.bin") == 2
    # A request without Range is not answered from parts: the whole object is fetched.
    assert httpx.get(url).content == BIG_BODY
    assert origin_ranges(origin, "/files/p.bin")[-1] is None


def test_parts_with_the_same_strong_validator_combine_into_a_whole_object(origin, node_factory):
    # RFC 9111 §3.4: two stored parts with the same strong validator may be combined;
    # when they cover the whole, it is a complete response.
    size = 3 * PIECE
    data = random.Random(7).randbytes(size)
    origin.put("/files/c.bin", data, Cache_Control="max-age=60", ETag='"c1"', Content_Type="video/mp4")
    origin.ranges.add("/files/c.bin")
    node = node_factory(cdn_config(origin.port, extra=RANGE_FILL))
    url = node.url("http", "/media/c.bin")
    assert ranged(url, f"0-{PIECE - 1}")[0] == data[:PIECE]
    assert ranged(url, f"{PIECE}-{2 * PIECE - 1}")[0] == data[PIECE:2 * PIECE]
    body, fields = ranged(url, f"{PIECE - 100}-{PIECE + 99}")   # across the two: combined
    assert fields["x-cache"] == "HIT" and body == data[PIECE - 100:PIECE + 100]
    assert ranged(url, f"{2 * PIECE}-")[0] == data[2 * PIECE:]   # the last part: now whole
    assert origin.count("/files/c.bin") == 3
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == data and r.headers["x-cache"] == "HIT"
    assert r.headers["content-type"] == "video/mp4" and "content-range" not in r.headers
    assert origin.count("/files/c.bin") == 3
    values = httpx.get(node.url("admin", "/metrics")).text
    assert 'farts_cdn_partial_total{outcome="completed"} 1.0' in values


def test_a_part_with_another_validator_is_not_combined(origin, node_factory):
    # RFC 9111 §3.4: combining needs the same strong validator; a part of a changed
    # object replaces what was stored, and a weak or absent ETag is not stored at all.
    old = random.Random(8).randbytes(4 * PIECE)
    new = random.Random(9).randbytes(4 * PIECE)
    origin.put("/files/v.bin", old, Cache_Control="max-age=60", ETag='"v1"')
    origin.ranges.add("/files/v.bin")
    node = node_factory(cdn_config(origin.port, extra=RANGE_FILL))
    url = node.url("http", "/media/v.bin")
    assert ranged(url, "0-99")[0] == old[:100]
    origin.put("/files/v.bin", new, Cache_Control="max-age=60", ETag='"v2"')
    assert ranged(url, f"{PIECE}-{PIECE + 99}")[0] == new[PIECE:PIECE + 100]
    # The v1 part is gone: bytes 0..99 come from the origin again, as v2.
    body, fields = ranged(url, "0-99")
    assert body == new[:100] and fields["x-cache"] == "MISS" and fields["etag"] == '"v2"'
    assert origin.count("/files/v.bin") == 3
    origin.put("/files/w.bin", old, Cache_Control="max-age=60", ETag='W/"w1"')
    origin.ranges.add("/files/w.bin")
    for _ in range(2):
        assert ranged(node.url("http", "/media/w.bin"), "0-99")[0] == old[:100]
    assert origin.count("/files/w.bin") == 2


def test_an_origin_that_ignores_range_and_purges_of_parts(origin, node_factory):
    # RFC 9110 §14.2: an origin may answer a Range with the whole 200; passed on as it is.
    origin.put("/files/i.bin", BIG_BODY[:100000], Cache_Control="max-age=60", ETag='"i1"')
    origin.put("/files/q.bin", BIG_BODY[:100000], Cache_Control="max-age=60", ETag='"q1"')
    origin.ranges.add("/files/q.bin")
    node = node_factory(cdn_config(origin.port, extra=RANGE_FILL))
    body, fields = ranged(node.url("http", "/media/i.bin"), "0-99")
    assert fields["status"] == "200" and body == BIG_BODY[:100000]
    q = node.url("http", "/media/q.bin")
    ranged(q, "0-99")
    assert ranged(q, "0-99")[1]["x-cache"] == "HIT"
    assert purge(node, tenant="demo", prefix="/media/q") == {"purged": 1}
    assert ranged(q, "0-99")[1]["x-cache"] == "MISS"


def test_a_part_fetched_while_its_uri_is_purged_is_not_stored(origin, node_factory):
    # A purge (like an invalidation, RFC 9111 §4.4) between the origin's request and its
    # answer: the part reaches the client that asked, and is not stored.
    origin.put("/files/d.bin", BIG_BODY[:200000], Cache_Control="max-age=60", ETag='"d1"')
    origin.ranges.add("/files/d.bin")
    origin.delay["/files/d.bin"] = 1.0
    node = node_factory(cdn_config(origin.port, extra=RANGE_FILL, read_timeout=20.0))
    url = node.url("http", "/media/d.bin")
    client = subprocess.Popen(["curl", "-sS", "--max-time", "20", "-r", "0-99", url], stdout=subprocess.PIPE)
    assert wait_for(lambda: origin.count("/files/d.bin") == 1)
    purge(node, tenant="demo", prefix="/media/d")
    assert client.communicate(timeout=30)[0] == BIG_BODY[:100]
    del origin.delay["/files/d.bin"]
    body, fields = ranged(url, "0-99")
    assert fields["x-cache"] == "MISS" and body == BIG_BODY[:100] and origin.count("/files/d.bin") == 2
    assert ranged(url, "0-99")[1]["x-cache"] == "HIT"
