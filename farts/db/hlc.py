"""Hybrid logical clock (Kulkarni et al., 2014): timestamps that follow wall time but
never go backwards and order causally related events across nodes.

A timestamp is one 64-bit integer: milliseconds since the epoch in the high 48 bits,
a logical counter in the low 16 (so timestamps compare as plain ints and fit an
LMDB key or a BSON Int64). Sans-IO: the wall clock is a function handed in.
"""
from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(wall_ms: int, logical: int) -> int:
    return (wall_ms << LOGICAL_BITS) | logical


def unpack(ts: int) -> tuple[int, int]:
    return ts >> LOGICAL_BITS, ts & LOGICAL_MASK


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HLC:
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
