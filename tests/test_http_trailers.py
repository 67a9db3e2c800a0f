"""A streamed response's trailer fields reach the client through the real HTTP/1.1
adapter (an in-process listener on loopback, read back with a raw socket: the common
clients hide trailers)."""
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
