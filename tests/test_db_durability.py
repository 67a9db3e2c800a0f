"""Nothing acknowledged is lost: kill -9 the node right after acknowledged writes, restart
it on the same data, find every one of them, and replay the operation log to the data."""
from __future__ import annotations

import signal
import threading
import time

import bson
import pymongo
from conftest import start_node
from test_db_pymongo import DB_CONFIG, db_address

from farts.db import keys
from farts.db.store import Store
from farts.db.update import apply_update

WRITERS = 8
COUNTERS = 4


def test_kill_9_after_acknowledged_writes(tmp_path):
    node = start_node(tmp_path, DB_CONFIG)
    host, port = db_address(node)
    acked_ids: list[list] = [[] for _ in range(WRITERS)]
    acked_incs = [[0] * COUNTERS for _ in range(WRITERS)]
    in_flight = [0] * COUNTERS
    stop = threading.Event()
    client = pymongo.MongoClient(host, port, serverSelectionTimeoutMS=3000, retryWrites=False,
                                 socketTimeoutMS=3000, maxPoolSize=WRITERS * 2)
    client.d.counters.insert_many([{"_id": c, "n": 0} for c in range(COUNTERS)])
    client.d.log.create_index("k")

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            try:
                client.d.log.insert_one({"_id": f"{w}-{i}", "k": i % 10, "w": w})
                acked_ids[w].append(f"{w}-{i}")
                c = i % COUNTERS
                in_flight[c] += 1
                client.d.counters.update_one({"_id": c}, {"$inc": {"n": 1}, "$currentDate": {"at": True}})
                in_flight[c] -= 1
                acked_incs[w][c] += 1
            except pymongo.errors.PyMongoError:
                return
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(map(len, acked_ids)) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    node.stop(signal.SIGKILL)   # while writers are still writing
    stop.set()
    for t in threads:
        t.join(10)
    client.close()
    ids = [i for per in acked_ids for i in per]
    assert len(ids) >= 400

    node = start_node(tmp_path, DB_CONFIG)
    host, port = db_address(node)
    with pymongo.MongoClient(host, port, serverSelectionTimeoutMS=3000) as client:
        present = {d["_id"] for d in client.d.log.find({}, {"_id": 1})}
        assert set(ids) <= present
        assert len(present) - len(ids) <= WRITERS      # at most one unacknowledged insert per writer
        for c in range(COUNTERS):
            n = client.d.counters.find_one({"_id": c})["n"]
            acked = sum(per[c] for per in acked_incs)
            assert acked <= n <= acked + WRITERS
        # The indexes came back consistent with the data.
        assert client.d.log.count_documents({"k": 3}) == sum(1 for d in client.d.log.find() if d["k"] == 3)
        client.d.log.insert_one({"_id": "after-restart", "k": 1})
    assert node.stop() == 0

    # The operation log, replayed from nothing, gives exactly the stored documents.
    store = Store(node.data_dir / "db", "test-node")
    try:
        replayed: dict[tuple[str, bytes], dict] = {}
        records = store.oplog_records()
        assert [r["s"] for r in records] == list(range(1, len(records) + 1))
        assert all(a["ts"] < b["ts"] for a, b in zip(records, records[1:], strict=False))
        for rec in records:
            key = (rec["ns"], keys.encode(rec.get("id")))
            if rec["op"] == "i" or rec["op"] == "r":
                replayed[key] = rec["doc"]
            elif rec["op"] == "u":
                replayed[key] = apply_update(replayed[key], rec["u"], now=rec["now"])
            elif rec["op"] == "d":
                del replayed[key]
        stored = {}
        with store.read() as txn:
            for ns in store.catalog:
                for doc in store.scan(txn, ns, {}, None):
                    stored[(ns, keys.encode(doc["_id"]))] = doc
        assert stored.keys() == replayed.keys()
        for key, doc in stored.items():
            assert bson.encode(doc) == bson.encode(replayed[key]), key
        assert len(stored) >= len(ids) + COUNTERS + 1
    finally:
        store.close()
