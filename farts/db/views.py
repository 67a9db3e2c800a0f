"""Views: a catalog entry whose options are ``viewOn`` (a collection or view of the same
database) and ``pipeline``. A read of a view is an aggregation of the collection under it
with the views' pipelines first; writes and indexes are refused as MongoDB refuses them
(166 CommandNotSupportedOnView).
"""
from __future__ import annotations

from farts.db.aggregate import run_pipeline
from farts.db.errors import BAD_VALUE, INVALID_OPTIONS, TYPE_MISMATCH, MongoError, error

MAX_DEPTH = 20   # MongoDB's limit on views over views
NOT_ON_VIEW = 166
# Commands whose target must be a collection.
WRITES = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify", "createIndexes",
                    "dropIndexes", "listIndexes"})


def is_view(coll) -> bool:
    return coll is not None and "viewOn" in coll.options


def db_of(ns: str) -> str:
    """The internal database prefix of a namespace ("tenant$db."): the database name
    follows the last "$" and ends at the first "." after it (a database name holds
    neither), whatever the tenant id holds (a "." too: "acme.eu$shop.items")."""
    return ns[:ns.index(".", ns.rfind("$") + 1) + 1]


def resolve(catalog: dict, ns: str) -> tuple[str, list] | None:
    """(the collection under the view, the pipeline to run over it), or None for a
    namespace that is not a view."""
    coll = catalog.get(ns)
    if not is_view(coll):
        return None
    pipeline: list = []
    for _ in range(MAX_DEPTH):
        pipeline = list(coll.options.get("pipeline") or []) + pipeline
        ns = db_of(ns) + coll.options["viewOn"]
        coll = catalog.get(ns)
        if not is_view(coll):
            return ns, pipeline
    raise error(165, f"View depth too deep or view cycle detected; maximum depth is {MAX_DEPTH}",
                "ViewDepthLimitExceeded")


def not_on_view(display: str) -> MongoError:
    return error(NOT_ON_VIEW, f"Namespace {display} is a view, not a collection", "CommandNotSupportedOnView")


def check_definition(catalog: dict, ns: str, view_on, pipeline, display) -> dict:
    """The options of a view of ns over view_on, after the checks MongoDB makes."""
    if not isinstance(view_on, str) or not view_on:
        raise error(TYPE_MISMATCH, "'viewOn' must be a non-empty string", "TypeMismatch")
    if view_on.startswith("system.") or "$" in view_on or "\0" in view_on:
        raise error(73, f"invalid namespace for viewOn: {view_on!r}", "InvalidNamespace")
    if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
        raise error(TYPE_MISMATCH, "'pipeline' must be an array of objects", "TypeMismatch")
    for stage in pipeline:
        name = next(iter(stage), None)
        if name in ("$out", "$merge", "$documents", "$currentOp"):
            raise error(157, f"{name} cannot be used in a view definition", "OptionNotSupportedOnView")
    run_pipeline([], pipeline)   # a stage that does not parse is refused now, not at the first read
    seen, on = {ns}, db_of(ns) + view_on
    for _ in range(MAX_DEPTH):
        if on in seen:
            raise error(160, f"View cycle detected: {display(ns)} -> {display(on)}", "GraphContainsCycle")
        seen.add(on)
        coll = catalog.get(on)
        if not is_view(coll):
            return {"viewOn": view_on, "pipeline": pipeline}
        on = db_of(on) + coll.options["viewOn"]
    raise error(165, f"View depth too deep; maximum depth is {MAX_DEPTH}", "ViewDepthLimitExceeded")


def check_options(options: dict) -> None:
    """create: a view takes no collection options (and a collection no pipeline)."""
    if "viewOn" in options:
        for key in ("validator", "validationLevel", "validationAction", "capped", "clusteredIndex"):
            if key in options:
                raise error(INVALID_OPTIONS, f"option not supported on a view: {key}")
    elif "pipeline" in options:
        raise error(BAD_VALUE, "'pipeline' requires 'viewOn' to also be specified")


def find_pipeline(body: dict) -> list:
    """The stages a find on a view adds after the view's pipeline."""
    stages: list = []
    if body.get("filter"):
        stages.append({"$match": body["filter"]})
    if body.get("sort"):
        stages.append({"$sort": body["sort"]})
    if body.get("skip"):
        stages.append({"$skip": body["skip"]})
    if body.get("limit"):
        stages.append({"$limit": abs(body["limit"])})
    if body.get("projection"):
        stages.append({"$project": body["projection"]})
    return stages
