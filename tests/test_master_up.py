"""The master in the local cluster `farts-edge up --nodes 3` writes and runs: its example
cron, its escalation tiers; then the issue's "done when" end to end on that cluster (the
configs `up` wrote, with the cron per-second, the tiers pointed at a receiver here and
short delays): one master runs the cron, delivers a webhook, escalates the alert of a
node killed with kill -9 (the master itself), another node takes over, and nothing is
lost (every cron slot recorded once, the webhooks enqueued before and after delivered).

Like test_mesh_up, the cluster listens on 127.0.0.1-3's fixed ports (that is what `up`
writes)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest
from master_helpers import Receiver
from mesh_helpers import start_up_cluster, wait_for

from farts import config, node  # noqa: F401 - node registers the config sections
from farts.quickstart import prepare_cluster


def test_up_writes_an_example_cron_and_escalation_tiers_and_nothing_downloads(tmp_path):
    for path in prepare_cluster(tmp_path, 3):
        cfg = config.load(path)
        m = cfg.master
        assert m.enabled and m.nodes == ["node-1", "node-2", "node-3"]
        assert [(c.name, c.action, c.task) for c in m.crons] == [("heartbeat", "task", "noop")]
        assert [t.name for t in m.alerts.escalation] == ["room", "floor", "building"]
        assert m.geoip.url == ""         # the GeoIP rebuild is off: nothing is downloaded by default
        assert cfg.webhooks.allow_loopback


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def cli(*args):
    return subprocess.run([sys.executable, "-m", "farts.cli", *args], capture_output=True, text=True, timeout=30)


def admin(i: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.{i}:9100{path}", timeout=5) as r:
        return json.load(r)


def acting(alive) -> list[int]:
    out = []
    for i in alive:
        try:
            if admin(i, "/api/master")["acting"]:
                out.append(i)
        except OSError:
            pass
    return out


@pytest.mark.usefixtures("default_ports")
def test_up_cluster_master_crons_webhooks_alerts_and_failover(tmp_path):
    data = tmp_path / "cluster"
    receiver = Receiver()
    for path in prepare_cluster(data, 3):   # `up` keeps configs that exist: these, tuned for a test
        text = path.read_text()
        text = text.replace('schedule = "* * * * *"', 'schedule = "* * * * * */2"')
        text = re.sub(r"http://127\.0\.0\.1:3000/alerts/(\w+)", rf"{receiver.url}/\1", text)
        text = text.replace("delay = 300 ", "delay = 3 ").replace("delay = 900", "delay = 300")
        text = text.replace("[master]                    #", "[master]\nlease_seconds = 3.0\n#", 1)
        path.write_text(text + "\n[master.alerts]\ninterval = 1.0\n")
    key = config.load(data / "node-1" / "farts.toml").tenants[0].api_keys[0]
    proc, out = start_up_cluster(data)
    try:
        assert b"Ctrl-C stops the cluster." in out, out.decode(errors="replace")
        master = wait_for(lambda: (lambda a: a[0] if len(a) == 1 else None)(acting((1, 2, 3))), 60)
        assert master, [admin(i, "/api/master") for i in (1, 2, 3)]

        # The cron runs on the master; `farts-edge crons list` shows it from any node.
        def runs(i):
            return [r for r in admin(i, "/api/master/crons")["crons"][0]["history"] if r["state"] == "done"]
        assert wait_for(lambda: len(runs(master)) >= 2, 30)
        other = next(i for i in (1, 2, 3) if i != master)
        listed = cli("crons", "list", "--admin", f"http://127.0.0.{other}:9100/")
        assert listed.returncode == 0 and f"master node-{master}" in listed.stdout and "heartbeat@" in listed.stdout, \
            listed

        # A webhook enqueued on a node that is not the master is delivered (by the master).
        def enqueue(i, n):
            r = httpx.post(f"http://127.0.0.{i}:8080/api/webhooks", headers={"authorization": f"Bearer {key}"},
                           json={"url": f"{receiver.url}/hook", "event": "test", "payload": {"n": n}}, timeout=10)
            assert r.status_code in (200, 201, 202), r.text

        def hooks():
            return {g["data"]["n"] for g in receiver.got if g["path"] == "/hook"}
        enqueue(other, 1)
        assert wait_for(lambda: hooks() == {1}, 30), receiver.got

        first_epoch = admin(master, "/api/master")["epoch"]
        # kill -9 the master: another takes over, the dead node's alert climbs room -> floor.
        pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and str(data / f"node-{master}" / "farts.toml").encode() in _cmdline(p))
        os.kill(pid, signal.SIGKILL)
        rest = [i for i in (1, 2, 3) if i != master]
        enqueue(rest[0], 2)                          # while no master acts: queued, not lost
        second = wait_for(lambda: (lambda a: a[0] if len(a) == 1 else None)(acting(rest)), 60)
        assert second and second != master
        assert wait_for(lambda: hooks() == {1, 2}, 60), receiver.got
        key_dead = f"node_dead:node-{master}"

        def told(path):
            return [g for g in receiver.got if g["path"] == path and g.get("key") == key_dead]
        assert wait_for(lambda: told("/room") and told("/floor"), 60), receiver.got
        assert told("/room")[0]["state"] == "firing" and told("/floor")[0]["state"] == "escalated"
        alert_id = told("/room")[0]["alert"]
        acked = cli("alerts", "ack", alert_id, "--by", "test", "--admin", f"http://127.0.0.{rest[1]}:9100/")
        assert acked.returncode == 0, acked
        # (listed by another node: once the ack has replicated there)
        listed = wait_for(lambda: (lambda out: out if alert_id in out.stdout and "acked" in out.stdout else None)(
            cli("alerts", "list", "--admin", f"http://127.0.0.{rest[0]}:9100/")), 30)
        assert listed, cli("alerts", "list", "--admin", f"http://127.0.0.{rest[0]}:9100/")

        # Nothing lost: every slot of the cron recorded once, across the failover, with
        # the new master's higher epoch after it.
        assert wait_for(lambda: len([r for r in runs(second) if r["epoch"] > first_epoch]) >= 2, 30)
        history = admin(second, "/api/master/crons")["crons"][0]["history"]   # (newest first)
        assert any(r["epoch"] == first_epoch for r in history), history
        slots = [r["slot"] for r in history]
        assert all(a - b == 2.0 for a, b in zip(slots, slots[1:], strict=False)), history   # no slot missing
        assert all(r["state"] in ("done", "skipped", "running") for r in history), history
        assert not told("/building")                 # acked on the floor: the building is never told
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        receiver.close()
