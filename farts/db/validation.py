"""Document validation: a collection's ``validator`` ($jsonSchema and query operators),
``validationLevel`` and ``validationAction``, and the DocumentValidationFailure (121) a
MongoDB 7.0 server answers with, its ``errInfo`` included (failingDocumentId, then the
details tree: operatorName, specifiedAs, reason, consideredValue...).

``check_write`` is called by the store's WriteTxn for every local insert and replacement
(replicated records are not checked again: the write was accepted where it happened).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from bson.decimal128 import Decimal128

from farts.db.errors import BAD_VALUE, FAILED_TO_PARSE, TYPE_MISMATCH, MongoError, error
from farts.db.ordering import MISSING, compare, sort_key
from farts.db.query import _TYPE_ALIASES, bson_type_number, compile_field_operators, compile_filter

log = logging.getLogger("farts.db")

DOCUMENT_VALIDATION_FAILURE = 121
LEVELS = ("off", "strict", "moderate")
ACTIONS = ("error", "warn")
OPTIONS = ("validator", "validationLevel", "validationAction")

_TYPE_NAMES = {number: name for name, number in _TYPE_ALIASES.items()}
_JSON_TYPES = {"object": {3}, "array": {4}, "number": {1, 16, 18, 19}, "boolean": {8},
               "string": {2}, "null": {10}}
_UNSUPPORTED_KEYWORDS = ("$ref", "$schema", "default", "definitions", "format", "id",
                         "encrypt", "encryptMetadata")


def check_options(options: dict) -> None:
    """Raises for a validator that does not compile or a level/action MongoDB does not know."""
    validator = options.get("validator")
    if validator is not None:
        if not isinstance(validator, dict):
            raise error(TYPE_MISMATCH, "'validator' must be an object", "TypeMismatch")
        for name in validator:
            if name in ("$where", "$near", "$nearSphere", "$text", "$geoNear"):
                raise error(224, f"{name} is not allowed in this context", "QueryFeatureNotAllowed")
        compiled(validator)
    for key, allowed in (("validationLevel", LEVELS), ("validationAction", ACTIONS)):
        value = options.get(key)
        if value is not None and value not in allowed:
            raise error(BAD_VALUE, f"Enumeration value '{value}' for field '{key}' is not a valid value.")


def check_write(options: dict, old: dict | None, new: dict) -> bool:
    """Raises DocumentValidationFailure when new does not pass the collection's validator;
    for action "warn" logs it and returns True instead (the store counts it: serverStatus
    farts.validationWarnings). old: the document replaced (None for an insert)."""
    validator = options.get("validator")
    level = options.get("validationLevel", "strict")
    if not validator or level == "off":
        return False
    v = compiled(validator)
    if v.matches(new):
        return False
    if level == "moderate" and old is not None and not v.matches(old):
        return False   # moderate: a document that already failed may stay as it is
    info = {"failingDocumentId": new.get("_id"), "details": v.explain(new)}
    if options.get("validationAction") == "warn":
        log.warning("Document would fail validation: %s", info)
        return True
    e = MongoError(DOCUMENT_VALIDATION_FAILURE, "DocumentValidationFailure", "Document failed validation")
    e.details = {"errInfo": info}
    raise e


_cache: dict[int, tuple[dict, Validator]] = {}


def compiled(validator: dict) -> Validator:
    """The compiled validator, kept while the catalog holds that same options object."""
    hit = _cache.get(id(validator))
    if hit is not None and hit[0] is validator:
        return hit[1]
    v = Validator(validator)
    if len(_cache) > 1000:
        _cache.clear()
    _cache[id(validator)] = (validator, v)
    return v


class Validator:
    def __init__(self, spec: dict) -> None:
        self.clauses: list[tuple[str, Any, Callable[[Any], bool]]] = []
        for name, value in spec.items():
            self.clauses.append((name, value, compile_filter({name: value})))

    def matches(self, doc: dict) -> bool:
        return all(pred(doc) for _, _, pred in self.clauses)

    def explain(self, doc: dict) -> dict:
        failed = [(i, _clause_details(name, value, doc))
                  for i, (name, value, pred) in enumerate(self.clauses) if not pred(doc)]
        if len(self.clauses) == 1:
            return failed[0][1]
        return {"operatorName": "$and", "clausesNotSatisfied": [{"index": i, "details": d} for i, d in failed]}


def _clause_details(name: str, value: Any, doc: dict) -> dict:
    """Why one top-level clause of a validator did not match doc, as mongod 7.0 words it."""
    if name == "$jsonSchema":
        return {"operatorName": "$jsonSchema", "schemaRulesNotSatisfied": compile_schema(value)(doc)}
    if name in ("$and", "$or", "$nor"):
        out = []
        for i, clause in enumerate(value):
            pred = compile_filter(clause)
            if pred(doc) == (name == "$nor"):
                sub = list(clause.items())
                details = _clause_details(*sub[0], doc) if len(sub) == 1 and name != "$nor" else \
                    {"operatorName": name, "specifiedAs": clause, "reason": "child expression matched"
                     if name == "$nor" else "clause did not match"}
                out.append({"index": i, "details": details})
        return {"operatorName": name, "clausesNotSatisfied": out}
    if name == "$expr":
        return {"operatorName": "$expr", "specifiedAs": {"$expr": value}, "reason": "expression did not match",
                "expressionResult": False}
    ops = value if isinstance(value, dict) and value and next(iter(value)).startswith("$") else {"$eq": value}
    for op, arg in ops.items():
        if op == "$options":
            continue
        sub = {op: arg, **({"$options": ops["$options"]} if op == "$regex" and "$options" in ops else {})}
        if compile_field_operators(name, sub)(doc):
            continue
        found = _path_value(doc, name)
        out = {"operatorName": op, "specifiedAs": {name: sub if value is ops else value}}
        if found is MISSING and op not in ("$exists", "$ne", "$nin", "$not"):
            out["reason"] = "field was missing"
        else:
            out["reason"] = "comparison failed" if op in ("$eq", "$gt", "$gte", "$lt", "$lte", "$ne") \
                else "expression did not match"
            if found is not MISSING:
                out["consideredValue"] = found
        return out
    return {"operatorName": "$and", "specifiedAs": {name: value}, "reason": "expression did not match"}


def _path_value(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


# --- $jsonSchema ----------------------------------------------------------------------------

Check = Callable[[Any], list]   # a value → the rules it fails (empty: it passes)


def schema_predicate(spec: Any) -> Callable[[Any], bool]:
    """{$jsonSchema: spec} in a filter: matches the documents that satisfy the schema."""
    check = compile_schema(spec)
    return lambda doc: not check(doc)


def compile_schema(spec: Any) -> Check:
    if not isinstance(spec, dict):
        raise error(TYPE_MISMATCH, "$jsonSchema must be an object", "TypeMismatch")
    rules: list[Check] = []
    for keyword, arg in spec.items():
        if keyword in ("title", "description"):
            if not isinstance(arg, str):
                raise error(TYPE_MISMATCH, f"$jsonSchema keyword '{keyword}' must be a string", "TypeMismatch")
            continue
        if keyword in ("exclusiveMinimum", "exclusiveMaximum"):
            if not isinstance(arg, bool):
                raise error(TYPE_MISMATCH, f"$jsonSchema keyword '{keyword}' must be a boolean", "TypeMismatch")
            if keyword.replace("exclusiveM", "m") not in spec:
                raise error(FAILED_TO_PARSE, f"$jsonSchema keyword '{keyword.replace('exclusiveM', 'm')}' "
                                             f"must be a present if {keyword} is present")
            continue
        if keyword == "additionalItems":
            continue   # read with items
        if keyword in _UNSUPPORTED_KEYWORDS:
            raise error(FAILED_TO_PARSE, f"$jsonSchema keyword '{keyword}' is not currently supported")
        build = _KEYWORDS.get(keyword)
        if build is None:
            raise error(FAILED_TO_PARSE, f"Unknown $jsonSchema keyword: {keyword}")
        rules.append(build(arg, spec))
    description = spec.get("description")

    def check(value: Any) -> list:
        failed = []
        for rule in rules:
            failed.extend(rule(value))
        if failed and description is not None:
            failed = [{**f, "description": description} if "description" not in f else f for f in failed]
        return failed
    return check


def _type_detail(keyword: str, arg: Any, value: Any) -> dict:
    return {"operatorName": keyword, "specifiedAs": {keyword: arg}, "reason": "type did not match",
            "consideredValue": value, "consideredType": _TYPE_NAMES.get(bson_type_number(value), "missing")}


def _bson_type(arg: Any, spec: dict) -> Check:
    names = arg if isinstance(arg, list) else [arg]
    wanted: set[int] = set()
    for name in names:
        if name == "number":
            wanted |= _JSON_TYPES["number"]
        elif isinstance(name, str) and name in _TYPE_ALIASES:
            wanted.add(_TYPE_ALIASES[name])
        else:
            raise error(BAD_VALUE, f"Unknown type name alias: {name}")
    return lambda v: [] if bson_type_number(v) in wanted else [_type_detail("bsonType", arg, v)]


def _json_type(arg: Any, spec: dict) -> Check:
    names = arg if isinstance(arg, list) else [arg]
    wanted: set[int] = set()
    for name in names:
        if name == "integer":
            raise error(BAD_VALUE, "JSON type 'integer' is not currently supported.")
        if name not in _JSON_TYPES:
            raise error(BAD_VALUE, f"Unknown JSON Schema type: {name}")
        wanted |= _JSON_TYPES[name]
    return lambda v: [] if bson_type_number(v) in wanted else [_type_detail("type", arg, v)]


def _enum(arg: Any, spec: dict) -> Check:
    if not isinstance(arg, list) or not arg:
        raise error(FAILED_TO_PARSE, "$jsonSchema keyword 'enum' must be a non-empty array")
    keys = {repr(sort_key(e)) for e in arg}
    return lambda v: [] if repr(sort_key(None if v is MISSING else v)) in keys else \
        [{"operatorName": "enum", "specifiedAs": {"enum": arg}, "reason": "value was not found in enum",
          "consideredValue": v}]


def _number(arg: Any, keyword: str) -> None:
    if isinstance(arg, bool) or not isinstance(arg, (int, float, Decimal128)):
        raise error(TYPE_MISMATCH, f"$jsonSchema keyword '{keyword}' must be a number", "TypeMismatch")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal128)) and not isinstance(v, bool)


def _bound(keyword: str) -> Callable[[Any, dict], Check]:
    def build(arg: Any, spec: dict) -> Check:
        _number(arg, keyword)
        exclusive = spec.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum", False)
        sign = -1 if keyword == "minimum" else 1
        specified = {keyword: arg, **({f"exclusive{keyword.title()}": True} if exclusive else {})}

        def check(v: Any) -> list:
            if not _is_number(v):
                return []
            c = compare(v, arg) * sign   # > 0: past the bound
            if c > 0 or (exclusive and c == 0):
                return [{"operatorName": keyword, "specifiedAs": specified, "reason": "comparison failed",
                         "consideredValue": v}]
            return []
        return check
    return build


def _multiple_of(arg: Any, spec: dict) -> Check:
    _number(arg, "multipleOf")
    if compare(arg, 0) <= 0:
        raise error(FAILED_TO_PARSE, "$jsonSchema keyword 'multipleOf' must have a positive value")
    divisor = float(arg.to_decimal()) if isinstance(arg, Decimal128) else arg

    def check(v: Any) -> list:
        if not _is_number(v):
            return []
        x = float(v.to_decimal()) if isinstance(v, Decimal128) else v
        if math.isfinite(x) and math.fmod(x, divisor) == 0:
            return []
        return [{"operatorName": "multipleOf", "specifiedAs": {"multipleOf": arg},
                 "reason": "considered value is not a multiple of the specified value", "consideredValue": v}]
    return check


def _count_limit(keyword: str, kind: type, measure: Callable[[Any], int], reason: str,
                 field: str = "consideredValue") -> Callable[[Any, dict], Check]:
    def build(arg: Any, spec: dict) -> Check:
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg) or arg < 0 \
                or arg != int(arg):   # (int() of NaN or an infinity raises: refused first)
            raise error(FAILED_TO_PARSE, f"$jsonSchema keyword '{keyword}' must be a non-negative integer")
        limit, at_least = int(arg), keyword.startswith("min")

        def check(v: Any) -> list:
            if not isinstance(v, kind):
                return []
            n = measure(v)
            if (n >= limit) if at_least else (n <= limit):
                return []
            out = {"operatorName": keyword, "specifiedAs": {keyword: arg}, "reason": reason}
            out[field] = n if field == "numberOfProperties" else v
            return [out]
        return check
    return build


def _pattern(arg: Any, spec: dict) -> Check:
    if not isinstance(arg, str):
        raise error(TYPE_MISMATCH, "$jsonSchema keyword 'pattern' must be a string", "TypeMismatch")
    match = compile_field_operators("v", {"$regex": arg})
    return lambda v: [] if not isinstance(v, str) or match({"v": v}) else \
        [{"operatorName": "pattern", "specifiedAs": {"pattern": arg}, "reason": "regular expression did not match",
          "consideredValue": v}]


def _required(arg: Any, spec: dict) -> Check:
    if not isinstance(arg, list) or not arg or not all(isinstance(n, str) for n in arg):
        raise error(FAILED_TO_PARSE, "$jsonSchema keyword 'required' must be a non-empty array of strings")

    def check(v: Any) -> list:
        if not isinstance(v, dict):
            return []
        missing = [n for n in arg if n not in v]
        return [{"operatorName": "required", "specifiedAs": {"required": arg}, "missingProperties": missing}] \
            if missing else []
    return check


def _schemas(arg: Any, keyword: str) -> dict[str, Check]:
    if not isinstance(arg, dict):
        raise error(TYPE_MISMATCH, f"$jsonSchema keyword '{keyword}' must be an object", "TypeMismatch")
    return {name: compile_schema(sub) for name, sub in arg.items()}


def _properties(arg: Any, spec: dict) -> Check:
    props = _schemas(arg, "properties")

    def check(v: Any) -> list:
        if not isinstance(v, dict):
            return []
        failed = []
        for name, sub in props.items():
            if name in v and (details := sub(v[name])):
                entry = {"propertyName": name, "details": details}
                if isinstance(arg[name].get("description"), str):
                    entry["description"] = arg[name]["description"]
                    for d in details:
                        d.pop("description", None)
                failed.append(entry)
        return [{"operatorName": "properties", "propertiesNotSatisfied": failed}] if failed else []
    return check


def _pattern_properties(arg: Any, spec: dict) -> Check:
    subs = [(compile_field_operators("v", {"$regex": p}), p, s) for p, s in _schemas(arg, "patternProperties").items()]

    def check(v: Any) -> list:
        if not isinstance(v, dict):
            return []
        failed = []
        for match, pattern, sub in subs:
            for name, value in v.items():
                if match({"v": name}) and (details := sub(value)):
                    failed.append({"propertyName": name, "regex": pattern, "details": details})
        return [{"operatorName": "patternProperties", "propertiesNotSatisfied": failed}] if failed else []
    return check


def _additional_properties(arg: Any, spec: dict) -> Check:
    known = set(spec.get("properties") or {})
    patterns = [compile_field_operators("v", {"$regex": p}) for p in spec.get("patternProperties") or {}]
    if isinstance(arg, bool):
        sub = None
    else:
        sub = compile_schema(arg)

    def check(v: Any) -> list:
        if not isinstance(v, dict):
            return []
        extra = [n for n in v if n not in known and not any(m({"v": n}) for m in patterns)]
        if sub is None:
            return [] if arg or not extra else \
                [{"operatorName": "additionalProperties", "specifiedAs": {"additionalProperties": False},
                  "additionalProperties": extra}]
        failed = [{"propertyName": n, "details": d} for n in extra if (d := sub(v[n]))]
        return [{"operatorName": "additionalProperties", "propertiesNotSatisfied": failed}] if failed else []
    return check


def _items(arg: Any, spec: dict) -> Check:
    if isinstance(arg, list):
        subs = [compile_schema(s) for s in arg]
        more = spec.get("additionalItems", True)
        extra = None if isinstance(more, bool) else compile_schema(more)
    else:
        subs, extra, more = [], compile_schema(arg), True

    def check(v: Any) -> list:
        if not isinstance(v, list):
            return []
        for i, item in enumerate(v):
            sub = subs[i] if i < len(subs) else extra
            if sub is None:
                if i >= len(subs) and more is False:
                    return [{"operatorName": "additionalItems", "specifiedAs": {"additionalItems": False},
                             "reason": "found additional items", "additionalItems": v[len(subs):]}]
                continue
            if details := sub(item):
                return [{"operatorName": "items", "reason": "At least one item did not match the sub-schema",
                         "itemIndex": i, "details": details}]
        return []
    return check


def _unique_items(arg: Any, spec: dict) -> Check:
    if not isinstance(arg, bool):
        raise error(TYPE_MISMATCH, "$jsonSchema keyword 'uniqueItems' must be a boolean", "TypeMismatch")

    def check(v: Any) -> list:
        if not arg or not isinstance(v, list):
            return []
        seen = set()
        for item in v:
            k = repr(sort_key(item))
            if k in seen:
                return [{"operatorName": "uniqueItems", "specifiedAs": {"uniqueItems": True},
                         "reason": "found a duplicate item", "consideredValue": v, "duplicatedValue": item}]
            seen.add(k)
        return []
    return check


def _combinator(keyword: str) -> Callable[[Any, dict], Check]:
    def build(arg: Any, spec: dict) -> Check:
        if not isinstance(arg, list) or not arg:
            raise error(FAILED_TO_PARSE, f"$jsonSchema keyword '{keyword}' must be a non-empty array")
        subs = [compile_schema(s) for s in arg]

        def check(v: Any) -> list:
            results = [sub(v) for sub in subs]
            passed = sum(1 for r in results if not r)
            if keyword == "allOf" and passed == len(subs) or keyword == "anyOf" and passed or \
                    keyword == "oneOf" and passed == 1:
                return []
            if keyword == "oneOf" and passed > 1:
                return [{"operatorName": "oneOf", "specifiedAs": {"oneOf": arg},
                         "reason": "more than one subschema matched",
                         "matchingSchemaIndexes": [i for i, r in enumerate(results) if not r]}]
            return [{"operatorName": keyword, "schemasNotSatisfied": [
                {"index": i, "details": r} for i, r in enumerate(results) if r]}]
        return check
    return build


def _not(arg: Any, spec: dict) -> Check:
    sub = compile_schema(arg)
    return lambda v: [{"operatorName": "not", "specifiedAs": {"not": arg}, "reason": "child expression matched"}] \
        if not sub(v) else []


def _dependencies(arg: Any, spec: dict) -> Check:
    if not isinstance(arg, dict):
        raise error(TYPE_MISMATCH, "$jsonSchema keyword 'dependencies' must be an object", "TypeMismatch")
    deps = {name: (dep if isinstance(dep, list) else compile_schema(dep)) for name, dep in arg.items()}

    def check(v: Any) -> list:
        if not isinstance(v, dict):
            return []
        failed = []
        for name, dep in deps.items():
            if name not in v:
                continue
            if isinstance(dep, list):
                missing = [n for n in dep if n not in v]
                if missing:
                    failed.append({"conditionalProperty": name, "missingProperties": missing})
            elif details := dep(v):
                failed.append({"conditionalProperty": name, "details": details})
        return [{"operatorName": "dependencies", "failingDependencies": failed}] if failed else []
    return check


_KEYWORDS: dict[str, Callable[[Any, dict], Check]] = {
    "bsonType": _bson_type,
    "type": _json_type,
    "enum": _enum,
    "minimum": _bound("minimum"),
    "maximum": _bound("maximum"),
    "multipleOf": _multiple_of,
    "minLength": _count_limit("minLength", str, len, "specified string length was not satisfied"),
    "maxLength": _count_limit("maxLength", str, len, "specified string length was not satisfied"),
    "minItems": _count_limit("minItems", list, len, "array did not match specified length"),
    "maxItems": _count_limit("maxItems", list, len, "array did not match specified length"),
    "minProperties": _count_limit("minProperties", dict, len, "specified number of properties was not satisfied",
                                  "numberOfProperties"),
    "maxProperties": _count_limit("maxProperties", dict, len, "specified number of properties was not satisfied",
                                  "numberOfProperties"),
    "pattern": _pattern,
    "required": _required,
    "properties": _properties,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "items": _items,
    "uniqueItems": _unique_items,
    "allOf": _combinator("allOf"),
    "anyOf": _combinator("anyOf"),
    "oneOf": _combinator("oneOf"),
    "not": _not,
    "dependencies": _dependencies,
}
