"""The master across a real partition: three nodes in network namespaces
(tests/test_mesh_netns.py's set-up), the master's port on the bridge taken down. The
master cut off in the minority must stop acting before the majority side elects another
(compared on the nodes' own log lines: one host clock), the new master has a higher
epoch, and after the heal the old one stays a follower."""
from __future__ import annotations

import json
import re
import signal
import subprocess
from datetime import datetime

from mesh_helpers import wait_for
from test_mesh_netns import HUB, NODES, PORT, agree, namespaces, sh, start, view  # noqa: F401

from farts import pki

LEASE = 3.0
MASTER = f"""
[db]
enabled = true
port = 0
sync = false
[master]
enabled = true
nodes = ["node-1", "node-2", "node-3"]
lease_seconds = {LEASE}
"""


def master_of(node_id) -> dict:
    r = subprocess.run(["ip", "netns", "exec", NODES[node_id], "curl", "-sS", "-m", "5",
                        "http://127.0.0.1:9100/api/master"], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def acting(ids) -> list[str]:
    return [n for n in ids if master_of(n).get("acting")]


def log_time(tmp_path, node_id, pattern: str) -> list[datetime]:
    text = (tmp_path / node_id / "node.log").read_text()
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            for m in re.finditer(r"^(\S+ \S+) .*" + pattern, text, re.M)]


def test_the_minority_master_stops_before_the_majority_elects(namespaces, tmp_path):  # noqa: F811
    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    procs = []
    try:
        for node_id in NODES:
            procs.append(start(tmp_path, ca_dir, node_id, MASTER))
        everyone = {"node-1": "alive", "node-2": "alive", "node-3": "alive"}
        assert wait_for(agree({n: everyone for n in NODES}), 30), {n: view(n) for n in NODES}
        assert wait_for(lambda: len(acting(NODES)) == 1, 60), {n: master_of(n) for n in NODES}
        (old,) = acting(NODES)
        old_epoch = master_of(old)["epoch"]

        sh("ip", "-n", HUB, "link", "set", PORT[old], "down")     # the master alone
        rest = [n for n in NODES if n != old]
        assert wait_for(lambda: len(acting(rest)) == 1, 60), {n: master_of(n) for n in NODES}
        (new,) = acting(rest)
        assert master_of(new)["epoch"] > old_epoch
        assert not master_of(old)["acting"]
        stopped = log_time(tmp_path, old, f"stops acting as master of epoch {old_epoch}")
        started = log_time(tmp_path, new, "is master of epoch")
        assert stopped and started, ((tmp_path / old / "node.log").read_text(), (tmp_path / new / "node.log").read_text())
        margin = (started[-1] - stopped[0]).total_seconds()
        print(f"the minority master stopped {margin:.3f} s before the majority's took over")
        assert margin > 0

        sh("ip", "-n", HUB, "link", "set", PORT[old], "up")       # heal: the new master stays
        assert wait_for(agree({n: everyone for n in NODES}), 30), {n: view(n) for n in NODES}
        assert wait_for(lambda: all(master_of(n)["deployments"]["global"]["master"] == new for n in NODES), 30), \
            {n: master_of(n) for n in NODES}
        assert acting(NODES) == [new]
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
