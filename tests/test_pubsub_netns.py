"""Pub/sub history catches up after a partition heals: three nodes in their own network
namespaces (the mesh netns test's set-up), node-3 cut off while both sides publish;
after the heal, a client resuming on either side with a cursor from before the
partition gets every event of both sides. curl (inside each namespace) publishes and
reads the SSE stream."""
from __future__ import annotations

import json
import signal
import subprocess

from mesh_helpers import wait_for
from test_mesh_netns import HUB, NODES, PORT, agree, namespaces, sh, start, view  # noqa: F401
from test_pubsub_mesh import TENANT_AND_ROUTES

from farts import pki


def curl(node_id, *args, timeout=10) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NODES[node_id], "curl", "-sS", *args],
                          capture_output=True, text=True, timeout=timeout)


def publish(node_id, items) -> list[str]:
    body = json.dumps({"messages": [{"channel": "c", "data": d} for d in items]})
    r = curl(node_id, "-m", "5", "-H", "authorization: Bearer demo-key", "-H", "content-type: application/json",
             "--data-binary", body, "http://127.0.0.1:8080/api/publish")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["ids"]


def replay(node_id, since) -> list:
    """Data of the events an SSE resume from `since` gets within 2 s."""
    r = curl(node_id, "-N", "-m", "2", f"http://127.0.0.1:8080/live/sse?channel=c&since={since}")
    return [json.loads(line[6:])["data"] for line in r.stdout.splitlines() if line.startswith("data: ")]


def test_history_catches_up_after_a_partition_heals(namespaces, tmp_path):  # noqa: F811
    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    procs = []
    try:
        for node_id in NODES:
            procs.append(start(tmp_path, ca_dir, node_id, TENANT_AND_ROUTES))
        everyone = {"node-1": "alive", "node-2": "alive", "node-3": "alive"}
        assert wait_for(agree({n: everyone for n in NODES}), 20), {n: view(n) for n in NODES}
        (before,) = publish("node-1", ["before"])
        assert wait_for(lambda: replay("node-3", "node-1:1") == ["before"], 10)  # node-3 has it

        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "down")
        majority = {"node-1": "alive", "node-2": "alive", "node-3": "dead"}
        alone = {"node-1": "dead", "node-2": "dead", "node-3": "alive"}
        assert wait_for(agree({"node-1": majority, "node-2": majority, "node-3": alone}), 30), \
            {n: view(n) for n in NODES}
        publish("node-1", [f"majority {i}" for i in range(5)])
        publish("node-3", ["alone 0", "alone 1"])

        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "up")
        assert wait_for(agree({n: everyone for n in NODES}), 30), {n: view(n) for n in NODES}
        want = {f"majority {i}" for i in range(5)} | {"alone 0", "alone 1"}
        for node_id in NODES:
            got = wait_for(lambda node_id=node_id: set(replay(node_id, before)) == want and replay(node_id, before),
                           15)
            assert got and set(got) == want, (node_id, got)
            # each origin's events in its publish order
            assert [g for g in got if g.startswith("majority")] == [f"majority {i}" for i in range(5)]
            assert [g for g in got if g.startswith("alone")] == ["alone 0", "alone 1"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
