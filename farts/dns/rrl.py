"""Response rate limiting (the idea of BIND's RRL): a token bucket per client network.

UDP source addresses can be forged, so a flood "from" one network may be aimed at a
victim; past the rate, replies are dropped, except every ``slip``-th one, which goes out
truncated (TC=1, no records): a real client retries over TCP and still gets its answer,
a victim receives a reply no larger than the query. Sans-IO: the caller passes the clock.
"""
from __future__ import annotations

ALLOW, DROP, SLIP = 0, 1, 2


def network_key(packed: bytes) -> bytes:
    """The /24 of an IPv4 address, the /56 of an IPv6 one."""
    return packed[:3] if len(packed) == 4 else packed[:7]


class RateLimiter:
    # Buckets idle long enough to be full again are forgotten when the table grows.
    MAX_TABLE = 100_000

    def __init__(self, rate: float, burst: float, slip: int) -> None:
        self.rate, self.burst, self.slip = rate, burst, slip
        self._buckets: dict[bytes, list] = {}   # key -> [tokens, last time, limited count]
        self.dropped = 0
        self.slipped = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: bytes, now: float) -> int:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.MAX_TABLE:
                self._sweep(now)
            self._buckets[key] = [self.burst - 1, now, 0]
            return ALLOW
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens >= 1:
            b[0] = tokens - 1
            return ALLOW
        b[0] = tokens
        b[2] += 1
        if self.slip and b[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full_after}
        if len(self._buckets) >= self.MAX_TABLE:   # a spoofed flood from everywhere at once
            self._buckets.clear()
