"""Replication on the LMDB store (farts/db/store.py with replicated=True): local writes keep
merge metadata and ship their effect; other nodes' records apply exactly once, each in its
own transaction with the applied position, indexes included; restarts keep the position."""
from __future__ import annotations

import bson
import pytest

from farts.db import keys, merge
from farts.db.errors import MongoError
from farts.db.query import compile_filter
from farts.db.replica import Record
from farts.db.store import Index, ScanStats, Store, ns_prefix
from farts.db.update import apply_update

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


def test_a_record_that_fails_leaves_no_trace_and_holds_its_origin_back(pair):
    a, b = pair
    b.submit(lambda w: w.create_index(NS, Index("u_1", (("u", 1),), unique=True)), exclusive=True).result()
    b.submit(lambda w: w.insert(NS, {"_id": "mine", "u": 1})).result()
    a.submit(lambda w: w.insert(NS, {"_id": "theirs", "u": 1})).result()
    a.submit(lambda w: w.insert(NS, {"_id": "next"})).result()
    outcomes = ship(a, b)
    assert isinstance(outcomes[0], MongoError) and outcomes[0].code == 11000 and outcomes[1] is None
    assert b.applied().get("a", (0, 0))[0] == 0
    assert [d["_id"] for d in dump(b)] == ["mine"]
    with b.read() as txn:
        assert txn.get(ns_prefix(NS) + keys.encode("theirs"), db=b.rmeta) is None
        assert "a" not in {bson.decode(v)["o"] for _, v in txn.cursor(b.oplog)}


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


def test_effects_in_the_oplog_are_replicated_operations(pair):
    a, _ = pair
    a.submit(lambda w: w.insert(NS, {"_id": 1, "a": [1, 2, 3]})).result()
    update(a, 1, {"$pull": {"a": {"$gte": 2}}, "$currentDate": {"d": True}})
    rec = a.records_after("a", 1, 10)[0]
    assert isinstance(rec, Record)
    merge.check_op(rec.op)
    assert rec.op["pull"] == {"a": [2, 3]} and rec.op["ctx"] == {"a": 1} and "d" in rec.op["set"]
