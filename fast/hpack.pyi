"""Type stub for fast.hpack (RFC 7541 HPACK, one connection's two contexts; see fast/hpack.pyx).

Errors are the hpack library's classes: InvalidTableIndex, HPACKDecodingError,
InvalidTableSizeError, OversizedHeaderListError (all HPACKError)."""

from collections.abc import Iterable
from typing import final

@final
class Decoder:
    max_allowed_table_size: int
    """The SETTINGS_HEADER_TABLE_SIZE we advertised and the peer acknowledged."""
    max_header_list_size: int
    """A block whose list passes this (RFC 7541 sizes) raises OversizedHeaderListError."""
    header_table_size: int
    list_size: int
    """The RFC 7541 size of the list the last decode returned."""
    def __init__(self, max_header_list_size: int = 65536) -> None: ...
    def decode(self, data: bytes | bytearray | memoryview, raw: bool = True) -> list[tuple[bytes, bytes]]:
        """The fields of one complete header block (only raw=True is supported)."""

@final
class Encoder:
    header_table_size: int
    """Set from the peer's SETTINGS_HEADER_TABLE_SIZE; the table used is at most 4096."""
    def __init__(self) -> None: ...
    def encode(self, headers: Iterable[tuple], huffman: bool = True) -> bytes:
        """One header block; literals are Huffman-coded when shorter (``huffman`` is
        accepted for hpack's interface)."""
