"""Aggregation pipelines over an iterable of documents, and the expressions they use.

Stages: $match $sort $skip $limit $project $addFields/$set $unset $group $count $unwind
$replaceRoot/$replaceWith $sortByCount $facet $documents. Anything else raises MongoError
40324 (unknown stage) or names the stage as unsupported ($lookup, ... need the store, not
this engine). $out and $merge write, so the command runs them (farts.db.output) after the
pipeline: here they are refused anywhere but last (the command takes the last one off).
"""
from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId

from farts.db.errors import BAD_VALUE, INVALID_PIPELINE_OPERATOR, error
from farts.db.ordering import MISSING, compare, sort_documents, sort_key, values_equal
from farts.db.projection import compile_projection
from farts.db.query import bson_type_number, compile_filter

_UNSUPPORTED_STAGES = ("$lookup", "$graphLookup", "$bucket",
                       "$bucketAuto", "$geoNear", "$sample", "$unionWith", "$densify", "$fill",
                       "$setWindowFields", "$redact", "$collStats", "$indexStats",
                       "$currentOp", "$listSessions", "$planCacheStats", "$search",
                       "$changeStream")


def run_pipeline(docs: Iterable[dict], pipeline: list[dict], collation: Any = None) -> list[dict]:
    """The documents the pipeline outputs. collation (farts.db.collation.Collation): how
    $match, $sort and $group compare strings (None: binary)."""
    if not isinstance(pipeline, list):
        raise error(14, "'pipeline' option must be specified as an array", "TypeMismatch")
    stream: Iterable[dict] = docs
    for stage in pipeline:
        stream = _compile_stage(stage, collation)(stream)
    return list(stream)


Stage = Callable[[Iterable[dict]], Iterable[dict]]


def _compile_stage(stage: Any, collation: Any = None) -> Stage:
    if not isinstance(stage, dict) or len(stage) != 1:
        raise error(40323, "A pipeline stage specification object must contain exactly one field.")
    name, arg = next(iter(stage.items()))
    if collation is not None and name in _COLLATED_STAGES:
        return _COLLATED_STAGES[name](arg, collation)
    if name in _STAGES:
        return _STAGES[name](arg)
    if name in ("$out", "$merge"):
        raise error(40601, f"{name} can only be the final stage in the pipeline")
    if name in _UNSUPPORTED_STAGES:
        raise error(BAD_VALUE, f"pipeline stage {name} is not supported by this server")
    raise error(40324, f"Unrecognized pipeline stage name: '{name}'")


def _stage_match(arg: Any, collation: Any = None) -> Stage:
    if not isinstance(arg, dict):
        raise error(15959, "the match filter must be an expression in an object")
    match = collation.matcher(arg) if collation is not None else compile_filter(arg)
    return lambda docs: (d for d in docs if match(d))


def _stage_sort(arg: Any, collation: Any = None) -> Stage:
    if not isinstance(arg, dict):
        raise error(15973, "the $sort key specification must be an object")
    if not arg:
        raise error(15976, "$sort stage must have at least one sort key")
    sort_documents([], arg)  # validates the specification now, not at the first document
    collate = collation.value if collation is not None else None
    return lambda docs: sort_documents(docs, arg, collate)


def _non_negative_int(arg: Any, code: int, message: str) -> int:
    if isinstance(arg, bool) or not isinstance(arg, (int, float, Decimal128)):
        raise error(code, message)
    value = arg.to_decimal() if isinstance(arg, Decimal128) else arg
    if value != value or value != int(value) or value < 0:
        raise error(code, message)
    return int(value)


def _stage_skip(arg: Any) -> Stage:
    n = _non_negative_int(arg, 15956, f"Argument to $skip cannot be negative or non-integral: {arg!r}")
    return lambda docs: itertools.islice(docs, n, None)


def _stage_limit(arg: Any) -> Stage:
    n = _non_negative_int(arg, 15958, f"the limit must be positive: {arg!r}")
    if n == 0:
        raise error(15958, "the limit must be positive")
    return lambda docs: itertools.islice(docs, n)


def _stage_project(arg: Any) -> Stage:
    if not isinstance(arg, dict):
        raise error(15969, "$project specification must be an object")
    apply = compile_projection(arg, in_pipeline=True, evaluate=evaluate)
    return lambda docs: (apply(d) for d in docs)


def _stage_add_fields(arg: Any) -> Stage:
    if not isinstance(arg, dict):
        raise error(40272, "$addFields specification stage must be an object")
    fields = list(arg.items())
    for name, _ in fields:
        if not isinstance(name, str) or not name or name.startswith("$") or "" in name.split("."):
            raise error(16410, f"FieldPath field names may not start with '$' or be empty: {name!r}")

    def add(doc: dict) -> dict:
        out = dict(doc)
        for name, expr in fields:
            _set_field(out, name.split("."), evaluate(expr, doc))
        return out
    return lambda docs: (add(d) for d in docs)


def _set_field(doc: dict, parts: list[str], value: Any) -> None:
    head = parts[0]
    if len(parts) == 1:
        if value is MISSING:
            doc.pop(head, None)
        else:
            doc[head] = value
        return
    current = doc.get(head)
    if isinstance(current, list):
        # $addFields {"a.b": x} on an array sets b in each document of a.
        new_list = []
        for element in current:
            if isinstance(element, dict):
                element = dict(element)
                _set_field(element, parts[1:], value)
            new_list.append(element)
        doc[head] = new_list
        return
    sub = dict(current) if isinstance(current, dict) else {}
    _set_field(sub, parts[1:], value)
    doc[head] = sub


def _stage_unset(arg: Any) -> Stage:
    names = [arg] if isinstance(arg, str) else arg
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise error(31002, "$unset specification must be a string or an array of strings")
    apply = compile_projection({n: 0 for n in names}, in_pipeline=True, evaluate=evaluate)
    return lambda docs: (apply(d) for d in docs)


def _stage_count(arg: Any) -> Stage:
    if not isinstance(arg, str) or not arg:
        raise error(40156, "the count field must be a non-empty string")
    if arg.startswith("$"):
        raise error(40158, "the count field cannot be a $-prefixed path")
    if "." in arg:
        raise error(40160, "the count field cannot contain '.'")

    def count(docs: Iterable[dict]) -> Iterator[dict]:
        n = sum(1 for _ in docs)
        if n:
            yield {arg: n}
    return count


def _stage_unwind(arg: Any) -> Stage:
    if isinstance(arg, str):
        arg = {"path": arg}
    if not isinstance(arg, dict):
        raise error(15981, "expected either a string or an object as specification for $unwind "
                           f"stage, got {type(arg).__name__}")
    for key in arg:
        if key not in ("path", "includeArrayIndex", "preserveNullAndEmptyArrays"):
            raise error(28811, f"unrecognized option to $unwind stage: {key}")
    path = arg.get("path")
    if not isinstance(path, str):
        raise error(28812, "no path specified to $unwind stage")
    if not path.startswith("$"):
        raise error(28818, f"path option to $unwind stage should be prefixed with a '$': {path}")
    parts = path[1:].split(".")
    preserve = arg.get("preserveNullAndEmptyArrays", False)
    if not isinstance(preserve, bool):
        raise error(28809, "expected a boolean for the preserveNullAndEmptyArrays option to "
                           "$unwind stage")
    index_field = arg.get("includeArrayIndex")
    if index_field is not None and (not isinstance(index_field, str) or not index_field or
                                    index_field.startswith("$")):
        raise error(28822, "includeArrayIndex option to $unwind stage should be a non-empty "
                           "string without a '$' prefix")

    def unwind(docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            value = field_path(doc, parts)
            if isinstance(value, list) and value:
                for i, element in enumerate(value):
                    out = _with(doc, parts, element)
                    if index_field:
                        _set_field(out, index_field.split("."), i)
                    yield out
            elif isinstance(value, list) or value is None or value is MISSING:
                if preserve:
                    out = _with(doc, parts, MISSING) if isinstance(value, list) else dict(doc)
                    if index_field:
                        _set_field(out, index_field.split("."), None)
                    yield out
            else:
                out = dict(doc)
                if index_field:
                    _set_field(out, index_field.split("."), None)
                yield out
    return unwind


def _with(doc: dict, parts: list[str], value: Any) -> dict:
    out = dict(doc)
    _set_field(out, parts, value)
    return out


def _stage_replace_root(arg: Any, key: str = "newRoot") -> Stage:
    expr = arg.get(key) if key and isinstance(arg, dict) else arg
    if key and not (isinstance(arg, dict) and set(arg) == {key}):
        raise error(40231, f"no newRoot specified for the $replaceRoot stage: {arg!r}")

    def replace(doc: dict) -> dict:
        new = evaluate(expr, doc)
        if not isinstance(new, dict):
            raise error(40228, "'newRoot' expression must evaluate to an object, but resulting "
                               f"value was: {new!r}")
        return new
    return lambda docs: (replace(d) for d in docs)


def _stage_facet(arg: Any, collation: Any = None) -> Stage:
    if not isinstance(arg, dict) or not arg:
        raise error(40169, "the $facet specification must be a non-empty object")
    facets = {}
    for name, stages in arg.items():
        if not isinstance(stages, list) or not stages:
            raise error(40170, f"arguments to $facet must be non-empty arrays, {name!r} is not")
        for stage in stages:
            if isinstance(stage, dict) and set(stage) & {"$facet", "$out", "$merge"}:
                raise error(40600, f"{next(iter(stage))} is not allowed inside a $facet stage")
        facets[name] = [_compile_stage(stage, collation) for stage in stages]

    def facet(docs: Iterable[dict]) -> Iterator[dict]:
        docs = list(docs)
        out = {}
        for name, stages in facets.items():
            stream: Iterable[dict] = docs
            for stage in stages:
                stream = stage(stream)
            out[name] = list(stream)
        yield out
    return facet


def _stage_documents(arg: Any) -> Stage:
    """{aggregate: 1} with $documents first: the documents of the expression, not a collection's."""
    validate_expression(arg)

    def documents(docs: Iterable[dict]) -> Iterator[dict]:
        value = evaluate(arg, {})
        if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
            raise error(5858203, "error during $documents: an array of objects is expected")
        return iter(value)
    return documents


def _stage_sort_by_count(arg: Any, collation: Any = None) -> Stage:
    group = _stage_group({"_id": arg, "count": {"$sum": 1}}, collation)
    sort = _stage_sort({"count": -1})
    return lambda docs: sort(group(docs))


# --- $group ----------------------------------------------------------------------------------

class _Accumulator:
    __slots__ = ("name", "op", "expr")

    def __init__(self, name: str, op: str, expr: Any):
        self.name, self.op, self.expr = name, op, expr


_ACCUMULATORS = ("$sum", "$count", "$min", "$max", "$avg", "$first", "$last", "$push",
                 "$addToSet")


def _stage_group(arg: Any, collation: Any = None) -> Stage:
    if not isinstance(arg, dict):
        raise error(15947, "a group's fields must be specified in an object")
    if "_id" not in arg:
        raise error(15955, "a group specification must include an _id")
    accumulators = []
    for name, spec in arg.items():
        if name == "_id":
            continue
        if "." in name:
            raise error(40235, f"The field name '{name}' cannot contain '.'")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise error(40234, f"The field '{name}' must be an accumulator object")
        op, expr = next(iter(spec.items()))
        if op not in _ACCUMULATORS:
            raise error(15952, f"unknown group operator '{op}'")
        if op == "$count" and expr != {}:
            raise error(BAD_VALUE, "$count takes no arguments, i.e. $count:{}")
        accumulators.append(_Accumulator(name, op, expr))
    id_expr = arg["_id"]
    collate = collation.value if collation is not None else None

    def group(docs: Iterable[dict]) -> Iterator[dict]:
        groups: dict[tuple, tuple[Any, list[list]]] = {}
        for doc in docs:
            key = evaluate(id_expr, doc)
            if key is MISSING:
                key = None
            group_key = sort_key(collate(key) if collate else key)
            slot = groups.get(group_key)
            if slot is None:
                slot = groups[group_key] = (key, [[] for _ in accumulators])
            for acc, values in zip(accumulators, slot[1], strict=True):
                values.append(MISSING if acc.op == "$count" else evaluate(acc.expr, doc))
        for key, values_per_acc in groups.values():
            out = {"_id": key}
            for acc, values in zip(accumulators, values_per_acc, strict=True):
                out[acc.name] = _accumulate(acc.op, values)
            yield out
    return group


def _accumulate(op: str, values: list) -> Any:
    if op == "$count":
        return len(values)
    if op == "$sum":
        return _sum(v for v in values if _is_number(v))
    if op == "$avg":
        numbers = [v for v in values if _is_number(v)]
        if not numbers:
            return None
        total = _sum(numbers)
        if isinstance(total, Decimal128):
            return Decimal128(total.to_decimal() / len(numbers))
        return float(total) / len(numbers)
    if op in ("$min", "$max"):
        present = [v for v in values if v is not MISSING and v is not None]
        if not present:
            return None
        best = present[0]
        for v in present[1:]:
            if compare(v, best) == (-1 if op == "$min" else 1):
                best = v
        return best
    if op == "$first":
        return None if not values or values[0] is MISSING else values[0]
    if op == "$last":
        return None if not values or values[-1] is MISSING else values[-1]
    if op == "$push":
        return [v for v in values if v is not MISSING]
    unique: list = []
    for v in values:
        if v is not MISSING and not any(values_equal(v, u) for u in unique):
            unique.append(v)
    return unique


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal128)) and not isinstance(v, bool)


def _sum(numbers: Iterable[Any]) -> Any:
    """MongoDB's $sum widening: int → long → double → decimal, whichever the inputs need."""
    numbers = list(numbers)
    if any(isinstance(v, Decimal128) for v in numbers):
        return Decimal128(str(sum(_as_decimal(v) for v in numbers)))
    if any(isinstance(v, float) for v in numbers):
        return math.fsum(numbers)  # mongod sums doubles with extra precision too
    total = sum(numbers)
    if not -2**63 <= total < 2**63:
        return float(total)
    return Int64(total) if any(isinstance(v, Int64) for v in numbers) else total


def _as_decimal(v: Any) -> Decimal:
    if isinstance(v, Decimal128):
        return v.to_decimal()
    return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)


# --- expressions -----------------------------------------------------------------------------

def field_path(doc: Any, parts: list[str]) -> Any:
    """"$a.b" as aggregation reads it: through arrays it collects the values of each element."""
    value = doc
    for i, part in enumerate(parts):
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list):
            collected = []
            for element in value:
                if isinstance(element, (dict, list)):
                    found = field_path(element, parts[i:])
                    if found is not MISSING:
                        collected.append(found)
            return collected
        else:
            return MISSING
    return value


def evaluate(expr: Any, doc: dict) -> Any:
    """The value of an aggregation expression for one document (MISSING when it has none)."""
    if isinstance(expr, str):
        if expr.startswith("$$"):
            name, _, rest = expr[2:].partition(".")
            if name in ("ROOT", "CURRENT"):
                return field_path(doc, rest.split(".")) if rest else doc
            if name == "REMOVE":
                return MISSING
            raise error(17276, f"Use of undefined variable: {name}")
        if expr.startswith("$"):
            if len(expr) == 1:
                raise error(16872, "'$' by itself is not a valid FieldPath")
            return field_path(doc, expr[1:].split("."))
        return expr
    if isinstance(expr, list):
        return [None if v is MISSING else v for v in (evaluate(e, doc) for e in expr)]
    if isinstance(expr, dict):
        if expr and isinstance(next(iter(expr)), str) and next(iter(expr)).startswith("$"):
            if len(expr) != 1:
                raise error(15983, "an expression specification must contain exactly one field, "
                                   f"the name of the expression. Found {len(expr)} fields in "
                                   f"{expr!r}")
            op, args = next(iter(expr.items()))
            if op == "$literal":
                return args
            if op in _OWN_ARGUMENTS:
                return _OWN_ARGUMENTS[op](args, doc)
            if op not in _OPERATORS:
                raise error(INVALID_PIPELINE_OPERATOR, f"Unrecognized expression '{op}'")
            return _OPERATORS[op](_arguments(op, args, doc))
        out = {}
        for name, sub in expr.items():
            value = evaluate(sub, doc)
            if value is not MISSING:
                out[name] = value
        return out
    return expr


def validate_expression(expr: Any) -> None:
    """Raise now for an unknown expression operator anywhere in expr (not at some document)."""
    if isinstance(expr, list):
        for item in expr:
            validate_expression(item)
    elif isinstance(expr, dict):
        if expr and isinstance(next(iter(expr)), str) and next(iter(expr)).startswith("$"):
            op, args = next(iter(expr.items()))
            if op == "$literal":
                return
            if op in _OWN_ARGUMENTS:
                _check_named_arguments(op, args)
            elif op not in _OPERATORS:
                raise error(INVALID_PIPELINE_OPERATOR, f"Unrecognized expression '{op}'")
            validate_expression(args)
        else:
            for value in expr.values():
                validate_expression(value)


def _arguments(op: str, args: Any, doc: dict) -> list:
    if op == "$cond" and isinstance(args, dict):
        args = [args.get("if"), args.get("then"), args.get("else")]
    if not isinstance(args, list):
        args = [args]
    return [evaluate(a, doc) for a in args]


def _nullish(v: Any) -> bool:
    return v is None or v is MISSING


def _arity(op: str, n: int, fn: Callable[..., Any]) -> Callable[[list], Any]:
    def apply(args: list) -> Any:
        if len(args) != n:
            raise error(16020, f"Expression {op} takes exactly {n} arguments. {len(args)} were "
                               "passed in.")
        return fn(*args)
    return apply


def _numeric(op: str, fn: Callable[[list], Any]) -> Callable[[list], Any]:
    def apply(args: list) -> Any:
        if any(_nullish(a) for a in args):
            return None
        for a in args:
            if not _is_number(a):
                raise error(16554, f"{op} only supports numeric types, not "
                                   f"{type(a).__name__}")
        if any(isinstance(a, Decimal128) for a in args):
            return Decimal128(str(fn([_as_decimal(a) for a in args])))
        return fn(args)
    return apply


def _divide(args: list) -> Any:
    if args[1] == 0:
        raise error(2, "can't $divide by zero")
    return args[0] / args[1]


def _joined(op: str, kind: type, code: int, join: Callable[[list], Any]) -> Callable[[list], Any]:
    """$concat and $concatArrays: null if an argument is, else the arguments (all of kind) joined."""
    def apply(args: list) -> Any:
        if any(_nullish(a) for a in args):
            return None
        for a in args:
            if not isinstance(a, kind):
                raise error(code, f"{op} only supports {'strings' if kind is str else 'arrays'}, not "
                                  f"{type(a).__name__}")
        return join(args)
    return apply


def _size(v: Any) -> int:
    if not isinstance(v, list):
        raise error(17124, f"The argument to $size must be an array. Type of argument is "
                           f"{type(v).__name__}")
    return len(v)


def _string_case(fn: Callable[[str], str]) -> Callable[[Any], str]:
    return lambda v: "" if _nullish(v) else fn(v if isinstance(v, str) else str(v))


def _in(value: Any, array: Any) -> bool:
    if not isinstance(array, list):
        raise error(40081, "$in requires an array as a second argument")
    return any(values_equal(value, e) for e in array)


def _array_elem_at(array: Any, index: Any) -> Any:
    if _nullish(array) or _nullish(index):
        return None
    if not isinstance(array, list):
        raise error(28689, "$arrayElemAt's first argument must be an array")
    if not _is_number(index) or index != int(index):
        raise error(28691, "$arrayElemAt's second argument must be a numeric value")
    i = int(index)
    return array[i] if -len(array) <= i < len(array) else MISSING


def expression_truthy(v: Any) -> bool:
    """What $cond, $and, $or and $expr take as true: not false, null, missing or zero."""
    if _nullish(v) or v is False:
        return False
    if _is_number(v):
        return (v.to_decimal() if isinstance(v, Decimal128) else v) != 0
    return True


def _compare_op(test: Callable[[int], bool]) -> Callable[[Any, Any], bool]:
    return lambda a, b: test(compare(None if a is MISSING else a, None if b is MISSING else b))


def _product(values: list) -> Any:
    return math.prod(values)


def _over_values(op: str) -> Callable[[list], Any]:
    """$sum/$avg/$min/$max as expressions: over one array argument, or over the arguments."""
    def apply(args: list) -> Any:
        values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        return _accumulate(op, values)
    return apply


_OPERATORS: dict[str, Callable[[list], Any]] = {
    "$sum": _over_values("$sum"),
    "$avg": _over_values("$avg"),
    "$min": _over_values("$min"),
    "$max": _over_values("$max"),
    "$add": _numeric("$add", sum),
    "$subtract": _arity("$subtract", 2, lambda a, b: _numeric("$subtract",
                                                               lambda v: v[0] - v[1])([a, b])),
    "$multiply": _numeric("$multiply", _product),
    "$divide": _arity("$divide", 2, lambda a, b: _numeric("$divide", _divide)([a, b])),
    "$concat": _joined("$concat", str, 16702, "".join),
    "$toLower": _arity("$toLower", 1, _string_case(str.lower)),
    "$toUpper": _arity("$toUpper", 1, _string_case(str.upper)),
    "$size": _arity("$size", 1, _size),
    "$ifNull": lambda args: next((a for a in args[:-1] if not _nullish(a)), args[-1]
                                 if args else None),
    "$cond": _arity("$cond", 3, lambda c, t, f: t if expression_truthy(c) else f),
    "$eq": _arity("$eq", 2, _compare_op(lambda c: c == 0)),
    "$ne": _arity("$ne", 2, _compare_op(lambda c: c != 0)),
    "$gt": _arity("$gt", 2, _compare_op(lambda c: c > 0)),
    "$gte": _arity("$gte", 2, _compare_op(lambda c: c >= 0)),
    "$lt": _arity("$lt", 2, _compare_op(lambda c: c < 0)),
    "$lte": _arity("$lte", 2, _compare_op(lambda c: c <= 0)),
    "$cmp": _arity("$cmp", 2, _compare_op(lambda c: c)),
    "$and": lambda args: all(expression_truthy(a) for a in args),
    "$or": lambda args: any(expression_truthy(a) for a in args),
    "$not": _arity("$not", 1, lambda a: not expression_truthy(a)),
    "$in": _arity("$in", 2, _in),
    "$arrayElemAt": _arity("$arrayElemAt", 2, _array_elem_at),
}


# --- operators that take named arguments (and evaluate them themselves) ----------------------

# Operator → (required, optional) argument names; each error code is mongod's for that operator.
_NAMED_ARGUMENTS = {"$getField": (("field",), ("input",)), "$setField": (("field", "input", "value"), ()),
                    "$unsetField": (("field", "input"), ()), "$let": (("vars", "in"), ()),
                    "$map": (("input", "in"), ("as",)), "$filter": (("input", "cond"), ("as", "limit")),
                    "$reduce": (("input", "initialValue", "in"), ()), "$switch": (("branches",), ("default",))}
_ARGUMENT_CODES = {"$let": (16875, 16876), "$map": (16879, 16882), "$filter": (28647, 28648),
                   "$reduce": (40076, 40077), "$switch": (40067, 40068)}


def _check_named_arguments(op: str, args: Any) -> dict:
    """args as {name: expression}: the required ones present, no unknown one, each checked
    ($getField's shorthand {$getField: "name"} reads the field of $$CURRENT)."""
    if op == "$getField" and (not isinstance(args, dict) or str(next(iter(args), "")).startswith("$")):
        args = {"field": args}
    if not isinstance(args, dict):
        raise error(3041703 if op.endswith("Field") else 16874, f"{op} only supports an object as its argument")
    unknown, missing = _ARGUMENT_CODES.get(op, (3041701, 3041702))
    required, optional = _NAMED_ARGUMENTS[op]
    for name in args:
        if name not in required and name not in optional:
            raise error(unknown, f"{op} found an unknown argument: {name}")
    for name in required:
        if name not in args:
            raise error(missing, f"Missing '{name}' parameter to {op}")
    if op == "$let" and not isinstance(args["vars"], dict):
        raise error(10065, "invalid parameter: expected an object (vars)")
    if op == "$switch":
        branches = args["branches"]
        if not isinstance(branches, list) or not all(isinstance(b, dict) and set(b) == {"case", "then"}
                                                     for b in branches):
            raise error(40061, "$switch expects each branch to be an object with 'case' and 'then'")
    if "as" in args:
        from farts.db.variables import check_name  # (it imports this module)
        check_name(args["as"])
    if op in ("$getField", "$setField", "$unsetField"):
        args = {**args, "field": _constant_field(op, args["field"])}
    for name, value in args.items():
        if name not in ("field", "as", "branches"):
            validate_expression(value)
    for branch in args.get("branches") or ():
        validate_expression(branch)
    return args


def _constant_field(op: str, field: Any) -> str:
    if isinstance(field, dict) and set(field) == {"$literal"}:
        field = field["$literal"]
    elif isinstance(field, str) and field.startswith("$"):
        raise error(5654602, f"A string that starts with '$' is a field path reference: {op} requires "
                             "'field' to evaluate to a constant; wrap it in $literal")
    if not isinstance(field, str):
        raise error(5654601 if op == "$getField" else 4161107,
                    f"{op} requires 'field' to evaluate to type String, but got {type(field).__name__}")
    return field


def _get_field(args: Any, doc: dict) -> Any:
    args = _check_named_arguments("$getField", args)
    source = evaluate(args["input"], doc) if "input" in args else doc
    if _nullish(source):
        return None if source is None else MISSING
    if not isinstance(source, dict):
        return MISSING
    return source.get(args["field"], MISSING)


def _set_field_op(args: Any, doc: dict, op: str = "$setField") -> Any:
    args = _check_named_arguments(op, args)
    source = evaluate(args["input"], doc)
    if _nullish(source):
        return None
    if not isinstance(source, dict):
        raise error(4161105, f"{op} requires 'input' to evaluate to type Object")
    value = evaluate(args["value"], doc) if op == "$setField" else MISSING
    out = {k: v for k, v in source.items() if k != args["field"]}
    if value is not MISSING:
        out = dict(source)
        out[args["field"]] = value
    return out


def _with_variables(expr: Any, doc: dict, values: dict) -> Any:
    """expr evaluated with values as variables (bound like a command's let: a variable that
    evaluated to missing reads as $$REMOVE)."""
    from farts.db.variables import bind_expression  # (it imports this module)
    return evaluate(bind_expression(expr, values), doc)


def _let(args: Any, doc: dict) -> Any:
    from farts.db.variables import check_name  # (it imports this module)
    args = _check_named_arguments("$let", args)
    values = {}
    for name, expr in args["vars"].items():
        check_name(name)
        values[name] = evaluate(expr, doc)
    return _with_variables(args["in"], doc, values)


def _iterated(op: str, args: Any, doc: dict, code: int) -> tuple[dict, list | None]:
    args = _check_named_arguments(op, args)
    array = evaluate(args["input"], doc)
    if _nullish(array):
        return args, None
    if not isinstance(array, list):
        raise error(code, f"input to {op} must be an array not {type(array).__name__}")
    return args, array


def _map(args: Any, doc: dict) -> Any:
    args, array = _iterated("$map", args, doc, 16883)
    if array is None:
        return None
    name = args.get("as", "this")
    return [None if v is MISSING else v for v in (_with_variables(args["in"], doc, {name: e}) for e in array)]


def _filter(args: Any, doc: dict) -> Any:
    args, array = _iterated("$filter", args, doc, 28651)
    if array is None:
        return None
    name = args.get("as", "this")
    limit = _integral(evaluate(args["limit"], doc)) if "limit" in args else None
    if "limit" in args and (limit is None or limit < 1):
        raise error(327391, f"$filter: limit must be a positive integer, not {args['limit']!r}")
    kept = [e for e in array if expression_truthy(_with_variables(args["cond"], doc, {name: e}))]
    return kept[:limit] if limit is not None else kept


def _reduce(args: Any, doc: dict) -> Any:
    args, array = _iterated("$reduce", args, doc, 40080)
    if array is None:
        return None
    value = evaluate(args["initialValue"], doc)
    for element in array:
        value = _with_variables(args["in"], doc, {"this": element, "value": value})
    return value


def _switch(args: Any, doc: dict) -> Any:
    args = _check_named_arguments("$switch", args)
    for branch in args["branches"]:
        if expression_truthy(evaluate(branch["case"], doc)):
            return evaluate(branch["then"], doc)
    if "default" not in args:
        raise error(40066, "$switch could not find a matching branch for an input, and no default was "
                           "specified.")
    return evaluate(args["default"], doc)


_OWN_ARGUMENTS: dict[str, Callable[[Any, dict], Any]] = {
    "$getField": _get_field,
    "$setField": _set_field_op,
    "$unsetField": lambda args, doc: _set_field_op(args, doc, "$unsetField"),
    "$let": _let,
    "$map": _map,
    "$filter": _filter,
    "$reduce": _reduce,
    "$switch": _switch,
}


# --- operators on evaluated arguments: documents, arrays, numbers, types ----------------------

def _merge_objects(args: list) -> dict:
    out: dict = {}
    for value in args:
        if _nullish(value):
            continue
        if not isinstance(value, dict):
            raise error(40400, f"$mergeObjects requires object inputs, but input {value!r} is of type "
                               f"{type(value).__name__}")
        out.update(value)
    return out


def _rounding(op: str, mode: str) -> Callable[[list], Any]:
    """$round (half to even, as mongod) and $trunc to a number of decimal places (default 0)."""
    def apply(args: list) -> Any:
        if not 1 <= len(args) <= 2:
            raise error(28667, f"Expression {op} takes at least 1 argument, and at most 2")
        value, place = args[0], args[1] if len(args) == 2 else 0
        if _nullish(value) or _nullish(place):
            return None
        if not _is_number(value):
            raise error(51081, f"{op} only supports numeric types, not {type(value).__name__}")
        place = _integral(place)
        if place is None or not -20 < place < 100:
            raise error(51083, f"{op} requires an integral place between -20 and 100")
        if not _as_decimal(value).is_finite():
            return value
        with localcontext() as ctx:
            ctx.prec = 1000   # a double's every digit (up to 1e308) before the point
            exact = _as_decimal(value).quantize(Decimal(1).scaleb(-place), rounding=mode)
        if isinstance(value, Decimal128):
            return Decimal128(exact)
        if isinstance(value, float):
            return float(exact)
        return type(value)(int(exact)) if isinstance(value, Int64) else int(exact)
    return apply


def _unary_number(op: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if _nullish(value):
            return None
        if not _is_number(value):
            raise error(28765, f"{op} only supports numeric types, not {type(value).__name__}")
        if not _as_decimal(value).is_finite():
            return abs(value) if op == "$abs" and isinstance(value, float) else value
        if isinstance(value, Decimal128):
            return Decimal128(Decimal(fn(value.to_decimal())))
        result = fn(value)
        return float(result) if isinstance(value, float) else result
    return apply


def _integral(value: Any) -> int | None:
    """value as an int if it is a number with an integral value, else None."""
    if not _is_number(value):
        return None
    exact = _as_decimal(value)
    return int(exact) if exact.is_finite() and exact == exact.to_integral_value() else None


def _mod(a: Any, b: Any) -> Any:
    if _nullish(a) or _nullish(b):
        return None
    if not _is_number(a) or not _is_number(b):
        raise error(16611, "$mod only supports numeric types")
    if b == 0:
        raise error(16610, "can't $mod by zero")
    if isinstance(a, Decimal128) or isinstance(b, Decimal128):
        with localcontext() as ctx:
            ctx.traps[InvalidOperation] = False   # inf % x: NaN, as mongod answers
            return Decimal128(_as_decimal(a) % _as_decimal(b))   # Decimal's % truncates, as C's does
    if isinstance(a, float) or isinstance(b, float):
        return math.fmod(a, b) if math.isfinite(a) else math.nan
    rest = abs(a) % abs(b)
    return -rest if a < 0 else rest


def _type_of(value: Any) -> str:
    if value is MISSING:
        return "missing"
    return _TYPE_ALIASES_BY_NUMBER.get(bson_type_number(value), "object")


_TYPE_ALIASES_BY_NUMBER = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId",
                           8: "bool", 9: "date", 10: "null", 11: "regex", 13: "javascript",
                           15: "javascriptWithScope", 16: "int", 17: "timestamp", 18: "long", 19: "decimal",
                           -1: "minKey", 127: "maxKey"}


def _to_string(value: Any) -> Any:
    if _nullish(value):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, (str, int, Decimal128, ObjectId)):
        return str(value)
    raise error(241, f"Unsupported conversion from {_type_of(value)} to string in $convert with no "
                     "onError value")


def _object_to_array(value: Any) -> Any:
    if _nullish(value):
        return None
    if not isinstance(value, dict):
        raise error(40390, f"$objectToArray requires a document input, found: {type(value).__name__}")
    return [{"k": k, "v": v} for k, v in value.items()]


def _array_to_object(value: Any) -> Any:
    if _nullish(value):
        return None
    if not isinstance(value, list):
        raise error(40386, f"$arrayToObject requires an array input, found: {type(value).__name__}")
    out: dict = {}
    for pair in value:
        if isinstance(pair, dict) and set(pair) == {"k", "v"} and isinstance(pair["k"], str):
            out[pair["k"]] = pair["v"]
        elif isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str):
            out[pair[0]] = pair[1]
        else:
            raise error(40398, "$arrayToObject requires [k, v] pairs or {k, v} documents with a string k")
    return out


_OPERATORS.update({
    "$mergeObjects": _merge_objects,
    "$concatArrays": _joined("$concatArrays", list, 28664, lambda arrays: [e for a in arrays for e in a]),
    "$round": _rounding("$round", ROUND_HALF_EVEN),
    "$trunc": _rounding("$trunc", ROUND_DOWN),
    "$abs": _arity("$abs", 1, _unary_number("$abs", abs)),
    "$floor": _arity("$floor", 1, _unary_number("$floor", math.floor)),
    "$ceil": _arity("$ceil", 1, _unary_number("$ceil", math.ceil)),
    "$mod": _arity("$mod", 2, _mod),
    "$type": _arity("$type", 1, _type_of),
    "$isArray": _arity("$isArray", 1, lambda v: isinstance(v, list)),
    "$toString": _arity("$toString", 1, _to_string),
    "$objectToArray": _arity("$objectToArray", 1, _object_to_array),
    "$arrayToObject": _arity("$arrayToObject", 1, _array_to_object),
})


_STAGES: dict[str, Callable[[Any], Stage]] = {
    "$match": _stage_match,
    "$sort": _stage_sort,
    "$skip": _stage_skip,
    "$limit": _stage_limit,
    "$project": _stage_project,
    "$addFields": _stage_add_fields,
    "$set": _stage_add_fields,
    "$unset": _stage_unset,
    "$group": _stage_group,
    "$count": _stage_count,
    "$unwind": _stage_unwind,
    "$replaceRoot": _stage_replace_root,
    "$replaceWith": lambda arg: _stage_replace_root(arg, key=""),
    "$sortByCount": _stage_sort_by_count,
    "$facet": _stage_facet,
    "$documents": _stage_documents,
}
# The stages that compare strings, built with the command's collation when it has one.
_COLLATED_STAGES: dict[str, Callable[[Any, Any], Stage]] = {
    "$match": _stage_match,
    "$sort": _stage_sort,
    "$group": _stage_group,
    "$sortByCount": _stage_sort_by_count,
    "$facet": _stage_facet,
}
