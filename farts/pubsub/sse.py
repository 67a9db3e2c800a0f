"""Server-Sent Events subscribers: ``GET /live/sse?channel=a&channel=b``.

The response is ``text/event-stream``, chunked, never ending; each event is
``id: <cursor>`` plus ``data: <the same JSON a WebSocket subscriber gets>``, encoded
once per event for all SSE subscribers. A comment line every heartbeat interval keeps
proxies from closing an idle stream. Resume with ``Last-Event-ID`` or ``?since=``.
"""
from __future__ import annotations

from fast.http1 import LAST_CHUNK, encode_chunk

from .subscriber import SubscriberProtocol

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n")
HEARTBEAT = encode_chunk(b": heartbeat\n\n")


def event_chunk(event_id: str, message: bytes) -> bytes:
    return encode_chunk(b"id: " + event_id.encode() + b"\ndata: " + message + b"\n\n")


def comment_chunk(text: str) -> bytes:
    return encode_chunk(b": " + text.replace("\n", " ").encode() + b"\n\n")


class SSESubscriber(SubscriberProtocol):
    __slots__ = ("wanted",)

    def __init__(self, service, tenant, names: list[str], cursor: dict | None) -> None:
        super().__init__(service, tenant)
        self.sse = True
        self.wanted = (names, cursor)   # subscribed to when the connection is ours

    def taken_over(self, transport, rest: bytes, release) -> None:
        self.attach(transport, release)
        names, cursor = self.wanted
        self.wanted = None
        self.service.sse_opened(self, names, cursor)

    def data_received(self, data: bytes) -> None:
        # A client has nothing to send on an event stream; a pipelined request here
        # would never be answered, so the stream ends.
        self.close()

    def close(self) -> None:
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.service.fanout.send(self, LAST_CHUNK)
        self.service.fanout.flush()
        self.transport.close()
