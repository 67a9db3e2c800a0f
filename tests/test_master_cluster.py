"""The master on real nodes: `farts-edge serve` processes with the mesh, [db] and [master]
on loopback. One master per deployment, known to every node (/api/mesh, /api/master,
`farts-edge status`); kill -9 of the master: another takes over within the bound the
lease states (lease_seconds * (1 + nodes / 10) plus a round trip), with a higher epoch.
Every wait is bounded polling with generous deadlines (the machine is shared).
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

from master_helpers import Receiver
from mesh_helpers import make_ca, mesh_address, mesh_view, metric, start_mesh_node, states, wait_for
from test_db_replication_cluster import db_config

LEASE = 3.0


def master_config(ids: list[str], extra: str = "") -> str:
    return db_config() + (f"\n[master]\nenabled = true\nnodes = {json.dumps(ids)}\n"
                          f"lease_seconds = {LEASE}\n") + extra


def master_status(node) -> dict:
    with urllib.request.urlopen(node.url("admin", "/api/master"), timeout=5) as r:
        return json.load(r)


def acting(nodes: dict) -> list[str]:
    return [i for i, n in nodes.items() if n.alive() and master_status(n)["acting"]]


def agreed(nodes: dict) -> tuple[str, int] | None:
    """(master, epoch) when exactly one node acts and every live node's /api/mesh says so."""
    now = acting(nodes)
    if len(now) != 1:
        return None
    views = {json.dumps(mesh_view(n)["masters"].get("global"), sort_keys=True)
             for n in nodes.values() if n.alive()}
    if len(views) != 1:
        return None
    view = json.loads(views.pop())
    return (view["master"], view["epoch"]) if view and view["master"] == now[0] else None


IDS = ["node-1", "node-2", "node-3"]


def start_cluster(tmp_path, extra="", ids=IDS):
    """(the CA, the nodes by id) once every node sees the others."""
    ca = make_ca(tmp_path)
    nodes = {}
    for i, node_id in enumerate(ids):
        seeds = [mesh_address(nodes[ids[i - 1]])] if i else []
        nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, seeds, extra=master_config(ids, extra))
    assert wait_for(lambda: all(sorted(states(n)) == ids for n in nodes.values()), 30), \
        {i: states(n) for i, n in nodes.items()}
    return ca, nodes


def test_one_master_and_a_takeover_within_the_bound_after_kill_9(tmp_path):
    _, nodes = start_cluster(tmp_path)
    try:
        first = wait_for(lambda: agreed(nodes), 60)
        assert first, {i: master_status(n) for i, n in nodes.items()}
        master, epoch = first
        # Stable: the same master for a few renewals, and it counted one change.
        time.sleep(LEASE)
        assert agreed(nodes) == first
        assert metric(nodes[master], "farts_master_changes_total", 'change="active"') == 1
        assert metric(nodes[master], "farts_master_active") == 1
        assert metric(nodes[master], "farts_master_epoch", 'deployment="global"') == epoch

        nodes[master].proc.kill()   # kill -9: no release, the lease has to run out
        nodes[master].proc.wait()
        killed_at = time.monotonic()
        rest = {i: n for i, n in nodes.items() if i != master}
        second = wait_for(lambda: agreed(rest), 60, interval=0.05)
        took = time.monotonic() - killed_at
        assert second, {i: master_status(n) for i, n in rest.items()}
        assert second[0] != master and second[1] > epoch
        bound = LEASE * (1 + len(IDS) / 10)
        print(f"takeover after kill -9: {took:.2f} s (bound {bound:.2f} s + a round trip + polling)")
        # Generous (a loaded machine): the figure above is what the report quotes.
        assert took < bound + 10, took
        assert metric(nodes[second[0]], "farts_master_changes_total", 'change="active"') == 1
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)


def test_a_per_second_cron_runs_every_slot_once_across_a_master_kill(tmp_path):
    from collections import Counter
    from datetime import datetime

    app = Receiver()
    crons = (f'\n[[master.crons]]\nname = "tick"\nschedule = "* * * * * *"\nupstream = "app"\n'
             f'path = "/cron/tick"\ncatch_up = "all"\ntimeout = 5.0\nretries = 1\nretry_delay = 0.2\n'
             f'\n[upstreams.app]\nservers = ["127.0.0.1:{app.port}"]\n')
    _, nodes = start_cluster(tmp_path, crons)
    try:
        master, epoch = wait_for(lambda: agreed(nodes), 60)
        assert wait_for(lambda: len(app.got) >= 5, 30), app.got
        nodes[master].proc.kill()
        nodes[master].proc.wait()
        rest = {i: n for i, n in nodes.items() if i != master}
        second = wait_for(lambda: agreed(rest), 60, interval=0.05)
        assert second and second[1] > epoch
        seen = len(app.got)
        assert wait_for(lambda: len(app.got) >= seen + 5, 30)
        requests = [r["headers"] for r in app.got]
        keys = Counter(r["idempotency-key"] for r in requests)
        slots = sorted(datetime.fromisoformat(k.split("@")[1].replace("Z", "+00:00")).timestamp() for k in keys)
        # Every second from the first slot to the last one was run (those that fell with no
        # master alive too: catch_up = "all"), by key ...
        assert slots == [slots[0] + i for i in range(len(slots))], slots
        # ... once, except a slot a master died in the middle of (run again, same key, by
        # the next master: at least once).
        again = {k: [r for r in requests if r["idempotency-key"] == k] for k, n in keys.items() if n > 1}
        assert len(again) <= 1, again
        for rs in again.values():
            assert len({r["x-farts-master-epoch"] for r in rs}) == len(rs), rs
        # The fencing token: one node per epoch, epochs never go back in slot order.
        by_epoch = {}
        for r in requests:
            by_epoch.setdefault(r["x-farts-master-epoch"], set()).add(r["x-farts-master-node"])
        assert all(len(v) == 1 for v in by_epoch.values()), by_epoch
        assert by_epoch[str(epoch)] == {master} and by_epoch[str(second[1])] == {second[0]}
        first_key = {}
        for r in requests:
            first_key.setdefault(r["idempotency-key"], int(r["x-farts-master-epoch"]))
        ordered = [first_key[k] for k in sorted(first_key)]
        assert ordered == sorted(ordered)
        print(f"{len(keys)} slots, {len(requests)} requests, run again: {list(again)}")
        # `farts-edge crons list` on a survivor shows the runs, done, by the new epoch.
        import subprocess
        import sys
        survivor = rest[second[0]]
        out = subprocess.run([sys.executable, "-m", "farts.cli", "crons", "list", "--admin",
                              survivor.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "tick  * * * * * * (UTC)  http app/cron/tick" in out.stdout and "done" in out.stdout, out.stdout
        status = subprocess.run([sys.executable, "-m", "farts.cli", "status", "--admin",
                                 survivor.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert f"master of global: {second[0]}, epoch {second[1]}" in status.stdout, status.stdout
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)
        app.close()


def test_each_deployment_of_a_mesh_has_its_own_master_and_every_node_knows_them(tmp_path):
    import mesh_helpers
    from conftest import start_node

    from farts import pki
    ca = make_ca(tmp_path)
    deployment = {"node-1": "global", "node-2": "global", "node-3": "eu"}
    members = {"global": ["node-1", "node-2"], "eu": ["node-3"]}
    nodes = {}
    try:
        for i, (node_id, dep) in enumerate(deployment.items()):
            mesh_dir = tmp_path / node_id / "node" / "mesh"
            pki.issue(ca, mesh_dir / "node.crt", mesh_dir / "node.key", ["127.0.0.1"], node_id=node_id)
            seeds = [mesh_address(nodes["node-1"])] if i else []
            base = mesh_helpers.MESH.replace('region = "{region}"', f'region = "{{region}}"\ndeployment = "{dep}"')
            base = base.format(node_id=node_id, region="test", seeds=json.dumps(seeds), ca=ca / "ca.crt",
                               cert=mesh_dir / "node.crt", key=mesh_dir / "node.key")
            nodes[node_id] = start_node(tmp_path / node_id, master_config(members[dep]), base=base)

        def both() -> dict | None:
            views = [mesh_view(n).get("masters", {}) for n in nodes.values()]
            ok = all(set(v) == {"global", "eu"} and all(m["master"] for m in v.values()) for v in views)
            return views[0] if ok and all(v == views[0] for v in views) else None
        view = wait_for(both, 60)
        assert view, [mesh_view(n).get("masters") for n in nodes.values()]
        assert view["eu"]["master"] == "node-3" and view["global"]["master"] in ("node-1", "node-2")
        assert sorted(acting(nodes)) == sorted(["node-3", view["global"]["master"]])
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)


def test_a_dead_node_is_alerted_and_resolved_when_it_comes_back(tmp_path):
    rx = Receiver()
    rules = (f'\n[master.alerts]\ninterval = 0.2\n[[master.alerts.rules]]\nrule = "node_dead"\nseverity = "critical"\n'
             f'[[master.alerts.escalation]]\nname = "room"\ntargets = ["{rx.url}/room"]\n')
    ca, nodes = start_cluster(tmp_path, rules)
    try:
        master, epoch = wait_for(lambda: agreed(nodes), 60)
        victim = next(i for i in IDS if i != master)
        nodes[victim].proc.kill()
        nodes[victim].proc.wait()
        key = f"node_dead:{victim}"

        def told(state):
            return [g for g in rx.got if g.get("key") == key and g["state"] == state]
        assert wait_for(lambda: told("firing"), 60), rx.got
        (fired,) = told("firing")
        assert fired["severity"] == "critical" and fired["epoch"] == epoch and fired["deployment"] == "global"
        seed = mesh_address(nodes[master])
        nodes[victim] = start_mesh_node(tmp_path, ca, victim, [seed], extra=master_config(IDS, rules))
        assert wait_for(lambda: told("resolved"), 60), rx.got
        assert told("resolved")[0]["alert"] == fired["alert"]
        assert wait_for(lambda: agreed(nodes), 30) == (master, epoch)   # it came back as a follower
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)
        rx.close()


def test_only_the_master_delivers_webhooks_and_the_next_one_goes_on_after_a_kill(tmp_path):
    """400 deliveries in the default run; the issue's 10,000 by hand (a minute more):
    FARTS_KILL_DELIVERIES=10000 pytest tests/test_master_cluster.py -k webhooks."""
    import urllib.request
    total = int(os.environ.get("FARTS_KILL_DELIVERIES", "400"))
    before = total * 3 // 4   # enqueued before the kill, the rest after
    rx = Receiver()
    extra = ('\n[webhooks]\nenabled = true\nallow_loopback = true\n'
             '\n[[tenants]]\nid = "demo"\nhosts = ["127.0.0.1"]\napi_keys = ["demo-key"]\nsecret = "s"\n')
    _, nodes = start_cluster(tmp_path, extra)

    def enqueue(node, first: int, n: int) -> None:
        for start in range(first, first + n, 1000):   # (the API takes up to 1,000 at once)
            body = json.dumps({"deliveries": [{"url": f"{rx.url}/hook", "event": "test", "payload": {"n": i}}
                                              for i in range(start, min(start + 1000, first + n))]}).encode()
            req = urllib.request.Request(node.url("http", "/api/webhooks"), data=body, method="POST",
                                         headers={"authorization": "Bearer demo-key",
                                                  "content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status in (200, 202), r.read()
    try:
        master, epoch = wait_for(lambda: agreed(nodes), 60)
        others = [i for i in IDS if i != master]
        enqueue(nodes[others[0]], 0, before)         # acknowledged on a node that is not master
        assert wait_for(lambda: len(rx.got) >= 1, 60), rx.got
        nodes[master].proc.kill()
        nodes[master].proc.wait()
        rest = {i: nodes[i] for i in others}
        second = wait_for(lambda: agreed(rest), 60)
        assert second and second[1] > epoch
        enqueue(nodes[others[1]], before, total - before)
        assert wait_for(lambda: {g["data"]["n"] for g in rx.got} == set(range(total)), 120 + total / 50), \
            sorted(set(range(total)) - {g["data"]["n"] for g in rx.got})[:20]
        ids = {}
        for g in rx.got:   # a delivery sent again (the master died before recording it) keeps its id
            ids.setdefault(g["data"]["n"], set()).add(g["headers"]["webhook-id"])
        assert all(len(v) == 1 for v in ids.values())
        print(f"{len(rx.got)} requests for {total} deliveries across the master's kill")
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)
        rx.close()
