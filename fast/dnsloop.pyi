"""Type stub for fast.dnsloop (the geo DNS UDP loop: recvmmsg, reply cache, RRL, sendmmsg)."""

from collections.abc import Callable
from typing import final

from fast.geo import GeoIndex

@final
class UDPFastPath:
    def __init__(self, fd: int, miss: Callable[[bytes, bytes], tuple[bytes | None, object]],
                 rrl_rate: float = 0, rrl_burst: float = 1, rrl_slip: int = 0,
                 max_entries: int = 100000) -> None:
        """``fd``: a bound non-blocking UDP socket. ``miss(query, packed client address)``
        returns (reply or None, label or None); a label makes the reply cacheable."""
    def fileno(self) -> int:
        """What to watch for readability (an epoll set holding the socket), then call on_readable."""
    def close(self) -> None:
        """Closes the epoll set (not the socket)."""
    def set_geo(self, geo: GeoIndex | None) -> None:
        """Index used to place senders (cache keys); clears the cache."""
    def clear(self) -> None: ...
    def replayed(self) -> dict[object, int]:
        """{label: replies sent from the cache}."""
    @property
    def entries(self) -> int: ...
    def on_readable(self, max_batches: int = 8) -> int:
        """Reads and answers up to max_batches batches of 64; returns messages read."""
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def rrl_dropped(self) -> int: ...
    @property
    def rrl_slipped(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def send_errors(self) -> int: ...
    @property
    def reads(self) -> int:
        """recvmmsg calls that returned datagrams (queries / reads: the batch size reached)."""
    @property
    def sends(self) -> int:
        """sendmmsg calls."""
