"""Draining through the operator's command: `farts-edge drain` on one node of a real
3-node mesh (separate `farts-edge serve` processes) and every node sees it DRAINING
(while it stays alive and serving); a graceful stop drains first too."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from mesh_helpers import make_ca, mesh_address, start_mesh_node, states, wait_for


def test_drain_command_and_stop_mark_the_node_draining_everywhere(tmp_path):
    ca = make_ca(tmp_path)
    a = start_mesh_node(tmp_path, ca, "a", [])
    nodes = [a]
    try:
        seed = mesh_address(a)
        b = start_mesh_node(tmp_path, ca, "b", [seed])
        nodes.append(b)
        c = start_mesh_node(tmp_path, ca, "c", [seed], extra="drain_seconds = 6.0")
        nodes.append(c)
        assert wait_for(lambda: all(len(states(n)) == 3 and all(s == "alive" for s, _ in states(n).values())
                                    for n in nodes), 15), [states(n) for n in nodes]

        out = subprocess.run([sys.executable, "-m", "farts.cli", "drain", "--admin", b.url("admin", "/")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "b is draining" in out.stdout, out.stderr
        assert wait_for(lambda: all(states(n)["b"][0] == "draining" for n in nodes), 10), \
            [states(n) for n in nodes]
        try:                                    # still serving HTTP (an answer, any answer)
            urllib.request.urlopen(b.url("http", "/"), timeout=5)
        except urllib.error.HTTPError as e:
            assert e.code == 421                # (no tenant for 127.0.0.1 in this config)
        status = subprocess.run([sys.executable, "-m", "farts.cli", "status", "--admin", a.url("admin", "/")],
                                capture_output=True, text=True, timeout=30)
        assert "draining" in status.stdout and "1 draining" in status.stdout, status.stdout

        # A stop with drain_seconds: c drains first (the others see it) and keeps its
        # place for 6 s, then leaves.
        c.proc.terminate()
        assert wait_for(lambda: states(a)["c"][0] == "draining", 5), states(a)
        assert wait_for(lambda: states(a)["c"][0] == "left", 20), states(a)
        c.proc.wait(timeout=30)
    finally:
        for n in nodes:
            n.stop()
