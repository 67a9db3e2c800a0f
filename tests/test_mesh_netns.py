"""Three nodes, each in its own network namespace, joined by veth pairs to a bridge in a
fourth ("hub") namespace: packet loss from iptables statistic DROP rules, a partition
from taking one node's port down, and the heal. Everything happens inside namespaces
this test makes (names carry its PID) and removes; the host's network is not touched.

Inside those private namespaces the ports are fixed (7946, 9100): nothing else can
listen there, and a seed list needs a known address.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mesh_helpers import wait_for

from farts import pki

PID = os.getpid() % 100000
HUB = f"fm{PID}h"
NODES = {"node-1": f"fm{PID}a", "node-2": f"fm{PID}b", "node-3": f"fm{PID}c"}
ADDR = {"node-1": "10.77.0.1", "node-2": "10.77.0.2", "node-3": "10.77.0.3"}
PORT = {"node-1": "va", "node-2": "vb", "node-3": "vc"}   # the hub-side end of each veth

CONFIG = """
[node]
id = "{id}"
data_dir = "{data_dir}"
workers = 1
[listeners.http]
host = "127.0.0.1"
port = 8080
[listeners.https]
enabled = false
[listeners.admin]
host = "127.0.0.1"
port = 9100
[mesh]
enabled = true
host = "{addr}"
port = 7946
seeds = ["10.77.0.1:7946"]
ca = "{ca}"
cert = "mesh/node.crt"
key = "mesh/node.key"
probe_interval = 0.5
probe_timeout = 0.25
suspicion_timeout = 1.5
reconnect_min = 0.05
reconnect_max = 0.5
handshake_timeout = 2.0
push_pull_interval = 3.0
"""


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=check)


def netns_permitted() -> str | None:
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        return "needs ip (iproute2) and iptables"
    probe = f"fm{PID}p"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add is not permitted here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def namespaces():
    reason = netns_permitted()
    if reason:
        pytest.skip(reason)
    made = []
    try:
        for ns in (HUB, *NODES.values()):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", HUB, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", HUB, "link", "set", "br0", "up")
        for node, ns in NODES.items():
            sh("ip", "-n", HUB, "link", "add", PORT[node], "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", HUB, "link", "set", PORT[node], "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ADDR[node]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def start(tmp_path, ca_dir, node_id, extra: str = ""):
    d = tmp_path / node_id
    pki.issue(ca_dir, d / "mesh" / "node.crt", d / "mesh" / "node.key", [ADDR[node_id]], node_id=node_id)
    cfg = d / "farts.toml"
    cfg.write_text(CONFIG.format(id=node_id, data_dir=d, addr=ADDR[node_id], ca=ca_dir / "ca.crt") + extra)
    log = open(d / "node.log", "wb")  # noqa: SIM115 (the process keeps it)
    proc = subprocess.Popen(["ip", "netns", "exec", NODES[node_id], sys.executable, "-m", "farts.cli", "serve",
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=log)
    buf, deadline = b"", time.monotonic() + 20
    while b"Ctrl-C stops the node." not in buf and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            buf += os.read(proc.stdout.fileno(), 65536)
    assert b"Ctrl-C stops the node." in buf, (buf, (d / "node.log").read_text())
    return proc


def view(node_id) -> dict[str, str]:
    """id -> state, as node_id sees the mesh (curl inside its namespace)."""
    r = subprocess.run(["ip", "netns", "exec", NODES[node_id], "curl", "-sS", "-m", "5",
                        "http://127.0.0.1:9100/api/mesh"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return {}
    return {m["id"]: m["state"] for m in json.loads(r.stdout)["members"]}


def agree(expected: dict[str, dict[str, str]]):
    return lambda: all(view(n) == want for n, want in expected.items())


def test_loss_partition_and_heal(namespaces, tmp_path):
    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    procs = []
    try:
        for node_id in NODES:
            procs.append(start(tmp_path, ca_dir, node_id))
        everyone = {"node-1": "alive", "node-2": "alive", "node-3": "alive"}
        assert wait_for(agree({n: everyone for n in NODES}), 20), {n: view(n) for n in NODES}

        # 10% of packets dropped on every node's way in: TCP retransmits, indirect probes
        # and the suspicion timeout keep everyone alive.
        for ns in NODES.values():
            sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", "eth0", "-m", "statistic",
               "--mode", "random", "--probability", "0.1", "-j", "DROP")
        end = time.monotonic() + 5
        while time.monotonic() < end:
            for n in NODES:
                assert "dead" not in view(n).values(), {n: view(n) for n in NODES}
            time.sleep(0.5)
        for ns in NODES.values():
            sh("ip", "netns", "exec", ns, "iptables", "-F", "INPUT")

        # Partition: node-3's port on the bridge goes down. Each side agrees on its side.
        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "down")
        majority = {"node-1": "alive", "node-2": "alive", "node-3": "dead"}
        alone = {"node-1": "dead", "node-2": "dead", "node-3": "alive"}
        assert wait_for(agree({"node-1": majority, "node-2": majority, "node-3": alone}), 30), \
            {n: view(n) for n in NODES}

        # Heal: one view again, everyone alive. (Pub/sub history across the same partition:
        # tests/test_pubsub_netns.py, on this file's namespaces and config.)
        sh("ip", "-n", HUB, "link", "set", PORT["node-3"], "up")
        assert wait_for(agree({n: everyone for n in NODES}), 30), {n: view(n) for n in NODES}
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
