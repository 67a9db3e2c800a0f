"""Type stub for fast.ws (RFC 6455 frames, server side; see fast/ws.pyx)."""

from typing import Final, final

OP_CONT: Final[int]
OP_TEXT: Final[int]
OP_BINARY: Final[int]
OP_CLOSE: Final[int]
OP_PING: Final[int]
OP_PONG: Final[int]

def is_valid_utf8(data: bytes) -> bool:
    """What ``data.decode("utf-8")`` accepts."""

def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked server→client frame.  ValueError for an unknown opcode or a control
    frame that is fragmented or over 125 bytes; text is not checked (see encode_text)."""

def encode_text(data: bytes) -> bytes:
    """A whole text message in one frame; ValueError if ``data`` is not UTF-8."""

def encode_binary(data: bytes) -> bytes: ...
def encode_ping(payload: bytes = b"") -> bytes: ...
def encode_pong(payload: bytes = b"") -> bytes:
    """The answer to ``Ping(payload)``."""

def encode_close(code: int, reason: bytes = b"") -> bytes:
    """``code`` in 1000-1003, 1007-1014, 3000-4999, or 1005 (no reason) for an empty close
    payload; ``reason`` UTF-8, at most 123 bytes.  ValueError otherwise."""

def encode_masked_frame(opcode: int, payload: bytes, mask: bytes, fin: bool = True) -> bytes:
    """A client→server frame masked with the 4-byte ``mask`` (tests, load generators)."""

@final
class Message:
    """A complete, reassembled, unmasked message; text is validated UTF-8."""

    def __init__(self, opcode: int, data: bytes) -> None: ...
    @property
    def opcode(self) -> int:
        """OP_TEXT or OP_BINARY."""
    @property
    def data(self) -> bytes: ...

@final
class Ping:
    def __init__(self, payload: bytes) -> None: ...
    @property
    def payload(self) -> bytes: ...

@final
class Pong:
    def __init__(self, payload: bytes) -> None: ...
    @property
    def payload(self) -> bytes: ...

@final
class Close:
    """The peer's close frame; the decoder ignores all later input."""

    def __init__(self, code: int, reason: str = "") -> None: ...
    @property
    def code(self) -> int:
        """1005 when the close frame had no payload."""
    @property
    def reason(self) -> str: ...

@final
class ProtocolError:
    """Invalid input; the last event.  The decoder is dead (feed returns [])."""

    def __init__(self, close_code: int, reason: str) -> None: ...
    @property
    def close_code(self) -> int:
        """1002 (protocol), 1007 (invalid UTF-8) or 1009 (too big)."""
    @property
    def reason(self) -> str: ...

Event = Message | Ping | Pong | Close | ProtocolError

@final
class FrameDecoder:
    """Client→server frames (masked) in, events out."""

    def __init__(
        self, max_message_size: int = 1048576, max_frame_size: int | None = None
    ) -> None:
        """``max_frame_size`` defaults to ``max_message_size``; either exceeded is 1009."""
    def feed(self, data: bytes) -> list[Event]: ...
