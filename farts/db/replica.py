"""Active-active replication of the database: the protocol between nodes, sans-IO.

Every write on a node is an oplog record ``(origin, seq, hlc, ns, _id, op)`` (``op`` is a
replicated operation of ``farts.db.merge``). ``Replica`` decides what to ship to whom and
what to apply; the merge rules decide what applying means. It reads no clock and touches
no socket: each call takes ``now`` (monotonic seconds) and returns the messages to send
as ``[(node id or None for every peer, message)]``; ``ReplicaPeer`` runs it on a
``PeerBus`` and the node's clock. Storage is behind ``ReplicaStore`` (``MemoryStore``
here, for tests; the LMDB store implements the same calls).

The protocol
------------
- **Shipping**: ``flush`` reads this node's records committed since the last flush from
  the store and broadcasts them in ``Records`` batches (at most ``BATCH`` records,
  ``BATCH_BYTES`` bytes); ``tick`` flushes, and ``ReplicaPeer.committed_locally`` makes
  a flush happen at the end of the loop iteration (one batch for every write in it), or
  half ``FLUSH_INTERVAL`` after the last flush (all of it if that carried several commits).
- **Applying, exactly once**: a node applies an origin's records in sequence order; its
  *version vector* (origin -> highest contiguous seq applied) says what it has. A record
  at or below the vector is a duplicate and dropped; one after a gap waits in a bounded
  buffer (``MAX_BUFFERED`` past the vector) until the gap is filled. What becomes contiguous is handed to the store,
  ``STORE_CHUNK`` records a call (one transaction with the applied positions), at most
  ``STORE_QUEUE`` calls waiting for it: the store has the next chunk while it commits one,
  and each commit is acknowledged, so a sender catching a peer up refills its window.
- **Acks, vectors, catch-up**: a node answers a batch that applied something with its
  ``Status`` (its vector, HLC, frontier, stable time) and sends it to every peer every
  ``status_interval`` and when a peer comes up. A ``Status`` is the per-peer ack, and
  the catch-up request: the receiver ships, from its retained oplog, the records of
  every origin the peer lacks (not only its own: anti-entropy heals partial partitions),
  and answers with its own ``Status`` when the peer has records it lacks. At most
  ``WINDOW`` records of an origin are in flight past what the peer acknowledged; they
  are shipped again only after ``RESEND`` seconds in which the peer made no progress.
- **Snapshot**: when a peer lacks records this node no longer retains, it streams a
  snapshot (``SnapshotChunk``: the replicated documents, merge states included, then the
  vector they reflect); the member with the smallest id not known dead does, the others
  only if the peer is still behind ``SNAPSHOT_WAIT`` later. The peer installs it in one
  go and re-applies the records it has that the snapshot lacks (its own unshipped
  writes among them).
- **Stability and compaction**: each node reports its *frontier* (an HLC below which it
  has applied every operation of every origin: its own HLC bounds its own future writes,
  a peer's ``Status`` HLC bounds that peer's once its records up to there are applied)
  and its *stable time* (the least frontier of every member). A node compacts at the
  least stable time its members reported, each counted once this node has applied that
  member's records up to the report: below it nothing can arrive any more, and every
  operation still to arrive was written by a node that had seen everything below it
  (what ``merge.compact`` needs for ``$pull``'s observed-remove).
- **Members** are every node of the deployment that has not left: a dead node holds
  compaction back until it returns or is removed (so its writes, when it comes back,
  still merge in order), or until it has been dead for ``forget_dead_after`` (by
  default the oplog's ``retain_seconds``): then metadata and the oplog no longer wait
  for it, and when it returns it is behind the retained oplog and gets a snapshot (what
  it wrote and never shipped is re-applied on top, counted as ``late``).
- **Retention**: a record is dropped once every member has it; records of other origins
  also once there are more than ``retain_records`` of an origin or they are older than
  ``retain_seconds`` (a node that is further behind gets a snapshot). A node's own
  records are kept until every member has them (they exist nowhere else), a member dead
  for longer than ``forget_dead_after`` excepted. A member that left is still waited for
  ``LEFT_GRACE`` seconds: a restart (farts/release/handover.py) leaves the mesh and joins
  again a moment later, and should catch up from the oplog, not need a snapshot.

On a node: ``farts/db/replication.py`` (built through the db row of ``farts/node.py``
when the mesh is enabled) runs this on the mesh bus with ``Store(replicated=True)``, calls
``committed_locally()`` after local commits, turns ``stats``/``lag_ms()`` into metrics, and
serves causal reads (``frontier``), ``w: "majority"`` (``acked``) and read preferences.
A (re)started node takes writes once every alive peer's ``Status`` came in
(``exchanged``: its clock is then past theirs, so it cannot write below what they
compacted) or after ``farts.db.replication.STARTUP_WAIT``. Catalog commands are records
too (``merge.CATALOG_TABLE``, applied by the store).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import bson

from farts.clock import HLC, Clock, pack, unpack
from farts.db import merge
from farts.db.keys import encode as id_key
from farts.members import ALIVE, DEAD, LEFT, Member
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.db.replica")

BATCH = 512                # records per Records message
BATCH_BYTES = 256 * 1024   # and bytes (mesh frames are at most 1 MiB by default)
SNAPSHOT_DOCS = 256        # documents per snapshot chunk
SNAPSHOT_CHUNKS_PER_TICK = 16
# Out-of-order records held per origin: those at most this far past what is applied or in
# line to be (the ones that fill a gap always fit; later ones come again by catch-up).
MAX_BUFFERED = 10_000
RELAY_AFTER = 2           # status intervals without progress before others' records are relayed
RESEND = 2.0               # seconds without progress before shipped-but-unacknowledged records go again
SNAPSHOT_HOLD = 60.0       # seconds a snapshot being received keeps this node's own records
LEFT_GRACE = 120.0          # seconds a member that left still holds this node's own records
SNAPSHOT_WAIT = 3 * RESEND  # seconds the other members leave a snapshot to the designated one
# Records of an origin in flight to a peer catching up, past what it acknowledged: all of
# it goes out on each Status, so the peer parses the next frames while it applies the
# last ones (a round trip per few thousand records would leave both waiting).
WINDOW = 8192
STORE_CHUNK = 1024         # records handed to the store in one call (one nested transaction)
STORE_QUEUE = 2            # such calls waiting for the store at once: it has the next while it commits
# Local writes are flushed at the end of the loop iteration that committed them, unless the
# last flush was less than half this ago (this, if it carried several commits): then when
# it is that old. Commits further apart (a steady rate up to ~200 a second) ship at once;
# under load every peer gets at most 1 / FLUSH_INTERVAL Records frames a second (each one
# an encryption per link, a commit there and a Status back from each peer). 20 ms was
# tried: a fifth fewer frames at x16, but the lag at 1,000 writes/s doubled (p50 13 -> 22
# ms, p99 50 -> 120 ms on a loaded machine).
FLUSH_INTERVAL = 0.01

Out = list[tuple[str | None, PeerMessage]]


_UNREAD = object()   # a Record's _id not decoded from its body yet


class Record:
    """One oplog record. ``op`` (and ``id`` when not given) is decoded from ``body`` (BSON
    {id, op}, what travels and what the oplog keeps) only when asked for: records shipped
    on are never decoded."""
    __slots__ = ("origin", "seq", "hlc", "ns", "_id", "_op", "body")

    def __init__(self, origin: str, seq: int, hlc: int, ns: str, id: Any = _UNREAD,  # noqa: A002
                 op: dict | None = None, body: bytes | None = None) -> None:
        self.origin, self.seq, self.hlc, self.ns, self._id = origin, seq, hlc, ns, id
        self._op, self.body = op, body

    def _decode(self) -> None:
        d = bson.decode(self.body)
        self._id, self._op = d["id"], d["op"]

    @property
    def id(self) -> Any:
        if self._id is _UNREAD:
            self._decode()
        return self._id

    @property
    def op(self) -> dict:
        if self._op is None:
            self._decode()
        return self._op

    def __repr__(self) -> str:
        return f"Record({self.origin!r}, {self.seq}, {self.hlc}, {self.ns!r}, {self.id!r}, {self.op!r})"

    @property
    def stamp(self) -> merge.Stamp:
        return merge.Stamp(self.hlc, self.origin, self.seq)

    def encoded(self) -> bytes:
        """BSON {id, op}: encoded once, on the origin."""
        if self.body is None:
            self.body = bson.encode({"id": self.id, "op": self._op})
        return self.body

    def to_wire(self) -> list:
        return [self.origin, self.seq, self.hlc, self.ns, self.encoded()]

    @staticmethod
    def from_wire(item: Any) -> Record:
        """Raises ValueError on anything but a well-formed record."""
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str) and item[0]
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item[1:3])
                and isinstance(item[3], str) and isinstance(item[4], bytes)):
            raise ValueError("[origin, seq > 0, hlc > 0, ns, BSON {id, op}]")
        try:
            body = bson.decode(item[4])
        except Exception as e:   # noqa: BLE001 - any decoding error is a bad record
            raise ValueError(f"bad BSON: {e}") from None
        if set(body) != {"id", "op"}:
            raise ValueError("BSON {id, op}")
        merge.check_op(body["op"])
        return Record(item[0], item[1], item[2], item[3], body["id"], body["op"], item[4])


def _parse_vv(cls, body: Any) -> dict[str, int]:
    need(cls, isinstance(body, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in body.items()), "a version vector origin -> seq")
    return body


def _natural(cls, value: Any, what: str) -> int:
    need(cls, isinstance(value, int) and not isinstance(value, bool) and value >= 0, what)
    return value


@dataclass(frozen=True, slots=True)
class Records(PeerMessage):
    """Oplog records, in sequence order per origin."""
    TYPE = "db.records"
    VERSION = 1
    records: tuple

    def to_wire(self) -> list:
        return [r.to_wire() for r in self.records]

    @classmethod
    def parse(cls, body: Any) -> tuple:
        need(cls, isinstance(body, list), "a list of records")
        try:
            return tuple(Record.from_wire(item) for item in body)
        except ValueError as e:
            raise cls.bad("record", str(e)) from None


@dataclass(frozen=True, slots=True)
class Status(PeerMessage):
    """What the sender has applied, and what it knows about time: the ack, the catch-up
    request and the stability report in one."""
    TYPE = "db.status"
    VERSION = 1
    vv: dict
    hlc: int
    frontier: int
    stable: int

    def to_wire(self) -> dict:
        return {"vv": self.vv, "hlc": self.hlc, "frontier": self.frontier, "stable": self.stable}

    @classmethod
    def from_wire(cls, body: Any) -> Status:
        need(cls, isinstance(body, dict) and set(body) == {"vv", "hlc", "frontier", "stable"},
             "an object {vv, hlc, frontier, stable}")
        return cls(_parse_vv(cls, body["vv"]), *(_natural(cls, body[k], k) for k in ("hlc", "frontier", "stable")))


@dataclass(frozen=True, slots=True)
class SnapshotChunk(PeerMessage):
    """Part ``index`` of snapshot ``sid``: documents as [ns, BSON {id, s: merge state}]; the
    last one (``vv`` set) carries the version vector the snapshot reflects."""
    TYPE = "db.snapshot"
    VERSION = 1
    sid: int
    index: int
    docs: tuple
    vv: dict | None = None

    def to_wire(self) -> dict:
        return {"sid": self.sid, "index": self.index, "docs": list(self.docs), "vv": self.vv}

    @classmethod
    def from_wire(cls, body: Any) -> SnapshotChunk:
        need(cls, isinstance(body, dict) and set(body) == {"sid", "index", "docs", "vv"},
             "an object {sid, index, docs, vv}")
        need(cls, isinstance(body["docs"], list) and all(
            isinstance(d, list) and len(d) == 2 and isinstance(d[0], str) and isinstance(d[1], bytes)
            for d in body["docs"]), "docs: [ns, BSON]")
        vv = None if body["vv"] is None else _parse_vv(cls, body["vv"])
        return cls(_natural(cls, body["sid"], "sid"), _natural(cls, body["index"], "index"),
                   tuple(body["docs"]), vv)


MESSAGES = (Records, Status, SnapshotChunk)


class StaleSnapshot(Exception):
    """A peer's snapshot older than this node's own retained oplog: refused by
    ``install_snapshot`` (installed, this node's writes between would be lost)."""


class ReplicaStore(Protocol):
    """What replication needs of the node's store."""

    def covered(self) -> int:
        """An HLC at or below which every write of this node is committed and above which
        every later one will be (it may move the clock on)."""

    def observe(self, hlc: int) -> None:
        """Moves this node's clock past a peer's timestamp."""

    def set_alone(self, alone: bool) -> concurrent.futures.Future | None:
        """Whether no other node is a member or has heard from this one: while alone, this
        node's writes need no metadata, as every write another node makes once it has this
        node's clock comes later. On the way out, a future that resolves once every write
        stamped while alone is committed (None when there is nothing to wait for)."""

    def applied(self) -> dict[str, tuple[int, int]]:
        """origin -> (highest contiguous seq applied, that record's HLC)."""

    def apply_remote(self, records: list[Record]) -> list | concurrent.futures.Future:
        """Applies records (each the next of its origin), each with its applied position;
        returns (or resolves to) each one's merge outcome, or the exception that undid it."""

    def records_after(self, origin: str, seq: int, limit: int) -> list[Record] | None:
        """Retained records of origin after seq (at most limit); None if seq + 1 is gone."""

    def retained(self, origin: str) -> int:
        """How many records of origin are retained."""

    def truncate(self, origin: str, upto: int) -> Any:
        """Drops the retained records of origin up to seq upto."""

    def first_retained(self, origin: str) -> int:
        """The seq of the oldest retained record of origin (0: none)."""

    def snapshot(self) -> tuple[dict[str, int], Iterator[tuple[str, Any, dict]]]:
        """A consistent view: the version vector and (ns, _id, merge state) of every document."""

    def install_snapshot(self, vv: dict[str, int], docs: list[tuple[str, Any, dict]]) -> Any:
        """Replaces every document with docs, then re-applies the retained records the
        snapshot lacks; the applied position follows."""

    def compact(self, stable: int) -> Any:
        """merge.compact of every document with operations at or below stable.

        The writes (apply_remote, install_snapshot, truncate, compact) may return a
        concurrent Future (the LMDB store's writer thread): the replica waits for the first
        two (``waiting``, ``committed``) and not for the others."""


@dataclass
class _Peer:
    report: Status | None = None
    covered: int = 0          # an HLC up to which every record of this origin is applied here
    stable: int = 0           # its stable time, counted once its records up to the report are here
    shipped: dict = field(default_factory=dict)    # origin -> (seq shipped up to, when)
    snapshot_done: float | None = None             # when the last snapshot to it finished
    stalled: dict = field(default_factory=dict)    # origin -> (its seq there, since when): relaying
    behind_since: float | None = None              # when it was found behind the retained oplog


@dataclass
class _Outgoing:
    sid: int
    docs: Iterator
    vv: dict
    index: int = 0


class Replica:
    def __init__(self, me: str, store: ReplicaStore, members: tuple[str, ...] = (), *,
                 status_interval: float = 1.0, retain_records: int = 100_000,
                 retain_seconds: float = 24 * 3600.0, housekeeping_interval: float = 0.0,
                 forget_dead_after: float | None = None) -> None:
        """``housekeeping_interval``: the least time between two compactions (and two
        retention passes): each is a write transaction of the store, over every document
        with metadata; 0 runs them on every tick that moves them. ``forget_dead_after``
        (default ``retain_seconds``): how long a member may be dead before it stops holding
        compaction and this node's oplog back (it gets a snapshot when it returns)."""
        self.me, self.store = me, store
        self.status_interval = status_interval
        self.retain_records, self.retain_seconds = retain_records, retain_seconds
        self.members: set[str] = {me, *members}
        self.forget_dead_after = retain_seconds if forget_dead_after is None else forget_dead_after
        self._dead_since: dict[str, float] = {}   # member -> when it was first seen dead
        self._left_at: dict[str, float] = {}      # former member -> when it left
        self.forgotten: set[str] = set()          # dead for longer than forget_dead_after
        self.peers: dict[str, _Peer] = {}
        self._own_shipped = store.applied().get(me, (0, 0))[0]   # own records broadcast up to
        # (what a restart did not ship reaches the peers by catch-up)
        self._buffer: dict[str, dict[int, Record]] = {}   # origin -> seq -> record after a gap
        self._last_status = float("-inf")
        self._asked: dict[str, float] = {}          # peer -> when we last asked it to catch us up
        self._snapshots_out: dict[str, _Outgoing] = {}
        self._snapshot_in: dict | None = None       # {sender, sid, index, docs}
        self._sids = itertools.count(1)
        self._inflight: dict[str, int] = {}         # origin -> last seq handed to the store, not committed
        self._waiting: list = []                    # (future, {origin: seq} or None for a snapshot)
        self._installing = False
        self._ack_to: set[str] = set()
        self.compacted = 0
        self.housekeeping_interval = housekeeping_interval
        self._housekept = float("-inf")
        self.stats = {"shipped": 0, "applied": 0, "duplicates": 0, "late": 0, "buffered_dropped": 0,
                      "snapshots_sent": 0, "snapshots_installed": 0, "snapshot_docs": 0, "snapshot_bytes": 0,
                      "catchup_records": 0, "failed": 0, "replayed": 0, "dropped": 0}

    # ---- membership --------------------------------------------------------------

    def set_members(self, ids, dead=(), now: float = 0.0) -> None:
        """Every node that counts for stability (the deployment's nodes that have not left);
        ``dead``: those of them the mesh declares dead (since ``now``, when first told)."""
        members = {self.me, *ids}
        for n in self.members - members:
            self._left_at[n] = now
        for n in members:
            self._left_at.pop(n, None)
        self.members = members
        self._dead_since = {n: self._dead_since.get(n, now) for n in dead if n in self.members and n != self.me}
        self.forgotten &= set(self._dead_since)

    def _forget_dead(self, now: float) -> None:
        """A member dead for longer than forget_dead_after stops counting for stability and
        retention: metadata and the oplog stay bounded while it is away."""
        for n, since in self._dead_since.items():
            if n not in self.forgotten and now - since >= self.forget_dead_after:
                self.forgotten.add(n)
                log.warning("db: %s has been dead for %.0f s: it no longer holds compaction and the oplog "
                            "back (it gets a snapshot when it returns)", n, now - since)

    def _counted(self) -> set[str]:
        """The other members whose progress compaction and retention wait for."""
        return self.members - self.forgotten - {self.me}

    def _peer(self, node_id: str) -> _Peer:
        p = self.peers.get(node_id)
        if p is None:
            p = self.peers[node_id] = _Peer()
        return p

    # ---- local writes ---------------------------------------------------------------

    def flush(self, now: float) -> Out:
        """Broadcasts this node's records committed since the last flush (with no other
        member, nothing: a member that comes gets them by catch-up, on its Status)."""
        out: Out = []
        if not self.members - {self.me}:
            self._own_shipped = self.store.applied().get(self.me, (0, 0))[0]
            return out
        records = self.store.records_after(self.me, self._own_shipped, BATCH * 8)
        if records is None:    # every peer had them (retention dropped them): go on after them
            self._own_shipped = max(self._own_shipped, self.store.first_retained(self.me) - 1)
            records = self.store.records_after(self.me, self._own_shipped, BATCH * 8) or []
        if records:
            self._own_shipped = records[-1].seq
        elif self._own_shipped > self.store.applied().get(self.me, (0, 0))[0]:
            self._own_shipped = self.store.applied().get(self.me, (0, 0))[0]   # a snapshot went back
        for batch in _batches(records):
            out.append((None, Records(tuple(batch))))
            self.stats["shipped"] += len(batch)
        if records:
            first, last = records[0].seq, records[-1].seq
            for node_id in self.members - {self.me}:
                peer = self._peer(node_id)
                theirs = peer.report.vv.get(self.me, 0) if peer.report is not None else 0
                prev = peer.shipped.get(self.me)
                # In flight to it only if they follow what it has or was sent: after a gap
                # (a restart's unshipped records, a lost batch) its catch-up on the next
                # Status fills the gap first. And "since" is the oldest shipment it has not
                # acknowledged: a flush on every tick must not keep RESEND from coming.
                if prev is not None and prev[0] >= first - 1:
                    peer.shipped[self.me] = (last, prev[1] if prev[0] > theirs else now)
                elif prev is None and theirs >= first - 1:
                    peer.shipped[self.me] = (last, now)
        return out

    # ---- what peers send -------------------------------------------------------------

    def receive(self, msg: PeerMessage, sender: str, now: float) -> Out:
        if isinstance(msg, Records):
            return self._on_records(msg.records, sender, now)
        if isinstance(msg, Status):
            return self._on_status(msg, sender, now)
        if isinstance(msg, SnapshotChunk):
            return self._on_chunk(msg, sender, now)
        return []

    def link_up(self, node_id: str, now: float) -> Out:
        """A peer is (again) reachable: exchange vectors. What was shipped to it before is
        taken as lost (shipped again on its vector, not after RESEND); what it lacked of
        third origins before is not held against them (they ship it now: no relay yet)."""
        peer = self._peer(node_id)
        peer.shipped.clear()
        peer.stalled.clear()
        return [(node_id, self.status())]

    def _have(self, origin: str, applied: dict) -> int:
        """The last seq of origin applied or handed to the store to apply."""
        return max(applied.get(origin, (0, 0))[0], self._inflight.get(origin, 0))

    def _on_records(self, records, sender: str, now: float) -> Out:
        applied = self.store.applied()
        heads: dict[str, int] = {}   # origin -> the last seq it has with the buffer's contiguous run
        for r in records:
            buf = self._buffer.setdefault(r.origin, {})
            head = heads.get(r.origin)
            if head is None:
                head = self._have(r.origin, applied)
                while head + 1 in buf:
                    head += 1
            if r.seq <= head or r.seq in buf:
                self.stats["duplicates"] += 1
            elif r.seq <= head + MAX_BUFFERED:
                buf[r.seq] = r
                while head + 1 in buf:
                    head += 1
            else:
                self.stats["buffered_dropped"] += 1
            heads[r.origin] = head
        n = self._drain()
        applied = self.store.applied()
        gap = any(buf for buf in self._buffer.values())
        out: Out = []
        if self._waiting:
            self._ack_to.add(sender)     # acknowledged once committed (``committed``)
        elif n:
            self._refresh(applied)
            out.append((sender, self.status()))
        elif gap and now - self._asked.get(sender, float("-inf")) >= self.status_interval:
            self._asked[sender] = now
            out.append((sender, self.status()))
        return out

    def _drain(self) -> int:
        """Applies what the buffer holds that is next in line, STORE_CHUNK records a call and
        at most STORE_QUEUE calls waiting for the store (a commit is progress the senders
        hear of, and a commit of a whole window would keep them waiting); returns how many
        (0 when the store commits later: ``committed`` goes on from there)."""
        applied_now = 0
        while not self._installing and len(self._waiting) < STORE_QUEUE:
            applied = self.store.applied()
            ready: list[Record] = []
            for origin, buf in self._buffer.items():
                seq = self._have(origin, applied)
                for s in [s for s in buf if s <= seq]:
                    del buf[s]
                while seq + 1 in buf and len(ready) < STORE_CHUNK:
                    seq += 1
                    ready.append(buf.pop(seq))
            if not ready:
                break
            result = self.store.apply_remote(ready)
            if isinstance(result, concurrent.futures.Future):
                upto = {r.origin: r.seq for r in ready}
                self._inflight.update(upto)
                self._waiting.append((result, upto))
                continue
            self._count(result)
            applied_now += len(ready)
        return applied_now

    def _count(self, outcomes) -> None:
        for outcome in outcomes:
            if outcome == "late":
                self.stats["late"] += 1
            elif outcome == "replayed":    # arrived out of HLC order: merged by the rules
                self.stats["replayed"] += 1
            elif outcome == "dropped":     # stamped below a drop of its collection: wiped
                self.stats["dropped"] += 1
            if isinstance(outcome, str):
                self.stats["applied"] += 1
            elif isinstance(outcome, Exception):
                self.stats["failed"] += 1

    @property
    def waiting(self) -> list[concurrent.futures.Future]:
        """The store's commits this replica waits for; call ``committed`` when one is done."""
        return [f for f, _ in self._waiting]

    def committed(self, now: float) -> Out:
        """Goes on after the store committed what it was handed: counts, acknowledges the
        senders, applies what became next in line."""
        while self._waiting and self._waiting[0][0].done():
            fut, upto = self._waiting.pop(0)
            try:
                result = fut.result()
            except StaleSnapshot as e:   # (the peer sends a newer one: this node is still behind)
                log.warning("db: a peer's snapshot refused: %s", e)
                result = None
            except Exception:   # noqa: BLE001 - the store failed the whole commit: asked again later
                log.exception("applying replicated records failed")
                result = None
            if upto is None:     # a snapshot's installation
                self._installing = False
                if fut.exception() is None:
                    self.stats["snapshots_installed"] += 1
                    log.info("db: a peer's snapshot installed")
            else:
                self._count(result or [])
                for origin, seq in upto.items():
                    if self._inflight.get(origin) == seq:
                        del self._inflight[origin]
        self._drain()
        if self._installing:
            return []
        # Every commit is acknowledged (the senders refill their windows); a sender is
        # forgotten once nothing of it is waiting any more.
        self._refresh(self.store.applied())
        ack = self._ack_to
        if not self._waiting:
            self._ack_to = set()
        return [(peer, self.status()) for peer in sorted(ack)]

    def _on_status(self, msg: Status, sender: str, now: float) -> Out:
        peer = self._peer(sender)
        before = peer.report.vv if peer.report is not None else {}
        peer.report = msg
        self.store.observe(msg.hlc)
        applied = self.store.applied()
        self._refresh(applied)
        out: Out = []
        behind = False
        for origin, (seq, _) in applied.items():
            if origin == self.me:
                seq = min(seq, self._own_shipped)   # the rest goes out with the next flush
            theirs = msg.vv.get(origin, 0)
            if theirs >= seq:
                continue
            if origin != self.me:
                # A third origin's records: that origin ships them itself. Relay only when
                # the peer has made no progress on them for RELAY_AFTER status intervals,
                # and at least RESEND (the origin cannot reach it, is dead, or a batch was
                # lost), so a peer that is behind, or busy applying, does not get every
                # record twice.
                since = peer.stalled.get(origin)
                if since is None or since[0] != theirs:
                    peer.stalled[origin] = (theirs, now)
                    continue
                if now - since[1] < max(RELAY_AFTER * self.status_interval, RESEND):
                    continue
            start = theirs
            shipped = peer.shipped.get(origin)
            if shipped and shipped[0] > theirs:
                if theirs > before.get(origin, 0):   # it is applying them: in flight, not lost
                    shipped = peer.shipped[origin] = (shipped[0], now)
                if now - shipped[1] < RESEND:
                    start = shipped[0]      # in flight: not again before RESEND without progress
            upto = min(seq, theirs + WINDOW)    # no more in flight than it can hold and apply
            if start >= upto:
                continue
            records = self.store.records_after(origin, start, upto - start)
            if records is None:
                behind = True
                break
            for batch in _batches(records):
                out.append((sender, Records(tuple(batch))))
            if records:
                peer.shipped[origin] = (records[-1].seq, now)
                self.stats["catchup_records"] += len(records)
        if behind:
            out = self._start_snapshot(sender, now)
        else:
            peer.behind_since = None
        if any(v > applied.get(o, (0, 0))[0] for o, v in msg.vv.items()) and \
                now - self._asked.get(sender, float("-inf")) >= self.status_interval / 2:
            self._asked[sender] = now
            out.append((sender, self.status()))
        return out

    # ---- snapshots -------------------------------------------------------------------

    def _start_snapshot(self, peer_id: str, now: float) -> Out:
        peer = self._peer(peer_id)
        if peer_id in self._snapshots_out or (
                peer.snapshot_done is not None and now - peer.snapshot_done < RESEND):
            return []
        if peer.behind_since is None:
            peer.behind_since = now
        # One member streams it (the smallest id not known dead), not every member that
        # finds it behind; the others do only if it is still behind after SNAPSHOT_WAIT.
        streamer = min(self.members - set(self._dead_since) - {peer_id})
        if streamer != self.me and now - peer.behind_since < SNAPSHOT_WAIT:
            return []
        vv, docs = self.store.snapshot()
        self._snapshots_out[peer_id] = _Outgoing(next(self._sids), docs, vv)
        self.stats["snapshots_sent"] += 1
        log.info("db: %s is behind the retained oplog: sending it a snapshot (%s)", peer_id, vv)
        return self._snapshot_chunks(now)

    def _snapshot_chunks(self, now: float) -> Out:
        out: Out = []
        for peer_id, s in list(self._snapshots_out.items()):
            for _ in range(SNAPSHOT_CHUNKS_PER_TICK):
                docs, size = [], 0
                for ns, _id, state in s.docs:
                    data = bson.encode({"id": _id, "s": state})
                    docs.append([ns, data])
                    size += len(data)
                    self.stats["snapshot_bytes"] += len(data)
                    if len(docs) >= SNAPSHOT_DOCS or size >= BATCH_BYTES:
                        break
                last = len(docs) < SNAPSHOT_DOCS and size < BATCH_BYTES
                out.append((peer_id, SnapshotChunk(s.sid, s.index, tuple(docs), s.vv if last else None)))
                self.stats["snapshot_docs"] += len(docs)
                s.index += 1
                if last:
                    del self._snapshots_out[peer_id]
                    self._peer(peer_id).snapshot_done = now
                    break
        return out

    def _on_chunk(self, msg: SnapshotChunk, sender: str, now: float) -> Out:
        cur = self._snapshot_in
        if msg.index == 0 and (cur is None or cur["sender"] == sender):
            cur = self._snapshot_in = {"sender": sender, "sid": msg.sid, "index": 0, "docs": [], "at": now}
        if cur is None or cur["sender"] != sender or cur["sid"] != msg.sid:
            return []
        if msg.index != cur["index"]:       # a chunk was lost: start over when asked again
            self._snapshot_in = None
            return [(sender, self.status())]
        cur["index"] += 1
        for ns, data in msg.docs:
            body = bson.decode(data)
            cur["docs"].append((ns, body["id"], body["s"]))
        if msg.vv is None:
            return []
        self._snapshot_in = None
        result = self.store.install_snapshot(msg.vv, cur["docs"])
        if isinstance(result, concurrent.futures.Future):
            self._installing = True
            self._waiting.append((result, None))
            self._ack_to.add(sender)
            return []
        self.stats["snapshots_installed"] += 1
        self._drain()
        self._refresh(self.store.applied())
        return [(sender, self.status())]

    # ---- time ------------------------------------------------------------------------

    def _refresh(self, applied: dict) -> None:
        """What the peers' reports are worth now that these records are applied."""
        for node_id, peer in self.peers.items():
            r = peer.report
            if r is None:
                continue
            if applied.get(node_id, (0, 0))[0] >= r.vv.get(node_id, 0):
                peer.covered = max(peer.covered, r.hlc)
                peer.stable = max(peer.stable, r.stable)
            peer.covered = max(peer.covered, applied.get(node_id, (0, 0))[1])

    def frontier(self, own: int | None = None, applied: dict | None = None, origins=None) -> int:
        """An HLC at or below which every operation of every origin (of ``origins``, by
        default every member) is applied here."""
        own = self.store.covered() if own is None else own
        applied = self.store.applied() if applied is None else applied
        origins = self._counted() if origins is None else set(origins) - {self.me}   # a node that left writes no more
        return min([own] + [max(self._peer(o).covered, applied.get(o, (0, 0))[1]) for o in origins])

    def stable(self, frontier: int | None = None) -> int:
        """Every member has applied every operation at or below this HLC."""
        f = self.frontier() if frontier is None else frontier
        reports = [self.peers[n].report if n in self.peers else None for n in self._counted()]
        return min([f] + [r.frontier if r is not None else 0 for r in reports])

    def status(self) -> Status:
        own = self.store.covered()       # first: the vector read after it holds every write below it
        applied = self.store.applied()
        f = self.frontier(own, applied)
        return Status({o: seq for o, (seq, _) in applied.items()}, own, f, self.stable(f))

    def compaction_point(self) -> int:
        """The least stable time of the members, each counted once its records are here."""
        own = self.stable()
        return min([own] + [self.peers[n].stable if n in self.peers else 0 for n in self._counted()])

    def lag_ms(self) -> dict[str, int]:
        """Per origin, how far (its HLC's milliseconds) this node is behind what the origin
        last reported having written: 0 when this node has everything it reported
        (``maxStalenessSeconds``, the operator view)."""
        applied = self.store.applied()
        out = {}
        for node_id, peer in self.peers.items():
            r = peer.report
            if r is None or node_id == self.me:
                continue
            seq, hlc = applied.get(node_id, (0, 0))
            behind = seq < r.vv.get(node_id, 0)
            out[node_id] = max(0, unpack(r.hlc)[0] - unpack(max(hlc, peer.covered))[0]) if behind else 0
        return out

    def exchanged(self, alive) -> bool:
        """Whether every alive peer has told this node its vector and clock since it
        started (each Status moves this node's clock past the sender's): then a write
        here is stamped after everything those peers have written or compacted."""
        return all(n in self.peers and self.peers[n].report is not None for n in set(alive) - {self.me})

    def acked(self, origin: str, seq: int) -> int:
        """How many nodes (this one included) have the record (origin, seq): write concern."""
        return sum(1 for n in self.members if (
            self.store.applied().get(origin, (0, 0))[0] >= seq if n == self.me else
            n in self.peers and self.peers[n].report is not None and self.peers[n].report.vv.get(origin, 0) >= seq))

    def tick(self, now: float) -> Out:
        """Periodic work: flush, status, snapshot streams, compaction, retention."""
        self._forget_dead(now)
        out = self.flush(now)
        out += self._snapshot_chunks(now)
        if now - self._last_status >= self.status_interval and self.members - {self.me}:
            self._last_status = now
            out.append((None, self.status()))
        if now - self._housekept >= self.housekeeping_interval:
            self._housekept = now
            point = self.compaction_point()
            if point > self.compacted:
                self.store.compact(point)
                self.compacted = point
            self._retain(now)
        return out

    def _retain(self, now: float) -> None:
        applied = self.store.applied()
        cutoff = pack(unpack(self.store.covered())[0] - int(self.retain_seconds * 1000), 0)
        for n in [n for n, at in self._left_at.items() if now - at >= LEFT_GRACE]:
            del self._left_at[n]
        holders = self._counted() | set(self._left_at)
        for origin, (seq, _) in applied.items():
            everyone = min([seq] + [self.peers[n].report.vv.get(origin, 0)
                                    if n in self.peers and self.peers[n].report else 0
                                    for n in holders])
            upto = everyone
            if origin == self.me and (self._installing or self._snapshot_in is not None
                                      and now - self._snapshot_in["at"] < SNAPSHOT_HOLD):
                # A snapshot on its way re-applies this node's records after its vector's
                # entry for this node: they must still be here when it is installed (one
                # that stalls holds them SNAPSHOT_HOLD at most: StaleSnapshot then).
                continue
            if origin != self.me:   # own records exist nowhere else until every member has them
                upto = max(upto, seq - self.retain_records, self.store.first_retained(origin) - 1)
                while upto < seq:
                    oldest = self.store.records_after(origin, upto, 1)
                    if not oldest or oldest[0].hlc >= cutoff:
                        break
                    upto = oldest[0].seq
            if upto >= self.store.first_retained(origin) > 0:
                self.store.truncate(origin, upto)


def _batches(records: list[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    size = 0
    for r in records:
        n = len(r.encoded()) + len(r.ns) + len(r.origin) + 24
        if batch and (len(batch) >= BATCH or size + n > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(r)
        size += n
    if batch:
        yield batch


# ---- on the mesh ----------------------------------------------------------------------------


class ReplicaPeer:
    """Runs a Replica on a PeerBus and a clock: subscribes its messages, sends what it
    returns, ticks it, exchanges vectors with every peer that comes up, waits for the
    store's commits, and flushes local records at the end of the loop iteration that
    committed them (one batch for all); under load at most once every ``FLUSH_INTERVAL``."""

    def __init__(self, replica: Replica, bus: PeerBus, clock: Clock, tick: float = 0.05,
                 on_progress: Callable[[], None] | None = None, may_be_alone: bool = False) -> None:
        """``on_progress``: called after anything that may have moved what this node has
        applied or knows of its peers (a message, a commit, a tick): waiters look again.
        ``may_be_alone``: this node is its deployment's first (its mesh dials no seed): until
        another node is a member or has heard from it, nothing writes concurrently with it,
        so its writes need no metadata (ReplicaStore.set_alone). A node with seeds may not
        know yet of a peer that writes, nor may one that has applied another node's records
        (restarted): neither counts as alone."""
        self.replica, self.bus, self.clock = replica, bus, clock
        self.on_progress = on_progress or (lambda: None)
        self._shared = not may_be_alone  # another node is a member or has heard from this one
        self._held: list | None = None  # what goes out once the writes stamped alone are committed
        self._stopped = False
        self._flush_timer = None
        self._flushed = float("-inf")   # when the last flush ran
        self._commits = 0               # local commits since then
        self._burst = False             # the last flush carried several commits
        self._watched: set = set()
        self._unsubscribe = [bus.subscribe(cls, self._on_message) for cls in MESSAGES]
        self._unsubscribe.append(bus.on_member_change(self._on_member))
        self._members()
        self._ticker = clock.every(tick, self._tick)

    def _send(self, out: Out) -> None:
        if out and not self._shared:
            self._share()
        if self._held is not None:
            self._held.extend(out)
            return
        for to, msg in out:
            if to is None:
                self.bus.broadcast(msg)
            else:
                self.bus.send(to, msg)

    def _members(self) -> None:
        members = [m for m in self.bus.members() if m.state != LEFT]
        self.replica.set_members([m.id for m in members], [m.id for m in members if m.state == DEAD],
                                 self.clock.monotonic())
        if self._shared:
            return
        if self.replica.members != {self.replica.me}:
            self._share()
        elif set(self.replica.store.applied()) <= {self.replica.me}:
            # (a node that has applied another's records is a restarted member of a larger
            # deployment, alone only until its peers dial it: they may be writing meanwhile)
            self.replica.store.set_alone(True)

    def _share(self) -> None:
        """Another node is here: this node's writes carry their metadata from now on, and
        nothing goes out until those stamped while it was alone are committed. A Status
        tells the committed writes' HLC as this node's clock, which the peer's next writes
        are stamped after: so every write stamped alone is older than anything it sends."""
        self._shared = True
        committed = self.replica.store.set_alone(False)
        if committed is None:
            return
        self._held = []
        loop = asyncio.get_running_loop()

        def back_on_the_loop(_) -> None:   # (writer thread; the loop is gone if the node stopped)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release)
        committed.add_done_callback(back_on_the_loop)

    def _release(self) -> None:
        if self._stopped:
            return
        held, self._held = self._held or [], None
        # (a Status held told a clock from before those commits: one made now goes instead)
        self._send([(to, msg) for to, msg in held if not isinstance(msg, Status)] + [(None, self.replica.status())])

    def _on_message(self, msg: PeerMessage, env: Envelope) -> None:
        self._send(self.replica.receive(msg, env.origin, self.clock.monotonic()))
        self._watch()
        self.on_progress()

    def _watch(self) -> None:
        """The store commits in its writer thread: back on the loop when it has."""
        for fut in self.replica.waiting:
            if fut not in self._watched:
                self._watched.add(fut)
                loop = asyncio.get_running_loop()
                fut.add_done_callback(lambda f, loop=loop: loop.call_soon_threadsafe(self._committed, f))

    def _committed(self, fut) -> None:
        self._watched.discard(fut)
        self._send(self.replica.committed(self.clock.monotonic()))
        self._watch()
        self.on_progress()

    def _on_member(self, old: Member | None, new: Member) -> None:
        self._members()
        if new.id != self.replica.me and new.state == ALIVE and (old is None or old.state != ALIVE):
            self._send(self.replica.link_up(new.id, self.clock.monotonic()))

    def committed_locally(self) -> None:
        """The store committed writes of this node: they go out with the flush at the end of
        this loop iteration, or half FLUSH_INTERVAL after the last one (all of it if that
        carried several commits)."""
        self._commits += 1
        if self._flush_timer is None:
            spacing = FLUSH_INTERVAL if self._burst else FLUSH_INTERVAL / 2
            wait = self._flushed + spacing - self.clock.monotonic()
            self._flush_timer = self.clock.call_later(max(0.0, wait), self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        self._flushed = self.clock.monotonic()
        self._burst, self._commits = self._commits > 1, 0
        self._send(self.replica.flush(self._flushed))

    def _tick(self, now: float) -> None:
        self._send(self.replica.tick(now))
        self._watch()
        self.on_progress()

    def stop(self) -> None:
        self._stopped = True
        self._ticker.cancel()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for unsubscribe in self._unsubscribe:
            unsubscribe()


# ---- in memory ------------------------------------------------------------------------------


class MemoryStore:
    """ReplicaStore in memory (tests, the simulation); ``write`` is a local commit."""

    def __init__(self, me: str, clock: Callable[[], int]) -> None:
        self.me = me
        self.hlc = HLC(0, clock)
        self.docs: dict[tuple[str, bytes], tuple[Any, dict]] = {}
        self.oplog: dict[str, dict[int, Record]] = {}
        self._applied: dict[str, tuple[int, int]] = {}
        self.outcomes: dict[str, int] = {}

    def write(self, ns: str, _id: Any, op: dict) -> Record:
        """A local write: the record (a $pull carries this node's vector) is applied and kept."""
        op = copy.deepcopy(op)
        if op["op"] == "u" and op.get("pull"):
            op["ctx"] = {o: seq for o, (seq, _) in self._applied.items()}
        seq = self._applied.get(self.me, (0, 0))[0] + 1
        record = Record(self.me, seq, self.hlc.now(), ns, _id, op)
        self.apply_remote([record])
        return record

    def covered(self) -> int:
        return self.hlc.now()

    def observe(self, hlc: int) -> None:
        self.hlc.observe(hlc)

    def set_alone(self, alone: bool) -> None:
        """(every write here keeps its metadata)"""

    def get(self, ns: str, _id: Any) -> dict | None:
        entry = self.docs.get((ns, id_key(_id)))
        return merge.visible(entry[1]) if entry else None

    def dump(self) -> dict:
        return {k: merge.visible(s) for k, (_, s) in sorted(self.docs.items()) if merge.visible(s) is not None}

    # ---- ReplicaStore ----

    def applied(self) -> dict[str, tuple[int, int]]:
        return dict(self._applied)

    def apply_remote(self, records: list[Record]) -> list[str]:
        outcomes = []
        for r in records:
            if r.seq != self._applied.get(r.origin, (0, 0))[0] + 1:
                raise ValueError(f"record {r.origin}:{r.seq} is not the next of its origin")
            self.hlc.observe(r.hlc)
            key = (r.ns, id_key(r.id))
            result = merge.apply(self.docs.get(key, (None, None))[1], r.stamp, r.op)
            if r.op["op"] in ("n", "c"):   # the catalog is the LMDB store's (merge.CATALOG_TABLE)
                pass
            elif result.state is None:
                self.docs.pop(key, None)
            else:
                self.docs[key] = (r.id, result.state)
            self.oplog.setdefault(r.origin, {})[r.seq] = r
            self._applied[r.origin] = (r.seq, r.hlc)
            self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1
            outcomes.append(result.outcome)
        return outcomes

    def records_after(self, origin: str, seq: int, limit: int) -> list[Record] | None:
        log = self.oplog.get(origin, {})
        if seq + 1 not in log:
            return None if seq < self._applied.get(origin, (0, 0))[0] else []
        out = []
        s = seq + 1
        while s in log and len(out) < limit:
            out.append(log[s])
            s += 1
        return out

    def retained(self, origin: str) -> int:
        return len(self.oplog.get(origin, {}))

    def first_retained(self, origin: str) -> int:
        log = self.oplog.get(origin)
        return min(log) if log else 0

    def truncate(self, origin: str, upto: int) -> None:
        log = self.oplog.get(origin, {})
        for s in [s for s in log if s <= upto]:
            del log[s]

    def snapshot(self):
        vv = {o: seq for o, (seq, _) in self._applied.items()}
        docs = [(ns, _id, copy.deepcopy(state)) for (ns, _), (_id, state) in sorted(self.docs.items())]
        return vv, iter(docs)

    def install_snapshot(self, vv: dict[str, int], docs) -> None:
        retained = sorted((r for log in self.oplog.values() for r in log.values()
                           if r.seq > vv.get(r.origin, 0)), key=lambda r: (r.origin, r.seq))
        self.docs = {(ns, id_key(_id)): (_id, state) for ns, _id, state in docs}
        self._applied = {o: (seq, 0) for o, seq in vv.items()}
        for r in retained:
            if r.seq == self._applied.get(r.origin, (0, 0))[0] + 1:
                self.apply_remote([r])

    def compact(self, stable: int) -> None:
        for key, (_id, state) in list(self.docs.items()):
            if "o" in state or state["v"] is None or state["m"]["w"] or state["m"]["e"]:
                new = merge.compact(state, stable)
                if new is None:
                    del self.docs[key]
                else:
                    self.docs[key] = (_id, new)
