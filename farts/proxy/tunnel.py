"""A protocol switch passed through to the application (WebSocket to an app server).

The proxy sends the client's Upgrade request to the upstream on a connection of its own;
on a 101 the handler answers with an ``Upgrade`` whose StreamHandler is a ``Tunnel``:
from then on bytes go both ways as they come. Each side's reading pauses while the other
side's writing is paused (the peer not reading), so neither side can make the node
buffer without bound.
"""
from __future__ import annotations

import asyncio

from farts.transport.client import ClientConnection
from farts.transport.http import Sink


class Tunnel:
    """The client side (a StreamHandler) of one passed-through protocol switch."""

    __slots__ = ("conn", "upstream", "sink")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.upstream: asyncio.Transport = conn.transport
        self.sink: Sink | None = None

    # -- the client's side ----------------------------------------------------------
    def opened(self, sink: Sink, rest: bytes) -> None:
        self.sink = sink
        upstream = self.upstream
        upstream.set_protocol(_UpstreamSide(self))
        early = self.conn.parser.take_rest()   # what the upstream sent after its 101
        self.conn = None
        if early:
            sink.write(early)
        if rest:
            upstream.write(rest)
        upstream.resume_reading()   # (the client connection may have paused it)

    def data_received(self, data: bytes) -> None:
        self.upstream.write(data)

    def pause_writing(self) -> None:      # the client is not reading: stop reading upstream
        self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.upstream.resume_reading()

    def closed(self, exc: BaseException | None) -> None:
        self.sink = None
        if not self.upstream.is_closing():
            self.upstream.close()


class _UpstreamSide(asyncio.Protocol):
    """The upstream connection's protocol once the tunnel is open."""

    __slots__ = ("tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        sink = self.tunnel.sink
        if sink is not None:
            sink.write(data)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:      # the upstream is not reading: stop reading the client
        sink = self.tunnel.sink
        if sink is not None:
            sink.pause_reading()

    def resume_writing(self) -> None:
        sink = self.tunnel.sink
        if sink is not None:
            sink.resume_reading()

    def connection_lost(self, exc) -> None:
        sink = self.tunnel.sink
        if sink is not None and not sink.is_closing():
            sink.close()
