"""What the endpoint refuses, as a MongoDB 7.0 server refuses it (code and codeName as mongod
sends them), through pymongo against a real node:

- a field a command or a statement does not have: 40415 Location40415, "BSON field
  '<command>.<field>' is an unknown field." (mongod's IDL parsers are strict), so a misspelt
  option is not silently ignored; `sort` in an update statement is 8.0's and refused so;
- an _id holding '$'-prefixed fields: 52 DollarPrefixedFieldName;
- a hint that names no index of the collection: 2 BadValue;
- findAndModify's DuplicateKey (11000) carries keyPattern and keyValue, like an insert's.
"""
from __future__ import annotations

import pytest
import test_db_pymongo
from pymongo import DeleteOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

# test_db_pymongo's fixtures: a node of this module's own, and a pymongo client of it.
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client


def failure(fn, *args, **kwargs) -> OperationFailure:
    with pytest.raises(OperationFailure) as e:
        fn(*args, **kwargs)
    return e.value


def unknown_field(db, command: dict, where: str):
    e = failure(db.command, command)
    assert (e.code, e.details["codeName"]) == (40415, "Location40415"), e.details
    assert e.details["errmsg"] == f"BSON field '{where}' is an unknown field."


def test_unknown_fields(client):
    db = client.unknown
    db.c.insert_one({"_id": 1, "a": 1})
    unknown_field(db, {"find": "c", "filter": {}, "bogusField": 1}, "find.bogusField")
    unknown_field(db, {"explain": {"find": "c", "bogusField": 1}}, "find.bogusField")
    unknown_field(db, {"insert": "c", "documents": [{"_id": 2}], "bogus": True}, "insert.bogus")
    unknown_field(db, {"count": "c", "queryy": {}}, "count.queryy")
    unknown_field(db, {"distinct": "c", "key": "a", "filter": {}}, "distinct.filter")
    unknown_field(db, {"aggregate": "c", "pipeline": [], "cursor": {}, "batchSize": 5}, "aggregate.batchSize")
    unknown_field(db, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 2}}, "bogusField": 1}]},
                  "update.updates.bogusField")
    unknown_field(db, {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 3}}}], "bogus": 1}, "update.bogus")
    unknown_field(db, {"delete": "c", "deletes": [{"q": {}, "limit": 0, "justOne": True}]}, "delete.deletes.justOne")
    unknown_field(db, {"findAndModify": "c", "query": {}, "update": {"$set": {"a": 4}}, "returnNew": True},
                  "findAndModify.returnNew")
    # Fields of the wrong type: 14 TypeMismatch, as the IDL answers.
    e = failure(db.command, {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 5}}}], "let": 5})
    assert (e.code, e.details["errmsg"]) == (14, "BSON field 'update.let' is the wrong type 'int', expected type 'object'")
    e = failure(db.command, {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 5}}, "arrayFilters": {}}]})
    assert (e.code, e.details["codeName"]) == (14, "TypeMismatch")
    cursor = db.command({"find": "c", "filter": {}, "batchSize": 0})["cursor"]
    unknown_field(db, {"getMore": cursor["id"], "collection": "c", "bogus": 1}, "getMore.bogus")
    # Nothing of a refused command was applied.
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": 1} and db.c.count_documents({}) == 1
    # The generic arguments every command may carry are accepted.
    assert db.command({"find": "c", "filter": {}, "comment": "x", "maxTimeMS": 1000,
                       "readConcern": {"level": "local"}})["ok"] == 1.0


def test_sort_in_update_statements_is_refused_as_7_0_does(client):
    db = client.sorted
    db.c.insert_many([{"_id": 1, "k": "a", "n": 2}, {"_id": 2, "k": "a", "n": 1}])
    for u in ({"$set": {"picked": True}}, {"k": "a", "replaced": True}):
        unknown_field(db, {"update": "c", "updates": [{"q": {"k": "a"}, "u": u, "sort": {"n": 1}}]},
                      "update.updates.sort")
    assert db.c.count_documents({"picked": True}) == db.c.count_documents({"replaced": True}) == 0
    # findAndModify has its sort: the document it picks is the first in that order.
    assert db.c.find_one_and_update({"k": "a"}, {"$set": {"picked": True}}, sort=[("n", 1)])["_id"] == 2


def test_operator_document_as_id(client):
    col = client.ids.c
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": {"$a": 1}, "x": 1})
    assert (e.value.code, e.value.details["codeName"]) == (52, "DollarPrefixedFieldName")
    assert e.value.details["errmsg"] == "_id fields may not contain '$'-prefixed fields: $a is not valid for storage."
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": {"k": {"$nested": 1}}})
    assert e.value.code == 52
    with pytest.raises(WriteError) as e:
        col.replace_one({"x": 1}, {"_id": {"$b": 1}, "x": 2}, upsert=True)
    assert e.value.code == 52
    # An _id that is a plain document, or a DBRef, is fine; a filter {_id: {$a: 1}} is an operator.
    col.insert_one({"_id": {"a": 1}})
    col.insert_one({"_id": {"$ref": "other", "$id": 5}})
    assert col.count_documents({}) == 2
    f = failure(col.update_one, {"_id": {"$a": 1}}, {"$set": {"x": 1}}, upsert=True)
    assert f.code == 2 and "$a" in f.details["errmsg"]


def test_hint_naming_a_missing_index(client):
    col = client.hints.c
    col.insert_many([{"_id": i, "a": i % 3} for i in range(6)])
    col.create_index("a", name="a_idx")
    assert len(list(col.find({"a": 1}).hint("a_idx"))) == 2
    assert len(list(col.find({"a": 1}).hint([("a", 1)]))) == 2
    assert len(list(col.find({}).hint([("$natural", 1)]))) == 6
    assert len(list(col.find({}).hint("_id_"))) == 6
    e = failure(list, col.find({"a": 1}).hint("nope"))
    assert (e.code, e.details["codeName"]) == (2, "BadValue")
    assert "hint provided does not correspond to an existing index" in e.details["errmsg"]
    assert failure(list, col.find({"a": 1}).hint([("a", -1)])).code == 2
    assert failure(col.find({"a": 1}).hint("nope").explain).code == 2
    with pytest.raises(WriteError) as w:
        col.update_one({"a": 1}, {"$set": {"b": 1}}, hint="nope")
    assert (w.value.code, w.value.details["codeName"]) == (2, "BadValue")
    with pytest.raises(WriteError) as w:
        col.delete_one({"a": 1}, hint="nope")
    assert w.value.code == 2
    assert failure(col.find_one_and_update, {"a": 1}, {"$set": {"b": 1}}, hint="nope").code == 2
    assert failure(col.count_documents, {"a": 1}, hint="nope").code == 2
    assert failure(col.aggregate, [{"$match": {"a": 1}}], hint="nope").code == 2
    assert failure(client.hints.command, {"distinct": "c", "key": "a", "hint": "nope"}).code == 2
    assert col.count_documents({"a": 1}, hint="a_idx") == 2
    assert col.update_one({"a": 1}, {"$set": {"b": 1}}, hint="a_idx").modified_count == 1
    assert col.count_documents({"b": 1}) == 1 and col.count_documents({}) == 6
    # No collection: nothing to plan, no error (mongod answers an empty result).
    assert list(client.hints.none.find({}).hint("nope")) == []


def test_find_and_modify_duplicate_key_details(client):
    col = client.dups.c
    col.create_index("name", unique=True)
    col.insert_many([{"_id": 1, "name": "a"}, {"_id": 2, "name": "b"}])
    with pytest.raises(DuplicateKeyError) as e:
        col.find_one_and_update({"_id": 2}, {"$set": {"name": "a"}})
    assert e.value.code == 11000 and e.value.details["codeName"] == "DuplicateKey"
    assert e.value.details["keyPattern"] == {"name": 1} and e.value.details["keyValue"] == {"name": "a"}
    with pytest.raises(DuplicateKeyError) as i:
        col.insert_one({"name": "a"})
    assert {k: i.value.details[k] for k in ("keyPattern", "keyValue")} == \
        {k: e.value.details[k] for k in ("keyPattern", "keyValue")}
    with pytest.raises(DuplicateKeyError) as u:
        col.find_one_and_update({"name": "zz"}, {"$set": {"_id": 1}}, upsert=True)
    assert u.value.details["keyValue"] == {"_id": 1}


def test_a_statements_bad_filter_is_its_write_error(client):
    """mongod parses each statement of a write on its own: a filter it refuses is that
    statement's writeError, and an ordered bulk write keeps what came before it."""
    col = client.statements.c
    col.insert_many([{"_id": 1, "a": 1}, {"_id": 2, "a": 2}])
    with pytest.raises(WriteError) as e:
        col.update_one({"a": {"$bogus": 1}}, {"$set": {"b": 1}})
    assert e.value.code == 2 and "$bogus" in e.value.details["errmsg"]
    with pytest.raises(BulkWriteError) as b:
        col.bulk_write([UpdateOne({"_id": 1}, {"$set": {"b": 1}}), DeleteOne({"a": {"$nope": 1}}),
                        DeleteOne({"_id": 2})])
    result = b.value.details
    assert (result["nModified"], result["nRemoved"]) == (1, 0)
    assert [(w["index"], w["code"]) for w in result["writeErrors"]] == [(1, 2)]
    assert col.find_one({"_id": 1})["b"] == 1 and col.count_documents({}) == 2
