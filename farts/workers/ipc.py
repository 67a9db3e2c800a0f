"""The channel between the node process and one worker: length-prefixed msgpack frames
over a Unix socket pair.

A frame is a 4-byte big-endian length and a msgpack map with a ``"t"`` (its type); the
message types are listed in ``farts/workers/__init__.py``. ``Framer`` is the sans-IO
part (bytes in, messages out; message in, bytes out); ``Channel`` the thin asyncio
adapter that calls ``on_message(msg)`` for each frame and ``on_lost()`` once when the
other end is gone.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

import msgpack

from farts.members import Member

log = logging.getLogger("farts.workers")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024   # a metrics snapshot or a history replay, never more


def member_to_wire(m: Member) -> dict:
    """A member of the node map as the DNS reads it (its mesh metadata left out)."""
    return {"id": m.id, "region": m.region, "lat": m.lat, "lon": m.lon, "addresses": list(m.addresses),
            "state": m.state, "incarnation": m.incarnation, "load": m.load}


def member_from_wire(w: dict) -> Member:
    return Member(**{**w, "addresses": tuple(w["addresses"])})


class FrameError(ValueError):
    pass


def encode(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class Framer:
    """Bytes in, whole messages out."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(buf)
            if size > self.max_frame:
                raise FrameError(f"frame of {size} bytes (over {self.max_frame})")
            end = HEADER.size + size
            if len(buf) < end:
                break
            try:
                msg = msgpack.unpackb(bytes(buf[HEADER.size:end]), raw=False, strict_map_key=False)
            except (ValueError, msgpack.UnpackException) as e:
                raise FrameError(f"undecodable frame: {e}") from None
            del buf[:end]
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise FrameError("a frame that is not a message (a map with a type \"t\")")
            out.append(msg)
        return out


class Channel(asyncio.Protocol):
    """One end of a socket pair. A bad frame is logged and closes the channel (the
    other end is this program: a bad frame is a bug, not an attack)."""

    def __init__(self, on_message: Callable[[dict], None], on_lost: Callable[[], None]) -> None:
        self.on_message, self.on_lost = on_message, on_lost
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, on_message, on_lost) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_unix_connection(lambda: cls(on_message, on_lost), sock=sock)
        return channel

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except FrameError as e:
            log.error("IPC channel closed: %s", e)
            self.close()
            return
        for msg in messages:
            try:
                self.on_message(msg)
            except Exception:   # (a bug of one message's handler: the channel goes on)
                log.exception("IPC message %r failed", msg.get("t"))

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.closed = True
            self.on_lost()

    def send(self, msg: dict) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(encode(msg))

    def unsent(self) -> int:
        """Bytes written and not yet taken by the other end."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        """Closes this end (``on_lost`` is for the other end going away, not for this)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
