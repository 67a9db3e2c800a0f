"""Mesh frames: a 4-byte big-endian length, then a msgpack body ``[kind, payload]``.

Sans-IO: `FrameReader.feed(bytes)` returns whole frames and raises `FrameError`
(with a short reason used as a metric label) for anything a link must be closed
for: a length over the limit (checked before buffering the body), a body that is not
msgpack or not ``[known kind, payload]``, a first frame that is not a HELLO, a HELLO
that does not validate. msgpack is already a C codec: the frame cost is not where a
fast/ module would pay (bench/mesh.py measures the bus end to end).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from farts.clock import LOGICAL_MASK

VERSION = 1
HELLO, SWIM, BUS = 1, 2, 3
KINDS = frozenset((HELLO, SWIM, BUS))
_LEN = struct.Struct(">I")


class FrameError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def encode(kind: int, payload) -> bytes:
    body = msgpack.packb([kind, payload], use_bin_type=True)
    return _LEN.pack(len(body)) + body


@dataclass(frozen=True)
class Hello:
    """What a node says about itself when a link opens."""
    id: str
    region: str
    lat: float
    lon: float
    addresses: tuple[str, ...]   # public addresses clients are sent to
    mesh: str                    # "host:port" peers dial
    hlc: tuple[int, int]         # farts.clock HLC reading, unpacked: (ms, logical)
    incarnation: int
    version: int = VERSION

    def encode(self) -> bytes:
        return encode(HELLO, {"v": self.version, "id": self.id, "region": self.region, "lat": self.lat,
                              "lon": self.lon, "addresses": list(self.addresses), "mesh": self.mesh,
                              "hlc": list(self.hlc), "inc": self.incarnation})

    @classmethod
    def from_payload(cls, p) -> Hello:
        try:
            h = cls(id=p["id"], region=p["region"], lat=float(p["lat"]), lon=float(p["lon"]),
                    addresses=tuple(p["addresses"]), mesh=p["mesh"], hlc=(int(p["hlc"][0]), int(p["hlc"][1])),
                    incarnation=int(p["inc"]), version=int(p["v"]))
        except (TypeError, KeyError, ValueError, IndexError) as e:
            raise FrameError("bad_hello", repr(e)) from None
        if not (isinstance(h.id, str) and h.id and isinstance(h.mesh, str) and isinstance(h.region, str)
                and all(isinstance(a, str) for a in h.addresses)):
            raise FrameError("bad_hello", "field types")
        if not (0 <= h.hlc[0] and 0 <= h.hlc[1] <= LOGICAL_MASK):
            raise FrameError("bad_hello", "hlc")
        if h.version != VERSION:
            raise FrameError("version", f"peer speaks version {h.version}, we speak {VERSION}")
        return h

    def meta(self) -> dict:
        """The member metadata SWIM gossips for this node."""
        return {"region": self.region, "lat": self.lat, "lon": self.lon,
                "addresses": list(self.addresses), "mesh": self.mesh}


class FrameReader:
    """Bytes in, frames out; the first frame must be a HELLO."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max = max_frame_bytes
        self.buf = bytearray()
        self.hello_seen = False

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        buf = self.buf
        buf += data
        out, pos, end = [], 0, len(buf)
        try:
            while end - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if n > self.max:
                    raise FrameError("oversized", f"{n} bytes > max_frame_bytes {self.max}")
                if end - pos - 4 < n:
                    break
                body = bytes(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
                out.append(self._frame(body))
        finally:
            del buf[:pos]  # once per read, not per frame
        return out

    def _frame(self, body: bytes) -> tuple[int, object]:
        try:
            kind, payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise FrameError("garbage", repr(e)[:100]) from None
        if not isinstance(kind, int) or kind not in KINDS:
            raise FrameError("unknown_type", repr(kind)[:40])
        if not self.hello_seen:
            if kind != HELLO:
                raise FrameError("no_hello", f"first frame is of kind {kind}")
            self.hello_seen = True
            payload = Hello.from_payload(payload)
        elif kind == HELLO:
            raise FrameError("unexpected_hello")
        return kind, payload

