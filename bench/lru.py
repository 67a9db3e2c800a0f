"""Operations/s and memory per entry of fast.lru.LRUIndex against an OrderedDict LRU.

The OrderedDict LRU is what the CDN would otherwise use: move_to_end() on a hit,
popitem(last=False) to evict, a running total of sizes.  It keeps no record of touched
keys, which LRUIndex does (for take_touched()), so the comparison slightly favours it.

Workloads, on 1M entries with CDN-like keys (tenant\\0URL):
  insert   1M distinct keys into an empty index
  touch    1M touches of random existing keys
  mixed    90% touch of a random key, 10% insert of a new key + evict_until(capacity)
Memory per entry comes from tracemalloc (LRUIndex allocates through PyMem_Raw*, which
tracemalloc sees); the key objects exist beforehand and are not counted for either.

    .venv/bin/python bench/lru.py [--seconds 10] [--entries 1000000]
"""

import argparse
import os
import random
import sys
import time
import tracemalloc
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from fast.lru import LRUIndex  # noqa: E402


class ODictLRU:
    """LRU on collections.OrderedDict, least recent first."""

    __slots__ = ("od", "total_size")

    def __init__(self):
        self.od = OrderedDict()
        self.total_size = 0

    def insert(self, key, size):
        od = self.od
        old = od.get(key)
        if old is not None:
            self.total_size -= old
            od.move_to_end(key)
        od[key] = size
        self.total_size += size

    def touch(self, key):
        try:
            self.od.move_to_end(key)
        except KeyError:
            return False
        return True

    def evict_until(self, capacity):
        od = self.od
        out = []
        while self.total_size > capacity:
            key, size = od.popitem(last=False)
            self.total_size -= size
            out.append(key)
        return out

    def keys_by_recency(self):
        return list(self.od)


CONTENDERS = {"OrderedDict": ODictLRU, "fast.lru": LRUIndex}


def make_keys(n, tag):
    return [b"demo\x00https://cdn.example/%s/%08d.jpg?w=640" % (tag, i) for i in range(n)]


def filled(cls, keys, sizes):
    idx = cls()
    insert = idx.insert
    for key, size in zip(keys, sizes, strict=True):
        insert(key, size)
    return idx


# Each workload: setup(cls) -> state (untimed); run(state) -> operation count (timed).


def insert_workload(keys, sizes):
    def setup(cls):
        return cls()

    def run(idx):
        insert = idx.insert
        for key, size in zip(keys, sizes, strict=True):
            insert(key, size)
        return len(keys)

    return setup, run


def touch_workload(keys, sizes, rng):
    picks = [keys[rng.randrange(len(keys))] for _ in range(len(keys))]

    def setup(cls):
        return filled(cls, keys, sizes)

    def run(idx):
        touch = idx.touch
        for key in picks:
            touch(key)
        return len(picks)

    return setup, run


def mixed_workload(keys, sizes, rng):
    capacity = sum(sizes)
    fresh = iter(make_keys(len(keys) // 5, b"new"))
    ops = []
    for _ in range(len(keys)):
        if rng.random() < 0.9:
            ops.append((True, keys[rng.randrange(len(keys))], 0))
        else:
            ops.append((False, next(fresh), rng.randrange(1, 200_000)))

    def setup(cls):
        return filled(cls, keys, sizes)

    def run(idx):
        touch, insert, evict_until = idx.touch, idx.insert, idx.evict_until
        for is_touch, key, size in ops:
            if is_touch:
                touch(key)
            else:
                insert(key, size)
                evict_until(capacity)
        return len(ops)

    return setup, run


def best_rates(workload, seconds):
    """Interleaved rounds until ``seconds`` have been spent timing; best round per
    contender (the one least disturbed by other processes)."""
    setup, run = workload
    best = dict.fromkeys(CONTENDERS, 0.0)
    spent = 0.0
    while spent < seconds or not all(best.values()):
        for label, cls in CONTENDERS.items():
            state = setup(cls)
            start = time.perf_counter()
            count = run(state)
            elapsed = time.perf_counter() - start
            spent += elapsed
            best[label] = max(best[label], count / elapsed)
            del state
    return best


def bytes_per_entry(cls, keys):
    """tracemalloc'd bytes held by an index of ``keys`` (sizes made on the fly, as they
    would come from a response: an int object each, which an OrderedDict keeps)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        idx = cls()
        insert = idx.insert
        for i, key in enumerate(keys):
            insert(key, 10_000 + i)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(idx.keys_by_recency()) == len(keys)
    return held / len(keys)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="timed seconds per workload (both contenders together)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()

    rng = random.Random(42)
    keys = make_keys(args.entries, b"media")
    sizes = [rng.randrange(1, 200_000) for _ in keys]

    # Both contenders must agree on the mixed workload's outcome before they are timed.
    setup, run = mixed_workload(keys[:20_000], sizes[:20_000], random.Random(1))
    outcome = []
    for cls in CONTENDERS.values():
        idx = setup(cls)
        run(idx)
        outcome.append((idx.keys_by_recency(), idx.total_size))
    assert outcome[0] == outcome[1], "LRUIndex and the OrderedDict LRU disagree"

    key_bytes = sum(sys.getsizeof(k) for k in keys) / len(keys)
    print(f"{args.entries:,} entries, keys of {len(keys[0])} bytes "
          f"({key_bytes:.0f} bytes per key object, not counted below)")
    workloads = {
        "insert": insert_workload(keys, sizes),
        "touch": touch_workload(keys, sizes, rng),
        "mixed 90/10": mixed_workload(keys, sizes, rng),
    }
    per_workload = args.seconds / len(workloads)
    for label, workload in workloads.items():
        rates = best_rates(workload, per_workload)
        ratio = rates["fast.lru"] / rates["OrderedDict"]
        print(f"{label:12} OrderedDict {rates['OrderedDict']:12,.0f} ops/s   "
              f"fast.lru {rates['fast.lru']:12,.0f} ops/s   {ratio:5.2f}x")

    memory = {label: bytes_per_entry(cls, keys) for label, cls in CONTENDERS.items()}
    print(f"{'memory':12} OrderedDict {memory['OrderedDict']:9.1f} B/entry      "
          f"fast.lru {memory['fast.lru']:9.1f} B/entry      "
          f"{memory['OrderedDict'] / memory['fast.lru']:5.2f}x less")


if __name__ == "__main__":
    main()
