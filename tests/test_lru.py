"""fast.lru: LRUIndex, differential against an OrderedDict LRU, plus growth, slot reuse,
hash collisions, take_touched, load and errors."""

import random
import sys
from collections import OrderedDict
from itertools import islice

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast.lru import LRUIndex

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64_MAX = 2**63 - 1


class RefLRU:
    """The reference: an OrderedDict from least to most recent, and the set of keys
    inserted or touched since the last take_touched()."""

    def __init__(self):
        self.od = OrderedDict()
        self.touched = set()
        self.total_size = 0

    def _put(self, key, size):
        if size < 0:
            raise ValueError(size)
        self.total_size += size - self.od.get(key, 0)
        self.od[key] = size
        self.od.move_to_end(key)

    def insert(self, key, size):
        self._put(key, size)
        self.touched.add(key)

    def touch(self, key):
        if key not in self.od:
            return False
        self.od.move_to_end(key)
        self.touched.add(key)
        return True

    def remove(self, key):
        if key not in self.od:
            return False
        self.total_size -= self.od.pop(key)
        self.touched.discard(key)
        return True

    def __contains__(self, key):
        return key in self.od

    def __len__(self):
        return len(self.od)

    def size_of(self, key):
        return self.od.get(key, -1)

    def evict_until(self, capacity):
        if capacity < 0:
            raise ValueError(capacity)
        out = []
        while self.total_size > capacity:
            key, size = self.od.popitem(last=False)
            self.total_size -= size
            self.touched.discard(key)
            out.append(key)
        return out

    def oldest(self, n):
        return list(islice(self.od, n))

    def keys_by_recency(self):
        return list(self.od)

    def take_touched(self):
        out = [k for k in self.od if k in self.touched]
        self.touched.clear()
        return out

    def load(self, items):
        for key, size in items:
            self._put(key, size)


# ---------------------------------------------------------------------------------------
# Differential test

SMALL = [
    b"",
    b"\x00",
    b"a",
    b"a\x00",
    b"ab",
    b"tenant\x00https://host/path?q",
    b"tenant\x00https://host/path?r",
    b"other\x00https://host/path?q",
    b"x" * 300,
]
LARGE = [b"demo\x00https://cdn.example/media/%d.jpg" % i for i in range(40)]  # forces growth


def _key(pair):
    key, fresh = pair
    # An equal key in a distinct object: lookups must compare contents, not identity.
    return bytes(bytearray(key)) if fresh else key


keys = st.tuples(st.one_of(st.sampled_from(SMALL), st.sampled_from(LARGE)), st.booleans()).map(_key)
sizes = st.integers(0, 1000)
ops = st.one_of(
    st.tuples(st.just("insert"), keys, sizes),
    st.tuples(st.just("touch"), keys),
    st.tuples(st.just("insert"), keys, sizes),
    st.tuples(st.just("remove"), keys),
    st.tuples(st.just("evict_until"), st.integers(0, 12_000)),
    st.tuples(st.just("take_touched")),
    st.tuples(st.just("size_of"), keys),
    st.tuples(st.just("__contains__"), keys),
    st.tuples(st.just("oldest"), st.integers(0, 12)),
    st.tuples(st.just("load"), st.lists(st.tuples(keys, sizes), max_size=6)),
    st.tuples(st.just("insert"), keys, st.integers(-3, -1)),
    st.tuples(st.just("evict_until"), st.integers(-3, -1)),
)


def _call(obj, op):
    try:
        return getattr(obj, op[0])(*op[1:])
    except ValueError:
        return ValueError


def check_same(idx, ref):
    order = ref.keys_by_recency()
    assert idx.keys_by_recency() == order
    assert len(idx) == len(ref)
    assert idx.total_size == ref.total_size
    assert [idx.size_of(k) for k in order] == [ref.size_of(k) for k in order]
    for key in SMALL + LARGE:
        assert (key in idx) == (key in ref), key


@pytest.mark.parametrize(
    "hash_mask",
    [0xFFFFFFFF, 0x3, 0],
    ids=["real-hash", "4-hash-values", "one-hash-value"],
)
@FEW
@given(st.lists(ops, max_size=80))
def test_matches_ordereddict(hash_mask, script):
    idx = LRUIndex(_hash_mask=hash_mask)
    ref = RefLRU()
    for step, op in enumerate(script):
        got, want = _call(idx, op), _call(ref, op)
        assert got == want, (step, op)
        check_same(idx, ref)
    assert idx.take_touched() == ref.take_touched()


# ---------------------------------------------------------------------------------------
# Growth, slot reuse, collisions


def test_growth_past_initial_capacity_and_slot_reuse():
    n = 100_000
    keys = [b"demo\x00https://cdn.example/media/%d.jpg" % i for i in range(n)]
    idx = LRUIndex()
    for i, key in enumerate(keys):
        idx.insert(key, i % 1000)
    assert len(idx) == n
    assert idx.total_size == sum(i % 1000 for i in range(n))
    assert idx.keys_by_recency() == keys
    assert all(idx.size_of(bytes(bytearray(k))) == i % 1000 for i, k in enumerate(keys))
    assert idx.take_touched() == keys

    for key in keys[::2]:
        assert idx.touch(key)
    order = keys[1::2] + keys[::2]
    assert idx.keys_by_recency() == order
    assert idx.oldest(3) == order[:3]

    # Free every third entry, then fill the slots again: nothing grows, order stays right.
    removed = set(keys[::3])
    for key in keys[::3]:
        assert idx.remove(bytes(bytearray(key)))
    assert not idx.remove(keys[0])
    order = [k for k in order if k not in removed]
    assert idx.keys_by_recency() == order
    assert len(idx) == len(order)
    footprint = sys.getsizeof(idx)
    fresh = [b"demo\x00https://cdn.example/new/%d" % i for i in range(len(removed))]
    for key in fresh:
        idx.insert(key, 1)
    assert sys.getsizeof(idx) == footprint
    order += fresh
    assert idx.keys_by_recency() == order
    assert all(k not in idx for k in removed)
    assert idx.total_size == sum(idx.size_of(k) for k in order)
    touched = set(keys[::2]) | set(fresh)
    assert idx.take_touched() == [k for k in order if k in touched]


@pytest.mark.parametrize("hash_mask", [0xF, 0])
def test_hash_collisions(hash_mask):
    """Every key lands in a few buckets' cluster: probing, tag matches with different
    contents and backward-shift deletion all get exercised."""
    rng = random.Random(7)
    keys = [b"k" * (i % 5) + b"%d" % i for i in range(2000)]
    idx = LRUIndex(_hash_mask=hash_mask)
    ref = RefLRU()
    for key in keys:
        idx.insert(key, len(key))
        ref.insert(key, len(key))
    for _ in range(3):
        for key in rng.sample(keys, 700):
            assert idx.remove(key) == ref.remove(key)
        for key in rng.sample(keys, 700):
            assert idx.touch(key) == ref.touch(key)
        for key in rng.sample(keys, 500):
            idx.insert(key, 3)
            ref.insert(key, 3)
        check_same(idx, ref)
        assert all((k in idx) == (k in ref) for k in keys)
        assert all(idx.size_of(k) == ref.size_of(k) for k in keys)
    assert idx.evict_until(100) == ref.evict_until(100)
    check_same(idx, ref)


def test_many_keys_with_a_real_hash():
    rng = random.Random(3)
    keys = [rng.randbytes(rng.randrange(0, 24)) for _ in range(50_000)]
    idx = LRUIndex()
    ref = RefLRU()
    for key in keys:
        idx.insert(key, 7)
        ref.insert(key, 7)
    for key in keys[::4]:
        assert idx.remove(key) == ref.remove(key)
    check_same(idx, ref)
    assert all((k in idx) == (k in ref) for k in keys)


# ---------------------------------------------------------------------------------------
# Behaviour of single calls


def test_empty_index():
    idx = LRUIndex()
    assert len(idx) == 0 and idx.total_size == 0
    assert b"a" not in idx
    assert idx.size_of(b"a") == -1
    assert idx.touch(b"a") is False
    assert idx.remove(b"a") is False
    assert idx.evict_until(0) == []
    assert idx.oldest(5) == []
    assert idx.keys_by_recency() == []
    assert idx.take_touched() == []
    assert repr(idx) == "<LRUIndex 0 entries, 0 bytes>"


def test_evict_until_zero_keeps_empty_entries():
    idx = LRUIndex()
    idx.insert(b"a", 5)
    idx.insert(b"empty", 0)
    idx.insert(b"b", 7)
    idx.insert(b"empty2", 0)
    assert idx.evict_until(0) == [b"a", b"empty", b"b"]
    assert idx.keys_by_recency() == [b"empty2"]
    assert idx.total_size == 0
    assert idx.evict_until(0) == []


def test_reinsert_updates_size_and_recency():
    idx = LRUIndex()
    idx.insert(b"a", 10)
    idx.insert(b"b", 20)
    idx.insert(b"a", 5)
    assert idx.keys_by_recency() == [b"b", b"a"]
    assert idx.total_size == 25 and idx.size_of(b"a") == 5 and len(idx) == 2


def test_take_touched_each_key_once_in_recency_order():
    idx = LRUIndex()
    idx.load((b"%d" % i, 1) for i in range(10_000))
    assert idx.take_touched() == []
    rng = random.Random(1)
    picks = [b"%d" % rng.randrange(10_000) for _ in range(60)]
    for key in picks:
        idx.touch(key)
    last = {k: i for i, k in enumerate(picks)}
    # 60 of 10,000: the sorting path; then the walking path with most of the index touched.
    assert idx.take_touched() == sorted(last, key=last.get)
    assert idx.take_touched() == []
    for key in reversed(picks):  # the same keys again, each is reported again
        idx.touch(key)
    first = {}
    for i, key in enumerate(picks):
        first.setdefault(key, i)
    assert idx.take_touched() == sorted(first, key=first.get, reverse=True)
    for i in range(0, 10_000, 2):
        idx.touch(b"%d" % i)
    assert idx.take_touched() == [b"%d" % i for i in range(0, 10_000, 2)]


def test_take_touched_after_remove_and_slot_reuse():
    idx = LRUIndex()
    idx.insert(b"a", 1)
    idx.insert(b"b", 1)
    assert idx.take_touched() == [b"a", b"b"]
    idx.touch(b"a")
    idx.remove(b"a")            # its slot is still queued ...
    idx.insert(b"c", 1)         # ... and is reused here
    idx.touch(b"c")
    assert idx.take_touched() == [b"c"]
    assert idx.evict_until(1) == [b"b"]
    idx.insert(b"d", 1)
    idx.evict_until(1)
    assert idx.take_touched() == [b"d"]


def test_load_then_continue():
    first = LRUIndex()
    for i in range(500):
        first.insert(b"%d" % i, i)
    for i in range(0, 500, 7):
        first.touch(b"%d" % i)
    persisted = [(k, first.size_of(k)) for k in first.keys_by_recency()]

    idx = LRUIndex()
    idx.load(iter(persisted))
    assert idx.keys_by_recency() == first.keys_by_recency()
    assert idx.total_size == first.total_size
    assert idx.take_touched() == []
    idx.touch(persisted[0][0])
    idx.insert(b"new", 3)
    idx.load([(b"late", 1), (persisted[1][0], 2)])
    assert idx.keys_by_recency()[-4:] == [persisted[0][0], b"new", b"late", persisted[1][0]]
    assert idx.take_touched() == [persisted[0][0], b"new"]
    evicted = idx.evict_until(idx.total_size - persisted[2][1] - persisted[3][1])
    assert evicted == [persisted[2][0], persisted[3][0]]


def test_keys_are_owned_references():
    key = b"x" * 1000  # a fresh object, referenced only here
    base = sys.getrefcount(key)
    idx = LRUIndex()
    idx.insert(key, 1)
    assert sys.getrefcount(key) == base + 1
    idx.insert(key, 2)
    assert sys.getrefcount(key) == base + 1
    idx.remove(key)
    assert sys.getrefcount(key) == base
    idx.insert(key, 1)
    out = idx.evict_until(0)
    refs = sys.getrefcount(key)
    assert out == [key] and refs == base + 1
    del out
    assert sys.getrefcount(key) == base
    idx.insert(key, 1)
    del idx
    assert sys.getrefcount(key) == base


def test_bytes_subclass_is_stored_as_bytes():
    class Key(bytes):
        def __hash__(self):
            return 0

        def __eq__(self, other):
            return True

    idx = LRUIndex()
    idx.insert(Key(b"a"), 1)
    assert b"a" in idx and b"b" not in idx and Key(b"b") not in idx
    assert type(idx.keys_by_recency()[0]) is bytes


@pytest.mark.parametrize("key", ["a", bytearray(b"a"), memoryview(b"a"), 1, None])
def test_non_bytes_keys_raise_type_error(key):
    idx = LRUIndex()
    idx.insert(b"a", 1)
    for call in (
        lambda: idx.insert(key, 1),
        lambda: idx.touch(key),
        lambda: idx.remove(key),
        lambda: key in idx,
        lambda: idx.size_of(key),
        lambda: idx.load([(key, 1)]),
    ):
        with pytest.raises(TypeError):
            call()
    assert idx.keys_by_recency() == [b"a"] and idx.take_touched() == [b"a"]


def test_bad_numbers():
    idx = LRUIndex()
    with pytest.raises(ValueError):
        idx.insert(b"a", -1)
    with pytest.raises(ValueError):
        idx.load([(b"a", -5)])
    with pytest.raises(ValueError):
        idx.evict_until(-1)
    with pytest.raises(ValueError):
        idx.oldest(-1)
    with pytest.raises(ValueError):
        LRUIndex(-1)
    with pytest.raises(TypeError):
        idx.insert(b"a", 1.5)
    with pytest.raises(TypeError):
        idx.evict_until(1.5)
    assert len(idx) == 0
    with pytest.raises(OverflowError):
        idx.insert(b"a", INT64_MAX + 1)
    idx.insert(b"big", INT64_MAX)
    with pytest.raises(OverflowError):
        idx.insert(b"one", 1)
    idx.insert(b"zero", 0)
    with pytest.raises(OverflowError):
        idx.insert(b"zero", 1)
    assert idx.keys_by_recency() == [b"big", b"zero"] and idx.total_size == INT64_MAX
    assert idx.evict_until(INT64_MAX - 1) == [b"big"]


def test_presized_index_does_not_grow():
    idx = LRUIndex(4096)
    footprint = sys.getsizeof(idx)
    for i in range(4096):
        idx.insert(b"%d" % i, 1)
    assert sys.getsizeof(idx) == footprint
    idx.insert(b"one more", 1)
    assert sys.getsizeof(idx) > footprint
