"""Type stub for fast.h2fields (RFC 9113 §8.2-8.3 request field rules; see fast/h2fields.pyx)."""

from collections.abc import Iterable

def request_error(headers: Iterable[tuple[bytes, bytes]], trailer: bool = False) -> str | None:
    """None for a valid request header list (``trailer``: a trailer section), else why not."""
