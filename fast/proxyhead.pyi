"""Type stub for fast.proxyhead (the reverse proxy's header rewriting; see fast/proxyhead.pyx)."""

from collections.abc import Callable, Sequence
from typing import Final

Header = tuple[bytes, bytes]

HOP_BY_HOP: Final[frozenset[bytes]]
REQUEST_DROP: Final[frozenset[bytes]]
RESPONSE_DROP: Final[frozenset[bytes]]

def connection_tokens(headers: Sequence[Header]) -> frozenset[bytes] | None:
    """The header names listed in Connection (lowercase), or None."""

def request_headers(
    headers: Sequence[Header],
    client: str,
    scheme: str,
    new_request_id: Callable[[], bytes],
    authority: bytes | None,
    fallback_host: bytes,
) -> tuple[list[Header], bytes]:
    """(headers for the upstream request, its X-Request-Id)."""

def response_headers(headers: Sequence[Header], request_id: bytes) -> list[Header]:
    """Headers for the client: hop-by-hop dropped, X-Request-Id echoed unless present."""

class RequestIds:
    """New X-Request-Id values: a prefix and a counter shared by the process."""
    def __init__(self, prefix: bytes) -> None: ...
    def __call__(self) -> bytes: ...

def upstream_request(
    method: bytes,
    target: bytes,
    headers: Sequence[Header],
    client: str,
    scheme: str,
    new_request_id: Callable[[], bytes],
    authority: bytes | None,
    fallback_host: bytes,
    length: int,
) -> tuple[bytes, bytes]:
    """(the upstream request's head, its X-Request-Id): request_head of request_headers."""

def client_answer(status: int, headers: Sequence[Header], request_id: bytes, body: bytes,
                  length: int) -> tuple[bytes, bytes]:
    """(keep, close): a whole answer for the client, both framings."""

def raw_answer(data: bytes, at: int, request_id: bytes) -> tuple[int, bool, int, int, bytes] | None:
    """(status, keep_alive, end, body_len, keep, close) of the usual whole answer at data[at:],
    rewritten for the client from its bytes; None: the parser's to read."""
