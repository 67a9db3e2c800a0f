"""Pub/sub history catches up after a partition heals: three nodes in their own network
namespaces (the mesh netns test's set-up), node-3 cut off while both sides publish;
after the heal, a client resuming on either side with a cursor from before the
partition gets every event of both sides. curl (inside each namespace) publishes and
reads the SSE stream."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from mesh_helpers import wait_for
from test_mesh_netns import ADDR, CONFIG, HUB, NODES, PORT, agree, namespaces, sh, view  # noqa: F401

from farts import pki

PUBSUB = """
[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
api_keys = ["demo-key"]
[[routes]]
prefix = "/live"
kind = "pubsub"
[[routes]]
prefix = "/api/publish"
kind = "pubsub"
"""


def start(tmp_path, ca_dir, node_id):
    d = tmp_path / node_id
    pki.issue(ca_dir, d / "mesh" / "node.crt", d / "mesh" / "node.key", [ADDR[node_id]], node_id=node_id)
    cfg = d / "farts.toml"
    cfg.write_text(CONFIG.format(id=node_id, data_dir=d, addr=ADDR[node_id], ca=ca_dir / "ca.crt") + PUBSUB)
    log = open(d / "node.log", "wb")  # noqa: SIM115 (the process keeps it)
    proc = subprocess.Popen(["ip", "netns", "exec", NODES[node_id], sys.executable, "-m", "farts.cli", "serve",
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=log)
    buf, deadline = b"", time.monotonic() + 20
    while b"Ctrl-C stops the node." not in buf and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            buf += os.read(proc.stdout.fileno(), 65536)
    assert b"Ctrl-C stops the node." in buf, (buf, (d / "node.log").read_text())
    return proc


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
            procs.append(start(tmp_path, ca_dir, node_id))
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
