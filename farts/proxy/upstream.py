"""One upstream server: its keep-alive pool, its passive health, and the connection Protocol.

``UpstreamConnection`` is a thin asyncio Protocol around ``fast.http1.ResponseParser``:
bytes in → parser events queued for the one coroutine that owns the connection, with
read flow control (reading pauses while too many body bytes wait) and write flow
control (``drain`` waits for ``resume_writing``). No locks: one loop, one owner.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

from fast.http1 import END, ResponseParser
from fast.http1 import Response as ResponseHead

HIGH_WATER = 256 * 1024   # queued response body bytes before reading pauses
LOW_WATER = 64 * 1024

_TIMEOUT = object()


class UpstreamGone(Exception):
    """The connection closed (or failed) under a request."""


class UpstreamTimeout(Exception):
    """Nothing came from the upstream within the read timeout."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)


class Deadlines:
    """Read timeouts of the waits in flight, checked by one sweep every TICK seconds.

    A loop timer per wait (``call_later`` + ``cancel``) cost a fifth of the proxy's
    throughput (bench/http.py farts-proxy: 22k → 27k req/s without it); timeouts of
    seconds do not need better than TICK precision.
    """

    TICK = 0.1

    def __init__(self) -> None:
        self.waiting: dict[asyncio.Future, float] = {}
        self.task: asyncio.Task | None = None

    def add(self, fut: asyncio.Future, timeout: float) -> None:
        self.waiting[fut] = time.monotonic() + timeout
        if self.task is None:
            self.task = asyncio.ensure_future(self._sweep())

    def remove(self, fut: asyncio.Future) -> None:
        self.waiting.pop(fut, None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.TICK)
            now = time.monotonic()
            for fut in [f for f, deadline in self.waiting.items() if deadline <= now]:
                del self.waiting[fut]
                _expire(fut)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("server", "parser", "transport", "events", "buffered", "waiter",
                 "write_paused", "read_paused", "closed", "exc", "received", "pooled",
                 "reusable")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.events: deque = deque()
        self.buffered = 0            # body bytes queued in events
        self.waiter: asyncio.Future | None = None  # the owner waits for events/drain here
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.exc: BaseException | None = None
        self.received = 0            # bytes received since the current request was sent
        self.pooled = False
        self.reusable = True         # cleared when a request was not fully sent

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.pooled:  # an idle connection has nothing to say: drop it
            self.abort()
            return
        self.received += len(data)
        events = self.parser.feed(data)
        if events:
            for ev in events:
                if type(ev) is bytes:
                    self.buffered += len(ev)
            self.events.extend(events)
            if self.buffered > HIGH_WATER and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self):
        return False  # close the transport: we never half-close towards the upstream

    def connection_lost(self, exc) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.exc = exc
        self.transport = None
        if self.pooled:
            self.server.forget(self)
            return
        try:
            self.events.extend(self.parser.feed_eof())
        except Exception:  # a dead parser: the owner sees the loss
            pass
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- used by the owning coroutine -------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            raise UpstreamGone("upstream closed the connection")
        self.transport.write(data)

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut = self.waiter = loop.create_future()
        deadlines = self.server.deadlines
        deadlines.add(fut, timeout)
        try:
            if await fut is _TIMEOUT:
                raise UpstreamTimeout()
        finally:
            deadlines.remove(fut)
            self.waiter = None

    async def drain(self, timeout: float) -> None:
        """Waits until the write buffer drains; returns early if a response arrives."""
        while self.write_paused and not self.closed and not self.events:
            await self._wait(timeout)
        if self.closed and not self.events:
            raise UpstreamGone("upstream closed the connection")

    async def next_event(self, timeout: float):
        """The next parser event; None when the connection is gone with nothing left."""
        events = self.events
        while not events:
            if self.closed:
                return None
            await self._wait(timeout)
        ev = events.popleft()
        if type(ev) is bytes:
            self.buffered -= len(ev)
            if self.read_paused and self.buffered <= LOW_WATER and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()
        return ev

    def has_final_head(self) -> bool:
        """A final (non-1xx) response head is queued: the upstream has answered."""
        return any(type(ev) is ResponseHead and ev.status >= 200 for ev in self.events)

    def take_whole_body(self) -> bytes | None:
        """The rest of the current body if it has fully arrived (END queued), else None."""
        events = self.events
        for i, ev in enumerate(events):
            if ev is END:
                pieces = [events.popleft() for _ in range(i)]
                events.popleft()
                self.buffered -= sum(map(len, pieces))
                if self.read_paused and self.transport is not None:
                    self.read_paused = False
                    self.transport.resume_reading()
                return b"".join(pieces)
            if type(ev) is not bytes:
                return None
        return None

    def abort(self) -> None:
        if self.pooled:
            self.server.forget(self)
        self.closed = True
        t = self.transport
        if t is not None:
            self.transport = None
            t.abort()


class Server:
    """One ``host:port`` of an upstream group."""

    __slots__ = ("address", "host", "port", "idle", "pool_size", "fails", "down_until",
                 "max_fails", "fail_timeout", "closed", "deadlines")

    def __init__(self, address: str, pool_size: int, max_fails: int, fail_timeout: float,
                 deadlines: Deadlines) -> None:
        self.address = address
        self.deadlines = deadlines
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.idle: list[UpstreamConnection] = []   # a stack: the warmest connection on top
        self.pool_size = pool_size
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.fails = 0
        self.down_until = 0.0
        self.closed = False

    # -- health ------------------------------------------------------------------------
    def up(self, now: float) -> bool:
        return now >= self.down_until

    def failed(self) -> bool:
        """Counts a connect failure; True when it marks an up server down."""
        self.fails += 1
        if self.fails >= self.max_fails:
            now = time.monotonic()
            was_up = now >= self.down_until
            self.down_until = now + self.fail_timeout
            return was_up
        return False

    def succeeded(self) -> None:
        if self.fails:
            self.fails = 0
            self.down_until = 0.0

    # -- pool ------------------------------------------------------------------------
    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if (self.closed or conn.closed or not conn.reusable or conn.events
                or len(self.idle) >= self.pool_size):
            conn.abort()
            return
        conn.pooled = True
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        conn.pooled = False
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self),
                                                   self.host, self.port)
        return conn

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().abort()
