"""The LMDB store without the wire: index plans against a full scan, group commit,
atomic write functions, the oplog in the same transaction, restarts."""
from __future__ import annotations

import random
import threading

import pytest
from bson.objectid import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from farts.db.errors import MongoError
from farts.db.ordering import sort_documents, sort_value_key
from farts.db.query import compile_filter
from farts.db.store import Index, ScanStats, Store

NS = "t$db.c"
VALUES = [None, 0, 1, 1.5, 2, -3, "a", "b", "ab", "", True, False, [1, 2], [], ["a", 3], {"x": 1}]
SCALARS = [None, 0, 1, 1.5, 2, -3, "a", "b", "ab", "", True, False]


def random_doc(rng: random.Random, i: int) -> dict:
    doc = {"_id": i}
    for field in ("a", "b"):
        if rng.random() < 0.85:
            doc[field] = rng.choice(VALUES)
    if rng.random() < 0.3:
        doc["s"] = {"a": rng.choice(VALUES)}
    for field in ("t", "u"):   # scalars only: indexes on them stay non-multikey (sortable)
        if rng.random() < 0.9:
            doc[field] = rng.choice(SCALARS)
    return doc


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("store") / "db", "n1")
    rng = random.Random(7)
    docs = [random_doc(rng, i) for i in range(300)]

    def load(w):
        for d in docs:
            w.insert(NS, d)

    s.submit(load).result()
    for idx in (Index("a_1", (("a", 1),)), Index("a_1_b_-1", (("a", 1), ("b", -1))), Index("b_-1", (("b", -1),)),
                Index("s.a_1", (("s.a", 1),)), Index("t_1_u_-1", (("t", 1), ("u", -1))), Index("u_1", (("u", 1),))):
        s.submit(lambda w, idx=idx: w.create_index(NS, idx), exclusive=True).result()
    yield s
    s.close()


scalar = st.sampled_from([v for v in VALUES if not isinstance(v, (list, dict))] + [0.5, 3, "c"])
condition = st.one_of(
    scalar,
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$eq", "$gt", "$gte", "$lt", "$lte", "$ne"]), scalar),
    st.builds(lambda lo, hi: {"$gte": lo, "$lt": hi}, scalar, scalar),
    st.builds(lambda vs: {"$in": vs}, st.lists(scalar, min_size=1, max_size=3)),
)
filters = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "s.a", "_id"]), condition, min_size=1, max_size=2),
    st.builds(lambda x, y: {"$and": [{"a": x}, {"b": y}]}, condition, condition),
)


@settings(max_examples=300)
@given(filters)
def test_index_plans_return_exactly_what_a_full_scan_returns(store, flt):
    matcher = compile_filter(flt)
    with store.read() as txn:
        stats = ScanStats()
        planned = store.scan(txn, NS, flt, matcher, stats)
        everything = store.scan(txn, NS, {}, None)
    expected = sorted(d["_id"] for d in everything if matcher(d))
    assert sorted(d["_id"] for d in planned) == expected, (flt, stats)


sort_specs = st.sampled_from([[("t", 1)], [("t", -1)], [("t", 1), ("u", -1)], [("t", -1), ("u", 1)], [("u", 1)],
                              [("u", -1)], [("_id", -1)], [("_id", 1)], [("a", 1)]])
sort_filters = st.one_of(st.just({}), st.dictionaries(st.sampled_from(["t", "u", "a"]), condition, max_size=2))


@settings(max_examples=300)
@given(sort_filters, sort_specs, st.integers(1, 40))
def test_index_ordered_reads_match_an_in_memory_sort(store, flt, order, limit):
    matcher = compile_filter(flt)
    with store.read() as txn:
        stats = ScanStats()
        got = store.scan_sorted(txn, NS, flt, matcher, order, limit, stats)
        everything = [d for d in store.scan(txn, NS, {}, None) if matcher(d)]
    expected = sort_documents(everything, order)[:limit]
    if got is None:
        assert order == [("a", 1)] or not stats.sorted   # multikey, or no index has the order
        return
    key = lambda d: [sort_value_key(d, p, o) for p, o in order]  # noqa: E731
    assert [key(d) for d in got] == [key(d) for d in expected], (flt, order, stats)


def test_paging_reads_only_the_page(store):
    flt = {"t": "a"}
    with store.read() as txn:
        stats = ScanStats()
        got = store.scan_sorted(txn, NS, flt, compile_filter(flt), [("u", -1)], 3, stats)
    assert stats.sorted and stats.index == "t_1_u_-1" and stats.docs == len(got) == 3


def test_an_index_reads_fewer_documents(store):
    with store.read() as txn:
        stats = ScanStats()
        got = store.scan(txn, NS, {"a": "ab"}, compile_filter({"a": "ab"}), stats)
    assert stats.plan == "IXSCAN" and stats.docs == len(got) < 300


def test_group_commit_shares_commits_between_concurrent_writers(tmp_path):
    s = Store(tmp_path / "db", "n1")
    barrier = threading.Barrier(16)
    futures = []

    def writer(k):
        barrier.wait()
        for i in range(20):
            futures.append(s.submit(lambda w, k=k, i=i: w.insert(NS, {"_id": k * 100 + i})))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        f.result(timeout=30)
    assert s.committed_ops == 320 and s.commits < 320
    assert s.oplog_length() == 320
    s.close()


def test_failed_write_function_leaves_no_trace(tmp_path):
    s = Store(tmp_path / "db", "n1")
    s.submit(lambda w: w.create_index(NS, Index("u_1", (("u", 1),), unique=True)), exclusive=True).result()
    s.submit(lambda w: w.insert(NS, {"_id": 1, "u": 1})).result()
    before = s.oplog_length()

    def two_then_fail(w):
        w.insert(NS, {"_id": 2, "u": 2})
        w.insert(NS, {"_id": 3, "u": 1})   # duplicate u: the whole function is undone

    with pytest.raises(MongoError) as e:
        s.submit(two_then_fail).result()
    assert e.value.code == 11000
    with s.read() as txn:
        assert s.get(txn, NS, 2) is None
        assert [d["_id"] for d in s.scan(txn, NS, {"u": 2}, None)] == []
    assert s.oplog_length() == before and s.seq == before
    s.submit(lambda w: w.insert(NS, {"_id": 2, "u": 2})).result()   # the unique key was freed
    s.close()


def test_restart_keeps_catalog_sequence_and_clock(tmp_path):
    s = Store(tmp_path / "db", "n1")
    s.submit(lambda w: w.create_index(NS, Index("k_1", (("k", 1),))), exclusive=True).result()
    oid = ObjectId()
    s.submit(lambda w: w.insert(NS, {"_id": oid, "k": "v"})).result()
    seq, clock = s.seq, s.hlc.last
    s.close()
    s = Store(tmp_path / "db", "n1")
    assert s.seq == seq and s.hlc.last == clock and s.catalog[NS].index("k_1")
    with s.read() as txn:
        assert [d["_id"] for d in s.scan(txn, NS, {"k": "v"}, None)] == [oid]
    records = s.oplog_records()
    assert [r["op"] for r in records] == ["c", "i"] and records[-1]["s"] == seq
    assert records[0]["ts"] < records[1]["ts"] and records[1]["o"] == "n1"
    s.close()


def test_index_count_is_bounded_and_dropped_indexes_are_reclaimed(tmp_path):
    s = Store(tmp_path / "db", "n1", max_indexes=2)
    for name in ("a_1", "b_1"):
        s.submit(lambda w, name=name: w.create_index(NS, Index(name, ((name[0], 1),))), exclusive=True).result()
    with pytest.raises(MongoError) as e:
        s.submit(lambda w: w.create_index(NS, Index("c_1", (("c", 1),))), exclusive=True).result()
    assert e.value.code == 67 and "db.max_indexes = 2" in e.value.message
    assert [i.name for i in s.catalog[NS].indexes] == ["a_1", "b_1"]
    s.submit(lambda w: w.drop_index(NS, "a_1"), exclusive=True).result()
    s.close()
    s = Store(tmp_path / "db", "n1", max_indexes=2)   # the dropped one's sub-database is gone
    s.submit(lambda w: w.create_index(NS, Index("c_1", (("c", 1),))), exclusive=True).result()
    with s.env.begin() as txn:
        names = sorted(k for k, _ in txn.cursor() if k.startswith(b"i:"))
    assert names == [b"i:" + NS.encode() + b":b_1", b"i:" + NS.encode() + b":c_1"]
    s.close()


def test_indexes_follow_updates_of_every_kind(tmp_path):
    """Random updates (types switching between 1, 1.0 and True, arrays, nested fields, unsets)
    then every index answers exactly what a full scan answers."""
    import datetime

    from farts.db.update import apply_update

    s = Store(tmp_path / "db", "n1")
    rng = random.Random(11)
    s.submit(lambda w: [w.insert(NS, random_doc(rng, i)) for i in range(120)]).result()
    for idx in (Index("a_1", (("a", 1),)), Index("t_1_u_-1", (("t", 1), ("u", -1))), Index("s.a_1", (("s.a", 1),))):
        s.submit(lambda w, idx=idx: w.create_index(NS, idx), exclusive=True).result()
    now = datetime.datetime(2026, 1, 1)
    updates = [{"$set": {"a": v}} for v in VALUES] + [{"$set": {"t": v, "u": v}} for v in SCALARS] + \
        [{"$unset": {"a": ""}}, {"$set": {"s.a": 1}}, {"$set": {"s.a": True}}, {"$inc": {"t": 1}}, {"$set": {"s": [{"a": 2}]}}]

    def apply(w):
        for _ in range(400):
            doc = w.get(NS, rng.randrange(120))
            try:
                new = apply_update(doc, rng.choice(updates), now=now)
            except MongoError:
                continue   # e.g. $inc on a string
            w.atomic(lambda doc=doc, new=new: w.replace(NS, doc, new, {"op": "r", "doc": new}))

    s.submit(apply).result()
    probes = [{"a": v} for v in SCALARS] + [{"t": v} for v in SCALARS] + [{"t": 1, "u": {"$gte": 0}}] + \
        [{"s.a": v} for v in (1, True, 2, None)] + [{"a": {"$gt": 0}}, {"t": {"$lt": "b"}}]
    with s.read() as txn:
        everything = s.scan(txn, NS, {}, None)
        for flt in probes:
            matcher = compile_filter(flt)
            stats = ScanStats()
            got = sorted(d["_id"] for d in s.scan(txn, NS, flt, matcher, stats))
            assert stats.plan == "IXSCAN", flt
            assert got == sorted(d["_id"] for d in everything if matcher(d)), flt
    s.close()
