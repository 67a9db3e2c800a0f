"""Documents/s of the pure-Python MongoDB engine (farts/db) against mongomock and plain Python.

On 10,000 comment-like documents:
  match    a compiled filter applied to every document: farts.db.query.compile_filter
           against mongomock's filter_applies (the same semantics, interpreted per call)
           and a hand-written Python predicate (the ceiling for any Python matcher)
  sort     farts.db.ordering.sort_documents on {votes: -1, _id: 1} against sorted() with a
           hand-written key
  update   farts.db.update.apply_update {$inc, $set on a dotted path} (copies the document)
           against copy.deepcopy plus the same two assignments by hand

    .venv/bin/python bench/db_engine.py [--seconds 6]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)
from mongomock.filtering import filter_applies  # noqa: E402

from farts.db.ordering import sort_documents  # noqa: E402
from farts.db.query import compile_filter  # noqa: E402
from farts.db.update import apply_update  # noqa: E402

N = 10_000


def make_docs(n: int) -> list[dict]:
    rng = random.Random(7)
    start = datetime.datetime(2025, 1, 1)
    return [{"_id": i, "thread": f"t{rng.randrange(200)}", "author": f"u{rng.randrange(1000)}",
             "votes": rng.randrange(-5, 50), "created": start + datetime.timedelta(seconds=i),
             "tags": rng.sample(["x", "y", "z", "w"], rng.randrange(3)),
             "meta": {"flag": rng.random() < 0.1, "lang": rng.choice(["en", "fr", "de"])}}
            for i in range(n)]


FILTERS = {
    "equality": ({"thread": "t7"}, lambda d: d["thread"] == "t7"),
    "range+array": ({"votes": {"$gte": 10}, "tags": "x"},
                    lambda d: d["votes"] >= 10 and "x" in d["tags"]),
    "or+dotted+in": ({"$or": [{"meta.flag": True}, {"author": {"$in": ["u1", "u2", "u3"]}}]},
                     lambda d: d["meta"]["flag"] is True or d["author"] in ("u1", "u2", "u3")),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0, help="per workload")
    args = parser.parse_args()
    docs = make_docs(N)
    print(f"{N} documents; best of interleaved rounds, {args.seconds:.0f} s per workload")
    print(f"{'workload':<24}{'contender':<22}{'docs/s':>14}{'vs farts':>10}")

    for name, (flt, hand) in FILTERS.items():
        match = compile_filter(flt)
        expected = [d["_id"] for d in docs if hand(d)]
        assert [d["_id"] for d in docs if match(d)] == expected
        assert [d["_id"] for d in docs if filter_applies(flt, d)] == expected
        rates = best_rates({
            "farts": (lambda m=match: [d for d in docs if m(d)], N),
            "mongomock": (lambda f=flt: [d for d in docs if filter_applies(f, d)], N),
            "hand-written": (lambda h=hand: [d for d in docs if h(d)], N),
        }, args.seconds)
        report(f"match {name}", rates)

    spec = {"votes": -1, "_id": 1}
    assert sort_documents(docs, spec) == sorted(docs, key=lambda d: (-d["votes"], d["_id"]))
    report("sort votes desc", best_rates({
        "farts": (lambda: sort_documents(docs, spec), N),
        "hand-written": (lambda: sorted(docs, key=lambda d: (-d["votes"], d["_id"])), N),
    }, args.seconds))

    update = {"$inc": {"votes": 1}, "$set": {"meta.seen": True}}

    def by_hand(doc: dict) -> dict:
        new = copy.deepcopy(doc)
        new["votes"] += 1
        new["meta"]["seen"] = True
        return new

    assert apply_update(docs[0], update) == by_hand(docs[0])
    sample = docs[:1000]
    report("update $inc+$set", best_rates({
        "farts": (lambda: [apply_update(d, update) for d in sample], len(sample)),
        "deepcopy by hand": (lambda: [by_hand(d) for d in sample], len(sample)),
    }, args.seconds))


def report(workload: str, rates: dict[str, float]) -> None:
    for label, rate in rates.items():
        print(f"{workload:<24}{label:<22}{rate:>14,.0f}{rate / rates['farts']:>9.2f}x")


if __name__ == "__main__":
    main()
