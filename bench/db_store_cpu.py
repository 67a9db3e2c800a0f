"""CPU per operation of the store's own paths, without sockets or fsync: what a change to
index keys, planning or $regex costs (compare two trees with PYTHONPATH=<tree>).

  insert        an insert into a collection with two secondary indexes (index keys)
  find_indexed  a find by an indexed field, 20 matches (planning, index scan)
  find_regex    a find with an anchored $regex over 2000 documents (the regex engine)
  insert_ci     the insert with one of the indexes collated (en, strength 2), if the tree has it

    PYTHONPATH=. .venv/bin/python bench/db_store_cpu.py [--n 5000] [--rounds 5]

Each figure is the best round's process CPU time per operation (µs): the least disturbed
by other work on the machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from farts.db.query import compile_filter
from farts.db.store import Index, Store


def best(fn, rounds: int, n: int) -> float:
    out = []
    for r in range(rounds):
        t = time.process_time()
        fn(r)
        out.append((time.process_time() - t) / n * 1e6)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n, rounds = args.n, args.rounds
    store = Store(Path(tempfile.mkdtemp()) / "db", "bench", sync=False)
    collated = "collation" in Index.__dataclass_fields__
    namespaces = ["b.plain"] + (["b.ci"] if collated else [])
    for ns in namespaces:
        ci = {"collation": (("locale", "en"), ("strength", 2))} if ns == "b.ci" else {}
        store.submit(lambda w, ns=ns, ci=ci: (w.create_index(ns, Index("g_1", (("g", 1),))),
                                              w.create_index(ns, Index("name_1", (("name", 1),), **ci))),
                     exclusive=True).result()

    def inserts(ns):
        def run(r):
            base = r * n
            store.submit(lambda w: [w.insert(ns, {"_id": base + i, "g": (base + i) // 20, "name": f"item-{base + i}",
                                                  "n": 0}) for i in range(n)]).result()
        return run

    results = {"insert": best(inserts("b.plain"), rounds, n)}
    if collated:
        results["insert_ci"] = best(inserts("b.ci"), rounds, n)
    flt = {"g": 7}
    match = compile_filter(flt)

    def finds(r):
        with store.read() as txn:
            for _ in range(n // 10):
                store.scan(txn, "b.plain", flt, match)
    results["find_indexed"] = best(finds, rounds, n // 10)
    rx = {"name": {"$regex": "^item-1[0-9]+5$"}, "g": {"$lt": 100}}
    rx_match = compile_filter(rx)

    def regex_finds(r):
        with store.read() as txn:
            for _ in range(20):
                store.scan(txn, "b.plain", rx, rx_match)
    results["find_regex"] = best(regex_finds, rounds, 20)
    store.close()
    print("  ".join(f"{k} {v:.1f} us" for k, v in results.items()))


if __name__ == "__main__":
    main()
