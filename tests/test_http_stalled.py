"""A client that stops reading a streamed answer is cut off at its deadline and its place
in the listener's limits is freed (a graceful close would wait for it forever). The
listener runs on a FakeClock: the deadline passes when the test says, on a real socket."""
from __future__ import annotations

import asyncio
import socket

from farts.clock import FakeClock
from farts.config import Limits, Route
from farts.metrics import Metrics
from farts.transport.http import Response
from farts.transport.listener import HTTPStats, Listener
from farts.transport.router import Router


class Endless:
    """A streamed body far larger than the socket buffers (it is never read)."""

    def __init__(self) -> None:
        self.pieces = 0

    def handle(self, req):
        async def body():
            for _ in range(4000):
                self.pieces += 1
                yield b"x" * 65536
        return Response(200, [], body())


def test_a_client_that_stops_reading_is_aborted_at_its_deadline_and_its_place_freed():
    async def main():
        clock = FakeClock()
        handler = Endless()
        limits = Limits(idle_timeout=2.0, header_timeout=2.0)
        router = Router(None, [(Route(prefix="/", kind="admin"), handler)], 0)
        listener = Listener("t", "http", router, limits, HTTPStats(Metrics(), {}), None, clock)
        await listener.start("127.0.0.1", 0)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, listener.address)
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            for _ in range(200):  # until the server's writes back up (the client reads nothing)
                await asyncio.sleep(0.01)
                conns = list(listener.connections)
                if conns and conns[0].write_paused:
                    break
            assert conns and conns[0].write_paused, "the answer never backed up"
            assert listener.open == 1
            stuck = handler.pieces
            clock.advance(5.0)            # past idle_timeout with nothing moving: "stalled"
            for _ in range(100):
                await asyncio.sleep(0.01)
                if listener.open == 0:
                    break
            assert listener.open == 0 and not listener.connections
            assert handler.pieces == stuck  # the body's task ended with the connection
        finally:
            client.close()
            await listener.close()

    asyncio.run(main())
