"""Type stub for fast.counting (the hot paths' counter and histogram series; see fast/counting.pyx)."""

from collections.abc import Sequence
from typing import final

@final
class Count:
    """One counter series; its value is an int while only ints were added."""

    def inc(self) -> None: ...
    def add(self, amount: float) -> None:
        """ValueError for an amount below 0 (a counter only goes up), or not an int or a float."""
    @property
    def value(self) -> int | float: ...
    @property
    def counted(self) -> bool:
        """Whether anything was added, even 0 (the series is exported from then on)."""

@final
class Series:
    """One histogram series: a count per bucket (``bounds``, then +Inf) and the sum; as a
    sequence, [count per bucket..., +Inf count, sum]."""

    def __init__(self, bounds: Sequence[float]) -> None:
        """ValueError unless ``bounds`` increase."""
    def observe(self, value: float) -> None:
        """Counts ``value`` in the first bucket whose bound is >= it, and adds it to the sum."""
    def add(self, counts: Sequence[float], total: float) -> None:
        """Adds a count per bucket (+Inf last; ValueError for another length) and a sum."""
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    def bucket_counts(self) -> list[int]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int | slice) -> int | float | list[int | float]: ...
