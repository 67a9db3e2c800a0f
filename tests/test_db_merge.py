"""The merge rules of replicated documents (farts/db/merge.py): each row of the tables, then
the property that defines them: any arrival order, with duplicates and compactions in
between, gives the document of the stamp-ordered replay."""
from __future__ import annotations

import itertools

import bson
import pytest
from bson.int64 import Int64
from hypothesis import given, settings
from hypothesis import strategies as st

from farts.db import merge
from farts.db.merge import FIELD_OPS, FIELD_TABLE, OPS, TABLE, Stamp, apply, compact, visible
from farts.db.update import apply_update


def run(*ops, state=None):
    """Applies (stamp, op) pairs in the order given; returns the final state."""
    for stamp, op in ops:
        state = apply(state, stamp, op).state
    return state


def every_order(*ops):
    """The visible document for every arrival order; asserts they are all the same."""
    docs = [visible(run(*perm)) for perm in itertools.permutations(ops)]
    assert all(d == docs[0] for d in docs), docs
    return docs[0]


def ins(doc):
    return {"op": "i", "doc": doc}


def upd(**fields):
    return {"op": "u", **fields}


A1, B1, C1 = Stamp(100, "a", 2), Stamp(100, "b", 1), Stamp(100, "c", 1)
BASE = (Stamp(10, "a", 1), ins({"_id": 1, "x": 0, "n": 0, "tags": []}))


def test_the_tables_cover_every_operation():
    assert set(TABLE) == {(exists, op) for exists in (False, True) for op in OPS}
    assert set(FIELD_TABLE) == set(FIELD_OPS)


# ---- $set / $unset / replacement: last writer wins per field ----------------------------------


def test_set_last_writer_wins_by_hlc_then_origin():
    assert every_order(BASE, (Stamp(20, "b", 1), upd(set={"x": "b"})),
                       (Stamp(30, "a", 2), upd(set={"x": "a"})))["x"] == "a"
    # same HLC: the larger origin id wins
    assert every_order(BASE, (A1, upd(set={"x": "a"})), (B1, upd(set={"x": "b"})))["x"] == "b"


def test_unset_of_a_missing_path_creates_nothing():
    assert every_order(BASE, (A1, upd(unset=["a.b", "x"]))) == {"_id": 1, "n": 0, "tags": []}


def test_unset_and_set_are_one_register():
    assert "x" not in every_order(BASE, (Stamp(20, "b", 1), upd(set={"x": 5})), (Stamp(30, "c", 1), upd(unset=["x"])))
    assert every_order(BASE, (Stamp(30, "b", 1), upd(set={"x": 5})), (Stamp(20, "c", 1), upd(unset=["x"])))["x"] == 5


def test_dotted_fields_are_their_own_registers_under_their_parent():
    base = (Stamp(10, "a", 1), ins({"_id": 1, "a": {"b": 1, "c": 1}}))
    # concurrent writes to different dotted fields both land
    assert every_order(base, (Stamp(20, "b", 1), upd(set={"a.b": 2})),
                       (Stamp(21, "c", 1), upd(set={"a.c": 3})))["a"] == {"b": 2, "c": 3}
    # a later write of the parent replaces the child written before it ...
    assert every_order(base, (Stamp(20, "b", 1), upd(set={"a.b": 2})),
                       (Stamp(30, "c", 1), upd(set={"a": {"z": 0}})))["a"] == {"z": 0}
    # ... and a child written after the parent lands on top of it
    assert every_order(base, (Stamp(30, "b", 1), upd(set={"a.b": 2})),
                       (Stamp(20, "c", 1), upd(set={"a": {"z": 0}})))["a"] == {"z": 0, "b": 2}
    # the newest writer of a path goes through a scalar that an older write left in the way
    assert every_order(base, (Stamp(20, "b", 1), upd(set={"a": 7})),
                       (Stamp(30, "c", 1), upd(set={"a.b": 2})))["a"] == {"b": 2}


def test_replacement_writes_every_field_and_later_sets_land_on_it():
    doc = every_order(BASE, (Stamp(20, "b", 1), upd(set={"x": 1, "y": 1})),
                      (Stamp(30, "c", 1), {"op": "r", "doc": {"_id": 1, "z": 1}}),
                      (Stamp(40, "a", 2), upd(set={"y": 2})))
    assert doc == {"_id": 1, "z": 1, "y": 2}


# ---- $inc -------------------------------------------------------------------------------------


def test_concurrent_increments_all_count():
    assert every_order(BASE, (A1, upd(inc={"n": 1})), (B1, upd(inc={"n": 10})),
                       (C1, upd(inc={"n": 100})))["n"] == 111


def test_a_later_set_resets_the_base_and_only_newer_increments_count():
    doc = every_order(BASE, (Stamp(20, "a", 2), upd(inc={"n": 1})), (Stamp(30, "b", 1), upd(set={"n": 50})),
                      (Stamp(40, "c", 1), upd(inc={"n": 5})), (Stamp(25, "c", 2), upd(inc={"n": 1000})))
    assert doc["n"] == 55


def test_increment_of_a_missing_field_starts_at_zero_and_of_a_non_number_does_nothing():
    assert every_order(BASE, (A1, upd(inc={"m": Int64(3)})))["m"] == 3
    assert every_order(BASE, (Stamp(20, "b", 1), upd(set={"n": "text"})),
                       (Stamp(30, "c", 1), upd(inc={"n": 1})))["n"] == "text"
    assert every_order(BASE, (Stamp(30, "b", 1), upd(set={"n": "text"})),
                       (Stamp(20, "c", 1), upd(inc={"n": 1})))["n"] == "text"


def test_float_increments_add_in_stamp_order_so_every_order_gives_the_same_bits():
    doc = every_order(BASE, (Stamp(20, "a", 2), upd(inc={"n": 0.1})), (Stamp(21, "b", 1), upd(inc={"n": 0.2})),
                      (Stamp(22, "c", 1), upd(inc={"n": 1e16})))
    assert doc["n"] == ((0 + 0.1) + 0.2) + 1e16


def test_an_overflowing_increment_is_skipped_everywhere():
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "n": Int64(2**63 - 2)})),
                      (A1, upd(inc={"n": 5})), (B1, upd(inc={"n": 1})))
    assert doc["n"] == 2**63 - 1


# ---- $push, $addToSet, $pull -------------------------------------------------------------------


def test_push_appends_in_hlc_then_origin_order():
    assert every_order(BASE, (Stamp(30, "a", 2), upd(push={"tags": ["a30"]})),
                       (Stamp(20, "b", 1), upd(push={"tags": ["b20", "b20"]})),
                       (Stamp(30, "c", 1), upd(push={"tags": ["c30"]})))["tags"] == ["b20", "b20", "a30", "c30"]


def test_add_to_set_keeps_one_of_each_value():
    assert every_order(BASE, (A1, upd(add={"tags": ["x", "y"]})), (B1, upd(add={"tags": ["y", "z"]})))["tags"] \
        == ["x", "y", "z"]


def test_add_wins_over_a_concurrent_pull_of_the_same_value():
    add = (Stamp(20, "b", 1), upd(add={"tags": ["x"]}))
    # c pulls "x" later in HLC order, but had not seen b's add: the add wins
    pull_unseen = (Stamp(30, "c", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1}))
    assert every_order(BASE, add, pull_unseen)["tags"] == ["x"]
    # a pull that had seen it removes it, in any arrival order (even before the add arrives)
    pull_seen = (Stamp(30, "c", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1, "b": 1}))
    assert every_order(BASE, add, pull_seen)["tags"] == []


def test_adding_a_value_already_there_still_wins_over_a_concurrent_pull():
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "tags": ["x"]})),
                      (Stamp(20, "b", 1), upd(add={"tags": ["x"]})),
                      (Stamp(30, "c", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1})))
    assert doc["tags"] == ["x"]
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "tags": ["x"]})),
                      (Stamp(20, "b", 1), upd(add={"tags": ["x"]})),
                      (Stamp(30, "c", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1, "b": 1})))
    assert doc["tags"] == []


def test_pull_removes_what_an_insert_or_set_put_there_once_seen():
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "tags": ["x", "y", "x"]})),
                      (Stamp(20, "b", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1})))
    assert doc["tags"] == ["y"]
    # concurrent with the $set that made the array: the pull had not seen it
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "tags": ["x"]})),
                      (Stamp(30, "a", 2), upd(set={"tags": ["x", "z"]})),
                      (Stamp(40, "b", 1), upd(pull={"tags": ["x"]}, ctx={"a": 1})))
    assert doc["tags"] == ["x", "z"]


def test_array_operations_leave_non_arrays_alone():
    assert every_order(BASE, (Stamp(20, "b", 1), upd(set={"tags": 3})),
                       (Stamp(30, "c", 1), upd(push={"tags": [1]}, add={"u": [1]}, pull={"x": [0]})))["tags"] == 3


# ---- inserts, deletes --------------------------------------------------------------------------


def test_concurrent_inserts_of_one_id_merge_field_by_field():
    doc = every_order((Stamp(10, "a", 1), ins({"_id": 1, "x": "a", "only_a": 1})),
                      (Stamp(11, "b", 1), ins({"_id": 1, "x": "b", "only_b": 1})))
    assert doc == {"_id": 1, "x": "b", "only_a": 1, "only_b": 1}


def test_concurrent_upserts_of_a_counter_add_up():
    upsert = {"op": "i", "doc": {"_id": 1, "k": "v"}, "u": {"inc": {"n": 1}, "push": {"log": ["x"]}}}
    doc = every_order((Stamp(10, "a", 1), upsert), (Stamp(11, "b", 1), upsert),
                      (Stamp(12, "c", 1), upd(inc={"n": 5})))
    assert doc == {"_id": 1, "k": "v", "n": 7, "log": ["x", "x"]}


def test_the_effect_of_an_upsert_keeps_its_increments_apart():
    seed, update = {"_id": 1}, {"$inc": {"n": 2, "a.m": 1}, "$set": {"k": 1}, "$addToSet": {"s": 3}}
    doc = apply_update(seed, update, is_upsert_insert=True)
    op = merge.upsert_effect(doc, seed, update, {})
    merge.check_op(op)
    assert op == {"op": "i", "doc": {"_id": 1, "a": {}, "k": 1}, "u": {"inc": {"n": 2, "a.m": 1}, "add": {"s": [3]}}}
    assert visible(run((Stamp(10, "a", 1), op))) == {"_id": 1, "a": {"m": 1}, "k": 1, "n": 2, "s": [3]}
    assert merge.upsert_effect({"_id": 1, "k": 1}, seed, {"$set": {"k": 1}}, {}) == ins({"_id": 1, "k": 1})


def test_delete_wins_against_a_concurrent_update_in_either_stamp_order():
    delete = (Stamp(20, "b", 1), {"op": "d"})
    assert every_order(BASE, delete, (Stamp(30, "c", 1), upd(set={"x": 1}, inc={"n": 1}))) is None
    assert every_order(BASE, delete, (Stamp(15, "c", 1), upd(set={"x": 1}))) is None


def test_an_insert_after_the_delete_brings_the_document_back_with_its_fields_only():
    doc = every_order(BASE, (Stamp(20, "b", 1), upd(set={"old": 1})), (Stamp(30, "c", 1), {"op": "d"}),
                      (Stamp(35, "a", 2), upd(set={"lost": 1})),
                      (Stamp(40, "b", 2), ins({"_id": 1, "new": 1})),
                      (Stamp(50, "c", 2), upd(inc={"n": 1})))
    assert doc == {"_id": 1, "new": 1, "n": 1}


def test_a_replacement_after_the_delete_recreates_the_document():
    assert every_order(BASE, (Stamp(20, "b", 1), {"op": "d"}),
                       (Stamp(30, "c", 1), {"op": "r", "doc": {"_id": 1, "r": 1}})) == {"_id": 1, "r": 1}


def test_updates_before_the_insert_arrives_are_kept_until_it_does():
    doc = every_order((Stamp(20, "b", 1), upd(inc={"n": 2})), (Stamp(10, "a", 1), ins({"_id": 1, "n": 1})))
    assert doc == {"_id": 1, "n": 3}


# ---- arrival table, compaction, encoding ------------------------------------------------------


def test_arrival_outcomes():
    s = apply(None, *BASE).state
    assert apply(s, Stamp(20, "b", 1), upd(set={"x": 1})).outcome == "applied"
    s = apply(s, Stamp(20, "b", 1), upd(set={"x": 1})).state
    assert apply(s, Stamp(20, "b", 1), upd(set={"x": 2})).outcome == "duplicate"
    assert apply(s, Stamp(15, "c", 1), upd(set={"y": 1})).outcome == "replayed"
    s = compact(s, 20)
    late = apply(s, Stamp(19, "c", 1), upd(set={"x": "late"}))
    assert late.outcome == "late" and visible(late.state)["x"] == "late"


def test_compaction_folds_pending_operations_and_forgets_old_metadata():
    s = run(BASE, (Stamp(20, "b", 1), upd(add={"tags": ["x"]})), (Stamp(30, "c", 1), upd(inc={"n": 1})))
    assert len(s["o"]) == 3 and s["m"]["e"]["tags"]
    half = compact(s, 20)
    assert len(half["o"]) == 1 and visible(half) == visible(s)
    full = compact(s, 30)
    assert "o" not in full and "b" not in full and full["m"] == {"w": {}, "e": {}}
    assert visible(full) == visible(s) and full["t"] == 30
    # what comes after the horizon merges as it would have without compaction
    later = (Stamp(40, "a", 2), upd(pull={"tags": ["x"]}, ctx={"a": 1, "b": 1, "c": 1}))
    assert visible(run(later, state=full)) == visible(run(later, state=s)) == {"_id": 1, "x": 0, "n": 1, "tags": []}


def test_a_deleted_document_is_dropped_once_its_tombstone_is_stable():
    s = run(BASE, (Stamp(20, "b", 1), {"op": "d"}))
    assert compact(s, 19) is not None
    assert compact(s, 20) is None
    # an update that came after the delete and is stable goes with it
    assert compact(run((Stamp(30, "c", 1), upd(set={"x": 1})), state=s), 30) is None
    # but one above the horizon is kept: an insert between the two may still come
    kept = compact(run((Stamp(30, "c", 1), upd(set={"x": 1})), state=s), 25)
    assert visible(run((Stamp(26, "a", 2), ins({"_id": 1})), state=kept)) == {"_id": 1, "x": 1}


def test_state_round_trips_through_bson():
    s = run(BASE, (Stamp(20, "b", 1), upd(add={"tags": ["x"]}, set={"a.b": [1]})),
            (Stamp(15, "c", 1), upd(pull={"tags": ["x"]}, ctx={"b": 1})))
    back = bson.decode(bson.encode(s))
    later = (Stamp(40, "a", 2), upd(push={"tags": ["y"]}))
    assert visible(run(later, state=back)) == visible(run(later, state=s))


@pytest.mark.parametrize("op", [
    None, {}, {"op": "x"}, {"op": "i", "doc": {"x": 1}}, {"op": "r"}, {"op": "u", "set": []},
    {"op": "u", "inc": {"n": "1"}}, {"op": "u", "push": {"a": 1}}, {"op": "u", "unset": "a"},
    {"op": "u", "bit": {"a": 1}}, {"op": "u", "pull": {"a": [1]}, "ctx": {"a": "1"}}, {"op": "u", "set": {"": 1}},
    {"op": "i", "doc": {"_id": 1}, "u": {"set": {"a": 1}}}, {"op": "i", "doc": {"_id": 1}, "u": {"inc": {"a": "x"}}},
])
def test_malformed_operations_are_refused(op):
    with pytest.raises(ValueError):
        merge.check_op(op)


def test_effect_of_a_mongodb_update():
    before = {"_id": 1, "n": 1, "tags": ["x", "y", 2.0], "m": 3, "a": [1, 2]}
    update = {"$inc": {"n": 2}, "$pull": {"tags": {"$in": ["x", 2]}}, "$mul": {"m": 2},
              "$addToSet": {"s": {"$each": [1, 2]}}, "$push": {"a": {"$each": [3], "$slice": -2}},
              "$set": {"q.r": 1}, "$unset": {"gone": 1}}
    after = apply_update(before, update)
    op = merge.effect_of(update, before, after, {"a": 7})
    merge.check_op(op)
    assert op == {"op": "u", "inc": {"n": 2}, "pull": {"tags": ["x", 2.0]}, "ctx": {"a": 7},
                  "set": {"m": 6, "a": [2, 3], "q.r": 1}, "add": {"s": [1, 2]}, "unset": ["gone"]}
    merged = visible(run((Stamp(10, "a", 1), ins(before)), (Stamp(20, "a", 8), op)))
    assert merged == after


# ---- the property: arrival order, duplicates and compaction do not matter ---------------------

ORIGINS = ("a", "b", "c")
VALUES = st.sampled_from([0, 1, "x", "y"])
PATHS = st.sampled_from(["n", "s", "t", "d.x", "d"])


@st.composite
def histories(draw):
    """Operations in stamp order, each pull with a version vector of operations before it."""
    out = [(Stamp(1, "a", 1), ins({"_id": 1, "n": 0, "s": []}))]
    seqs = {"a": 1, "b": 0, "c": 0}
    for hlc in range(2, draw(st.integers(2, 9)) + 2):
        origin = draw(st.sampled_from(ORIGINS))
        seqs[origin] += 1
        kind = draw(st.sampled_from(["set", "unset", "inc", "push", "add", "pull", "i", "r", "d"]))
        path = draw(PATHS)
        if kind == "i":
            op = ins({"_id": 1, path.split(".")[0]: draw(VALUES)})
        elif kind == "r":
            op = {"op": "r", "doc": {"_id": 1, "s": [draw(VALUES)]}}
        elif kind == "d":
            op = {"op": "d"}
        elif kind == "unset":
            op = upd(unset=[path])
        elif kind == "inc":
            op = upd(inc={path: draw(st.sampled_from([1, 2, 0.5]))})
        elif kind == "set":
            op = upd(set={path: draw(VALUES)})
        else:
            op = upd(**{kind: {path: draw(st.lists(VALUES, max_size=2))}})
        if kind == "pull":   # what its origin had seen: a prefix of each origin's operations
            ctx = {o: draw(st.integers(0, seqs[o] if o != origin else seqs[o] - 1)) for o in ORIGINS}
            ctx[origin] = seqs[origin] - 1
            op["ctx"] = ctx
        out.append((Stamp(hlc, origin, seqs[origin]), op))
    return out


def _stable_limit(history, delivered: set) -> int:
    """The highest horizon valid now: below it every operation is delivered, and every pull
    not yet delivered had seen everything below it."""
    limit = 0
    for h in range(1, len(history) + 2):
        below = [s for s, _ in history if s.hlc <= h]
        undelivered_pulls = [op["ctx"] for s, op in history if s not in delivered and "pull" in op]
        if all(s in delivered for s in below) and all(
                all(ctx.get(s.origin, 0) >= s.seq for s in below) for ctx in undelivered_pulls):
            limit = h
        else:
            break
    return limit


@settings(max_examples=150)
@given(histories(), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_and_compaction_gives_the_replay(history, rnd):
    expected = visible(run(*history))
    deliveries = history + [rnd.choice(history) for _ in range(2)]
    rnd.shuffle(deliveries)
    state, delivered = None, set()
    for stamp, op in deliveries:
        if stamp in delivered:
            continue    # the replica's version vector drops it; duplicates of pending ones are tested below
        state = apply(state, stamp, op).state
        delivered.add(stamp)
        if rnd.random() < 0.4:
            state = compact(state, _stable_limit(history, delivered))
        if state is not None:   # (a dropped tombstone forgets: the replica's version vector dedups)
            assert apply(state, stamp, op).outcome in ("duplicate", "late")   # never applied twice
    assert visible(state) == expected
    assert visible(compact(state, 10**6)) == expected


# ---- the catalog: registers and drops (CATALOG_TABLE) ------------------------------------------


def idx(name, field="k", unique=False):
    return {"op": "c", "c": "createIndex", "index": {"name": name, "key": [[field, 1]], "unique": unique}}


CATALOG = st.sampled_from([
    {"op": "c", "c": "create", "options": {}}, {"op": "c", "c": "drop"}, idx("k_1"), idx("k_1", unique=True),
    idx("u_1", "u"), {"op": "c", "c": "dropIndex", "name": "k_1"}, {"op": "c", "c": "dropIndex", "name": "u_1"},
    {"op": "c", "c": "collMod", "options": {"validator": {"n": {"$gte": 0}}}},
    {"op": "c", "c": "create", "options": {"validator": {"k": {"$exists": True}}}}])


def view_after(ops):
    """Registers and floor after ops in the order given, as the store keeps them."""
    state, floor = None, None
    for stamp, op in ops:
        state = merge.catalog_apply(state, stamp, op)
        if op["c"] == "drop" and (floor is None or floor.key() < stamp.key()):
            floor = stamp
    return merge.catalog_view(state, floor)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.sampled_from(ORIGINS), CATALOG), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_catalog_operations_in_any_order_and_repeated_give_one_catalog(ops, rnd):
    stamped = [(Stamp(rnd.randrange(1, 4), origin, i + 1), op) for i, (origin, op) in enumerate(ops)]
    stamped = list({s.key(): (s, op) for s, op in stamped}.values())    # an origin's HLC never repeats
    expected = view_after(sorted(stamped, key=lambda so: so[0].key()))
    shuffled = stamped + [rnd.choice(stamped)]
    rnd.shuffle(shuffled)
    assert view_after(shuffled) == expected


def test_catalog_rows():
    create, drop = {"op": "c", "c": "create", "options": {}}, {"op": "c", "c": "drop"}
    s1, s2, s3 = Stamp(10, "a", 1), Stamp(20, "b", 1), Stamp(30, "a", 2)
    # concurrent createIndex of one name with two specs: the later stamp's
    assert view_after([(s2, idx("k_1", unique=True)), (s1, idx("k_1"))])[2] == [idx("k_1", unique=True)["index"]]
    # a drop removes the indexes and existence written before it, not what came after
    assert view_after([(s3, idx("u_1", "u")), (s2, drop), (s1, idx("k_1"))]) == (True, None, [idx("u_1", "u")["index"]])
    assert view_after([(s1, create), (s2, drop)]) == (False, {}, [])
    # dropIndex wins over an earlier createIndex, loses to a later one
    assert view_after([(s2, {"op": "c", "c": "dropIndex", "name": "k_1"}), (s1, idx("k_1"))])[2] == []
    assert view_after([(s1, {"op": "c", "c": "dropIndex", "name": "k_1"}), (s2, idx("k_1"))])[2] == [idx("k_1")["index"]]
    # options: the later create or collMod, as a whole; gone with a drop after it
    mod = {"op": "c", "c": "collMod", "options": {"validator": {"n": 1}}}
    assert view_after([(s2, mod), (s1, {"op": "c", "c": "create", "options": {"v": 2}})])[1] == {"validator": {"n": 1}}
    assert view_after([(s1, mod), (s2, drop)])[1] == {}
    assert set(merge.CATALOG_TABLE) >= set(merge.CATALOG_KINDS)


def test_stable_catalog_registers_that_say_nothing_are_forgotten():
    s1, s2, s3 = Stamp(10, "a", 1), Stamp(20, "b", 1), Stamp(30, "a", 2)
    state = merge.catalog_apply(merge.catalog_apply(merge.catalog_apply(
        None, s1, idx("k_1")), s2, {"op": "c", "c": "dropIndex", "name": "k_1"}), s3, idx("u_1", "u"))
    assert merge.catalog_compact(state, None, 15) == state                    # the dropIndex is not stable yet
    compacted = merge.catalog_compact(state, None, 25)
    assert set(compacted["i"]) == {"u_1"} and merge.catalog_view(compacted, None) == merge.catalog_view(state, None)
    assert merge.catalog_compact(state, Stamp(40, "b", 2), 40) is None   # all of it below a stable drop


@settings(max_examples=150)
@given(histories(), st.integers(1, 11), st.randoms(use_true_random=False))
def test_a_drop_is_a_delete_at_its_stamp_whatever_arrived_before_it(history, at, rnd):
    """drop_before on what a node had when the drop came, then the rest with what is
    stamped below the drop discarded, gives the replay with a delete at the drop's stamp."""
    drop = Stamp(at, "z", 1)
    expected = visible(run(*sorted(history + [(drop, {"op": "d"})], key=lambda so: so[0].key())))
    arrived = list(history)
    rnd.shuffle(arrived)
    cut = rnd.randrange(len(arrived) + 1)
    state = merge.drop_before(run(*arrived[:cut]), drop)
    for stamp, op in arrived[cut:]:
        if not merge.below(stamp, drop):
            state = apply(state, stamp, op).state
    assert visible(state) == expected


@pytest.mark.parametrize("op", [
    {"op": "c"}, {"op": "c", "c": "rename"}, {"op": "c", "c": "dropIndex"}, {"op": "c", "c": "create", "options": 1},
    {"op": "c", "c": "createIndex", "index": {"name": "a", "key": [], "unique": False}},
    {"op": "c", "c": "createIndex", "index": {"name": "a", "key": [["a", "x"]], "unique": False}},
])
def test_malformed_catalog_operations_are_refused(op):
    with pytest.raises(ValueError):
        merge.check_op(op)
