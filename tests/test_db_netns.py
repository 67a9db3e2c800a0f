"""The replicated database across a real partition: three nodes in their own network
namespaces (tests/test_mesh_netns.py's), pymongo run inside each namespace. Writes go to
both sides while node 3 is cut off (its port on the bridge down), then the partition
heals: every node's dump is identical, every acknowledged insert is there, and the
counter is the sum of every acknowledged increment from both sides.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from mesh_helpers import wait_for
from test_mesh_netns import HUB, NODES, PORT, agree, namespaces, sh, start, view  # noqa: F401

from farts import pki

DB = '\n[db]\nenabled = true\nport = 27017\nsync = false\n'

# Run inside a namespace: pymongo against that node's endpoint (127.0.0.1:27017 there).
CLIENT = r"""
import json, sys, time
import pymongo
c = pymongo.MongoClient("127.0.0.1", 27017, serverSelectionTimeoutMS=5000, retryWrites=False).app.items
action, arg = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
if action == "write":          # arg: "<tag>:<n>": n inserts and n increments, 20 ms apart
    tag, n = arg.split(":")
    acked = {"inserted": [], "incs": 0}
    for i in range(int(n)):
        try:
            c.insert_one({"_id": f"{tag}-{i}", "tag": tag})
            acked["inserted"].append(f"{tag}-{i}")
            c.update_one({"_id": "ctr"}, {"$inc": {"n": 1}}, upsert=True)
            acked["incs"] += 1
        except pymongo.errors.PyMongoError:
            pass
        time.sleep(0.02)
    print(json.dumps(acked))
else:                          # dump
    print(json.dumps(sorted(([str(d["_id"]), d] for d in c.find()), key=lambda x: x[0])))
"""


def in_ns(node_id: str, *args: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", NODES[node_id], sys.executable, "-c", CLIENT, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p: subprocess.Popen, timeout: float = 60):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out)


def dump(node_id: str):
    try:
        return result(in_ns(node_id, "dump"), 30)
    except AssertionError:
        return None


def test_writes_on_both_sides_of_a_partition_converge_after_the_heal(namespaces, tmp_path):  # noqa: F811
    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    procs = []
    try:
        for node_id in NODES:
            procs.append(start(tmp_path, ca_dir, node_id, DB))
        everyone = {"node-1": "alive", "node-2": "alive", "node-3": "alive"}
        assert wait_for(agree({n: everyone for n in NODES}), 20), {n: view(n) for n in NODES}

        # Writers on node 1 (majority side) and node 3 (cut off) during the partition.
        writers = {"node-1": in_ns("node-1", "write", "a:60"), "node-3": in_ns("node-3", "write", "c:60")}
        time.sleep(0.4)
        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "down")
        majority = {"node-1": "alive", "node-2": "alive", "node-3": "dead"}
        alone = {"node-1": "dead", "node-2": "dead", "node-3": "alive"}
        assert wait_for(agree({"node-1": majority, "node-2": majority, "node-3": alone}), 30), \
            {n: view(n) for n in NODES}
        acked = {n: result(p) for n, p in writers.items()}
        # The partition was real: each side lacks the other's last writes (made after the cut).
        assert "a-59" not in {k for k, _ in dump("node-3")} and "c-59" not in {k for k, _ in dump("node-1")}

        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "up")
        assert wait_for(agree({n: everyone for n in NODES}), 30), {n: view(n) for n in NODES}
        inserted = set(acked["node-1"]["inserted"]) | set(acked["node-3"]["inserted"])
        incs = acked["node-1"]["incs"] + acked["node-3"]["incs"]
        assert len(inserted) == 120 and incs == 120

        def converged():
            dumps = [dump(n) for n in NODES]
            return dumps if dumps[0] is not None and all(d == dumps[0] for d in dumps) and \
                {k for k, _ in dumps[0]} == inserted | {"ctr"} else None
        dumps = wait_for(converged, 60, interval=0.5)
        assert dumps, {n: (len(d) if d else d) for n, d in zip(NODES, [dump(n) for n in NODES], strict=True)}
        assert dict(dumps[0])["ctr"]["n"] == incs
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
