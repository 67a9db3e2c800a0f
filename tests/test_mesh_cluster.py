"""A real 5-node mesh on loopback: separate `farts-edge serve` processes, one CA.

Formation from one seed each (node i knows only node i-1), failure detection of a
`kill -9`, rejoin with a higher incarnation, a 1 s SIGSTOP that must not be taken
for a death, and a graceful stop seen as `left`. The operator view is read the way
an operator reads it: `farts-edge status` and /api/mesh.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from mesh_helpers import make_ca, mesh_address, metric, start_mesh_node, states, wait_for

# From the test config (tests/mesh_helpers.py): probe_interval 0.5 s, suspicion 1.5 s up to
# 2x while unconfirmed. A kill is declared dead within interval + suspicion x 2 + a
# protocol period of gossip; the test allows that bound and three more seconds of slack
# for a shared, busy machine (its figure is the protocol's; bench/ measures the real one).
DEATH_BOUND = 0.5 + 1.5 * 2 + 0.5 + 3.0


def others_see(nodes, subject, want_state, min_incarnation=0):
    def check():
        for n in nodes:
            st = states(n).get(subject)
            if st is None or st[0] != want_state or st[1] < min_incarnation:
                return False
        return True
    return check


def test_five_nodes_form_detect_death_rejoin_pause_and_leave(tmp_path):
    ca = make_ca(tmp_path)
    nodes = {}
    try:
        for i in range(1, 6):
            seeds = [mesh_address(nodes[f"node-{i - 1}"])] if i > 1 else []
            nodes[f"node-{i}"] = start_mesh_node(tmp_path, ca, f"node-{i}", seeds)
        ids = sorted(nodes)
        # Every node learns every other through gossip and sync, not only its seed.
        formed = wait_for(lambda: all(sorted(states(n)) == ids and {s for s, _ in states(n).values()} == {"alive"}
                                      for n in nodes.values()), 20)
        assert formed, {i: states(n) for i, n in nodes.items()}

        out = subprocess.run([sys.executable, "-m", "farts.cli", "status", "--admin", nodes["node-1"].url("admin")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[:4] == ["ID", "REGION", "STATE", "INC"]
        assert sum(1 for line in lines[1:] if " alive " in line) == 5 and "node-1 *" in out.stdout

        # kill -9: the kernel resets its links; the others must declare it dead in time.
        victim = nodes["node-4"]
        victim.proc.kill()
        victim.proc.wait()
        killed_at = time.monotonic()
        rest = [n for i, n in nodes.items() if i != "node-4"]
        assert wait_for(others_see(rest, "node-4", "dead"), DEATH_BOUND + 5), [states(n) for n in rest]
        took = time.monotonic() - killed_at
        assert took <= DEATH_BOUND, f"dead after {took:.2f}s, bound {DEATH_BOUND}s"
        dead_inc = states(rest[0])["node-4"][1]

        # It restarts (same id, certificate and data, a new port) and is alive again,
        # with a higher incarnation: it refuted its own death.
        nodes["node-4"] = start_mesh_node(tmp_path, ca, "node-4", [mesh_address(nodes["node-1"])], sub="node-4-again")
        assert wait_for(others_see(rest, "node-4", "alive", dead_inc + 1), 15), [states(n) for n in rest]
        assert metric(nodes["node-1"], "farts_mesh_link_reconnects_total") >= 1

        # A 1 s stop (a GC pause, a VM steal) is not a death.
        paused = nodes["node-3"]
        watchers = [n for i, n in nodes.items() if i != "node-3"]
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                for n in watchers:
                    assert states(n)["node-3"][0] in ("alive", "suspect")
                time.sleep(0.1)
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            for n in watchers:
                assert states(n)["node-3"][0] in ("alive", "suspect"), states(n)
            time.sleep(0.2)
        assert wait_for(others_see(watchers, "node-3", "alive"), 10)

        # A graceful stop is "left", not "dead".
        assert nodes["node-5"].stop(signal.SIGTERM) == 0
        rest = [n for i, n in nodes.items() if i != "node-5"]
        assert wait_for(others_see(rest, "node-5", "left"), 10), [states(n) for n in rest]
        assert metric(nodes["node-1"], "farts_mesh_members", 'state="left"') == 1
        assert metric(nodes["node-1"], "farts_mesh_probe_rtt_seconds_count") > 0
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)
