"""Variables ($$name): a command's `let`, an update statement's `c`, $$NOW and $$CLUSTER_TIME.

They are bound into the expressions that read them before any document is looked at:
"$$name" (and "$$name.path") becomes {$literal: value}, so the engine that evaluates an
expression per document needs no variable scope of its own. What differs per document
($$ROOT, $$CURRENT, $$REMOVE) is left to `evaluate`. Only expression contexts are bound: a
"$$x" string in a query filter outside $expr is a plain string, as in MongoDB; $literal is
never entered, and a $let/$map/$filter/$reduce variable of the same name hides the outer one
inside its scope.
"""
from __future__ import annotations

import datetime
from typing import Any

from bson.timestamp import Timestamp

from farts.db.aggregate import evaluate, field_path
from farts.db.errors import TYPE_MISMATCH, error
from farts.db.ordering import MISSING

# What is evaluated per document, never bound ahead.
_PER_DOCUMENT = frozenset({"ROOT", "CURRENT", "REMOVE"})
# Stages whose argument is (or holds) expressions, and the one holding a filter.
_EXPRESSION_STAGES = frozenset({"$addFields", "$set", "$project", "$replaceRoot", "$replaceWith",
                                "$group", "$sortByCount", "$bucket", "$bucketAuto"})
# Operators that define variables of their own: the names they define.
_SCOPES = {"$let": lambda a: list(a.get("vars") or {}) if isinstance(a.get("vars"), dict) else [],
           "$map": lambda a: [a.get("as") or "this"], "$filter": lambda a: [a.get("as") or "this"],
           "$reduce": lambda a: ["this", "value"]}


def check_name(name: Any) -> None:
    """A user variable name as mongod accepts it (Variables::validateNameForUserWrite)."""
    if name == "CURRENT":
        return
    if not isinstance(name, str) or not name:
        raise error(16866, "empty variable names are not allowed")
    if not ("a" <= name[0] <= "z" or not name[0].isascii()):
        raise error(16867, f"'{name}' starts with an invalid character for a user variable name")
    for c in name[1:]:
        if c.isascii() and not (c.isalnum() or c == "_"):
            raise error(16868, f"'{name}' contains an invalid character for a variable name: '{c}'")


def command_variables(now: datetime.datetime, *scopes: Any) -> dict:
    """$$NOW, $$CLUSTER_TIME and the user variables of each scope (a `let`, a statement's `c`),
    each one's expression evaluated once, with the variables defined before it in view."""
    seconds = int((now.replace(tzinfo=None) - datetime.datetime(1970, 1, 1)).total_seconds())
    variables: dict = {"NOW": now, "CLUSTER_TIME": Timestamp(seconds, 1)}
    for scope in scopes:
        if scope is None:
            continue
        if not isinstance(scope, dict):
            raise error(TYPE_MISMATCH, f"let must be an object, not {type(scope).__name__}")
        values = {}
        for name, expr in scope.items():
            check_name(name)
            values[name] = evaluate(bind_expression(expr, variables), {})
        variables.update(values)
    return variables


def bind_expression(expr: Any, variables: dict) -> Any:
    """expr with every variable of `variables` it reads replaced by its value."""
    if not variables:
        return expr
    if isinstance(expr, str):
        if not expr.startswith("$$"):
            return expr
        name, _, rest = expr[2:].partition(".")
        if name in _PER_DOCUMENT or name not in variables:
            return expr
        value = field_path(variables[name], rest.split(".")) if rest else variables[name]
        return "$$REMOVE" if value is MISSING else {"$literal": value}
    if isinstance(expr, list):
        return [bind_expression(e, variables) for e in expr]
    if isinstance(expr, dict):
        if len(expr) == 1:
            op, args = next(iter(expr.items()))
            if op == "$literal":
                return expr
            if op in _SCOPES and isinstance(args, dict):
                inner = {k: v for k, v in variables.items() if k not in _SCOPES[op](args)}
                bound = {}
                for key, value in args.items():
                    # $let's vars and $map's input are evaluated outside the new scope.
                    outside = key in ("vars", "input", "initialValue")
                    bound[key] = bind_expression(value, variables if outside else inner)
                return {op: bound}
        return {k: bind_expression(v, variables) for k, v in expr.items()}
    return expr


def filter_reads_variables(filter: Any) -> bool:
    """Whether the filter has an $expr (which may read $$NOW and the like)."""
    if not isinstance(filter, dict):
        return False
    for name, value in filter.items():
        if name == "$expr":
            return True
        if name in ("$and", "$or", "$nor") and isinstance(value, list):
            for sub in value:
                if filter_reads_variables(sub):
                    return True
    return False


def bind_filter(filter: Any, variables: dict) -> Any:
    """A query filter with its $expr parts bound (the rest of a filter holds no expressions)."""
    if not variables or not isinstance(filter, dict):
        return filter
    out = {}
    for name, value in filter.items():
        if name == "$expr":
            value = bind_expression(value, variables)
        elif name in ("$and", "$or", "$nor") and isinstance(value, list):
            value = [bind_filter(v, variables) for v in value]
        out[name] = value
    return out


def mentions_variables(value: Any) -> bool:
    """Whether a "$$..." string appears anywhere in value (a projection, say)."""
    if isinstance(value, str):
        return value.startswith("$$")
    if isinstance(value, dict):
        return any(mentions_variables(v) for v in value.values())
    if isinstance(value, list):
        return any(mentions_variables(v) for v in value)
    return False


def bind_projection(projection: Any, variables: dict) -> Any:
    """A find projection with the variables bound into its expressions ($elemMatch holds a query)."""
    if not variables or not isinstance(projection, dict):
        return projection
    out = {}
    for name, value in projection.items():
        if isinstance(value, dict) and "$elemMatch" in value:
            out[name] = value
        elif isinstance(value, dict) and not next(iter(value), "$").startswith("$"):
            out[name] = bind_projection(value, variables)
        else:
            out[name] = bind_expression(value, variables)
    return out


def bind_pipeline(pipeline: Any, variables: dict) -> Any:
    """An aggregation pipeline with the variables bound in each stage that evaluates expressions."""
    if not variables or not isinstance(pipeline, list):
        return pipeline
    out = []
    for stage in pipeline:
        if isinstance(stage, dict) and len(stage) == 1:
            name, arg = next(iter(stage.items()))
            if name in _EXPRESSION_STAGES:
                stage = {name: bind_expression(arg, variables)}
            elif name == "$match":
                stage = {name: bind_filter(arg, variables)}
            elif name == "$facet" and isinstance(arg, dict):
                stage = {name: {k: bind_pipeline(v, variables) for k, v in arg.items()}}
        out.append(stage)
    return out
