"""Type stub for fast.http1 (HTTP/1.1 parsers and writers; see fast/http1.pyx)."""

from collections.abc import Iterable
from typing import Final, final

Header = tuple[bytes, bytes]

@final
class Request:
    """A request head; followed in the event list by body pieces and END."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def path(self) -> bytes:
        """Target up to '?'; for absolute-form, the path part ('/' if empty)."""
    @property
    def query(self) -> bytes: ...
    @property
    def version(self) -> int:
        """10 or 11."""
    @property
    def plain_path(self) -> bool:
        """The path has no "%" and no "/.": a router need not check it for dot segments."""
    @property
    def headers(self) -> list[Header]:
        """(lowercase name, value without surrounding whitespace), in order."""
    @property
    def host(self) -> bytes:
        """Lowercase host without port, from the Host field, or from the target when it
        is in absolute- or authority-form; b"" if there is none."""
    @property
    def keep_alive(self) -> bool: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def content_length(self) -> int:
        """-1 without a Content-Length field."""
    @property
    def expect_continue(self) -> bool: ...
    @property
    def upgrade(self) -> bytes | None:
        """Lowercase Upgrade value of an HTTP/1.1 request whose Connection lists upgrade."""
    def header(self, name: bytes) -> bytes | None:
        """First value of the field ``name`` (given in lowercase)."""

@final
class HandlerRequest:
    """The version-neutral request a handler sees, over an HTTP/1 head."""

    tenant: object
    route: object
    client: str
    scheme: str
    body: object
    start: float
    def __init__(self, head: Request, tenant: object, route: object, client: str, scheme: str,
                 body: object, start: float, conn: object = None) -> None: ...
    def send_interim(self, status: int, headers: list[Header]) -> bool: ...
    @property
    def _head(self) -> Request: ...
    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def path(self) -> bytes: ...
    @property
    def query(self) -> bytes: ...
    @property
    def host(self) -> bytes: ...
    @property
    def headers(self) -> list[Header]: ...
    def header(self, name: bytes) -> bytes | None: ...
    @property
    def version(self) -> str: ...
    @property
    def upgrade(self) -> bytes | None: ...
    @property
    def content_length(self) -> int: ...

@final
class Response:
    """A response head; followed in the event list by body pieces and END."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> bytes: ...
    @property
    def version(self) -> int: ...
    @property
    def headers(self) -> list[Header]: ...
    @property
    def keep_alive(self) -> bool:
        """False too when the body runs until the connection closes."""
    @property
    def chunked(self) -> bool: ...
    @property
    def content_length(self) -> int: ...
    def header(self, name: bytes) -> bytes | None: ...

@final
class HTTPError:
    """Invalid input; the last event a parser returns.  ResponseParser always uses 502."""

    def __init__(self, status: int, reason: str) -> None: ...
    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...

@final
class _End: ...

END: Final[_End]
"""Marks the end of a message's body."""

Event = Request | Response | bytes | _End | HTTPError

class _Parser:
    max_body: int
    """The most a chunked body may declare in chunk sizes (-1, the default: no limit); a
    larger declaration is an HTTPError(413) when its size line is read."""
    @property
    def idle(self) -> bool:
        """No message in progress and nothing buffered."""
    @property
    def in_head(self) -> bool:
        """Part of a message head is buffered."""
    @property
    def in_body(self) -> bool:
        """Inside a body (including a chunked body's trailer section)."""
    def take_rest(self) -> bytes:
        """Bytes that followed a protocol switch (upgrade, CONNECT, 101), once."""

@final
class RequestParser(_Parser):
    def __init__(self, max_header_bytes: int = 16384, max_headers: int = 100) -> None: ...
    def feed(self, data: bytes) -> list[Event]: ...

@final
class ResponseParser(_Parser):
    def __init__(self, max_header_bytes: int = 65536, max_headers: int = 200) -> None: ...
    def expect_head_response(self) -> None:
        """The next final response answers a HEAD request: it has no body."""
    def feed(self, data: bytes) -> list[Event]: ...
    def feed_eof(self) -> list[Event]:
        """[END] after a close-delimited body, [HTTPError(502)] mid-message, else []."""

LAST_CHUNK: Final[bytes]

def closing(keep: bytes, body_len: int) -> bytes: ...
def response_head(
    status: int,
    headers: Iterable[tuple[bytes | str, bytes | str]],
    content_length: int,
    keep_alive: bool,
) -> bytes:
    """content_length: >= 0 a length, -1 chunked, -2 no framing field.
    Raises ValueError for names/values that are not valid field syntax."""

def request_head(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes | str, bytes | str]],
    content_length: int,
) -> bytes: ...
def encode_chunk(data: bytes) -> bytes:
    """b"" for empty data."""

def simple_response(
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    keep_alive: bool = True,
) -> bytes: ...

REASONS: dict[int, str]

class Fixed:
    """A whole response, framed once: one variant keeps the connection, one closes it."""

    status: int
    keep: bytes
    close: bytes | None
    body_len: int
    served: dict[str, int] | None
    def __init__(self, status: int, body: bytes, content_type: bytes = ...,
                 headers: list[tuple[bytes, bytes]] | tuple = ...) -> None: ...
    @classmethod
    def error(cls, status: int, reason: str = "") -> Fixed: ...
