"""Replication on the LMDB store (farts/db/store.py with replicated=True): local writes keep
merge metadata and ship their effect; other nodes' records apply exactly once, each in its
own transaction with the applied position, indexes included; restarts keep the position."""
from __future__ import annotations

import asyncio
import contextlib
import random
import threading

import bson
import msgpack
import pytest
from bson.int64 import Int64

from farts.clock import LoopClock
from farts.db import keys, merge, replica
from farts.db.errors import MongoError
from farts.db.query import compile_filter
from farts.db.replica import Record, Records, Replica, ReplicaPeer
from farts.db.store import Index, ScanStats, Store
from farts.db.update import apply_update
from farts.members import Member, MemberMap
from farts.peer import Envelope

NS = "t$db.c"


def open_store(path, node):
    return Store(path / node, node, sync=False, replicated=True)


@pytest.fixture
def pair(tmp_path):
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    yield a, b
    a.close()
    b.close()


def update(store, _id, upd):
    def run(w):
        old = w.get(NS, _id)
        w.replace(NS, old, apply_update(old, upd), {"op": "u", "u": upd, "now": None})
    store.submit(run).result()


def ship(src: Store, dst: Store) -> list:
    """What src has that dst lacks, every origin, applied on dst; returns the outcomes."""
    have = dst.applied()
    records = []
    for origin in src.applied():
        records += src.records_after(origin, have.get(origin, (0, 0))[0], 10_000) or []
    return dst.apply_remote(records).result()


def find(store, flt):
    stats = ScanStats()
    with store.read() as txn:
        return store.scan(txn, NS, flt, compile_filter(flt), stats), stats


def dump(store):
    with store.read() as txn:
        return [bson.decode(v) for _, v in txn.cursor(store.docs)]


def test_records_apply_once_with_their_indexes_and_the_position(pair, tmp_path):
    a, b = pair
    b.submit(lambda w: w.create_index(NS, Index("k_1", (("k", 1),))), exclusive=True).result()
    a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "old", "n": 0})).result()
    update(a, 1, {"$set": {"k": "new"}, "$inc": {"n": 2}})
    assert ship(a, b) == ["applied", "applied"]
    docs, stats = find(b, {"k": "new"})
    assert docs == [{"_id": 1, "k": "new", "n": 2}] and stats.plan == "IXSCAN"
    assert find(b, {"k": "old"})[0] == []                    # the old index key went
    assert b.applied()["a"][0] == 2
    records = a.records_after("a", 0, 10)
    assert b.apply_remote(records).result() == ["duplicate", "duplicate"]
    assert dump(b) == [{"_id": 1, "k": "new", "n": 2}]
    b.close()
    b2 = open_store(tmp_path, "b")        # the position survives a restart
    try:
        assert b2.applied()["a"][0] == 2
        assert b2.apply_remote(records).result() == ["duplicate", "duplicate"]
        assert [r.seq for r in b2.records_after("a", 0, 10)] == [1, 2]   # kept for shipping on
    finally:
        b2.close()
        b.close = lambda: None


def test_concurrent_writes_on_two_stores_converge(pair):
    a, b = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1, "n": 0, "tags": ["x"]})).result()
    ship(a, b)
    update(a, 1, {"$inc": {"n": 1}, "$set": {"who": "a"}, "$addToSet": {"tags": "y"}})
    update(b, 1, {"$inc": {"n": 10}, "$set": {"who": "b"}, "$pull": {"tags": "x"}})
    update(b, 1, {"$mul": {"m": 3}})
    ship(a, b)
    ship(b, a)
    assert dump(a) == dump(b)
    doc = dump(a)[0]
    stamp_a = a.records_after("a", 1, 1)[0].stamp.key()
    stamp_b = b.records_after("b", 0, 1)[0].stamp.key()
    assert doc["n"] == 11 and doc["who"] == ("a" if stamp_a > stamp_b else "b")
    assert doc["tags"] == ["y"] and doc["m"] == 0
    # a delete on one side and an update on the other: the delete wins on both
    b.submit(lambda w: w.delete(NS, w.get(NS, 1))).result()
    update(a, 1, {"$inc": {"n": 1}})
    ship(a, b)
    ship(b, a)
    assert dump(a) == dump(b) == []
    # an insert after it brings it back on both
    a.submit(lambda w: w.insert(NS, {"_id": 1, "again": True})).result()
    ship(a, b)
    assert dump(b) == [{"_id": 1, "again": True}]


def test_a_record_that_fails_leaves_no_trace_and_holds_its_origin_back(tmp_path):
    b = Store(tmp_path / "small", "b", sync=False, replicated=True, map_size=1 << 20)
    try:
        records = [Record("a", 1, 10, NS, "big", {"op": "i", "doc": {"_id": "big", "s": "x" * (2 << 20)}}),
                   Record("a", 2, 11, NS, "next", {"op": "i", "doc": {"_id": "next"}}),
                   Record("c", 1, 12, NS, "other", {"op": "i", "doc": {"_id": "other"}})]
        outcomes = b.apply_remote(records).result()
        assert isinstance(outcomes[0], Exception) and outcomes[1] is None and outcomes[2] == "applied"
        assert b.applied().get("a", (0, 0))[0] == 0 and b.applied()["c"][0] == 1
        assert dump(b) == [{"_id": "other"}]
        assert [r["o"] for r in b.oplog_records()] == ["c"]
        with b.read() as txn:
            assert txn.stat(b.rmeta)["entries"] == 1
    finally:
        b.close()


def test_writes_of_two_nodes_merged_past_16_mb_are_kept_and_counted(pair):
    a, b = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1, "s": []})).result()
    ship(a, b)
    chunk = "x" * (9 << 20)
    update(a, 1, {"$push": {"s": chunk}})
    update(b, 1, {"$push": {"s": chunk}})
    ship(a, b)
    ship(b, a)
    assert a.oversized == b.oversized == 1
    assert dump(a) == dump(b) and len(dump(a)[0]["s"]) == 2
    with pytest.raises(MongoError) as e:          # a local write to it is refused until it shrinks
        update(a, 1, {"$set": {"y": 1}})
    assert e.value.code == 10334


def test_a_unique_key_written_on_two_nodes_is_resolved_the_same_everywhere_and_reported(pair):
    a, b = pair
    for s in pair:
        s.submit(lambda w: w.create_index(NS, Index("u_1", (("u", 1),), unique=True)), exclusive=True).result()
    a.submit(lambda w: w.insert(NS, {"_id": 2, "u": 1})).result()
    b.submit(lambda w: w.insert(NS, {"_id": 1, "u": 1})).result()
    ship(a, b)
    ship(b, a)
    assert a.unique_conflicts == b.unique_conflicts == 1        # each node met the other's
    for s in pair:
        assert dump(s) == [{"_id": 1, "u": 1}, {"_id": 2, "u": 1}]   # both documents stay
        assert find(s, {"u": 1})[0] == [{"_id": 1, "u": 1}]         # the smaller _id holds the key
    a.submit(lambda w: w.insert(NS, {"_id": 4, "u": 2})).result()  # replication goes on
    a.submit(lambda w: w.delete(NS, w.get(NS, 1))).result()         # the holder goes: the other takes over
    ship(a, b)
    for s in pair:
        assert find(s, {"u": 1})[0] == [{"_id": 2, "u": 1}] and find(s, {"u": 2})[0] == [{"_id": 4, "u": 2}]
        with s.read() as txn:
            assert txn.stat(s.conflicts)["entries"] == 0
    with pytest.raises(MongoError):        # a local write still gets the usual error
        b.submit(lambda w: w.insert(NS, {"_id": 9, "u": 2})).result()


def test_gaps_are_refused(pair):
    a, b = pair
    for i in range(3):
        a.submit(lambda w, i=i: w.insert(NS, {"_id": i})).result()
    records = a.records_after("a", 0, 10)
    out = b.apply_remote(records[1:]).result()
    assert isinstance(out[0], MongoError) and b.applied().get("a", (0, 0))[0] == 0
    assert b.apply_remote(records).result() == ["applied"] * 3


def test_a_store_without_replication_writes_as_before(tmp_path):
    s = Store(tmp_path / "plain", "n1", sync=False)
    try:
        s.submit(lambda w: w.insert(NS, {"_id": 1})).result()
        assert "e" not in s.oplog_records()[0]
        with s.read() as txn:
            assert txn.stat(s.rmeta)["entries"] == 0
    finally:
        s.close()


def test_a_duplicate_insert_leaves_no_trace_and_the_oplog_holds_what_travels(pair):
    a, b = pair
    a.submit(lambda w: w.insert(NS, {"k": 1, "_id": 7})).result()     # _id not first: put first, as merge does
    seq = a.applied()["a"][0]
    with pytest.raises(MongoError) as e:
        a.submit(lambda w: w.insert(NS, {"_id": 7, "k": 2})).result()
    assert e.value.code == 11000
    assert a.applied()["a"][0] == seq and len(a.oplog_records()) == seq   # no record, no sequence used
    with a.read() as txn:
        assert list(bson.decode(a.get_raw(txn, NS, 7))) == ["_id", "k"] and txn.stat(a.rmeta)["entries"] == 1
    (rec,) = a.records_after("a", seq - 1, 10)
    assert (rec.id, rec.op) == (7, {"op": "i", "doc": {"_id": 7, "k": 1}})
    assert a.oplog_records()[-1] == {"o": "a", "s": seq, "ts": rec.hlc, "ns": NS, "op": "i", "id": 7,
                                     "w": rec.body}
    a._recent = []                                     # read back from the oplog, not from memory
    (back,) = a.records_after("a", seq - 1, 10)
    assert (back.origin, back.seq, back.hlc, back.ns, back.body) == ("a", seq, rec.hlc, NS, rec.body)
    assert ship(a, b) == ["applied"] and dump(b) == [{"_id": 7, "k": 1}]
    assert b.oplog_records()[-1]["w"] == rec.body   # kept there as it came


def test_oplog_records_of_earlier_versions_in_bson_are_still_read(pair):
    a, _ = pair
    body = bson.encode({"id": 1, "op": {"op": "i", "doc": {"_id": 1}}})
    old = {"o": "c", "s": Int64(1), "ts": Int64(77), "ns": NS, "op": "i", "id": 1, "w": body}
    a.submit(lambda w: w.txn.put(b"c\0" + (1).to_bytes(8, "big"), bson.encode(old), db=a.oplog)).result()
    with a.read() as txn:
        (rec,) = a.records_after_in(txn, "c", 0, 10)
    assert (rec.origin, rec.seq, rec.hlc, rec.ns, rec.id, rec.body) == ("c", 1, 77, NS, 1, body)
    assert a.oplog_records() == [old]


def test_effects_in_the_oplog_are_replicated_operations(pair):
    a, _ = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1, "a": [1, 2, 3]})).result()
    update(a, 1, {"$pull": {"a": {"$gte": 2}}, "$currentDate": {"d": True}})
    rec = a.records_after("a", 1, 10)[0]
    assert isinstance(rec, Record)
    merge.check_op(rec.op)
    assert rec.op["pull"] == {"a": [2, 3]} and rec.op["ctx"] == {"a": 1} and "d" in rec.op["set"]


# ---- Replicas on LMDB stores: the simulated network, the real store -------------------------


class Cluster:
    """Replicas on real stores; messages in wire form; the store's commits are waited for
    (they run in its writer thread) and handed back to the replica as the node would."""

    def __init__(self, path, ids, *, seed=0, retain_records=100_000):
        self.path, self.ids, self.now = path, list(ids), 0.0
        self.rnd = random.Random(seed)
        self.retain = retain_records
        self.stores, self.replicas, self.shipped = {}, {}, {}   # shipped: own records seen by the test
        self.flight, self.cut, self.written = [], set(), []
        for n in self.ids:
            self._start(n)

    def _start(self, n):
        self.stores[n] = open_store(self.path, n)
        for idx in (Index("k_1", (("k", 1),)), Index("u_1", (("u", 1),), unique=True)):
            self.stores[n].submit(lambda w, idx=idx: w.create_index(NS, idx), exclusive=True).result()
        self.replicas[n] = Replica(n, self.stores[n], tuple(self.ids), retain_records=self.retain)
        self.shipped[n] = self.stores[n].applied().get(n, (0, 0))[0]
        self._local(n)

    def add(self, n):
        self.ids.append(n)
        for m in self.ids[:-1]:
            self.replicas[m].set_members(self.ids)
        self._start(n)
        for m in self.ids[:-1]:
            self.send(n, self.replicas[n].link_up(m, self.now))

    def close(self):
        for s in self.stores.values():
            s.close()

    def send(self, src, out):
        for to, msg in out:
            for dst in [to] if to else [n for n in self.ids if n != src]:
                if frozenset((src, dst)) not in self.cut:
                    self.flight.append((src, dst, type(msg), msgpack.packb(msg.to_wire())))

    def _commits(self, n):
        while self.replicas[n].waiting:
            for fut in self.replicas[n].waiting:
                fut.result(timeout=30)
            self.send(n, self.replicas[n].committed(self.now))

    def deliver(self, i, dup=False):
        src, dst, cls, wire = self.flight[i] if dup else self.flight.pop(i)
        if frozenset((src, dst)) in self.cut:
            return
        self.send(dst, self.replicas[dst].receive(cls.from_wire(msgpack.unpackb(wire)), src, self.now))
        self._commits(dst)

    def _local(self, n):
        records = self.stores[n].records_after(n, self.shipped[n], 1 << 30) or []
        for r in records:
            if r.op["op"] != "n":
                self.written.append(r)
        if records:
            self.shipped[n] = records[-1].seq

    def write(self, n, fn):
        try:
            self.stores[n].submit(fn).result()
        except MongoError:
            pass             # not acknowledged: nothing to replicate
        self._local(n)

    def settle(self, rounds=40):
        self.cut = set()
        for m in self.ids:
            for o in self.ids:
                if m < o:
                    self.send(m, self.replicas[m].link_up(o, self.now))
        for _ in range(rounds):
            self.now += 0.6
            for n in self.ids:
                self.send(n, self.replicas[n].tick(self.now))
            while self.flight:
                self.deliver(self.rnd.randrange(len(self.flight)))
        for s in self.stores.values():      # retention and compaction run in the writers
            s.submit(lambda w: None).result()

    def chaos(self, rnd, make_write, steps=80):
        """Random writes on random nodes amid partitions, deliveries in any order,
        duplicated and dropped messages, ticks."""
        for i in range(steps):
            self.write(rnd.choice(self.ids), make_write(rnd, i))
            event = rnd.random()
            if event < 0.05:
                side = {rnd.choice(self.ids)}
                self.cut = {frozenset((a, b)) for a in side for b in self.ids if b not in side}
            elif event < 0.1:
                self.cut = set()
            elif event < 0.5 and self.flight:
                self.deliver(rnd.randrange(len(self.flight)), dup=rnd.random() < 0.2)
            elif event < 0.6 and self.flight:
                self.flight.pop(rnd.randrange(len(self.flight)))
            elif event < 0.8:
                self.now += 0.6
                n = rnd.choice(self.ids)
                self.send(n, self.replicas[n].tick(self.now))

    def expected(self):
        per_doc = {}
        for r in self.written:
            per_doc.setdefault(keys.encode(r.id), []).append(r)
        out = []
        for _, records in sorted(per_doc.items()):
            state = None
            for r in sorted(records, key=lambda r: r.stamp.key()):
                state = merge.apply(state, r.stamp, r.op).state
            if merge.visible(state) is not None:
                out.append(merge.visible(state))
        return out


@contextlib.contextmanager
def after_chaos(tmp_path, seed, make_write):
    """A 3-node Cluster after a random history of make_write's writes (Cluster.chaos),
    settled; closed after."""
    c = Cluster(tmp_path, ["a", "b", "c"], seed=seed, retain_records=8)
    rnd = random.Random(seed)
    try:
        c.chaos(rnd, make_write)
        c.settle()
        yield c, rnd
    finally:
        c.close()


def random_write(rnd, i):
    _id = rnd.choice([1, 2, 3, "c"])
    kind = rnd.choice(["insert", "update", "update", "update", "delete"])
    if _id == "c":    # the counter: only ever upserted with $inc (concurrent upserts add up)
        return lambda w: _upsert(w, "c", {"$inc": {"n": 1}})
    if kind == "insert":
        return lambda w: w.insert(NS, {"_id": _id, "k": rnd.choice("xyz"), "u": rnd.randrange(3), "tags": [i % 3]})
    if kind == "delete":
        return lambda w: w.get(NS, _id) and w.delete(NS, w.get(NS, _id))
    upd = rnd.choice([{"$set": {"k": rnd.choice("xyz")}}, {"$inc": {"n": 2}}, {"$addToSet": {"tags": i % 4}},
                      {"$pull": {"tags": i % 4}}, {"$push": {"log": i}}, {"$unset": {"k": 1}},
                      {"$mul": {"n": 2}}, {"$set": {"d.e": i}}, {"$set": {"u": rnd.randrange(3)}}])
    return lambda w: w.get(NS, _id) and _update(w, _id, upd)


def _upsert(w, _id, upd):
    if w.get(NS, _id) is not None:
        return _update(w, _id, upd)
    seed = {"_id": _id}
    return w.insert(NS, apply_update(seed, upd, is_upsert_insert=True), upsert=(seed, upd))


def _update(w, _id, upd):
    old = w.get(NS, _id)
    w.replace(NS, old, apply_update(old, upd), {"op": "u", "u": upd, "now": None})
    return True


@pytest.mark.parametrize("seed", range(4))
def test_replicas_on_lmdb_converge_after_partitions_drops_and_duplicates(tmp_path, seed):
    with after_chaos(tmp_path, seed, random_write) as (c, rnd):
        expected = c.expected()
        incs = sum(1 for r in c.written if r.id == "c" and "inc" in r.op.get("u", r.op))
        for n in c.ids:
            assert dump(c.stores[n]) == expected, n
            assert c.replicas[n].stats["late"] == c.replicas[n].stats["failed"] == 0
            for value in "xyz":         # the index agrees with the documents
                docs, stats = find(c.stores[n], {"k": value})
                assert stats.plan == "IXSCAN" and docs == [d for d in expected if d.get("k") == value]
            for value in range(3):      # the unique index: the smallest _id of a shared key holds it
                docs, stats = find(c.stores[n], {"u": value})
                assert stats.plan == "IXSCAN" and docs == [d for d in expected if d.get("u") == value][:1]
        assert {d["_id"]: d for d in expected}.get("c", {}).get("n") == incs
        c.add("d")                       # a new node gets a snapshot (the others dropped their oplogs)
        c.write("d", random_write(rnd, 99))
        c.settle()
        assert c.replicas["d"].stats["snapshots_installed"] >= 1
        for n in c.ids:
            assert dump(c.stores[n]) == c.expected(), n


def test_covered_stays_below_a_write_not_yet_committed(pair):
    """What a node reports as covered must hold every own write at or below it: a write
    stamped but not committed keeps it below that stamp until the commit."""
    a, _ = pair
    stamped, release = threading.Event(), threading.Event()

    def slow(w):
        w.insert(NS, {"_id": "slow"})
        stamped.set()
        release.wait(30)
    fut = a.submit(slow)
    assert stamped.wait(30)
    during = a.covered()
    release.set()
    fut.result()
    record = a.records_after("a", 0, 10)[-1]
    assert during < record.hlc <= a.covered()
    assert a.applied()["a"][0] == record.seq


def test_replica_peers_on_an_event_loop_with_lmdb_stores(tmp_path):
    """ReplicaPeer on a real loop: the store commits in its writer thread and the replica
    goes on when the commit comes back to the loop; two nodes, an in-process bus."""

    class Bus:
        def __init__(self, me, net):
            self.me, self.net, self.subs = me, net, {}
            self.map = MemberMap([Member("a"), Member("b")])

        def members(self):
            return self.map.members()

        def on_member_change(self, fn):
            return self.map.on_change(fn)

        def send(self, node_id, msg):
            wire = msgpack.packb(msg.to_wire())
            asyncio.get_running_loop().call_soon(self.net[node_id].deliver, type(msg), wire, self.me)
            return True

        def broadcast(self, msg):
            return sum(self.send(n, msg) for n in self.net if n != self.me)

        def subscribe(self, cls, fn):
            self.subs[cls] = fn
            return lambda: None

        def deliver(self, cls, wire, origin):
            self.subs[cls](cls.from_wire(msgpack.unpackb(wire)), Envelope(origin))

    async def main():
        clock = LoopClock()
        net, stores, peers = {}, {}, {}
        for n in ("a", "b"):
            net[n] = Bus(n, net)
            stores[n] = open_store(tmp_path, n)
            peers[n] = ReplicaPeer(Replica(n, stores[n]), net[n], clock, tick=0.05)
        try:
            for i in range(50):
                await asyncio.wrap_future(stores["a"].submit(lambda w, i=i: w.insert(NS, {"_id": i, "n": 0})))
                peers["a"].committed_locally()
            await asyncio.wrap_future(stores["b"].submit(lambda w: _upsert(w, 1000, {"$inc": {"n": 1}})))
            peers["b"].committed_locally()
            for _ in range(500):           # until both have everything (bounded: fails, not hangs)
                if len(dump(stores["b"])) == 51 and dump(stores["a"]) == dump(stores["b"]):
                    break
                await asyncio.sleep(0.01)
            assert dump(stores["a"]) == dump(stores["b"]) and len(dump(stores["b"])) == 51
            assert peers["b"].replica.stats["applied"] == 50       # each exactly once
            for _ in range(500):           # the acks come back: a knows b has all of a's writes
                if peers["a"].replica.acked("a", 50) == 2:
                    break
                await asyncio.sleep(0.01)
            assert peers["a"].replica.acked("a", 50) == 2
        finally:
            for n in ("a", "b"):
                peers[n].stop()
                stores[n].close()

    asyncio.run(main())


def rmeta_entries(store) -> int:
    with store.read() as txn:
        return txn.stat(store.rmeta)["entries"]


def test_a_node_alone_keeps_no_insert_metadata_and_converges_all_the_same(pair):
    """While no other node has its clock, every write to come is later than this node's:
    an insert keeps no stamp (the document counts as older than anything to come, as it
    does once compaction has passed it); a delete's state is still merged with."""
    a, b = pair
    assert a.set_alone(True) is None
    a.submit(lambda w: [w.insert(NS, {"_id": i, "k": i}) for i in range(5)]).result()
    assert rmeta_entries(a) == 0
    a.submit(lambda w: w.delete(NS, w.get(NS, 1))).result()
    a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "again"})).result()   # merged with the tombstone
    update(a, 2, {"$inc": {"k": 10}})
    assert [d["k"] for d in dump(a)] == [0, "again", 12, 3, 4]
    committed = a.set_alone(False)          # another node is there: its writes are stamped again
    assert committed.result(timeout=30) is None
    before = rmeta_entries(a)
    a.submit(lambda w: w.insert(NS, {"_id": 10, "k": 10})).result()
    assert rmeta_entries(a) == before + 1
    ship(a, b)
    assert dump(a) == dump(b)
    # b writes over a document a inserted alone: the same on both
    update(b, 3, {"$set": {"k": "b"}})
    ship(b, a)
    assert dump(a) == dump(b) and [d["k"] for d in dump(a)][3] == "b"


def test_a_restarted_member_of_a_larger_deployment_is_never_alone(pair):
    """Its peers may write while it waits for them to dial it: its inserts keep their stamps."""
    a, b = pair
    b.submit(lambda w: w.insert(NS, {"_id": "from-b"})).result()
    ship(b, a)                                   # a has applied another node's records

    class Bus:
        map = MemberMap([Member("a")])

        def members(self):
            return self.map.members()

        def on_member_change(self, fn):
            return self.map.on_change(fn)

        def subscribe(self, cls, fn):
            return lambda: None

    async def main():
        peer = ReplicaPeer(Replica("a", a), Bus(), LoopClock(), may_be_alone=True)
        try:
            before = rmeta_entries(a)
            await asyncio.wrap_future(a.submit(lambda w: w.insert(NS, {"_id": "from-a"})))
            assert rmeta_entries(a) == before + 1
        finally:
            peer.stop()

    asyncio.run(main())


def test_a_node_alone_tells_no_clock_before_its_alone_writes_are_committed(tmp_path):
    """The first Status a node alone sends when a peer appears carries an HLC at or above
    every write it stamped alone, the one in flight at that moment included (else the
    peer could stamp a concurrent write below it: the node's own copy, without metadata,
    would take it as newer and the peer's would not)."""
    sent: list = []

    class Bus:
        def __init__(self):
            self.map = MemberMap([Member("a")])

        def members(self):
            return self.map.members()

        def on_member_change(self, fn):
            return self.map.on_change(fn)

        def send(self, node_id, msg):
            sent.append(msg)
            return True

        def broadcast(self, msg):
            sent.append(msg)
            return 1

        def subscribe(self, cls, fn):
            return lambda: None

    async def main():
        store, bus = open_store(tmp_path, "a"), Bus()
        peer = ReplicaPeer(Replica("a", store), bus, LoopClock(), tick=0.05, may_be_alone=True)
        try:
            started, go_on = threading.Event(), threading.Event()

            def slow(w):   # a write stamped alone, its commit in flight when the peer comes
                w.insert(NS, {"_id": 99})
                started.set()
                go_on.wait(30)
            in_flight = asyncio.wrap_future(store.submit(slow))
            await asyncio.to_thread(started.wait, 30)
            bus.map.update(Member("b"))
            await asyncio.sleep(0.1)
            assert sent == []                 # held: the write is not committed yet
            go_on.set()
            await in_flight
            for _ in range(500):
                if sent:
                    break
                await asyncio.sleep(0.02)
            stamped = store.records_after("a", 0, 10)[-1].hlc
            statuses = [m for m in sent if isinstance(m, replica.Status)]
            assert statuses and all(m.hlc >= stamped for m in statuses)
            assert rmeta_entries(store) == 0  # (it was stamped alone)
        finally:
            peer.stop()
            store.close()

    asyncio.run(main())


# ---- the catalog: create/drop of collections and indexes, dropDatabase ----------------------


def catalog_of(store):
    """Collections, their indexes and every index's entries: what must be equal everywhere."""
    with store.read() as txn:
        return {ns: [(i.name, i.fields, i.unique, list(txn.cursor(store.index_db(txn, ns, i.name))))
                     for i in coll.indexes] for ns, coll in sorted(store.catalog.items())}


def exclusive(store, fn):
    return store.submit(fn, exclusive=True).result()


def test_catalog_commands_reach_every_node(pair):
    a, b = pair
    other = "t$db.other"
    exclusive(a, lambda w: w.create_collection(other, {}))
    exclusive(a, lambda w: w.create_index(NS, Index("k_1", (("k", 1),))))
    exclusive(a, lambda w: w.create_index(NS, Index("u_1", (("u", 1),), unique=True)))
    a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "x", "u": 1})).result()
    assert all(o == "applied" for o in ship(a, b))
    assert set(b.catalog) == {NS, other} and catalog_of(a) == catalog_of(b)
    docs, stats = find(b, {"k": "x"})
    assert docs == [{"_id": 1, "k": "x", "u": 1}] and stats.index == "k_1"
    with pytest.raises(MongoError) as e:              # the replicated unique index refuses locally
        b.submit(lambda w: w.insert(NS, {"_id": 2, "u": 1})).result()
    assert e.value.code == 11000
    exclusive(b, lambda w: w.drop_index(NS, "k_1"))
    exclusive(b, lambda w: w.drop_collection(other))
    ship(b, a)
    assert [i.name for i in a.catalog[NS].indexes] == ["u_1"] and other not in a.catalog
    assert catalog_of(a) == catalog_of(b)
    exclusive(a, lambda w: w.drop_database("t$db."))
    ship(a, b)
    for s in pair:
        assert s.catalog == {} and dump(s) == []


def test_a_drop_wins_against_writes_stamped_before_it_and_not_after(tmp_path):
    """a: insert 1 and index k_1; b (after them by its clock, without them): insert 2 and
    drop; a (after the drop by its clock): insert 3 and index u_1. Both delivery orders."""
    for first in ("a", "b"):
        a, b = open_store(tmp_path / first, "a"), open_store(tmp_path / first, "b")
        try:
            a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "x"})).result()
            exclusive(a, lambda w: w.create_index(NS, Index("k_1", (("k", 1),))))
            b.observe(a.covered())
            b.submit(lambda w: w.insert(NS, {"_id": 2, "k": "x"})).result()
            exclusive(b, lambda w: w.drop_collection(NS))
            a.observe(b.covered())
            a.submit(lambda w: w.insert(NS, {"_id": 3, "k": "y", "u": 5})).result()
            exclusive(a, lambda w: w.create_index(NS, Index("u_1", (("u", 1),), unique=True)))
            outcomes = [ship(src, dst) for src, dst in ([(a, b), (b, a)] if first == "a" else [(b, a), (a, b)])]
            if first == "a":     # b had dropped: a's insert of 1 is discarded on arrival
                assert outcomes[0][0] == "dropped"
            for s in (a, b):
                assert dump(s) == [{"_id": 3, "k": "y", "u": 5}], (first, s.node_id)
                assert [i.name for i in s.catalog[NS].indexes] == ["u_1"]
                docs, stats = find(s, {"u": 5})
                assert docs == [{"_id": 3, "k": "y", "u": 5}] and stats.index == "u_1"
            assert catalog_of(a) == catalog_of(b)
        finally:
            a.close()
            b.close()


def test_drop_database_wipes_writes_before_it_in_every_collection_of_the_database(pair):
    a, b = pair
    later = "t$db.later"
    a.submit(lambda w: w.insert(NS, {"_id": 1})).result()
    b.observe(a.covered())
    b.submit(lambda w: w.insert("t$db.c2", {"_id": 1})).result()
    b.submit(lambda w: w.insert("t$other.c", {"_id": 1})).result()    # another database: untouched
    exclusive(b, lambda w: w.drop_database("t$db."))
    a.observe(b.covered())
    a.submit(lambda w: w.insert(later, {"_id": 9})).result()
    ship(a, b)
    ship(b, a)
    for s in pair:
        assert sorted(s.catalog) == ["t$db.later", "t$other.c"]
        assert dump(s) == [{"_id": 9}, {"_id": 1}]


def test_a_snapshot_carries_the_catalog(pair, tmp_path):
    a, _ = pair
    exclusive(a, lambda w: w.create_index(NS, Index("k_1", (("k", 1),))))
    exclusive(a, lambda w: w.create_collection("t$db.empty", {}))
    a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "x"})).result()
    c = open_store(tmp_path, "c")
    try:
        exclusive(c, lambda w: w.create_index(NS, Index("mine", (("m", 1),))))   # not shipped yet
        vv, docs = a.snapshot()
        c.install_snapshot(vv, list(docs)).result()
        assert sorted(c.catalog) == ["t$db.c", "t$db.empty"] and dump(c) == dump(a)
        assert [i.name for i in c.catalog[NS].indexes] == ["k_1", "mine"]   # its own write, re-applied
        assert find(c, {"k": "x"})[1].index == "k_1"
        ship(c, a)
        assert catalog_of(c) == catalog_of(a)
    finally:
        c.close()


def random_catalog_write(rnd, i):
    ns = rnd.choice([NS, "t$db.d", "t$e.c"])
    kind = rnd.random()
    if kind < 0.08:
        return lambda w: w.drop_collection(ns)
    if kind < 0.1:
        return lambda w: w.drop_database(rnd.choice(["t$db.", "t$e."]))
    if kind < 0.2:
        index = rnd.choice([Index("k_1", (("k", 1),)), Index("k_1", (("k", 1),), unique=True),
                            Index("u_1", (("u", 1),), unique=True), Index("k_u", (("k", 1), ("u", 1)))])
        return lambda w: w.create_index(ns, index)
    if kind < 0.25:
        return lambda w: w.drop_index(ns, rnd.choice(["k_1", "u_1", "k_u"]))
    if kind < 0.28:
        return lambda w: w.create_collection(ns, {})
    _id = rnd.randrange(4)
    if kind < 0.6:
        return lambda w: w.get(ns, _id) is None and w.insert(ns, {"_id": _id, "k": rnd.choice("xy"), "u": i % 3})
    if kind < 0.7:
        return lambda w: w.get(ns, _id) and w.delete(ns, w.get(ns, _id))
    return lambda w: w.get(ns, _id) and w.replace(ns, w.get(ns, _id), {**w.get(ns, _id), "k": "z"},
                                                  {"op": "u", "u": {"$set": {"k": "z"}}})


@pytest.mark.parametrize("seed", range(4))
def test_catalog_and_documents_converge_after_partitions_drops_and_duplicates(tmp_path, seed):
    with after_chaos(tmp_path, seed, random_catalog_write) as (c, _):
        for n in c.ids:
            assert dump(c.stores[n]) == dump(c.stores["a"]), n
            assert catalog_of(c.stores[n]) == catalog_of(c.stores["a"]), n
            assert c.replicas[n].stats["failed"] == 0
        c.add("d")                       # a new node gets a snapshot: the catalog with it
        c.settle()
        assert catalog_of(c.stores["d"]) == catalog_of(c.stores["a"]) and dump(c.stores["d"]) == dump(c.stores["a"])


def test_compaction_goes_on_where_the_last_pass_stopped(pair):
    a, _ = pair
    for i in range(10):
        a.submit(lambda w, i=i: w.insert(NS, {"_id": i, "n": 0})).result()
    update(a, 0, {"$inc": {"n": 1}})
    with a.read() as txn:
        assert txn.stat(a.rmeta)["entries"] == 10
    stable = a.covered()
    for _ in range(4):                 # 3 a pass: every document's metadata is reached
        a.compact(stable, limit=3).result()
    with a.read() as txn:
        assert txn.stat(a.rmeta)["entries"] == 0
    assert dump(a)[0] == {"_id": 0, "n": 1}


def test_a_long_catch_up_goes_to_the_store_in_chunks_and_each_commit_is_acknowledged(pair, monkeypatch):
    monkeypatch.setattr(replica, "STORE_CHUNK", 4)
    a, b = pair
    for i in range(30):
        a.submit(lambda w, i=i: w.insert(NS, {"_id": i})).result()
    rb = Replica("b", b, ("a",))
    assert rb.receive(Records(tuple(a.records_after("a", 0, 100))), "a", 0.0) == []
    assert len(rb.waiting) == replica.STORE_QUEUE           # the rest waits in the buffer
    acks = []
    while rb.waiting:
        rb.waiting[0].result(timeout=30)
        acks += [m.vv["a"] for to, m in rb.committed(0.0) if to == "a"]
        assert len(rb.waiting) <= replica.STORE_QUEUE
    assert acks == sorted(set(acks)) and acks[-1] == 30 and len(acks) >= 30 // (4 * replica.STORE_QUEUE)
    assert dump(b) == dump(a) and rb.stats["applied"] == 30


def test_own_records_ship_from_memory_as_the_oplog_has_them(pair):
    a, _ = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1})).result()

    def partly(w):
        w.insert(NS, {"_id": 2})
        with contextlib.suppress(ZeroDivisionError):
            w.atomic(lambda: (w.insert(NS, {"_id": 3}), 1 / 0))   # undone, its seq with it
        w.insert(NS, {"_id": 4})
    a.submit(partly).result()
    with pytest.raises(ZeroDivisionError):
        a.submit(lambda w: (w.insert(NS, {"_id": 5}), 1 / 0)).result()
    a.submit(lambda w: w.insert(NS, {"_id": 6})).result()

    def fields(records):
        return [(r.origin, r.seq, r.hlc, r.ns, r.id, r.body) for r in records]
    shipped = a.records_after("a", 0, 10)
    assert shipped[0] is a.records_after("a", 0, 1)[0]        # the writer's own objects, not read back
    with a.read() as txn:
        assert fields(shipped) == fields(a.records_after_in(txn, "a", 0, 10))
    assert [r.id for r in shipped] == [1, 2, 4, 6] and [r.seq for r in shipped] == [1, 2, 3, 4]
    assert shipped[0].body == bson.encode({"id": 1, "op": {"op": "i", "doc": {"_id": 1}}})
    assert a.records_after("a", 2, 1)[0].id == 4 and a.records_after("a", 4, 10) == []
    a.truncate("a", 2).result()
    assert a.records_after("a", 0, 10) is None                 # gone from the oplog: a snapshot's case
    a.submit(lambda w: setattr(a, "seq", 10), exclusive=True).result()   # as a snapshot's vector can
    a.submit(lambda w: w.insert(NS, {"_id": 7})).result()
    assert a.records_after("a", 4, 10) is None and [r.id for r in a.records_after("a", 10, 10)] == [7]


def test_compaction_leaves_an_inserts_metadata_alone_until_stable_then_drops_it(pair):
    a, _ = pair
    for i in range(3):
        a.submit(lambda w, i=i: w.insert(NS, {"_id": i, "n": i})).result()
    stamps = [r.hlc for r in a.records_after("a", 0, 3)]

    def rmeta():
        with a.read() as txn:
            return dict(txn.cursor(a.rmeta).iternext())
    before = rmeta()
    a.compact(stamps[0] - 1).result()
    assert rmeta() == before                    # nothing at or below: not rewritten
    a.compact(stamps[1]).result()               # the first two are stable, the third is not
    assert list(rmeta().values()) == [before[k] for k in sorted(before)][2:]
    update(a, 2, {"$inc": {"n": 1}})            # its metadata merges on from the short form
    a.compact(a.covered()).result()
    assert rmeta() == {} and dump(a) == [{"_id": 0, "n": 0}, {"_id": 1, "n": 1}, {"_id": 2, "n": 3}]
    old = bson.encode({"id": 0, "i": merge.Stamp(stamps[0], "a", 1).to_bson()})   # an earlier version's form
    a.submit(lambda w: w.txn.put(NS.encode() + b"\0" + keys.encode(0), old, db=a.rmeta)).result()
    a.compact(a.covered()).result()
    assert rmeta() == {}


def test_an_inserted_documents_metadata_is_kept_short_and_reads_back_whole(pair):
    from farts.db.store import _insert_stamp, _rmeta_decode
    a, b = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1, "k": "x", "n": 0})).result()
    ship(a, b)
    record = a.records_after("a", 0, 1)[0]
    whole = merge.apply(None, record.stamp, {"op": "i", "doc": {"_id": 1, "k": "x", "n": 0}}).state
    for s in pair:
        with s.read() as txn:
            raw = txn.get(NS.encode() + b"\0" + keys.encode(1), db=s.rmeta)
        assert len(raw) == 4 + 16 + len("a") and _insert_stamp(raw) == record.stamp   # the stamp alone
        assert _rmeta_decode(raw, {"_id": 1, "k": "x", "n": 0}) == (1, whole)
    # The BSON form earlier versions wrote reads back the same.
    old = bson.encode({"id": 1, "i": record.stamp.to_bson()})
    assert _insert_stamp(old) is None and _rmeta_decode(old, {"_id": 1, "k": "x", "n": 0}) == (1, whole)
    update(b, 1, {"$inc": {"n": 1}})
    ship(b, a)
    assert dump(a) == dump(b) == [{"_id": 1, "k": "x", "n": 1}]
    a.submit(lambda w: w.insert(NS, {"k": {"deep": [1]}, "_id": 2})).result()   # _id first, as merge makes it
    ship(a, b)
    record = a.records_after("a", 1, 1)[0]
    assert dump(a)[1] == dump(b)[1] == merge.apply(None, record.stamp, record.op).state["v"]
    assert list(dump(b)[1]) == ["_id", "k"]


def test_collection_options_replicate_with_create_and_coll_mod(pair):
    a, b = pair
    exclusive(a, lambda w: w.create_collection(NS, {"validator": {"n": {"$gte": 0}}}))
    ship(a, b)
    assert b.catalog[NS].options == {"validator": {"n": {"$gte": 0}}}
    exclusive(b, lambda w: w.set_options(NS, {"validator": {"n": {"$lt": 10}}}))
    ship(b, a)
    assert a.catalog[NS].options == b.catalog[NS].options == {"validator": {"n": {"$lt": 10}}}
    with pytest.raises(MongoError) as e:     # node a enforces node b's validator
        a.submit(lambda w: w.insert(NS, {"_id": 1, "n": 11})).result()
    assert e.value.code == 121


def test_on_lmdb_a_long_dead_member_stops_holding_the_oplog_and_metadata_and_gets_a_snapshot(tmp_path):
    c = Cluster(tmp_path, ["a", "b", "c"], retain_records=8)
    try:
        c.settle(rounds=3)
        for n in "ab":
            c.replicas[n].forget_dead_after = 5.0
            c.replicas[n].set_members(c.ids, dead={"c"}, now=c.now)
        c.cut = {frozenset(("a", "c")), frozenset(("b", "c"))}

        def run(steps):
            for i in range(steps):
                c.write("ab"[i % 2], lambda w: _upsert(w, "ctr", {"$inc": {"n": 1}}))
                c.now += 0.6
                for n in "ab":
                    c.send(n, c.replicas[n].tick(c.now))
                while c.flight:
                    c.deliver(0)
            for s in c.stores.values():      # retention and compaction run in the writers
                s.submit(lambda w: None).result()

        def pending(n):
            with c.stores[n].read() as txn:
                raw = txn.get(NS.encode() + b"\0" + keys.encode("ctr"), db=c.stores[n].rmeta)
            return len(bson.decode(raw)["s"].get("o", [])) if raw is not None else 0

        run(6)                                   # c dead for under 5 s: everything is kept
        assert c.stores["a"].retained("a") >= 3 and pending("a") >= 6
        run(30)                                  # then bounded
        assert c.replicas["a"].forgotten == {"c"}
        for n in "ab":
            assert c.stores[n].retained("a") <= 8 and c.stores[n].retained("b") <= 8 and pending(n) <= 8
        for n in "ab":                           # c is back: a snapshot, then it converges
            c.replicas[n].set_members(c.ids, dead=(), now=c.now)
        c.settle()
        assert c.replicas["c"].stats["snapshots_installed"] >= 1
        assert dump(c.stores["a"]) == dump(c.stores["b"]) == dump(c.stores["c"])
        assert find(c.stores["c"], {"_id": "ctr"})[0][0]["n"] == 36
    finally:
        c.close()


def test_a_snapshot_older_than_the_nodes_own_retained_oplog_is_refused(pair, tmp_path):
    """b's snapshot was taken when it had a's writes up to 1; a has since dropped its own
    records up to 2 from its oplog (every peer had them).  Installed, it would lose a's
    write 2 (not in the snapshot, no longer in a's oplog to re-apply): refused, and a's
    documents stay.  (Seen on real nodes: a node restarting in a deploy lost a second of
    its own acknowledged writes that its peers kept.)"""
    from farts.db.replica import StaleSnapshot

    a, b = pair
    for i in (1, 2, 3):
        a.submit(lambda w, i=i: w.insert(NS, {"_id": i})).result()
    ship(a, b)
    vv, docs = b.snapshot()
    docs = [d for d in docs if d[1] != 2]   # (as b had it before a's write 2 came)
    vv = {**vv, "a": 1}
    a.truncate("a", 2).result()
    with pytest.raises(StaleSnapshot):
        a.install_snapshot(vv, docs).result()
    assert dump(a) == [{"_id": 1}, {"_id": 2}, {"_id": 3}]
    vv, docs = b.snapshot()                 # a current one: installed, nothing lost
    a.install_snapshot(vv, list(docs)).result()
    assert dump(a) == [{"_id": 1}, {"_id": 2}, {"_id": 3}]
