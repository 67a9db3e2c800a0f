"""Type stub for fast.h2frames (RFC 9113 frames: reader and serializers; see fast/h2frames.pyx)."""

from collections.abc import Iterable
from typing import Final, final

DATA: Final[int]
HEADERS: Final[int]
PRIORITY: Final[int]
RST_STREAM: Final[int]
SETTINGS: Final[int]
PUSH_PROMISE: Final[int]
PING: Final[int]
GOAWAY: Final[int]
WINDOW_UPDATE: Final[int]
CONTINUATION: Final[int]
END_STREAM: Final[int]
ACK: Final[int]
END_HEADERS: Final[int]
PADDED: Final[int]
PRIORITY_FLAG: Final[int]
PROTOCOL_ERROR: Final[int]
FLOW_CONTROL_ERROR: Final[int]
FRAME_SIZE_ERROR: Final[int]
ENABLE_PUSH: Final[int]
INITIAL_WINDOW_SIZE: Final[int]
MAX_FRAME_SIZE: Final[int]
ENABLE_CONNECT_PROTOCOL: Final[int]

class FrameError(Exception):
    code: int
    stream_id: int
    def __init__(self, code: int, stream_id: int, message: str) -> None: ...

@final
class Frame:
    type: int
    flags: int
    stream_id: int
    length: int
    value: int
    last_stream_id: int
    depends_on: int
    weight: int
    exclusive: bool
    data: bytes | None
    settings: list[tuple[int, int]] | None

@final
class FrameReader:
    max_frame_size: int
    buffered: int
    def __init__(self, max_frame_size: int = 16384) -> None: ...
    def feed(self, data: bytes) -> list[Frame | FrameError]: ...

def data_frame(stream_id: int, data: bytes, end_stream: bool = False) -> bytes: ...
def headers_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes: ...
def settings_frame(settings: Iterable[tuple[int, int]] = (), ack: bool = False) -> bytes: ...
def window_update_frame(stream_id: int, increment: int) -> bytes: ...
def rst_stream_frame(stream_id: int, code: int) -> bytes: ...
def ping_frame(data: bytes, ack: bool = False) -> bytes: ...
def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes: ...
