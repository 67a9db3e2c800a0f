"""The pure-Python MongoDB semantics engine (farts/db: ordering, query, update, projection,
aggregate): exact cases per operator, then differential tests against mongomock.

Exact cases come from MongoDB's documentation and its own jstests (null2.js, find6.js,
cited where used). The differential tests insert hypothesis-generated documents into a
mongomock collection and compare the engine's results with its find (filters and
projections), update_many (operators and "a.$"), upsert inserts, sort and aggregate.

Known places where the oracle (mongomock 4.3) differs from MongoDB, and how the
differential tests keep clear of them (each one is covered by an exact case instead):

1. mongomock compares with Python's == and <, so 0 == False and 1 == True ($inc on true
   gives 2, $min puts 2 below false): the generators use no 0 or 1; $inc/$mul on a bool
   and $min/$max where a bool takes part are skipped.
2. {field: {}} matches every document in mongomock (an empty operator document); MongoDB
   matches only an empty sub-document: {} is never a top-level equality value.
3. A dotted path that goes through a scalar, null, an empty array or an array element that
   is not a document: MongoDB treats the path as missing there ({"a.b": null} matches
   {a: 5}); mongomock doesn't, in $eq null, $not and $exists: those documents are left out.
4. $size on a sub-document: mongomock counts its keys; MongoDB only matches arrays.
5. $type with numeric codes and "null": mongomock rejects them or has no implementation.
6. $gt/$gte/$lt/$lte with null: MongoDB's $gte/$lte null match missing fields, mongomock's
   don't; null is compared with $eq/$ne only.
7. $all with null: mongomock doesn't match missing fields; $all gets no null.
8. $in/$nin with an array value: mongomock doesn't compare the whole array field with it.
9. Arrays directly inside arrays: mongomock expands them under $elemMatch and doesn't match
   an element [] with {a: []}; documents hold no directly nested arrays.
10. Updates: mongomock reports no conflicting paths (MongoDB: 40), ignores updates whose
    path crosses a scalar or an array (MongoDB: error 28, or no-op for removals), and
    ignores $pull/$push/$addToSet on a non-array (MongoDB: error 2): such inputs are skipped.
11. Sort: mongomock sorts an array by its first element (MongoDB: the smallest ascending,
    the largest descending), takes only the first value a dotted path reaches through an
    array (MongoDB: all of them, a non-document element counting as null), and puts missing
    before null (MongoDB: equal). Sort documents hold no null, and documents whose sort
    path crosses an array or ends at an array of two or more elements are left out.
12. Inputs on which mongomock raises a Python TypeError/ValueError/IndexError/AttributeError
    ($min/$max across types, $push past an array's end or onto a document, ...) are skipped.
13. New fields: MongoDB 5.0+ creates them in field-name order, mongomock in update order;
    documents are compared field-order-insensitively (an exact case checks the order).
14. $addToSet {$each: [...]} with repeated values: MongoDB adds one, mongomock all of them.
15. $group and $count on an empty input: MongoDB outputs nothing, mongomock one document
    ({_id: null, n: 0} / {n: 0}); the generated pipelines never empty the stream first.
16. $first/$last on a missing field: MongoDB gives null, mongomock skips that document.
17. $exists on a dotted path through an array of documents: mongomock tests each element,
    so {"b.y": {$exists: false}} matches b: [{}, {y: 1}]; MongoDB: b.y exists there.
18. mongomock has no all-positional "a.$[]" path (it crashes): only "a.$" is compared.
19. Projections on a dotted path through a scalar or a non-document array element:
    mongomock crashes or drops the parent field ({"c.y": 0} removes c: 2.0); MongoDB keeps
    what the path cannot reach. Those documents are left out.
"""
from __future__ import annotations

import datetime
import re
import uuid

import bson
import mongomock
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farts.db.aggregate import run_pipeline
from farts.db.errors import MongoError, error_document
from farts.db.ordering import compare, sort_documents, sort_key
from farts.db.projection import project
from farts.db.query import bson_type_number, compile_filter, equality_fields
from farts.db.update import apply_update, is_replacement, upsert_seed


def ids(filter: dict, docs: list[dict]) -> list:
    match = compile_filter(filter)
    return [d["_id"] for d in docs if match(d)]


def raises(code: int, fn, *args, **kw) -> MongoError:
    with pytest.raises(MongoError) as info:
        fn(*args, **kw)
    assert info.value.code == code, info.value
    return info.value


# --- errors ----------------------------------------------------------------------------------

def test_error_document_has_mongodb_fields():
    e = MongoError(11000, "DuplicateKey", "E11000 duplicate key error")
    assert error_document(e) == {"ok": 0.0, "errmsg": "E11000 duplicate key error",
                                 "code": 11000, "codeName": "DuplicateKey"}


# --- ordering --------------------------------------------------------------------------------

def test_bson_type_order_across_brackets():
    oid = ObjectId("000102030405060708091011")
    ascending = [MinKey(), None, -1.5, Int64(2), Decimal128("2.5"), 3, "", "a", {}, {"a": 1},
                 [], [1], Binary(b"x", 0), oid, False, True,
                 datetime.datetime(2020, 1, 1), Timestamp(1, 1), Regex("a"), MaxKey()]
    shuffled = list(reversed(ascending))
    assert sorted(shuffled, key=sort_key) == ascending
    for a, b in zip(ascending, ascending[1:], strict=False):
        assert compare(a, b) == -1 and compare(b, a) == 1


def test_numbers_compare_by_value_across_widths():
    assert compare(1, 1.0) == 0 and compare(Int64(1), Decimal128("1.0")) == 0
    assert compare(2**53 + 1, float(2**53)) == 1  # exact, not via float
    assert compare(float("nan"), -float("inf")) == -1  # NaN sorts below every number
    assert compare("B", "a") == -1  # binary (code point) order, no collation


def test_objects_compare_field_by_field_type_first():
    assert compare({"a": 1}, {"a": 1.0}) == 0
    assert compare({"a": 1}, {"b": 0}) == -1  # names compared after the values' types
    assert compare({"z": 1}, {"a": "x"}) == -1  # number bracket < string bracket comes first
    assert compare({"a": 1}, {"a": 1, "b": 1}) == -1
    assert compare([1, 2], [1, 2, 0]) == -1


def test_sort_arrays_by_min_ascending_and_max_descending():
    docs = [{"_id": 1, "a": [1, 5]}, {"_id": 2, "a": 3}, {"_id": 3, "a": []},
            {"_id": 4, "a": None}, {"_id": 5}]
    asc = [d["_id"] for d in sort_documents(docs, {"a": 1})]
    desc = [d["_id"] for d in sort_documents(docs, [("a", -1)])]
    # [] is below null; null and missing tie (input order); [1, 5] sorts as 1 up, 5 down.
    assert asc == [3, 4, 5, 1, 2]
    assert desc == [1, 2, 4, 5, 3]


def test_sort_multi_key_dotted():
    docs = [{"_id": 1, "a": {"b": 2}, "c": 1}, {"_id": 2, "a": {"b": 1}, "c": 2},
            {"_id": 3, "a": [{"b": 0}, {"b": 9}], "c": 1}, {"_id": 4, "a": {"b": 2}, "c": 0}]
    assert [d["_id"] for d in sort_documents(docs, {"c": 1, "a.b": -1})] == [4, 3, 1, 2]
    assert [d["_id"] for d in sort_documents(docs, [("a.b", 1), ("_id", -1)])] == [3, 2, 4, 1]


def test_sort_spec_errors_and_natural_order():
    docs = [{"_id": 2}, {"_id": 1}]
    assert sort_documents(docs, {"$natural": -1}) == [{"_id": 1}, {"_id": 2}]
    assert sort_documents(docs, [("$natural", 1)]) == docs
    raises(2, sort_documents, docs, {"$bogus": 1})
    raises(15975, sort_documents, [{}], {"a": 2})
    raises(2, sort_documents, [{}], {"a": {"$meta": "textScore"}})


# --- query: exact cases ----------------------------------------------------------------------

DOCS = [
    {"_id": 1, "a": 1},
    {"_id": 2, "a": 2.5},
    {"_id": 3, "a": "x"},
    {"_id": 4, "a": None},
    {"_id": 5},
    {"_id": 6, "a": [1, 5]},
    {"_id": 7, "a": {"b": 1}},
    {"_id": 8, "a": [{"b": 1}, {"b": 3}]},
    {"_id": 9, "a": True},
    {"_id": 10, "a": []},
    {"_id": 11, "a": [[1, 2]]},
    {"_id": 12, "a": Int64(5)},
    {"_id": 13, "a": {"b": [2, 4]}},
    {"_id": 14, "a": [None]},
    {"_id": 15, "a": "Xy"},
]
ALL = [d["_id"] for d in DOCS]


@pytest.mark.parametrize("filter, expected", [
    # equality: array elements match, numbers of any width, bool is not 1
    ({"a": 1}, [1, 6]),
    ({"a": 5}, [6, 12]),
    ({"a": {"$eq": 2.5}}, [2]),
    ({"a": [1, 5]}, [6]),
    ({"a": [5, 1]}, []),
    ({"a": [1, 2]}, [11]),  # an element of a may itself be the array
    ({"a": []}, [10]),
    ({"a": {"b": 1}}, [7, 8]),  # whole sub-document, or an element of the array
    ({"a": True}, [9]),
    # null matches null, missing, and arrays holding null
    ({"a": None}, [4, 5, 14]),
    ({"a": {"$ne": None}}, [1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 15]),
    ({"a": {"$ne": 1}}, [2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
    # comparisons stay inside a type bracket
    ({"a": {"$gt": 1}}, [2, 6, 12]),
    ({"a": {"$gte": 1}}, [1, 2, 6, 12]),
    ({"a": {"$lt": 2}}, [1, 6]),
    ({"a": {"$lte": 1.0}}, [1, 6]),
    ({"a": {"$gte": "x"}}, [3]),
    ({"a": {"$lt": "x"}}, [15]),
    ({"a": {"$gt": 1, "$lt": 5}}, [2, 6]),  # each condition may match a different element
    ({"a": {"$gte": None}}, [4, 5, 14]),
    ({"a": {"$gt": None}}, []),
    # $in / $nin
    ({"a": {"$in": [1, "x"]}}, [1, 3, 6]),
    ({"a": {"$in": [None]}}, [4, 5, 14]),
    ({"a": {"$in": [[1, 5]]}}, [6]),
    ({"a": {"$in": [re.compile("^x", re.I)]}}, [3, 15]),
    ({"a": {"$nin": [1, None]}}, [2, 3, 7, 8, 9, 10, 11, 12, 13, 15]),
    # $exists
    ({"a": {"$exists": True}}, [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
    ({"a": {"$exists": False}}, [5]),
    ({"a.b": {"$exists": True}}, [7, 8, 13]),
    # dotted paths into sub-documents and arrays of documents
    ({"a.b": 1}, [7, 8]),
    ({"a.b": 2}, [13]),
    ({"a.b": {"$gt": 2}}, [8, 13]),
    ({"a.b": [2, 4]}, [13]),
    ({"a.0": 1}, [6, 11]),  # a.0 of [[1, 2]] is [1, 2], whose element 1 matches
    ({"a.1": {"b": 3}}, [8]),
    ({"a.0.b": 1}, [8]),
    ({"a.0": {"$exists": True}}, [6, 8, 11, 14]),
    # $size and $elemMatch look at the array itself
    ({"a": {"$size": 2}}, [6, 8]),
    ({"a": {"$size": 0}}, [10]),
    ({"a.b": {"$size": 2}}, [13]),
    ({"a": {"$elemMatch": {"$gt": 1, "$lt": 6}}}, [6]),
    ({"a": {"$elemMatch": {"b": {"$gte": 2}}}}, [8]),
    ({"a": {"$elemMatch": {"$gt": 0}}}, [6]),  # [[1, 2]]: the element [1, 2] is no number
    # $type by name, number, alias, list
    ({"a": {"$type": "string"}}, [3, 15]),
    ({"a": {"$type": 2}}, [3, 15]),
    ({"a": {"$type": "int"}}, [1, 6]),
    ({"a": {"$type": "long"}}, [12]),
    ({"a": {"$type": "number"}}, [1, 2, 6, 12]),
    ({"a": {"$type": "array"}}, [6, 8, 10, 11, 14]),
    ({"a": {"$type": "null"}}, [4, 14]),
    ({"a": {"$type": ["bool", "object"]}}, [7, 8, 9, 13]),
    # regex: strings only; $options; bson Regex and re.Pattern values
    ({"a": {"$regex": "^x"}}, [3]),
    ({"a": {"$regex": "^x", "$options": "i"}}, [3, 15]),
    ({"a": re.compile("y$")}, [15]),
    ({"a": Regex("^X")}, [15]),
    ({"a": {"$not": re.compile("x", re.I)}}, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]),
    # logical operators
    ({"$or": [{"a": 1}, {"a": "x"}]}, [1, 3, 6]),
    ({"$and": [{"a": {"$gt": 0}}, {"a": {"$lt": 2}}]}, [1, 6]),
    ({"$nor": [{"a": {"$exists": True}}, {"a": 1}]}, [5]),
    ({"a": {"$not": {"$gt": 1}}}, [1, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14, 15]),
    ({"a": {"$all": [1, 5]}}, [6]),
    ({"a": {"$all": [{"$elemMatch": {"b": 3}}]}}, [8]),
    ({"a": {"$mod": [2, 1]}}, [1, 6, 12]),
    ({}, ALL),
    ({"$comment": "ignored"}, ALL),
])
def test_query_operator(filter, expected):
    assert ids(filter, DOCS) == expected


def test_expr_compares_fields_of_one_document():
    docs = [{"_id": 1, "a": 3, "b": 2}, {"_id": 2, "a": 1, "b": 2}, {"_id": 3, "b": 0},
            {"_id": 4, "a": [1], "b": []}]
    # Expressions compare whole values in BSON order: [1] > [], missing < 0.
    assert ids({"$expr": {"$gt": ["$a", "$b"]}}, docs) == [1, 4]
    assert ids({"$expr": {"$lt": ["$b", "$a"]}, "a": {"$type": "array"}}, docs) == [4]
    raises(17124, ids, {"$expr": {"$eq": [{"$size": "$b"}, 0]}}, docs)  # b: 2 is no array
    assert ids({"$expr": "$a"}, docs) == [1, 2, 4]  # truthy: not null/missing/false/0


def test_null_through_paths_as_mongodb_jstests_null2():
    # jstests/core/null2.js: {"a.b": null} and {"a.b": {$in: [null]}} match [2, 4].
    docs = [{"_id": 1, "a": [{"b": 5}]}, {"_id": 2, "a": [{}]}, {"_id": 3, "a": []},
            {"_id": 4, "a": [{}, {"b": 5}]}, {"_id": 5, "a": [5, {"b": 5}]}]
    assert ids({"a.b": None}, docs) == [2, 4]
    assert ids({"a.b": {"$in": [None]}}, docs) == [2, 4]
    # b.y exists when any document of the array has y.
    assert ids({"b.y": {"$exists": False}}, [{"_id": 1, "b": [{}, {"y": 1}]},
                                             {"_id": 2, "b": [{}, 3]}]) == [2]
    # A path stopped by a scalar or null is missing, which null matches.
    assert ids({"a.b": None}, [{"_id": 1, "a": 5}, {"_id": 2, "a": None},
                               {"_id": 3, "a": {"b": 1}}]) == [1, 2]


def test_numeric_path_component_indexes_and_names_as_jstests_find6():
    # jstests/core/find6.js: 'a.0' reaches array position 0 and fields named "0".
    docs = [{"_id": 1, "a": [{"0": 1}]}, {"_id": 2, "a": [{"0": 2}]}, {"_id": 3, "a": [1]},
            {"_id": 4, "a": [9, 1]}]
    assert ids({"a.0": 1}, docs) == [1, 3]
    assert ids({"a.0": {"$gt": 8}}, docs) == [4]
    assert ids({"a.0": {"$lt": 0}}, docs) == []


def test_nan_equals_nan_and_is_outside_ranges():
    nan = float("nan")
    docs = [{"_id": 1, "v": nan}, {"_id": 2, "v": Decimal128("NaN")}, {"_id": 3, "v": 1}]
    assert ids({"v": nan}, docs) == [1, 2]
    assert ids({"v": {"$lt": 5}}, docs) == [3]
    assert ids({"v": {"$gte": nan}}, docs) == [1, 2]
    assert len(apply_update({"_id": 1, "a": [nan]}, {"$addToSet": {"a": float("nan")}})["a"]) == 1


def test_pcre_spellings_python_lacks():
    docs = [{"_id": 1, "s": "ab12"}, {"_id": 2, "s": "ab12\n"}, {"_id": 3, "s": "AB"}]
    assert ids({"s": {"$regex": r"(?<digits>\d+)\z"}}, docs) == [1]
    assert ids({"s": {"$regex": r"\d\Z"}}, docs) == [1, 2]  # PCRE \Z: before a final newline
    assert ids({"s": {"$regex": "^a b", "$options": "ix"}}, docs) == [1, 2, 3]
    assert ids({"s": {"$regex": "2.$", "$options": "s"}}, docs) == [2]


def test_subdocument_equality_is_field_order_sensitive():
    docs = [{"_id": 1, "a": {"x": 1, "y": 2}}, {"_id": 2, "a": {"y": 2, "x": 1}}]
    assert ids({"a": {"x": 1, "y": 2}}, docs) == [1]
    assert ids({"a": {"x": 1.0, "y": Int64(2)}}, docs) == [1]


def test_other_bson_types_match_by_value():
    oid = ObjectId()
    when = datetime.datetime(2024, 5, 1, 12, 0)
    docs = [{"_id": 1, "v": oid}, {"_id": 2, "v": when}, {"_id": 3, "v": Binary(b"\x01", 4)},
            {"_id": 4, "v": Decimal128("1.50")}, {"_id": 5, "v": Timestamp(5, 1)}]
    assert ids({"v": oid}, docs) == [1]
    assert ids({"v": {"$gt": datetime.datetime(2024, 1, 1)}}, docs) == [2]
    assert ids({"v": Binary(b"\x01", 4)}, docs) == [3]
    assert ids({"v": 1.5}, docs) == [4]
    assert ids({"v": {"$type": "timestamp"}}, docs) == [5]
    assert ids({"v": {"$type": "binData"}}, docs) == [3]
    u = uuid.UUID(bytes=b"\x01" * 16)
    assert compare(u, Binary(b"\x01" * 16, 4)) == 0 and compare(u, Binary(b"\x01" * 16, 3)) == 1
    assert ids({"v": Binary(u.bytes, 4)}, [{"_id": 1, "v": u}]) == [1]


@pytest.mark.parametrize("filter, code, words", [
    ({"a": {"$foo": 1}}, 2, "unknown operator: $foo"),
    ({"$foo": 1}, 2, "unknown top level operator: $foo"),
    ({"$where": "this.a"}, 2, "$where"),
    ({"$expr": {"$eq": [{"$frob": "$a"}, 1]}}, 168, "Unrecognized expression '$frob'"),
    ({"a": {"$near": [0, 0]}}, 2, "$near"),
    ({"a": {"$in": 5}}, 2, "$in needs an array"),
    ({"a": {"$nin": {"x": 1}}}, 2, "$nin needs an array"),
    ({"a": {"$in": [{"$gt": 1}]}}, 2, "cannot nest $ under $in"),
    ({"$or": []}, 2, "$or must be a nonempty array"),
    ({"$and": [1]}, 2, "entries need to be full objects"),
    ({"a": {"$size": -1}}, 2, "$size may not be negative"),
    ({"a": {"$size": "2"}}, 2, "$size needs a number"),
    ({"a": {"$size": 1.5}}, 2, "$size must be a whole number"),
    ({"a": {"$type": "nope"}}, 2, "Unknown type name alias: nope"),
    ({"a": {"$type": 99}}, 2, "Invalid numerical type code: 99"),
    ({"a": {"$not": {}}}, 2, "$not cannot be empty"),
    ({"a": {"$not": 5}}, 2, "$not needs a regex or a document"),
    ({"a": {"$elemMatch": 5}}, 2, "$elemMatch needs an Object"),
    ({"a": {"$options": "i"}}, 2, "$options needs a $regex"),
    ({"a": {"$regex": "x", "$options": "z"}}, 51108, "invalid flag in regex options: z"),
    ({"a": {"$regex": "("}}, 51091, "Regular expression is invalid"),
    ({"a": {"$mod": [0, 1]}}, 2, "divisor cannot be 0"),
    ({"a": {"$gt": 1, "b": 2}}, 2, "unknown operator: b"),
])
def test_query_errors_name_the_operator(filter, code, words):
    e = raises(code, compile_filter, filter)
    assert words in e.message


def test_equality_fields_for_index_choice_and_upsert():
    assert equality_fields({"a": 1, "b": {"$gt": 2}, "c": {"$eq": "x"}, "d": re.compile("x"),
                            "$and": [{"e.f": 2}], "$or": [{"g": 1}]}) == \
        {"a": 1, "c": "x", "e.f": 2}
    assert equality_fields(None) == {}


# --- update: exact cases ---------------------------------------------------------------------

def up(doc, update, **kw):
    original = bson.encode(doc)
    new = apply_update(doc, update, **kw)
    assert bson.encode(doc) == original  # the input is never modified
    return new


def test_set_unset_dotted_paths_create_subdocuments():
    doc = {"_id": 1, "a": {"b": 1}, "arr": [1, 2]}
    assert up(doc, {"$set": {"a.c": 2, "x.y.z": 3, "arr.3": 9}}) == \
        {"_id": 1, "a": {"b": 1, "c": 2}, "arr": [1, 2, None, 9], "x": {"y": {"z": 3}}}
    assert up(doc, {"$unset": {"a.b": "", "nope.x": "", "arr.0": ""}}) == \
        {"_id": 1, "a": {}, "arr": [None, 2]}


def test_new_fields_are_created_in_field_name_order():
    new = up({"_id": 1}, {"$set": {"b": 1, "a": 1, "c.10": 1, "c.9": 1}})
    assert list(new) == ["_id", "a", "b", "c"]
    assert list(new["c"]) == ["9", "10"]


def test_inc_mul_keep_bson_number_types():
    doc = {"_id": 1, "i": 1, "l": Int64(5), "f": 1.5, "d": Decimal128("1.1")}
    new = up(doc, {"$inc": {"i": 2, "l": 1, "f": 1, "d": 1, "n": Int64(3)}})
    assert new == {"_id": 1, "i": 3, "l": 6, "f": 2.5, "d": Decimal128("2.1"), "n": 3}
    assert type(new["l"]) is Int64 and type(new["n"]) is Int64 and type(new["f"]) is float
    assert up({"_id": 1, "i": 2**31 - 1}, {"$inc": {"i": 1}})["i"] == 2**31  # int32 → int64
    assert up({"_id": 1, "i": 3}, {"$mul": {"i": 2.5, "m": 2, "k": 2.0}}) == \
        {"_id": 1, "i": 7.5, "k": 0.0, "m": 0}
    raises(2, apply_update, {"_id": 1, "i": Int64(2**63 - 1)}, {"$inc": {"i": 1}})


def test_inc_type_errors():
    e = raises(14, apply_update, {"_id": 1, "a": "x"}, {"$inc": {"a": 1}})
    assert "Cannot apply $inc to a value of non-numeric type" in e.message
    assert e.code_name == "TypeMismatch"
    raises(14, apply_update, {"_id": 1, "a": True}, {"$inc": {"a": 1}})
    e = raises(14, apply_update, {"_id": 1}, {"$inc": {"a": "1"}})
    assert "Cannot increment with non-numeric argument" in e.message


def test_min_max_current_date():
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, 678999)
    doc = {"_id": 1, "lo": 5, "hi": 5, "s": "b"}
    new = up(doc, {"$min": {"lo": 3, "s": 1}, "$max": {"hi": 2.5, "n": "z"},
                   "$currentDate": {"d": True, "t": {"$type": "timestamp"}}}, now=now)
    assert new["lo"] == 3 and new["s"] == 1  # number < string in BSON order
    assert new["hi"] == 5 and new["n"] == "z"
    assert new["d"] == datetime.datetime(2025, 1, 2, 3, 4, 5, 678000)  # milliseconds
    assert isinstance(new["t"], Timestamp) and new["t"].time == 1735787045
    raises(2, apply_update, doc, {"$currentDate": {"d": {"$type": "clock"}}})


def test_push_with_each_position_sort_slice():
    doc = {"_id": 1, "a": [3, 1]}
    assert up(doc, {"$push": {"a": 2}})["a"] == [3, 1, 2]
    assert up(doc, {"$push": {"a": {"$each": [5, 4], "$position": 0}}})["a"] == [5, 4, 3, 1]
    assert up(doc, {"$push": {"a": {"$each": [0], "$position": -1}}})["a"] == [3, 0, 1]
    assert up(doc, {"$push": {"a": {"$each": [2], "$sort": 1, "$slice": 2}}})["a"] == [1, 2]
    assert up(doc, {"$push": {"a": {"$each": [], "$slice": -1}}})["a"] == [1]
    assert up(doc, {"$push": {"n": {"x": 1}}})["n"] == [{"x": 1}]
    docs = {"_id": 1, "a": [{"s": 2}, {"s": 1}]}
    assert up(docs, {"$push": {"a": {"$each": [{"s": 3}], "$sort": {"s": -1}}}})["a"] == \
        [{"s": 3}, {"s": 2}, {"s": 1}]
    raises(2, apply_update, {"_id": 1, "a": 1}, {"$push": {"a": 2}})
    raises(2, apply_update, doc, {"$push": {"a": {"$each": 1}}})
    raises(2, apply_update, doc, {"$push": {"a": {"$each": [1], "$bogus": 1}}})


def test_add_to_set_pull_pull_all_pop():
    doc = {"_id": 1, "a": [1, "x", {"k": 1, "v": 2}, {"k": 2}, 7]}
    assert up(doc, {"$addToSet": {"a": 1.0}})["a"] == doc["a"]  # 1.0 equals 1
    assert up(doc, {"$addToSet": {"a": {"$each": [2, 2, "x"]}}})["a"] == doc["a"] + [2]
    assert up(doc, {"$addToSet": {"n": 1}})["n"] == [1]
    assert up(doc, {"$pull": {"a": {"$gte": 5}}})["a"] == [1, "x", {"k": 1, "v": 2}, {"k": 2}]
    # a document condition is a query on the elements, not an exact match
    assert up(doc, {"$pull": {"a": {"k": 1}}})["a"] == [1, "x", {"k": 2}, 7]
    assert up(doc, {"$pull": {"a": re.compile("^x")}})["a"] == [1, {"k": 1, "v": 2},
                                                               {"k": 2}, 7]
    assert up(doc, {"$pull": {"missing": 1}}) == doc
    assert up(doc, {"$pullAll": {"a": [1, 7]}})["a"] == ["x", {"k": 1, "v": 2}, {"k": 2}]
    assert up(doc, {"$pop": {"a": -1}})["a"][0] == "x"
    assert up(doc, {"$pop": {"a": 1}})["a"][-1] == {"k": 2}
    raises(2, apply_update, {"_id": 1, "a": 5}, {"$pull": {"a": 5}})
    raises(2, apply_update, {"_id": 1, "a": 5}, {"$addToSet": {"a": 5}})


def test_rename():
    doc = {"_id": 1, "a": 1, "b": {"c": 2}, "z": 0}
    assert up(doc, {"$rename": {"a": "z"}}) == {"_id": 1, "b": {"c": 2}, "z": 1}
    assert up(doc, {"$rename": {"b.c": "d.e"}}) == {"_id": 1, "a": 1, "b": {}, "z": 0,
                                                    "d": {"e": 2}}
    assert up(doc, {"$rename": {"nope": "x"}}) == doc
    raises(2, apply_update, {"_id": 1, "a": [{"b": 1}]}, {"$rename": {"a.0.b": "c"}})
    raises(2, apply_update, doc, {"$rename": {"a": "a"}})


def test_set_on_insert_only_when_inserting():
    assert up({"_id": 1}, {"$setOnInsert": {"n": 1}, "$set": {"m": 2}}) == {"_id": 1, "m": 2}
    assert up({"_id": 1}, {"$setOnInsert": {"n": 1}}, is_upsert_insert=True) == \
        {"_id": 1, "n": 1}


def test_replacement_keeps_id():
    assert is_replacement({"a": 1}) and is_replacement({}) and \
        not is_replacement({"$set": {"a": 1}})
    assert up({"_id": 7, "a": 1, "b": 2}, {"c": 3}) == {"_id": 7, "c": 3}
    assert up({"_id": 7, "a": 1}, {"c": 3, "_id": 7}) == {"_id": 7, "c": 3}
    e = raises(66, apply_update, {"_id": 7}, {"_id": 8, "c": 3})
    assert e.code_name == "ImmutableField"


@pytest.mark.parametrize("update, code, words", [
    ({"$foo": {"a": 1}}, 9, "Unknown modifier: $foo"),
    ({"$bit": {"a": {"and": 1}}}, 9, "$bit"),
    ({"$set": 5}, 9, "Modifiers operate on fields"),
    ({"$set": {"a": 1}, "$inc": {"a": 1}}, 40, "would create a conflict at 'a'"),
    ({"$set": {"a.b": 1, "a": 2}}, 40, "would create a conflict at 'a'"),
    ({"$rename": {"a": "b"}, "$set": {"b.c": 1}}, 40, "conflict at 'b'"),
    ({"$set": {"_id": 2}}, 66, "immutable field '_id'"),
    ({"$unset": {"_id": ""}}, 66, "immutable field '_id'"),
    ({"$set": {"": 1}}, 56, "empty"),
    ({"$set": {"a..b": 1}}, 56, "empty field name"),
    ({"$set": {"arr.$": 1}}, 2, "positional"),
    ({"$set": {"n.x": 1}}, 28, "Cannot create field 'x'"),
    ({"$set": {"arr.x": 1}}, 28, "Cannot create field 'x'"),
    ({"$pop": {"arr": 2}}, 9, "$pop expects 1 or -1"),
    ([{"$match": {"a": 1}}], 72, "not allowed to be used within an update"),
])
def test_update_errors(update, code, words):
    e = raises(code, apply_update, {"_id": 1, "n": 5, "arr": [1]}, update)
    assert words in e.message
    assert error_document(e)["code"] == code


def test_upsert_seed_expands_equality_fields():
    assert upsert_seed({"a.b": 1, "c": {"$eq": 2}, "d": {"$gt": 1}, "$and": [{"e": 5}],
                        "$or": [{"f": 1}]}) == {"a": {"b": 1}, "c": 2, "e": 5}
    assert upsert_seed({"_id": 3}) == {"_id": 3}
    raises(54, upsert_seed, {"a": 1, "a.b": 2})
    raises(54, upsert_seed, {"$and": [{"a": 1}, {"a": 2}]})
    seed = upsert_seed({"_id": 3, "k": "x"})
    assert apply_update(seed, {"$set": {"v": 1}, "$setOnInsert": {"c": 0}},
                        is_upsert_insert=True) == {"_id": 3, "k": "x", "c": 0, "v": 1}
    assert apply_update(seed, {"v": 1}, is_upsert_insert=True) == {"_id": 3, "v": 1}


# --- projection ------------------------------------------------------------------------------

PDOC = {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "arr": [{"c": 1, "d": 2}, 5, {"d": 4}],
        "list": [1, 2, 3, 4]}


@pytest.mark.parametrize("projection, expected", [
    (None, PDOC),
    ({}, PDOC),
    ({"a": 1}, {"_id": 1, "a": 1}),
    ({"a": 1, "_id": 0}, {"a": 1}),
    ({"_id": 1}, {"_id": 1}),
    ({"b.c": 1}, {"_id": 1, "b": {"c": 2}}),
    ({"arr.d": 1}, {"_id": 1, "arr": [{"d": 2}, {"d": 4}]}),
    ({"b": {"d": True}}, {"_id": 1, "b": {"d": 3}}),
    ({"a": 0}, {"_id": 1, "b": {"c": 2, "d": 3}, "arr": PDOC["arr"], "list": [1, 2, 3, 4]}),
    ({"a": 0, "_id": 1, "b.c": 0, "arr": 0, "list": 0}, {"_id": 1, "b": {"d": 3}}),
    ({"a.x": 0}, PDOC),  # a path through a scalar excludes nothing
    ({"a.x": 1}, {"_id": 1}),  # a path through a scalar includes nothing
    ({"_id": 0, "b.c": 0, "arr.c": 0, "list": 0},
     {"a": 1, "b": {"d": 3}, "arr": [{"d": 2}, 5, {"d": 4}]}),
    ({"list": {"$slice": 2}, "arr": 0, "b": 0},
     {"_id": 1, "a": 1, "list": [1, 2]}),
    ({"list": {"$slice": -1}, "a": 1}, {"_id": 1, "a": 1, "list": [4]}),
    ({"list": {"$slice": [1, 2]}, "_id": 0, "a": 1}, {"a": 1, "list": [2, 3]}),
    ({"arr": {"$elemMatch": {"d": {"$gt": 3}}}}, {"_id": 1, "arr": [{"d": 4}]}),
    ({"x": "$b.c", "a": 1}, {"_id": 1, "a": 1, "x": 2}),
])
def test_projection(projection, expected):
    assert project(PDOC, projection) == expected


def test_projection_keeps_document_order_with_id_first():
    assert list(project({"z": 1, "_id": 5, "a": 2}, {"a": 1, "z": 1})) == ["_id", "z", "a"]


@pytest.mark.parametrize("projection, code", [
    ({"a": 1, "b": 0}, 31254),
    ({"a": 0, "b": 1}, 31253),
    ({"a": 1, "a.b": 1}, 31249),
    ({"a": {}}, 51270),
    ({"a": {"$meta": "textScore"}}, 2),
    ({"arr.$": 1}, 2),
])
def test_projection_errors(projection, code):
    raises(code, project, PDOC, projection)


# --- aggregation -----------------------------------------------------------------------------

SALES = [
    {"_id": 1, "item": "a", "qty": 2, "price": 1.5, "tags": ["x", "y"]},
    {"_id": 2, "item": "b", "qty": 1, "price": 10, "tags": []},
    {"_id": 3, "item": "a", "qty": 5, "price": 2, "tags": ["y"]},
    {"_id": 4, "item": "c", "qty": Int64(4), "price": None},
    {"_id": 5, "item": "b", "qty": 3, "price": 4, "tags": None},
]


def test_group_accumulators():
    out = run_pipeline(SALES, [
        {"$group": {"_id": "$item", "n": {"$sum": 1}, "qty": {"$sum": "$qty"},
                    "avg": {"$avg": "$price"}, "lo": {"$min": "$price"},
                    "hi": {"$max": "$qty"}, "first": {"$first": "$_id"},
                    "last": {"$last": "$price"}, "count": {"$count": {}},
                    "ids": {"$push": "$_id"}, "tags": {"$addToSet": "$item"}}},
        {"$sort": {"_id": 1}}])
    assert out == [
        {"_id": "a", "n": 2, "qty": 7, "avg": 1.75, "lo": 1.5, "hi": 5, "first": 1, "last": 2,
         "count": 2, "ids": [1, 3], "tags": ["a"]},
        {"_id": "b", "n": 2, "qty": 4, "avg": 7.0, "lo": 4, "hi": 3, "first": 2, "last": 4,
         "count": 2, "ids": [2, 5], "tags": ["b"]},
        {"_id": "c", "n": 1, "qty": 4, "avg": None, "lo": None, "hi": 4, "first": 4,
         "last": None, "count": 1, "ids": [4], "tags": ["c"]},
    ]
    assert type(out[2]["qty"]) is Int64


def test_first_last_of_a_missing_field_is_null():
    docs = [{"_id": 0, "k": "q", "w": 2}, {"_id": 1, "k": "q"}]
    group = {"$group": {"_id": "$k", "f": {"$first": "$w"}, "l": {"$last": "$w"}}}
    assert run_pipeline(docs, [group]) == [{"_id": "q", "f": 2, "l": None}]
    assert run_pipeline(docs, [{"$sort": {"_id": -1}}, group]) == [{"_id": "q", "f": None, "l": 2}]


def test_group_id_null_and_documents():
    assert run_pipeline(SALES, [{"$group": {"_id": None, "total": {"$sum": "$qty"}}}]) == \
        [{"_id": None, "total": 15}]
    out = run_pipeline(SALES, [{"$match": {"price": {"$ne": None}}},
                               {"$group": {"_id": {"i": "$item", "big": {"$gt": ["$qty", 2]}},
                                           "n": {"$sum": 1}}}])
    assert out == [{"_id": {"i": "a", "big": False}, "n": 1},
                   {"_id": {"i": "b", "big": False}, "n": 1},
                   {"_id": {"i": "a", "big": True}, "n": 1},
                   {"_id": {"i": "b", "big": True}, "n": 1}]
    # 1 and 1.0 are one group
    assert len(run_pipeline([{"k": 1}, {"k": 1.0}], [{"$group": {"_id": "$k"}}])) == 1


def test_match_sort_skip_limit_project_count():
    out = run_pipeline(SALES, [{"$match": {"qty": {"$gte": 2}}}, {"$sort": {"qty": -1}},
                               {"$skip": 1}, {"$limit": 2},
                               {"$project": {"_id": 0, "item": 1, "total": {
                                   "$multiply": ["$qty", "$price"]}}}])
    assert out == [{"item": "c", "total": None}, {"item": "b", "total": 12}]
    assert run_pipeline(SALES, [{"$match": {"item": "a"}}, {"$count": "n"}]) == [{"n": 2}]
    assert run_pipeline(SALES, [{"$match": {"item": "zz"}}, {"$count": "n"}]) == []


def test_unwind_string_and_document_forms():
    assert [(d["_id"], d["tags"]) for d in run_pipeline(SALES, [{"$unwind": "$tags"}])] == \
        [(1, "x"), (1, "y"), (3, "y")]
    out = run_pipeline(SALES, [{"$unwind": {"path": "$tags", "includeArrayIndex": "i",
                                            "preserveNullAndEmptyArrays": True}},
                               {"$project": {"tags": 1, "i": 1}}])
    assert out == [{"_id": 1, "tags": "x", "i": 0}, {"_id": 1, "tags": "y", "i": 1},
                   {"_id": 2, "i": None}, {"_id": 3, "tags": "y", "i": 0},
                   {"_id": 4, "i": None}, {"_id": 5, "tags": None, "i": None}]


def test_add_fields_and_expressions():
    out = run_pipeline([{"_id": 1, "a": 2, "s": {"x": 1}}], [
        {"$addFields": {"b": "$a", "lit": "text", "s.y": {"$add": ["$a", 1]},
                        "c": {"$literal": "$notapath"}, "gone": "$missing"}},
        {"$set": {"d": {"$cond": [{"$gte": ["$a", 2]}, "big", "small"]},
                  "e": {"$concat": ["$lit", "!"]}, "f": {"$ifNull": ["$missing", 0]}}}])
    assert out == [{"_id": 1, "a": 2, "s": {"x": 1, "y": 3}, "b": 2, "lit": "text",
                    "c": "$notapath", "d": "big", "e": "text!", "f": 0}]


def test_facet_runs_each_sub_pipeline_on_the_same_input():
    out = run_pipeline(SALES, [{"$match": {"qty": {"$gte": 2}}}, {"$facet": {
        "count": [{"$count": "n"}],
        "page": [{"$sort": {"qty": -1}}, {"$limit": 2}, {"$project": {"_id": 1}}]}}])
    assert out == [{"count": [{"n": 4}], "page": [{"_id": 3}, {"_id": 4}]}]
    raises(40600, run_pipeline, SALES, [{"$facet": {"x": [{"$facet": {}}]}}])


def test_sum_avg_min_max_as_expressions():
    out = run_pipeline([{"_id": 1, "arr": [1, 2.5, "x", None], "a": 2, "b": 5}], [
        {"$project": {"_id": 0, "s": {"$sum": "$arr"}, "avg": {"$avg": "$arr"},
                      "lo": {"$min": ["$a", "$b"]}, "hi": {"$max": "$arr"},
                      "both": {"$sum": ["$a", "$b", "$missing"]}}}])
    assert out == [{"s": 3.5, "avg": 1.75, "lo": 2, "hi": "x", "both": 7}]


@pytest.mark.parametrize("pipeline, code", [
    ([{"$foo": {}}], 40324),
    ([{"$match": {}, "$sort": {"a": 1}}], 40323),
    ([{"$lookup": {"from": "x"}}], 2),
    ([{"$group": {"n": {"$sum": 1}}}], 15955),
    ([{"$group": {"_id": 1, "n": {"$median": 1}}}], 15952),
    ([{"$group": {"_id": 1, "n": 1}}], 40234),
    ([{"$unwind": "tags"}], 28818),
    ([{"$limit": 0}], 15958),
    ([{"$skip": -1}], 15956),
    ([{"$sort": {}}], 15976),
    ([{"$count": "$n"}], 40158),
    ([{"$project": {"a": 1, "b": 0}}], 31254),
    ([{"$project": {"x": {"$frobnicate": 1}}}], 168),
    ([{"$match": {"a": {"$foo": 1}}}], 2),
])
def test_pipeline_errors(pipeline, code):
    e = raises(code, run_pipeline, SALES, pipeline)
    if code == 40324:
        assert e.message == "Unrecognized pipeline stage name: '$foo'"


# --- differential tests against mongomock ----------------------------------------------------

KEYS = ["a", "b", "c"]
SUBKEYS = ["x", "y"]
NO_NULL_SCALARS = st.one_of(st.sampled_from([-3, -2, 2, 3]),  # no 0/1: see note 1
                            st.sampled_from([-1.5, 2.5, 2.0]),
                            st.sampled_from(["", "a", "b", "ab", "B"]), st.booleans())
SCALARS = st.one_of(NO_NULL_SCALARS, st.none())


def values_of(scalars):
    # Arrays hold scalars and documents, never arrays directly (note 9).
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(st.one_of(scalars, st.dictionaries(st.sampled_from(SUBKEYS), inner,
                                                    max_size=2)), max_size=3),
        st.dictionaries(st.sampled_from(SUBKEYS), inner, max_size=2)), max_leaves=5)


VALUES = values_of(SCALARS)
DOCUMENTS = st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3),
                     min_size=1, max_size=6)
CMP = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
NOT_NULL = SCALARS.filter(lambda v: v is not None)
CONDITIONS = st.one_of(
    st.builds(lambda op, v: {op: v}, CMP, VALUES.filter(lambda v: v is not None)),
    st.builds(lambda op: {op: None}, st.sampled_from(["$eq", "$ne"])),  # note 6
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]),
              st.lists(VALUES.filter(lambda v: not isinstance(v, list)), max_size=3)),  # 8
    st.builds(lambda b: {"$exists": b}, st.booleans()),
    st.builds(lambda p: {"$regex": p}, st.sampled_from(["^a", "b", "^$", "A"])),
    st.builds(lambda p: {"$regex": p, "$options": "i"}, st.sampled_from(["^a", "b"])),
    st.builds(lambda n: {"$size": n}, st.integers(0, 3)),
    st.builds(lambda t: {"$type": t}, st.sampled_from(  # note 5
        ["int", "double", "string", "bool", "array", "object", "number"])),
    st.builds(lambda op, v: {"$elemMatch": {op: v}}, CMP, NOT_NULL),
    st.builds(lambda k, v: {"$elemMatch": {k: v}}, st.sampled_from(SUBKEYS), SCALARS),
    st.builds(lambda op, v: {"$not": {op: v}}, CMP, NOT_NULL),
    st.builds(lambda v: {"$all": v}, st.lists(NOT_NULL, min_size=1, max_size=2)),  # note 7
)
PATHS = st.sampled_from(["a", "b", "a.x", "b.y", "a.x.y", "c"])
FILTERS = st.recursive(
    st.one_of(st.builds(lambda p, v: {p: v}, PATHS, VALUES.filter(lambda v: v != {})),  # 2
              st.builds(lambda p, c: {p: c}, PATHS, CONDITIONS)),
    lambda inner: st.one_of(
        st.builds(lambda op, subs: {op: subs}, st.sampled_from(["$and", "$or", "$nor"]),
                  st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, inner, inner)),
    max_leaves=4)

DIFFERENTIAL = settings(max_examples=200, suppress_health_check=list(HealthCheck))


def filter_paths(filter: dict, out: dict) -> dict:
    """path → set of operators used on it, through $and/$or/$nor."""
    for name, value in filter.items():
        if name in ("$and", "$or", "$nor"):
            for sub in value:
                filter_paths(sub, out)
        else:
            ops = set(value) if isinstance(value, dict) and value and \
                next(iter(value)).startswith("$") else {"$eq"}
            out.setdefault(name, set()).update(ops)
    return out


def _stops_short(value, parts: list[str]) -> bool:
    """The path meets a scalar, null, [] or a non-document array element before its end."""
    if not parts:
        return False
    if isinstance(value, dict):
        return parts[0] in value and _stops_short(value[parts[0]], parts[1:])
    if isinstance(value, list):
        return not value or any(not isinstance(e, dict) or _stops_short(e, parts)
                                for e in value)
    return True


def _crosses_array(value, parts: list[str]) -> bool:
    for part in parts[:-1]:
        if isinstance(value, list):
            return True
        if not isinstance(value, dict):
            return False
        value = value.get(part)
    return isinstance(value, list)


def oracle_differs_on_doc(doc: dict, paths: dict) -> bool:
    for path, ops in paths.items():
        parts = path.split(".")
        if len(parts) > 1 and _stops_short(doc, parts):  # note 3
            return True
        if "$size" in ops and isinstance(_resolve(doc, path), dict):  # note 4
            return True
        if "$exists" in ops and len(parts) > 1 and _crosses_array(doc, parts):  # note 17
            return True
    return False


ORACLE = mongomock.MongoClient()


def mongo_collection(docs: list[dict]):
    ORACLE.db.drop_collection("c")
    collection = ORACLE.db.c
    if docs:
        collection.insert_many([dict(d) for d in docs])
    return collection


@DIFFERENTIAL
@given(DOCUMENTS, FILTERS)
def test_find_matches_mongomock(docs, filter):
    docs = [dict(d, _id=i) for i, d in enumerate(docs)]
    paths = filter_paths(filter, {})
    compared = [d for d in docs if not oracle_differs_on_doc(d, paths)]
    expected = sorted(d["_id"] for d in mongo_collection(compared).find(filter))
    assert sorted(ids(filter, compared)) == expected


UPDATE_PATHS = st.sampled_from(["a", "b", "a.x", "c.y", "n", "b.0"])
NUMBERS = st.sampled_from([-3, 2, 2.5, -1.5])


def _op(op, args):
    return st.builds(lambda fields: {op: fields},
                     st.dictionaries(UPDATE_PATHS, args, min_size=1, max_size=2))


UPDATES = st.lists(st.one_of(
    _op("$set", VALUES), _op("$unset", st.just("")), _op("$inc", NUMBERS),
    _op("$mul", NUMBERS), _op("$min", VALUES), _op("$max", VALUES),
    _op("$push", st.one_of(VALUES, st.builds(lambda e: {"$each": e},
                                             st.lists(SCALARS, max_size=3)))),
    _op("$addToSet", st.one_of(VALUES, st.builds(lambda e: {"$each": e},
                                                 st.lists(SCALARS, max_size=3)))),
    _op("$pull", st.one_of(SCALARS, st.builds(lambda op, v: {op: v}, CMP, NOT_NULL))),
    st.sampled_from([{"$rename": {s: d}} for s in ("a", "b", "c") for d in ("n", "m", "c")
                     if s != d]),
), min_size=1, max_size=3).map(lambda ops: {k: v for op in ops for k, v in op.items()})


def update_paths(update: dict) -> list[str]:
    return [p for op, fields in update.items() for path, arg in fields.items()
            for p in ([path, arg] if op == "$rename" else [path])]


def _resolve(doc: dict, path: str):
    value = doc
    for depth, part in enumerate(path.split(".")):
        if depth and not isinstance(value, dict):
            return "<blocked>"
        value = value.get(part, "<missing>")
    return value


def _has_bool(value) -> bool:
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def oracle_differs_on_update(doc: dict, update: dict) -> bool:
    for op, fields in update.items():
        for path, arg in fields.items():
            for p in ([path, arg] if op == "$rename" else [path]):
                if _resolve(doc, p) == "<blocked>":  # note 10
                    return True
            current = _resolve(doc, path)
            if op in ("$pull", "$push", "$addToSet") and current != "<missing>" and \
                    not isinstance(current, list):  # note 10: MongoDB refuses, mongomock not
                return True
            if op in ("$inc", "$mul") and isinstance(current, bool):  # note 1
                return True
            if op in ("$min", "$max") and (_has_bool(current) or _has_bool(arg)):  # note 1
                return True
            if op == "$addToSet" and isinstance(arg, dict) and "$each" in arg and any(
                    compare(x, y) == 0 for i, x in enumerate(arg["$each"])
                    for y in arg["$each"][i + 1:]):  # note 14
                return True
    return False


def canonical(value):
    """Field-order-insensitive (note 13), BSON-type-sensitive form of a document."""
    if isinstance(value, dict):
        return ("doc", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    return (bson_type_number(value), value)


@DIFFERENTIAL
@given(DOCUMENTS, UPDATES)
def test_update_matches_mongomock(docs, update):
    paths = update_paths(update)
    conflicting = any(a == b or b.startswith(a + ".") for i, a in enumerate(paths)
                      for j, b in enumerate(paths) if i != j)
    if conflicting:  # note 10: the engine must refuse, mongomock doesn't
        raises(40, apply_update, {"_id": 0}, update)
        return
    for i, doc in enumerate(docs):
        doc = dict(doc, _id=i)
        if oracle_differs_on_update(doc, update):
            continue
        collection = mongo_collection([doc])
        try:
            collection.update_many({"_id": i}, update)
        except (TypeError, ValueError, IndexError, AttributeError):  # note 12
            continue
        except mongomock.OperationFailure:
            with pytest.raises(MongoError):
                apply_update(doc, update)
            continue
        expected = collection.find_one({"_id": i})
        assert canonical(apply_update(doc, update)) == canonical(expected)


SORT_DOCUMENTS = st.lists(st.dictionaries(st.sampled_from(KEYS), values_of(NO_NULL_SCALARS),
                                          max_size=3), min_size=1, max_size=6)
SORT_SPECS = st.lists(st.tuples(st.sampled_from(["a", "b", "a.x", "c"]), st.sampled_from([1, -1])),
                      min_size=1, max_size=2, unique_by=lambda t: t[0])


def _sort_oracle_differs(doc: dict, path: str) -> bool:
    """Note 11: an array on the way, or an array of two or more at the end of the path."""
    value = doc
    for depth, part in enumerate(path.split(".")):
        if depth and not isinstance(value, dict):
            return isinstance(value, list)
        value = value.get(part)
    return isinstance(value, list) and len(value) > 1


@DIFFERENTIAL
@given(SORT_DOCUMENTS, SORT_SPECS)
def test_sort_matches_mongomock(docs, spec):
    docs = [dict(d, _id=i) for i, d in enumerate(docs)]
    docs = [d for d in docs if not any(_sort_oracle_differs(d, p) for p, _ in spec)]
    spec = spec + [("_id", 1)]  # a total order: ties would make the comparison ambiguous
    expected = [d["_id"] for d in mongo_collection(docs).find().sort(spec)]
    assert [d["_id"] for d in sort_documents(docs, spec)] == expected


AGG_NUMBERS = st.sampled_from([-3, 2, 3, 2.5, -1.5])
AGG_DOCUMENTS = st.lists(st.fixed_dictionaries(
    {"k": st.sampled_from(["p", "q", "r"]), "v": AGG_NUMBERS},
    # w holds no bools: mongomock sums and averages them as 0/1 (note 1)
    optional={"w": st.one_of(AGG_NUMBERS, st.sampled_from(["", "a", "B"]), st.none()),
              "arr": st.lists(NO_NULL_SCALARS, max_size=3)}), min_size=1, max_size=8)
ACCUMULATORS = st.sampled_from(["$sum", "$min", "$max", "$avg", "$first", "$last", "$push"])
# Stages that never leave the stream empty come before $group/$count: mongomock answers an
# empty input with one document ({n: 0} for $count), MongoDB with none (note 15).
AGG_PREFIX = st.lists(st.one_of(
    st.builds(lambda d: {"$sort": {"v": d, "_id": 1}}, st.sampled_from([1, -1])),
    st.just({"$unwind": {"path": "$arr", "preserveNullAndEmptyArrays": True}}),
    st.just({"$addFields": {"z": "$v", "y.q": "$k"}}),
    st.just({"$project": {"k": 1, "v": 1, "w": 1}}),
), max_size=2)
AGG_MIDDLE = st.one_of(
    # MongoDB leaves the order of groups unspecified: a $sort on _id makes $skip/$limit
    # after it mean the same thing on both sides.
    st.builds(lambda a, f: [{"$group": {"_id": "$k", "out": {a: f}}}, {"$sort": {"_id": 1}}],
              ACCUMULATORS, st.sampled_from(["$v", "$w", 1])).filter(
        lambda p: p[0]["$group"]["out"] not in ({"$first": "$w"}, {"$last": "$w"})),  # 16
    st.builds(lambda f: [{"$group": {"_id": None, "n": {"$sum": 1}, "s": {"$sum": f}}}],
              st.sampled_from(["$v", "$w"])),
    st.just([{"$count": "n"}]),
    st.just([]),
)
AGG_SUFFIX = st.lists(st.one_of(
    st.just({"$unwind": "$arr"}),
    st.builds(lambda n: {"$skip": n}, st.integers(0, 3)),
    st.builds(lambda n: {"$limit": n}, st.integers(1, 3)),
    st.builds(lambda v: {"$match": {"v": {"$gte": v}}}, AGG_NUMBERS),
    st.builds(lambda k: {"$match": {"$or": [{"k": k}, {"_id": k}]}}, st.sampled_from(["p", "q"])),
), max_size=2)
PIPELINES = st.builds(lambda a, b, c: a + b + c, AGG_PREFIX, AGG_MIDDLE, AGG_SUFFIX)


@DIFFERENTIAL
@given(AGG_DOCUMENTS, PIPELINES)
def test_aggregate_matches_mongomock(docs, pipeline):
    docs = [dict(d, _id=i) for i, d in enumerate(docs)]
    try:
        expected = list(mongo_collection(docs).aggregate(pipeline))
    except (TypeError, ValueError):  # note 12 ($min/$max across types)
        return
    got = run_pipeline([dict(d) for d in docs], pipeline)
    assert [canonical(d) for d in got] == [canonical(d) for d in expected]


def test_positional_updates():
    doc = {"_id": 1, "c": [{"id": 1, "v": 0}, {"id": 2, "v": 0}], "n": [1, 5, 9]}
    assert up(doc, {"$inc": {"c.$.v": 1}}, filter={"c.id": 2})["c"] == \
        [{"id": 1, "v": 0}, {"id": 2, "v": 1}]
    assert up(doc, {"$set": {"n.$": 0}}, filter={"n": {"$gt": 4}})["n"] == [1, 0, 9]
    assert up(doc, {"$set": {"c.$.x": 1}}, filter={"c": {"$elemMatch": {"id": 1}}})["c"] == \
        [{"id": 1, "v": 0, "x": 1}, {"id": 2, "v": 0}]
    assert up(doc, {"$inc": {"c.$[].v": 2, "n.$[]": 1}}) == \
        {"_id": 1, "c": [{"id": 1, "v": 2}, {"id": 2, "v": 2}], "n": [2, 6, 10]}
    e = raises(2, apply_update, doc, {"$set": {"c.$.v": 1}}, filter={"n": 1})
    assert e.message == "The positional operator did not find the match needed from the query."
    raises(2, apply_update, doc, {"$set": {"c.$.v": 1}})  # no filter given
    raises(2, apply_update, doc, {"$set": {"x.$[].v": 1}})
    raises(2, apply_update, doc, {"$set": {"c.$[i].v": 1}})  # no array filter named i
    raises(2, apply_update, doc, {"$set": {"c.$.$": 1}}, filter={"c.id": 1})


POSITIONAL_DOCUMENTS = st.lists(st.fixed_dictionaries({"c": st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from([2, 3, -2])}, optional={"v": AGG_NUMBERS}), max_size=4)}),
    min_size=1, max_size=4)
POSITIONAL_UPDATES = st.one_of(
    st.builds(lambda op, v: {op: {"c.$.v": v}}, st.sampled_from(["$set", "$inc", "$max"]),
              AGG_NUMBERS),
    st.builds(lambda v: {"$set": {"c.$.w": v}}, AGG_NUMBERS),
)


@DIFFERENTIAL
@given(POSITIONAL_DOCUMENTS, st.sampled_from([2, 3, -2]), POSITIONAL_UPDATES)
def test_positional_update_matches_mongomock(docs, wanted_id, update):
    docs = [dict(d, _id=i) for i, d in enumerate(docs)]
    collection = mongo_collection(docs)
    filter = {"c.id": wanted_id}
    match = compile_filter(filter)
    selected = [d for d in docs if match(d)]
    collection.update_many(filter, update)
    for doc in selected:
        expected = collection.find_one({"_id": doc["_id"]})
        assert canonical(apply_update(doc, update, filter=filter)) == canonical(expected)


PROJECTIONS = st.dictionaries(st.sampled_from(["a", "b", "a.x", "c.y", "_id", "b.x.y"]),
                              st.sampled_from([0, 1]), min_size=1, max_size=3)


@DIFFERENTIAL
@given(DOCUMENTS, PROJECTIONS)
def test_projection_matches_mongomock(docs, projection):
    docs = [dict(d, _id=i) for i, d in enumerate(docs)]
    docs = [d for d in docs if not any("." in p and _stops_short(d, p.split("."))  # note 19
                                       for p in projection)]
    try:
        expected = list(mongo_collection(docs).find({}, projection))
    except (mongomock.OperationFailure, ValueError, NotImplementedError):
        # mixing inclusion and exclusion, or colliding paths: MongoDB refuses both
        with pytest.raises(MongoError):
            [project(d, projection) for d in docs]
        return
    assert [canonical(project(d, projection)) for d in docs] == \
        [canonical(d) for d in expected]


UPSERT_FILTERS = st.dictionaries(st.sampled_from(["a", "b.x", "c", "_id"]),
                                 NO_NULL_SCALARS.filter(lambda v: not isinstance(v, bool)),
                                 max_size=3)


@DIFFERENTIAL
@given(UPSERT_FILTERS, UPDATES)
def test_upsert_insert_matches_mongomock(filter, update):
    paths = update_paths(update)
    if any(a == b or b.startswith(a + ".") for i, a in enumerate(paths)
           for j, b in enumerate(paths) if i != j):
        return  # note 10 (covered by test_update_matches_mongomock)
    seed = upsert_seed(filter)
    if oracle_differs_on_update(seed, update):
        return
    collection = mongo_collection([])
    try:
        collection.update_one(filter, update, upsert=True)
    except (TypeError, ValueError, IndexError, AttributeError):  # note 12
        return
    except mongomock.OperationFailure:
        with pytest.raises(MongoError):
            apply_update(seed, update, is_upsert_insert=True)
        return
    expected = collection.find_one({})
    if "_id" not in filter:
        del expected["_id"]  # generated by the store, not by the engine
    assert canonical(apply_update(seed, update, is_upsert_insert=True)) == canonical(expected)
