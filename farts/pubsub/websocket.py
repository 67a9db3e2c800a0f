"""WebSocket subscribers: the RFC 6455 handshake and the JSON command protocol.

Client → server text frames are commands:
    {"op":"subscribe","channel":"c","since":"<cursor>"?,"token":"<jwt>"?}
    {"op":"unsubscribe","channel":"c"}
    {"op":"ping"}
Server → client: events {"channel":"c","id":"<cursor>","data":...}, replies
{"op":"subscribed","channel":"c","recovered":bool}, {"op":"unsubscribed",...},
{"op":"pong"}, {"op":"error","code":N,"reason":"..."}.

A bad command gets an error reply and the connection stays; bad framing closes it with
the RFC's code (1002 protocol, 1003 binary data, 1007 bad UTF-8, 1009 too big).
Frames are decoded by fast.ws; everything sent goes through the fanout so replies,
replayed history and live events keep their order.
"""
from __future__ import annotations

import base64
import hashlib
import json

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

from .subscriber import SubscriberProtocol

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake_problem(head) -> tuple[int, str] | None:
    """What is wrong with an upgrade request for RFC 6455, as (status, reason)."""
    if head.method != b"GET" or head.version != 11:
        return 400, "WebSocket needs GET over HTTP/1.1"
    if head.upgrade != b"websocket":
        return 426, "expected Upgrade: websocket"
    if head.header(b"sec-websocket-version") != b"13":
        return 426, "only Sec-WebSocket-Version 13"
    key = head.header(b"sec-websocket-key") or b""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return 400, "bad Sec-WebSocket-Key"
    return None


def accept_head(head) -> bytes:
    accept = base64.b64encode(hashlib.sha1(head.header(b"sec-websocket-key") + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept + b"\r\n\r\n")


def reply(obj: dict) -> bytes:
    return encode_text(json.dumps(obj, separators=(",", ":")).encode())


class WebSocketSubscriber(SubscriberProtocol):
    __slots__ = ("decoder", "heard")

    def __init__(self, service, tenant) -> None:
        super().__init__(service, tenant)
        self.decoder: FrameDecoder | None = None   # made on the first bytes (idle costs nothing)
        self.heard = 0.0                           # service clock when the client last sent

    # -- asyncio protocol (after the transport's Takeover) ---------------------------
    def taken_over(self, transport, rest: bytes, release) -> None:
        self.attach(transport, release)
        self.heard = self.service.now
        self.service.opened(self)
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
                self.service.fanout.send(self, encode_pong(ev.payload))
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
    def error(self, code: int, reason: str, **extra) -> None:
        self.service.fanout.send(self, reply({"op": "error", "code": code, "reason": reason, **extra}))

    def close(self, code: int, reason: str) -> None:
        """Sends a close frame (after what is queued) and closes the connection."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        try:
            frame = encode_close(code, reason.encode()[:123])
        except ValueError:
            frame = encode_close(1002, b"")
        self.service.fanout.send(self, frame)
        self.service.fanout.flush()
        self.transport.close()

    def drop_slow(self) -> None:
        super().drop_slow(SLOW_CONSUMER)


SLOW_CONSUMER = encode_close(1008, b"slow consumer")
