"""Database replication between 3 local nodes: lag at a steady write rate, catch-up, snapshot.

Three `farts-edge serve` processes joined by the mesh (default timing) with [db] enabled
(fsync on, as by default).

- lag: a writer inserts --rate documents/s into node 1 (insert_many of --batch, paced),
  each stamped with its send time; one poller process per other node reads new documents
  every 2 ms (find _id > the last seen, sorted; so lags are up to ~2 ms late) and records when each first shows
  up there. Lag = seen there - sent (the same monotonic clock: CLOCK_MONOTONIC is
  system-wide). The local acknowledgement latency is the baseline.
- catch-up: node 3 is killed (-9), --catchup documents are written on node 1, node 3 is
  restarted on its data; the time from its restart (listening) until it has them all.
- snapshot: a new node 4 joins after that; the others no longer hold the records it
  lacks (every member had them), so it gets a snapshot: the time until it has every
  document, and the snapshot bytes the others sent.

    .venv/bin/python bench/replication.py --rate 1000 --seconds 10 --catchup 50000
    .venv/bin/python bench/replication.py --overhead --seconds 3

--json FILE writes the lag, catch-up and snapshot figures (seconds, ops/s, MB/s, and
whether each completed) for the harness (python -m bench run replication).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/http.py shadows the standard library)
sys.path.append(str(ROOT / "bench"))  # after the standard library: for bench/mesh.py

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import pymongo  # noqa: E402
from mesh import Node, pct, wait  # noqa: E402

from farts import pki  # noqa: E402

DB = "\n[db]\nenabled = true\nport = 0\n"


def client(port: int) -> pymongo.MongoClient:
    return pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=10_000)


def poller(port: int, until: float, out) -> None:
    """Records (id, first seen) of every new document on one node until `until`."""
    coll = client(port).bench.lag
    last, seen = -1, []
    while time.monotonic() < until:
        docs = list(coll.find({"_id": {"$gt": last}}, {"_id": 1}).sort("_id", 1))
        now = time.monotonic()
        for d in docs:
            seen.append((d["_id"], now))
        if docs:
            last = docs[-1]["_id"]
        time.sleep(0.002)   # polls every ~2 ms (a tight loop would take a core of the 2 from the nodes)
    out.put(seen)


def lag(nodes: list[Node], rate: int, seconds: float, batch: int) -> dict:
    q: mp.Queue = mp.Queue()
    until = time.monotonic() + seconds + 5
    procs = [mp.Process(target=poller, args=(n.db_port, until, q)) for n in nodes[1:]]
    for p in procs:
        p.start()
    time.sleep(1.0)
    coll = client(nodes[0].db_port).bench.lag
    sent: dict[int, float] = {}
    acked: list[float] = []
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        due = start + (k // batch) * batch / rate
        time.sleep(max(0.0, due - time.monotonic()))
        t = time.monotonic()
        coll.insert_many([{"_id": k + j, "t": t} for j in range(batch)])
        acked.append(time.monotonic() - t)
        for j in range(batch):
            sent[k + j] = t
        k += batch
    elapsed = time.monotonic() - start
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    out = {"written": k, "rate": k / elapsed, "ack_p50": pct(acked, 50), "ack_p99": pct(acked, 99)}
    for n, seen in zip(nodes[1:], results, strict=True):
        lags = [at - sent[i] for i, at in seen if i in sent]
        out[n.id] = {"seen": len(lags), "p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags)}
    return out


def ops(node: Node, kind: str) -> float:
    """farts_db_replication_ops{kind=...} of a node."""
    for line in node.get("/metrics").decode().splitlines():
        if line.startswith("farts_db_replication_ops{") and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def count(node: Node) -> int:
    try:
        return client(node.db_port).bench.bulk.estimated_document_count()
    except pymongo.errors.PyMongoError:
        return -1


def overhead(seconds: float, peers: int) -> None:
    """The local cost of replication: the same workloads on a lone node (no mesh: its own
    database) and on node 1 of 1 + peers replicating nodes, alternating, two rounds."""
    import db as dbbench  # bench/db.py

    root = Path(tempfile.mkdtemp(prefix="farts-repl-overhead-"))
    pki.make_ca(root / "ca")
    plain, plain_port = dbbench.start_server(root / "plain", False)
    nodes: list[Node] = []
    try:
        for i in range(1, peers + 2):
            nodes.append(Node(root, f"node-{i}", [nodes[-1].mesh()] if nodes else [], DB))
        docs = 20_000
        for port in (plain_port, nodes[0].db_port):
            dbbench.load(port, docs)
        assert wait(lambda: all(count_items(n) == docs for n in nodes), 120), "not replicated"
        rows: dict = {}
        for _ in range(2):
            for workload in ("insert_one", "find_one"):
                for clients in (1, 16):
                    for name, port in (("plain", plain_port), ("replicated", nodes[0].db_port)):
                        lat = dbbench.run_clients(port, workload, clients, seconds, docs, False)
                        rows.setdefault((workload, clients, name), []).append(len(lat) / seconds)
        for workload in ("insert_one", "find_one"):
            for clients in (1, 16):
                p, r = rows[(workload, clients, "plain")], rows[(workload, clients, "replicated")]
                print(f"{workload} x{clients}: lone node {' / '.join(f'{v:,.0f}' for v in p)} ops/s, "
                      f"replicating node {' / '.join(f'{v:,.0f}' for v in r)} ops/s, "
                      f"ratio {sum(r) / sum(p):.2f} ({peers} peers)")
    finally:
        plain.kill()
        plain.wait()
        for n in nodes:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()


def count_items(node: Node) -> int:
    try:
        return client(node.db_port).bench.items.estimated_document_count()
    except pymongo.errors.PyMongoError:
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--catchup", type=int, default=50_000)
    ap.add_argument("--overhead", action="store_true",
                    help="instead: bench/db.py's insert_one and find_one on a node without the mesh and "
                         "on node 1 of 3 replicating nodes, alternating, --seconds each")
    ap.add_argument("--peers", type=int, default=2, help="with --overhead: how many other nodes replicate")
    ap.add_argument("--json", help="write the figures here (not with --overhead)")
    args = ap.parse_args()
    if args.overhead:
        overhead(args.seconds, args.peers)
        return
    root = Path(tempfile.mkdtemp(prefix="farts-repl-bench-"))
    pki.make_ca(root / "ca")
    nodes: list[Node] = []
    try:
        for i in range(1, 4):
            nodes.append(Node(root, f"node-{i}", [nodes[-1].mesh()] if nodes else [], DB))
        ids = sorted(n.id for n in nodes)
        assert wait(lambda: all(sorted(n.states()) == ids and set(n.states().values()) == {"alive"}
                                for n in nodes), 30), "mesh did not form"
        r = lag(nodes, args.rate, args.seconds, args.batch)
        print(f"lag at {r['rate']:.0f} writes/s ({r['written']} documents, batches of {args.batch}): "
              f"local ack p50 {r['ack_p50'] * 1000:.2f} ms p99 {r['ack_p99'] * 1000:.2f} ms")
        for n in nodes[1:]:
            x = r[n.id]
            print(f"  {n.id}: seen {x['seen']}, lag p50 {x['p50'] * 1000:.2f} ms, p99 {x['p99'] * 1000:.2f} ms, "
                  f"max {x['max'] * 1000:.1f} ms")

        # Catch-up: node 3 down while node 1 writes, then back on its data.
        victim = nodes[2]
        victim.proc.kill()
        victim.proc.wait()
        coll = client(nodes[0].db_port).bench.bulk
        for k in range(0, args.catchup, 1000):
            coll.insert_many([{"_id": k + j, "pad": "x" * 100} for j in range(min(1000, args.catchup - k))])
        nodes[2] = Node(root, "node-3", [nodes[0].mesh()], DB)
        started = time.monotonic()
        first = []

        def progress():
            n = count(nodes[2])
            if n > 0 and not first:
                first.append((time.monotonic(), n))
            return n == args.catchup
        caught_up = wait(progress, 300)
        done = time.monotonic()
        t0, n0 = first[0] if first else (started, 0)
        catchup = {"records": args.catchup, "seconds_from_restart": done - started,
                   "seconds_from_first": done - t0,
                   "ops_per_s": (args.catchup - n0) / max(done - t0, 1e-9), "complete": caught_up}
        print(f"catch-up: {args.catchup} records in {done - started:.2f} s from restart (listening), "
              f"{done - t0:.2f} s from the first applied ({catchup['ops_per_s']:,.0f} ops/s)"
              + ("" if caught_up else f" INCOMPLETE: {count(nodes[2])}"))
        print(f"  node-3 after catch-up: applied {ops(nodes[2], 'applied'):.0f}, "
              f"duplicates received {ops(nodes[2], 'duplicates'):.0f}")

        # A new node: a snapshot, then the tail.
        before = sum(n.counter_plain("farts_db_replication_snapshot_bytes") for n in nodes)
        nodes.append(Node(root, "node-4", [nodes[0].mesh()], DB))
        started = time.monotonic()
        ok = wait(lambda: count(nodes[3]) == args.catchup, 300)
        took = time.monotonic() - started
        sent = sum(n.counter_plain("farts_db_replication_snapshot_bytes") for n in nodes[:3]) - before
        print(f"snapshot: {args.catchup} documents to a new node in {took:.2f} s from its start, "
              f"{sent / 1e6:.1f} MB of snapshot sent ({sent / 1e6 / took:.1f} MB/s)"
              + ("" if ok else f" INCOMPLETE: {count(nodes[3])}"))
        if args.json:
            snapshot = {"documents": args.catchup, "seconds": took, "mb": sent / 1e6,
                        "mb_per_s": sent / 1e6 / took, "complete": ok}
            with open(args.json, "w") as f:
                json.dump({"params": vars(args), "lag": r, "catchup": catchup, "snapshot": snapshot,
                           "ok": caught_up and ok}, f, indent=1)
    finally:
        for n in nodes:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()


if __name__ == "__main__":
    main()
