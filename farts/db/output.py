"""The aggregation stages that write: $out and $merge, the last stage of a pipeline.

The pipeline runs as a read; its output is then written in one write function of the
store's writer (all of it or none of it). Every change goes through WriteTxn.insert,
replace and delete, so it is validated, indexed and logged like any other write, and
replication ships it as its resulting document changes: $out as the inserts, replacements
and deletes that turn the target into the output, $merge's "merge" as a $set of the
fields it brings (merged field by field with concurrent writes of other nodes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bson
from bson.objectid import ObjectId

from farts.db import keys
from farts.db.aggregate import evaluate, field_path, run_pipeline
from farts.db.errors import BAD_VALUE, INVALID_OPTIONS, TYPE_MISMATCH, error
from farts.db.ordering import MISSING
from farts.db.query import compile_filter

WRITING_STAGES = ("$out", "$merge")
WHEN_MATCHED = ("replace", "keepExisting", "merge", "fail")
WHEN_NOT_MATCHED = ("insert", "discard", "fail")
_UPDATE_STAGES = ("$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith")


@dataclass
class Output:
    stage: str                       # $out | $merge
    db: str
    coll: str
    on: list[str] = field(default_factory=lambda: ["_id"])
    when_matched: str | list = "merge"
    when_not_matched: str = "insert"
    let: dict | None = None


def stage_name(stage: Any) -> str | None:
    return next(iter(stage), None) if isinstance(stage, dict) else None


def parse(stage: dict, db: str) -> Output:
    """The $out or $merge stage, checked as mongod checks it before anything runs."""
    name, arg = next(iter(stage.items()))
    if name == "$out":
        if isinstance(arg, str):
            return Output(name, db, _coll_name(arg))
        if isinstance(arg, dict):
            if "timeseries" in arg:
                raise error(INVALID_OPTIONS, "$out to a time-series collection is not supported")
            _only(arg, ("db", "coll"), "$out")
            return Output(name, _db_name(arg.get("db", db)), _coll_name(arg.get("coll")))
        raise error(16990, f"$out only supports a string or object argument, not {type(arg).__name__}")
    if isinstance(arg, str):
        return Output(name, db, _coll_name(arg))
    if not isinstance(arg, dict):
        raise error(51182, f"$merge only supports a string or object argument, not {type(arg).__name__}")
    _only(arg, ("into", "on", "let", "whenMatched", "whenNotMatched"), "$merge")
    into = arg.get("into")
    if isinstance(into, str):
        out = Output(name, db, _coll_name(into))
    elif isinstance(into, dict):
        _only(into, ("db", "coll"), "$merge.into")
        out = Output(name, _db_name(into.get("db", db)), _coll_name(into.get("coll")))
    else:
        raise error(51178, "$merge 'into' field must be either a string or an object")
    on = arg.get("on", "_id")
    on = [on] if isinstance(on, str) else on
    if not isinstance(on, list) or not on or not all(isinstance(f, str) and f for f in on):
        raise error(51186, "$merge 'on' field must be either a string or an array of strings")
    if len(set(on)) != len(on):
        raise error(31465, "Found a duplicate field in $merge 'on'")
    out.on = on
    matched = arg.get("whenMatched", "merge")
    if isinstance(matched, list):
        for s in matched:
            if stage_name(s) not in _UPDATE_STAGES or len(s) != 1:
                raise error(INVALID_OPTIONS, f"$merge whenMatched pipeline may only contain {', '.join(_UPDATE_STAGES)}")
    elif matched not in WHEN_MATCHED:
        raise error(BAD_VALUE, f"Enumeration value '{matched}' for field 'whenMatched' is not a valid value.")
    not_matched = arg.get("whenNotMatched", "insert")
    if not_matched not in WHEN_NOT_MATCHED:
        raise error(BAD_VALUE, f"Enumeration value '{not_matched}' for field 'whenNotMatched' is not a valid value.")
    let = arg.get("let")
    if let is not None:
        if not isinstance(let, dict):
            raise error(TYPE_MISMATCH, "$merge 'let' must be an object", "TypeMismatch")
        if not isinstance(matched, list):
            raise error(51199, "Cannot use 'let' variables with 'whenMatched: " + str(matched) + "' mode")
    out.when_matched, out.when_not_matched, out.let = matched, not_matched, let
    return out


def _only(arg: dict, allowed: tuple, where: str) -> None:
    for key in arg:
        if key not in allowed:
            raise error(40415, f"BSON field '{where}.{key}' is an unknown field.")


def _coll_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise error(TYPE_MISMATCH, "the target collection name must be a non-empty string", "TypeMismatch")
    return name


def _db_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise error(TYPE_MISMATCH, "the target database name must be a non-empty string", "TypeMismatch")
    return name


def write(w, ns: str, out: Output, docs: list, display) -> None:
    """Writes the pipeline's output into ns (in the caller's write transaction)."""
    if out.stage == "$out":
        _write_out(w, ns, docs, display)
    else:
        _write_merge(w, ns, out, docs, display)


def _write_out(w, ns: str, docs: list, display) -> None:
    """$out: ns holds exactly the output afterwards (its indexes and options stay)."""
    wanted: dict[bytes, dict] = {}
    for doc in docs:
        if "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        k = keys.encode(doc["_id"])
        if k in wanted:
            raise error(11000, f"E11000 duplicate key error collection: {display(ns)} index: _id_ dup key: "
                               f"{{ _id: {doc['_id']!r} }}", "DuplicateKey")
        wanted[k] = doc
    existing = {keys.encode(d["_id"]): d for d in w.find(ns, {}, None)} if ns in w.catalog else {}
    for k, old in existing.items():
        if k not in wanted:
            w.delete(ns, old)
    for k, new in wanted.items():
        old = existing.get(k)
        if old is None:
            w.insert(ns, new)
        elif bson.encode(old) != bson.encode(new):
            w.replace(ns, old, new, {"op": "r", "doc": new})
    w.collection(ns)   # an empty output still leaves the (empty) collection


def _write_merge(w, ns: str, out: Output, docs: list, display) -> None:
    by_id = out.on == ["_id"]
    coll = w.catalog.get(ns)
    if not by_id and not any(i.unique and sorted(f for f, _ in i.fields) == sorted(out.on)
                             for i in (coll.indexes if coll else ())):
        raise error(51183, "Cannot find index to verify that join fields will be unique")
    for doc in docs:
        if by_id and "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        values = {}
        for f in out.on:
            v = field_path(doc, f.split("."))
            if v is MISSING or v is None or isinstance(v, list):
                raise error(51132, f"$merge write error: 'on' field '{f}' cannot be missing, null, "
                                   "undefined or an array")
            values[f] = v
        if by_id:
            match = w.get(ns, doc["_id"])
        else:
            # ($eq: a value that is a document, {"$gte": 0} say, is compared, not run as a query)
            eq = {f: {"$eq": v} for f, v in values.items()}
            found = w.find(ns, eq, compile_filter(eq), limit=1)
            match = found[0] if found else None
        if match is None:
            if out.when_not_matched == "insert":
                w.insert(ns, doc)
            elif out.when_not_matched == "fail":
                raise error(13113, "$merge could not find a matching document in the target collection "
                                   "for at least one document in the source collection", "MergeStageNoMatchingDocument")
            continue
        _when_matched(w, ns, out, match, doc, display)


def _when_matched(w, ns: str, out: Output, old: dict, doc: dict, display) -> None:
    how = out.when_matched
    if how == "keepExisting":
        return
    if how == "fail":
        e = error(11000, f"E11000 duplicate key error collection: {display(ns)} index: "
                         f"{'_id_' if out.on == ['_id'] else 'on'} ($merge whenMatched: fail)", "DuplicateKey")
        e.details = {"keyPattern": dict.fromkeys(out.on, 1),
                     "keyValue": {f: field_path(doc, f.split(".")) for f in out.on}}
        raise e
    if how == "merge":
        fields = {k: v for k, v in doc.items() if k != "_id"}
        new = {**old, **fields}
        op = {"op": "u", "u": {"$set": fields}, "now": None}
    elif how == "replace":
        new = {"_id": old["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
        op = {"op": "r", "doc": new}
    else:
        variables = {"new": doc} if out.let is None else {n: evaluate(e, doc) for n, e in out.let.items()}
        docs = run_pipeline([old], _bind(how, variables))
        new = docs[0]
        op = {"op": "r", "doc": new}
    if "_id" in doc and bson.encode({"_id": doc["_id"]}) != bson.encode({"_id": old["_id"]}) or \
            bson.encode({"_id": new.get("_id")}) != bson.encode({"_id": old["_id"]}):
        raise error(66, "$merge failed to update the matching document, did you attempt to modify the _id or "
                        "the shard key?", "ImmutableField")
    if bson.encode(new) != bson.encode(old):
        if op["op"] == "r":
            op["doc"] = new
        w.replace(ns, old, new, op)


def _bind(expr: Any, variables: dict) -> Any:
    """The whenMatched pipeline with its $$variables ($$new, or let's) put in as literals."""
    if isinstance(expr, str) and expr.startswith("$$"):
        name, _, rest = expr[2:].partition(".")
        if name in variables:
            value = variables[name]
            if rest:
                value = field_path(value, rest.split("."))
            return {"$literal": value} if value is not MISSING else "$$REMOVE"
        return expr
    if isinstance(expr, list):
        return [_bind(e, variables) for e in expr]
    if isinstance(expr, dict):
        if set(expr) == {"$literal"}:
            return expr
        return {k: _bind(v, variables) for k, v in expr.items()}
    return expr
