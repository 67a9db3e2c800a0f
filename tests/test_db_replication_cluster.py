"""The database replicated between real nodes: `farts-edge serve` processes with the mesh
and [db] enabled on loopback, pymongo on each.

What a user sees: a write on one node is read on the others; concurrent increments of
one counter from every node all count; a node killed with SIGKILL during writes comes
back and catches up without losing or repeating anything; a new node gets a snapshot.
Causal sessions read their writes on another node; w: "majority" waits for a majority
(and reports a writeConcernError when it cannot have one); readPreference primary goes
to [db] primary. Every wait is bounded polling with generous deadlines.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pymongo
import pytest
from mesh_helpers import make_ca, mesh_address, metric, start_mesh_node, states, wait_for
from pymongo.collation import Collation
from pymongo.errors import AutoReconnect, DuplicateKeyError, PyMongoError, WriteConcernError
from pymongo.read_preferences import Nearest, Primary, PrimaryPreferred

ROOT = Path(__file__).resolve().parent.parent
DB_URL = re.compile(rb"^\s+db\s+mongodb://([\d.]+):(\d+)/", re.M)


def db_config(extra: str = "") -> str:
    # After the [mesh] table of mesh_helpers' config.
    return "\n[db]\nenabled = true\nport = 0\nsync = false\n" + extra


def db_port(node) -> int:
    m = DB_URL.search(b"".join(node.output))
    assert m, node.output
    return int(m.group(2))


def client(node, **kw) -> pymongo.MongoClient:
    return pymongo.MongoClient("127.0.0.1", db_port(node), serverSelectionTimeoutMS=10_000, **kw)


def formed(nodes) -> bool:
    ids = sorted(n for n in nodes)
    return all(sorted(states(n)) == ids and {s for s, _ in states(n).values()} == {"alive"}
               for n in nodes.values())


def start_cluster(tmp_path, ca, ids, extra=""):
    nodes = {}
    for i, node_id in enumerate(ids):
        seeds = [mesh_address(nodes[ids[i - 1]])] if i else []
        nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, seeds, extra=db_config(extra))
    assert wait_for(lambda: formed(nodes), 20), {i: states(n) for i, n in nodes.items()}
    return nodes


def everywhere(clients, check, timeout=30):
    """Polls until check(client) holds on every client; returns the failing ones' names."""
    ok = wait_for(lambda: all(check(c) for c in clients.values()), timeout)
    return ok or [name for name, c in clients.items() if not check(c)]


def test_writes_replicate_counters_add_up_kill_restart_catch_up_and_a_new_node_gets_a_snapshot(tmp_path):
    ca = make_ca(tmp_path)
    ids = ["node-1", "node-2", "node-3"]
    nodes = start_cluster(tmp_path, ca, ids)
    clients = {}
    try:
        clients = {i: client(n) for i, n in nodes.items()}
        coll = {i: c.app.items for i, c in clients.items()}

        # A write on node 1 is read on nodes 2 and 3.
        coll["node-1"].insert_one({"_id": "a", "n": 1, "tag": "x"})
        coll["node-1"].update_one({"_id": "a"}, {"$inc": {"n": 4}})
        assert everywhere(coll, lambda c: c.find_one({"_id": "a"}) == {"_id": "a", "n": 5, "tag": "x"}) is True

        # Concurrent increments of one counter from all three nodes: every acknowledged
        # one counts on every node.
        acked = {i: 0 for i in ids}

        def bump(node_id):
            for _ in range(60):
                coll[node_id].update_one({"_id": "ctr"}, {"$inc": {"n": 1}}, upsert=True)
                acked[node_id] += 1
        threads = [threading.Thread(target=bump, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        total = sum(acked.values())
        assert total == 180
        assert everywhere(coll, lambda c: (c.find_one({"_id": "ctr"}) or {}).get("n") == total) is True, \
            {i: c.find_one({"_id": "ctr"}) for i, c in coll.items()}

        # kill -9 of node 2 while nodes 1 and 3 write; it restarts on its data and catches up.
        inserted: list[int] = []
        stop = threading.Event()

        def writer(node_id, start):
            k = start
            while not stop.is_set() and k < start + 100_000:
                coll[node_id].insert_one({"_id": k, "from": node_id})
                coll[node_id].update_one({"_id": "kills"}, {"$inc": {"n": 1}}, upsert=True)
                inserted.append(k)
                k += 1
        writers = [threading.Thread(target=writer, args=("node-1", 1_000_000)),
                   threading.Thread(target=writer, args=("node-3", 2_000_000))]
        for t in writers:
            t.start()
        assert wait_for(lambda: len(inserted) >= 100, 30)
        nodes["node-2"].proc.kill()
        nodes["node-2"].proc.wait()
        clients.pop("node-2").close()
        coll.pop("node-2")
        assert wait_for(lambda: len(inserted) >= 300, 30)
        nodes["node-2"] = start_mesh_node(tmp_path, ca, "node-2", [mesh_address(nodes["node-1"])],
                                          extra=db_config())
        clients["node-2"] = client(nodes["node-2"])
        coll["node-2"] = clients["node-2"].app.items
        assert wait_for(lambda: len(inserted) >= 500, 30)
        stop.set()
        for t in writers:
            t.join(60)
        want = len(inserted)
        assert everywhere(coll, lambda c: (c.find_one({"_id": "kills"}) or {}).get("n") == want) is True, \
            {i: c.find_one({"_id": "kills"}) for i, c in coll.items()}
        for name, c in coll.items():
            ids_there = {d["_id"] for d in c.find({"from": {"$exists": True}}, {"_id": 1})}
            assert ids_there == set(inserted), name
            assert c.find_one({"_id": "ctr"})["n"] == 180, name
        assert metric(nodes["node-1"], "farts_db_replication_ops", 'kind="applied"') > 0

        # A new node joins: the others dropped their own records once every member had
        # them, so it gets a snapshot, then what follows.
        nodes["node-4"] = start_mesh_node(tmp_path, ca, "node-4", [mesh_address(nodes["node-3"])],
                                          extra=db_config())
        clients["node-4"] = client(nodes["node-4"])
        coll["node-4"] = clients["node-4"].app.items
        coll["node-1"].insert_one({"_id": "after-join"})
        assert everywhere(coll, lambda c: c.count_documents({}) == want + 4) is True, \
            {i: c.count_documents({}) for i, c in coll.items()}
        assert coll["node-4"].find_one({"_id": "kills"})["n"] == want
        assert metric(nodes["node-4"], "farts_db_replication_snapshots", 'kind="installed"') >= 1

        # The operator view: lag per origin in /api/mesh and farts-edge status.
        out = subprocess.run([sys.executable, "-m", "farts.cli", "status", "--admin", nodes["node-1"].url("admin")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "db replication lag:" in out.stdout and "node-3" in out.stdout.split("db replication lag:")[1]
    finally:
        for c in clients.values():
            c.close()
        for n in nodes.values():
            n.stop(signal.SIGKILL)


def test_causal_reads_write_concern_and_read_preference(tmp_path):
    ca = make_ca(tmp_path)
    ids = ["node-1", "node-2", "node-3"]
    nodes = start_cluster(tmp_path, ca, ids, extra='primary = "node-1"\n')
    clients = {}
    try:
        clients = {i: client(n) for i, n in nodes.items()}

        # A causally consistent session writes on node 1 and reads on node 3 at once: each
        # write is a batch of 2,000 documents, so node 3 has the last one only after
        # applying them all (it waits for them; without the wait it reads None).
        for k in range(5):
            with clients["node-1"].start_session(causal_consistency=True) as s1:
                docs = [{"_id": f"{k}-{i}", "v": "x" * 100} for i in range(2000)]
                clients["node-1"].app.causal.insert_many(docs, session=s1)
                with clients["node-3"].start_session(causal_consistency=True) as s3:
                    s3.advance_cluster_time(s1.cluster_time)
                    s3.advance_operation_time(s1.operation_time)
                    got = clients["node-3"].app.causal.with_options(read_preference=Nearest()).find_one(
                        {"_id": f"{k}-1999"}, session=s3)
                    assert got == {"_id": f"{k}-1999", "v": "x" * 100}, k
        assert metric(nodes["node-3"], "farts_db_replication_waits", 'kind="causal_waits"') >= 1

        # readPreference primary goes to node 1; nearest reads here. A document only node 1
        # has cannot be made, so the evidence is the forwarded count on node 3 and node 1.
        coll3 = clients["node-3"].app.items
        coll3.insert_one({"_id": 1})
        assert everywhere({i: c.app.items for i, c in clients.items()},
                          lambda c: c.find_one({"_id": 1}) is not None) is True
        assert coll3.with_options(read_preference=Primary()).find_one({"_id": 1}) == {"_id": 1}
        assert metric(nodes["node-3"], "farts_db_replication_waits", 'kind="forwarded"') >= 1
        assert metric(nodes["node-1"], "farts_db_replication_waits", 'kind="forwards_served"') >= 1
        before = metric(nodes["node-3"], "farts_db_replication_waits", 'kind="forwarded"')
        assert coll3.with_options(read_preference=Nearest()).find_one({"_id": 1}) == {"_id": 1}
        assert metric(nodes["node-3"], "farts_db_replication_waits", 'kind="forwarded"') == before

        # Node's driver with readPreference=nearest in the URI: writes on node 1 read on node 3
        # (read there, not forwarded), and back.
        if shutil.which("node") is not None:
            before = metric(nodes["node-3"], "farts_db_replication_waits", 'kind="forwarded"')
            env = {**os.environ, "NODE_PATH": str(ROOT / "tests" / "node" / "node_modules")}
            out = subprocess.run(["node", str(ROOT / "tests" / "node" / "db_replica.js"), str(db_port(nodes["node-1"])),
                                  str(db_port(nodes["node-3"]))], env=env, capture_output=True, text=True, timeout=90)
            assert out.returncode == 0, out.stderr
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r == {"seen": {"_id": "n", "hits": 3}, "prefs": ["nearest"], "back": {"_id": "n", "hits": 13}}
            assert metric(nodes["node-3"], "farts_db_replication_waits", 'kind="forwarded"') == before

        # Catalog commands reach every node: an index created on node 1 is there (and
        # refuses a duplicate) on node 3; a collection dropped on node 3 and a database
        # dropped on node 2 are gone everywhere.
        clients["node-1"].app.catalog.insert_one({"_id": 1, "k": "x"})
        clients["node-1"].app.catalog.create_index("k", unique=True)
        assert everywhere(clients, lambda c: "k_1" in c.app.catalog.index_information()) is True
        with pytest.raises(DuplicateKeyError):
            clients["node-3"].app.catalog.insert_one({"_id": 2, "k": "x"})
        # ...with its collation: a case-insensitive unique index refuses "X" on node 3 too.
        clients["node-1"].app.catalog.create_index("k", name="k_ci", unique=True,
                                                   collation=Collation(locale="en", strength=2))
        assert everywhere(clients, lambda c: "k_ci" in c.app.catalog.index_information()) is True
        assert clients["node-3"].app.catalog.index_information()["k_ci"]["collation"]["strength"] == 2
        with pytest.raises(DuplicateKeyError):
            clients["node-3"].app.catalog.insert_one({"_id": 3, "k": "X"})
        clients["node-3"].app.catalog.drop()
        assert everywhere(clients, lambda c: "catalog" not in c.app.list_collection_names()) is True
        clients["node-2"].other.c.insert_one({"_id": 1})
        assert everywhere(clients, lambda c: c.other.list_collection_names() == ["c"]) is True
        clients["node-2"].drop_database("other")
        assert everywhere(clients, lambda c: c.other.list_collection_names() == []) is True

        # w: majority with one node down succeeds.
        majority = pymongo.WriteConcern(w="majority", wtimeout=10_000)
        nodes["node-2"].proc.kill()
        nodes["node-2"].proc.wait()
        clients.pop("node-2").close()
        clients["node-3"].app.items.with_options(write_concern=majority).insert_one({"_id": 2})

        # The primary dies: primary reads fail as drivers expect, primaryPreferred reads here.
        nodes["node-1"].proc.kill()
        nodes["node-1"].proc.wait()
        clients.pop("node-1").close()
        assert wait_for(lambda: states(nodes["node-3"]).get("node-1", ("",))[0] == "dead", 20)
        with pytest.raises((AutoReconnect, PyMongoError)) as err:
            coll3.with_options(read_preference=Primary()).find_one({"_id": 1})
        assert "NotPrimaryNoSecondaryOk" in str(err.value) or "not primary" in str(err.value).lower()
        assert coll3.with_options(read_preference=PrimaryPreferred()).find_one({"_id": 1}) == {"_id": 1}

        # Two of three down: w: majority cannot be had; the write is kept, the reply says so.
        quick = pymongo.WriteConcern(w="majority", wtimeout=500)
        with pytest.raises(WriteConcernError):
            coll3.with_options(write_concern=quick).insert_one({"_id": 3})
        assert coll3.with_options(read_preference=Nearest()).find_one({"_id": 3}) == {"_id": 3}
    finally:
        for c in clients.values():
            c.close()
        for n in nodes.values():
            n.stop(signal.SIGKILL)
