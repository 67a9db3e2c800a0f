"""WebSocket subscribers: the RFC 6455 handshake and the frames of the command protocol.

The handler answers a valid handshake with ``Upgrade(101, [accept], subscriber, STREAM)``;
the transport writes the head and hands this subscriber a Sink.  Text frames from the
client are commands (commands.py decides, the service applies); everything sent goes
through the fanout so replies, replayed history and live events keep their order.

A bad command gets an error reply and the connection stays; bad framing closes it with
the RFC's code (1002 protocol, 1003 binary data, 1007 bad UTF-8, 1009 too big).
Frames are decoded and encoded by fast.ws.
"""
from __future__ import annotations

import base64
import hashlib

from fast.ws import (
    Close,
    FrameDecoder,
    Message,
    Ping,
    ProtocolError,
    encode_close,
    encode_pong,
    encode_text,
)

from .commands import reply_text
from .subscriber import SubscriberStream

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SLOW_CONSUMER = encode_close(1008, b"slow consumer")


def handshake_problem(req) -> tuple[int, str] | None:
    """What is wrong with an upgrade request for RFC 6455, as (status, reason).  (Only
    an HTTP/1.1 request has ``upgrade`` set, so the version needs no check here.)"""
    if req.method != b"GET":
        return 400, "WebSocket needs GET over HTTP/1.1"
    if req.upgrade != b"websocket":
        return 426, "expected Upgrade: websocket"
    if req.header(b"sec-websocket-version") != b"13":
        return 426, "only Sec-WebSocket-Version 13"
    key = req.header(b"sec-websocket-key") or b""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return 400, "bad Sec-WebSocket-Key"
    return None


def accept_headers(req) -> list[tuple[bytes, bytes]]:
    """The headers of the 101 besides Upgrade/Connection (the transport adds those)."""
    accept = base64.b64encode(hashlib.sha1(req.header(b"sec-websocket-key") + GUID).digest())
    return [(b"sec-websocket-accept", accept)]


def reply(message: dict) -> bytes:
    return encode_text(reply_text(message))


def event_frame(ev) -> bytes:
    return encode_text(ev.message)


class WebSocketSubscriber(SubscriberStream):
    __slots__ = ("decoder", "heard")

    def __init__(self, service, tenant) -> None:
        super().__init__(service, tenant)
        self.decoder: FrameDecoder | None = None   # made on the first bytes (idle costs nothing)
        self.heard = 0.0                           # service clock when the client last sent

    # -- the StreamHandler side -------------------------------------------------------
    def opened(self, sink, rest: bytes) -> None:
        super().opened(sink, rest)
        self.heard = self.service.now
        self.service.channels.opened(self)
        if rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        self.heard = self.service.now
        if self.decoder is None:
            self.decoder = FrameDecoder(self.service.max_command_bytes)
        for ev in self.decoder.feed(data):
            t = type(ev)
            if t is Message:
                if ev.opcode != 1:
                    self.close(1003, "binary messages are not commands")
                    return
                self.service.command(self, ev.data)
            elif t is Ping:
                self.service.send(self, encode_pong(ev.payload))
            elif t is Close:
                self.close(1000 if ev.code == 1005 else ev.code, "")
                return
            elif t is ProtocolError:
                self.service.protocol_error(ev.reason)
                self.close(ev.close_code, ev.reason)
                return
            # Pong: only `heard` matters
            if self.transport is None or self.closing:
                return

    # -- replies and closing ----------------------------------------------------------
    def send_message(self, message: dict) -> None:
        self.service.send(self, reply(message))

    def close(self, code: int, reason: str) -> None:
        """Sends a close frame (after what is queued) and closes the connection."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        try:
            frame = encode_close(code, reason.encode()[:123])
        except ValueError:
            frame = encode_close(1002, b"")
        self.service.send(self, frame)
        self.service.flush()
        self.transport.close()

    def drop_slow(self) -> None:
        super().drop_slow(SLOW_CONSUMER)
