"""Pipelined GETs (``[upstreams.NAME] pipeline``) in-process: a real upstream on loopback
that records how many requests each of its reads brought, per connection, and answers
them in order; read timeouts from the group's sweep on a FakeClock."""
from __future__ import annotations

import asyncio
import time

import pytest
from test_proxy_exchange import outcomes, proxy_to

from farts.clock import FakeClock
from farts.config import ConfigError, parse
from farts.proxy import ProxyHandler
from farts.proxy.handler import Exchange
from farts.transport.http import Fixed, Response
from fast.http1 import HandlerRequest, RequestParser, closing

BIG = bytes(range(256)) * 4096   # 1 MiB: more than one read


def request(path: str, method: str = "GET", start: float = 0.0) -> HandlerRequest:
    """(``start`` 0.0, long ago: a slow request, answered by a Response with timings;
    perf_counter(): the usual one, answered by a Fixed.)"""
    head = f"{method} {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
    return HandlerRequest(RequestParser().feed(head)[0], None, None, "10.0.0.7", "http", None, start)


class PipeUpstream:
    """Takes pipelined requests: ``reads`` has, per connection, the number of requests
    each read completed; answers each in turn, its body its path, unless the path says:
    /slow: after 0.3 s; /hang: never; /close: with Connection: close, then closes;
    /drop: closes without answering it (nor what follows); /bad: not HTTP; /big: 1 MiB;
    /interim: a 103 first; /split: 20 bytes of its answer, then the rest."""

    def __init__(self) -> None:
        self.reads: list[list[int]] = []
        self.paths: list[str] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader, writer) -> None:
        reads: list[int] = []
        self.reads.append(reads)
        buf = b""
        try:
            while data := await reader.read(65536):
                buf += data
                *heads, buf = buf.split(b"\r\n\r\n")
                reads.append(len(heads))
                for head in heads:
                    method, path = head.decode().split(" ", 2)[:2]
                    self.paths.append(path)
                    if path == "/drop":
                        return
                    if path == "/hang":
                        await asyncio.sleep(3600)
                    if path == "/slow":
                        await asyncio.sleep(0.3)
                    if path == "/interim":
                        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
                    if path == "/bad":
                        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                        continue
                    body = BIG if path == "/big" else path.encode()
                    close = b"connection: close\r\n" if path == "/close" else b""
                    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Up: 1\r\n%s\r\n%s"
                              % (len(body), close, b"" if method == "HEAD" else body))
                    if path == "/split":   # its head in one read, the rest in another
                        writer.write(answer[:20])
                        await writer.drain()
                        await asyncio.sleep(0.05)
                        answer = answer[20:]
                    writer.write(answer)
                    if close:
                        await writer.drain()
                        return
        except ConnectionError:
            pass
        finally:
            writer.close()

    def connections(self) -> int:
        return len(self.reads)


def proxied(depth: int = 8, clock=None, **cfg):
    return proxy_to(PipeUpstream(), clock, pipeline=depth, **cfg)


async def body_of(resp: Response | Fixed) -> bytes:
    if type(resp) is Fixed:
        return resp.keep.split(b"\r\n\r\n", 1)[1]
    if type(resp.body) is bytes:
        return resp.body
    return b"".join([piece async for piece in resp.body])


async def answers(futs) -> list[tuple[int, bytes]]:
    out = []
    for fut in futs:
        resp = await asyncio.wait_for(fut, 10)
        out.append((resp.status, await body_of(resp)))
    return out


async def warm(p: ProxyHandler, n: int) -> None:
    """n idle pooled connections: n GETs in one turn on an empty pool connect n times."""
    assert [s for s, _ in await answers([p.handle(request("/warm")) for _ in range(n)])] == [200] * n
    assert len(p.servers[0].idle) == n


def test_the_gets_of_one_turn_go_in_one_write_per_connection_up_to_the_depth():
    async def main():
        async with proxied(depth=4) as (up, p, stats):
            await warm(p, 3)
            paths = [f"/r{i}" for i in range(10)]
            futs = [p.handle(request(path)) for path in paths]
            assert all(type(f) is Exchange for f in futs)
            assert await answers(futs) == [(200, path.encode()) for path in paths]
            # Each warm connection: its warm-up request, then one read of 4, 4 and 2.
            assert sorted(r[1:] for r in up.reads) == [[2], [4], [4]]
            assert up.paths[3:] == paths   # (one upstream: in the order sent)
            assert outcomes(stats) == {"ok": 13} and not p.in_flight
            assert stats.pipelined.get(("g",)) == 10
            assert len(p.servers[0].idle) == 3   # all back in the pool

    asyncio.run(main())


def test_answers_of_one_read_are_rewritten_from_its_bytes_and_a_split_one_is_parsed():
    """HTTP/1 requests within the slow-request bound: each whole answer of a read is the
    client's Fixed, written from the upstream's bytes (names lowercased, framing redone);
    an answer split over reads goes through the parser and still comes in its turn."""
    async def main():
        async with proxied(depth=8) as (up, p, stats):
            await warm(p, 1)
            paths = ["/a", "/b", "/split", "/c", "/d"]
            futs = [p.handle(request(path, start=time.perf_counter())) for path in paths]
            got = [await asyncio.wait_for(fut, 10) for fut in futs]
            assert [(type(r), await body_of(r)) for r in got] == [(Fixed, path.encode()) for path in paths]
            head = got[0].keep.split(b"\r\n\r\n")[0].split(b"\r\n")
            assert head[:2] == [b"HTTP/1.1 200 OK", b"x-up: 1"] and b"content-length: 2" in head
            assert got[0].close is None   # (raw: the close framing made only when wanted)
            assert closing(got[0].keep, 2).endswith(b"connection: close\r\n\r\n/a")
            assert up.reads[0][1:] == [5] and outcomes(stats) == {"ok": 6} and not p.in_flight
            assert len(p.servers[0].idle) == 1   # back in the pool after the last answer

    asyncio.run(main())


def test_a_lone_get_goes_at_the_end_of_the_loop_turn():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            fut = p.handle(request("/one"))
            server = p.servers[0]
            assert server.queued == [fut] and fut.conn is None
            await asyncio.sleep(0)   # the loop's next step: the flush
            assert server.queued == [] and fut.conn is not None and not server.idle
            assert await answers([fut]) == [(200, b"/one")]
            assert stats.pipelined.get(("g",)) == 0   # (alone: the exchange's own path)

    asyncio.run(main())


def test_pipelined_exchanges_awaited_by_tasks_as_http2_streams_do():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)

            async def stream(path: str) -> bytes:
                return (await p.handle(request(path))).body
            paths = ["/a", "/b", "/c"]
            tasks = [asyncio.ensure_future(stream(path)) for path in paths]
            assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [path.encode() for path in paths]
            assert up.reads == [[1, 3]]

    asyncio.run(main())


def test_a_slow_answer_holds_the_others_which_still_come_in_order():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            paths = ["/slow", "/a", "/b", "/c"]
            futs = [p.handle(request(path)) for path in paths]
            done = []
            for path, fut in zip(paths, futs, strict=True):
                fut.add_done_callback(lambda f, path=path: done.append(path))
            assert await answers(futs) == [(200, path.encode()) for path in paths]
            assert done == paths and up.reads == [[1, 4]]
            assert outcomes(stats) == {"ok": 5}

    asyncio.run(main())


def test_a_connection_closed_with_answers_due_sends_them_again_once():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            paths = ["/a", "/b", "/drop", "/c", "/d"]
            got = await answers([p.handle(request(path)) for path in paths])
            # /drop closes its connection again when sent alone: a 502 (one retry only).
            assert [s for s, _ in got] == [200, 200, 502, 200, 200]
            assert got[3:] == [(200, b"/c"), (200, b"/d")]
            assert up.reads[0] == [1, 5] and up.connections() == 4
            assert outcomes(stats) == {"ok": 5, "unanswered": 3, "bad_response": 1}
            assert stats.retries.get(("g",)) == 3 and not p.in_flight

    asyncio.run(main())


def test_a_connection_close_answer_ends_the_pipeline_cleanly():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            paths = ["/a", "/close", "/b", "/c"]
            assert await answers([p.handle(request(path)) for path in paths]) == \
                [(200, path.encode()) for path in paths]
            assert up.reads[0] == [1, 4] and up.connections() == 3   # /b and /c: alone, fresh
            assert outcomes(stats) == {"ok": 5, "unanswered": 2}

    asyncio.run(main())


def test_an_interim_answer_mid_pipeline_is_skipped():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            paths = ["/a", "/interim", "/b"]
            assert await answers([p.handle(request(path)) for path in paths]) == \
                [(200, path.encode()) for path in paths]
            assert up.reads == [[1, 3]] and outcomes(stats) == {"ok": 4}

    asyncio.run(main())


def test_a_bad_answer_is_a_502_for_its_request_and_the_others_are_sent_again():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            got = await answers([p.handle(request(path)) for path in ["/a", "/bad", "/b"]])
            assert got[0] == (200, b"/a") and got[1][0] == 502 and got[2] == (200, b"/b")
            assert outcomes(stats) == {"ok": 3, "bad_response": 1, "unanswered": 1}

    asyncio.run(main())


def test_a_read_timeout_answers_504_for_each_request_still_waiting():
    async def main():
        clock = FakeClock()
        async with proxied(clock=clock, read_timeout=2.0) as (up, p, stats):
            await warm(p, 1)
            futs = [p.handle(request(path)) for path in ["/a", "/hang", "/b", "/c"]]
            assert await answers(futs[:1]) == [(200, b"/a")]
            clock.advance(1.9)
            assert not any(f.done() for f in futs[1:])   # (never early)
            clock.advance(0.5)
            assert [s for s, _ in await answers(futs[1:])] == [504, 504, 504]
            assert futs[1].conn.closed and not p.servers[0].idle and not p.in_flight
            assert outcomes(stats) == {"ok": 2, "timeout": 3}

    asyncio.run(main())


@pytest.mark.parametrize("raw", [False, True])
def test_a_client_gone_mid_pipeline_drops_its_answer_and_the_others_come(raw):
    """(raw: the answers rewritten from the read's bytes, as for HTTP/1 requests within
    the slow-request bound; else through the parser, as for slow ones)"""
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            if raw:
                p.slow_request_seconds = 60.0
            start = time.perf_counter() if raw else 0.0
            futs = [p.handle(request(path, start=start)) for path in ["/slow", "/a", "/b"]]
            await asyncio.sleep(0.1)   # (sent; /slow is being answered)
            assert futs[1].cancel()
            assert await answers([futs[0], futs[2]]) == [(200, b"/slow"), (200, b"/b")]
            assert futs[1].cancelled() and not p.in_flight
            assert len(p.servers[0].idle) == 1   # the connection went back
            assert outcomes(stats) == {"ok": 3, "client_gone": 1}

    asyncio.run(main())


def test_a_streamed_answer_mid_pipeline_then_the_next_answers():
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 1)
            futs = [p.handle(request(path)) for path in ["/big", "/a", "/b"]]
            big = await asyncio.wait_for(futs[0], 10)
            assert type(big.body) is not bytes   # it streams: the connection is its body's
            assert not futs[1].done()
            assert await body_of(big) == BIG
            assert await answers(futs[1:]) == [(200, b"/a"), (200, b"/b")]
            assert up.reads[0][0] == 1 and sum(up.reads[0]) == 4 and up.connections() == 1
            assert len(p.servers[0].idle) == 1
            assert outcomes(stats) == {"ok": 4}

    asyncio.run(main())


def test_head_and_other_methods_go_alone():
    """A HEAD's answer has no body whatever its fields say, which the upstream parser
    knows for the next answer only: HEAD is never pipelined."""
    async def main():
        async with proxied() as (up, p, stats):
            await warm(p, 2)
            head = p.handle(request("/h", "HEAD"))
            gets = [p.handle(request(path)) for path in ["/a", "/b"]]
            resp = await asyncio.wait_for(head, 10)
            assert resp.status == 200 and await body_of(resp) == b""
            assert await answers(gets) == [(200, b"/a"), (200, b"/b")]
            assert sorted(r[1:] for r in up.reads) == [[1], [2]]

    asyncio.run(main())


def test_depth_one_is_the_exchange_alone():
    async def main():
        async with proxied(depth=1) as (up, p, stats):
            await warm(p, 1)
            futs = [p.handle(request(path)) for path in ["/a", "/b"]]
            assert not p.servers[0].queued   # (sent at once, the second on a new connection)
            assert await answers(futs) == [(200, b"/a"), (200, b"/b")]
            assert up.connections() == 2 and stats.pipelined.get(("g",)) == 0

    asyncio.run(main())


def test_the_depth_is_checked_and_named():
    with pytest.raises(ConfigError, match=r"x.toml: upstreams\.u\.pipeline: expected a number 1-64"):
        parse('[upstreams.u]\nservers = ["127.0.0.1:1"]\npipeline = 0\n', "x.toml")
    assert parse('[upstreams.u]\nservers = ["127.0.0.1:1"]\n', "x.toml").upstreams["u"].pipeline == 1
