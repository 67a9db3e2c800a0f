"""$out, $merge and {aggregate: 1} through pymongo against a real node.

$out is diffed against mongomock (its $out writes the same documents; mongomock drops the
target and its indexes where MongoDB keeps them, so only the contents are compared).
mongomock has no $merge and no $documents (its handler table maps $merge to None): those
are checked against the behaviour MongoDB's manual documents for each whenMatched and
whenNotMatched mode, and each refusal with the code and codeName mongod sends.
"""
from __future__ import annotations

import mongomock
import pytest
import test_db_pymongo
from pymongo.errors import DuplicateKeyError, OperationFailure
from test_db_replica_store import NS, dump, open_store, ship, update
from test_db_views import fresh_db

from farts.db import output

# One node and client for the module (test_db_pymongo's fixtures).
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client

SALES = [{"_id": i, "item": ["a", "b", "c"][i % 3], "qty": i, "price": 2 * i + 1} for i in range(10)]
OUT_PIPELINES = [
    [{"$group": {"_id": "$item", "total": {"$sum": "$qty"}}}],
    [{"$match": {"qty": {"$gte": 5}}}, {"$project": {"item": 1}}],
    [{"$match": {"qty": {"$gt": 100}}}],
    [{"$project": {"_id": 0, "item": 1}}],
]


@pytest.fixture
def db(client, request):
    return fresh_db(client, request, "om", sales=SALES)


def _sorted(docs):
    return sorted(docs, key=lambda d: repr(d.get("_id")))


def test_out_matches_mongomock(db):
    mock = mongomock.MongoClient().db
    mock.sales.insert_many([dict(d) for d in SALES])
    for pipeline in OUT_PIPELINES:
        db.target.insert_one({"_id": "old"})
        mock.target.insert_one({"_id": "old"})
        assert list(db.sales.aggregate(pipeline + [{"$out": "target"}])) == []
        list(mock.sales.aggregate(pipeline + [{"$out": "target"}]))
        got, want = list(db.target.find()), list(mock.target.find())
        if pipeline[-1] == {"$project": {"_id": 0, "item": 1}}:   # generated _ids differ
            assert sorted(d["item"] for d in got) == sorted(d["item"] for d in want)
        else:
            assert _sorted(got) == _sorted(want), pipeline


def test_out_keeps_indexes_and_is_all_or_nothing(db):
    db.target.create_index("item", unique=True)
    db.target.insert_one({"_id": 1, "item": "z"})
    db.sales.aggregate([{"$group": {"_id": "$item"}}, {"$project": {"item": "$_id"}}, {"$out": "target"}])
    assert sorted(d["item"] for d in db.target.find()) == ["a", "b", "c"]
    assert "item_1" in db.target.index_information()
    # The unique index refuses the new contents: the target keeps what it had.
    with pytest.raises(OperationFailure) as e:
        db.sales.aggregate([{"$project": {"item": 1}}, {"$out": "target"}])
    assert e.value.code == 11000
    assert sorted(d["item"] for d in db.target.find()) == ["a", "b", "c"]
    # Into another database of the same client; into itself.
    db.sales.aggregate([{"$match": {"_id": 1}}, {"$out": {"db": db.name + "_other", "coll": "x"}}])
    assert list(db.client[db.name + "_other"].x.find()) == [SALES[1]]
    db.client.drop_database(db.name + "_other")
    db.sales.aggregate([{"$match": {"qty": {"$lt": 3}}}, {"$out": "sales"}])
    assert list(db.sales.find()) == SALES[:3]


def test_merge_modes(db):
    db.t.insert_many([{"_id": 0, "qty": -1, "keep": True}, {"_id": 1, "qty": -1, "keep": True}])
    src = [{"$match": {"_id": {"$lt": 3}}}, {"$project": {"qty": 1}}]

    def run(**spec):
        db.sales.aggregate(src + [{"$merge": {"into": "t", **spec}}])
        return _sorted(db.t.find())
    # default: whenMatched merge, whenNotMatched insert
    assert run() == [{"_id": 0, "qty": 0, "keep": True}, {"_id": 1, "qty": 1, "keep": True}, {"_id": 2, "qty": 2}]
    db.t.update_many({}, {"$set": {"qty": -1}})
    assert run(whenMatched="keepExisting", whenNotMatched="discard") == \
        [{"_id": 0, "qty": -1, "keep": True}, {"_id": 1, "qty": -1, "keep": True}, {"_id": 2, "qty": -1}]
    assert run(whenMatched="replace") == [{"_id": 0, "qty": 0}, {"_id": 1, "qty": 1}, {"_id": 2, "qty": 2}]
    assert run(whenMatched=[{"$set": {"qty": {"$add": ["$qty", "$$new.qty"]}, "seen": "$$new._id"}}]) == \
        [{"_id": 0, "qty": 0, "seen": 0}, {"_id": 1, "qty": 2, "seen": 1}, {"_id": 2, "qty": 4, "seen": 2}]
    assert run(let={"n": "$qty"}, whenMatched=[{"$set": {"last": "$$n"}}, {"$unset": "seen"}])[1] == \
        {"_id": 1, "qty": 2, "last": 1}
    with pytest.raises(DuplicateKeyError) as e:
        run(whenMatched="fail")
    assert e.value.code == 11000
    db.t.delete_many({"_id": 2})
    with pytest.raises(OperationFailure) as e:
        run(whenMatched="keepExisting", whenNotMatched="fail")
    assert (e.value.code, e.value.details["codeName"]) == (13113, "MergeStageNoMatchingDocument")
    assert db.t.count_documents({}) == 2   # all or nothing


def test_merge_on_other_fields(db):
    db.totals.create_index([("item", 1)], unique=True)
    db.totals.insert_one({"_id": "x", "item": "a", "total": 0, "note": "kept"})
    db.sales.aggregate([{"$group": {"_id": "$item", "total": {"$sum": "$qty"}}},
                        {"$project": {"_id": 0, "item": "$_id", "total": 1}},
                        {"$merge": {"into": "totals", "on": "item"}}])
    got = {d["item"]: d for d in db.totals.find()}
    assert got["a"] == {"_id": "x", "item": "a", "total": 18, "note": "kept"}
    assert got["b"]["total"] == 12 and got["c"]["total"] == 15
    with pytest.raises(OperationFailure) as e:
        db.sales.aggregate([{"$merge": {"into": "totals", "on": "qty"}}])
    assert e.value.code == 51183
    with pytest.raises(OperationFailure) as e:
        db.sales.aggregate([{"$project": {"item": None}}, {"$merge": {"into": "totals", "on": "item"}}])
    assert e.value.code == 51132


def test_aggregate_1_with_documents(db):
    docs = [{"x": 1}, {"x": 2}, {"x": 3}]
    got = list(db.aggregate([{"$documents": docs}, {"$match": {"x": {"$gte": 2}}}, {"$set": {"y": {"$add": ["$x", 1]}}}]))
    assert got == [{"x": 2, "y": 3}, {"x": 3, "y": 4}]
    db.aggregate([{"$documents": [{"_id": 1, "n": "a"}, {"_id": 2, "n": "b"}]}, {"$out": "from_docs"}])
    assert list(db.from_docs.find()) == [{"_id": 1, "n": "a"}, {"_id": 2, "n": "b"}]


def test_refusals(db):
    cases = [
        (lambda: db.sales.aggregate([{"$out": "x"}, {"$match": {}}]), 40601),
        (lambda: db.sales.aggregate([{"$merge": "x"}, {"$match": {}}]), 40601),
        (lambda: db.sales.aggregate([{"$facet": {"a": [{"$out": "x"}]}}]), 40600),
        (lambda: db.sales.aggregate([{"$merge": {"into": "x", "bogus": 1}}]), 40415),
        (lambda: db.sales.aggregate([{"$merge": {"into": "x", "whenMatched": "upsert"}}]), 2),
        (lambda: db.sales.aggregate([{"$merge": {"into": "x", "whenNotMatched": "x"}}]), 2),
        (lambda: db.sales.aggregate([{"$merge": {"into": "x", "let": {"a": 1}}}]), 51199),
        (lambda: db.sales.aggregate([{"$merge": {"into": "x", "whenMatched": [{"$match": {}}]}}]), 72),
        (lambda: db.sales.aggregate([{"$documents": [{}]}]), 40602),
        (lambda: db.aggregate([{"$match": {}}]), 73),
        (lambda: db.aggregate([{"$documents": 5}]), 5858203),
        (lambda: db.client.admin.aggregate([{"$currentOp": {}}]), 2),
    ]
    for run, code in cases:
        with pytest.raises(OperationFailure) as e:
            list(run())
        assert e.value.code == code, e.value.details
    assert "x" not in db.list_collection_names()


def test_out_and_merge_replicate_as_document_changes(tmp_path):
    """On replicated stores: $merge's "merge" travels as a $set of its fields (a concurrent
    write of another field on another node survives), $out as the inserts, replacements and
    deletes that make the target its output."""
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    try:
        a.submit(lambda w: [w.insert(NS, {"_id": i, "v": i}) for i in range(4)]).result()
        ship(a, b)
        merge = output.parse({"$merge": {"into": "c"}}, "db")
        a.submit(lambda w: output.write(w, NS, merge, [{"_id": 1, "v": 10}, {"_id": 7, "v": 7}], str)).result()
        update(b, 1, {"$set": {"w": 1}})
        ship(a, b)
        ship(b, a)
        assert dump(a) == dump(b)
        assert {"_id": 1, "v": 10, "w": 1} in dump(a) and {"_id": 7, "v": 7} in dump(a)
        out = output.parse({"$out": "c"}, "db")
        b.submit(lambda w: output.write(w, NS, out, [{"_id": 1, "v": 1}, {"_id": 9}], str)).result()
        ship(b, a)
        assert dump(a) == dump(b) == [{"_id": 1, "v": 1}, {"_id": 9}]
    finally:
        a.close()
        b.close()


def test_merge_on_a_field_whose_value_is_a_document_matches_it_as_a_value(db):
    # An "on" value is compared for equality, never read as a query operator: a source
    # document whose k is {"$gte": 0} matches no target document with k 5.
    db.target.create_index("k", unique=True)
    db.target.insert_one({"_id": 1, "k": 5, "v": "old"})
    db.sales.aggregate([{"$match": {"_id": 0}}, {"$project": {"_id": 0, "k": {"$literal": {"$gte": 0}}, "v": "new"}},
                        {"$merge": {"into": "target", "on": "k"}}])
    assert db.target.find_one({"_id": 1}) == {"_id": 1, "k": 5, "v": "old"}
    assert db.target.count_documents({}) == 2
