"""The database's replication on a node: the asyncio side of ``farts.db.replica``.

``Replication`` owns the node's ``Replica`` and its ``ReplicaPeer`` on the mesh bus (a
``PeerBus``: this module never imports the mesh), and puts what MongoDB drivers expect
around each command of the wire endpoint:

- every reply carries ``operationTime`` and ``$clusterTime``: this node's HLC as a BSON
  Timestamp (the high and low 32 bits of the 64-bit HLC, so order is kept), the highest
  HLC of any write visible here (what a causally consistent session reads after);
- ``readConcern.afterClusterTime`` waits, on the loop (a waiter looked at again each time
  replication moves), until this node has applied every alive origin's writes up to that
  time, or answers MaxTimeMSExpired after ``maxTimeMS``;
- ``writeConcern`` ``w: "majority"`` (or a number) answers once that many members have
  applied the write (``Replica.acked``); past ``wtimeout`` the write's reply carries a
  ``writeConcernError`` (the write itself stays: it is committed here and replicates);
- writes (and catalog commands) wait, once, after the node starts, until every alive peer
  has sent its vector and clock (``Replica.exchanged``) or ``STARTUP_WAIT`` passed: a
  restarted node with a slow clock would otherwise stamp writes below what its peers
  compacted;
- ``$readPreference``: ``primary`` (also what a driver sends by omitting it) and
  ``primaryPreferred`` reads go to ``[db] primary`` over the mesh (``Forward``) when it is
  another node; ``nearest`` and ``secondary*`` read here, unless this node lags by more
  than ``maxStalenessSeconds``.

Waiting is never a loop: a waiter is a future, a check and a deadline timer.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bson
from bson.binary import Binary
from bson.int64 import Int64
from bson.timestamp import Timestamp

from farts.clock import Clock
from farts.db.commands import Session
from farts.db.errors import MongoError, error_document
from farts.db.replica import Replica, ReplicaPeer
from farts.members import ALIVE, DRAINING, SUSPECT
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.db.replication")

# How far behind an origin's last report (its clock) still counts as caught up with it.
CAUGHT_UP_LAG_MS = 1000
WRITES = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify"})
CATALOG_WRITES = frozenset({"create", "drop", "dropDatabase", "createIndexes", "dropIndexes"})
STARTUP_WAIT = 5.0              # seconds a started node holds writes back for its peers' vectors
READS = frozenset({"find", "count", "distinct", "aggregate"})
PLAIN_READS = READS - {"aggregate"}   # (an aggregate may write: $out, $merge)
HOUSEKEEPING = 1.0              # seconds between compactions / oplog truncations (write transactions)
FORWARD_TIMEOUT = 10.0          # seconds a forwarded read waits without maxTimeMS
FORWARD_MAX_BYTES = 900_000     # a forwarded reply rides one mesh frame (1 MiB)
FORWARD_MAX_BATCHES = 10_000    # getMores a primary runs to gather a forwarded cursor
_SIGNATURE = {"hash": Binary(b"\0" * 20), "keyId": Int64(0)}
# The two elements every reply ends with, as BSON: operationTime, then $clusterTime (its
# signature all zeros: drivers gossip it back unchecked); a timestamp's 8 bytes are the HLC
# little-endian (increment, then seconds: to_timestamp).
_STAMP = (b"\x11operationTime\x00" + b"\0" * 8
          + b"\x03$clusterTime\x00" + bson.encode({"clusterTime": Timestamp(0, 0), "signature": _SIGNATURE}))
_STAMP_AT = (len(b"\x11operationTime\x00"),
             len(b"\x11operationTime\x00") + 8 + len(b"\x03$clusterTime\x00") + 4 + len(b"\x11clusterTime\x00"))
_HLC = struct.Struct("<Q")


def to_timestamp(hlc: int) -> Timestamp:
    return Timestamp(hlc >> 32, hlc & 0xFFFFFFFF)


def from_timestamp(ts: Timestamp) -> int:
    return (ts.time << 32) | ts.inc


@dataclass(frozen=True, slots=True)
class Forward(PeerMessage):
    """A read for the primary: the command as BSON, with the asker's tenant and user."""
    TYPE = "db.forward"
    VERSION = 1
    rid: int
    tenant: str
    user: str | None
    body: bytes

    def to_wire(self) -> dict:
        return {"rid": self.rid, "tenant": self.tenant, "user": self.user, "body": self.body}

    @classmethod
    def from_wire(cls, body: Any) -> Forward:
        need(cls, isinstance(body, dict) and set(body) == {"rid", "tenant", "user", "body"},
             "an object {rid, tenant, user, body}")
        need(cls, isinstance(body["rid"], int) and not isinstance(body["rid"], bool), "rid: an integer")
        need(cls, isinstance(body["tenant"], str) and (body["user"] is None or isinstance(body["user"], str)),
             "tenant, user: strings")
        need(cls, isinstance(body["body"], bytes), "body: BSON")
        return cls(body["rid"], body["tenant"], body["user"], body["body"])


@dataclass(frozen=True, slots=True)
class ForwardReply(PeerMessage):
    """The primary's reply to a Forward (cursors gathered into one batch)."""
    TYPE = "db.forward_reply"
    VERSION = 1
    rid: int
    body: bytes

    def to_wire(self) -> dict:
        return {"rid": self.rid, "body": self.body}

    @classmethod
    def from_wire(cls, body: Any) -> ForwardReply:
        need(cls, isinstance(body, dict) and set(body) == {"rid", "body"}, "an object {rid, body}")
        need(cls, isinstance(body["rid"], int) and not isinstance(body["rid"], bool), "rid: an integer")
        need(cls, isinstance(body["body"], bytes), "body: BSON")
        return cls(body["rid"], body["body"])


class _Waiter:
    __slots__ = ("check", "future", "timer")

    def __init__(self, check, future, timer) -> None:
        self.check, self.future, self.timer = check, future, timer


class Replication:
    """Built when the node has a mesh (``DBService.replicate``), started with the store."""

    def __init__(self, me: str, bus: PeerBus, clock: Clock, cfg, metrics=None, seeded: bool = True) -> None:
        """``seeded``: the mesh dials seeds (False: this node is its deployment's first, and
        alone until another joins it: ReplicaPeer)."""
        self.me, self.bus, self.clock, self.cfg = me, bus, clock, cfg
        self.seeded = seeded
        self.metrics = metrics
        self.replica: Replica | None = None
        self.peer: ReplicaPeer | None = None
        self.store = None
        self.commands = None
        self._waiters: list[_Waiter] = []
        self._rids = itertools.count(1)
        self._forwarded: dict[int, tuple[str, asyncio.Future]] = {}   # rid -> (primary, its reply)
        self.counts = {"causal_waits": 0, "causal_timeouts": 0, "write_concern_waits": 0,
                       "write_concern_timeouts": 0, "forwarded": 0, "forwards_served": 0, "startup_waits": 0}
        self._exchanged: asyncio.Future | None = None   # writes wait on it after the start
        self._stamped: tuple = (-1, b"")                  # the last operationTime's HLC, and the elements
        self._started = 0.0
        self._unsubscribe: list = []

    # ---- life ----

    def attach(self, store, commands) -> None:
        """The store (``Store(replicated=True)``) and the command set exist: run."""
        self.store, self.commands = store, commands
        self.replica = Replica(self.me, store, status_interval=self.cfg.status_interval,
                               retain_records=self.cfg.oplog_retain_records,
                               retain_seconds=self.cfg.oplog_retain_seconds,
                               housekeeping_interval=HOUSEKEEPING)
        self.peer = ReplicaPeer(self.replica, self.bus, self.clock, on_progress=self._progress,
                                may_be_alone=not self.seeded)
        self._started = self.clock.monotonic()
        commands.on_commit = self.peer.committed_locally
        self._unsubscribe = [self.bus.subscribe(Forward, self._on_forward),
                             self.bus.subscribe(ForwardReply, self._on_forward_reply)]
        if self.metrics is not None:
            self._metrics(self.metrics)

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for w in self._waiters:
            w.timer.cancel() if w.timer else None
            if not w.future.done():
                w.future.set_result(False)
        self._waiters = []

    def _metrics(self, m) -> None:
        r = self.replica
        m.gauge("farts_db_replication_lag_ms", "How far this node is behind what each origin reported "
                "having written (ms of its HLC; 0: it has all of it)",
                lambda: {(o,): v for o, v in r.lag_ms().items()}, ("origin",))
        m.gauge("farts_db_replication_ops", "Replicated oplog records, by what happened to them "
                "(shipped, applied, duplicates, catchup_records, failed, late, buffered_dropped, dropped: "
                "stamped below a drop of their collection)",
                lambda: {(k,): r.stats[k] for k in ("shipped", "applied", "duplicates", "catchup_records",
                                                    "failed", "late", "buffered_dropped", "dropped")}, ("kind",))
        m.gauge("farts_db_replication_forgotten_members", "Members dead for longer than oplog_retain_seconds: "
                "compaction and the oplog no longer wait for them", lambda: len(r.forgotten))
        m.gauge("farts_db_replication_conflicts_resolved", "Replicated operations that arrived out of HLC "
                "order and were merged by the rules (replayed)", lambda: r.stats["replayed"])
        m.gauge("farts_db_replication_unique_conflicts", "Unique index keys two nodes' writes both hold "
                "(resolved: the smaller _id keeps the entry)", lambda: self.store.unique_conflicts)
        m.gauge("farts_db_replication_snapshots", "Snapshots sent and installed", lambda: {
            ("sent",): r.stats["snapshots_sent"], ("installed",): r.stats["snapshots_installed"]}, ("kind",))
        m.gauge("farts_db_replication_snapshot_bytes", "Bytes of documents sent in snapshots",
                lambda: r.stats["snapshot_bytes"])
        m.gauge("farts_db_replication_catchup_records", "Records shipped to peers that were behind",
                lambda: r.stats["catchup_records"])
        m.gauge("farts_db_replication_waits", "Causal reads and write concerns that waited, and timed out",
                lambda: {(k,): v for k, v in self.counts.items()}, ("kind",))

    def status(self) -> dict:
        """For /api/mesh and `farts-edge status`."""
        if self.replica is None:
            return {}
        applied = self.store.applied()
        return {"lag_ms": self.replica.lag_ms(), "applied": {o: seq for o, (seq, _) in applied.items()},
                "stats": dict(self.replica.stats), "forgotten": sorted(self.replica.forgotten)}

    def behind(self, alive: set[str]) -> str:
        """Why this node is not caught up with its alive peers, or "" when it is: it has
        every write their last reports said they have, or is at most CAUGHT_UP_LAG_MS behind
        each (under a steady write load the latest report always runs a few records ahead
        of what is applied here at that moment: a deploy's health gate and a new master's
        wait would otherwise depend on when they look)."""
        if self.replica is None:
            return ""
        have, lag = self.store.applied(), self.replica.lag_ms()
        reported: dict[str, int] = {}
        for peer_id, peer in self.replica.peers.items():
            if peer_id in alive and peer.report is not None:
                for origin, seq in peer.report.vv.items():
                    reported[origin] = max(reported.get(origin, 0), seq)
        out = []
        for origin, seq in sorted(reported.items()):
            missing, ms = seq - have.get(origin, (0, 0))[0], lag.get(origin)
            if missing <= 0 or (origin in alive and ms is not None and ms <= CAUGHT_UP_LAG_MS):
                continue
            out.append(f"{missing:,} records of {origin}" + (f", {ms:,} ms behind" if ms is not None else ""))
        return "; ".join(out)

    # ---- waiting ----

    def _progress(self) -> None:
        if not self._waiters:
            return
        keep = []
        for w in self._waiters:
            if w.future.done():
                continue
            if w.check():
                w.future.set_result(True)
                if w.timer is not None:
                    w.timer.cancel()
            else:
                keep.append(w)
        self._waiters = keep

    def _wait(self, check: Callable[[], bool], timeout: float | None) -> asyncio.Future:
        """A future that is True once check() holds, False after timeout seconds."""
        fut = asyncio.get_running_loop().create_future()
        if check():
            fut.set_result(True)
            return fut

        def expire() -> None:
            if not fut.done():
                fut.set_result(check())
        timer = self.clock.call_later(timeout, expire) if timeout is not None else None
        self._waiters.append(_Waiter(check, fut, timer))
        return fut

    def _alive(self) -> set[str]:
        """Members that may still be writing: alive, draining, or suspected (a busy node
        misses probes; its writes are waited for until it is declared dead)."""
        return {m.id for m in self.bus.members() if m.state in (ALIVE, DRAINING, SUSPECT)}

    def causal_frontier(self) -> int:
        """An HLC at or below which this node has applied every write of every alive member
        (a dead one's are what it shipped before it died)."""
        return self.replica.frontier(origins=self._alive())

    def operation_time(self) -> int:
        """The highest HLC of any write visible here (replies' operationTime)."""
        return self.store.operation_hlc

    def majority(self) -> int:
        return len(self.replica.members) // 2 + 1

    # ---- around each command ----

    def run(self, session, cmd, local: Callable[[], Any]):
        """What the wire endpoint answers for cmd: local() (the command set), maybe after
        waiting for a causal read, maybe forwarded, maybe followed by a write concern."""
        body = cmd.body
        name = cmd.name
        if name in PLAIN_READS and cmd.read_preference is None and "readConcern" not in body:
            primary = self.cfg.primary   # (a driver's default: primary)
            if not primary or primary == self.me:
                return local()   # the usual read, in one test: nothing to route or wait for
        if (name in WRITES or name in CATALOG_WRITES) and not self._ready():
            return self._after_exchange(lambda: self.run(session, cmd, local))
        if name in WRITES:
            wc = body.get("writeConcern")
            result = local()
            if isinstance(wc, dict) and wc.get("w") not in (None, 0, 1):
                return self._write_concern(result, wc)
            return result
        if name not in READS:
            return local()
        if name == "aggregate" and any(isinstance(s, dict) and ("$out" in s or "$merge" in s)
                                       for s in body.get("pipeline") or ()):
            return local()
        after = None
        rc = body.get("readConcern")
        if isinstance(rc, dict) and isinstance(rc.get("afterClusterTime"), Timestamp):
            after = from_timestamp(rc["afterClusterTime"])
        max_ms = body.get("maxTimeMS")
        timeout = max_ms / 1000 if isinstance(max_ms, (int, float)) and not isinstance(max_ms, bool) \
            and max_ms > 0 else None
        target = self._route(cmd)
        if target is not None:
            return self._forward(target, session, cmd, timeout)
        if after is None or self.causal_frontier() >= after:
            return local()
        return self._after(after, timeout, local)

    def _route(self, cmd) -> str | None:
        """The node to forward a read to, or None to read here; raises the driver's errors."""
        rp = cmd.read_preference or {}
        mode = rp.get("mode", "primary")
        primary = self.cfg.primary
        if mode in ("primary", "primaryPreferred"):
            if not primary or primary == self.me:
                return None
            if primary in self._alive():
                return primary
            if mode == "primaryPreferred":
                return None
            raise MongoError(13435, "NotPrimaryNoSecondaryOk",
                             f"not primary and secondaryOk=false: the primary ({primary}) is not reachable")
        staleness = rp.get("maxStalenessSeconds")
        if isinstance(staleness, (int, float)) and not isinstance(staleness, bool) and staleness > 0:
            lag = max(self.replica.lag_ms().values(), default=0) / 1000
            if lag > staleness:
                if primary and primary != self.me and primary in self._alive():
                    return primary
                if primary != self.me:
                    raise MongoError(133, "FailedToSatisfyReadPreference",
                                     f"this node lags {lag:.1f} s behind, more than maxStalenessSeconds "
                                     f"{staleness}, and no primary is reachable")
        return None

    def _ready(self) -> bool:
        """Whether writes go ahead: the vectors were exchanged (or waited for) since the start."""
        if self._exchanged is not None:
            return self._exchanged.done()
        if self.replica.exchanged(self._alive()):
            self._exchanged = asyncio.get_running_loop().create_future()
            self._exchanged.set_result(True)
            return True
        return False

    async def _after_exchange(self, run):
        if self._exchanged is None:
            self.counts["startup_waits"] += 1
            wait = max(0.0, self._started + STARTUP_WAIT - self.clock.monotonic())
            self._exchanged = self._wait(lambda: self.replica.exchanged(self._alive()), wait)
            self._exchanged.add_done_callback(lambda f: log.info(
                "db: taking writes, %s", "vectors exchanged with every alive peer" if f.result() else
                f"after {STARTUP_WAIT:.0f} s without every alive peer's vector"))
        await asyncio.shield(self._exchanged)
        result = run()
        if asyncio.isfuture(result) or asyncio.iscoroutine(result):
            result = await result
        return result

    async def _after(self, after: int, timeout: float | None, local):
        self.counts["causal_waits"] += 1
        if not await self._wait(lambda: self.causal_frontier() >= after, timeout):
            self.counts["causal_timeouts"] += 1
            raise MongoError(50, "MaxTimeMSExpired", "operation exceeded time limit waiting for "
                             "afterClusterTime: this node has not applied every write up to it")
        result = local()
        if asyncio.isfuture(result) or asyncio.iscoroutine(result):
            result = await result
        return result

    async def _write_concern(self, result, wc: dict):
        if asyncio.isfuture(result) or asyncio.iscoroutine(result):
            result = await result
        seq = self.store.applied().get(self.me, (0, 0))[0]   # at or after this write's record
        w = wc.get("w")
        need = self.majority() if w == "majority" else w if isinstance(w, int) and not isinstance(w, bool) else None
        if need is None:
            raise MongoError(79, "UnknownReplWriteConcern", f"no write concern mode named {w!r}")
        wt = wc.get("wtimeout")
        timeout = wt / 1000 if isinstance(wt, (int, float)) and not isinstance(wt, bool) and wt > 0 else None
        self.counts["write_concern_waits"] += 1
        if need > len(self.replica.members):
            ok = False
        else:
            ok = await self._wait(lambda: self.replica.acked(self.me, seq) >= need, timeout)
        if not ok:
            self.counts["write_concern_timeouts"] += 1
            if isinstance(result, dict):
                result = dict(result)
                result["writeConcernError"] = {
                    "code": 64, "codeName": "WriteConcernFailed",
                    "errmsg": f"waiting for replication timed out: {self.replica.acked(self.me, seq)} of "
                              f"{need} nodes have the write", "errInfo": {"wtimeout": True}}
        return result

    def stamp(self, reply: dict) -> bytes:
        """operationTime and $clusterTime for a reply: BSON elements to end it with
        (``wire.encode_answer``'s ``extra``; those of a forwarded reply go)."""
        hlc = self.store.operation_hlc
        if hlc != self._stamped[0]:   # the same for every reply until a commit moves it
            ts = _HLC.pack(hlc)
            at, ct = _STAMP_AT
            self._stamped = (hlc, _STAMP[:at] + ts + _STAMP[at + 8:ct] + ts + _STAMP[ct + 8:])
        if "operationTime" in reply or "$clusterTime" in reply:
            reply.pop("operationTime", None)
            reply.pop("$clusterTime", None)
        return self._stamped[1]

    # ---- forwarding to the primary ----

    async def _forward(self, target: str, session, cmd, timeout: float | None):
        rid = next(self._rids)
        body = {k: v for k, v in cmd.body.items() if k not in ("$readPreference", "lsid", "$clusterTime")}
        fut = asyncio.get_running_loop().create_future()
        self._forwarded[rid] = (target, fut)
        self.counts["forwarded"] += 1
        try:
            if not self.bus.send(target, Forward(rid, session.tenant, session.user, bson.encode(body))):
                raise MongoError(13435, "NotPrimaryNoSecondaryOk",
                                 f"not primary and secondaryOk=false: no link to the primary ({target})")
            try:
                data = await asyncio.wait_for(fut, timeout or FORWARD_TIMEOUT)
            except TimeoutError:
                raise MongoError(50, "MaxTimeMSExpired", f"the primary ({target}) did not answer in time") from None
        finally:
            self._forwarded.pop(rid, None)
        reply = bson.decode(data)
        if not reply.get("ok"):
            raise MongoError(reply.get("code", 1), reply.get("codeName", "InternalError"),
                             reply.get("errmsg", "the primary failed"))
        cursor = reply.get("cursor")
        if isinstance(cursor, dict) and "firstBatch" in cursor:
            ns = self.commands.ns(session, cmd.db, cmd.body[cmd.name]) if isinstance(cmd.body[cmd.name], str) \
                else f"{session.tenant}${cmd.db}.$cmd.aggregate"
            batch = cmd.body.get("batchSize") or (cmd.body.get("cursor") or {}).get("batchSize")
            batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else 101
            return self.commands._cursor_reply(session, ns, cursor["firstBatch"], batch,
                                               bool(cmd.body.get("singleBatch")))
        return reply

    def _on_forward(self, msg: Forward, env: Envelope) -> None:
        asyncio.ensure_future(self._serve_forward(msg, env.origin))

    async def _serve_forward(self, msg: Forward, origin: str) -> None:
        self.counts["forwards_served"] += 1
        session = Session(0, peer=f"mesh:{origin}", user=msg.user, tenant=msg.tenant)
        try:
            body = bson.decode(msg.body)
            cmd = self.commands.parse(body, {})
            if cmd.name not in READS:
                raise MongoError(13, "Unauthorized", f"{cmd.name} is not forwarded to the primary")
            if cmd.name == "find":
                body.pop("batchSize", None)
                body.pop("singleBatch", None)
            elif cmd.name == "aggregate":
                body["cursor"] = {}
            # Through run: a causal read waits here too; read here, never forwarded again
            # (even when this node's [db] primary names another).
            cmd.read_preference = {"mode": "nearest"}
            reply = await self._local(session, cmd, lambda: self.run(session, cmd, lambda: self.commands.run(session, cmd)))
            cursor = reply.get("cursor") if isinstance(reply, dict) else None
            if isinstance(cursor, dict) and cursor.get("id"):
                docs = list(cursor["firstBatch"])
                cid = cursor["id"]
                for _ in range(FORWARD_MAX_BATCHES):
                    more = await self._local(session, self.commands.parse(
                        {"getMore": cid, "collection": cursor["ns"].split(".", 1)[1], "$db": cmd.db}, {}))
                    docs += more["cursor"]["nextBatch"]
                    cid = more["cursor"]["id"]
                    if not cid:
                        break
                reply = {"cursor": {"firstBatch": docs, "id": Int64(0), "ns": cursor["ns"]}, "ok": 1.0}
            data = bson.encode(reply)
            if len(data) > FORWARD_MAX_BYTES:
                raise MongoError(10334, "BSONObjectTooLarge",
                                 f"a read forwarded to the primary answers at most {FORWARD_MAX_BYTES} bytes")
        except MongoError as e:
            data = bson.encode(error_document(e))
        except Exception as e:  # noqa: BLE001 - a bug answers an error, never kills the node
            log.exception("forwarded read from %s failed", origin)
            data = bson.encode(error_document(MongoError(1, "InternalError", f"internal error: {type(e).__name__}")))
        self.bus.send(origin, ForwardReply(msg.rid, data))

    async def _local(self, session, cmd, run=None):
        result = (run or (lambda: self.commands.run(session, cmd)))()
        if asyncio.isfuture(result) or asyncio.iscoroutine(result):
            result = await result
        return result

    def _on_forward_reply(self, msg: ForwardReply, env: Envelope) -> None:
        target, fut = self._forwarded.get(msg.rid, ("", None))
        if fut is not None and target == env.origin and not fut.done():
            fut.set_result(msg.body)
