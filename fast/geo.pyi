"""Type stub for fast.geo (IP address → location index for the geo DNS; see fast/geo.pyx)."""

from typing import final

@final
class Tree:
    """A MaxMind search tree flattened into sorted ranges."""

    @property
    def records(self) -> list[int]:
        """The data offset of each distinct record."""
    def address_of(self, i: int) -> bytes:
        """A packed address inside a network that has record i."""
    @property
    def v4_ranges(self) -> int: ...
    @property
    def v6_ranges(self) -> int: ...

def walk_tree(data: bytes | bytearray | memoryview, node_count: int, record_size: int,
              ip_version: int) -> Tree:
    """Flattens the search tree at the start of ``data`` (the .mmdb file's bytes); GIL
    released while walking. ValueError for a malformed tree or unsupported metadata."""

@final
class GeoIndex:
    def __init__(self, tree: Tree, locations: list[tuple[float, float, str]],
                 rec_location: list[int]) -> None:
        """``rec_location[i]``: location number of ``tree.records[i]`` (-1: none)."""
    @property
    def nloc(self) -> int: ...
    @property
    def locations(self) -> list[tuple[float, float, str]]: ...
    @property
    def ranges(self) -> tuple[int, int]:
        """(IPv4 ranges, IPv6 ranges) after merging neighbours with the same location."""
    @property
    def nbytes(self) -> int: ...
    def lookup(self, packed: bytes) -> tuple[int, int]:
        """Packed 4/16-byte address → (location number or -1, the longest prefix of the
        address wholly inside its range: the ECS scope). IPv4-mapped and 6to4 IPv6
        addresses are looked up as IPv4."""
    def coords(self, loc: int) -> tuple[float, float]: ...
    def lookup_many(self, packed: list[bytes], rounds: int = 1, with_scope: bool = True) -> int:
        """Benchmark helper: every lookup in C; the sum of location numbers."""

def decode_locations(
    data: bytes | bytearray | memoryview, data_start: int, offsets: list[int]
) -> list[tuple[float | None, float | None, str, str, str] | None]:
    """Per data-section offset: (latitude, longitude, continent code, country ISO code
    (or registered_country's), English city name), decoded in C without the rest of the
    record; None for a record that is not a map or is malformed."""
