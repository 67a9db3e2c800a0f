"""Type stub for fast.h2fields (RFC 9113 §8.2-8.3 request field rules; see fast/h2fields.pyx)."""

from collections.abc import Iterable

def request_error(headers: Iterable[tuple[bytes, bytes]], trailer: bool = False) -> str | None:
    """None for a valid request header list (``trailer``: a trailer section), else why not."""

def response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple]:
    """:status then the fields to send (connection-specific dropped, values trimmed,
    credentials marked never-indexed); ValueError for a forbidden name or value."""

def trailer_fields(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple]: ...
