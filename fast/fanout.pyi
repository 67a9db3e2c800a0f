"""Type stub for fast.fanout (subscriber registry and publish loop; see fast/fanout.pyx)."""

from collections.abc import Callable, Hashable
from typing import Any

from fast.uring import SendRing

class Subscriber:
    """Subclassed by the stream handlers (farts/pubsub): one object per connection."""

    transport: Any   # the Sink written to (farts.transport.http.Sink)
    sse: bool
    paused: bool
    dropped: bool
    closing: bool
    fd: int
    @property
    def pending_bytes(self) -> int: ...

class Fanout:
    max_buffer: int
    deliveries: int
    writes: int
    flushes: int
    ring: SendRing | None   # the direct sends of a flush in one io_uring submission
    ring_failures: int
    short_sends: int        # direct sends the socket took only part of, or none (EAGAIN)
    def __init__(self, call_soon: Callable[[Callable[[], Any]], Any],
                 on_slow: Callable[[Subscriber], Any], max_buffer: int = 1048576,
                 ring: SendRing | None = None) -> None: ...
    def subscribe(self, key: Hashable, sub: Subscriber) -> bool: ...
    def unsubscribe(self, key: Hashable, sub: Subscriber) -> bool: ...
    def count(self, key: Hashable) -> int: ...
    def subscriptions(self) -> int: ...
    def channel_count(self) -> int: ...
    def has(self, key: Hashable) -> bool: ...
    def publish(self, key: Hashable, ws_frame: bytes, sse_chunk: bytes) -> int:
        """Queues the event for every subscriber of the channel; returns how many."""
    def send(self, sub: Subscriber, data: bytes) -> None: ...
    def flush(self) -> None:
        """One write per subscriber with queued pieces (scheduled by publish/send)."""
