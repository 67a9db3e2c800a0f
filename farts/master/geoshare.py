"""The GeoIP database the master published, on every node: kept under data_dir/geoip and
handed over the mesh in chunks a receiver pulls.

The master (``geoip.py``) installs a new database here and broadcasts a ``GeoOffer``
(its SHA-256, size, publication time, database type). A node whose database is older
pulls it from the node that offered it (farts/transfer.py: ``GeoAsk`` for one chunk,
``GeoChunk`` back, a window of them, asked again when they stall). Once every chunk is
in and the file matches the offer's SHA-256, it is written as ``<sha256>.mmdb``, handed to
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
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farts import transfer
from farts.clock import Clock
from farts.members import ALIVE, Member
from farts.metrics import Metrics
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.master.geoip")

MAX_SIZE = 1 << 31        # what an offer may announce
CURRENT = "current.json"


@dataclass(frozen=True, slots=True)
class Published:
    sha256: str           # of the .mmdb file
    size: int
    published: float      # the master's wall clock when it published
    database_type: str

    def blob(self) -> transfer.Blob:
        return transfer.Blob(self.sha256, self.size)


@dataclass(frozen=True, slots=True)
class GeoOffer(PeerMessage):
    TYPE = "master.geoip.offer"
    VERSION = 1
    database: Published

    def to_wire(self) -> dict:
        return asdict(self.database)

    @classmethod
    def from_wire(cls, body: Any) -> GeoOffer:
        blob = transfer.offered(cls, body, MAX_SIZE)
        need(cls, isinstance(body.get("published"), (int, float)), '"published" (a time)')
        kind = body.get("database_type")
        need(cls, isinstance(kind, str) and len(kind) <= 200, '"database_type" (a string)')
        return cls(Published(blob.sha256, blob.size, float(body["published"]), kind))


class GeoAsk(transfer.Ask):
    __slots__ = ()
    TYPE = "master.geoip.ask"


class GeoChunk(transfer.Chunk):
    __slots__ = ()
    TYPE = "master.geoip.chunk"


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


class GeoShare:
    """This node's published GeoIP database, and its transfers from and to peers.
    ``swap(path)``: installs a database file on this node (builds and swaps the DNS
    index; raises when it does not build), or None on a node without DNS."""

    def __init__(self, me: str, directory: Path, clock: Clock, metrics: Metrics,
                 swap: Callable[[str], Awaitable[Any]] | None) -> None:
        self.me, self.directory, self.clock, self.swap = me, directory, clock, swap
        self.current = _read_current(directory)
        self.bus: PeerBus | None = None
        self.transfers: transfer.Transfers | None = None
        self.wanted: Published | None = None     # the database pulled last (its transfer's key)
        self._unsubscribe: list[Callable[[], None]] = []
        self.events = metrics.counter(
            "farts_master_geoip_total", "GeoIP databases: installed here, refused (the database does not build), "
            "transfers failed (stalled, digest: not the SHA-256 offered, chunk: one of a wrong size, too_large), "
            "chunks served to peers", ("event",))
        metrics.gauge("farts_master_geoip_published", "Publication time (Unix) of the GeoIP database in use "
                      "(0: the configured one)", lambda: self.current.published if self.current else 0)

    def path(self, database: Published) -> Path:
        return self.directory / f"{database.sha256}.mmdb"

    @property
    def transfer(self) -> transfer.Pull | None:
        """The pull under way, if any."""
        if self.transfers is None or self.wanted is None:
            return None
        return self.transfers.pulling(self.wanted)

    # ---- on the bus ---------------------------------------------------------------------

    def attach(self, bus: PeerBus) -> GeoShare:
        self.bus = bus
        self.transfers = transfer.Transfers(bus, self.clock, GeoAsk, GeoChunk, find=self._find,
                                            received=self._received, count=lambda e: self.events.inc((e,)))
        self._unsubscribe = [self.transfers.stop, bus.subscribe(GeoOffer, self.on_offer),
                             bus.on_member_change(self.on_member)]
        return self

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def on_member(self, old: Member | None, new: Member) -> None:
        if (self.current is not None and self.bus is not None and new.id != self.me and new.state == ALIVE
                and (old is None or old.state != ALIVE)):
            self.bus.send(new.id, GeoOffer(self.current))

    def on_offer(self, msg: GeoOffer, env: Envelope) -> None:
        d, cur, pulling = msg.database, self.current, self.wanted if self.transfer is not None else None
        if cur is not None and (d.sha256 == cur.sha256 or d.published <= cur.published):
            return
        if pulling is not None and (pulling.sha256 == d.sha256 or pulling.published >= d.published):
            return
        if pulling is not None:
            self.transfers.drop(pulling)
        log.info("geoip: pulling the database published at %.0f (%s, %d bytes) from %s",
                 d.published, d.database_type, d.size, env.origin)
        self.wanted = d
        self.transfers.pull(d, d.blob(), env.origin, MAX_SIZE)

    def _find(self, sha256: str) -> Path | None:
        cur = self.current
        return self.path(cur) if cur is not None and cur.sha256 == sha256 else None

    async def _received(self, d: Published, pull: transfer.Pull, data: bytes) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._store, d, data)
            await self.install(d)
        except Exception as e:  # noqa: BLE001 - refused; the database in use stays
            log.error("geoip: the database from %s is refused: %s (keeping the one in use)", pull.origin, e)

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
