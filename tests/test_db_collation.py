"""Collation through pymongo (and the Node driver) against a real node: find, count,
distinct, aggregate, update, delete and findAndModify with locale, strength, caseLevel,
caseFirst, numericOrdering and alternate; a collection's default collation; MongoDB's
errors for a bad collation document and a locale ICU cannot serve.

mongomock does not implement collation (it raises NotImplementedError for it): no
differential; the expected orders are those MongoDB's manual gives for each option
(strength 1: base letters only, 2: accents too, 3: case too; numericOrdering: "10" after
"9"), and ICU's, which MongoDB uses too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import test_db_pymongo
from pymongo.collation import Collation
from pymongo.errors import OperationFailure
from test_db_views import fresh_db

# One node and client for the module (test_db_pymongo's fixtures).
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client
ROOT = Path(__file__).resolve().parent.parent
WORDS = [{"_id": 1, "w": "cote"}, {"_id": 2, "w": "Côte"}, {"_id": 3, "w": "côte"}, {"_id": 4, "w": "coté"},
         {"_id": 5, "w": "COTE"}, {"_id": 6, "w": "10"}, {"_id": 7, "w": "9"}, {"_id": 8, "w": "b"}]
CI = Collation(locale="en", strength=2)


@pytest.fixture
def col(client, request):
    return fresh_db(client, request, "coll", words=WORDS).words


def ids(docs):
    return [d["_id"] for d in docs]


def test_strengths_in_find_count_and_distinct(col):
    assert sorted(ids(col.find({"w": "cote"}))) == [1]
    assert sorted(ids(col.find({"w": "cote"}, collation=Collation(locale="fr", strength=1)))) == [1, 2, 3, 4, 5]
    assert sorted(ids(col.find({"w": "cote"}, collation=CI))) == [1, 5]
    assert sorted(ids(col.find({"w": "côte"}, collation=CI))) == [2, 3]
    assert sorted(ids(col.find({"w": {"$in": ["COTE", "B"]}}, collation=CI))) == [1, 5, 8]
    # Ranges too: at strength 1 every cote variant equals COTE, so only "b" is in ("a", COTE).
    assert ids(col.find({"w": {"$gt": "a", "$lt": "COTE"}}, collation=Collation(locale="en", strength=1))) == [8]
    assert sorted(ids(col.find({"w": {"$gt": "C", "$lt": "a"}}))) == [2, 5]   # binary: capitals before "a"
    assert col.count_documents({"w": "COTE"}, collation=CI) == 2
    assert col.count_documents({"w": "cote"}, collation=Collation(locale="en", strength=1)) == 5
    assert len(col.distinct("w", collation=CI)) == 6   # cote/COTE, côte/Côte, coté, 10, 9, b
    # caseLevel: case matters even at strength 1; accents still do not.
    cl = Collation(locale="en", strength=1, caseLevel=True)
    assert sorted(ids(col.find({"w": "cote"}, collation=cl))) == [1, 3, 4]
    # A regex ignores the collation (as in MongoDB); the other clauses keep it.
    assert sorted(ids(col.find({"w": {"$regex": "^c"}, "_id": {"$lt": 6}}, collation=CI))) == [1, 3, 4]
    with pytest.raises(OperationFailure):
        col.find_one({"w": "x"}, collation={"locale": "simple", "strength": 1})


def test_sorts(col):
    en = list(col.find({"_id": {"$lt": 6}}, collation=Collation(locale="en")).sort([("w", 1), ("_id", 1)]))
    assert [d["w"] for d in en] == ["cote", "COTE", "coté", "côte", "Côte"]
    upper = list(col.find({"_id": {"$lt": 6}}, collation=Collation(locale="en", caseFirst="upper"))
                 .sort([("w", 1), ("_id", 1)]))
    assert [d["w"] for d in upper] == ["COTE", "cote", "coté", "Côte", "côte"]
    # French backwards (accents compared from the end of the word): côte before coté.
    fr = list(col.find({"_id": {"$lt": 6}}, collation=Collation(locale="fr_CA", strength=2)).sort([("w", 1), ("_id", 1)]))
    assert [d["w"] for d in fr] == ["cote", "COTE", "Côte", "côte", "coté"]
    numeric = list(col.find({"_id": {"$gt": 5}}, collation=Collation(locale="en", numericOrdering=True)).sort("w", 1))
    assert [d["w"] for d in numeric] == ["9", "10", "b"]
    assert [d["w"] for d in col.find({"_id": {"$gt": 5}}).sort("w", 1)] == ["10", "9", "b"]   # binary
    # alternate shifted: spaces and punctuation are ignored.
    col.insert_many([{"_id": 20, "w": "a-b"}, {"_id": 21, "w": "ab"}, {"_id": 22, "w": "a b"}])
    assert sorted(ids(col.find({"w": "ab"}, collation=Collation(locale="en", alternate="shifted")))) == [20, 21, 22]


def test_aggregate_update_delete_and_find_and_modify(col):
    got = list(col.aggregate([{"$match": {"w": "cote"}}, {"$group": {"_id": "$w", "n": {"$sum": 1}}}],
                             collation=Collation(locale="en", strength=1)))
    assert len(got) == 1 and got[0]["n"] == 5
    got = list(col.aggregate([{"$sortByCount": "$w"}, {"$match": {"count": {"$gt": 1}}}], collation=CI))
    assert sorted(d["count"] for d in got) == [2, 2]
    r = col.update_many({"w": "COTE"}, {"$set": {"hit": True}}, collation=CI)
    assert (r.matched_count, r.modified_count) == (2, 2)
    assert sorted(ids(col.find({"hit": True}))) == [1, 5]
    doc = col.find_one_and_update({"w": "CÔTE"}, {"$set": {"fam": 1}}, sort=[("_id", -1)], collation=CI)
    assert doc["_id"] == 3
    assert col.delete_many({"w": "CÔTE"}, collation=CI).deleted_count == 2
    assert col.delete_one({"w": "B"}, collation=CI).deleted_count == 1
    assert sorted(ids(col.find())) == [1, 4, 5, 6, 7]


def test_collection_default_collation(client):
    db = client.coll_default
    db.drop_collection("c")
    db.create_collection("c", collation=Collation(locale="en", strength=2))
    c = db.c
    c.insert_many([{"_id": "a", "n": 1}, {"_id": "B", "n": 2}])
    info = db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]
    assert info["options"]["collation"]["locale"] == "en" and info["options"]["collation"]["strength"] == 2
    assert c.find_one({"_id": "A"}) == {"_id": "a", "n": 1}     # the default applies, _id too
    assert c.count_documents({"_id": "b"}) == 1
    assert c.find_one({"_id": "A"}, collation=Collation(locale="simple")) is None
    assert c.update_one({"_id": "b"}, {"$inc": {"n": 1}}).modified_count == 1


def test_refusals(col):
    cases = [
        ({"locale": "xx_bogus"}, 2), ({"strength": 2}, 40414), ({"locale": "en", "bogus": 1}, 40415),
        ({"locale": "en", "strength": 7}, 2), ({"locale": "en", "caseFirst": "sideways"}, 2),
        ({"locale": "en", "strength": "2"}, 14), ({"locale": "en", "strength": float("inf")}, 14),
        ({"locale": "en", "strength": float("nan")}, 14),
    ]
    for spec, code in cases:
        for run in (lambda c: col.find_one({}, collation=c), lambda c: col.count_documents({}, collation=c),
                    lambda c: list(col.aggregate([], collation=c)),
                    lambda c: col.update_one({"_id": 1}, {"$set": {"x": 1}}, collation=c)):
            with pytest.raises(OperationFailure) as e:
                run(spec)
            assert e.value.code == code, (spec, e.value.details)
    assert col.find_one({"_id": 1}) == WORDS[0]


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed; ci/setup installs it")
def test_node_driver_validation_views_out_merge_collation(node):
    host, port = test_db_pymongo.db_address(node)
    env = {**os.environ, "NODE_PATH": str(ROOT / "tests" / "node" / "node_modules")}
    out = subprocess.run(["node", str(ROOT / "tests" / "node" / "db_schema_views.js"), str(port)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["invalid"]["code"] == 121 and r["invalid"]["codeName"] == "DocumentValidationFailure"
    assert r["invalid"]["errInfo"]["failingDocumentId"] == 2
    assert r["bypass"] is True and r["warned"] is True
    assert r["evil"]["code"] == 121 and r["evilOk"] is True and r["nestedBackref"]["code"] == 51091
    assert r["view"] == [{"_id": 1, "name": "ada"}] and r["viewCount"] == 1 and r["viewType"] == "view"
    assert r["viewWrite"]["code"] == 166
    assert r["copy"] == [{"_id": 1, "name": "ada"}, {"_id": 3}]
    assert r["merged"] == [{"_id": 1, "name": "ada", "extra": True}, {"_id": 3}]
    assert r["collationFind"] == [2, 3] and r["collationCount"] == 2 and r["collationDelete"] == 1
    assert r["collationSort"] == ["9", "10", "a", "A", "b"]
    assert r["badLocale"]["code"] == 2
    assert r["indexDup"] == {"code": 11000, "keyValue": {"t": "RED"}, "keyPattern": {"t": 1}}
    assert r["indexCollation"]["locale"] == "en" and r["indexCollation"]["strength"] == 2
    assert r["indexUsed"] == "t_1" and r["indexFound"] == [1] and r["indexBinaryScan"] == "COLLSCAN"
