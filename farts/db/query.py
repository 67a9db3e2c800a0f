"""MongoDB query filters compiled to Python predicates.

`compile_filter` parses a filter once and returns `match(doc) -> bool`; every operator it
does not implement raises MongoError naming it, so a query never silently returns a wrong
answer. Path semantics follow MongoDB's matcher:

- a dotted path walks sub-documents; where it meets an array it continues into every
  element that is a document (and, for a numeric component, into that array position);
- at the end of the path an array value matches if the array itself or any element does
  (except for $size and $elemMatch, which look at the array itself);
- comparisons only match values of the same type bracket ({$gt: 1} never matches "a");
- null matches null and missing; $ne, $nin and $not negate the whole path predicate.
"""
from __future__ import annotations

import datetime
import math
import operator
import re
import uuid
from collections.abc import Callable
from typing import Any

from bson.code import Code
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from farts.db import regex
from farts.db.errors import BAD_VALUE, error
from farts.db.ordering import (
    MISSING,
    RANK_NULL,
    is_nan,
    number_value,
    regex_flags,
    sort_key,
    type_rank,
    values_equal,
)

Predicate = Callable[[Any], bool]

_LOGICAL = ("$and", "$or", "$nor")
_UNSUPPORTED_TOP = ("$where", "$text", "$sampleRate")
_UNSUPPORTED_FIELD = ("$geoWithin", "$geoIntersects", "$near", "$nearSphere", "$bitsAllSet",
                      "$bitsAllClear", "$bitsAnySet", "$bitsAnyClear", "$jsonSchema", "$within")


def compile_filter(filter: dict | None) -> Predicate:
    """A predicate over documents equivalent to the MongoDB filter."""
    if filter is None:
        return _always
    if not isinstance(filter, dict):
        raise error(BAD_VALUE, f"query filter must be an object, not {type(filter).__name__}")
    clauses = [_compile_clause(name, value) for name, value in filter.items()]
    if not clauses:
        return _always
    if len(clauses) == 1:
        return clauses[0]
    if len(clauses) == 2:
        first, second = clauses
        return lambda doc: first(doc) and second(doc)

    def match_all(doc: Any) -> bool:
        for clause in clauses:
            if not clause(doc):
                return False
        return True
    return match_all


def _always(doc: Any) -> bool:
    return True


def is_operator_document(value: Any) -> bool:
    """A field's value like {$gt: 1}: a document whose first key starts with '$'."""
    if not isinstance(value, dict) or not value:
        return False
    first = next(iter(value))
    return isinstance(first, str) and first.startswith("$")


def _compile_clause(name: str, value: Any) -> Predicate:
    if not isinstance(name, str):
        raise error(BAD_VALUE, f"field names must be strings, not {name!r}")
    if name.startswith("$"):
        return _compile_top_operator(name, value)
    if not name or "" in name.split("."):
        raise error(BAD_VALUE, f"invalid empty field name in path {name!r}")
    if is_operator_document(value):
        return compile_field_operators(name, value)
    if _is_regex(value):
        return _path_any(name, _regex_test(value), expand_arrays=True)
    return _path_any(name, _equality_test(value), expand_arrays=True)


def _compile_top_operator(name: str, value: Any) -> Predicate:
    if name in _LOGICAL:
        if not isinstance(value, list) or not value:
            raise error(BAD_VALUE, f"{name} must be a nonempty array")
        for entry in value:
            if not isinstance(entry, dict):
                raise error(BAD_VALUE, "$or/$and/$nor entries need to be full objects")
        subs = [compile_filter(entry) for entry in value]
        if name == "$and":
            return lambda doc: all(sub(doc) for sub in subs)

        def any_matches(doc: Any) -> bool:
            for sub in subs:
                if sub(doc):
                    return True
            return False
        if name == "$or":
            return any_matches
        return lambda doc: not any_matches(doc)
    if name == "$comment":
        return _always
    if name == "$expr":
        # Imported here: aggregate imports this module for its $match stage.
        from farts.db.aggregate import evaluate, expression_truthy, validate_expression
        validate_expression(value)
        return lambda doc: expression_truthy(evaluate(value, doc))
    if name == "$jsonSchema":
        # Imported here: validation imports this module for its query-operator clauses.
        from farts.db.validation import schema_predicate
        return schema_predicate(value)
    if name in _UNSUPPORTED_TOP:
        raise error(BAD_VALUE, f"{name} is not supported by this server")
    raise error(BAD_VALUE, f"unknown top level operator: {name}")


# --- paths -----------------------------------------------------------------------------------

def _walk(value: Any, parts: list[str], i: int, out: list) -> None:
    """Collect the values `parts[i:]` reaches from `value` (MISSING where the path stops)."""
    while i < len(parts):
        part = parts[i]
        if isinstance(value, dict):
            value = value.get(part, MISSING)
            i += 1
            continue
        if isinstance(value, list):
            if part.isdigit():
                index = int(part)
                if index < len(value):
                    _walk(value[index], parts, i + 1, out)
            for element in value:
                if isinstance(element, dict):
                    _walk(element, parts, i, out)
            return
        out.append(MISSING)
        return
    out.append(value)


def path_values(doc: Any, path: str) -> list:
    """Every value a query path reaches in doc (MISSING for a path that stops short)."""
    if "." not in path:
        return [doc.get(path, MISSING)] if isinstance(doc, dict) else [MISSING]
    out: list = []
    _walk(doc, path.split("."), 0, out)
    return out


def _path_any(path: str, test: Predicate, expand_arrays: bool) -> Predicate:
    """Matches when some value at the path (or, with expand_arrays, an element of it) passes."""
    if "." not in path:
        if expand_arrays:
            def match_field(doc: dict) -> bool:
                value = doc.get(path, MISSING)
                if test(value):
                    return True
                if type(value) is list:
                    for element in value:
                        if test(element):
                            return True
                return False
            return match_field
        return lambda doc: test(doc.get(path, MISSING))
    parts = path.split(".")

    def match_path(doc: dict) -> bool:
        value = doc
        for part in parts:
            if type(value) is not dict:
                break
            value = value.get(part, MISSING)
        else:  # only documents on the way: one value
            if test(value):
                return True
            if expand_arrays and type(value) is list:
                for element in value:
                    if test(element):
                        return True
            return False
        found: list = []
        _walk(doc, parts, 0, found)
        for value in found:
            if test(value):
                return True
            if expand_arrays and type(value) is list and any(test(e) for e in value):
                return True
        return False
    return match_path


# --- single-value tests ----------------------------------------------------------------------

def _is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, re.Pattern))


def _equality_test(target: Any) -> Predicate:
    if target is None:
        return lambda v: v is None or v is MISSING
    if isinstance(target, (MinKey, MaxKey)):
        rank = type_rank(target)
        return lambda v: type_rank(v) == rank
    if is_nan(target):
        return is_nan
    t = type(target)
    if t is bool:
        return lambda v: v is target
    if t is ObjectId:
        return lambda v: type(v) is ObjectId and v == target
    if t is str:
        return lambda v: type(v) is str and v == target
    if t is int or t is float:
        # bool is an int in Python but a different BSON type.
        return lambda v: (type(v) is int or type(v) is float or type(v) is Int64) and v == target \
            or (type(v) is Decimal128 and values_equal(v, target))
    rank, key = type_rank(target), sort_key(target)
    return lambda v: v is not MISSING and type_rank(v) == rank and sort_key(v) == key


_COMPARATORS = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _comparison_test(op: str, target: Any) -> Predicate:
    compare = _COMPARATORS[op]
    if isinstance(target, (MinKey, MaxKey)):
        # MinKey and MaxKey compare across all brackets.
        key = sort_key(target)
        return lambda v: v is not MISSING and compare(sort_key(v), key)
    rank = type_rank(target)
    if is_nan(target):
        return (lambda v: is_nan(v)) if op in ("$gte", "$lte") else (lambda v: False)
    if rank == RANK_NULL:
        return (lambda v: v is None or v is MISSING) if op in ("$gte", "$lte") else (lambda v: False)
    key = sort_key(target)
    if type(target) in (int, float, Int64):
        def number_test(v: Any) -> bool:
            t = type(v)
            if t is int or t is float or t is Int64:
                return v == v and compare(v, target)  # v != v: NaN is outside every range
            return t is Decimal128 and not is_nan(v) and compare(sort_key(v), key)
        return number_test
    if type(target) is str:
        return lambda v: type(v) is str and compare(v, target)

    def test(v: Any) -> bool:
        if type_rank(v) != rank or is_nan(v):
            return False
        return compare(sort_key(v), key)
    return test


def _regex_test(value: Any, options: str | None = None) -> Predicate:
    if isinstance(value, str):
        pattern, flags = value, ""
    elif _is_regex(value):
        pattern, flags = value.pattern, regex_flags(value)
    else:
        raise error(BAD_VALUE, "$regex has to be a string")
    if isinstance(pattern, bytes):
        pattern = pattern.decode()
    if options is not None:
        if not isinstance(options, str):
            raise error(BAD_VALUE, "$options has to be a string")
        flags = "".join(sorted(set(flags) | set(options)))
    compiled = regex.compile(pattern, flags)   # linear time, or refused (farts/db/regex.py)

    def test(v: Any) -> bool:
        if isinstance(v, str) and not isinstance(v, Code):
            return compiled.search(v) is not None
        if _is_regex(v):
            return v.pattern == pattern and regex_flags(v) == flags
        return False
    return test


def _in_test(op: str, targets: Any) -> Predicate:
    if not isinstance(targets, list):
        raise error(BAD_VALUE, f"{op} needs an array")
    strings: set[str] = set()
    numbers: set = set()
    tests = []
    for target in targets:
        if is_operator_document(target):
            raise error(BAD_VALUE, f"cannot nest $ under {op}")
        t = type(target)
        # Plain strings and numbers go into sets (1 and 1.0 hash alike, as they compare).
        if t is str:
            strings.add(target)
        elif (t is int or t is float or t is Int64) and target == target:
            numbers.add(target)
        else:
            tests.append(_regex_test(target) if _is_regex(target) else _equality_test(target))

    def test(v: Any) -> bool:
        t = type(v)
        if t is str:
            if v in strings:
                return True
        elif t is int or t is float or t is Int64:
            if v in numbers:
                return True
        for other in tests:
            if other(v):
                return True
        return False
    return test


_TYPE_ALIASES = {"double": 1, "string": 2, "object": 3, "array": 4, "binData": 5,
                 "undefined": 6, "objectId": 7, "bool": 8, "date": 9, "null": 10, "regex": 11,
                 "dbPointer": 12, "javascript": 13, "symbol": 14, "javascriptWithScope": 15,
                 "int": 16, "timestamp": 17, "long": 18, "decimal": 19, "minKey": -1,
                 "maxKey": 127}
_NUMBER_TYPES = frozenset({1, 16, 18, 19})


def bson_type_number(v: Any) -> int | None:
    """The BSON type number the value is stored as (None for a missing value)."""
    if v is MISSING:
        return None
    t = type(v)
    if t is bool:
        return 8
    if t is Int64:
        return 18
    if isinstance(v, int) and not isinstance(v, bool):
        return 16 if -2**31 <= v < 2**31 else 18
    if isinstance(v, float):
        return 1
    if isinstance(v, Code):
        return 15 if v.scope is not None else 13
    if isinstance(v, str):
        return 2
    if isinstance(v, (dict, DBRef)):
        return 3
    if isinstance(v, list):
        return 4
    if isinstance(v, (bytes, bytearray, uuid.UUID)):
        return 5
    if isinstance(v, ObjectId):
        return 7
    if v is None:
        return 10
    if _is_regex(v):
        return 11
    if isinstance(v, Decimal128):
        return 19
    if isinstance(v, Timestamp):
        return 17
    if isinstance(v, MinKey):
        return -1
    if isinstance(v, MaxKey):
        return 127
    if isinstance(v, datetime.datetime):
        return 9
    return None


def _type_test(spec: Any) -> Predicate:
    wanted: set[int] = set()
    for item in spec if isinstance(spec, list) else [spec]:
        if isinstance(item, str):
            if item == "number":
                wanted |= _NUMBER_TYPES
            elif item in _TYPE_ALIASES:
                wanted.add(_TYPE_ALIASES[item])
            else:
                raise error(BAD_VALUE, f"Unknown type name alias: {item}")
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            if item != int(item) or int(item) not in _TYPE_ALIASES.values():
                raise error(BAD_VALUE, f"Invalid numerical type code: {item}")
            wanted.add(int(item))
        else:
            raise error(BAD_VALUE, "type must be represented as a number or a string")
    return lambda v: bson_type_number(v) in wanted


def _size_test(n: Any) -> Predicate:
    if isinstance(n, bool) or not isinstance(n, (int, float, Decimal128)):
        raise error(BAD_VALUE, "$size needs a number")
    n = number_value(n)
    if n != n or math.isinf(n) or n != int(n):
        raise error(BAD_VALUE, "$size must be a whole number")
    if n < 0:
        raise error(BAD_VALUE, "$size may not be negative")
    size = int(n)
    return lambda v: type(v) is list and len(v) == size


def _mod_test(spec: Any) -> Predicate:
    if not isinstance(spec, list):
        raise error(BAD_VALUE, "malformed mod, needs to be an array")
    if len(spec) < 2:
        raise error(BAD_VALUE, "malformed mod, not enough elements")
    if len(spec) > 2:
        raise error(BAD_VALUE, "malformed mod, too many elements")
    for part in spec:
        if isinstance(part, bool) or not isinstance(part, (int, float, Decimal128)):
            raise error(BAD_VALUE, "malformed mod, divisor and remainder must be numbers")
    divisor, remainder = (int(number_value(x)) for x in spec)
    if divisor == 0:
        raise error(BAD_VALUE, "divisor cannot be 0")

    def test(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float, Decimal128)):
            return False
        x = number_value(v)
        if x != x or (isinstance(x, float) and math.isinf(x)):
            return False
        # C++ % truncates toward zero, so the remainder takes the sign of the dividend.
        return int(math.fmod(int(x), divisor)) == remainder
    return test


def _elem_match_test(spec: Any) -> Predicate:
    if not isinstance(spec, dict):
        raise error(BAD_VALUE, "$elemMatch needs an Object")
    if is_operator_document(spec) and next(iter(spec)) not in _LOGICAL:
        element_test = _compile_value_operators(spec)
    else:
        inner = compile_filter(spec)

        def element_test(e: Any) -> bool:
            return isinstance(e, dict) and inner(e)
    return lambda v: type(v) is list and any(element_test(e) for e in v)


# --- operator documents ----------------------------------------------------------------------

class _Op:
    """One compiled field operator: a value test, whether it negates, whether arrays expand."""

    __slots__ = ("test", "negate", "expand", "inner")

    def __init__(self, test: Predicate | None, negate: bool = False, expand: bool = True,
                 inner: list[_Op] | None = None):
        self.test = test
        self.negate = negate
        self.expand = expand
        self.inner = inner  # the operators under $not / $all


def _parse_operators(ops: dict) -> list[_Op]:
    parsed: list[_Op] = []
    options = ops.get("$options")
    if options is not None and "$regex" not in ops:
        raise error(BAD_VALUE, "$options needs a $regex")
    for op, arg in ops.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise error(BAD_VALUE, f"unknown operator: {op}")
        if op == "$eq":
            parsed.append(_Op(_regex_equality_test(arg) if _is_regex(arg) else _equality_test(arg)))
        elif op == "$ne":
            parsed.append(_Op(_regex_equality_test(arg) if _is_regex(arg) else _equality_test(arg),
                              negate=True))
        elif op in _COMPARATORS:
            parsed.append(_Op(_comparison_test(op, arg)))
        elif op == "$in":
            parsed.append(_Op(_in_test(op, arg)))
        elif op == "$nin":
            parsed.append(_Op(_in_test(op, arg), negate=True))
        elif op == "$exists":
            parsed.append(_Op(lambda v: v is not MISSING, negate=not _truthy(arg), expand=False))
        elif op == "$regex":
            parsed.append(_Op(_regex_test(arg, options)))
        elif op == "$options":
            continue
        elif op == "$type":
            parsed.append(_Op(_type_test(arg)))
        elif op == "$size":
            parsed.append(_Op(_size_test(arg), expand=False))
        elif op == "$elemMatch":
            parsed.append(_Op(_elem_match_test(arg), expand=False))
        elif op == "$mod":
            parsed.append(_Op(_mod_test(arg)))
        elif op == "$all":
            parsed.append(_Op(None, inner=_parse_all(arg)))
        elif op == "$not":
            if _is_regex(arg):
                inner = [_Op(_regex_test(arg))]
            elif isinstance(arg, dict):
                if not arg:
                    raise error(BAD_VALUE, "$not cannot be empty")
                if not is_operator_document(arg):
                    raise error(BAD_VALUE, f"unknown operator: {next(iter(arg))}")
                inner = _parse_operators(arg)
            else:
                raise error(BAD_VALUE, "$not needs a regex or a document")
            parsed.append(_Op(None, negate=True, inner=inner))
        elif op in _UNSUPPORTED_FIELD:
            raise error(BAD_VALUE, f"{op} is not supported by this server")
        else:
            raise error(BAD_VALUE, f"unknown operator: {op}")
    return parsed


def _regex_equality_test(target: Any) -> Predicate:
    # {$eq: /x/} compares regex values; it does not run the pattern.
    pattern, flags = target.pattern, regex_flags(target)
    return lambda v: _is_regex(v) and v.pattern == pattern and regex_flags(v) == flags


def _parse_all(targets: Any) -> list[_Op]:
    if not isinstance(targets, list):
        raise error(BAD_VALUE, "$all needs an array")
    if not targets:
        return [_Op(lambda v: False)]
    ops = []
    for target in targets:
        if isinstance(target, dict) and next(iter(target), None) == "$elemMatch":
            if len(target) != 1:
                raise error(BAD_VALUE, "$all/$elemMatch has to be consistent")
            ops.append(_Op(_elem_match_test(target["$elemMatch"]), expand=False))
        elif is_operator_document(target):
            raise error(BAD_VALUE, "no $ expressions in $all")
        else:
            ops.append(_Op(_regex_test(target) if _is_regex(target) else _equality_test(target)))
    return ops


def _truthy(arg: Any) -> bool:
    if isinstance(arg, Decimal128):
        return number_value(arg) != 0
    return bool(arg)


def _op_on_path(path: str, op: _Op) -> Predicate:
    if op.inner is not None:
        subs = [_op_on_path(path, inner) for inner in op.inner]
        both = lambda doc: all(sub(doc) for sub in subs)  # noqa: E731
    else:
        both = _path_any(path, op.test, op.expand)
    if op.negate:
        return lambda doc: not both(doc)
    return both


def _op_on_value(op: _Op) -> Predicate:
    if op.inner is not None:
        subs = [_op_on_value(inner) for inner in op.inner]
        test = lambda v: all(sub(v) for sub in subs)  # noqa: E731
    else:
        test = op.test
    if op.negate:
        return lambda v: not test(v)
    return test


def compile_field_operators(path: str, ops: dict) -> Predicate:
    preds = [_op_on_path(path, op) for op in _parse_operators(ops)]
    if len(preds) == 1:
        return preds[0]
    return lambda doc: all(pred(doc) for pred in preds)


def _compile_value_operators(ops: dict) -> Predicate:
    """Operators applied to one value (the elements under $elemMatch), arrays not expanded."""
    tests = [_op_on_value(op) for op in _parse_operators(ops)]
    return lambda v: all(test(v) for test in tests)


# --- equality fields (index choice, upsert seed) ---------------------------------------------

def equality_pairs(filter: dict | None) -> list[tuple[str, Any]]:
    """(path, value) for each plain equality condition at the top level or under $and."""
    pairs: list[tuple[str, Any]] = []
    for name, value in (filter or {}).items():
        if name == "$and" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    pairs.extend(equality_pairs(entry))
        elif name.startswith("$"):
            continue
        elif is_operator_document(value):
            if "$eq" in value and not _is_regex(value["$eq"]):
                pairs.append((name, value["$eq"]))
        elif not _is_regex(value):
            pairs.append((name, value))
    return pairs


def equality_fields(filter: dict | None) -> dict:
    """Top-level field → value for the filter's plain equality conditions (first one wins).

    A field that holds an array also matches an equality on one of its elements, so an
    index lookup on these values must index array elements (multikey) to find every match.
    """
    fields: dict = {}
    for name, value in equality_pairs(filter):
        fields.setdefault(name, value)
    return fields
