"""Indexes with a collation, through pymongo against a real node: a unique index with
{locale: "en", strength: 2} refuses "A" when "a" exists (DuplicateKey with keyPattern and
keyValue), listIndexes shows the collation, a query in the index's collation reads the
index and one in another collation (or none) scans, with the results MongoDB's manual
gives; an index takes the collection's default collation; the collation travels with a
replicated index definition; a node without ICU refuses as it does for queries.

The expected behaviour is the manual's ("Collation" and "Indexes: collation"): an index
with a collation serves string comparisons only of queries in the same collation; other
queries scan (or use the index for bounds that have no strings).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import test_db_pymongo
from pymongo.collation import Collation
from pymongo.errors import DuplicateKeyError, OperationFailure
from test_db_replica_store import exclusive, open_store, ship
from test_db_views import fresh_db

from farts.db import collation
from farts.db.store import Index, ScanStats

node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client
ROOT = Path(__file__).resolve().parent.parent
CI = Collation(locale="en", strength=2)
USERS = [{"_id": i, "name": name, "n": i} for i, name in enumerate(["ada", "Bob", "bób", "carl", "Dee", "eve"])]


@pytest.fixture
def users(client, request):
    return fresh_db(client, request, "cix", users=USERS).users


def plan_of(cursor) -> tuple[str | None, dict]:
    """(the index the query read, or None for a scan; its execution stats)."""
    plan = cursor.explain()
    stage = plan["queryPlanner"]["winningPlan"]
    while "inputStage" in stage and stage["stage"] != "IXSCAN":
        stage = stage["inputStage"]
    return stage.get("indexName"), plan["executionStats"]


def test_unique_index_with_a_collation_refuses_a_case_variant(users):
    assert users.create_index("name", unique=True, collation=CI) == "name_1"
    spec = [i for i in users.list_indexes() if i["name"] == "name_1"][0]
    assert spec["unique"] is True and spec["key"] == {"name": 1}
    shown = spec["collation"]
    assert (shown["locale"], shown["strength"], shown["caseLevel"], shown["caseFirst"]) == ("en", 2, False, "off")
    assert set(shown) == {"locale", "caseLevel", "caseFirst", "strength", "numericOrdering", "alternate",
                          "maxVariable", "normalization", "backwards", "version"}
    with pytest.raises(DuplicateKeyError) as e:
        users.insert_one({"name": "ADA"})
    assert e.value.code == 11000
    assert e.value.details["keyPattern"] == {"name": 1} and e.value.details["keyValue"] == {"name": "ADA"}
    with pytest.raises(DuplicateKeyError):   # findAndModify reports it the same way
        users.find_one_and_update({"_id": 3}, {"$set": {"name": "Eve"}})
    users.insert_one({"_id": 10, "name": "ádá"})   # strength 2: accents differ
    # The key moves with the value: once "ada" is renamed, "ADA" is free.
    users.update_one({"_id": 0}, {"$set": {"name": "zed"}})
    users.insert_one({"_id": 11, "name": "ADA"})
    users.delete_one({"_id": 11})
    users.insert_one({"_id": 12, "name": "Ada"})
    # An index whose build meets two equal names under its collation is refused and leaves nothing.
    with pytest.raises(OperationFailure) as e:
        users.create_index("name", name="ci1", unique=True, collation=Collation(locale="en", strength=1))
    assert e.value.code == 11000
    assert [i["name"] for i in users.list_indexes()] == ["_id_", "name_1"]


def test_a_query_reads_the_index_only_in_its_collation(users):
    users.create_index("name", collation=CI)
    index, stats = plan_of(users.find({"name": "BOB"}, collation=CI))
    assert index == "name_1" and stats["totalDocsExamined"] == 1 == stats["nReturned"]
    assert [d["_id"] for d in users.find({"name": "BOB"}, collation=CI)] == [1]
    assert sorted(d["_id"] for d in users.find({"name": {"$in": ["ADA", "CARL"]}}, collation=CI)) == [0, 3]
    ranged = users.find({"name": {"$gte": "b", "$lt": "D"}}, collation=CI)
    assert sorted(d["_id"] for d in ranged) == [1, 2, 3]
    assert plan_of(users.find({"name": {"$gte": "b", "$lt": "D"}}, collation=CI))[0] == "name_1"
    # Strength 1 is another collation: a scan, and its own answer (bób equals bob there).
    strength1 = Collation(locale="en", strength=1)
    assert plan_of(users.find({"name": "BOB"}, collation=strength1))[0] is None
    assert sorted(d["_id"] for d in users.find({"name": "BOB"}, collation=strength1)) == [1, 2]
    # No collation: binary comparison, a scan, exact matches only.
    assert plan_of(users.find({"name": "BOB"}))[0] is None
    assert list(users.find({"name": "BOB"})) == [] and [d["_id"] for d in users.find({"name": "Bob"})] == [1]
    assert sorted(d["_id"] for d in users.find({"name": {"$gte": "b", "$lt": "d"}})) == [2, 3]
    # A sorted page in the index's collation is read in index order (no SORT stage).
    page = users.find({}, collation=CI).sort("name", 1).limit(3)
    assert [d["name"] for d in page] == ["ada", "Bob", "bób"]
    assert users.find({}, collation=CI).sort("name", 1).limit(3).explain()["queryPlanner"]["winningPlan"][
        "stage"] == "FETCH"
    assert users.find({}).sort("name", 1).limit(3).explain()["queryPlanner"]["winningPlan"]["stage"] == "SORT"
    assert [d["name"] for d in users.find({}).sort("name", 1).limit(3)] == ["Bob", "Dee", "ada"]
    # Bounds without strings are the same in every collation: the index serves them to anyone.
    users.create_index([("n", 1)], name="n_ci", collation=CI)
    assert plan_of(users.find({"n": {"$gte": 4}}))[0] == "n_ci"
    assert sorted(d["_id"] for d in users.find({"n": {"$gte": 4}})) == [4, 5]
    # Updates and deletes in the index's collation go through it too.
    assert users.update_many({"name": "DEE"}, {"$set": {"hit": 1}}, collation=CI).modified_count == 1
    assert users.delete_many({"name": "EVE"}, collation=CI).deleted_count == 1
    assert plan_of(users.find({"name": "eve"}, collation=CI))[1]["totalKeysExamined"] == 0


def test_one_key_pattern_in_two_collations(users):
    users.create_index("name", name="name_ci", collation=CI)
    users.create_index("name", name="name_bin")
    assert plan_of(users.find({"name": "Bob"}))[0] == "name_bin"
    assert plan_of(users.find({"name": "bob"}, collation=CI))[0] == "name_ci"
    with pytest.raises(OperationFailure) as e:
        users.database.command("dropIndexes", users.name, index={"name": 1})
    assert e.value.code == 119 and e.value.details["codeName"] == "AmbiguousIndexKeyPattern"
    users.drop_index("name_ci")
    assert [i["name"] for i in users.list_indexes()] == ["_id_", "name_bin"]
    # The same name with another collation is another index: refused, as MongoDB does.
    with pytest.raises(OperationFailure) as e:
        users.create_index("name", name="name_bin", collation=CI)
    assert e.value.code == 86
    # {locale: "simple"} is binary: the same index as without a collation.
    assert users.create_index("name", name="name_bin", collation=Collation(locale="simple")) == "name_bin"
    assert "collation" not in [i for i in users.list_indexes() if i["name"] == "name_bin"][0]


def test_an_index_takes_the_collections_default_collation(client, request):
    db = fresh_db(client, request, "cixd")
    db.create_collection("c", collation=CI)
    c = db.c
    c.insert_many([{"_id": 1, "tag": "red"}, {"_id": 2, "tag": "blue"}])
    c.create_index("tag", unique=True)
    spec = [i for i in c.list_indexes() if i["name"] == "tag_1"][0]
    assert spec["collation"]["locale"] == "en" and spec["collation"]["strength"] == 2
    with pytest.raises(DuplicateKeyError):
        c.insert_one({"tag": "RED"})
    assert plan_of(c.find({"tag": "BLUE"}))[0] == "tag_1"   # the query has the default too
    assert [d["_id"] for d in c.find({"tag": "BLUE"})] == [2]
    c.create_index("tag", name="tag_bin", collation=Collation(locale="simple"))
    assert "collation" not in [i for i in c.list_indexes() if i["name"] == "tag_bin"][0]


def test_a_bad_index_collation_is_refused_as_on_queries(users):
    for spec, code in (({"locale": "xx_bogus"}, 2), ({"strength": 2}, 40414), ({"locale": "en", "bogus": 1}, 40415),
                       ({"locale": "simple", "strength": 1}, 2)):
        with pytest.raises(OperationFailure) as e:
            users.create_index("name", collation=spec)
        assert e.value.code == code, spec
    assert [i["name"] for i in users.list_indexes()] == ["_id_"]


def test_without_icu_an_index_collation_is_refused_with_the_query_error():
    # A Python in which PyICU cannot be imported (as when the `collation` extra is not installed).
    script = ("import sys; sys.modules['icu'] = None\n"
              "from farts.db import commands, collation\n"
              "for run in (lambda: commands.parse_index_spec({'key': {'a': 1}, 'collation': {'locale': 'en'}}),\n"
              "            lambda: collation.parse({'locale': 'en'})):\n"
              "    try:\n"
              "        run()\n"
              "    except Exception as e:\n"
              "        print(e.code, e.message)\n"
              "print(commands.parse_index_spec({'key': {'a': 1}, 'collation': {'locale': 'simple'}}).collation)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    index_error, query_error, simple = out.stdout.splitlines()
    assert index_error == query_error and index_error.startswith("2 ")
    assert "no ICU (install PyICU)" in index_error and simple == "()"


def test_the_collation_travels_with_a_replicated_index_definition(tmp_path):
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    ns = "t$db.c"
    try:
        ci = collation.parse({"locale": "en", "strength": 2})
        exclusive(a, lambda w: w.create_index(ns, Index("name_1", (("name", 1),), unique=True,
                                                        collation=ci.identity)))
        a.submit(lambda w: w.insert(ns, {"_id": 1, "name": "ada"})).result()
        ship(a, b)
        assert b.catalog[ns].index("name_1").collation == ci.identity
        with pytest.raises(Exception) as e:   # b enforces it in the same collation
            b.submit(lambda w: w.insert(ns, {"_id": 2, "name": "ADA"})).result()
        assert e.value.code == 11000
        stats = ScanStats()
        plan, matcher = collation.plan_and_matcher({"name": "ADA"}, ci)
        with b.read() as txn:
            assert b.scan(txn, ns, plan, matcher, stats) == [{"_id": 1, "name": "ada"}]
        assert stats.index == "name_1"
        # The same name with another collation (a later createIndex elsewhere) is rebuilt as that one.
        exclusive(b, lambda w: w.drop_index(ns, "name_1"))
        exclusive(b, lambda w: w.create_index(ns, Index("name_1", (("name", 1),), unique=True)))
        ship(b, a)
        assert a.catalog[ns].index("name_1").collation == ()
        a.submit(lambda w: w.insert(ns, {"_id": 3, "name": "ADA"})).result()
    finally:
        a.close()
        b.close()
