"""One upstream server: a keep-alive pool of the shared HTTP client plus passive health."""
from __future__ import annotations

from farts.clock import Clock
from farts.transport.client import Deadlines, Pool


class Server(Pool):
    """One ``host:port`` of an upstream group (each group keeps its own pool and health)."""

    __slots__ = ("address", "host_field", "fails", "down_until", "max_fails", "fail_timeout", "clock",
                 "answered", "queued")

    def __init__(self, address: str, pool_size: int, max_fails: int, fail_timeout: float,
                 deadlines: Deadlines, clock: Clock) -> None:
        host, _, port = address.rpartition(":")
        super().__init__(host.strip("[]"), int(port), pool_size, deadlines)
        self.address = address
        self.host_field = address.encode()   # Host of a request that came without one
        self.clock = clock
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.fails = 0
        self.down_until = 0.0
        # Answers that came whole ("ok" in farts_proxy_requests_total): counted in place,
        # the hottest path, and summed into the counter when scraped (ProxyStats).
        self.answered = 0
        self.queued: list = []   # GETs for the end of this loop turn (ProxyHandler.flush)

    def up(self, now: float) -> bool:
        return now >= self.down_until

    def failed(self) -> bool:
        """Counts a connect failure; True when it marks an up server down."""
        self.fails += 1
        if self.fails >= self.max_fails:
            now = self.clock.monotonic()
            was_up = now >= self.down_until
            self.down_until = now + self.fail_timeout
            return was_up
        return False

    def succeeded(self) -> None:
        if self.fails:
            self.fails = 0
            self.down_until = 0.0
