"""The node's local replica: LMDB under data_dir/db, written by one thread.

Sub-databases: ``docs`` (key: namespace, NUL, the _id's order-preserving key; value:
the BSON document; so it is also the _id index), ``meta`` (the collection catalog, the
oplog sequence and the clock, and ``vv:<origin>``: the last record of each other origin
applied here), ``oplog`` (key: origin node, NUL, 8-byte sequence; value: with replication
the record as it travels behind a binary header, ``_oplog_value``, else BSON), ``rmeta`` (same key
as ``docs``: the document's replication metadata, ``farts.db.merge``'s state without the
value, or for a document one insert made, that insert's stamp alone: ``_insert_meta``),
``conflicts`` (documents of two nodes that share a unique index key: the smaller _id key
holds the index entry, the others are listed here, see ``_unique_put``), and one
``i:<ns>:<index>`` per secondary index (key: the index key, then the _id key for
non-unique indexes; unique ones map the index key to the _id key).

Replication (``replicated=True``): every local write also goes through the merge rules
(its effect is applied to the document's merge state, and the oplog record carries that
effect as ``e``), and ``apply_remote`` applies other nodes' records, each in its own
nested transaction together with its origin's applied position, exactly once.

Writes: callers hand a function to ``submit``; a single writer thread runs every
function waiting in its queue inside one LMDB write transaction (each in a nested
transaction, so a failing one leaves no trace) and commits once: concurrent writers
share one fsync (group commit). Catalog changes (indexes, drops) run alone because
they open sub-databases. Every document write appends its operation-log record in
the same transaction. Reads use read transactions and never wait for the writer.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import bson
import lmdb
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex

from farts.clock import HLC
from farts.db import collation, keys, merge, validation
from farts.db.errors import MongoError
from farts.db.replica import Record, StaleSnapshot
from farts.db.update import _copy, is_replacement

log = logging.getLogger("farts.db.store")

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_SEQ = struct.Struct(">Q")
_POS = struct.Struct(">QQ")   # applied position: seq, HLC
_GROUP_MAX = 512   # write functions per commit
_RECENT = 4096     # this node's last committed records kept in memory for shipping


def _err(code: int, name: str, message: str) -> MongoError:
    return MongoError(code, name, message)


@dataclass(frozen=True)
class Index:
    name: str
    fields: tuple[tuple[str, int], ...]
    unique: bool = False
    multikey: bool = False
    collation: tuple = ()   # its collation document's items (farts.db.collation); () is binary

    def spec(self) -> dict:
        out = {"v": 2, "key": dict(self.fields), "name": self.name}
        if self.unique:
            out["unique"] = True
        if self.collation:
            out["collation"] = dict(self.collation)
        return out


@dataclass(frozen=True)
class Collection:
    ns: str
    indexes: tuple[Index, ...] = ()
    options: dict = field(default_factory=dict)

    def index(self, name: str) -> Index | None:
        return next((i for i in self.indexes if i.name == name), None)

    def encode(self) -> bytes:
        return bson.encode({"ns": self.ns, "options": self.options, "indexes": [
            {"name": i.name, "fields": [list(f) for f in i.fields], "unique": i.unique, "multikey": i.multikey,
             "collation": dict(i.collation)} for i in self.indexes]})

    @staticmethod
    def decode(data: bytes) -> Collection:
        d = bson.decode(data)
        return Collection(d["ns"], tuple(Index(i["name"], tuple((f, int(x)) for f, x in i["fields"]),
                                               i["unique"], i["multikey"], tuple(i.get("collation", {}).items()))
                                         for i in d["indexes"]),
                          d["options"])


def index_db_name(ns: str, index: str) -> bytes:
    return f"i:{ns}:{index}".encode()


def ns_prefix(ns: str) -> bytes:
    return ns.encode() + b"\0"


_NO_ID = object()   # (Store.key: the namespace's prefix)


@dataclass
class ScanStats:
    """What one query read: the evidence an index was used (explain, tests, metrics)."""
    plan: str = "COLLSCAN"
    index: str | None = None
    keys: int = 0
    docs: int = 0
    sorted: bool = False   # read in index order: no in-memory sort


class TooBig(Exception):
    """A read on the event loop went over its budget; the caller reruns it in the pool."""


class Store:
    def __init__(self, path: Path, node_id: str, *, sync: bool = True, map_size: int = 1 << 32,
                 max_indexes: int = 500, display_ns=lambda ns: ns, replicated: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self.display_ns = display_ns  # internal namespace → the name a client knows
        self.max_indexes = max_indexes
        # Every read transaction pays for max_dbs (0.5 µs at 512, 7 µs at 4096), so the
        # number of index sub-databases is bounded by configuration.
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=max_indexes + 5, sync=sync,
                             metasync=sync, max_readers=256)
        self.docs = self.env.open_db(b"docs")
        self.meta = self.env.open_db(b"meta")
        self.oplog = self.env.open_db(b"oplog")
        self.rmeta = self.env.open_db(b"rmeta")
        self.conflicts = self.env.open_db(b"conflicts")
        self.unique_conflicts = 0     # resolved since start (a metric)
        self.validation_warnings = 0  # writes let through by validationAction "warn" (serverStatus)
        self.oversized = 0            # replicated documents merged past MAX_DOCUMENT_BYTES (a metric)
        self.replicated = replicated
        vv: dict[str, tuple[int, int]] = {}
        self._origin = node_id.encode() + b"\0"
        # Namespaces and databases that have (or had) a drop floor: most have none, and a
        # replicated write looks its floor up only when its names are here (writer thread).
        self._floor_names: set[str] = set()
        self._index_dbs: dict[bytes, object] = {}
        catalog = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(self.meta).iternext():
                if k.startswith(b"c:"):
                    c = Collection.decode(v)
                    catalog[c.ns] = c
                elif k.startswith(b"vv:"):
                    vv[k[3:].decode()] = _POS.unpack(v)
                elif k.startswith(b"drop:"):
                    self._floor_names.add(k[5:].decode())
            seq = txn.get(b"seq", db=self.meta)
            hlc = txn.get(b"hlc", db=self.meta)
        live = {index_db_name(c.ns, i.name) for c in catalog.values() for i in c.indexes}
        with self.env.begin(write=True) as txn:  # no reader yet: drop indexes dropped before
            for name, _ in list(txn.cursor()):
                if name.startswith(b"i:") and name not in live:
                    txn.drop(self.env.open_db(name, txn=txn), delete=True)
        for name in live:
            self._index_dbs[name] = self.env.open_db(name)
        self.catalog: dict[str, Collection] = catalog   # as committed; read by the loop
        self._wcat = dict(catalog)                       # the writer's view (uncommitted)
        self.seq = _SEQ.unpack(seq)[0] if seq else 0     # last sequence of this origin
        self.hlc = HLC(_SEQ.unpack(hlc)[0] if hlc else 0)
        self._wvv = vv                # other origins' applied positions (the writer's view)
        # The HLC is read by the writer (stamps) and by replication on the loop (covered,
        # observe): the one piece of state the two threads share, so it has a lock.
        self._hlc_lock = threading.Lock()
        self._group_stamp: int | None = None   # the first stamp of the group being written
        self._alone = False          # no other node has this node's clock (set_alone)
        self._stamped_alone = False  # the last stamp was handed out alone (writer thread)
        self._committed_vv = {**vv, node_id: (self.seq, self.hlc.last)}
        self.operation_hlc = max(h for _, h in self._committed_vv.values())   # replies' operationTime
        # This node's records as the writer logs them (cut back when a nested transaction
        # aborts), and the last _RECENT committed ones: shipping reads them here rather
        # than back from the oplog. The writer only appends to _recent (or replaces it).
        self._group_records: list = []
        self._recent: list = []
        self._own_truncated = 0   # this node's records up to here are gone from the oplog
        self.doc_reads = 0      # documents fetched by queries (evidence for index use)
        self.commits = 0
        self.committed_ops = 0
        self._fresh: list[bytes] = []  # index sub-databases opened by the uncommitted group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_group = 1          # writes in the last commit
        self._commit_seconds = 0.0    # moving average of a commit's duration (its fsyncs)
        self._compact_from = b""      # where the next compaction pass starts (writer thread)
        self._thread = threading.Thread(target=self._writer, name="farts-db-writer", daemon=True)
        self._thread.start()

    # ---- writes ----

    def submit(self, fn, exclusive: bool = False) -> concurrent.futures.Future:
        """Runs fn(WriteTxn) in the writer thread; the future resolves after the commit."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, fut, exclusive))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self.env.close()

    def _writer(self) -> None:
        pending = []
        while True:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.append(item)
            stop = False
            # Group commit: take what is queued; if fewer writers are waiting than joined the
            # last commit, wait up to half a commit's time for the rest (their replies were
            # just sent, their next writes are on the way) instead of paying a sync each.
            deadline = time.monotonic() + min(0.002, max(0.0005, self._commit_seconds / 2))
            while len(pending) < _GROUP_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    wait = deadline - time.monotonic()
                    if len(pending) >= self._last_group or wait <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=wait)
                    except queue.Empty:
                        break
                if item is None:
                    stop = True
                    break
                pending.append(item)
            if pending[0][2]:
                group, pending = pending[:1], pending[1:]
            else:
                n = next((i for i, it in enumerate(pending) if it[2]), len(pending))
                group, pending = pending[:n], pending[n:]
            started = time.monotonic()
            self._commit_group(group)
            self._last_group = len(group)
            self._commit_seconds = 0.8 * self._commit_seconds + 0.2 * (time.monotonic() - started)
            if stop:
                for _, fut, _ in pending:
                    fut.set_exception(RuntimeError("store closed"))
                return

    def _commit_group(self, group) -> None:
        results = []
        seq_before, vv_before = self.seq, dict(self._wvv)
        try:
            txn = self.env.begin(write=True, db=self.docs)
            for fn, fut, _ in group:
                w = WriteTxn(self, txn)
                try:
                    results.append((fut, w.atomic(lambda w=w, fn=fn: fn(w)), None))
                except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                    if not isinstance(e, MongoError):
                        log.exception("write failed")
                    results.append((fut, None, e))
            txn.put(b"seq", _SEQ.pack(self.seq), db=self.meta)
            txn.put(b"hlc", _SEQ.pack(self.hlc.last), db=self.meta)
            txn.commit()
        except lmdb.Error as e:
            log.error("LMDB commit failed: %s", e)
            try:
                txn.abort()
            except lmdb.Error:
                pass
            # the clock is not put back: stamps handed out stay handed out
            self.seq, self._wvv = seq_before, vv_before
            self._group_records = []
            self._group_done()
            self._wcat = dict(self.catalog)
            self._forget_fresh(0)
            err = _err(1, "InternalError", f"storage commit failed: {e}")
            for fut, _, _ in results or [(f, None, None) for _, f, _ in group]:
                fut.set_exception(err)
            return
        self.catalog = dict(self._wcat)
        self._committed_vv = {**self._wvv, self.node_id: (self.seq, self.hlc.last)}
        self.operation_hlc = max(h for _, h in self._committed_vv.values())
        if self._group_records:
            if self._recent and self._group_records[0].seq != self._recent[-1].seq + 1:
                self._recent = []   # the sequence jumped (a snapshot's vector): contiguous runs only
            elif len(self._recent) + len(self._group_records) > 2 * _RECENT:
                self._recent = self._recent[-_RECENT:]   # a new list: a reader keeps the one it has
            self._recent.extend(self._group_records)
            self._group_records = []
        self._group_done()
        self._fresh.clear()
        self.commits += 1
        self.committed_ops += len(group)
        for fut, value, exc in results:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    def _group_done(self) -> None:
        with self._hlc_lock:
            self._group_stamp = None

    def stamp_hlc(self) -> int:
        """A new HLC for a write of this node (writer thread)."""
        with self._hlc_lock:
            ts = self.hlc.now()
            if self._group_stamp is None:
                self._group_stamp = ts
            self._stamped_alone = self._alone
            return ts

    def set_alone(self, alone: bool) -> concurrent.futures.Future | None:
        """(ReplicaStore; the loop) While alone, an insert keeps no stamp as its metadata:
        the document counts as older than anything to come, as it does once compaction
        has passed it. On the way out, the writes stamped alone are committed when the
        future returned resolves (a no-op write queued behind them)."""
        with self._hlc_lock:
            was, self._alone = self._alone, alone
        return self.submit(lambda w: None) if was and not alone else None

    def covered(self) -> int:
        """An HLC at or below which every write of this node is committed and above which
        every later one will be (ReplicaStore; any thread)."""
        with self._hlc_lock:
            if self._group_stamp is not None:
                return self._group_stamp - 1
            return self.hlc.now()

    def observe(self, hlc: int) -> None:
        """Moves the clock past a peer's timestamp (ReplicaStore; any thread)."""
        with self._hlc_lock:
            self.hlc.observe(hlc)

    def _forget_fresh(self, keep: int) -> None:
        """Drops handles opened by an aborted transaction (LMDB closed them with it)."""
        for name in self._fresh[keep:]:
            self._index_dbs.pop(name, None)
        del self._fresh[keep:]

    def index_db(self, txn, ns: str, index: str, create: bool = False):
        name = index_db_name(ns, index)
        db = self._index_dbs.get(name)
        if db is None and create:
            try:
                db = self._index_dbs[name] = self.env.open_db(name, txn=txn)
                self._fresh.append(name)   # the handle dies with its transaction if that aborts
            except lmdb.DbsFullError:
                raise _err(67, "CannotCreateIndex", f"too many indexes on this node "
                                                   f"(db.max_indexes = {self.max_indexes})") from None
        return db

    # ---- reads ----

    def read(self):
        return self.env.begin(db=self.docs)

    def get_raw(self, txn, ns: str, _id) -> bytes | None:
        data = txn.get(ns_prefix(ns) + keys.encode(_id), db=self.docs)
        if data is not None:
            self.doc_reads += 1
        return data

    def get(self, txn, ns: str, _id) -> dict | None:
        data = txn.get(ns_prefix(ns) + keys.encode(_id), db=self.docs)
        if data is None:
            return None
        self.doc_reads += 1
        return bson.decode(data)

    def scan(self, txn, ns: str, flt: dict, matcher, stats: ScanStats | None = None,
             budget: int | None = None, catalog: dict | None = None, limit: int | None = None,
             raw: dict | None = None):
        """The documents of ns that match (matcher is the compiled flt); the filter's
        index-able parts pick an index, the matcher decides on every candidate."""
        stats = stats if stats is not None else ScanStats()
        coll = (catalog if catalog is not None else self.catalog).get(ns)
        if coll is None:
            return []
        prefix = ns_prefix(ns)
        best = _best_plan(coll, flt)
        out: list[dict] = []
        docs_db = self.docs
        cur_docs = txn.cursor(docs_db)
        decode = bson.decode

        def consider(data: bytes) -> bool:
            stats.docs += 1
            self.doc_reads += 1
            if budget is not None and stats.docs > budget:
                raise TooBig
            doc = decode(data)
            if matcher is None or matcher(doc):
                out.append(doc)
                if raw is not None:  # the stored bytes go into the reply as they are
                    raw[id(doc)] = (doc, data)
                return limit is not None and len(out) >= limit
            return False

        if best is None:
            cur = cur_docs
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    if consider(v):
                        break
            return out
        stats.plan, stats.index = "IXSCAN", best.index
        seen: set[bytes] = set()
        if best.index == "_id_":
            cur = cur_docs
            for start, stop in best.ranges:
                if not cur.set_range(prefix + start):
                    continue
                for k, v in cur:
                    if (stop is not None and k >= prefix + stop) or not k.startswith(prefix):
                        break
                    stats.keys += 1
                    if k in seen:
                        continue
                    seen.add(k)
                    if consider(v):
                        return out
            return out
        idx = coll.index(best.index)
        db = self.index_db(txn, ns, idx.name)
        cur = txn.cursor(db)
        for start, stop in best.ranges:
            if not cur.set_range(start):
                continue
            for k, v in cur:
                if stop is not None and k >= stop:
                    break
                stats.keys += 1
                id_key = v if idx.unique else _id_key_of(k, len(idx.fields))
                if id_key in seen:
                    continue
                seen.add(id_key)
                data = txn.get(prefix + id_key, db=docs_db)
                if data is not None and consider(data):
                    return out
        return out

    def scan_sorted(self, txn, ns: str, flt: dict, matcher, order: list[tuple[str, int]], limit: int,
                    stats: ScanStats, budget: int | None = None, raw: dict | None = None) -> list[dict] | None:
        """The first `limit` matches in `order`, read in index order (paging queries), or
        None when no index gives that order: then the caller sorts in memory."""
        coll = self.catalog.get(ns)
        if coll is None:
            return []
        query = collation.plan_collation(flt)   # an index in another collation's order is no use
        candidates = [Index("_id_", (("_id", 1),), True)] * (not query) + \
            [i for i in coll.indexes if not i.multikey and i.collation == query]
        bounds = collation.index_bounds(flt)(query)
        found = None
        for idx in candidates:
            # Leading fields the filter pins to one value keep the order of the fields after them
            # (comments of one thread by time: index {thread: 1, at: -1}).
            pinned = 0
            while pinned < len(idx.fields) and (b := bounds.get(idx.fields[pinned][0])) is not None \
                    and b.points is not None and len(b.points) == 1:
                pinned += 1
            for m in range(pinned, -1, -1):
                head = idx.fields[m:m + len(order)]
                if len(head) != len(order) or any(f != o[0] for (f, _), o in zip(head, order, strict=True)):
                    continue
                same = [d == o[1] for (_, d), o in zip(head, order, strict=True)]
                if all(same) or not any(same):
                    found = (idx, not same[0], m)
                break
            if found:
                break
        if found is None:
            return None
        idx, reverse, pinned = found
        plan = keys.plan_index(idx.name, idx.fields, idx.multikey, bounds) if bounds else None
        if plan is not None and len(plan.ranges) != 1:
            return None  # several ranges ($in): merging them in order is not done here
        start, stop = plan.ranges[0] if plan else (b"", None)
        prefix = ns_prefix(ns)
        is_id = idx.name == "_id_"
        db = self.docs if is_id else self.index_db(txn, ns, idx.name)
        if is_id:
            start, stop = prefix + start, prefix + stop if stop is not None else keys.prefix_end(prefix)
        cur = txn.cursor(db)
        if reverse:
            if stop is not None and cur.set_range(stop):
                positioned = cur.prev()   # the last key before stop
            else:
                positioned = cur.last()
            items = cur.iterprev() if positioned else iter(())
        else:
            items = iter(cur) if cur.set_range(start) else iter(())
        out: list[dict] = []
        stats.plan, stats.index, stats.sorted = "IXSCAN", idx.name, True
        nfields = pinned + len(order)
        for k, v in items:
            if k < start or (stop is not None and k >= stop):
                break
            stats.keys += 1
            key = k[len(prefix):] if is_id else k
            if not _exactly_ordered(key, nfields):
                stats.keys = stats.docs = 0
                stats.sorted = False
                return None  # an object, array or regex value: its key order is not MongoDB's
            data = v if is_id else txn.get(prefix + (v if idx.unique else _id_key_of(k, len(idx.fields))),
                                           db=self.docs)
            if data is None:
                continue
            stats.docs += 1
            self.doc_reads += 1
            if budget is not None and stats.docs > budget:
                raise TooBig
            doc = bson.decode(data)
            if matcher is None or matcher(doc):
                out.append(doc)
                if raw is not None:
                    raw[id(doc)] = (doc, data)
                if len(out) >= limit:
                    break
        return out

    # The key layout, for the services that keep their own documents here and read them
    # by key (the webhook queue): an _id's bytes (type and value, in order), and a
    # document's key in ``docs`` (without ``_id``: the prefix of every key of ns).
    id_key = staticmethod(keys.encode)

    @staticmethod
    def key(ns: str, _id=_NO_ID) -> bytes:
        return ns_prefix(ns) if _id is _NO_ID else ns_prefix(ns) + keys.encode(_id)

    def count_keys(self, txn, ns: str, budget: int | None = None) -> int:
        """The number of documents in ns, from the keys alone."""
        prefix = ns_prefix(ns)
        cur = txn.cursor(self.docs)
        n = 0
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                n += 1
                if budget is not None and n > budget:
                    raise TooBig
        return n

    # ---- sizes (metrics) ----

    def size_bytes(self) -> int:
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def oplog_length(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.oplog)["entries"]

    def oplog_records(self, txn=None) -> list[dict]:
        """Every oplog record as a dict: a replicated one as {o, s, ts, ns, op, id, w}."""
        with (txn or self.env.begin()) as t:
            return [_oplog_dict(k, v) for k, v in t.cursor(self.oplog)]

    # ---- replication (farts.db.replica.ReplicaStore) ----

    def applied(self) -> dict[str, tuple[int, int]]:
        """origin -> (seq, HLC) of the last record applied here, as committed."""
        return dict(self._committed_vv)

    def apply_remote(self, records: list) -> concurrent.futures.Future:  # ReplicaStore
        """Applies other nodes' records (``farts.db.replica.Record``, each origin's in seq
        order): each in its own nested transaction with its origin's applied position, all
        in one commit. Resolves to each record's outcome (a merge outcome, "duplicate" if it
        was applied before, or the exception that undid it: the records of that origin after
        it are left for later). They are tried all in one nested transaction first (the
        usual case: one transaction's cost, not one per record), then, if one failed, each
        in its own."""
        def run(w: WriteTxn) -> list:
            positions = dict(self._wvv)
            try:
                return w.atomic(lambda: [w.apply_record(r) for r in records])
            except Exception:   # noqa: BLE001 - undone: applied one by one below, to keep the others
                self._wvv = positions
            failed: set[str] = set()
            out: list = []
            for r in records:
                if r.origin in failed:
                    out.append(None)
                    continue
                try:
                    out.append(w.atomic(lambda r=r: w.apply_record(r)))
                except Exception as e:  # noqa: BLE001 - that record is undone; its origin waits
                    if not isinstance(e, MongoError):
                        log.exception("applying %s:%s failed", r.origin, r.seq)
                    failed.add(r.origin)
                    out.append(e)
            return out
        return self.submit(run)

    def records_after(self, origin: str, seq: int, limit: int) -> list | None:
        """Retained records of origin after seq, as ``farts.db.replica.Record``; None when
        seq + 1 is no longer retained."""
        recent = self._recent
        if origin == self.node_id and recent and recent[0].seq <= seq + 1 <= recent[-1].seq + 1 \
                and seq >= self._own_truncated:
            start = seq + 1 - recent[0].seq
            return recent[start:start + limit]
        with self.env.begin() as txn:
            out = self.records_after_in(txn, origin, seq, limit)
        if not out and seq < self._committed_vv.get(origin, (0, 0))[0]:
            return None
        return out

    def records_after_in(self, txn, origin: str, seq: int, limit: int) -> list:
        prefix = origin.encode() + b"\0"
        out: list = []
        cur = txn.cursor(self.oplog)
        if cur.set_range(prefix + _SEQ.pack(seq + 1)):
            for k, v in cur:
                if not k.startswith(prefix) or len(out) >= limit:
                    break
                r = _oplog_record(k, v)
                if r.seq != seq + 1 + len(out):
                    break
                out.append(r)
        return out

    def retained(self, origin: str) -> int:
        prefix = origin.encode() + b"\0"
        n = 0
        with self.env.begin(db=self.oplog) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    n += 1
        return n

    def first_retained(self, origin: str) -> int:
        prefix = origin.encode() + b"\0"
        with self.env.begin(db=self.oplog) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix) and cur.key().startswith(prefix):
                return _SEQ.unpack(cur.key()[len(prefix):])[0]
        return 0

    def truncate(self, origin: str, upto: int) -> concurrent.futures.Future:
        """Drops the oplog records of origin up to seq upto (the oplog's retention)."""
        prefix = origin.encode() + b"\0"

        def run(w: WriteTxn) -> int:
            if origin == self.node_id:   # set before the commit: records_after reads the oplog early, never late
                self._own_truncated = max(self._own_truncated, upto)
            cur = w.txn.cursor(self.oplog)
            n = 0
            if cur.set_range(prefix):
                while cur.key().startswith(prefix) and _SEQ.unpack(cur.key()[len(prefix):])[0] <= upto:
                    n += 1
                    if not cur.delete():
                        break
            return n
        return self.submit(run)

    def snapshot(self):
        """(version vector, iterator of (ns, _id, merge state)) from one read transaction,
        kept open while the iterator is (LMDB readers see one point in time); a state may
        be in a short form (``_snapshot_entry``; ``install_snapshot`` reads them). The catalog
        comes first: ("", namespace, {row, cs, drop}) (``WriteTxn.install_catalog``)."""
        txn = self.env.begin()
        vv = {o: seq for o, (seq, _) in self._committed_vv.items()}
        for k, v in txn.cursor(self.meta).iternext():
            if k.startswith(b"vv:"):
                vv[k[3:].decode()] = _POS.unpack(v)[0]
        seq = txn.get(b"seq", db=self.meta)
        vv[self.node_id] = _SEQ.unpack(seq)[0] if seq else 0

        def docs():
            try:
                for name, entry in _catalog_entries(txn, self.meta):
                    yield "", name, entry
                meta = txn.cursor(self.rmeta)
                has_meta = meta.first()
                for k, v in txn.cursor(self.docs).iternext():
                    while has_meta and meta.key() < k:     # metadata of a deleted document
                        yield _snapshot_entry(meta.key(), None, meta.value())
                        has_meta = meta.next()
                    extra = None
                    if has_meta and meta.key() == k:
                        extra = meta.value()
                        has_meta = meta.next()
                    yield _snapshot_entry(k, v, extra)
                while has_meta:
                    yield _snapshot_entry(meta.key(), None, meta.value())
                    has_meta = meta.next()
            finally:
                txn.abort()
        return vv, docs()

    def install_snapshot(self, vv: dict[str, int], docs) -> concurrent.futures.Future:
        """Replaces every document with a peer's snapshot (``docs``: (ns, _id, merge state)),
        sets the applied positions to its vector, then re-applies the retained records it
        lacks (this node's own later writes among them). The catalog (collections, index
        definitions, drops) becomes the peer's too; index entries are rebuilt."""
        def run(w: WriteTxn) -> None:
            txn, st = w.txn, self
            if vv.get(st.node_id, 0) < st._own_truncated:
                # Its vector predates records of this node already dropped here: installed,
                # the writes between would be lost. Refused; the peer sends a newer one.
                raise StaleSnapshot(f"snapshot has this node's records up to {vv.get(st.node_id, 0)}, "
                                    f"its oplog starts after {st._own_truncated}")
            for coll in list(st._wcat.values()):
                for idx in coll.indexes:
                    txn.drop(st.index_db(txn, coll.ns, idx.name), delete=False)
                w._set_collection(coll.ns, None)
            txn.drop(st.docs, delete=False)
            txn.drop(st.rmeta, delete=False)
            txn.drop(st.conflicts, delete=False)
            for k in [k for k, _ in txn.cursor(st.meta) if k.startswith((b"vv:", b"cs:", b"drop:"))]:
                txn.delete(k, db=st.meta)
            for ns, _id, state in docs:
                if ns == "":
                    w.install_catalog(_id, state)
                    continue
                coll = w.collection(ns)
                id_key = keys.encode(_id)
                doc = state.get("v")
                if doc is not None:
                    txn.put(ns_prefix(ns) + id_key, w._encode_doc(doc))
                    w._index_put(ns, coll, doc, id_key, None, resolve=True)
                if "i" in state:
                    txn.put(ns_prefix(ns) + id_key, _insert_meta(merge.Stamp.of(state["i"])), db=st.rmeta)
                elif "m" in state:
                    txn.put(ns_prefix(ns) + id_key, _rmeta_encode(_id, state), db=st.rmeta)
            st._wvv = {o: (seq, 0) for o, seq in vv.items() if o != st.node_id}
            for o, (seq, hlc) in st._wvv.items():
                txn.put(b"vv:" + o.encode(), _POS.pack(seq, hlc), db=st.meta)
            st.seq = max(st.seq, vv.get(st.node_id, 0))
            for origin in {k.split(b"\0", 1)[0].decode() for k, _ in txn.cursor(st.oplog)}:
                start = vv.get(origin, 0)
                for r in st.records_after_in(txn, origin, start, 1 << 62):
                    w.apply_record(r, position=origin != st.node_id)
        return self.submit(run, exclusive=True)

    def compact(self, stable: int, limit: int = 10_000) -> concurrent.futures.Future:
        """merge.compact on the documents with metadata (at most limit of them a call, each
        call going on where the last one stopped): what every node has passed is folded,
        metadata with nothing left in it is dropped (the document then counts as older than
        anything to come), stable tombstones go."""
        def run(w: WriteTxn) -> int:
            txn, n = w.txn, 0
            batch = []
            cur = txn.cursor(self.rmeta)
            if cur.set_range(self._compact_from):
                for item in cur:
                    batch.append(item)
                    if len(batch) >= limit:
                        break
            self._compact_from = batch[-1][0] + b"\0" if len(batch) >= limit else b""
            stable_bytes = _SEQ.pack(stable)
            for k, v in batch:
                n += 1
                if v[:4] == _INSERT_MARK:
                    # Made by one insert: compacted to nothing once stable, and until then
                    # there is nothing to fold (a later pass gets it): nothing is decoded
                    # (its HLC compares as bytes) and nothing is written.
                    if v[4:12] <= stable_bytes:
                        txn.delete(k, db=self.rmeta)
                    continue
                d = bson.decode(v)
                if "i" in d:   # the same, in the BSON form of earlier versions
                    if merge.Stamp.of(d["i"]).hlc <= stable:
                        txn.delete(k, db=self.rmeta)
                    continue
                data = txn.get(k, db=self.docs)
                _id, state = _rmeta_decode(v, bson.decode(data) if data is not None else None, d)
                new = merge.compact(state, stable)
                if new is None or (new["v"] is not None and "o" not in new and not new["m"]["w"]
                                   and not new["m"]["e"]):
                    txn.delete(k, db=self.rmeta)
                else:
                    txn.put(k, _rmeta_encode(_id, new), db=self.rmeta)
            self._compact_catalog(txn, stable)
            return n
        return self.submit(run)

    def _compact_catalog(self, txn, stable: int) -> None:
        """merge.catalog_compact on every catalog state, then drops the drop floors at or
        below stable (no write stamped below them can arrive any more)."""
        floors = {name: merge.Stamp.of(bson.decode(v)["s"]) for name, v in _meta_items(txn, self.meta, b"drop:")}
        for name, v in _meta_items(txn, self.meta, b"cs:"):
            floor = max((floors[n] for n in (name, _database_of(name)) if n in floors),
                        key=merge.Stamp.key, default=None)
            state = merge.catalog_compact(bson.decode(v)["s"], floor, stable)
            if state is None:
                txn.delete(b"cs:" + name.encode(), db=self.meta)
            else:
                txn.put(b"cs:" + name.encode(), bson.encode({"s": state}), db=self.meta)
        for name, floor in floors.items():
            if floor.hlc <= stable:
                txn.delete(b"drop:" + name.encode(), db=self.meta)


def _meta_items(txn, meta, prefix: bytes) -> list[tuple[str, bytes]]:
    out = []
    cur = txn.cursor(meta)
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            out.append((k[len(prefix):].decode(), v))
    return out


def _catalog_entries(txn, meta) -> list[tuple[str, dict]]:
    """(namespace, {row, cs, drop}): what the catalog holds of each, as stored."""
    entries: dict[str, dict] = {}
    for prefix, name in ((b"c:", "row"), (b"cs:", "cs"), (b"drop:", "drop")):
        for ns, v in _meta_items(txn, meta, prefix):
            entries.setdefault(ns, {})[name] = v
    return sorted(entries.items())


def _conflict_prefix(ns: str, idx: Index, k: bytes) -> bytes:
    return index_db_name(ns, idx.name) + b"\0" + struct.pack(">I", len(k)) + k


# A replicated operation's oplog record, written and read without BSON (the key holds its
# origin and seq): _INSERT_MARK (below), its HLC, the operation's letter, the namespace's
# length, the namespace, then the BSON {id, op} that travels (``Record.body``).
_OPLOG_HEAD = struct.Struct(">4sQcI")


def _oplog_value(hlc: int, op: str, ns: str, body: bytes) -> bytes:
    name = ns.encode()
    return _OPLOG_HEAD.pack(_INSERT_MARK, hlc, op.encode(), len(name)) + name + body


def _oplog_record(key: bytes, value: bytes) -> Record:
    """A ``farts.db.replica.Record`` of the oplog; one without an effect (a write from
    before replication) travels as a no-op, so the sequence stays contiguous."""
    if value[:4] == _INSERT_MARK:
        _, hlc, _, n = _OPLOG_HEAD.unpack_from(value)
        at = _OPLOG_HEAD.size
        return Record(key[:-9].decode(), _SEQ.unpack(key[-8:])[0], hlc, value[at:at + n].decode(),
                      body=value[at + n:])
    d = bson.decode(value)
    if d.get("w") is None:
        return Record(d["o"], int(d["s"]), int(d["ts"]), d["ns"], d.get("id"), {"op": "n"})
    return Record(d["o"], int(d["s"]), int(d["ts"]), d["ns"], d.get("id"), body=d["w"])


def _oplog_dict(key: bytes, value: bytes) -> dict:
    if value[:4] != _INSERT_MARK:
        return bson.decode(value)
    r = _oplog_record(key, value)
    op = _OPLOG_HEAD.unpack_from(value)[2].decode()
    return {"o": r.origin, "s": r.seq, "ts": r.hlc, "ns": r.ns, "op": op, "id": r.id, "w": r.body}


_I32 = struct.Struct("<i")
_INSERT_OP = b"\x02op\x00\x02\x00\x00\x00i\x00\x03doc\x00"


def _insert_body(_id, data: bytes) -> bytes:
    """BSON {id: _id, op: {op: "i", doc: data}}: an insert's effect as it travels, put
    together around the document's bytes (``bson.encode`` of the same, without encoding
    the document again)."""
    head = bson.encode({"id": _id})[4:-1]
    op = _I32.pack(len(_INSERT_OP) + len(data) + 5) + _INSERT_OP + data + b"\x00"
    return _I32.pack(len(head) + len(op) + 9) + head + b"\x03op\x00" + op + b"\x00"


# A document made by one insert keeps only that insert's stamp as its metadata, in a fixed
# binary form (no BSON document starts with a length of 0xffffffff): written, compacted
# and snapshotted without a BSON encode or decode. Its _id is the document's (a document
# with this form exists: any later operation on it writes the whole state).
_INSERT_MARK = b"\xff\xff\xff\xff"
_INSERT_STAMP = struct.Struct(">QQ")   # after the mark: HLC (first: compaction compares its bytes), seq


def _insert_meta(stamp: merge.Stamp) -> bytes:
    return _INSERT_MARK + _INSERT_STAMP.pack(stamp.hlc, stamp.seq) + stamp.origin.encode()


def _insert_stamp(data: bytes) -> merge.Stamp | None:
    """The stamp of an insert's short metadata, None for a whole state."""
    if data[:4] != _INSERT_MARK:
        return None
    hlc, seq = _INSERT_STAMP.unpack_from(data, 4)
    return merge.Stamp(hlc, data[20:].decode(), seq)


def _rmeta_encode(_id, state: dict) -> bytes:
    """A document's merge state without its value (that is in docs), with its _id (for a
    deleted document's tombstone)."""
    return bson.encode({"id": _id, "s": {k: v for k, v in state.items() if k != "v"}})


def _rmeta_decode(data: bytes, doc: dict | None, decoded: dict | None = None) -> tuple[object, dict]:
    stamp = _insert_stamp(data) if decoded is None else None
    if stamp is not None:   # the state an insert of doc made on nothing
        return doc["_id"], merge.apply(None, stamp, {"op": "i", "doc": _copy(doc)}).state
    d = bson.decode(data) if decoded is None else decoded
    if "i" in d:   # the same, in the BSON form of earlier versions
        return d["id"], merge.apply(None, merge.Stamp.of(d["i"]), {"op": "i", "doc": _copy(doc)}).state
    d["s"]["v"] = doc
    return d["id"], d["s"]


def _snapshot_entry(key: bytes, data: bytes | None, meta: bytes | None) -> tuple[str, object, dict]:
    """(ns, _id, state): the document alone ({v}) when it has no metadata, with its
    insert's stamp ({v, i}) when one insert made it, else its whole merge state."""
    ns = key.split(b"\0", 1)[0].decode()
    doc = bson.decode(data) if data is not None else None
    if meta is None:
        return ns, doc["_id"], {"v": doc}
    stamp = _insert_stamp(meta)
    if stamp is not None:
        return ns, doc["_id"], {"v": doc, "i": stamp.to_bson()}
    d = bson.decode(meta)
    if "i" in d:
        return ns, d["id"], {"v": doc, "i": d["i"]}
    d["s"]["v"] = doc
    return ns, d["id"], d["s"]


def _best_plan(coll: Collection, flt: dict) -> keys.Scan | None:
    """The index (or the _id key range) that narrows flt the most, if any does."""
    if not flt:
        return None
    bounds = collation.index_bounds(flt)
    best = keys.plan_index("_id_", [("_id", 1)], False, bounds(()))
    for idx in coll.indexes:
        s = keys.plan_index(idx.name, idx.fields, idx.multikey, bounds(idx.collation))
        if s and (best is None or (s.point_fields, s.ranged) > (best.point_fields, best.ranged)):
            best = s
    return best


_EXACT_RANKS = frozenset({keys.R_MINKEY, keys.R_NULL, keys.R_NUMBER, keys.R_STRING, keys.R_BINARY,
                          keys.R_OBJECTID, keys.R_BOOL, keys.R_DATE, keys.R_TIMESTAMP, keys.R_MAXKEY})


def _exactly_ordered(key: bytes, nfields: int) -> bool:
    pos = 0
    for _ in range(nfields):
        rank = key[pos]
        if (rank if rank < 0x80 else 255 - rank) not in _EXACT_RANKS:
            return False
        pos = _component_end(key, pos)
    return True


def _id_key_of(index_key: bytes, nfields: int) -> bytes:
    """The _id key after the field components of a non-unique index key."""
    pos = 0
    for _ in range(nfields):
        pos = _component_end(index_key, pos)
    return index_key[pos:]


_FIXED = {keys.R_MINKEY: 1, keys.R_NULL: 1, keys.R_NUMBER: 13, keys.R_OBJECTID: 13, keys.R_BOOL: 2,
          keys.R_DATE: 9, keys.R_TIMESTAMP: 9, keys.R_MAXKEY: 1}


def _component_end(key: bytes, pos: int) -> int:
    rank = key[pos]
    inverted = rank >= 0x80
    if inverted:
        rank = 255 - rank
    n = _FIXED.get(rank)
    if n is not None:
        return pos + n
    if rank == keys.R_BINARY:
        raw = key[pos + 1:pos + 5]
        length = struct.unpack(">I", bytes(255 - b for b in raw) if inverted else raw)[0]
        return pos + 6 + length
    terms = 2 if rank == keys.R_REGEX else 1
    zero = 0xFF if inverted else 0x00
    p = pos + 1
    for _ in range(terms):
        while True:
            if key[p] == zero and key[p + 1] == zero:
                p += 2
                break
            p += 2 if key[p] == zero else 1
    return p


class WriteTxn:
    """What a write function sees: document primitives inside the writer's transaction."""

    def __init__(self, store: Store, txn) -> None:
        self.store = store
        self.txn = txn
        self._frames: list[dict] = []
        self.bypass_validation = False   # a command's bypassDocumentValidation

    @property
    def catalog(self) -> dict[str, Collection]:
        return self.store._wcat

    def atomic(self, fn):
        """Runs fn in a nested transaction: all of its writes, or none of them."""
        st = self.store
        parent = self.txn
        child = st.env.begin(write=True, parent=parent, db=st.docs)
        frame = {"cat": {}, "seq": st.seq, "fresh": len(st._fresh)}
        self.txn = child
        self._frames.append(frame)
        try:
            result = fn()
        except BaseException:
            child.abort()
            for ns, old in frame["cat"].items():
                if old is None:
                    st._wcat.pop(ns, None)
                else:
                    st._wcat[ns] = old
            st.seq = frame["seq"]
            while st._group_records and st._group_records[-1].seq > st.seq:
                st._group_records.pop()
            st._forget_fresh(frame["fresh"])
            raise
        else:
            child.commit()
            if len(self._frames) > 1:
                for ns, old in frame["cat"].items():
                    self._frames[-2]["cat"].setdefault(ns, old)
            return result
        finally:
            self.txn = parent
            self._frames.pop()

    def _set_collection(self, ns: str, coll: Collection | None) -> None:
        cat = self.store._wcat
        if self._frames:
            self._frames[-1]["cat"].setdefault(ns, cat.get(ns))
        key = b"c:" + ns.encode()
        if coll is None:
            cat.pop(ns, None)
            self.txn.delete(key, db=self.store.meta)
        else:
            cat[ns] = coll
            self.txn.put(key, coll.encode(), db=self.store.meta)

    def collection(self, ns: str, create: bool = True) -> Collection | None:
        coll = self.store._wcat.get(ns)
        if coll is None and create:
            coll = Collection(ns)
            self._set_collection(ns, coll)
        return coll

    def _stamp(self) -> merge.Stamp:
        st = self.store
        st.seq += 1
        return merge.Stamp(st.stamp_hlc(), st.node_id, st.seq)

    def log(self, ns: str, op: str, _id=None, stamp: merge.Stamp | None = None, body: bytes | None = None,
            **fields) -> None:
        """The oplog record of a write. Replicated (``e``: the effect, or ``body``: the BSON
        {id, op} of it, made by the caller): the record as it travels, in the oplog's binary
        form (``_oplog_value``); else the command's fields, in BSON."""
        st = self.store
        stamp = stamp or self._stamp()
        key = st._origin + _SEQ.pack(stamp.seq)
        if body is None and "e" in fields:
            body = bson.encode({"id": _id, "op": fields["e"]})
        if body is not None:   # records_after ships these bytes
            st._group_records.append(Record(st.node_id, stamp.seq, stamp.hlc, ns, _id, body=body))
            self.txn.put(key, _oplog_value(stamp.hlc, op, ns, body), db=st.oplog)
            return
        rec = {"o": st.node_id, "s": Int64(stamp.seq), "ts": Int64(stamp.hlc), "ns": ns, "op": op}
        if _id is not None:
            rec["id"] = _id
        rec.update(fields)
        self.txn.put(key, bson.encode(rec), db=st.oplog)

    # -- documents --

    def get(self, ns: str, _id) -> dict | None:
        return self.store.get(self.txn, ns, _id)

    def find(self, ns: str, flt: dict, matcher, limit: int | None = None) -> list[dict]:
        return self.store.scan(self.txn, ns, flt, matcher, catalog=self.store._wcat, limit=limit)

    def _encode_doc(self, doc: dict) -> bytes:
        data = bson.encode(doc)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise _err(10334, "BSONObjectTooLarge",
                       f"document is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")
        return data

    def _dup(self, ns: str, index: Index, values: tuple) -> MongoError:
        pattern = dict(index.fields)
        key_value = {f: v for (f, _), v in zip(index.fields, values, strict=True)}
        shown = ", ".join(f"{f}: {_show(v)}" for f, v in key_value.items())
        e = _err(11000, "DuplicateKey", f"E11000 duplicate key error collection: {self.store.display_ns(ns)} "
                                        f"index: {index.name} dup key: {{ {shown} }}")
        e.details = {"keyPattern": pattern, "keyValue": key_value}
        return e

    def _index_put(self, ns: str, coll: Collection, doc: dict, id_key: bytes, old: dict | None,
                   resolve: bool = False, only: set[str] | None = None) -> None:
        """Adds doc's index keys (and removes old's that it no longer has). A unique key held
        by another document is a DuplicateKey error, or with ``resolve`` (a replicated write:
        it happened elsewhere and cannot be refused) a conflict resolved by ``_unique_put``.
        ``only``: the names of the indexes to fill (an index being built)."""
        txn = self.txn
        for pos, idx in enumerate(coll.indexes):
            if only is not None and idx.name not in only:
                continue
            if old is not None and all(_same_scalar(old.get(top), doc.get(top)) for top in _tops(idx)):
                continue   # the update left every indexed field alone
            db = self.store.index_db(txn, ns, idx.name)
            new_keys, multikey = collation.index_keys(doc, idx)
            old_keys = collation.index_keys(old, idx)[0] if old is not None else {}
            for k in old_keys.keys() - new_keys.keys():
                self._index_delete(ns, idx, db, k, id_key)
            for k, values in new_keys.items():
                if k in old_keys:
                    continue
                if idx.unique:
                    self._unique_put(ns, idx, db, k, id_key, values, resolve)
                else:
                    txn.put(k + id_key, b"", db=db)
            if multikey and not idx.multikey:
                coll = replace(coll, indexes=coll.indexes[:pos] + (replace(idx, multikey=True),) +
                               coll.indexes[pos + 1:])
                self._set_collection(ns, coll)

    def _unique_put(self, ns: str, idx: Index, db, k: bytes, id_key: bytes, values: tuple, resolve: bool) -> None:
        txn = self.txn
        if txn.put(k, id_key, db=db, overwrite=False):
            return
        holder = txn.get(k, db=db)
        if holder == id_key:
            return
        if not resolve:
            raise self._dup(ns, idx, values)
        # Two nodes' documents share a unique key. Both stay (each converges by the merge
        # rules); the one with the smaller _id key holds the index entry, on every node, and
        # the other is listed in conflicts until one of them changes: reported, not refused.
        winner, loser = sorted((holder, id_key))
        txn.put(k, winner, db=db)
        txn.put(_conflict_prefix(ns, idx, k) + loser, b"", db=self.store.conflicts)
        self.store.unique_conflicts += 1
        log.warning("unique index conflict between nodes' writes: %s index %s %s: the document with the "
                    "smaller _id holds the index entry", self.store.display_ns(ns), idx.name, values)

    def _index_delete(self, ns: str, idx: Index, db, k: bytes, id_key: bytes) -> None:
        txn = self.txn
        if not idx.unique:
            txn.delete(k + id_key, db=db)
            return
        prefix = _conflict_prefix(ns, idx, k)
        if txn.get(k, db=db) != id_key:          # a conflict's loser lets go of the key
            txn.delete(prefix + id_key, db=self.store.conflicts)
            return
        cur = txn.cursor(self.store.conflicts)
        if cur.set_range(prefix) and cur.key().startswith(prefix):   # the next smallest takes over
            txn.put(k, cur.key()[len(prefix):], db=db)
            cur.delete()
        else:
            txn.delete(k, db=db)

    def _forget_conflicts(self, ns: str, idx: Index) -> None:
        prefix = index_db_name(ns, idx.name) + b"\0"
        cur = self.txn.cursor(self.store.conflicts)
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if not cur.delete():
                    break

    def insert(self, ns: str, doc: dict, upsert: tuple[dict, dict] | None = None) -> dict:
        """``upsert``: (the filter's seed, the update) when an upsert inserted doc."""
        if "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        _id = doc["_id"]
        if isinstance(_id, (list, Regex)) or type(_id).__name__ == "Pattern":
            raise _err(2, "BadValue", f"can't use {'an array' if isinstance(_id, list) else 'a regex'} for _id")
        coll = self.collection(ns)
        if coll.options and not self.bypass_validation and validation.check_write(coll.options, None, doc):
            self.store.validation_warnings += 1
        id_key = keys.encode(_id)
        key = ns_prefix(ns) + id_key
        if not self.store.replicated:
            data = self._encode_doc(doc)
            if not self.txn.put(key, data, overwrite=False):
                raise self._dup(ns, Index("_id_", (("_id", 1),), True), (_id,))
            self._index_put(ns, coll, doc, id_key, None)
            self.log(ns, "i", _id, doc=doc)
            return doc
        stamp = self._stamp()
        if upsert is not None and not is_replacement(upsert[1]):
            effect = merge.upsert_effect(doc, upsert[0], upsert[1], self._ctx(stamp))
            if self.txn.get(key) is not None:   # before merging into its state
                raise self._dup(ns, Index("_id_", (("_id", 1),), True), (_id,))
            doc = self._merge(ns, _id, id_key, None, stamp, effect)   # what every node will have
            data = self._encode_doc(doc)
            self.txn.put(key, data)
            body = None
        else:
            # The usual insert: the document as every node will have it (its _id first, as
            # merge's _create makes it) is put first (a duplicate fails there, before any other
            # write); the stamp alone is its metadata (_insert_meta; none while this node is
            # alone: set_alone) unless a deleted document's state is there, which it is
            # merged with.
            if next(iter(doc)) != "_id":
                doc = {"_id": _id, **doc}
            data = self._encode_doc(doc)
            if not self.txn.put(key, data, overwrite=False):
                raise self._dup(ns, Index("_id_", (("_id", 1),), True), (_id,))
            effect = {"op": "i", "doc": doc}
            body = _insert_body(_id, data)
            rmeta = self.store.rmeta
            if (self.txn.get(key, db=rmeta) is not None if self.store._stamped_alone else
                    not self.txn.put(key, _insert_meta(stamp), db=rmeta, overwrite=False)):
                doc = self._merge(ns, _id, id_key, None, stamp, effect)
                data = self._encode_doc(doc)
                self.txn.put(key, data)
        self._index_put(ns, coll, doc, id_key, None)
        self.log(ns, "i", _id, stamp=stamp, body=body, e=effect)
        return doc

    def replace(self, ns: str, old: dict, new: dict, op: dict) -> None:
        """Writes new over old (same _id); op is the oplog record's body."""
        coll = self.collection(ns)
        if coll.options and not self.bypass_validation and validation.check_write(coll.options, old, new):
            self.store.validation_warnings += 1
        id_key = keys.encode(old["_id"])
        stamp = None
        if self.store.replicated:
            stamp = self._stamp()
            op["e"] = merge.effect_of(op["u"], old, new, self._ctx(stamp)) if op["op"] == "u" else \
                {"op": "r", "doc": new}
            new = self._merge(ns, old["_id"], id_key, old, stamp, op["e"])
        data = self._encode_doc(new)
        self.txn.put(ns_prefix(ns) + id_key, data)
        self._index_put(ns, coll, new, id_key, old)
        self.log(ns, op.pop("op"), old["_id"], stamp=stamp, **op)

    def delete(self, ns: str, doc: dict) -> None:
        coll = self.collection(ns)
        id_key = keys.encode(doc["_id"])
        txn = self.txn
        for idx in coll.indexes:
            db = self.store.index_db(txn, ns, idx.name)
            for k in collation.index_keys(doc, idx)[0]:
                self._index_delete(ns, idx, db, k, id_key)
        txn.delete(ns_prefix(ns) + id_key)
        stamp, effect = None, {}
        if self.store.replicated:
            stamp, effect = self._stamp(), {"e": {"op": "d"}}
            self._merge(ns, doc["_id"], id_key, doc, stamp, effect["e"])
        self.log(ns, "d", doc["_id"], stamp=stamp, **effect)

    # -- replication --

    def _ctx(self, stamp: merge.Stamp) -> dict:
        """This node's version vector before the write stamped so (what a $pull had seen)."""
        return {o: seq for o, (seq, _) in self.store._wvv.items()} | {self.store.node_id: stamp.seq - 1}

    def _merge(self, ns: str, _id, id_key: bytes, doc: dict | None, stamp: merge.Stamp, op: dict,
               outcome: list | None = None) -> dict | None:
        """Applies one replicated operation to the document's merge state (kept in rmeta);
        returns the document it makes (and appends the merge outcome to ``outcome``). A
        document without metadata was written before replication, or compacted: everything
        in it comes before what is to come."""
        st, key = self.store, ns_prefix(ns) + id_key
        raw = self.txn.get(key, db=st.rmeta)
        if raw is None and doc is None and op["op"] == "i" and "u" not in op:
            # The usual insert, on nothing: the document is the insert's (its _id first, as
            # merge's _create makes it), its state is kept as the stamp alone (_rmeta_decode).
            if outcome is not None:
                outcome.append("applied")
            self.txn.put(key, _insert_meta(stamp), db=st.rmeta)
            new = op["doc"]
            return new if next(iter(new)) == "_id" else {"_id": new["_id"], **new}
        if raw is not None:
            state = _rmeta_decode(raw, _copy(doc))[1]
        elif doc is not None:
            state = {"v": _copy(doc), "m": {"w": {}, "e": {}}, "t": Int64(0)}
        else:
            state = None
        applied = merge.apply(state, stamp, op, owned=True)
        if outcome is not None:
            outcome.append(applied.outcome)
        result = applied.state
        if result is None:
            self.txn.delete(key, db=st.rmeta)
            return None
        self.txn.put(key, _rmeta_encode(_id, result), db=st.rmeta)
        return result["v"]

    def apply_record(self, r, position: bool = True) -> str:
        """One record of another node (``farts.db.replica.Record``), exactly once: the
        document, its indexes, its metadata, the record (kept for shipping on) and the
        origin's applied position change together. ``position=False``: one of this
        node's own records played again over a snapshot (nothing but the document)."""
        st = self.store
        have = st._wvv.get(r.origin, (0, 0))[0]
        if position and r.seq <= have:
            return "duplicate"
        if position and r.seq != have + 1:
            raise _err(1, "InternalError", f"record {r.origin}:{r.seq} is not the next of its origin ({have})")
        if r.op["op"] == "c":
            self.apply_catalog(r.ns, r.stamp, r.op)
            outcome = "applied"
        elif r.op["op"] != "n":
            outcome = self._apply_effect(r)
        else:
            outcome = "applied"
        if not position:
            return outcome
        self.txn.put(r.origin.encode() + b"\0" + _SEQ.pack(r.seq), _oplog_value(r.hlc, r.op["op"], r.ns, r.encoded()),
                     db=st.oplog)
        self.txn.put(b"vv:" + r.origin.encode(), _POS.pack(r.seq, r.hlc), db=st.meta)
        if r.hlc > st.hlc.last:   # (a clock already past it stays as it is: no lock taken)
            st.observe(r.hlc)
        st._wvv[r.origin] = (r.seq, r.hlc)
        return outcome

    def _apply_effect(self, r) -> str:
        st = self.store
        if merge.below(r.stamp, self.drop_floor(r.ns)):
            return "dropped"   # its collection (or database) was dropped after it: wiped in every order
        coll = self.collection(r.ns)
        id_key = keys.encode(r.id)
        key = ns_prefix(r.ns) + id_key
        data = self.txn.get(key)
        old = bson.decode(data) if data is not None else None
        outcome: list[str] = []
        new = self._merge(r.ns, r.id, id_key, old, r.stamp, r.op, outcome)
        if new is not None:
            data = bson.encode(new)
            if len(data) > MAX_DOCUMENT_BYTES:
                # Writes of several nodes merged past the limit: kept (refusing would stop
                # replication from that node for good), logged and counted; a local write
                # to it gets BSONObjectTooLarge until it shrinks.
                st.oversized += 1
                log.warning("replicated document %s %r merged to %d bytes", st.display_ns(r.ns), r.id, len(data))
            self.txn.put(key, data)
            self._index_put(r.ns, coll, new, id_key, old, resolve=True)
        elif old is not None:
            for idx in coll.indexes:
                db = st.index_db(self.txn, r.ns, idx.name)
                for k in collation.index_keys(old, idx)[0]:
                    self._index_delete(r.ns, idx, db, k, id_key)
            self.txn.delete(key)
        return outcome[0]

    # -- catalog (run with submit(..., exclusive=True): they open sub-databases) --
    # With replication, each is a record of merge's CATALOG_TABLE, applied here as on
    # every other node (``apply_catalog``) once this node's own checks passed.

    def create_collection(self, ns: str, options: dict) -> None:
        if ns in self.store._wcat:
            raise _err(48, "NamespaceExists", f"Collection {self.store.display_ns(ns)} already exists.")
        if self.store.replicated:
            self._catalog_write(ns, {"op": "c", "c": "create", "options": options})
            return
        self._set_collection(ns, Collection(ns, (), options))
        self.log(ns, "c", cmd={"create": ns, "options": options})

    def set_options(self, ns: str, options: dict) -> None:
        """collMod: the collection's options (validator, view definition) replaced."""
        coll = self.store._wcat.get(ns)
        if coll is None:
            raise _err(26, "NamespaceNotFound", f"ns does not exist: {self.store.display_ns(ns)}")
        if self.store.replicated:
            self._catalog_write(ns, {"op": "c", "c": "collMod", "options": options})
            return
        self._set_collection(ns, replace(coll, options=options))
        self.log(ns, "c", cmd={"collMod": ns, "options": options})

    def drop_collection(self, ns: str) -> bool:
        coll = self.store._wcat.get(ns)
        if coll is None:
            return False
        if self.store.replicated:
            self._catalog_write(ns, {"op": "c", "c": "drop"})
            return True
        self._delete_documents(ns)
        for idx in coll.indexes:
            self._drop_index_db(ns, idx)
        self._set_collection(ns, None)
        self.log(ns, "c", cmd={"drop": ns})
        return True

    def drop_database(self, prefix: str) -> None:
        """Drops every collection whose namespace starts with prefix ("tenant$db.")."""
        if self.store.replicated:
            self._catalog_write(prefix, {"op": "c", "c": "dropDatabase"})
            return
        for ns in [n for n in self.store._wcat if n.startswith(prefix)]:
            self.drop_collection(ns)

    def create_index(self, ns: str, index: Index) -> bool:
        """False if an identical index exists; raises on a conflicting one or a duplicate."""
        coll = self.collection(ns)
        for existing in ((Index("_id_", (("_id", 1),), True),) + coll.indexes):
            same_name = existing.name == index.name
            same_key = existing.fields == index.fields and existing.collation == index.collation
            if same_name and same_key and (existing.unique == index.unique or existing.name == "_id_"):
                return False
            if same_name:
                raise _err(86, "IndexKeySpecsConflict",
                           f"An existing index has the same name as the requested index: {index.name}")
            if same_key:
                raise _err(85, "IndexOptionsConflict",
                           f"Index with name: {index.name} already exists with a different name or options")
        if self.store.replicated:
            self._catalog_write(ns, {"op": "c", "c": "createIndex", "index": _index_spec(index)})
            return True
        self._open_index_db(ns, index)
        self._set_collection(ns, replace(coll, indexes=coll.indexes + (index,)))
        self._build_indexes(ns, {index.name}, resolve=False)
        self.log(ns, "c", cmd={"createIndexes": ns, "index": index.spec()})
        return True

    def drop_index(self, ns: str, name: str) -> None:
        coll = self.store._wcat.get(ns)
        if name == "_id_":
            raise _err(72, "InvalidOptions", "cannot drop _id index")
        if coll is None or coll.index(name) is None:
            raise _err(27, "IndexNotFound", f"index not found with name [{name}]")
        if self.store.replicated:
            self._catalog_write(ns, {"op": "c", "c": "dropIndex", "name": name})
            return
        self._drop_index_db(ns, coll.index(name))
        self._set_collection(ns, replace(coll, indexes=tuple(i for i in coll.indexes if i.name != name)))
        self.log(ns, "c", cmd={"dropIndexes": ns, "index": name})

    def _open_index_db(self, ns: str, index: Index) -> None:
        db = self.store.index_db(self.txn, ns, index.name, create=True)
        self.txn.drop(db, delete=False)  # left over from an earlier index of the same name

    def _drop_index_db(self, ns: str, index: Index) -> None:
        self.txn.drop(self.store.index_db(self.txn, ns, index.name), delete=False)
        self._forget_conflicts(ns, index)

    def _build_indexes(self, ns: str, names: set[str], resolve: bool) -> None:
        """Puts every document of ns into the collection's indexes of these names (new ones)."""
        prefix = ns_prefix(ns)
        cur = self.txn.cursor(self.store.docs)
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                self._index_put(ns, self.store._wcat[ns], bson.decode(v), k[len(prefix):], None, resolve, names)

    def _delete_documents(self, ns: str) -> None:
        prefix = ns_prefix(ns)
        cur = self.txn.cursor(self.store.docs)
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if not cur.delete():
                    break

    # -- the replicated catalog --

    def _catalog_write(self, ns: str, op: dict) -> None:
        stamp = self._stamp()
        self.apply_catalog(ns, stamp, op, local=True)
        self.log(ns, "c", stamp=stamp, e=op)

    def drop_floor(self, ns: str) -> merge.Stamp | None:
        """The stamp of the latest drop of ns or of its database (None: never dropped)."""
        st = self.store
        if not st._floor_names:
            return None
        found = [self.txn.get(b"drop:" + name.encode(), db=st.meta) for name in (ns, _database_of(ns))
                 if name in st._floor_names]
        return max((merge.Stamp.of(bson.decode(f)["s"]) for f in found if f is not None),
                   key=merge.Stamp.key, default=None)

    def _catalog_state(self, ns: str) -> dict:
        raw = self.txn.get(b"cs:" + ns.encode(), db=self.store.meta)
        if raw is not None:
            return bson.decode(raw)["s"]
        coll = self.store._wcat.get(ns)   # made before replication, or implicitly: older than any stamp
        return {"x": None, "i": {i.name: [merge.COMPACTED.to_bson(), _index_spec(i)]
                                 for i in (coll.indexes if coll else ())}}

    def apply_catalog(self, ns: str, stamp: merge.Stamp, op: dict, local: bool = False) -> None:
        """One catalog operation (merge.CATALOG_TABLE), from this node (``local``: a unique
        index refuses duplicates) or another (a duplicate key is a reported conflict)."""
        st, txn = self.store, self.txn
        kind = op["c"]
        if kind in ("drop", "dropDatabase"):
            key = b"drop:" + ns.encode()
            floor = txn.get(key, db=st.meta)
            if floor is None or merge.Stamp.of(bson.decode(floor)["s"]).key() < stamp.key():
                txn.put(key, bson.encode({"s": stamp.to_bson()}), db=st.meta)
                st._floor_names.add(ns)
        names = sorted(n for n in st._wcat if n.startswith(ns)) if kind == "dropDatabase" else [ns]
        for name in names:
            state = self._catalog_state(name)
            if kind != "dropDatabase":
                state = merge.catalog_apply(state, stamp, op)
                txn.put(b"cs:" + name.encode(), bson.encode({"s": state}), db=st.meta)
            survivors = self._drop_before(name, stamp) if kind in ("drop", "dropDatabase") else None
            self._catalog_sync(name, state, survivors, resolve=not local)

    def _drop_before(self, ns: str, floor: merge.Stamp) -> bool:
        """Every document of ns as after a delete at floor (merge.drop_before); whether any
        operation stamped after it is left (the collection then stays)."""
        st, txn, prefix = self.store, self.txn, ns_prefix(ns)
        kept = []
        cur = txn.cursor(st.rmeta)
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                data = txn.get(k, db=st.docs)
                _id, state = _rmeta_decode(v, bson.decode(data) if data is not None else None)
                kept.append((k, _id, merge.drop_before(state, floor)))
        self._delete_documents(ns)   # the rest: compacted, so below the stable time and the drop
        for k, _id, state in kept:
            if state is None:
                txn.delete(k, db=st.rmeta)
                continue
            txn.put(k, _rmeta_encode(_id, state), db=st.rmeta)
            if state["v"] is not None:
                txn.put(k, bson.encode(state["v"]))
        coll = st._wcat.get(ns)
        for idx in coll.indexes if coll else ():
            self._drop_index_db(ns, idx)
        if coll is not None:
            self._set_collection(ns, replace(coll, indexes=()))   # rebuilt by _catalog_sync
        return any(state is not None for _, _, state in kept)

    def _catalog_sync(self, ns: str, state: dict, survivors: bool | None, resolve: bool) -> None:
        """The collection's row and index sub-databases as the catalog state says
        (``survivors``: after a drop, whether documents written after it are left)."""
        exists, options, specs = merge.catalog_view(state, self.drop_floor(ns))
        old = self.store._wcat.get(ns)
        if not (exists or survivors or (survivors is None and old is not None)):
            for idx in old.indexes if old else ():
                self._drop_index_db(ns, idx)
            if old is not None:
                self._set_collection(ns, None)
            return
        wanted = [_index_of(spec) for spec in specs]
        have = {_definition(i): i for i in (old.indexes if old else ())}
        for idx in have.values():
            if _definition(idx) not in {_definition(i) for i in wanted}:
                self._drop_index_db(ns, idx)
        new = [i for i in wanted if _definition(i) not in have]
        for idx in new:
            self._open_index_db(ns, idx)
        if options is None:   # no create or collMod of it yet: what it has
            options = old.options if old is not None else {}
        self._set_collection(ns, Collection(ns, tuple(have.get(_definition(i), i) for i in wanted),
                                            options))
        if new:
            self._build_indexes(ns, {i.name for i in new}, resolve)

    def install_catalog(self, name: str, entry: dict) -> None:
        """A catalog entry of a peer's snapshot (``Store.snapshot``): its row, catalog state
        and drop floor as they are there; the row's index sub-databases start empty."""
        st, txn = self.store, self.txn
        for prefix, value in ((b"cs:", entry.get("cs")), (b"drop:", entry.get("drop"))):
            if value is not None:
                txn.put(prefix + name.encode(), value, db=st.meta)
        if entry.get("drop") is not None:
            st._floor_names.add(name)
        if entry.get("row") is not None:
            coll = Collection.decode(entry["row"])
            for idx in coll.indexes:
                self._open_index_db(name, idx)
            self._set_collection(name, coll)


def _database_of(ns: str) -> str:
    return ns[:ns.index(".") + 1] if "." in ns else ns


def _index_spec(index: Index) -> dict:
    spec = {"name": index.name, "key": [[f, d] for f, d in index.fields], "unique": index.unique}
    if index.collation:   # travels with the definition (a replicated catalog record)
        spec["collation"] = dict(index.collation)
    return spec


def _index_of(spec: dict) -> Index:
    return Index(spec["name"], tuple((f, int(d)) for f, d in spec["key"]), spec["unique"],
                 collation=tuple(spec.get("collation", {}).items()))


def _definition(index: Index) -> tuple:
    """What makes two indexes the same one (multikey is what its documents made it)."""
    return index.name, index.fields, index.unique, index.collation


_SCALARS = (int, float, str, bool, type(None), ObjectId)


def _same_scalar(a, b) -> bool:
    """Same value and type, for scalars only (containers are recomputed: 1 and True inside
    them compare equal in Python but index differently)."""
    return a is b or (type(a) is type(b) and isinstance(a, _SCALARS) and a == b)


def _tops(index: Index) -> set[str]:
    return {path.split(".", 1)[0] for path, _ in index.fields}


def _show(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    if v is None:
        return "null"
    if isinstance(v, ObjectId):
        return f"ObjectId('{v}')"
    return str(v)
