"""Streamed responses through the real HTTP/1.1 adapter (an in-process listener on
loopback, read back with a raw socket: the common clients hide trailers and framing):
trailers, the framing the machine decides (HTTP/1.0, bodyless statuses), and release of
the body's source when the response cannot be framed."""
from __future__ import annotations

import asyncio

from farts.config import Limits, Route
from farts.metrics import Metrics
from farts.transport.http import Response
from farts.transport.listener import HTTPStats, Listener
from farts.transport.router import Router


class Checksummed:
    """Streams two pieces; the trailer (a running length) is known only at the end."""

    def handle(self, req):
        sent = []

        async def body():
            for piece in (b"hello ", b"world"):
                sent.append(len(piece))
                yield piece

        return Response(200, [(b"content-type", b"text/plain")], body(),
                        trailers=lambda: [(b"x-body-length", str(sum(sent)).encode())])


def test_trailers_follow_the_last_chunk_and_the_connection_stays_open():
    async def main():
        stats = HTTPStats(Metrics(), {})
        router = Router(None, [(Route(prefix="/t", kind="admin"), Checksummed())], 0)
        listener = Listener("test", "http", router, Limits(), stats)
        await listener.start("127.0.0.1", 0)
        try:
            host, port = listener.address
            reader, writer = await asyncio.open_connection(host, port)
            for _ in range(2):  # twice on one connection: the framing ended where it should
                writer.write(b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
                rest = await asyncio.wait_for(reader.readuntil(b"x-body-length: 11\r\n\r\n"), 5)
                assert rest == b"6\r\nhello \r\n5\r\nworld\r\n0\r\nx-body-length: 11\r\n\r\n"
            writer.close()
        finally:
            await listener.close()

    asyncio.run(main())


class Streamed:
    """Streams a body of unknown length with the status the path names (/s/200, /s/204)."""

    def handle(self, req):
        async def body():
            yield b"hello"

        return Response(int(req.path[3:]), [], body())


def exchange(request: bytes) -> bytes:
    """Sends ``request`` to a listener on loopback, returns all it answers until it closes
    (or 5 s pass)."""
    async def main():
        stats = HTTPStats(Metrics(), {})
        router = Router(None, [(Route(prefix="/s", kind="admin"), Streamed())], 0)
        listener = Listener("test", "http", router, Limits(), stats)
        await listener.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*listener.address)
            writer.write(request)
            out = b""
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), 5):
                    out += chunk
            except TimeoutError:
                pass
            writer.close()
            return out
        finally:
            await listener.close()

    return asyncio.run(main())


def test_http10_gets_a_streamed_body_unchunked_and_delimited_by_close():
    out = exchange(b"GET /s/200 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert b"connection: close" in head.lower() and body == b"hello"


def test_a_streamed_204_sends_no_body_bytes():
    out = exchange(b"GET /s/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /s/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 204") == 2, out
    assert b"hello" not in out and b"0\r\n\r\n" not in out and b"chunked" not in out.lower()


def test_a_response_that_cannot_be_framed_gets_500_and_its_source_is_released():
    released = []

    class Source:  # an upstream body: aclose gives its connection back
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise StopAsyncIteration

        async def aclose(self):
            released.append(True)

    class BadHeader:
        def handle(self, req):
            return Response(200, [(b"x-bad", b"a\r\nb")], Source())

    async def main():
        router = Router(None, [(Route(prefix="/b", kind="admin"), BadHeader())], 0)
        listener = Listener("test", "http", router, Limits(), HTTPStats(Metrics(), {}))
        await listener.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*listener.address)
            writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            out = await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            return out
        finally:
            await listener.close()

    assert asyncio.run(main()).startswith(b"HTTP/1.1 500")
    assert released == [True]
