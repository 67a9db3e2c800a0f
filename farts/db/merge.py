"""How replicated operations merge into a document: pure functions, no I/O, no clock.

A replicated document is a CRDT: every node applies the same set of operations and ends
with the same document, whatever order they arrived in and however often. This module
is the whole of the rules; the replication protocol (``farts.db.replica``) only decides
which operations a node has and ships the missing ones.

Operations and stamps
---------------------
Every operation carries the stamp of the write that made it on its origin:
``Stamp(hlc, origin, seq)``, ordered by ``(hlc, origin)`` (an origin's HLC never repeats,
so the order is total and the same on every node; ``seq`` is the origin's oplog sequence,
used to tell what an operation's origin had seen). The operation is the *effect* of the
write as its origin computed it (``effect_of`` turns a MongoDB update into one):

=====================  ==============================================================
``{"op": "i", "doc"}``  insert; ``doc`` has ``_id``. An upsert that inserted is one too,
                        with ``u``: its commuting field operations (``inc``, ``add``,
                        ``push``), applied after the fields (``upsert_effect``)
``{"op": "r", "doc"}``  replacement of the whole document (``_id`` kept)
``{"op": "d"}``         delete
``{"op": "n"}``         no effect (a record from before replication: it only moves its
                        origin's position)
``{"op": "c", "c"}``    a catalog operation on the record's namespace (``CATALOG_TABLE``)
``{"op": "u", ...}``    field operations: ``set`` {path: value}, ``unset`` [path],
                        ``inc`` {path: number}, ``push`` {path: [values]},
                        ``add`` {path: [values]} ($addToSet), ``pull`` {path: [values]}
                        with ``ctx`` {origin: seq}: the origin's version vector when it
                        pulled (the elements it had seen)
=====================  ==============================================================

The merge: a replay in stamp order
----------------------------------
The document is, by definition, what you get by applying every operation it has
received in stamp order to the empty state (the ``TABLE`` below says what one operation
does to a document). That definition is what makes it independent of arrival order.
It is computed incrementally: an operation that comes after every one already applied
(the usual case) is applied to the current value; one that comes earlier is put in its
place and the pending operations are replayed from the last compacted base. What the
order gives for each rule:

- ``$set``/``$unset``/replacement: last writer wins per field (top-level or dotted), by
  (HLC, origin). A write to ``a`` replaces ``a.b`` written before it; ``a.b`` written
  after ``a`` lands on top of it.
- ``$inc``: increments add up in stamp order, so none is lost under concurrency; a
  ``$set`` of the field with a later stamp resets the base and only the increments
  newer than it count on top. An increment of a non-number (a concurrent ``$set`` of a
  string) does nothing.
- ``$push``: values are appended in (HLC, origin) order.
- ``$addToSet``/``$pull``: add-wins (an observed-remove set): a ``$pull`` removes an
  element only if its origin had seen (``ctx``) every operation that added it, so a
  value added concurrently with a ``$pull`` of it stays (also when it was there already:
  the ``$addToSet`` counts as one more add of that element).
- Concurrent inserts of the same ``_id``: the later one sets its fields on the earlier
  one (field by field); fields only the earlier one has stay.
- Deletes: the delete is a tombstone at its stamp. An update never creates a document
  (not on its origin, not by replication): an update concurrent with a delete has no
  effect when it comes after the delete in stamp order, and is wiped by the delete when
  it comes before; so *the delete wins against concurrent updates*. An insert or a
  replacement after the delete (in stamp order) creates the document again, with its
  own fields only. This is last-writer-wins on the document's existence, where only
  inserts and replacements (and deletes) write existence.
- Catalog operations (``CATALOG_TABLE``): create/drop of a collection, create/drop of an
  index: last writer wins per collection and per index name. A drop of a collection (or
  of its database) is a delete of each of its documents at the drop's stamp: a write
  stamped before the drop is wiped by it, wherever and whenever it arrives (*the drop wins
  against concurrent writes stamped before it*); one stamped after it lands in the
  collection again (which then exists), as do indexes created after it.

Metadata
--------
The state of one document (``RDoc``, a BSON-encodable dict):

- ``v``: the visible document (``None`` when it does not exist),
- ``m``: its per-field metadata: ``w`` {path: stamp of the write that set it} and ``e``
  {path: [[stamps of the operations that added each element]]} for arrays that ``$push``,
  ``$addToSet`` or ``$pull`` touched (what a ``$pull`` tests against its ``ctx``; an
  ``$addToSet`` of a value already there adds its stamp to that element),
- ``o``: the pending operations, sorted, and ``b``: the base they replay from (both
  absent when nothing is pending),
- ``t``: the compaction horizon (HLC): operations at or below it are folded into ``v``.

Compaction (``compact(state, stable)``) folds the pending operations at or below the
stable time into the base, forgets element stamps that are no longer needed and drops
a deleted document's tombstone altogether. ``stable`` must be a time below which no
operation can still arrive *and* which every operation still to arrive had seen (the
replica computes it from every node's reports); an operation that still comes in at or
below the horizon is applied on top and reported as ``late`` (it cannot be placed in
order any more).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from bson.int64 import Int64

from farts.db.errors import MongoError
from farts.db.ordering import MISSING, values_equal
from farts.db.update import _arithmetic, _copy, _is_number, _op_unset

OPS = ("i", "r", "u", "d", "n", "c")
FIELD_OPS = ("set", "unset", "inc", "push", "add", "pull")


class Stamp(NamedTuple):
    hlc: int
    origin: str
    seq: int

    def key(self) -> tuple[int, str]:
        return self.hlc, self.origin

    def to_bson(self) -> list:
        return [Int64(self.hlc), self.origin, Int64(self.seq)]

    @staticmethod
    def of(value: Any) -> Stamp:
        hlc, origin, seq = value
        return Stamp(int(hlc), origin, int(seq))


COMPACTED = Stamp(0, "", 0)   # an element added before the compaction horizon: seen by all


class Applied(NamedTuple):
    state: dict | None
    outcome: str      # one of OUTCOMES


OUTCOMES = ("applied", "replayed", "duplicate", "late", "dropped")

# ---- what one operation does to a document ------------------------------------------------
#
# (the document exists?, operation) -> rule. A rule takes (doc, meta, stamp, op) and returns
# the new (doc, meta); it may change them in place.


def _create(doc, meta, stamp, op):
    new = {"_id": op["doc"]["_id"]}
    for k, v in op["doc"].items():
        if k != "_id":
            new[k] = _copy(v)
    fields = {k: stamp for k in new if k != "_id"}
    return new, {"w": {"": stamp} if op["op"] == "r" else fields, "e": {}}


def _merge_fields(doc, meta, stamp, op):
    for k, v in op["doc"].items():
        if k != "_id":
            _set(doc, meta, stamp, k, v)
    return doc, meta


def _insert(doc, meta, stamp, op):
    doc, meta = (_create if doc is None else _merge_fields)(doc, meta, stamp, op)
    if op.get("u"):
        _update(doc, meta, stamp, {"op": "u", **op["u"]})
    return doc, meta


def _replace(doc, meta, stamp, op):
    return _create(doc, meta, stamp, {"op": "r", "doc": {**op["doc"], "_id": doc["_id"]}})


def _delete(doc, meta, stamp, op):
    return None, {"w": {}, "e": {}}


def _nothing(doc, meta, stamp, op):
    return doc, meta


def _update(doc, meta, stamp, op):
    ctx = op.get("ctx") or {}
    for name in FIELD_OPS:
        arg = op.get(name) or {}
        for path in sorted(arg):
            FIELD_TABLE[name](doc, meta, stamp, path, arg[path] if isinstance(arg, dict) else None, ctx)
    return doc, meta


TABLE: dict[tuple[bool, str], tuple[Callable, str]] = {
    (False, "i"): (_insert, "created from the insert's fields, then an upsert's field operations"),
    (True, "i"): (_insert, "each inserted field is set (concurrent inserts merge field by field), then an "
                           "upsert's field operations (concurrent upserts of a counter add up)"),
    (False, "r"): (_create, "created from the replacement"),
    (True, "r"): (_replace, "every field replaced; fields it lacks are gone; _id kept"),
    (False, "u"): (_nothing, "no effect: an update never creates a document (a delete before it wins)"),
    (True, "u"): (_update, "the field operations, in FIELD_TABLE order, paths sorted"),
    (False, "d"): (_nothing, "stays deleted"),
    (True, "d"): (_delete, "deleted: a tombstone at the delete's stamp; metadata cleared"),
    (False, "n"): (_nothing, "nothing (the record only moves its origin's position)"),
    (True, "n"): (_nothing, "nothing (the record only moves its origin's position)"),
    (False, "c"): (_nothing, "nothing to the document: a catalog operation (CATALOG_TABLE)"),
    (True, "c"): (_nothing, "nothing to the document: a catalog operation (CATALOG_TABLE)"),
}

# ---- field operations -----------------------------------------------------------------------


def _parent(doc: dict, path: str, force: bool):
    """(container, last part) for path. Missing documents on the way are created; a value in
    the way (not a document or array) makes the path unusable (None) unless ``force`` (a
    ``$set``, the newest writer of the path), which replaces it with a document."""
    parts = path.split(".")
    container: Any = doc
    for depth, part in enumerate(parts[:-1]):
        if isinstance(container, list) and part.isdigit():
            i = int(part)
            while len(container) <= i:
                container.append(None)
            child = container[i]
            if not isinstance(child, (dict, list)):
                if child is not None and not force:
                    return None
                child = container[i] = {}
        elif isinstance(container, dict):
            child = container.get(part, MISSING)
            if not isinstance(child, (dict, list)):
                if child is not MISSING and not force:
                    return None
                child = container[part] = {}
            elif isinstance(child, list) and not parts[depth + 1].isdigit():
                if not force:
                    return None
                child = container[part] = {}
        else:
            return None
        container = child
    last = parts[-1]
    if isinstance(container, list) and not last.isdigit():
        return None
    return container, last


def _get(container, last):
    if isinstance(container, dict):
        return container.get(last, MISSING)
    i = int(last)
    return container[i] if i < len(container) else MISSING


def _put(container, last, value) -> None:
    if isinstance(container, dict):
        container[last] = value
        return
    i = int(last)
    while len(container) <= i:
        container.append(None)
    container[i] = value


def _under(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + ".")


def _forget(meta: dict, path: str) -> None:
    """A write of path replaces whatever was below it: its metadata goes too."""
    for kind in ("w", "e"):
        for p in [p for p in meta[kind] if _under(p, path)]:
            del meta[kind][p]


def _set(doc, meta, stamp, path, value, ctx=None) -> None:
    found = _parent(doc, path, force=True)
    if found is None:
        return
    _forget(meta, path)
    _put(*found, _copy(value))
    meta["w"][path] = stamp


def _unset(doc, meta, stamp, path, _arg=None, ctx=None) -> None:
    _forget(meta, path)
    _op_unset(doc, path, None, None)   # as MongoDB: an array element is nulled, not removed


def _add_number(current, delta):
    try:
        return _arithmetic("$inc", current, delta, lambda a, b: a + b)
    except MongoError:   # int64 overflow: this increment is skipped (the same on every node)
        return current


def _inc(doc, meta, stamp, path, delta, ctx=None) -> None:
    found = _parent(doc, path, force=False)
    if found is None:
        return
    current = _get(*found)
    if current is MISSING:
        _put(*found, delta)
    elif _is_number(current):
        _put(*found, _add_number(current, delta))
    # anything else: a later $set made it a non-number; the increment does nothing


def _element_tags(meta, path: str, n: int) -> list[list[Stamp]]:
    """Per element of the array at path, the stamps of the operations that added it."""
    tags = meta["e"].get(path)
    if tags is not None and len(tags) == n:
        return [list(t) for t in tags]
    writer = max((p for p in meta["w"] if _under(path, p)), key=len, default=None)
    return [[meta["w"][writer] if writer is not None else COMPACTED] for _ in range(n)]


def _array(doc, meta, path):
    found = _parent(doc, path, force=False)
    if found is None:
        return None
    current = _get(*found)
    if current is MISSING:
        current = []
        _put(*found, current)
    return current if isinstance(current, list) else None


def _push(doc, meta, stamp, path, values, ctx=None, dedupe=False) -> None:
    array = _array(doc, meta, path)
    if array is None:
        return
    tags = _element_tags(meta, path, len(array))
    for v in values:
        if dedupe:
            at = next((i for i, x in enumerate(array) if values_equal(x, v)), None)
            if at is not None:   # there already: one more add of it (a concurrent $pull leaves it)
                tags[at].append(stamp)
                continue
        array.append(_copy(v))
        tags.append([stamp])
    meta["e"][path] = tags


def _add(doc, meta, stamp, path, values, ctx=None) -> None:
    _push(doc, meta, stamp, path, values, dedupe=True)


def seen(stamp: Stamp, ctx: dict) -> bool:
    """Whether the origin of a $pull with this version vector had seen the element's add."""
    return stamp == COMPACTED or ctx.get(stamp.origin, 0) >= stamp.seq


def _pull(doc, meta, stamp, path, values, ctx=None) -> None:
    found = _parent(doc, path, force=False)
    if found is None:
        return
    array = _get(*found)
    if not isinstance(array, list):
        return
    keep = []
    for x, tags in zip(array, _element_tags(meta, path, len(array)), strict=True):
        if any(values_equal(x, v) for v in values):
            tags = [t for t in tags if not seen(t, ctx)]   # an add it had not seen keeps it
        if tags:
            keep.append((x, tags))
    array[:] = [x for x, _ in keep]
    meta["e"][path] = [t for _, t in keep]


FIELD_TABLE: dict[str, Callable] = {
    "set": _set,      # last writer wins: the value and its stamp replace what was at and below path
    "unset": _unset,  # the same, removing the field
    "inc": _inc,      # adds to a number; a missing field starts at 0; a non-number is left alone
    "push": _push,    # appends (duplicates kept); a non-array is left alone
    "add": _add,      # appends the values not already there; each element remembers its adders
    "pull": _pull,    # removes equal elements whose adders the pull's origin had all seen (add wins)
}


def apply_one(doc: dict | None, meta: dict, stamp: Stamp, op: dict) -> tuple[dict | None, dict]:
    """One operation on one document: the TABLE row for (exists, op)."""
    rule, _ = TABLE[(doc is not None, op["op"])]
    return rule(doc, meta, stamp, op)


# ---- the replicated document ----------------------------------------------------------------


def empty() -> dict:
    return {"v": None, "m": {"w": {}, "e": {}}, "t": Int64(0)}


def visible(state: dict | None) -> dict | None:
    return None if state is None else state["v"]


def _decode_meta(m: dict) -> dict:
    return {"w": {p: Stamp.of(s) for p, s in m["w"].items()},
            "e": {p: [[Stamp.of(s) for s in tags] for tags in ss] for p, ss in m["e"].items()}}


def _encode_meta(m: dict) -> dict:
    return {"w": {p: s.to_bson() for p, s in m["w"].items()},
            "e": {p: [[s.to_bson() for s in tags] for tags in ss] for p, ss in m["e"].items()}}


def _replay(base: dict, ops: list) -> tuple[dict | None, dict]:
    doc, meta = _copy(base["v"]), _decode_meta(base["m"])
    for stamp, op in ops:
        doc, meta = apply_one(doc, meta, Stamp.of(stamp), op)
    return doc, meta


def apply(state: dict | None, stamp: Stamp, op: dict, owned: bool = False) -> Applied:
    """The document's state after one replicated operation (``state`` is left untouched,
    unless ``owned``: the caller decoded it for this call; ``op`` is kept by reference in
    the result and never changed).

    Arrival (stored state, incoming stamp) -> what happens:

    ==================================  ==========================================================
    same (origin, seq) already pending  ``duplicate``: nothing changes
    after every pending operation       ``applied``: on the current value, appended to the pending
    among the pending operations        ``replayed``: put in its place, replayed from the base
    at or below the compaction horizon  ``late``: applied on top (it can no longer be ordered)
    ==================================  ==========================================================
    """
    state = empty() if state is None else state if owned else _copy(state)
    ops = state.get("o", [])
    key = stamp.key()
    for s, _ in ops:
        if s[1] == stamp.origin and int(s[2]) == stamp.seq:
            return Applied(state, "duplicate")
    if stamp.hlc <= state["t"]:
        # Below the horizon: it can no longer be put in order. It goes on the base, as if it
        # had come right at the horizon, and is reported.
        if ops:
            doc, meta = _replay(state["b"], [[stamp.to_bson(), op]])
            state["b"] = {"v": doc, "m": _encode_meta(meta)}
            doc, meta = _replay(state["b"], ops)
        else:
            doc, meta = apply_one(state["v"], _decode_meta(state["m"]), stamp, op)
        state["v"], state["m"] = doc, _encode_meta(meta)
        return Applied(state, "late")
    if not ops or Stamp.of(ops[-1][0]).key() < key:
        if not ops:
            state["b"] = {"v": _copy(state["v"]), "m": state["m"]}
        doc, meta = apply_one(state["v"], _decode_meta(state["m"]), stamp, op)
        state["o"] = ops + [[stamp.to_bson(), op]]
        state["v"], state["m"] = doc, _encode_meta(meta)
        return Applied(state, "applied")
    at = next(i for i, (s, _) in enumerate(ops) if Stamp.of(s).key() > key)
    ops.insert(at, [stamp.to_bson(), op])
    state["o"] = ops
    doc, meta = _replay(state["b"], ops)
    state["v"], state["m"] = doc, _encode_meta(meta)
    return Applied(state, "replayed")


def compact(state: dict | None, stable: int) -> dict | None:
    """Folds what is at or below ``stable`` (an HLC) into the document; None when nothing is
    left (a deleted document whose tombstone every node has passed)."""
    if state is None:
        return None
    state = _copy(state)
    ops = state.get("o", [])
    folded = [o for o in ops if int(o[0][0]) <= stable]
    rest = ops[len(folded):]
    if folded and rest:
        doc, meta = _replay(state["b"], folded)
        state["b"] = {"v": doc, "m": _encode_meta(meta)}
    state["o"] = rest
    if not rest:
        state.pop("o", None)
        state.pop("b", None)
        # Nothing pending: every operation still to come had seen what is below stable, so the
        # stamps there are no longer needed to tell what a $pull saw.
        meta = _decode_meta(state["m"])
        meta["w"] = {p: s for p, s in meta["w"].items() if s.hlc > stable}
        for p, elements in list(meta["e"].items()):
            elements = [sorted({COMPACTED if s.hlc <= stable else s for s in tags}) for tags in elements]
            writer = max((w for w in meta["w"] if _under(p, w)), key=len, default=None)
            if all(tags == [COMPACTED] for tags in elements) and writer is None:
                del meta["e"][p]
            else:
                meta["e"][p] = elements
        state["m"] = _encode_meta(meta)
    state["t"] = Int64(max(int(state["t"]), stable))
    if state["v"] is None and not rest:
        return None
    return state


# ---- the catalog: collections, indexes, drops ----------------------------------------------
#
# A catalog operation is a record {"op": "c", "c": kind, ...} on a namespace (a collection;
# for dropDatabase the database's prefix "tenant$db."). A namespace's catalog state is a set
# of last-writer-wins registers, each [stamp, value]:
#   "x": [stamp, exists]               the collection's existence (create, createIndex: yes; drop: no)
#   "o": [stamp, options]              its options: validator, view definition (create, collMod)
#   "i": {name: [stamp, spec or None]} each index name (createIndex: its spec; dropIndex: None)
# and every collection and database has a *drop floor*: the stamp of its latest drop. A drop
# deletes every document at its stamp, so (the document rule for deletes) only what is stamped
# after it counts: the floor makes that hold in every arrival order.

CATALOG_KINDS = ("create", "drop", "createIndex", "dropIndex", "dropDatabase", "collMod")

CATALOG_TABLE: dict[str, str] = {
    "create": "existence := (s, yes) and options := (s, options), each if s is later than the register's stamp",
    "collMod": "options := (s, options) if s is later (validator, validation level and action, a view's "
               "definition: the later collMod or create wins as a whole)",
    "createIndex": "existence := (s, yes) and index[name] := (s, spec), each if s is later (a concurrent "
                   "createIndex of that name with another spec: the later stamp's spec, rebuilt everywhere)",
    "dropIndex": "index[name] := (s, none) if s is later",
    "drop": "existence := (s, no) if later; the collection's floor := max(floor, s); every document keeps "
            "only its operations stamped after s (replayed from nothing: drop_before)",
    "dropDatabase": "the database's floor := max(floor, s); each of its collections as by a drop at s",
    "(document operation)": "stamped below its collection's or database's floor: discarded (below), the drop "
                            "wipes it in every order; otherwise the document rules (TABLE)",
    "(the result)": "a collection exists when its existence register says yes with a stamp above the floor, "
                    "or it holds a document (or tombstone) written after the floor, or it existed and no drop "
                    "came; its indexes: the registers with a spec stamped above the floor, in stamp order; its "
                    "options: the options register's if stamped above the floor, else {}",
}


def _later(register, stamp: Stamp) -> bool:
    return register is None or Stamp.of(register[0]).key() < stamp.key()


def catalog_apply(state: dict | None, stamp: Stamp, op: dict) -> dict:
    """A namespace's catalog state after one catalog operation (the registers of
    ``CATALOG_TABLE``; a drop's floor is kept by the caller). Commutative and idempotent."""
    state = {"x": None, "i": {}} if state is None else _copy(state)
    kind = op["c"]
    if kind in ("create", "createIndex", "drop") and _later(state["x"], stamp):
        state["x"] = [stamp.to_bson(), kind != "drop"]
    if kind in ("create", "collMod") and _later(state.get("o"), stamp):
        state["o"] = [stamp.to_bson(), _copy(op.get("options") or {})]
    if kind == "createIndex" and _later(state["i"].get(op["index"]["name"]), stamp):
        state["i"][op["index"]["name"]] = [stamp.to_bson(), _copy(op["index"])]
    elif kind == "dropIndex" and _later(state["i"].get(op["name"]), stamp):
        state["i"][op["name"]] = [stamp.to_bson(), None]
    return state


def below(stamp: Stamp, floor: Stamp | None) -> bool:
    """Whether an operation is stamped below a drop (and so wiped by it)."""
    return floor is not None and stamp.key() < floor.key()


def catalog_view(state: dict, floor: Stamp | None) -> tuple[bool, dict | None, list[dict]]:
    """(exists by its registers, options (None: never written), index specs in stamp order)
    under the drop floor."""
    x, o = state.get("x"), state.get("o")
    exists = bool(x and x[1] and not below(Stamp.of(x[0]), floor))
    options = None if o is None else {} if below(Stamp.of(o[0]), floor) else o[1]
    live = sorted((Stamp.of(s).key(), name) for name, (s, spec) in state["i"].items()
                  if spec is not None and not below(Stamp.of(s), floor))
    return exists, options, [state["i"][name][1] for _, name in live]


def catalog_compact(state: dict, floor: Stamp | None, stable: int) -> dict | None:
    """Forgets the registers at or below ``stable`` that say nothing any more (a drop, or a
    value below the floor): no operation they would win against can still arrive. None when
    nothing is left."""
    def dead(register, value) -> bool:
        s = Stamp.of(register[0])
        return s.hlc <= stable and (not value or below(s, floor))
    state = _copy(state)
    if state.get("x") is not None and dead(state["x"], state["x"][1]):
        state["x"] = None
    if state.get("o") is not None and dead(state["o"], state["o"][1]):
        del state["o"]
    state["i"] = {n: r for n, r in state["i"].items() if not dead(r, r[1])}
    return state if state["x"] is not None or state["i"] or state.get("o") is not None else None


def drop_before(state: dict | None, floor: Stamp) -> dict | None:
    """A document's state after a drop at ``floor``: a delete of it at that stamp, which
    leaves nothing of what came before, so its operations stamped after the drop replayed
    from nothing; None when it has none."""
    if state is None:
        return None
    ops = [o for o in state.get("o", []) if Stamp.of(o[0]).key() > floor.key()]
    if not ops:
        return None
    base = {"v": None, "m": {"w": {}, "e": {}}}
    doc, meta = _replay(base, ops)
    return {"v": doc, "m": _encode_meta(meta), "t": state["t"], "b": base, "o": ops}


def _check_catalog(op: dict) -> None:
    kind = op.get("c")
    if kind not in CATALOG_KINDS:
        raise ValueError(f"a catalog operation: c in {', '.join(CATALOG_KINDS)}")
    if kind in ("create", "collMod") and not isinstance(op.get("options", {}), dict):
        raise ValueError(f"{kind}: options, an object")
    if kind == "dropIndex" and not (isinstance(op.get("name"), str) and op["name"]):
        raise ValueError("dropIndex: a name")
    if kind == "createIndex":
        spec = op.get("index")
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]
                and isinstance(spec.get("unique"), bool) and isinstance(spec.get("key"), list) and spec["key"]
                and all(isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) and isinstance(f[1], int)
                        for f in spec["key"])):
            raise ValueError("createIndex: an index {name, key: [[field, direction]], unique}")


# ---- checking what a peer sent, and making operations on the origin ------------------------


def check_op(op: Any) -> None:
    """Raises ValueError unless op is a well-formed replicated operation."""
    if not isinstance(op, dict) or op.get("op") not in OPS:
        raise ValueError("an operation object with op in i, r, u, d, n, c")
    kind = op["op"]
    if kind == "c":
        _check_catalog(op)
        return
    if kind in ("i", "r"):
        if not isinstance(op.get("doc"), dict) or "_id" not in op["doc"]:
            raise ValueError("a document with its _id")
        if kind == "i" and "u" in op:
            if not isinstance(op["u"], dict) or not set(op["u"]) <= {"inc", "add", "push"}:
                raise ValueError("an upsert's u: inc, add, push")
            check_op({"op": "u", **op["u"]})
    if kind != "u":
        return
    for name, arg in op.items():
        if name in ("op", "ctx"):
            continue
        if name not in FIELD_OPS:
            raise ValueError(f"unknown field operation {name!r}")
        if name == "unset":
            if not isinstance(arg, list) or not all(isinstance(p, str) and p for p in arg):
                raise ValueError("unset: a list of paths")
            continue
        if not isinstance(arg, dict) or not all(isinstance(p, str) and p for p in arg):
            raise ValueError(f"{name}: an object path -> argument")
        if name == "inc" and not all(_is_number(v) for v in arg.values()):
            raise ValueError("inc: numbers")
        if name in ("push", "add", "pull") and not all(isinstance(v, list) for v in arg.values()):
            raise ValueError(f"{name}: lists of values")
    ctx = op.get("ctx", {})
    if not isinstance(ctx, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in ctx.items()):
        raise ValueError("ctx: origin -> seq")


def upsert_effect(doc: dict, seed: dict, update: dict, ctx: dict) -> dict:
    """The replicated insert for an upsert that inserted ``doc`` from the filter's ``seed``:
    the fields, without what the update's commuting operators made, which travel as
    field operations applied on top (so concurrent upserts of one counter add up)."""
    u = effect_of(update, {**seed, "_id": doc["_id"]}, doc, ctx)
    ops = {k: u[k] for k in ("inc", "add", "push") if k in u}
    if not ops:
        return {"op": "i", "doc": doc}
    base = _copy(doc)
    for arg in ops.values():
        for path in arg:
            _op_unset(base, path, None, None)
    return {"op": "i", "doc": base, "u": ops}


def effect_of(update: dict, before: dict, after: dict, ctx: dict) -> dict:
    """The replicated operation for a MongoDB update that turned ``before`` into ``after`` on
    its origin (``ctx``: the origin's version vector). ``$set``, ``$unset``, ``$inc``,
    ``$addToSet`` and ``$pull``/``$pullAll`` (the elements removed) and ``$push`` (plain or
    ``$each`` only) keep their merge rule; every other operator ($mul, $min, $max, $rename,
    $currentDate, $pop, $push with $position/$slice/$sort, positional paths) is shipped as a
    ``$set`` (or ``$unset``) of the value it produced: last writer wins for those fields."""
    from farts.db.update import _get as get_path  # the origin's own path reading

    op: dict = {"op": "u"}

    def put(name, path, value):
        op.setdefault(name, {})[path] = value

    def as_set(path):
        value = get_path(after, path)
        if value is MISSING:
            op.setdefault("unset", []).append(path)
        else:
            put("set", path, _copy(value))

    for name, fields in update.items():
        for path, arg in fields.items():
            if "$" in path:
                as_set(path.split(".$", 1)[0])
                continue
            if name == "$set":
                put("set", path, _copy(arg))
            elif name == "$unset":
                op.setdefault("unset", []).append(path)
            elif name == "$inc" and _is_number(get_path(after, path)):
                put("inc", path, arg)
            elif name == "$addToSet" and isinstance(get_path(after, path), list):
                put("add", path, list(arg["$each"]) if isinstance(arg, dict) and "$each" in arg else [arg])
            elif name == "$push" and isinstance(get_path(after, path), list) and (
                    not isinstance(arg, dict) or set(arg) == {"$each"}):
                put("push", path, list(arg["$each"]) if isinstance(arg, dict) else [arg])
            elif name in ("$pull", "$pullAll") and isinstance(get_path(before, path), list):
                old, new = get_path(before, path), get_path(after, path)
                kept = new if isinstance(new, list) else []
                removed: list = []
                for x in old:
                    if any(values_equal(x, y) for y in kept):
                        continue
                    if not any(values_equal(x, r) for r in removed):
                        removed.append(x)
                put("pull", path, removed)
                op["ctx"] = dict(ctx)
            else:
                as_set(path)
    return op

