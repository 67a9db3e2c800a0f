"""Views through pymongo against a real node: create with viewOn/pipeline, reads through
find, count, distinct and aggregate (views over views too), writes refused with
CommandNotSupportedOnView (166) as MongoDB refuses them, listCollections' type "view",
collMod of a view's pipeline, and the definitions MongoDB refuses.

mongomock has no views (create_collection ignores viewOn): no differential; the expected
results are computed here from the documents with the same pipeline run by hand.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import test_db_pymongo
from pymongo.errors import OperationFailure

from farts.db import views
from farts.db.errors import MongoError

# One node and client for the module (test_db_pymongo's fixtures).
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client

PEOPLE = [{"_id": i, "name": f"p{i}", "age": 20 + i, "city": ["oslo", "rome", "lima"][i % 3],
           "secret": i * 7} for i in range(12)]


def fresh_db(client, request, prefix: str, **collections):
    """A database of one test's own: dropped, then filled with the collections given."""
    d = client[f"{prefix}_{request.node.name[-20:]}"]
    client.drop_database(d.name)
    for name, docs in collections.items():
        d[name].insert_many(docs)
    return d


@pytest.fixture
def db(client, request):
    return fresh_db(client, request, "views", people=PEOPLE)


def test_reads_through_a_view(db):
    db.create_collection("adults", viewOn="people", pipeline=[
        {"$match": {"age": {"$gte": 25}}}, {"$project": {"secret": 0}}])
    adults = db.adults
    expected = [{k: v for k, v in p.items() if k != "secret"} for p in PEOPLE if p["age"] >= 25]
    assert list(adults.find().sort("_id", 1)) == expected
    assert list(adults.find({"city": "rome"}, {"name": 1, "_id": 0}).sort("age", -1).skip(1).limit(2)) == \
        [{"name": p["name"]} for p in sorted(expected, key=lambda p: -p["age"]) if p["city"] == "rome"][1:3]
    assert adults.find_one({"_id": 6}) == expected[1]
    assert adults.count_documents({}) == len(expected)
    assert adults.count_documents({"city": "oslo"}) == sum(p["city"] == "oslo" for p in expected)
    assert adults.estimated_document_count() == len(expected)
    assert sorted(adults.distinct("city")) == ["lima", "oslo", "rome"]
    assert adults.distinct("age", {"city": "lima"}) == [p["age"] for p in expected if p["city"] == "lima"]
    got = list(adults.aggregate([{"$group": {"_id": "$city", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]))
    assert got == [{"_id": c, "n": sum(p["city"] == c for p in expected)} for c in ("lima", "oslo", "rome")]
    # Many batches through getMore.
    assert len(list(adults.find(batch_size=2))) == len(expected)
    # A view over a view: both pipelines, the lower one first.
    db.create_collection("adult_names", viewOn="adults", pipeline=[{"$project": {"name": 1}}])
    assert list(db.adult_names.find({"_id": {"$lt": 7}})) == [{"_id": 5, "name": "p5"}, {"_id": 6, "name": "p6"}]
    # The view follows its collection.
    db.people.insert_one({"_id": 99, "name": "late", "age": 90, "city": "oslo", "secret": 0})
    assert db.adults.count_documents({"_id": 99}) == 1


def test_list_collections_and_coll_mod(db):
    db.create_collection("v", viewOn="people", pipeline=[{"$match": {"city": "oslo"}}])
    infos = {c["name"]: c for c in db.list_collections()}
    assert infos["v"] == {"name": "v", "type": "view", "options": {"viewOn": "people", "pipeline": [
        {"$match": {"city": "oslo"}}]}, "info": {"readOnly": True}}
    assert infos["people"]["type"] == "collection"
    assert db.list_collection_names(filter={"type": "view"}) == ["v"]
    db.command("collMod", "v", viewOn="people", pipeline=[{"$match": {"city": "lima"}}])
    assert {d["city"] for d in db.v.find()} == {"lima"}
    with pytest.raises(OperationFailure) as e:
        db.command("collMod", "v", pipeline=[])
    assert e.value.code == 72
    with pytest.raises(OperationFailure) as e:
        db.command("collMod", "v", validator={"a": 1})
    assert e.value.code == 72
    db.v.drop()
    assert "v" not in db.list_collection_names()


def test_writes_to_a_view_are_refused(db):
    db.create_collection("v", viewOn="people", pipeline=[])
    v = db.v
    for write in (lambda: v.insert_one({"x": 1}), lambda: v.update_one({}, {"$set": {"x": 1}}),
                  lambda: v.delete_many({}), lambda: v.replace_one({"_id": 1}, {}),
                  lambda: v.find_one_and_update({}, {"$set": {"x": 1}}), lambda: v.create_index("x"),
                  lambda: db.people.aggregate([{"$out": "v"}]),
                  lambda: db.people.aggregate([{"$merge": {"into": "v"}}])):
        with pytest.raises(OperationFailure) as e:
            write()
        assert (e.value.code, e.value.details["codeName"]) == (166, "CommandNotSupportedOnView")
        assert "is a view, not a collection" in e.value.details["errmsg"]
    assert db.people.count_documents({}) == len(PEOPLE)
    with pytest.raises(OperationFailure) as e:   # refused rather than an empty plan
        v.find().explain()
    assert e.value.code == 2


def test_definitions_mongodb_refuses(db):
    db.create_collection("v1", viewOn="people", pipeline=[])
    cases = [
        (dict(viewOn="people", pipeline=[{"$out": "x"}]), 157),
        (dict(viewOn="people", pipeline=[{"$bogus": 1}]), 40324),
        (dict(viewOn="people", pipeline={"$match": {}}), 14),
        (dict(viewOn="people", pipeline=[], validator={"a": 1}), 72),
        (dict(pipeline=[]), 2),
    ]
    for opts, code in cases:
        with pytest.raises(OperationFailure) as e:
            db.command("create", "bad", **opts)
        assert e.value.code == code, (opts, e.value.details)
    with pytest.raises(OperationFailure) as e:
        db.command("create", "v1", viewOn="people", pipeline=[])
    assert e.value.code == 48
    # A cycle through collMod.
    db.create_collection("v2", viewOn="v1", pipeline=[])
    with pytest.raises(OperationFailure) as e:
        db.command("collMod", "v1", viewOn="v2", pipeline=[])
    assert (e.value.code, e.value.details["codeName"]) == (160, "GraphContainsCycle")


def test_a_view_of_a_tenant_whose_id_holds_a_dot_reads_its_own_database():
    catalog = {"acme.eu$shop.items": SimpleNamespace(options={}),
               "acme.eu$shop.cheap": SimpleNamespace(options={"viewOn": "items", "pipeline": [{"$match": {"p": 1}}]}),
               "acme.eu$shop.cheapest": SimpleNamespace(options={"viewOn": "cheap", "pipeline": []})}
    assert views.db_of("acme.eu$shop.items") == "acme.eu$shop."
    assert views.resolve(catalog, "acme.eu$shop.cheapest") == ("acme.eu$shop.items", [{"$match": {"p": 1}}])
    with pytest.raises(MongoError, match="cycle"):
        views.check_definition(catalog, "acme.eu$shop.items", "cheapest", [], lambda ns: ns)
