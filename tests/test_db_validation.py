"""Document validation through pymongo against a real node: a validator with $jsonSchema
and query operators, validationLevel, validationAction, bypassDocumentValidation, collMod,
and the DocumentValidationFailure (121) with errInfo as a MongoDB 7.0 server sends it (the
shapes of the manual's "Schema Validation" and "View Validation Errors" pages).

mongomock, the oracle of the query engine elsewhere, does not enforce validators (no
validator, validationLevel or validationAction in its create_collection): no differential
here; $jsonSchema as a query filter is diffed against what the schema says by hand.
"""
from __future__ import annotations

import pytest
import test_db_pymongo
from bson.int64 import Int64
from pymongo.errors import BulkWriteError, OperationFailure, WriteError
from pymongo.operations import InsertOne, UpdateOne

# One node and client for the module (test_db_pymongo's fixtures).
node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client

SCHEMA = {"$jsonSchema": {
    "bsonType": "object", "required": ["name", "year"],
    "properties": {
        "name": {"bsonType": "string", "description": "must be a string"},
        "year": {"bsonType": "int", "minimum": 2017, "maximum": 3017},
        "gpa": {"bsonType": ["double"]},
    }}}


def test_json_schema_refuses_and_explains(client):
    db = client.v_schema
    db.create_collection("students", validator=SCHEMA)
    col = db.students
    col.insert_one({"_id": 1, "name": "Alice", "year": 2019, "gpa": 3.5})
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": 7, "name": "Bob", "year": 2016, "gpa": 3})
    err = e.value.details
    assert (err["code"], err["codeName"], err["errmsg"]) == (121, "DocumentValidationFailure",
                                                             "Document failed validation")
    assert err["errInfo"] == {"failingDocumentId": 7, "details": {
        "operatorName": "$jsonSchema", "schemaRulesNotSatisfied": [{
            "operatorName": "properties", "propertiesNotSatisfied": [
                {"propertyName": "year", "details": [{"operatorName": "minimum", "specifiedAs": {"minimum": 2017},
                                                      "reason": "comparison failed", "consideredValue": 2016}]},
                {"propertyName": "gpa", "details": [{"operatorName": "bsonType",
                                                     "specifiedAs": {"bsonType": ["double"]},
                                                     "reason": "type did not match", "consideredValue": 3,
                                                     "consideredType": "int"}]}]}]}}
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": 8, "name": 5})
    rules = e.value.details["errInfo"]["details"]["schemaRulesNotSatisfied"]
    assert {"operatorName": "required", "specifiedAs": {"required": ["name", "year"]},
            "missingProperties": ["year"]} in rules
    assert {"operatorName": "properties", "propertiesNotSatisfied": [{
        "propertyName": "name", "description": "must be a string", "details": [{
            "operatorName": "bsonType", "specifiedAs": {"bsonType": "string"}, "reason": "type did not match",
            "consideredValue": 5, "consideredType": "int"}]}]} in rules
    # An update that would break the schema is refused; the document stays as it was.
    with pytest.raises(WriteError) as e:
        col.update_one({"_id": 1}, {"$set": {"year": "next"}})
    assert e.value.code == 121 and e.value.details["errInfo"]["failingDocumentId"] == 1
    with pytest.raises(OperationFailure) as e:
        col.find_one_and_update({"_id": 1}, {"$unset": {"name": ""}})
    assert e.value.code == 121 and e.value.details["errInfo"]["details"]["schemaRulesNotSatisfied"] == [
        {"operatorName": "required", "specifiedAs": {"required": ["name", "year"]}, "missingProperties": ["name"]}]
    with pytest.raises(WriteError):
        col.replace_one({"_id": 1}, {"name": "A"})
    assert col.find_one({"_id": 1}) == {"_id": 1, "name": "Alice", "year": 2019, "gpa": 3.5}
    # An upsert inserts through the validator too.
    with pytest.raises(WriteError):
        col.update_one({"_id": 9}, {"$set": {"name": "x"}}, upsert=True)
    assert col.count_documents({}) == 1


def test_query_operator_validator(client):
    db = client.v_query
    db.create_collection("orders", validator={"qty": {"$gt": 0}, "status": {"$in": ["A", "B"]}})
    col = db.orders
    col.insert_one({"_id": 1, "qty": 3, "status": "A"})
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": 2, "qty": 0, "status": "A"})
    assert e.value.details["errInfo"] == {"failingDocumentId": 2, "details": {
        "operatorName": "$and", "clausesNotSatisfied": [{"index": 0, "details": {
            "operatorName": "$gt", "specifiedAs": {"qty": {"$gt": 0}}, "reason": "comparison failed",
            "consideredValue": 0}}]}}
    with pytest.raises(WriteError) as e:
        col.insert_one({"_id": 3, "status": "A"})
    assert e.value.details["errInfo"]["details"]["clausesNotSatisfied"][0]["details"]["reason"] == \
        "field was missing"
    # Unordered bulk: the valid ones go in, each invalid one is a writeError with code 121.
    with pytest.raises(BulkWriteError) as e:
        col.bulk_write([InsertOne({"_id": 4, "qty": 1, "status": "B"}), InsertOne({"_id": 5, "qty": -1}),
                        InsertOne({"_id": 6, "qty": 2, "status": "A"})], ordered=False)
    assert [(w["index"], w["code"]) for w in e.value.details["writeErrors"]] == [(1, 121)]
    assert sorted(d["_id"] for d in col.find()) == [1, 4, 6]


def test_bypass_document_validation(client):
    db = client.v_bypass
    db.create_collection("c", validator={"n": {"$type": "int"}})
    col = db.c
    col.insert_one({"_id": 1, "n": "one"}, bypass_document_validation=True)
    col.update_one({"_id": 1}, {"$set": {"m": 1}}, bypass_document_validation=True)
    db.command("findAndModify", "c", query={"_id": 1}, update={"$set": {"k": 1}}, bypassDocumentValidation=True)
    col.bulk_write([InsertOne({"_id": 2, "n": "two"}), UpdateOne({"_id": 2}, {"$set": {"x": 1}})],
                   bypass_document_validation=True)
    assert col.find_one({"_id": 1}) == {"_id": 1, "n": "one", "m": 1, "k": 1}
    with pytest.raises(WriteError):
        col.insert_one({"_id": 3, "n": "three"})


def test_levels_actions_and_coll_mod(client):
    db = client.v_levels
    col = db.c
    col.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": "bad"}])
    db.command("collMod", "c", validator={"n": {"$type": "int"}}, validationLevel="moderate")
    info = db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]
    assert info["options"] == {"validator": {"n": {"$type": "int"}}, "validationLevel": "moderate"}
    # moderate: a document that already fails may be updated and still fail; a valid one may not break.
    col.update_one({"_id": 2}, {"$set": {"m": 1}})
    with pytest.raises(WriteError):
        col.update_one({"_id": 1}, {"$set": {"n": "x"}})
    db.command("collMod", "c", validationLevel="strict")
    with pytest.raises(WriteError):
        col.update_one({"_id": 2}, {"$set": {"m": 2}})
    # warn: the write goes through (mongod logs it).
    db.command("collMod", "c", validationAction="warn")
    warned = client.admin.command("serverStatus")["farts"]["validationWarnings"]
    col.insert_one({"_id": 3, "n": Int64(5)})
    assert client.admin.command("serverStatus")["farts"]["validationWarnings"] == warned + 1
    db.command("collMod", "c", validationLevel="off", validationAction="error")
    col.insert_one({"_id": 4, "n": None})
    db.command("collMod", "c", validator={})
    col.insert_one({"_id": 5})
    assert col.count_documents({}) == 5


def test_refusals(client):
    db = client.v_refusals
    cases = [
        (lambda: db.create_collection("a", validationLevel="bogus"), 2, "BadValue"),
        (lambda: db.create_collection("a", validationAction="ignore"), 2, "BadValue"),
        (lambda: db.create_collection("a", validator={"$jsonSchema": {"bogus": 1}}), 9, "FailedToParse"),
        (lambda: db.create_collection("a", validator={"$jsonSchema": {"type": "integer"}}), 2, "BadValue"),
        (lambda: db.create_collection("a", validator={"$jsonSchema": {"$ref": "#/x"}}), 9, "FailedToParse"),
        (lambda: db.create_collection("a", validator={"$jsonSchema": {"maxLength": float("inf")}}), 9, "FailedToParse"),
        (lambda: db.create_collection("a", validator={"$jsonSchema": {"minItems": float("nan")}}), 9, "FailedToParse"),
        (lambda: db.create_collection("a", validator={"x": {"$bogus": 1}}), 2, "BadValue"),
        (lambda: db.create_collection("a", validator={"$where": "1"}), 224, "QueryFeatureNotAllowed"),
        (lambda: db.command("collMod", "missing", validator={}), 26, "NamespaceNotFound"),
        (lambda: db.command("collMod", "b", index={"name": "x", "hidden": True}), 72, "InvalidOptions"),
        (lambda: db.command("collMod", "b", validatr={}), 40415, "Location40415"),
        (lambda: db.command("create", "a", validatr={}), 40415, "Location40415"),
    ]
    db.create_collection("b")
    for run, code, name in cases:
        with pytest.raises(OperationFailure) as e:
            run()
        assert (e.value.code, e.value.details["codeName"]) == (code, name), e.value.details
    assert db.list_collection_names() == ["b"]


def test_json_schema_as_a_query(client):
    col = client.v_find.c
    docs = [{"_id": 1, "a": 1, "tags": ["x", "y"]}, {"_id": 2, "a": "s"}, {"_id": 3, "tags": ["x", "x"]},
            {"_id": 4, "a": 2.5, "b": {"c": 1}}, {"_id": 5, "a": 7, "extra": True}]
    col.insert_many(docs)

    def ids(schema):
        return sorted(d["_id"] for d in col.find({"$jsonSchema": schema}))
    assert ids({"required": ["a"]}) == [1, 2, 4, 5]
    assert ids({"properties": {"a": {"bsonType": "number", "maximum": 5}}}) == [1, 3, 4]
    assert ids({"properties": {"a": {"bsonType": "number", "maximum": 7, "exclusiveMaximum": True}}}) == [1, 3, 4]
    assert ids({"properties": {"tags": {"uniqueItems": True, "minItems": 2}}}) == [1, 2, 4, 5]
    assert ids({"properties": {"a": {"type": "string", "pattern": "^s"}}}) == [2, 3]
    assert ids({"properties": {"_id": {}, "a": {}, "tags": {}}, "additionalProperties": False}) == [1, 2, 3]
    assert ids({"anyOf": [{"required": ["b"]}, {"required": ["extra"]}]}) == [4, 5]
    assert ids({"not": {"required": ["a"]}}) == [3]
    assert ids({"properties": {"a": {"enum": [1, "s"]}}}) == [1, 2, 3]
    assert ids({"properties": {"b": {"properties": {"c": {"multipleOf": 2}}}}}) == [1, 2, 3, 5]


def test_out_and_merge_are_validated_unless_bypassed(client):
    db = client.v_out
    db.src.insert_many([{"_id": 1, "n": "x"}])
    db.create_collection("dst", validator={"n": {"$type": "int"}})
    with pytest.raises(OperationFailure) as e:
        db.src.aggregate([{"$merge": {"into": "dst"}}])
    assert e.value.code == 121 and e.value.details["errInfo"]["failingDocumentId"] == 1
    db.src.aggregate([{"$out": "dst"}], bypassDocumentValidation=True)
    assert db.dst.find_one() == {"_id": 1, "n": "x"}
    # $out keeps the target's options: the validator still guards it.
    with pytest.raises(WriteError):
        db.dst.insert_one({"n": "y"})


def test_validation_warnings_are_counted_per_store(tmp_path):
    # (serverStatus farts.validationWarnings is this node's: two stores in one process, as
    # in-process test clusters run, count apart)
    from farts.db.store import Store
    a, b = Store(tmp_path / "a", "a", sync=False), Store(tmp_path / "b", "b", sync=False)
    try:
        ns = "t$db.c"
        opts = {"validator": {"n": {"$type": "int"}}, "validationAction": "warn"}
        for s in (a, b):
            s.submit(lambda w: w.create_collection(ns, opts)).result()
        a.submit(lambda w: w.insert(ns, {"_id": 1, "n": "not an int"})).result()
        b.submit(lambda w: w.insert(ns, {"_id": 1, "n": 1})).result()
        assert (a.validation_warnings, b.validation_warnings) == (1, 0)
    finally:
        a.close()
        b.close()
