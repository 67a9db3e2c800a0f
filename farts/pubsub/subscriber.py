"""What WebSocket and SSE subscribers share: the asyncio protocol's life after the
transport handed the connection over (Takeover), and the slow-consumer drop."""
from __future__ import annotations

from fast.fanout import Subscriber


class SubscriberProtocol(Subscriber):
    __slots__ = ("service", "tenant", "channels", "release")

    def __init__(self, service, tenant) -> None:
        self.service = service
        self.tenant = tenant
        self.channels: list[str] = []   # channel keys, usually one or two
        self.release = None

    def attach(self, transport, release) -> None:
        """Called first by each subclass's ``taken_over``."""
        self.transport = transport
        self.release = release
        if transport.get_extra_info("sslcontext") is None:   # plain TCP: the fanout may send directly
            sock = transport.get_extra_info("socket")
            self.fd = sock.fileno() if sock is not None else -1

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.service.closed(self)
        if self.release is not None:
            self.release()
            self.release = None

    def drop_slow(self, last: bytes = b"") -> None:
        """Over the buffer limit: close (after ``last``) and free the buffer soon, read or not."""
        transport = self.transport
        if transport is None:
            return
        self.closing = True
        if last:
            transport.write(last)
        transport.close()
        self.service.loop.call_later(2.0, transport.abort)
