"""Alerts with escalation on a real node: `farts-edge serve` with [db] and [master] (a
deployment of one node), rules made to fire (the data disk "full" at 0%, the test
certificate "expiring" within 100,000 days), tiers room -> floor -> building POSTing to
a real receiver in this process that records each notification. One alert walks every
tier; the other is acknowledged with `farts-edge alerts ack` after the room was told,
and the floor never hears of it."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import master_helpers
import pytest
from mesh_helpers import metric, wait_for


class Receiver(master_helpers.Receiver):
    def of(self, key: str) -> list[tuple[str, str, str]]:
        return [(g["path"], g["tier"], g["state"]) for g in self.got if g.get("key") == key]


# The ack (a `farts-edge alerts ack` process: its start alone may take a second or two on
# a loaded machine) must land before the room's delay is over.
ROOM_DELAY = 6.0


def test_escalation_walks_the_tiers_and_an_ack_stops_it(node_factory):
    rx = Receiver()
    node = node_factory(f"""
        [db]
        enabled = true
        port = 0
        sync = false

        [admin]
        sample_interval = 0.2

        [master]
        enabled = true

        [master.alerts]
        interval = 0.2

        [[master.alerts.rules]]
        rule = "disk_full"
        threshold = 0.0
        severity = "critical"

        [[master.alerts.rules]]
        rule = "cert_expiring"
        threshold = 100000

        [[master.alerts.escalation]]
        name = "room"
        targets = ["{rx.url}/room"]
        delay = {ROOM_DELAY}

        [[master.alerts.escalation]]
        name = "floor"
        targets = ["{rx.url}/floor"]
        delay = 1.5

        [[master.alerts.escalation]]
        name = "building"
        targets = ["{rx.url}/building", "{rx.url}/pager"]
        delay = 60
        """)
    try:
        disk, cert = "disk_full:test-node", "cert_expiring:test-node"
        assert wait_for(lambda: rx.of(disk), 30), (rx.got, node.log())
        out = subprocess.run([sys.executable, "-m", "farts.cli", "alerts", "ack", disk, "--by", "ops",
                              "--admin", node.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f"acknowledged {disk}@" in out.stdout, (out.stdout, out.stderr)
        assert wait_for(lambda: len(rx.of(cert)) >= 4, 30), rx.got
        assert sorted(rx.of(cert)) == sorted([("/room", "room", "firing"), ("/floor", "floor", "escalated"),
                                              ("/building", "building", "escalated"),
                                              ("/pager", "building", "escalated")])
        times = {g["tier"]: g["t"] for g in rx.got if g["key"] == cert}
        assert times["room"] < times["floor"] < times["building"]
        # The acked one: told to the room only, even after the room's delay has passed.
        told = next(g["t"] for g in rx.got if g.get("key") == disk)
        time.sleep(max(0.0, told + ROOM_DELAY + 1.0 - time.monotonic()))
        assert rx.of(disk) == [("/room", "room", "firing")]
        listing = subprocess.run([sys.executable, "-m", "farts.cli", "alerts", "list", "--admin",
                                  node.url("admin", "/")], capture_output=True, text=True, timeout=30)
        lines = listing.stdout.splitlines()
        assert any(disk in line and "critical" in line and "acked" in line and "tier room" in line for line in lines)
        assert any(cert in line and "warning" in line and "firing" in line and "tier building" in line
                   for line in lines), listing.stdout
        assert metric(node, "farts_master_alerts_total", 'rule="disk_full"') == 1
        assert wait_for(lambda: metric(node, "farts_master_notifications_total", 'outcome="sent"') == 5, 10)
        bad = subprocess.run([sys.executable, "-m", "farts.cli", "alerts", "ack", "nope", "--admin",
                              node.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "404" in bad.stderr
        req = urllib.request.Request(node.url("admin", "/api/master/alerts/ack"), data=b"{not json", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and b"expected JSON" in e.value.read()
        assert metric(node, "farts_master_bad_requests_total") == 1
    finally:
        rx.close()
