"""Projections: the fields a find (or an aggregation $project) returns.

A projection is either inclusion (listed fields, plus computed ones, in document order) or
exclusion (everything but the listed fields); `_id` is kept unless excluded and may be
excluded in either mode. Dotted paths reach into sub-documents and into the documents of
arrays. find additionally knows the {$slice: n | [skip, limit]} and {$elemMatch: filter}
projection operators.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson.decimal128 import Decimal128

from farts.db.errors import BAD_VALUE, error
from farts.db.ordering import MISSING
from farts.db.query import compile_filter, is_operator_document

_INCLUDE = "include"
_EXCLUDE = "exclude"


class _Leaf:
    """What happens at the end of one projected path."""

    __slots__ = ("kind", "arg")

    def __init__(self, kind: str, arg: Any = None):
        self.kind = kind  # include | exclude | computed | slice | elemMatch
        self.arg = arg


def project(doc: dict, projection: dict | None, *, in_pipeline: bool = False,
            evaluate: Callable[[Any, dict], Any] | None = None) -> dict:
    """The document as the projection shapes it (a new dict; doc is not modified)."""
    if not projection:
        return doc
    return compile_projection(projection, in_pipeline=in_pipeline, evaluate=evaluate)(doc)


def compile_projection(projection: dict, *, in_pipeline: bool = False,
                       evaluate: Callable[[Any, dict], Any] | None = None
                       ) -> Callable[[dict], dict]:
    """Parse once, apply to many documents."""
    if not isinstance(projection, dict):
        raise error(BAD_VALUE, "projection must be an object")
    if evaluate is None:
        # Imported here: aggregate imports this module for its $project stage.
        from farts.db.aggregate import evaluate
    leaves = _flatten(projection, "", in_pipeline)
    if in_pipeline and not leaves:
        raise error(51272, "Invalid $project :: caused by :: projection specification must have "
                           "at least one field")
    mode = None
    id_leaf = None
    for path, leaf in leaves:
        if path == "_id":
            id_leaf = leaf
            continue
        kind = {"include": _INCLUDE, "computed": _INCLUDE, "elemMatch": _INCLUDE,
                "exclude": _EXCLUDE}.get(leaf.kind)
        if kind is None:
            continue
        if mode is None:
            mode = kind
        elif mode != kind:
            if kind == _EXCLUDE:
                raise error(31254, f"Cannot do exclusion on field {path} in inclusion projection")
            raise error(31253, f"Cannot do inclusion on field {path} in exclusion projection")
    if mode is None:
        # Only _id (and/or $slice) listed: {_id: 0} is an exclusion, {_id: 1} an inclusion.
        mode = _INCLUDE if id_leaf is not None and id_leaf.kind != "exclude" and not any(
            leaf.kind == "slice" for _, leaf in leaves) else _EXCLUDE
    if mode == _EXCLUDE:
        # {_id: 1} next to exclusions only confirms the default: keep _id.
        leaves = [(p, leaf) for p, leaf in leaves if not (p == "_id" and leaf.kind != "exclude")]
    tree = _tree(leaves)
    keep_id = id_leaf is None or id_leaf.kind != "exclude"

    def apply(doc: dict) -> dict:
        if mode == _EXCLUDE:
            return _apply_exclusion(doc, tree, evaluate, doc)
        out = _apply_inclusion(doc, tree, evaluate, doc)
        if keep_id and id_leaf is None and "_id" in doc:
            return {"_id": doc["_id"], **out}
        if "_id" in out:
            return {"_id": out.pop("_id"), **out}
        return out
    return apply


def _flatten(spec: dict, prefix: str, in_pipeline: bool) -> list[tuple[str, _Leaf]]:
    leaves: list[tuple[str, _Leaf]] = []
    for name, value in spec.items():
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise error(BAD_VALUE if not in_pipeline else 16410,
                        f"FieldPath field names may not start with '$': {name!r}")
        path = prefix + name
        if any(part.startswith("$") or not part for part in path.split(".")):
            raise error(BAD_VALUE, f"positional and $-prefixed projection paths ({path!r}) are "
                                   "not supported by this server")
        if isinstance(value, bool) or isinstance(value, (int, float, Decimal128)):
            truthy = bool(value.to_decimal() if isinstance(value, Decimal128) else value)
            leaves.append((path, _Leaf("include" if truthy else "exclude")))
        elif isinstance(value, dict) and is_operator_document(value):
            leaves.append((path, _operator_leaf(path, value, in_pipeline)))
        elif isinstance(value, dict):
            if not value:
                raise error(51270, "An empty sub-projection is not a valid value. Found empty "
                                   f"object at path {path}")
            leaves.extend(_flatten(value, path + ".", in_pipeline))
        else:
            leaves.append((path, _Leaf("computed", value)))
    paths = [p for p, _ in leaves]
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            shorter, longer = sorted((a, b), key=len)
            if shorter == longer or longer.startswith(shorter + "."):
                raise error(31249 if shorter != longer else 31250,
                            f"Path collision at {longer} remaining portion "
                            f"{longer[len(shorter) + 1:] or longer}")
    return leaves


def _operator_leaf(path: str, value: dict, in_pipeline: bool) -> _Leaf:
    op = next(iter(value))
    if not in_pipeline and op == "$slice" and len(value) == 1:
        return _Leaf("slice", _slice_args(value["$slice"]))
    if not in_pipeline and op == "$elemMatch" and len(value) == 1:
        if "." in path:
            raise error(BAD_VALUE, f"Cannot use $elemMatch projection on a nested field: {path}")
        if not isinstance(value["$elemMatch"], dict):
            raise error(BAD_VALUE, "elemMatch: Invalid argument, object required.")
        return _Leaf("elemMatch", compile_filter(value["$elemMatch"]))
    if op == "$meta":
        raise error(BAD_VALUE, "$meta projections are not supported by this server")
    return _Leaf("computed", value)


def _slice_args(arg: Any) -> tuple[int, int | None]:
    if _is_int(arg):
        return int(arg), None
    if isinstance(arg, list) and len(arg) == 2 and all(_is_int(x) for x in arg):
        if int(arg[1]) <= 0:
            raise error(BAD_VALUE, f"$slice limit must be positive, not {arg[1]!r}")
        return int(arg[0]), int(arg[1])
    raise error(BAD_VALUE, "$slice only supports numbers and [skip, limit] arrays")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) == int(x)


def _tree(leaves: list[tuple[str, _Leaf]]) -> dict:
    tree: dict = {}
    for path, leaf in leaves:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return tree


def _slice(value: Any, args: tuple[int, int | None]) -> Any:
    if not isinstance(value, list):
        return value
    skip, limit = args
    if limit is None:
        return value[:skip] if skip >= 0 else value[skip:]
    start = skip if skip >= 0 else max(len(value) + skip, 0)
    return value[start:start + limit]


def _apply_inclusion(value: dict, tree: dict, evaluate: Callable, root: dict) -> dict:
    out: dict = {}
    for name, current in value.items():
        node = tree.get(name)
        if node is None:
            continue
        if isinstance(node, dict):
            sub = _include_into(current, node, evaluate, root)
            if sub is not MISSING:
                out[name] = sub
        elif node.kind == "include":
            out[name] = current
        elif node.kind == "slice":
            out[name] = _slice(current, node.arg)
        elif node.kind == "elemMatch":
            if isinstance(current, list):
                for element in current:
                    if isinstance(element, dict) and node.arg(element):
                        out[name] = [element]
                        break
    # Computed fields come after the included ones, in projection order.
    for name, node in tree.items():
        if isinstance(node, _Leaf) and node.kind == "computed":
            result = evaluate(node.arg, root)
            if result is not MISSING:
                out[name] = result
        elif isinstance(node, dict) and _has_computed(node) and name not in value:
            sub = _apply_inclusion({}, node, evaluate, root)
            if sub:
                out[name] = sub
    return out


def _has_computed(tree: dict) -> bool:
    return any(_has_computed(n) if isinstance(n, dict) else n.kind == "computed"
               for n in tree.values())


def _include_into(current: Any, node: dict, evaluate: Callable, root: dict) -> Any:
    if isinstance(current, dict):
        return _apply_inclusion(current, node, evaluate, root)
    if isinstance(current, list):
        return [sub for sub in (_include_into(e, node, evaluate, root) for e in current
                                if isinstance(e, (dict, list))) if sub is not MISSING]
    if _has_computed(node):
        return _apply_inclusion({}, node, evaluate, root)
    return MISSING


def _apply_exclusion(value: dict, tree: dict, evaluate: Callable, root: dict) -> dict:
    out: dict = {}
    for name, current in value.items():
        node = tree.get(name)
        if node is None:
            out[name] = current
        elif isinstance(node, dict):
            out[name] = _exclude_into(current, node, evaluate, root)
        elif node.kind == "slice":
            out[name] = _slice(current, node.arg)
    return out


def _exclude_into(current: Any, node: dict, evaluate: Callable, root: dict) -> Any:
    if isinstance(current, dict):
        return _apply_exclusion(current, node, evaluate, root)
    if isinstance(current, list):
        return [_exclude_into(e, node, evaluate, root) for e in current]
    return current
