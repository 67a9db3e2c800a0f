"""What WebSocket and SSE subscribers share: the StreamHandler side of an Upgrade (the
transport's Sink is what the fanout writes to) and the slow-consumer drop."""
from __future__ import annotations

from fast.fanout import Subscriber


class SubscriberStream(Subscriber):
    __slots__ = ("service", "tenant", "channels")

    def __init__(self, service, tenant) -> None:
        self.service = service
        self.tenant = tenant
        self.channels: list[str] = []   # channel keys, usually one or two

    def opened(self, sink, rest: bytes) -> None:
        """Called first by each subclass's ``opened``: the fanout writes to the sink, and
        straight to its socket when the sink offers one (plain TCP)."""
        self.transport = sink
        self.fd = sink.fd

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def closed(self, exc) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.service.channels.closed(self)

    def drop_slow(self, last: bytes = b"") -> None:
        """Over the buffer limit: close (after ``last``) and free the buffer soon, read or not."""
        sink = self.transport
        if sink is None:
            return
        self.closing = True
        if last:
            sink.write(last)
        sink.close()
        self.service.clock.call_later(2.0, sink.abort)
