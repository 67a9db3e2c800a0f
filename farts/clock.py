"""One clock per process: monotonic time, wall time, the hybrid logical clock, timers.

Every service gets the node's ``Clock`` and reads time only through it; state machines
take ``now`` as an argument and never read a clock. Periodic work is a scheduled entry
(``every``), not a ``while True: sleep`` task, so it can be driven by a ``FakeClock``
in tests: ``advance(seconds)`` runs the due timers in time order, with no sleeping.

Two implementations:

- ``LoopClock``: the real one, on the running asyncio loop.
- ``FakeClock``: for tests of logic; time moves only when the test says so.

The HLC (Kulkarni et al., 2014) gives timestamps that follow wall time, never go
backwards, and move past every timestamp received from a peer: one 64-bit integer,
milliseconds since the epoch in the high 48 bits, a logical counter in the low 16 (so
timestamps compare as plain ints and fit an LMDB key or a BSON Int64).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("farts.clock")

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(wall_ms: int, logical: int) -> int:
    return (wall_ms << LOGICAL_BITS) | logical


def unpack(ts: int) -> tuple[int, int]:
    return ts >> LOGICAL_BITS, ts & LOGICAL_MASK


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HLC:
    """Sans-IO: the wall clock (milliseconds) is a function handed in."""

    __slots__ = ("last", "clock")

    def __init__(self, last: int = 0, clock: Callable[[], int] = _wall_ms) -> None:
        # `last` is the highest timestamp issued or seen (restored from the store so a
        # restart with a clock that went back keeps issuing larger timestamps).
        self.last, self.clock = last, clock

    def now(self) -> int:
        """A timestamp for a local event, larger than every one before."""
        wall = self.clock()
        last_wall, logical = unpack(self.last)
        if wall > last_wall:
            self.last = pack(wall, 0)
        elif logical < LOGICAL_MASK:
            self.last = pack(last_wall, logical + 1)
        else:  # 65536 events in one millisecond: borrow the next millisecond
            self.last = pack(last_wall + 1, 0)
        return self.last

    def observe(self, remote: int) -> int:
        """Merges a timestamp received from another node; returns the receive timestamp."""
        wall = self.clock()
        last_wall, last_logical = unpack(self.last)
        remote_wall, remote_logical = unpack(remote)
        top = max(wall, last_wall, remote_wall)
        if top == last_wall == remote_wall:
            logical = max(last_logical, remote_logical) + 1
        elif top == last_wall:
            logical = last_logical + 1
        elif top == remote_wall:
            logical = remote_logical + 1
        else:
            logical = 0
        if logical > LOGICAL_MASK:
            top, logical = top + 1, 0
        self.last = pack(top, logical)
        return self.last


class Timer:
    """A scheduled call; ``cancel()`` is safe at any time, more than once."""

    __slots__ = ("when", "fn", "args", "cancelled", "_handle")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple) -> None:
        self.when, self.fn, self.args = when, fn, args
        self.cancelled = False
        self._handle: Any = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Clock:
    """What services use. ``every(interval, fn)`` calls ``fn(now)`` each interval (with
    optional jitter, a fraction of the interval); an exception in ``fn`` is logged and
    the ticker goes on: one bad tick must not stop a node's housekeeping."""

    def __init__(self) -> None:
        self.hlc = HLC(clock=self.wall_ms)

    def monotonic(self) -> float:
        raise NotImplementedError

    def wall(self) -> float:
        raise NotImplementedError

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.monotonic() + max(0.0, delay), fn, *args)

    async def sleep(self, delay: float) -> None:
        """A coroutine's wait on this clock (a FakeClock's ``advance`` ends it), instead of
        asyncio.sleep, which only the loop's own clock ends."""
        done = asyncio.get_running_loop().create_future()
        timer = self.call_later(delay, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            timer.cancel()

    def every(self, interval: float, fn: Callable[[float], Any], *, jitter: float = 0.0,
              first: float | None = None) -> Timer:
        """A periodic entry; the returned handle cancels all future ticks."""
        handle = Timer(0.0, fn, ())

        def delay() -> float:
            return interval * (1 + random.uniform(-jitter, jitter)) if jitter else interval

        def tick() -> None:
            if handle.cancelled:
                return
            try:
                fn(self.monotonic())
            except Exception:
                log.exception("periodic task %s failed", getattr(fn, "__qualname__", fn))
            if not handle.cancelled:
                inner = self.call_later(delay(), tick)
                handle._handle, handle.when = inner, inner.when

        inner = self.call_later(delay() if first is None else first, tick)
        handle._handle, handle.when = inner, inner.when
        return handle


class LoopClock(Clock):
    """Real time; timers run on the asyncio loop that is running when they are set."""

    def __init__(self) -> None:
        # The C functions themselves, not methods around them: hot paths (a CDN hit reads
        # the wall clock once per request) pay one builtin call, no Python frame.
        self.monotonic = time.monotonic  # type: ignore[method-assign]
        self.wall = time.time  # type: ignore[method-assign]
        super().__init__()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(when, fn, args)
        loop = asyncio.get_running_loop()
        # The loop's own clock may differ from time.monotonic(): schedule by delay.
        t._handle = loop.call_later(max(0.0, when - time.monotonic()), _fire, t)
        return t


def _fire(t: Timer) -> None:
    if not t.cancelled:
        t._handle = None
        t.fn(*t.args)


class FakeClock(Clock):
    """Time that moves only by ``advance``: timers due by then run in time order (ties
    in the order they were set), each seeing ``monotonic()`` at its own due time."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        super().__init__()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP) while monotonic time does not."""
        self._wall_offset += seconds

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(when, fn, args)
        heapq.heappush(self._heap, (when, next(self._order), t))
        return t

    def advance(self, seconds: float) -> int:
        """Moves time forward, running what falls due; returns how many timers ran."""
        end = self.now + seconds
        ran = 0
        while self._heap and self._heap[0][0] <= end:
            when, _, t = heapq.heappop(self._heap)
            if t.cancelled:
                continue
            self.now = max(self.now, when)
            t.fn(*t.args)
            ran += 1
        self.now = end
        return ran

    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)
