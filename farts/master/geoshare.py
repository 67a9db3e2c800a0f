"""The GeoIP database the master published, on every node: kept under data_dir/geoip and
handed over the mesh in chunks a receiver pulls.

The master (``geoip.py``) installs a new database here and broadcasts a ``GeoOffer``
(its SHA-256, size, publication time, database type). A node whose database is older
pulls it from the node that offered it: ``GeoAsk`` for one chunk, ``GeoChunk`` back,
at most WINDOW chunks asked at a time (the mesh closes a link whose queue passes
``mesh.queue_max_bytes``, so the receiver sets the pace). Once every chunk is in, the
file is checked against the offer's SHA-256, written as ``<sha256>.mmdb``, handed to
``swap`` (node.py: the DNS service builds its index from it and swaps it in, or
refuses it and keeps the old one) and recorded in ``current.json``, which the DNS
service reads at the next start. Every node that holds a database offers it to a
member that comes alive, so a node that was away when it was published gets it then.

A newer publication wins (``published``, the master's wall clock at publication: one
master at a time publishes, a week apart); a stalled transfer is asked again a few
times, then dropped until the next offer.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farts.clock import Clock, Timer
from farts.members import ALIVE, Member
from farts.metrics import Metrics
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.master.geoip")

CHUNK = 256 * 1024        # bytes per GeoChunk (below the mesh's default 1 MiB frame)
WINDOW = 4                # chunks asked and not yet received, per transfer
STALL = 10.0              # seconds without a chunk before the missing ones are asked again
STALL_TRIES = 3
MAX_SIZE = 1 << 31        # what an offer may announce
CURRENT = "current.json"


def _sha_ok(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


@dataclass(frozen=True, slots=True)
class Published:
    sha256: str           # of the .mmdb file
    size: int
    published: float      # the master's wall clock when it published
    database_type: str

    def chunks(self) -> int:
        return max(1, -(-self.size // CHUNK))


@dataclass(frozen=True, slots=True)
class GeoOffer(PeerMessage):
    TYPE = "master.geoip.offer"
    VERSION = 1
    database: Published

    def to_wire(self) -> dict:
        return asdict(self.database)

    @classmethod
    def from_wire(cls, body: Any) -> GeoOffer:
        need(cls, isinstance(body, dict), "an object")
        need(cls, _sha_ok(body.get("sha256")), '"sha256" (64 lower-case hex digits)')
        size = body.get("size")
        need(cls, type(size) is int and 0 < size <= MAX_SIZE, f'"size" (1..{MAX_SIZE})')
        need(cls, isinstance(body.get("published"), (int, float)), '"published" (a time)')
        kind = body.get("database_type")
        need(cls, isinstance(kind, str) and len(kind) <= 200, '"database_type" (a string)')
        return cls(Published(body["sha256"], size, float(body["published"]), kind))


def _chunk_of(cls: type[PeerMessage], body: Any) -> tuple[str, int]:
    """(sha256, index) of an ask's or a chunk's body."""
    need(cls, isinstance(body, dict) and _sha_ok(body.get("sha256")), '"sha256" (64 hex digits)')
    need(cls, type(body.get("index")) is int and body["index"] >= 0, '"index" (a chunk number)')
    return body["sha256"], body["index"]


@dataclass(frozen=True, slots=True)
class GeoAsk(PeerMessage):
    TYPE = "master.geoip.ask"
    VERSION = 1
    sha256: str
    index: int

    def to_wire(self) -> dict:
        return {"sha256": self.sha256, "index": self.index}

    @classmethod
    def from_wire(cls, body: Any) -> GeoAsk:
        return cls(*_chunk_of(cls, body))


@dataclass(frozen=True, slots=True)
class GeoChunk(PeerMessage):
    TYPE = "master.geoip.chunk"
    VERSION = 1
    sha256: str
    index: int
    data: bytes

    def to_wire(self) -> dict:
        return {"sha256": self.sha256, "index": self.index, "data": self.data}

    @classmethod
    def from_wire(cls, body: Any) -> GeoChunk:
        sha256, index = _chunk_of(cls, body)
        need(cls, isinstance(body.get("data"), bytes) and 0 < len(body["data"]) <= CHUNK,
             f'"data" (1..{CHUNK} bytes)')
        return cls(sha256, index, body["data"])


def published_database(directory: Path) -> str | None:
    """The path of the database published here last (current.json), if it is there."""
    current = _read_current(directory)
    path = directory / f"{current.sha256}.mmdb" if current else None
    return str(path) if path is not None and path.exists() else None


def _read_current(directory: Path) -> Published | None:
    try:
        return Published(**json.loads((directory / CURRENT).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.error("geoip: %s: unreadable (%s): as if nothing was published", directory / CURRENT, e)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Transfer:
    """One database being pulled from one node."""

    def __init__(self, database: Published, origin: str) -> None:
        self.database, self.origin = database, origin
        self.parts: dict[int, bytes] = {}
        self.asked: set[int] = set()
        self.next = 0            # the first chunk never asked
        self.stalls = 0
        self.timer: Timer | None = None


class GeoShare:
    """This node's published GeoIP database, and its transfers from and to peers.
    ``swap(path)``: installs a database file on this node (builds and swaps the DNS
    index; raises when it does not build), or None on a node without DNS."""

    def __init__(self, me: str, directory: Path, clock: Clock, metrics: Metrics,
                 swap: Callable[[str], Awaitable[Any]] | None) -> None:
        self.me, self.directory, self.clock, self.swap = me, directory, clock, swap
        self.current = _read_current(directory)
        self.bus: PeerBus | None = None
        self.transfer: _Transfer | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.events = metrics.counter(
            "farts_master_geoip_total", "GeoIP databases: installed here, refused (bad checksum, bad database), "
            "transfers stalled, chunks served to peers", ("event",))
        metrics.gauge("farts_master_geoip_published", "Publication time (Unix) of the GeoIP database in use "
                      "(0: the configured one)", lambda: self.current.published if self.current else 0)

    def path(self, database: Published) -> Path:
        return self.directory / f"{database.sha256}.mmdb"

    # ---- on the bus ---------------------------------------------------------------------

    def attach(self, bus: PeerBus) -> GeoShare:
        self.bus = bus
        self._unsubscribe = [bus.subscribe(GeoOffer, self.on_offer), bus.subscribe(GeoAsk, self.on_ask),
                             bus.subscribe(GeoChunk, self.on_chunk), bus.on_member_change(self.on_member)]
        return self

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._drop()

    def on_member(self, old: Member | None, new: Member) -> None:
        if (self.current is not None and self.bus is not None and new.id != self.me and new.state == ALIVE
                and (old is None or old.state != ALIVE)):
            self.bus.send(new.id, GeoOffer(self.current))

    def on_offer(self, msg: GeoOffer, env: Envelope) -> None:
        d, cur, t = msg.database, self.current, self.transfer
        if cur is not None and (d.sha256 == cur.sha256 or d.published <= cur.published):
            return
        if t is not None and (t.database.sha256 == d.sha256 or t.database.published >= d.published):
            return
        self._drop()
        log.info("geoip: pulling the database published at %.0f (%s, %d bytes) from %s",
                 d.published, d.database_type, d.size, env.origin)
        self.transfer = _Transfer(d, env.origin)
        self._ask_more()

    def on_ask(self, msg: GeoAsk, env: Envelope) -> None:
        cur = self.current
        if cur is None or msg.sha256 != cur.sha256 or msg.index >= cur.chunks():
            return   # (not ours, or no longer: the asker's stall timer gives up)
        asyncio.ensure_future(self._serve(cur, msg.index, env.origin))

    async def _serve(self, database: Published, index: int, to: str) -> None:
        def read() -> bytes:
            with open(self.path(database), "rb") as f:
                f.seek(index * CHUNK)
                return f.read(CHUNK)
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, read)
        except OSError as e:
            log.error("geoip: cannot read chunk %d of %s for %s: %s", index, database.sha256, to, e)
            return
        if data and self.bus is not None:
            self.bus.send(to, GeoChunk(database.sha256, index, data))
            self.events.inc(("served",))

    def on_chunk(self, msg: GeoChunk, env: Envelope) -> None:
        t = self.transfer
        if t is None or msg.sha256 != t.database.sha256 or msg.index not in t.asked:
            return
        t.asked.discard(msg.index)
        t.parts[msg.index] = msg.data
        t.stalls = 0
        if len(t.parts) == t.database.chunks():
            self._drop()
            asyncio.ensure_future(self._received(t))
        else:
            self._ask_more()

    def _ask_more(self) -> None:
        t = self.transfer
        while len(t.asked) < WINDOW and t.next < t.database.chunks():
            self._ask(t, t.next)
            t.next += 1
        if t.timer is not None:
            t.timer.cancel()
        t.timer = self.clock.call_later(STALL, self._stalled, t)

    def _ask(self, t: _Transfer, index: int) -> None:
        t.asked.add(index)
        if self.bus is not None:
            self.bus.send(t.origin, GeoAsk(t.database.sha256, index))

    def _stalled(self, t: _Transfer) -> None:
        if self.transfer is not t:
            return
        t.stalls += 1
        if t.stalls > STALL_TRIES:
            self.events.inc(("stalled",))
            log.warning("geoip: the transfer from %s stalled: dropped until the next offer", t.origin)
            self._drop()
            return
        for index in sorted(t.asked):
            self._ask(t, index)
        t.timer = self.clock.call_later(STALL, self._stalled, t)

    def _drop(self) -> None:
        t, self.transfer = self.transfer, None
        if t is not None and t.timer is not None:
            t.timer.cancel()

    async def _received(self, t: _Transfer) -> None:
        d = t.database
        data = b"".join(t.parts[i] for i in range(d.chunks()))
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
        if len(data) != d.size or digest != d.sha256:
            self.events.inc(("refused",))
            log.error("geoip: the database from %s does not match its offer (%d bytes, sha256 %s): refused",
                      t.origin, len(data), digest)
            return
        try:
            await loop.run_in_executor(None, self._store, d, data)
            await self.install(d)
        except Exception as e:  # noqa: BLE001 - refused; the database in use stays
            log.error("geoip: the database from %s is refused: %s (keeping the one in use)", t.origin, e)

    def _store(self, database: Published, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path(database), data)

    # ---- installing ---------------------------------------------------------------------

    async def install(self, database: Published, offer: bool = False) -> None:
        """Puts a database stored at ``path(database)`` in use here (swap), records it as
        current, drops the older files; ``offer``: then offers it to every peer (the
        master publishing). Raises, keeping the database in use, when swap refuses it."""
        if self.swap is not None:
            try:
                await self.swap(str(self.path(database)))
            except Exception:
                self.events.inc(("refused",))
                await asyncio.get_running_loop().run_in_executor(None, self._forget, database)
                raise
        await asyncio.get_running_loop().run_in_executor(None, self._record, database)
        self.current = database
        self.events.inc(("installed",))
        log.warning("geoip: now using the database published at %.0f (%s, sha256 %s)",
                    database.published, database.database_type, database.sha256)
        if offer and self.bus is not None:
            self.bus.broadcast(GeoOffer(database))

    def _forget(self, database: Published) -> None:
        self.path(database).unlink(missing_ok=True)

    def _record(self, database: Published) -> None:
        _write_atomically(self.directory / CURRENT, json.dumps(asdict(database)).encode())
        for old in self.directory.glob("*.mmdb"):
            if old.name != self.path(database).name:
                old.unlink(missing_ok=True)
