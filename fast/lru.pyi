"""Type stub for fast.lru (the CDN's LRU index; see fast/lru.pyx)."""

from collections.abc import Iterable
from typing import final

@final
class LRUIndex:
    """Cached keys with their sizes, in recency order.  Keys are bytes (a bytes subclass is
    stored as a plain bytes copy); any other key type raises TypeError."""

    def __init__(self, expected_entries: int = 0) -> None:
        """``expected_entries`` presizes the arrays (they double when full anyway)."""
    def insert(self, key: bytes, size: int) -> None:
        """Add ``key`` as the most recent entry, or update its size and make it most recent.
        ValueError if size < 0; OverflowError if total_size would pass 2**63 - 1."""
    def touch(self, key: bytes) -> bool:
        """Make ``key`` the most recent entry; False if it is absent."""
    def remove(self, key: bytes) -> bool:
        """Forget ``key``; False if it was absent."""
    def __contains__(self, key: bytes) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def total_size(self) -> int:
        """Sum of the sizes of all entries."""
    def size_of(self, key: bytes) -> int:
        """-1 if ``key`` is absent."""
    def evict_until(self, capacity: int) -> list[bytes]:
        """Remove least recent entries until total_size <= capacity (ValueError if < 0);
        returns their keys in eviction order.  Entries of size 0 stay once the total fits."""
    def oldest(self, n: int) -> list[bytes]:
        """Up to ``n`` keys, least recent first."""
    def keys_by_recency(self) -> list[bytes]:
        """All keys, least recent first (the order load() takes)."""
    def take_touched(self) -> list[bytes]:
        """Keys inserted or touched since the previous call, each once, least recent first;
        keys removed or evicted since then are left out; load() does not count."""
    def load(self, items: Iterable[tuple[bytes, int]]) -> None:
        """Insert persisted (key, size) pairs, least recent first, without reporting them in
        take_touched().  Meant for an empty index."""
    def __sizeof__(self) -> int: ...
