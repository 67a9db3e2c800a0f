"""Server-Sent Events subscribers: ``GET /live/sse?channel=a&channel=b``.

The handler answers with ``Upgrade(200, HEADERS, subscriber, EVENTS)``: a never-ending
``text/event-stream`` body (the transport writes the head and frames the body for its
HTTP version; on HTTP/1.1 each piece is a chunk, see ``frame``).  Each event is
``id: <cursor>`` plus ``data: <the same JSON a WebSocket subscriber gets>``, encoded
once per event for all SSE subscribers.  A comment line every heartbeat interval keeps
proxies from closing an idle stream.  Resume with ``Last-Event-ID`` or ``?since=``.
"""
from __future__ import annotations

from farts.transport.http import CHUNKED, frame

from .subscriber import SubscriberStream

HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]
# Every SSE sink today is an HTTP/1.1 chunked body: the pieces below are framed for it
# once, for all subscribers (a sink of another framing would need its own encoding).
FRAMING = CHUNKED
HEARTBEAT = frame(FRAMING, b": heartbeat\n\n")
# A restart: the client is asked to reconnect (an EventSource does so by itself when the
# stream ends, after `retry` ms, sending Last-Event-ID); this event has no id, so the
# cursor the client resumes with stays its last event's.
RECONNECT = frame(FRAMING, b"event: reconnect\ndata: {}\nretry: 200\n\n")


def event_chunk(ev) -> bytes:
    return frame(FRAMING, b"id: " + ev.id.encode() + b"\ndata: " + ev.message + b"\n\n")


def comment_chunk(text: str) -> bytes:
    return frame(FRAMING, b": " + text.replace("\n", " ").encode() + b"\n\n")


class SSESubscriber(SubscriberStream):
    __slots__ = ("wanted",)

    def __init__(self, service, tenant, names: list[str], cursor: dict | None) -> None:
        super().__init__(service, tenant)
        self.sse = True
        self.wanted = (names, cursor)   # subscribed to when the stream is open

    def opened(self, sink, rest: bytes) -> None:
        super().opened(sink, rest)
        names, cursor = self.wanted
        self.wanted = None
        self.service.stream_opened(self, names, cursor)

    def data_received(self, data: bytes) -> None:
        # A client has nothing to send on an event stream; a pipelined request here
        # would never be answered, so the stream ends.
        self.close()

    def close(self) -> None:
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.service.flush()
        self.transport.close()   # (the sink ends the body: the last chunk on HTTP/1.1)
