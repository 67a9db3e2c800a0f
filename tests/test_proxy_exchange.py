"""The proxy's callback exchange (a bodyless request, no task) in-process: a real
upstream on loopback, the read timeout from the group's sweep on a FakeClock (no
waiting for it), and a client that goes away mid-exchange."""
from __future__ import annotations

import asyncio
import contextlib
import time

from farts.clock import FakeClock
from farts.metrics import Metrics
from farts.proxy import ProxyHandler, ProxyStats
from farts.proxy.config import Upstream
from farts.proxy.handler import Exchange
from farts.transport.client import Client, ClientConnection
from farts.transport.http import Fixed, Response
from fast.http1 import HandlerRequest, RequestParser, closing

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-App: 1\r\n\r\nhello"


def request(head: bytes = b"GET /x?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n") -> HandlerRequest:
    return HandlerRequest(RequestParser().feed(head)[0], None, None, "10.0.0.7", "http", None, 0.0)


class Upstream1:
    """A loopback upstream: answers ANSWER to each request unless told to stay silent;
    keeps what it received and whether each connection was closed by the other side."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.received = b""
        self.connections = 0
        self.closed = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader, writer) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            self.received += data
            if self.answer and data.endswith(b"\r\n\r\n"):
                writer.write(ANSWER)
        self.closed.set()
        writer.close()

    async def until_received(self, n: int) -> None:
        async with asyncio.timeout(10):
            while self.received.count(b"\r\n\r\n") < n:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def proxy_to(up, clock=None, **cfg):
    """(up, a proxy handler to it, its stats), ``up`` an upstream with ``start()`` and
    ``server`` (also tests/test_proxy_pipeline.py's); both closed after."""
    address = await up.start()
    stats = ProxyStats(Metrics())
    p = ProxyHandler("g", Upstream(servers=[address], **cfg), "n1", stats, Client(clock or FakeClock()))
    try:
        yield up, p, stats
    finally:
        p.close()
        up.server.close()


def proxied(answer: bool, clock=None, **cfg):
    return proxy_to(Upstream1(answer), clock, **cfg)


def outcomes(stats: ProxyStats) -> dict[str, float]:
    return {key[2]: n for key, n in stats.requests.totals().items()}


def test_answers_come_whole_and_the_connection_is_pooled():
    async def main():
        async with proxied(answer=True) as (up, p, stats):
            for _ in range(3):
                fut = p.handle(request())
                assert type(fut) is Exchange
                resp = await asyncio.wait_for(fut, 10)
                assert resp.status == 200 and resp.body == b"hello"
                assert (b"x-app", b"1") in resp.headers
                assert [v for n, v in resp.headers if n == b"x-request-id"][0].startswith(b"n1-")
                assert not any(n in (b"connection", b"content-length") for n, _ in resp.headers)
            assert up.connections == 1
            first = up.received.split(b"\r\n\r\n")[0]
            assert first.startswith(b"GET /x?q=1 HTTP/1.1\r\nhost: a.test\r\n")
            assert b"x-forwarded-for: 10.0.0.7\r\n" in first and b"x-forwarded-proto: http" in first
            assert outcomes(stats) == {"ok": 3} and not p.in_flight

    asyncio.run(main())


def test_read_timeout_from_the_sweep_is_a_504():
    async def main():
        clock = FakeClock()
        async with proxied(False, clock, read_timeout=2.0) as (up, p, stats):
            fut = p.handle(request())
            await up.until_received(1)
            clock.advance(1.9)
            assert not fut.done()   # (never early)
            clock.advance(0.5)
            resp = await asyncio.wait_for(fut, 10)
            assert resp.status == 504 and b"upstream timeout" in resp.body
            await asyncio.wait_for(up.closed.wait(), 10)   # the connection is not reused
            assert outcomes(stats) == {"timeout": 1} and not p.in_flight

    asyncio.run(main())


def test_a_client_that_goes_away_aborts_the_upstream_exchange():
    async def main():
        async with proxied(answer=False) as (up, p, stats):
            fut = p.handle(request())
            await up.until_received(1)
            fut.cancel()   # what the transport does when the client connection is lost
            await asyncio.wait_for(up.closed.wait(), 10)
            assert fut.cancelled()
            assert outcomes(stats) == {"client_gone": 1} and not p.in_flight
            assert sum(len(s.idle) for s in p.servers) == 0

    asyncio.run(main())


def test_a_client_that_goes_away_while_the_upstream_connects_leaves_nothing_behind():
    async def main():
        async with proxied(answer=True) as (up, p, stats):
            fut = p.handle(request())   # the pool is empty: a connect is under way
            assert not fut.done()
            fut.cancel()
            await asyncio.sleep(0.2)
            assert fut.cancelled() and up.received == b""
            assert outcomes(stats) == {} and not p.in_flight
            assert sum(len(s.idle) for s in p.servers) == 0
            # The next request is proxied as usual.
            resp = await asyncio.wait_for(p.handle(request()), 10)
            assert resp.status == 200 and resp.body == b"hello"

    asyncio.run(main())


def test_a_whole_answer_to_an_http1_request_is_one_fixed_and_a_slow_one_keeps_its_timings():
    """Within limits.slow_request_seconds the answer is the transport's Fixed, framed by
    fast.proxyhead to keep the connection (its close framing made by the transport when
    wanted: fast.http1.closing); past it, a Response with the proxy's timings for the
    slow-request log."""
    async def main():
        async with proxied(answer=True) as (up, p, stats):
            req = request()
            req.start = time.perf_counter()
            fixed = await asyncio.wait_for(p.handle(req), 10)
            assert type(fixed) is Fixed and fixed.status == 200 and fixed.body_len == 5
            head, body = fixed.keep.split(b"\r\n\r\n")
            assert body == b"hello" and fixed.close is None
            assert closing(fixed.keep, 5) == head + b"\r\nconnection: close\r\n\r\nhello"
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.1 200 OK" and b"x-app: 1" in lines and b"content-length: 5" in lines
            assert not any(line.startswith(b"connection") for line in lines)
            slow = await asyncio.wait_for(p.handle(request()), 10)   # (started at 0.0: long ago)
            assert type(slow) is Response and slow.body == b"hello" and len(slow.timings) == 3
            assert outcomes(stats) == {"ok": 2} and up.connections == 1

    asyncio.run(main())


def test_the_transports_callback_runs_in_the_upstream_read_that_answers():
    """Not a loop turn later: the HTTP/1 connection's done callback (added without a
    context) is called from the upstream connection's data_received; a Task awaiting
    the exchange is woken as asyncio does."""
    reading = []   # non-empty while an upstream connection's data_received runs
    original = ClientConnection.data_received

    def data_received(conn, data):   # (compiled, the method leaves no frame in a traceback)
        reading.append(True)
        try:
            original(conn, data)
        finally:
            reading.pop()

    async def main():
        async with proxied(answer=True) as (up, p, stats):
            seen = []
            fut = p.handle(request())
            fut.add_done_callback(lambda f: seen.append((f.done(), bool(reading))))
            waiter = asyncio.ensure_future(asyncio.shield(fut))
            resp = await asyncio.wait_for(waiter, 10)
            assert resp.status == 200 and seen == [(True, True)]

    ClientConnection.data_received = data_received
    try:
        asyncio.run(main())
    finally:
        ClientConnection.data_received = original
