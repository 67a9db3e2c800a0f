"""A blob (bytes named by their SHA-256) pulled from one peer in chunks over the mesh: the
one chunked transfer that the GeoIP database (master/geoshare.py) and a release bundle
(release/peer.py) both travel by.

The holder announces the blob with its service's own offer message (what it is, its
SHA-256 and size). The receiver asks for it chunk by chunk (``Ask``: the SHA-256 and an
index), at most ``WINDOW`` chunks asked and not yet received: the mesh closes a link
whose queue passes ``mesh.queue_max_bytes``, so the receiver sets the pace. The holder
answers each ask with a ``Chunk`` read from where it keeps the blob (bytes in memory or
a file). With no chunk for ``STALL`` seconds the receiver asks the missing ones again,
``STALL_TRIES`` times, then gives up; once every chunk is in, the whole blob is checked
against its size and SHA-256. A service gives the two messages its own TYPE by
subclassing them.

``Pull`` is the receiver's side of one transfer, sans-IO (chunks and ``now`` in, indices
to ask out); ``Transfers`` carries pulls and the serving of asks on a PeerBus, a clock
and the thread pool.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farts.clock import Clock, Timer
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.transfer")

CHUNK = 256 * 1024        # bytes per Chunk (below the mesh's default 1 MiB frame)
WINDOW = 4                # chunks asked and not yet received, per transfer
STALL = 10.0              # seconds without a chunk before the missing ones are asked again
STALL_TRIES = 3           # asked again that many times, then the transfer fails


def _sha256_ok(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


@dataclass(frozen=True, slots=True)
class Blob:
    sha256: str
    size: int

    def chunks(self) -> int:
        return max(1, -(-self.size // CHUNK))

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        return index * CHUNK, min(CHUNK, self.size - index * CHUNK)


def offered(cls: type[PeerMessage], body: Any, max_size: int) -> Blob:
    """The blob an offer's body announces ("sha256" and "size" in an object), checked."""
    need(cls, isinstance(body, dict), "an object")
    need(cls, _sha256_ok(body.get("sha256")), '"sha256" (64 lower-case hex digits)')
    need(cls, type(body.get("size")) is int and 0 < body["size"] <= max_size, f'"size" (1..{max_size} bytes)')
    return Blob(body["sha256"], body["size"])


def _index_of(cls: type[PeerMessage], body: Any) -> tuple[str, int]:
    """(sha256, index) of an ask's or a chunk's body."""
    need(cls, isinstance(body, dict) and _sha256_ok(body.get("sha256")), '"sha256" (64 hex digits)')
    need(cls, type(body.get("index")) is int and body["index"] >= 0, '"index" (a chunk number)')
    return body["sha256"], body["index"]


@dataclass(frozen=True, slots=True)
class Ask(PeerMessage):
    """Chunk ``index`` of the blob ``sha256``, please (a subclass sets TYPE)."""
    sha256: str
    index: int

    def to_wire(self) -> dict:
        return {"sha256": self.sha256, "index": self.index}

    @classmethod
    def from_wire(cls, body: Any) -> Ask:
        return cls(*_index_of(cls, body))


@dataclass(frozen=True, slots=True)
class Chunk(PeerMessage):
    """Chunk ``index`` of the blob ``sha256`` (a subclass sets TYPE)."""
    sha256: str
    index: int
    data: bytes

    def to_wire(self) -> dict:
        return {"sha256": self.sha256, "index": self.index, "data": self.data}

    @classmethod
    def from_wire(cls, body: Any) -> Chunk:
        sha256, index = _index_of(cls, body)
        need(cls, isinstance(body.get("data"), bytes) and 0 < len(body["data"]) <= CHUNK,
             f'"data" (1..{CHUNK} bytes)')
        return cls(sha256, index, body["data"])


class Failed(Exception):
    """A transfer that cannot end well; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Pull:
    """The receiving side of one blob from one peer: which chunks to ask, which to ask
    again when none came, the whole blob once every chunk is in. Raises ``Failed``: an
    offer above ``max_size``, a chunk of the wrong length, the last stall, a whole blob
    that does not match its SHA-256."""

    def __init__(self, blob: Blob, origin: str, now: float, max_size: int) -> None:
        if not 0 < blob.size <= max_size:
            raise Failed("too_large", f"{blob.size} bytes offered, at most {max_size} taken")
        self.blob, self.origin = blob, origin
        self.parts: dict[int, bytes] = {}
        self.asked: set[int] = set()
        self.next = 0            # the first chunk never asked
        self.stalls = 0
        self.deadline = now + STALL

    def ask(self) -> list[int]:
        """The chunks to ask now (the window filled)."""
        out = []
        while len(self.asked) < WINDOW and self.next < self.blob.chunks():
            self.asked.add(self.next)
            out.append(self.next)
            self.next += 1
        return out

    def take(self, index: int, data: bytes, now: float) -> list[int]:
        """A chunk in (one not asked, or asked and in already, is ignored); the chunks to ask next."""
        if index not in self.asked:
            return []
        if len(data) != self.blob.span(index)[1]:
            raise Failed("chunk", f"chunk {index}: {len(data)} bytes, {self.blob.span(index)[1]} expected")
        self.asked.discard(index)
        self.parts[index] = data
        self.stalls, self.deadline = 0, now + STALL
        return self.ask()

    def complete(self) -> bool:
        return len(self.parts) == self.blob.chunks()

    def stalled(self, now: float) -> list[int]:
        """The deadline passed without a chunk: the missing chunks to ask again."""
        self.stalls += 1
        if self.stalls > STALL_TRIES:
            raise Failed("stalled", f"no chunk from {self.origin} for {STALL * self.stalls:g} s")
        self.deadline = now + STALL
        return sorted(self.asked)

    def result(self) -> bytes:
        """The whole blob, checked (blocking on a large one: run it in the thread pool)."""
        data = b"".join(self.parts[i] for i in range(self.blob.chunks()))
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.blob.sha256:
            raise Failed("digest", f"{len(data)} bytes of SHA-256 {digest}, not the {self.blob.sha256} offered")
        return data


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class Transfers:
    """Pulls of one kind of blob (its ``ask`` and ``chunk`` message classes) on a bus, one
    per key the service chooses, and the serving of peers' asks. ``find(sha256)``: where
    this node keeps a blob it offers (bytes, a file, or None); ``received(key, pull, data)``
    and ``failed(key, pull, error)``: how a pull ended; ``count(event)``: a metric
    ("served", and a Failed's reason); ``served(to, blob_sha256)``: a peer asked for a
    chunk and got it."""

    def __init__(self, bus: PeerBus, clock: Clock, ask: type[Ask], chunk: type[Chunk], *,
                 find: Callable[[str], bytes | Path | None],
                 received: Callable[[Hashable, Pull, bytes], Awaitable[None]],
                 failed: Callable[[Hashable, Pull, Failed], None] = lambda key, pull, error: None,
                 count: Callable[[str], None] = lambda event: None,
                 served: Callable[[str, str], None] = lambda to, sha256: None) -> None:
        self.bus, self.clock, self.ask_cls, self.chunk_cls = bus, clock, ask, chunk
        self.find, self.received, self.failed, self.count, self.served = find, received, failed, count, served
        self.pulls: dict[Hashable, tuple[Pull, Timer]] = {}
        self._unsubscribe = [bus.subscribe(ask, self._on_ask), bus.subscribe(chunk, self._on_chunk)]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for key in list(self.pulls):
            self.drop(key)

    # ---- receiving ----------------------------------------------------------------------

    def pulling(self, key: Hashable) -> Pull | None:
        entry = self.pulls.get(key)
        return entry[0] if entry is not None else None

    def pull(self, key: Hashable, blob: Blob, origin: str, max_size: int) -> Pull:
        """Starts pulling ``blob`` from ``origin`` under ``key`` (instead of any pull there);
        raises Failed (counted) when it is too large to take."""
        self.drop(key)
        try:
            pull = Pull(blob, origin, self.clock.monotonic(), max_size)
        except Failed as e:
            self.count(e.reason)
            raise
        self._send_asks(key, pull, pull.ask())
        return pull

    def drop(self, key: Hashable) -> None:
        entry = self.pulls.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def _send_asks(self, key: Hashable, pull: Pull, indices: list[int]) -> None:
        for index in indices:
            self.bus.send(pull.origin, self.ask_cls(pull.blob.sha256, index))
        entry = self.pulls.get(key)
        if entry is not None:
            entry[1].cancel()
        self.pulls[key] = (pull, self.clock.call_at(pull.deadline, self._stalled, key, pull))

    def _on_chunk(self, msg: Chunk, env: Envelope) -> None:
        for key, (pull, _) in list(self.pulls.items()):
            if pull.origin == env.origin and pull.blob.sha256 == msg.sha256:
                try:
                    asks = pull.take(msg.index, msg.data, self.clock.monotonic())
                except Failed as e:
                    self._fail(key, pull, e)
                    return
                if pull.complete():
                    self.drop(key)
                    asyncio.ensure_future(self._finish(key, pull))
                else:   # (the deadline moved, even with nothing more to ask)
                    self._send_asks(key, pull, asks)
                return

    def _stalled(self, key: Hashable, pull: Pull) -> None:
        if self.pulling(key) is not pull:
            return
        try:
            asks = pull.stalled(self.clock.monotonic())
        except Failed as e:
            self._fail(key, pull, e)
            return
        self._send_asks(key, pull, asks)

    def _fail(self, key: Hashable, pull: Pull, e: Failed) -> None:
        self.drop(key)
        self.count(e.reason)
        log.warning("transfer of %s from %s failed: %s", pull.blob.sha256, pull.origin, e)
        self.failed(key, pull, e)

    async def _finish(self, key: Hashable, pull: Pull) -> None:
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, pull.result)
        except Failed as e:
            self._fail(key, pull, e)
            return
        await self.received(key, pull, data)

    # ---- serving ------------------------------------------------------------------------

    def _on_ask(self, msg: Ask, env: Envelope) -> None:
        held = self.find(msg.sha256)
        if held is None:
            return   # (not ours, or no longer: the asker's stall timer gives up)
        asyncio.ensure_future(self._serve(held, msg, env.origin))

    async def _serve(self, held: bytes | Path, msg: Ask, to: str) -> None:
        offset = msg.index * CHUNK
        if isinstance(held, bytes):
            data = held[offset:offset + CHUNK]
        else:
            try:
                data = await asyncio.get_running_loop().run_in_executor(None, _read, held, offset, CHUNK)
            except OSError as e:
                log.error("cannot read chunk %d of %s for %s: %s", msg.index, held, to, e)
                return
        if data and self.bus.send(to, self.chunk_cls(msg.sha256, msg.index, data)):
            self.count("served")
            self.served(to, msg.sha256)
