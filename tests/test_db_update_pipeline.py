"""The update language beyond operators: pipeline updates (with $setField/$getField/$literal
for names with dots and dollars), arrayFilters, let/$$NOW variables, and how a pipeline update
is replicated (its field changes, merged like operators).

Exact cases on the engine, a differential against mongomock for pipeline updates, then the
same through pymongo against a real node. Known gaps of the oracle (mongomock 4.3):
1. no arrayFilters, no `let` and no `hint` in updates (it raises NotImplementedError);
2. no $getField/$setField/$unsetField/$let/$mergeObjects/$reduce/$type expressions, no $unset and
   no $replaceWith stage ($project with 0 and $replaceRoot are compared instead); expressions
   inside an array literal are not evaluated ([1, "$a"] stays as written);
3. a pipeline stage that removes _id is refused (MongoDB keeps the document's _id): the
   compared pipelines keep it.
So arrayFilters, let and the field operators are checked against MongoDB's documented
results (the manual's examples) instead.
"""
from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import bson
import mongomock
import pytest
import test_db_pymongo
from bson.decimal128 import Decimal128
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import OperationFailure, WriteError
from test_db_engine import raises
from test_db_pymongo import db_address

from farts.db.commands import _write_changed
from farts.db.errors import MongoError
from farts.db.store import Store
from farts.db.update import Update, apply_update, field_changes
from farts.db.variables import command_variables

ROOT = Path(__file__).resolve().parent.parent
NS = "t$db.c"


# --- pipeline updates on the engine ----------------------------------------------------------

def test_pipeline_stages():
    doc = {"_id": 1, "a": 2, "b": {"c": 3}, "l": [1, 2, 3]}
    assert apply_update(doc, [{"$set": {"s": {"$add": ["$a", "$b.c"]}, "b.d": "$a"}}]) == \
        {"_id": 1, "a": 2, "b": {"c": 3, "d": 2}, "l": [1, 2, 3], "s": 5}
    assert apply_update(doc, [{"$addFields": {"n": {"$size": "$l"}}}, {"$unset": ["a", "b.c"]}]) == \
        {"_id": 1, "b": {}, "l": [1, 2, 3], "n": 3}
    assert apply_update(doc, [{"$project": {"a": 1}}]) == {"_id": 1, "a": 2}
    # A stage that drops _id keeps the document's (MongoDB puts it back, first).
    assert apply_update(doc, [{"$project": {"_id": 0, "a": 1}}]) == {"_id": 1, "a": 2}
    assert apply_update(doc, [{"$replaceWith": "$b"}]) == {"_id": 1, "c": 3}
    assert apply_update(doc, [{"$replaceRoot": {"newRoot": {"x": "$a"}}}]) == {"_id": 1, "x": 2}
    assert apply_update(doc, [{"$set": {"a": "$$REMOVE"}}]) == {"_id": 1, "b": {"c": 3}, "l": [1, 2, 3]}
    assert apply_update(doc, [{"$set": {"root": "$$ROOT._id"}}])["root"] == 1
    assert doc == {"_id": 1, "a": 2, "b": {"c": 3}, "l": [1, 2, 3]}   # left untouched
    assert apply_update(doc, []) == doc


def test_the_manuals_pipeline_update_examples():
    """db.collection.updateMany() "Update with Aggregation Pipeline" examples, with their results."""
    now = datetime.datetime(2026, 12, 5, 20, 0, 0)
    variables = command_variables(now)
    doc = {"_id": 1, "quiz1": 8, "test2": 100, "quiz2": 9, "modified": "old"}
    merged = apply_update(doc, [{"$replaceRoot": {"newRoot": {"$mergeObjects": [
        {"quiz1": 0, "quiz2": 0, "test1": 0, "test2": 0}, "$$ROOT"]}}}, {"$set": {"modified": "$$NOW"}}],
        variables=variables)
    assert list(merged.items()) == [("_id", 1), ("quiz1", 8), ("quiz2", 9), ("test1", 0), ("test2", 100),
                                    ("modified", now)]
    graded = apply_update({"_id": 1, "tests": [95, 92, 90]}, [
        {"$set": {"average": {"$trunc": [{"$avg": "$tests"}, 0]}, "modified": "$$NOW"}},
        {"$set": {"grade": {"$switch": {"branches": [
            {"case": {"$gte": ["$average", 90]}, "then": "A"}, {"case": {"$gte": ["$average", 80]}, "then": "B"}],
            "default": "F"}}}}], variables=variables)
    assert graded == {"_id": 1, "tests": [95, 92, 90], "average": 92.0, "modified": now, "grade": "A"}
    assert apply_update({"_id": 1, "quizzes": [4, 6, 7]}, [{"$set": {"quizzes": {"$concatArrays": [
        "$quizzes", [8, 6]]}}}])["quizzes"] == [4, 6, 7, 8, 6]
    temps = apply_update({"_id": 1, "temperatures": [4, 12, 3]}, [{"$addFields": {"tempsF": {"$map": {
        "input": "$temperatures", "as": "celsius", "in": {"$add": [{"$multiply": ["$$celsius", 9 / 5]}, 32]}}}}}])
    assert temps["tempsF"] == [39.2, 53.6, 37.4]
    other = apply_update({"_id": 1, "t": [1, 7, 9], "o": {"a": 1}}, [{"$set": {
        "big": {"$filter": {"input": "$t", "cond": {"$gt": ["$$this", 5]}}},
        "sum": {"$reduce": {"input": "$t", "initialValue": 0, "in": {"$add": ["$$value", "$$this"]}}},
        "kinds": [{"$type": "$t"}, {"$type": "$nope"}, {"$isArray": "$o"}],
        "pairs": {"$objectToArray": "$o"}, "back": {"$arrayToObject": [[["k", 2]]]},
        "n": [{"$round": [2.5]}, {"$round": [3.5]}, {"$mod": [-7, 3]}, {"$abs": -2}, {"$floor": 2.5},
              {"$toString": 2.5}]}}])
    assert (other["big"], other["sum"], other["kinds"]) == ([7, 9], 17, ["array", "missing", False])
    assert (other["pairs"], other["back"], other["n"]) == ([{"k": "a", "v": 1}], {"k": 2}, [2.0, 4.0, -1, 2, 2.0, "2.5"])
    raises(40066, apply_update, doc, [{"$set": {"g": {"$switch": {"branches": [{"case": False, "then": 1}]}}}}])
    raises(16883, apply_update, doc, [{"$set": {"g": {"$map": {"input": 1, "in": 1}}}}])
    raises(16879, apply_update, doc, [{"$set": {"g": {"$map": {"input": [], "in": 1, "bogus": 1}}}}])


def test_pipeline_refusals():
    doc = {"_id": 1, "a": 2}
    e = raises(72, apply_update, doc, [{"$match": {"a": 2}}])
    assert e.code_name == "InvalidOptions" and e.message == "$match is not allowed to be used within an update"
    raises(72, apply_update, doc, [{"$group": {"_id": None}}])
    raises(40324, apply_update, doc, [{"$bogus": {}}])
    raises(66, apply_update, doc, [{"$set": {"_id": 2}}])
    raises(66, apply_update, doc, [{"$replaceWith": {"_id": 3}}])
    raises(40228, apply_update, doc, [{"$replaceWith": "$a"}])
    raises(168, apply_update, doc, [{"$set": {"x": {"$nope": 1}}}])
    raises(9, apply_update, doc, [{"$set": {"x": 1}}], array_filters=[{"i": 1}])
    raises(9, apply_update, doc, {"x": 1}, array_filters=[{"i": 1}])
    # Refused before any document: the statement is parsed once.
    raises(72, Update, [{"$sort": {"a": 1}}])


def test_field_names_with_dots_and_dollars():
    doc = {"_id": 1, "price.usd": 5, "$qty": 2}
    set_dotted = [{"$replaceWith": {"$setField": {"field": "price.usd", "input": "$$ROOT", "value": 7}}}]
    assert apply_update(doc, set_dotted) == {"_id": 1, "price.usd": 7, "$qty": 2}
    set_dollar = [{"$replaceWith": {"$setField": {"field": {"$literal": "$qty"}, "input": "$$ROOT",
                                                  "value": {"$add": [{"$getField": {"$literal": "$qty"}}, 1]}}}}]
    assert apply_update(doc, set_dollar) == {"_id": 1, "price.usd": 5, "$qty": 3}
    remove = [{"$replaceWith": {"$unsetField": {"field": "price.usd", "input": "$$ROOT"}}}]
    assert apply_update(doc, remove) == {"_id": 1, "$qty": 2}
    read = [{"$set": {"p": {"$getField": {"field": "price.usd", "input": "$$CURRENT"}}}}]
    assert apply_update(doc, read)["p"] == 5
    assert apply_update(doc, [{"$set": {"lit": {"$literal": "$notAPath"}}}])["lit"] == "$notAPath"
    raises(5654602, apply_update, doc, [{"$set": {"x": {"$getField": "$qty"}}}])
    raises(3041701, apply_update, doc, [{"$set": {"x": {"$getField": {"field": "a", "bogus": 1}}}}])
    raises(4161107, apply_update, doc, [{"$set": {"x": {"$setField": {"field": 1, "input": {}, "value": 1}}}}])


def test_variables():
    now = datetime.datetime(2026, 12, 5, 20, 0, 0)
    variables = command_variables(now, {"target": {"$add": [40, 2]}, "obj": {"k": "v"}}, {"c1": "$$target"})
    assert variables["target"] == 42 and variables["c1"] == 42 and variables["NOW"] == now
    doc = {"_id": 1, "a": 1}
    new = apply_update(doc, [{"$set": {"t": "$$target", "k": "$$obj.k", "at": "$$NOW", "ts": "$$CLUSTER_TIME"}}],
                       variables=variables)
    assert (new["t"], new["k"], new["at"]) == (42, "v", now)
    assert new["ts"].time == int((now - datetime.datetime(1970, 1, 1)).total_seconds())
    # $let's own variables hide the command's inside its scope; $literal is not entered.
    hidden = [{"$set": {"v": {"$let": {"vars": {"target": 1}, "in": "$$target"}}, "l": {"$literal": "$$target"}}}]
    assert apply_update(doc, hidden, variables=variables) == {"_id": 1, "a": 1, "v": 1, "l": "$$target"}
    raises(17276, apply_update, doc, [{"$set": {"x": "$$nope"}}], variables=variables)
    e = raises(16867, command_variables, now, {"Bad": 1})
    assert e.code_name == "Location16867"
    raises(16868, command_variables, now, {"a-b": 1})


_LEAVES = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.sampled_from(
    ["$a", "$l", "$s", "$s.k", "$$ROOT", "$$REMOVE", "$$this", "x", "$nope"]), st.none(), st.booleans(),
    st.builds(Decimal128, st.sampled_from(["1.5", "-2", "Infinity", "NaN"])))
_OPERATOR_NAMES = ["$add", "$round", "$trunc", "$floor", "$abs", "$mod", "$type", "$toString", "$concatArrays",
                   "$mergeObjects", "$objectToArray", "$arrayToObject", "$isArray", "$cond", "$switch",
                   "$map", "$filter", "$reduce", "$let", "$getField", "$setField", "$unsetField"]
EXPRESSIONS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.builds(lambda op, args: {op: args}, st.sampled_from(_OPERATOR_NAMES),
              st.one_of(inner, st.lists(inner, max_size=3), st.fixed_dictionaries({}, optional={
                  k: inner for k in ("input", "in", "as", "cond", "field", "value", "vars", "initialValue",
                                     "branches", "default", "limit")})))), max_leaves=8)


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(EXPRESSIONS, st.sampled_from(["$set", "$replaceWith", "$project"]))
def test_any_pipeline_update_gives_a_document_or_a_mongodb_error(expr, stage):
    """Bad input gets MongoDB's error, never a Python exception (the server would answer an
    InternalError)."""
    doc = {"_id": 1, "a": 2, "l": [1, {"k": 2}], "s": {"k": "v"}}
    arg = {"out": expr} if stage != "$replaceWith" else expr
    try:
        new = apply_update(doc, [{stage: arg}])
    except MongoError:
        return
    assert new["_id"] == 1
    bson.encode(new)


# --- arrayFilters ----------------------------------------------------------------------------

def test_array_filters():
    doc = {"_id": 1, "grades": [95, 92, 90, 100], "items": [{"g": 80, "m": 75}, {"g": 85, "m": 90}, {"g": 90, "m": 85}]}
    assert apply_update(doc, {"$set": {"grades.$[e]": 100}}, array_filters=[{"e": {"$gte": 95}}])["grades"] == \
        [100, 92, 90, 100]
    # The manual's example: $inc the matching documents of an array.
    new = apply_update(doc, {"$inc": {"items.$[x].m": 10}}, array_filters=[{"x.g": {"$gte": 85}}])
    assert new["items"] == [{"g": 80, "m": 75}, {"g": 85, "m": 100}, {"g": 90, "m": 95}]
    both = apply_update(doc, {"$set": {"items.$[x].top": True}},
                        array_filters=[{"x.g": {"$gte": 85}, "x.m": {"$gte": 90}}])["items"]
    assert [("top" in i) for i in both] == [False, True, False]
    either = apply_update(doc, {"$set": {"items.$[x].t": 1}},
                          array_filters=[{"$or": [{"x.g": 80}, {"x.m": 85}]}])["items"]
    assert [("t" in i) for i in either] == [True, False, True]
    nested = {"_id": 2, "d": [{"v": [1, 5, 9]}, {"v": [7]}]}
    assert apply_update(nested, {"$mul": {"d.$[].v.$[big]": 2}}, array_filters=[{"big": {"$gt": 4}}])["d"] == \
        [{"v": [1, 10, 18]}, {"v": [14]}]
    assert apply_update(doc, {"$set": {"grades.$[e]": 0}}, array_filters=[{"e": {"$gt": 1000}}]) == doc


def test_array_filter_refusals():
    doc = {"_id": 1, "a": [1, 2]}
    e = raises(9, apply_update, doc, {"$set": {"a.$[i]": 5}}, array_filters=[{"i": 1}, {"j": 0}])
    assert "The array filter for identifier 'j' was not used in the update" in e.message
    e = raises(2, apply_update, doc, {"$set": {"a.$[k]": 5}}, array_filters=[{"i": 1}])
    assert e.message == "No array filter found for identifier 'k' in path 'a.$[k]'"
    e = raises(9, apply_update, doc, {"$set": {"a.$[i]": 5}}, array_filters=[{"i": 0}, {"i": 1}])
    assert e.message == "Found multiple array filters with the same top-level field name i"
    raises(2, apply_update, doc, {"$set": {"a.$[I]": 5}}, array_filters=[{"I": 1}])
    raises(2, apply_update, doc, {"$set": {"b.$[i]": 5}}, array_filters=[{"i": 1}])


# --- replication: a pipeline update ships as its field changes --------------------------------

def _as_update(old: dict, changes: dict) -> dict:
    return apply_update(old, changes) if changes else old


def test_field_changes_rebuild_the_result():
    rng = random.Random(17)
    values = [1, "s", None, [1, 2], {"x": 1}, {"x": {"y": 2}, "z": 3}, 2.5]
    for _ in range(300):
        old = {"_id": 1, **{k: rng.choice(values) for k in rng.sample("abcde", rng.randint(0, 5))}}
        new = {"_id": 1, **{k: rng.choice(values) for k in rng.sample("abcdef", rng.randint(0, 6))}}
        changes = field_changes(old, new)
        assert set(changes) <= {"$set", "$unset"}
        rebuilt = _as_update(old, changes)
        assert bson.decode(bson.encode(rebuilt)) == bson.decode(bson.encode(new)) or \
            dict(sorted(rebuilt.items())) == dict(sorted(new.items())), (old, new, changes)
    # Changes inside a sub-document are paths into it (they merge with other fields' writes).
    assert field_changes({"_id": 1, "s": {"a": 1, "b": 2}}, {"_id": 1, "s": {"a": 1, "b": 3}}) == {"$set": {"s.b": 3}}
    # A changed name that cannot be a path: shipped as the whole document instead.
    assert field_changes({"_id": 1}, {"_id": 1, "a.b": 1}) is None
    assert field_changes({"_id": 1, "$x": 1, "k": 1}, {"_id": 1, "$x": 1, "k": 2}) == {"$set": {"k": 2}}


def test_a_pipeline_update_merges_with_a_concurrent_increment(tmp_path):
    """Shipped as a whole document, the pipeline update (later in stamp order) would wipe the
    other node's concurrent $inc; shipped as its field changes, both survive on both nodes."""
    a, b = (Store(tmp_path / n, n, sync=False, replicated=True) for n in ("a", "b"))
    try:
        a.submit(lambda w: w.insert(NS, {"_id": 1, "n": 0, "a": 1, "s": {"k": 1, "m": 2}})).result()
        ship(a, b)

        def write(store, update, now=None):
            def run(w):
                old = w.get(NS, 1)
                _write_changed(w, NS, old, update.apply(old, now=now), update, now)
            store.submit(run).result()

        write(b, Update({"$inc": {"n": 5, "s.m": 1}}))
        write(a, Update([{"$set": {"a": {"$add": ["$a", 10]}, "t": "x", "s.k": 7}}, {"$unset": "s.gone"}]))
        ship(a, b)
        ship(b, a)
        want = {"_id": 1, "n": 5, "a": 11, "s": {"k": 7, "m": 3}, "t": "x"}
        for store in (a, b):
            with store.read() as txn:
                got = store.get(txn, NS, 1)
            assert dict(sorted(got.items())) == want and got["s"] == want["s"]
    finally:
        a.close()
        b.close()


def ship(src: Store, dst: Store) -> None:
    have = dst.applied()
    records = []
    for origin in src.applied():
        records += src.records_after(origin, have.get(origin, (0, 0))[0], 10_000) or []
    dst.apply_remote(records).result()


# --- differential: pipeline updates against mongomock ----------------------------------------

PIPELINES = [
    [{"$set": {"total": {"$add": ["$a", "$b"]}}}],
    [{"$set": {"a": {"$multiply": ["$a", 2]}, "s.t": "$b"}}, {"$project": {"b": 0}}],
    [{"$addFields": {"big": {"$gt": ["$a", 3]}}}],
    [{"$project": {"a": 1, "s": 1}}],
    [{"$replaceRoot": {"newRoot": {"_id": "$_id", "s": {"$ifNull": ["$s", {"empty": True}]}}}}],
    [{"$replaceRoot": {"newRoot": {"_id": "$_id", "v": {"$concat": ["x", "$name"]}}}}],
    [{"$set": {"n": {"$cond": [{"$gte": ["$a", 2]}, "high", "low"]}}}, {"$project": {"n": 1, "a": 1}}],
    [{"$project": {"s.t": 0, "name": 0}}],
    [{"$set": {"m": {"$map": {"input": [1, 2], "as": "x", "in": {"$add": ["$$x", "$a"]}}}}}],
    [{"$set": {"f": {"$filter": {"input": [1, 2, 3, 4, 5], "as": "x", "cond": {"$gt": ["$$x", "$a"]}}}}}],
    [{"$set": {"c": {"$concatArrays": [[1], [2, 3]]}}}],
    [{"$set": {"sw": {"$switch": {"branches": [{"case": {"$gt": ["$a", 3]}, "then": "hi"}], "default": "lo"}}}}],
    [{"$set": {"abs": {"$abs": "$b"}, "fl": {"$floor": {"$divide": ["$a", 3]}}, "m": {"$mod": ["$a", 3]}}}],
]


def _docs(rng: random.Random) -> list[dict]:
    docs = []
    for i in range(30):
        d = {"_id": i, "a": rng.randint(0, 5), "b": rng.randint(-3, 3), "name": rng.choice(["p", "q"])}
        if rng.random() < 0.6:
            d["s"] = {"t": rng.randint(0, 3), "u": "x"}
        docs.append(d)
    return docs


@pytest.mark.parametrize("index", range(len(PIPELINES)))
def test_pipeline_updates_match_mongomock(index):
    pipeline = PIPELINES[index]
    docs = _docs(random.Random(index))
    oracle = mongomock.MongoClient().db.c
    oracle.insert_many([dict(d) for d in docs])
    oracle.update_many({}, pipeline)
    want = {d["_id"]: d for d in oracle.find()}
    for d in docs:
        got = apply_update(d, pipeline)
        assert dict(sorted(got.items())) == dict(sorted(want[d["_id"]].items())), (d, pipeline)


# --- through pymongo, against a node ---------------------------------------------------------

# test_db_pymongo's fixtures: a node of this module's own, and a pymongo client of it.
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client


def test_pipeline_updates_through_pymongo(client):
    col = client.pipe.items
    col.insert_many([{"_id": i, "qty": i, "price": 10 * i} for i in range(1, 4)])
    r = col.update_one({"_id": 1}, [{"$set": {"total": {"$multiply": ["$qty", "$price"]}}}, {"$unset": "price"}])
    assert (r.matched_count, r.modified_count) == (1, 1)
    assert col.find_one({"_id": 1}) == {"_id": 1, "qty": 1, "total": 10}
    r = col.update_many({}, [{"$set": {"tier": {"$cond": [{"$gte": ["$qty", 2]}, "big", "small"]}}}])
    assert r.modified_count == 3
    assert [d["tier"] for d in col.find(sort=[("_id", 1)])] == ["small", "big", "big"]
    after = col.find_one_and_update({"_id": 2}, [{"$replaceWith": {"$setField": {
        "field": "a.b", "input": "$$ROOT", "value": {"$literal": "$x"}}}}], return_document=True)
    assert after == {"_id": 2, "qty": 2, "price": 20, "tier": "big", "a.b": "$x"}
    col.update_one({"_id": 2}, [{"$replaceWith": {"$setField": {"field": {"$literal": "$cost"}, "input": "$$ROOT",
                                                                   "value": {"$getField": "a.b"}}}}])
    assert col.find_one({"_id": 2})["$cost"] == "$x"
    # An upsert through a pipeline starts from the filter's fields.
    r = col.update_one({"_id": 9}, [{"$set": {"made": {"$literal": True}, "at": "$$NOW"}}], upsert=True)
    made = col.find_one({"_id": 9})
    assert r.upserted_id == 9 and made["made"] is True and isinstance(made["at"], datetime.datetime)
    # The same pipeline error from update and findAndModify: code 72 both ways.
    with pytest.raises(WriteError) as e:
        col.update_one({"_id": 1}, [{"$match": {}}])
    assert (e.value.code, e.value.details["codeName"]) == (72, "InvalidOptions")
    with pytest.raises(OperationFailure) as f:
        col.find_one_and_update({"_id": 1}, [{"$match": {}}])
    assert (f.value.code, f.value.details["codeName"]) == (72, "InvalidOptions")
    assert e.value.details["errmsg"] == f.value.details["errmsg"] == "$match is not allowed to be used within an update"


def test_array_filters_through_pymongo(client):
    col = client.arrays.students
    col.insert_many([{"_id": 1, "grades": [95, 92, 90]}, {"_id": 2, "grades": [98, 100, 102]},
                     {"_id": 3, "grades": [95, 110, 100], "items": [{"g": 80}, {"g": 90}]}])
    # The manual's example (updateMany with arrayFilters).
    r = col.update_many({}, {"$set": {"grades.$[element]": 100}}, array_filters=[{"element": {"$gte": 100}}])
    assert (r.matched_count, r.modified_count) == (3, 2)
    assert [d["grades"] for d in col.find(sort=[("_id", 1)])] == [[95, 92, 90], [98, 100, 100], [95, 100, 100]]
    col.update_one({"_id": 1}, {"$inc": {"grades.$[g]": 1, "grades.$[]": 0}}, array_filters=[{"g": {"$lt": 93}}])
    assert col.find_one({"_id": 1})["grades"] == [95, 93, 91]
    doc = col.find_one_and_update({"_id": 3}, {"$set": {"items.$[i].top": True}}, array_filters=[{"i.g": {"$gt": 85}}],
                                  return_document=True)
    assert doc["items"] == [{"g": 80}, {"g": 90, "top": True}]
    r = col.bulk_write([UpdateOne({"_id": 1}, {"$set": {"grades.$[x]": 0}}, array_filters=[{"x": 95}]),
                        UpdateMany({}, {"$unset": {"grades.$[y]": ""}}, array_filters=[{"y": 100}])])
    assert r.modified_count == 3
    assert col.find_one({"_id": 2})["grades"] == [98, None, None]
    with pytest.raises(WriteError) as e:
        col.update_one({"_id": 1}, {"$set": {"grades.$[x]": 1}}, array_filters=[{"x": 1}, {"y": 2}])
    assert e.value.code == 9 and "'y' was not used" in e.value.details["errmsg"]


def test_let_through_pymongo(client):
    db = client.letdb
    col = db.orders
    col.insert_many([{"_id": i, "qty": i, "due": datetime.datetime(2020, 1, 1 + i)} for i in range(1, 6)])
    let = {"low": 2, "high": {"$add": [2, 2]}}
    in_range = {"$expr": {"$and": [{"$gte": ["$qty", "$$low"]}, {"$lte": ["$qty", "$$high"]}]}}
    assert [d["_id"] for d in col.find(in_range, let=let, sort=[("_id", 1)])] == [2, 3, 4]
    assert [d["_id"] for d in col.aggregate([{"$match": in_range}, {"$project": {"x": "$$high"}}], let=let)] == \
        [2, 3, 4]
    assert [d["x"] for d in col.aggregate([{"$match": {"_id": 1}}, {"$project": {"x": "$$high"}}], let=let)] == [4]
    shown = col.find_one({"_id": 2}, {"v": "$$high", "t": {"$gt": ["$$NOW", "$due"]}, "qty": 1}, let=let)
    assert shown == {"_id": 2, "v": 4, "t": True, "qty": 2}
    # (pymongo's Cursor.explain() leaves let out of its clone: the command itself, then.)
    plan = db.command({"explain": {"find": "orders", "filter": {"$expr": {"$lt": ["$qty", "$$low"]}}, "let": let}})
    assert plan["executionStats"]["nReturned"] == 1
    overdue = col.count_documents({"$expr": {"$lt": ["$due", "$$NOW"]}})
    assert overdue == 5
    r = col.update_many(in_range, [{"$set": {"flag": "$$mark"}}], let={**let, "mark": "mid"})
    assert r.modified_count == 3
    assert col.count_documents({"flag": "mid"}) == 3
    done = col.find_one_and_update({"$expr": {"$eq": ["$qty", "$$low"]}}, {"$set": {"seen": True}}, let=let,
                                   return_document=True)
    assert done["_id"] == 2 and done["seen"] is True
    assert col.delete_many({"$expr": {"$gt": ["$qty", "$$high"]}}, let=let).deleted_count == 1
    assert col.delete_one({"$expr": {"$eq": ["$_id", "$$one"]}}, let={"one": 1}).deleted_count == 1
    with pytest.raises(OperationFailure) as e:
        list(col.find({}, let={"Upper": 1}))
    assert (e.value.code, e.value.details["codeName"]) == (16867, "Location16867")
    # An update statement's constants (c) with the command's let.
    r = db.command({"update": "orders", "updates": [{"q": {"$expr": {"$eq": ["$_id", "$$low"]}},
                                                      "u": [{"$set": {"cv": {"$add": ["$$cv", "$$high"]}}}],
                                                      "c": {"cv": 7}}], "let": let})
    assert r["nModified"] == 1 and col.find_one({"_id": 2})["cv"] == 11
    # A "$$x" in a plain filter (outside $expr) is a string, as in MongoDB.
    col.insert_one({"_id": 10, "qty": "$$low"})
    assert [d["_id"] for d in col.find({"qty": "$$low"}, let=let)] == [10]


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed; ci/setup installs it")
def test_node_driver(node):
    host, port = db_address(node)
    env = {**os.environ, "NODE_PATH": str(ROOT / "tests" / "node" / "node_modules")}
    out = subprocess.run(["node", str(ROOT / "tests" / "node" / "db_updates.js"), str(port)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["pipeline"] == [{"_id": 1, "total": 10}, {"_id": 2, "total": 21}]
    assert r["arrayFilters"] == [[80, 96], [100]]
    assert r["fam"]["_id"] == 2 and r["fam"]["dotted"] == "$x"
    assert r["letFind"] == [2]
    assert r["letAggregate"] == [{"_id": 1, "v": 1}]
    assert r["bulk"] == {"modified": 3, "grades": [0, 96]}
    assert r["famDup"] == {"code": 11000, "keyPattern": {"total": 1}, "keyValue": {"total": 21}}
    assert r["letDelete"] == 1
    assert r["unknown"] == {"code": 40415, "codeName": "Location40415"}
    assert r["sortInUpdate"] == {"code": 40415, "codeName": "Location40415"}
    assert r["badHint"] == {"code": 2, "codeName": "BadValue"}
    assert r["dollarId"] == {"code": 52, "codeName": "DollarPrefixedFieldName"}
    assert r["badStage"] == {"code": 72, "codeName": "InvalidOptions"}
