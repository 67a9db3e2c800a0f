"""MongoDB update documents applied to a document, returning the new document.

Operator updates follow MongoDB 5.0+: all paths are checked for conflicts first (error 40),
then applied in field-name order (numeric names numerically), so new fields appear in
lexicographic order whatever order the update lists them in. `_id` never changes (66).
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

import bson
from bson.decimal128 import Decimal128, create_decimal128_context
from bson.int64 import Int64
from bson.timestamp import Timestamp

from farts.db.aggregate import run_pipeline
from farts.db.errors import (
    BAD_VALUE,
    CONFLICTING_UPDATE_OPERATORS,
    DOLLAR_PREFIXED_FIELD_NAME,
    EMPTY_FIELD_NAME,
    FAILED_TO_PARSE,
    IMMUTABLE_FIELD,
    INVALID_OPTIONS,
    NOT_SINGLE_VALUE_FIELD,
    PATH_NOT_VIABLE,
    TYPE_MISMATCH,
    error,
)
from farts.db.ordering import MISSING, compare, sort_documents, sort_key, values_equal
from farts.db.query import (
    bson_type_number,
    compile_field_operators,
    compile_filter,
    equality_pairs,
    is_operator_document,
)
from farts.db.variables import bind_pipeline

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
_TYPE_NAMES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId",
               8: "bool", 9: "date", 10: "null", 11: "regex", 13: "javascript", 16: "int",
               17: "timestamp", 18: "long", 19: "decimal", -1: "minKey", 127: "maxKey"}
_UNSUPPORTED = ("$bit",)


def is_replacement(update: Any) -> bool:
    """True for a replacement document (no top-level '$' keys), False for operators/pipelines."""
    return isinstance(update, dict) and not any(
        isinstance(k, str) and k.startswith("$") for k in update)


class Update:
    """An update parsed once (errors before any document is looked at), applied to each document
    it selects: operators, a replacement or a pipeline (a list of stages, with the command's
    variables bound in), with its arrayFilters."""

    __slots__ = ("update", "kind", "operations", "array_filters", "stages")

    def __init__(self, update: dict | list, array_filters: list | None = None,
                 variables: dict | None = None):
        self.update, self.array_filters, self.operations, self.stages = update, {}, [], []
        if isinstance(update, list):
            self.kind = "pipeline"
            if array_filters is not None:
                raise error(FAILED_TO_PARSE, "arrayFilters may not be specified for pipeline-style updates")
            self.stages = _pipeline_stages(update, variables or {})
        elif not isinstance(update, dict):
            raise error(FAILED_TO_PARSE, "Update document must be an object")
        elif is_replacement(update):
            self.kind = "replacement"
            if array_filters is not None:
                raise error(FAILED_TO_PARSE, "arrayFilters may not be specified for replacement-style updates")
        else:
            self.kind = "operators"
            self.operations = sorted(_parse(update), key=lambda o: _path_order(o[0]))
            self.array_filters = _parse_array_filters(array_filters, update, self.operations)

    def apply(self, doc: dict, *, is_upsert_insert: bool = False, now: datetime.datetime | None = None,
              filter: dict | None = None) -> dict:
        """The document after the update; `doc` itself is left untouched.

        `filter` is the query that selected the document: the positional "a.$" path needs it to
        find the array element the query matched. "a.$[]" means every element of a, "a.$[x]"
        those the array filter named x matches.
        Compare old and new with bson.encode() to decide "modified": Python's == says 1 == 1.0
        == True and ignores field order, MongoDB does not.
        """
        if self.kind == "replacement":
            new = _replace(doc, self.update)
        elif self.kind == "pipeline":
            new = _run_update_pipeline(doc, self.stages)
        else:
            new = _copy(doc)
            for path, op, arg in self.operations:
                if op == "$setOnInsert" and not is_upsert_insert:
                    continue
                for concrete in _positional_paths(new, path, filter, self.array_filters):
                    _APPLIERS[op](new, concrete, arg, now)
            if "_id" in doc and not _same_value(new.get("_id", MISSING), doc["_id"]):
                raise error(IMMUTABLE_FIELD,
                            "Performing an update on the path '_id' would modify the immutable field '_id'")
        check_id_field(new)
        return new


def apply_update(doc: dict, update: dict | list, *, is_upsert_insert: bool = False,
                 now: datetime.datetime | None = None, filter: dict | None = None,
                 array_filters: list | None = None, variables: dict | None = None) -> dict:
    """The document after the update (see Update.apply)."""
    return Update(update, array_filters, variables).apply(doc, is_upsert_insert=is_upsert_insert, now=now,
                                                          filter=filter)


def check_id_field(doc: dict) -> None:
    """An _id that is a document may not hold '$'-prefixed fields (it would read as an operator)."""
    _id = doc.get("_id")
    if isinstance(_id, dict):
        name = _dollar_field(_id)
        if name is not None:
            raise error(DOLLAR_PREFIXED_FIELD_NAME, "_id fields may not contain '$'-prefixed fields: "
                                                    f"{name} is not valid for storage.")


def _dollar_field(value: Any) -> str | None:
    """The first '$'-prefixed field name in value, at any depth (a DBRef's $ref/$id/$db excepted)."""
    if isinstance(value, dict):
        if list(value)[:2] == ["$ref", "$id"] and set(value) <= {"$ref", "$id", "$db"}:
            return None
        for name, sub in value.items():
            if isinstance(name, str) and name.startswith("$"):
                return name
            found = _dollar_field(sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for sub in value:
            found = _dollar_field(sub)
            if found is not None:
                return found
    return None


# --- pipeline updates ------------------------------------------------------------------------

def field_changes(old: dict, new: dict) -> dict | None:
    """An operator update ($set/$unset of paths) that turns old into new (field order aside): how
    a pipeline update is replicated, so it merges field by field like operators do. None when a
    changed top-level field's name cannot be written as a path (a '.' or a leading '$' in it)."""
    sets: dict = {}
    unsets: dict = {}

    def diff(before: dict, after: dict, prefix: str) -> bool:
        for name in before:
            if name not in after:
                if not _plain(name):
                    return False
                unsets[prefix + name] = ""
        for name, value in after.items():
            old_value = before.get(name, MISSING)
            if old_value is not MISSING and _identical(old_value, value):
                continue
            if not _plain(name):
                return False
            if type(old_value) is dict and type(value) is dict and all(map(_plain, old_value)) \
                    and all(map(_plain, value)):
                diff(old_value, value, f"{prefix}{name}.")
            else:
                sets[prefix + name] = _copy(value)
        return True

    if not diff(old, new, ""):
        return None
    changes: dict = {}
    if sets:
        changes["$set"] = sets
    if unsets:
        changes["$unset"] = unsets
    return changes


def _plain(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "." not in name and not name.startswith("$")


def _identical(a: Any, b: Any) -> bool:
    return bson.encode({"v": a}) == bson.encode({"v": b})


_PIPELINE_STAGES = ("$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith")


def _pipeline_stages(pipeline: list, variables: dict) -> list:
    """The update pipeline, checked and with its variables bound: only the stages that make one
    document of one are allowed (InvalidOptions for the others, as mongod answers)."""
    for stage in pipeline:
        if not isinstance(stage, dict):
            raise error(FAILED_TO_PARSE, "Each element of the 'pipeline' array must be an object")
        name = next(iter(stage), None)
        if name not in _PIPELINE_STAGES:
            run_pipeline([], [stage])   # an unknown or malformed stage raises its own error first
            raise error(INVALID_OPTIONS, f"{name} is not allowed to be used within an update")
    stages = bind_pipeline(pipeline, variables)
    run_pipeline([], stages)   # every stage's specification checked before any document
    return stages


def _run_update_pipeline(doc: dict, stages: list) -> dict:
    (new,) = run_pipeline([doc], stages)
    if "_id" in doc:
        if "_id" in new and not _same_value(new["_id"], doc["_id"]):
            raise error(IMMUTABLE_FIELD,
                        "Performing an update on the path '_id' would modify the immutable field '_id'")
        # mongod writes the result as a replacement: _id first, the document's if a stage dropped it.
        new = {"_id": doc["_id"], **{k: v for k, v in new.items() if k != "_id"}}
    return _copy(new)


def _same_value(a: Any, b: Any) -> bool:
    return a is not MISSING and bson_type_number(a) == bson_type_number(b) and values_equal(a, b)


def _replace(doc: dict, replacement: dict) -> dict:
    new: dict = {}
    if "_id" in doc:
        if "_id" in replacement and not _same_value(replacement["_id"], doc["_id"]):
            raise error(IMMUTABLE_FIELD,
                        "After applying the update, the (immutable) field '_id' was found to "
                        f"have been altered to _id: {replacement['_id']!r}")
        new["_id"] = doc["_id"]
    for name, value in replacement.items():
        if name not in new:
            new[name] = _copy(value)
    return new


def _copy(value: Any) -> Any:
    """A copy of the containers (dicts and lists); BSON scalars are immutable and shared."""
    if type(value) is dict or isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _path_order(path: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


# --- parsing ---------------------------------------------------------------------------------

def _parse(update: dict) -> list[tuple[str, str, Any]]:
    operations: list[tuple[str, str, Any]] = []
    claimed: list[str] = []
    for op, fields in update.items():
        if op not in _APPLIERS:
            if op in _UNSUPPORTED:
                raise error(FAILED_TO_PARSE, f"{op} is not supported by this server")
            raise error(FAILED_TO_PARSE, f"Unknown modifier: {op}. Expected a valid update "
                                         "modifier or pipeline-style update specified as an array")
        if not isinstance(fields, dict):
            raise error(FAILED_TO_PARSE,
                        f"Modifiers operate on fields but we found type {type_name(fields)} "
                        f"instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {fields!r}}}")
        for path, arg in fields.items():
            _check_path(path)
            paths = [path]
            if op == "$rename":
                if not isinstance(arg, str):
                    raise error(BAD_VALUE,
                                f"The 'to' field for $rename must be a string: {path}: {arg!r}")
                _check_path(arg)
                if "$" in path or "$" in arg:
                    raise error(BAD_VALUE, f"$rename paths may not be dynamic (positional): "
                                           f"{path}: {arg!r}")
                if arg == path:
                    raise error(BAD_VALUE, "The source and target field for $rename must "
                                           f"differ: {path}: {arg!r}")
                paths.append(arg)
            for p in paths:
                for other in claimed:
                    shorter, longer = sorted((p, other), key=len)
                    if longer == shorter or longer.startswith(shorter + "."):
                        raise error(CONFLICTING_UPDATE_OPERATORS,
                                    f"Updating the path '{p}' would create a conflict at "
                                    f"'{shorter}'")
                claimed.append(p)
            operations.append((path, op, arg))
    return operations


def _check_path(path: Any) -> None:
    if not isinstance(path, str) or not path:
        raise error(EMPTY_FIELD_NAME, "An empty update path is not valid.")
    parts = path.split(".")
    if "" in parts:
        raise error(EMPTY_FIELD_NAME, f"The update path '{path}' contains an empty field name, "
                                       "which is not allowed.")
    if parts[0].startswith("$"):
        raise error(BAD_VALUE, f"The update path '{path}' may not start with a '$' field name")
    if parts.count("$") > 1:
        raise error(BAD_VALUE, f"Too many positional (i.e. '$') elements found in path '{path}'")


# --- positional paths ------------------------------------------------------------------------

def _positional_paths(doc: dict, path: str, filter: dict | None,
                      array_filters: dict[str, Callable[[Any], bool]]) -> list[str]:
    """The concrete paths of "a.$.b" (the matched element), "a.$[].b" (every element) and
    "a.$[x].b" (the elements the array filter x matches)."""
    if "$" not in path:
        return [path]
    parts = path.split(".")
    if "$" in parts:
        at = parts.index("$")
        position = _matched_position(doc, ".".join(parts[:at]), filter)
        if position is None:
            raise error(BAD_VALUE, "The positional operator did not find the match needed from "
                                   "the query.")
        parts[at] = str(position)
    at = next((i for i, part in enumerate(parts) if part.startswith("$[")), None)
    if at is None:
        return [".".join(parts)]
    prefix = ".".join(parts[:at])
    array = _get(doc, prefix)
    if not isinstance(array, list):
        raise error(BAD_VALUE, f"The path '{prefix}' must exist in the document in order to "
                               "apply array updates.")
    test = array_filters.get(parts[at][2:-1]) if parts[at] != "$[]" else None
    paths: list[str] = []
    for index, element in enumerate(array):
        if test is None or test(element):
            paths.extend(_positional_paths(doc, ".".join(parts[:at] + [str(index)] + parts[at + 1:]),
                                           filter, array_filters))
    return paths


def _parse_array_filters(array_filters: list | None, update: dict,
                         operations: list) -> dict[str, Callable[[Any], bool]]:
    """identifier → test of an array element, for the "$[identifier]" paths of the update.
    Each filter names one identifier; each identifier is used by a path and has a filter."""
    if array_filters is None:
        if not any("$[" in path for path, _, _ in operations):
            return {}
        array_filters = []
    if not isinstance(array_filters, list):
        raise error(TYPE_MISMATCH, "arrayFilters must be an array")
    tests: dict[str, Callable[[Any], bool]] = {}
    for spec in array_filters:
        if not isinstance(spec, dict):
            raise error(TYPE_MISMATCH, "each array filter must be an object")
        names = _filter_identifiers(spec)
        if not names:
            raise error(FAILED_TO_PARSE, "Cannot use an expression without a top-level field name in "
                                         "arrayFilters")
        if len(names) > 1:
            raise error(FAILED_TO_PARSE, "Error parsing array filter :: caused by :: Expected a single "
                                         f"top-level field name, found '{names[0]}' and '{names[1]}'")
        name = names[0]
        if not (name[:1].isascii() and name[:1].islower() and name.isalnum() and name.isascii()):
            raise error(BAD_VALUE, "Error parsing array filter :: caused by :: The top-level field name "
                                   "must be an alphanumeric string beginning with a lowercase letter, "
                                   f"found '{name}'")
        if name in tests:
            raise error(FAILED_TO_PARSE, "Found multiple array filters with the same top-level field "
                                         f"name {name}")
        match = compile_filter(spec)
        tests[name] = lambda element, name=name, match=match: match({name: element})
    used = set()
    for path, _, _ in operations:
        for part in path.split("."):
            if part.startswith("$[") and part != "$[]":
                if part[2:-1] not in tests:
                    raise error(BAD_VALUE, f"No array filter found for identifier '{part[2:-1]}' in "
                                           f"path '{path}'")
                used.add(part[2:-1])
    for name in tests:
        if name not in used:
            raise error(FAILED_TO_PARSE, f"The array filter for identifier '{name}' was not used in the "
                                         f"update {update!r}")
    return tests


def _filter_identifiers(spec: dict) -> list[str]:
    """The top-level names an array filter tests ("x" of "x.a", through $and/$or/$nor)."""
    names: list[str] = []
    for key, value in spec.items():
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            found = [n for sub in value if isinstance(sub, dict) for n in _filter_identifiers(sub)]
        elif isinstance(key, str) and not key.startswith("$"):
            found = [key.split(".", 1)[0]]
        else:
            found = []
        names.extend(n for n in found if n not in names)
    return names


def _matched_position(doc: dict, prefix: str, filter: dict | None) -> int | None:
    """The first element of the array at prefix that meets the filter's conditions on it.

    MongoDB uses the element its matcher last looked at; the two agree whenever one element
    satisfies all of the filter's conditions on the array, the way positional updates are used.
    """
    array = _get(doc, prefix)
    if not isinstance(array, list) or not filter:
        return None
    tests = [_element_test(path[len(prefix) + 1:], condition)
             for path, condition in _and_conditions(filter)
             if path == prefix or path.startswith(prefix + ".")]
    if not tests:
        return None
    for candidates in (tests, tests[-1:]):
        for index, element in enumerate(array):
            if all(test(element) for test in candidates):
                return index
    return None


def _and_conditions(filter: dict) -> list[tuple[str, Any]]:
    conditions = []
    for name, value in filter.items():
        if name == "$and" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    conditions.extend(_and_conditions(entry))
        elif not name.startswith("$"):
            conditions.append((name, value))
    return conditions


def _element_test(rest: str, condition: Any) -> Callable[[Any], bool]:
    if not rest and isinstance(condition, dict) and list(condition) == ["$elemMatch"]:
        spec = condition["$elemMatch"]
        if is_operator_document(spec) and next(iter(spec)) not in ("$and", "$or", "$nor"):
            match_value = compile_filter({"v": spec})
            return lambda e: match_value({"v": e})
        match_doc = compile_filter(spec)
        return lambda e: isinstance(e, dict) and match_doc(e)
    match = compile_filter({"v." + rest if rest else "v": condition})
    return lambda e: match({"v": e})


def type_name(value: Any) -> str:
    """The BSON type's name, as MongoDB's messages spell it."""
    return _TYPE_NAMES.get(bson_type_number(value), type(value).__name__)


# --- navigation ------------------------------------------------------------------------------

def _element_text(name: str, value: Any) -> str:
    return f"{{{name}: {value!r}}}"


def _parent(doc: dict, path: str, create: bool) -> tuple[Any, str] | None:
    """The container holding the last component of path, and that component.

    With create, missing documents along the way are created (and arrays padded with null);
    a scalar in the way is an error. Without create, None when the path does not exist.
    """
    parts = path.split(".")
    container: Any = doc
    for depth, part in enumerate(parts[:-1]):
        if isinstance(container, dict):
            child = container.get(part, MISSING)
            if child is MISSING:
                if not create:
                    return None
                child = container[part] = {}
        elif isinstance(container, list) and part.isdigit():
            index = int(part)
            if index >= len(container):
                if not create:
                    return None
                container.extend([None] * (index - len(container)))
                container.append({})
            child = container[index]
        else:
            if not create:
                return None
            raise error(PATH_NOT_VIABLE, f"Cannot create field '{part}' in element "
                        f"{_element_text(parts[depth - 1] if depth else '', container)}")
        if not isinstance(child, (dict, list)):
            if not create:
                return None
            raise error(PATH_NOT_VIABLE, f"Cannot create field '{parts[depth + 1]}' in element "
                                          f"{_element_text(part, child)}")
        container = child
    last = parts[-1]
    if isinstance(container, list) and not last.isdigit():
        if not create:
            return None
        raise error(PATH_NOT_VIABLE, f"Cannot create field '{last}' in element "
                                      f"{_element_text(parts[-2] if len(parts) > 1 else '', container)}")
    return container, last


def _get(doc: dict, path: str) -> Any:
    found = _parent(doc, path, create=False)
    if found is None:
        return MISSING
    container, last = found
    if isinstance(container, dict):
        return container.get(last, MISSING)
    index = int(last)
    return container[index] if index < len(container) else MISSING


def _put(container: Any, last: str, value: Any) -> None:
    if isinstance(container, dict):
        container[last] = value
        return
    index = int(last)
    if index >= len(container):
        container.extend([None] * (index + 1 - len(container)))
    container[index] = value


def _set_path(doc: dict, path: str, value: Any) -> None:
    container, last = _parent(doc, path, create=True)
    _put(container, last, value)


# --- operators -------------------------------------------------------------------------------

def _op_set(doc: dict, path: str, arg: Any, now: Any) -> None:
    _set_path(doc, path, _copy(arg))


def _op_unset(doc: dict, path: str, arg: Any, now: Any) -> None:
    found = _parent(doc, path, create=False)
    if found is None:
        return
    container, last = found
    if isinstance(container, dict):
        container.pop(last, None)
    elif int(last) < len(container):
        container[int(last)] = None  # $unset on an array element leaves a null in place


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def _arithmetic(name: str, current: Any, arg: Any, fn: Callable[[Any, Any], Any]) -> Any:
    if isinstance(current, Decimal128) or isinstance(arg, Decimal128):
        with localcontext(create_decimal128_context()) as ctx:
            return Decimal128(ctx.create_decimal(fn(_as_decimal(current), _as_decimal(arg))))
    if isinstance(current, float) or isinstance(arg, float):
        return fn(float(current), float(arg))
    result = fn(int(current), int(arg))
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise error(BAD_VALUE, f"Failed to apply {name} operations to current value "
                               f"({current!r}) : integer overflow")
    if isinstance(current, Int64) or isinstance(arg, Int64):
        return Int64(result)
    return result


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(int(value))


def _numeric_op(name: str, verb: str, fn: Callable[[Any, Any], Any], start: Callable[[Any], Any]):
    def apply(doc: dict, path: str, arg: Any, now: Any) -> None:
        if not _is_number(arg):
            raise error(TYPE_MISMATCH, f"Cannot {verb} with non-numeric argument: "
                                       f"{{{path}: {arg!r}}}")
        container, last = _parent(doc, path, create=True)
        current = _get(doc, path)
        if current is MISSING:
            _put(container, last, start(arg))
            return
        if not _is_number(current):
            raise error(TYPE_MISMATCH,
                        f"Cannot apply {name} to a value of non-numeric type. "
                        f"{{_id: {doc.get('_id')!r}}} has the field '{last}' of non-numeric type "
                        f"{type_name(current)}")
        _put(container, last, _arithmetic(name, current, arg, fn))
    return apply


def _zero_like(arg: Any) -> Any:
    if isinstance(arg, Decimal128):
        return Decimal128("0")
    if isinstance(arg, float):
        return 0.0
    return Int64(0) if isinstance(arg, Int64) else 0


def _min_max(want: int):
    def apply(doc: dict, path: str, arg: Any, now: Any) -> None:
        container, last = _parent(doc, path, create=True)
        current = _get(doc, path)
        if current is MISSING or compare(arg, current) == want:
            _put(container, last, _copy(arg))
    return apply


def _op_current_date(doc: dict, path: str, arg: Any, now: Any) -> None:
    kind = "date"
    if isinstance(arg, dict):
        kind = arg.get("$type")
        if set(arg) != {"$type"} or kind not in ("date", "timestamp"):
            raise error(BAD_VALUE, "The '$type' string field is required to be 'date' or "
                                   f"'timestamp': {{$currentDate: {{field : {{$type: 'date'}}}}}}"
                                   f" (got {arg!r})")
    elif not isinstance(arg, bool):
        raise error(BAD_VALUE, f"{type_name(arg)} is not valid type for $currentDate. Please "
                               "use a boolean ('true') or a $type expression ({$type: "
                               "'timestamp/date'}).")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    if now.tzinfo is not None:
        now = now.astimezone(datetime.UTC).replace(tzinfo=None)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON dates hold milliseconds
    if kind == "timestamp":
        seconds = int((now - datetime.datetime(1970, 1, 1)).total_seconds())
        _set_path(doc, path, Timestamp(seconds, 1))
    else:
        _set_path(doc, path, now)


def _op_rename(doc: dict, path: str, target: str, now: Any) -> None:
    for p, role in ((path, "source"), (target, "destination")):
        if _crosses_array(doc, p):
            raise error(BAD_VALUE, f"The {role} field cannot be an array element, '{p}' in doc "
                                   f"with _id: {doc.get('_id')!r} has an array field")
    value = _get(doc, path)
    if value is MISSING:
        return
    _op_unset(doc, path, None, now)
    _op_unset(doc, target, None, now)
    _set_path(doc, target, value)


def _crosses_array(doc: dict, path: str) -> bool:
    container: Any = doc
    for part in path.split(".")[:-1]:
        if not isinstance(container, dict):
            return False
        container = container.get(part, MISSING)
        if isinstance(container, list):
            return True
    return False


def _array_at(doc: dict, path: str, create: bool, message: Callable[[Any], str], code: int
              ) -> list | None:
    container, last = _parent(doc, path, create=True) if create else (
        _parent(doc, path, create=False) or (None, None))
    if container is None:
        return None
    current = _get(doc, path)
    if current is MISSING:
        if not create:
            return None
        current = []
        _put(container, last, current)
    if not isinstance(current, list):
        raise error(code, message(current))
    return current


def _op_push(doc: dict, path: str, arg: Any, now: Any) -> None:
    values, position, slice_, sort_spec = [arg], None, None, None
    if isinstance(arg, dict) and "$each" in arg:
        for clause in arg:
            if clause not in ("$each", "$slice", "$position", "$sort"):
                raise error(BAD_VALUE, f"Unrecognized clause in $push: {clause}")
        values = arg["$each"]
        if not isinstance(values, list):
            raise error(BAD_VALUE, "The argument to $each in $push must be an array but it was "
                                   f"of type: {type_name(values)}")
        position = _integer_clause(arg, "$position")
        slice_ = _integer_clause(arg, "$slice")
        if "$sort" in arg:
            sort_spec = _push_sort_spec(arg["$sort"])
    array = _array_at(doc, path, True, lambda cur: f"The field '{path}' must be an array but is "
                      f"of type {type_name(cur)} in document {{_id: {doc.get('_id')!r}}}",
                      BAD_VALUE)
    new = [_copy(v) for v in values]
    if position is None:
        array.extend(new)
    else:
        at = min(position, len(array)) if position >= 0 else max(len(array) + position, 0)
        array[at:at] = new
    if sort_spec is not None:
        array[:] = _sorted_elements(array, sort_spec)
    if slice_ is not None:
        array[:] = array[:slice_] if slice_ >= 0 else array[slice_:] if -slice_ < len(array) \
            else array
    return None


def _integer_clause(arg: dict, clause: str) -> int | None:
    if clause not in arg:
        return None
    value = arg[clause]
    if _is_number(value) and not isinstance(value, Decimal128) and float(value) == int(value):
        return int(value)
    raise error(BAD_VALUE, f"The value for {clause} must be an integer value but was given "
                           f"type: {type_name(value)}")


def _push_sort_spec(spec: Any) -> Any:
    if _is_number(spec) and spec in (1, -1):
        return int(spec)
    if isinstance(spec, dict) and spec and all(
            _is_number(d) and d in (1, -1) for d in spec.values()):
        return spec
    raise error(BAD_VALUE, "The $sort is invalid: use 1/-1 to sort the whole element, or "
                           "{field:1/-1} to sort embedded fields")


def _sorted_elements(array: list, spec: Any) -> list:
    if isinstance(spec, int):
        return sorted(array, key=sort_key, reverse=spec < 0)
    # Elements that are not documents sort as if every field were missing.
    return sort_documents(array, spec)


def _op_add_to_set(doc: dict, path: str, arg: Any, now: Any) -> None:
    values = [arg]
    if isinstance(arg, dict) and next(iter(arg), None) == "$each":
        if len(arg) != 1:
            raise error(BAD_VALUE, f"Found unexpected fields after $each in $addToSet: {arg!r}")
        values = arg["$each"]
        if not isinstance(values, list):
            raise error(TYPE_MISMATCH, "The argument to $each in $addToSet must be an array but "
                                       f"it was of type {type_name(values)}")
    array = _array_at(doc, path, True, lambda cur: "Cannot apply $addToSet to non-array field. "
                      f"Field named '{path.rsplit('.', 1)[-1]}' has non-array type "
                      f"{type_name(cur)}", BAD_VALUE)
    for value in values:
        if not any(values_equal(existing, value) for existing in array):
            array.append(_copy(value))


def _non_array_pull(op: str) -> Callable[[Any], str]:
    return lambda cur: f"Cannot apply {op} to a non-array value"


def _op_pull(doc: dict, path: str, arg: Any, now: Any) -> None:
    array = _array_at(doc, path, False, _non_array_pull("$pull"), BAD_VALUE)
    if array is None:
        return
    remove = _pull_condition(arg)
    array[:] = [e for e in array if not remove(e)]


def _pull_condition(arg: Any) -> Callable[[Any], bool]:
    if isinstance(arg, dict) and is_operator_document(arg) and \
            next(iter(arg)) not in ("$and", "$or", "$nor"):
        # {$gte: 6}: the operators apply to each element as a value.
        match_value = compile_field_operators("v", arg)
        return lambda e: match_value({"v": e})
    if isinstance(arg, dict):
        # {score: 8}: a query each document element must match (not an exact equality).
        match_doc = compile_filter(arg)
        return lambda e: isinstance(e, dict) and match_doc(e)
    if hasattr(arg, "pattern") and hasattr(arg, "flags"):
        match_regex = compile_filter({"v": arg})
        return lambda e: match_regex({"v": e})
    return lambda e: values_equal(e, arg)


def _op_pull_all(doc: dict, path: str, arg: Any, now: Any) -> None:
    if not isinstance(arg, list):
        raise error(BAD_VALUE, f"$pullAll requires an array argument but was given a "
                               f"{type_name(arg)}")
    array = _array_at(doc, path, False, _non_array_pull("$pullAll"), BAD_VALUE)
    if array is not None:
        array[:] = [e for e in array if not any(values_equal(e, v) for v in arg)]


def _op_pop(doc: dict, path: str, arg: Any, now: Any) -> None:
    if not _is_number(arg) or arg not in (1, -1):
        raise error(FAILED_TO_PARSE, f"$pop expects 1 or -1, found: {arg!r}")
    array = _array_at(doc, path, False, lambda cur: f"Path '{path}' contains an element of "
                      f"non-array type '{type_name(cur)}'", TYPE_MISMATCH)
    if array:
        array.pop(0 if arg < 0 else -1)


_APPLIERS: dict[str, Callable[[dict, str, Any, Any], None]] = {
    "$set": _op_set,
    "$setOnInsert": _op_set,
    "$unset": _op_unset,
    "$inc": _numeric_op("$inc", "increment", lambda a, b: a + b, lambda arg: arg),
    "$mul": _numeric_op("$mul", "multiply", lambda a, b: a * b, _zero_like),
    "$min": _min_max(-1),
    "$max": _min_max(1),
    "$currentDate": _op_current_date,
    "$rename": _op_rename,
    "$push": _op_push,
    "$addToSet": _op_add_to_set,
    "$pull": _op_pull,
    "$pullAll": _op_pull_all,
    "$pop": _op_pop,
}


# --- upsert ----------------------------------------------------------------------------------

def upsert_seed(filter: dict | None) -> dict:
    """The document an upsert starts from: the filter's equality fields, dotted paths expanded."""
    seed: dict = {}
    seen: list[str] = []
    for path, value in equality_pairs(filter):
        if path.startswith("$"):
            continue
        for other in seen:
            if other == path:
                raise error(NOT_SINGLE_VALUE_FIELD, "cannot infer query fields to set, path "
                                                     f"'{path}' is matched twice")
            shorter, longer = sorted((path, other), key=len)
            if longer.startswith(shorter + "."):
                raise error(NOT_SINGLE_VALUE_FIELD, "cannot infer query fields to set, both "
                                                     f"paths '{shorter}' and '{longer}' are matched")
        seen.append(path)
        _check_path(path)
        _set_path(seed, path, _copy(value))
    return seed
