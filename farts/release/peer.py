"""A release bundle from the deploy's runner to a node, over the mesh (typed peer messages).

The runner cuts the bundle into ``BundleChunk`` messages of ``CHUNK`` bytes and keeps at
most ``WINDOW`` of them unacknowledged (the mesh's per-link queue stays small, and a slow
node slows only its own transfer); the node acknowledges each (``BundleAck``: the bytes it
holds, where the next chunk starts), and once it holds all of them checks the whole
bundle's SHA-256 and verifies it as any bundle (signature, hashes, platform, downgrade:
``ReleaseNode.stage``), then answers ``BundleVerdict``. A node installs nothing it did
not verify itself; the runner's word is never taken for it.

The transfer is a sans-IO pair (``Sending``, ``Receiving``: messages in, messages out);
``BundlePeer`` carries them on the bus and the thread pool.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farts.clock import Clock, Timer
from farts.members import SERVING
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.release")

CHUNK = 256 * 1024          # well under mesh.max_frame_bytes (1 MiB by default)
WINDOW = 4                  # chunks in flight to one node
MAX_BUNDLE = 1 << 30        # what a node accepts to hold (a bundle is a wheel or a few: tens of MB)
STALL = 60.0                # seconds without an answer from the node: the transfer failed


@dataclass(frozen=True, slots=True)
class BundleChunk(PeerMessage):
    TYPE = "release.chunk"
    VERSION = 1
    version: str
    offset: int
    total: int
    sha256: str             # of the whole bundle (hex)
    allow_downgrade: bool
    data: bytes

    def to_wire(self) -> dict:
        return {"version": self.version, "offset": self.offset, "total": self.total, "sha256": self.sha256,
                "allow_downgrade": self.allow_downgrade, "data": self.data}

    @classmethod
    def from_wire(cls, body: Any) -> BundleChunk:
        need(cls, isinstance(body, dict), "an object")
        need(cls, isinstance(body.get("version"), str) and 0 < len(body["version"]) <= 100, "version")
        need(cls, isinstance(body.get("total"), int) and 0 < body["total"] <= MAX_BUNDLE,
             f"total: 1 to {MAX_BUNDLE} bytes")
        need(cls, isinstance(body.get("offset"), int) and 0 <= body["offset"] < body["total"], "offset")
        need(cls, isinstance(body.get("sha256"), str) and len(body["sha256"]) == 64, "sha256")
        need(cls, isinstance(body.get("allow_downgrade"), bool), "allow_downgrade")
        data = body.get("data")
        need(cls, isinstance(data, bytes) and 0 < len(data) <= CHUNK
             and body["offset"] + len(data) <= body["total"], f"data: 1 to {CHUNK} bytes inside total")
        return cls(body["version"], body["offset"], body["total"], body["sha256"], body["allow_downgrade"], data)


@dataclass(frozen=True, slots=True)
class BundleAck(PeerMessage):
    TYPE = "release.ack"
    VERSION = 1
    version: str
    received: int           # the bytes the node holds: the next chunk starts there

    def to_wire(self) -> list:
        return [self.version, self.received]

    @classmethod
    def from_wire(cls, body: Any) -> BundleAck:
        need(cls, isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)
             and isinstance(body[1], int) and 0 <= body[1] <= MAX_BUNDLE, "[version, received]")
        return cls(body[0], body[1])


@dataclass(frozen=True, slots=True)
class BundleVerdict(PeerMessage):
    TYPE = "release.verdict"
    VERSION = 1
    version: str
    ok: bool
    reason: str             # why the node refused it ("" when ok)

    def to_wire(self) -> list:
        return [self.version, self.ok, self.reason]

    @classmethod
    def from_wire(cls, body: Any) -> BundleVerdict:
        need(cls, isinstance(body, list) and len(body) == 3 and isinstance(body[0], str)
             and isinstance(body[1], bool) and isinstance(body[2], str) and len(body[2]) <= 4096,
             "[version, ok, reason]")
        return cls(*body)


class Sending:
    """The runner's side of one transfer: acks in, chunks out."""

    def __init__(self, version: str, data: bytes, allow_downgrade: bool) -> None:
        self.version, self.data, self.allow_downgrade = version, data, allow_downgrade
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.next = 0       # the first byte not sent yet
        self.acked = 0

    def start(self) -> list[BundleChunk]:
        return self._fill()

    def ack(self, received: int) -> list[BundleChunk]:
        if not self.acked < received <= self.next:
            return []       # (a stale or impossible ack)
        self.acked = received
        return self._fill()

    def _fill(self) -> list[BundleChunk]:
        out = []
        while self.next < len(self.data) and self.next - self.acked < CHUNK * WINDOW:
            out.append(BundleChunk(self.version, self.next, len(self.data), self.sha256, self.allow_downgrade,
                                   self.data[self.next:self.next + CHUNK]))
            self.next += len(out[-1].data)
        return out


class Receiving:
    """A node's side of one transfer from one runner: chunks in, the bundle out once whole."""

    def __init__(self, first: BundleChunk) -> None:
        self.version, self.total, self.sha256 = first.version, first.total, first.sha256
        self.buf = bytearray()

    def same(self, c: BundleChunk) -> bool:
        return (c.version, c.total, c.sha256) == (self.version, self.total, self.sha256)

    def chunk(self, c: BundleChunk) -> bytes | None:
        """Takes the chunk if it is the next one (the link is in order: another is a
        duplicate, dropped); the whole bundle once it is complete and its SHA-256 matches."""
        if c.offset == len(self.buf):
            self.buf += c.data
        if len(self.buf) < self.total:
            return None
        data = bytes(self.buf)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError("the bundle received over the mesh does not match its SHA-256")
        return data


class BundlePeer:
    """Both sides on one node: ``send`` (the runner) and the receiving of chunks, verified
    with ``stage(data, allow_downgrade) -> version`` (blocking, run in the thread pool;
    raises ``bundle.Refused``)."""

    def __init__(self, me: str, bus: PeerBus, clock: Clock, stage: Callable[[bytes, bool], Any],
                 refused: type[Exception]) -> None:
        self.me, self.bus, self.clock, self.stage, self.refused = me, bus, clock, stage, refused
        self.incoming: dict[str, Receiving] = {}                # origin -> its transfer
        self.outgoing: dict[str, tuple[Sending, asyncio.Future, Timer | None]] = {}   # node -> ...
        bus.subscribe(BundleChunk, self._chunk)
        bus.subscribe(BundleAck, self._ack)
        bus.subscribe(BundleVerdict, self._verdict)

    # -- the runner ------------------------------------------------------------------------------
    def linked(self, node: str) -> bool:
        return node != self.me and any(m.id == node and m.state in SERVING for m in self.bus.members())

    async def send(self, node: str, version: str, data: bytes, allow_downgrade: bool) -> tuple[bool, str]:
        """The bundle to ``node``; (ok, why not) once the node has verified it (or not)."""
        self._end(node, (False, "superseded by a new transfer"))
        sending = Sending(version, data, allow_downgrade)
        done = asyncio.get_running_loop().create_future()
        self.outgoing[node] = (sending, done, None)
        self._out(node, sending.start())
        return await done

    def _out(self, node: str, chunks: list[BundleChunk]) -> None:
        sending, done, timer = self.outgoing[node]
        if timer is not None:
            timer.cancel()
        for c in chunks:
            if not self.bus.send(node, c):
                self._end(node, (False, f"no mesh link to {node} (or its queue is full)"))
                return
        self.outgoing[node] = (sending, done, self.clock.call_later(
            STALL, self._end, node, (False, f"no answer over the mesh from {node} for {STALL:g} s")))

    def _ack(self, msg: BundleAck, env: Envelope) -> None:
        out = self.outgoing.get(env.origin)
        if out is not None and out[0].version == msg.version:
            self._out(env.origin, out[0].ack(msg.received))

    def _verdict(self, msg: BundleVerdict, env: Envelope) -> None:
        out = self.outgoing.get(env.origin)
        if out is not None and out[0].version == msg.version:
            self._end(env.origin, (msg.ok, msg.reason))

    def _end(self, node: str, result: tuple[bool, str]) -> None:
        out = self.outgoing.pop(node, None)
        if out is None:
            return
        if out[2] is not None:
            out[2].cancel()
        if not out[1].done():
            out[1].set_result(result)

    # -- a node ----------------------------------------------------------------------------------
    def _chunk(self, c: BundleChunk, env: Envelope) -> None:
        r = self.incoming.get(env.origin)
        if r is None or not r.same(c) or c.offset == 0:
            r = self.incoming[env.origin] = Receiving(c)
        try:
            data = r.chunk(c)
        except ValueError as e:
            del self.incoming[env.origin]
            log.warning("release %s from %s: %s", c.version, env.origin, e)
            self.bus.send(env.origin, BundleVerdict(c.version, False, str(e)))
            return
        self.bus.send(env.origin, BundleAck(c.version, len(r.buf)))
        if data is not None:
            del self.incoming[env.origin]
            log.info("release %s: received over the mesh from %s (%d bytes); verifying it", c.version,
                     env.origin, len(data))
            asyncio.ensure_future(self._verify(env.origin, c.version, data, c.allow_downgrade))

    async def _verify(self, origin: str, version: str, data: bytes, allow_downgrade: bool) -> None:
        ok, reason = True, ""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.stage, data, allow_downgrade)
        except self.refused as e:      # (stage logged and counted it)
            ok, reason = False, str(e)
        except OSError as e:
            log.warning("release %s from %s: cannot stage it: %s", version, origin, e)
            ok, reason = False, f"cannot stage it: {e}"
        self.bus.send(origin, BundleVerdict(version, ok, reason[:4096]))

    def stop(self) -> None:
        for node in list(self.outgoing):
            self._end(node, (False, "this node stops"))
