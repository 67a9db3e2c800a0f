"""Webhooks on whole nodes (in this process, so the test can hand them the master role with
set_master, as the master lease will): POST /api/webhooks with a tenant API key,
inserts through the MongoDB endpoint with pymongo, `farts-edge webhooks list|retry`,
and 10,000 deliveries across a handover of the master role between two nodes whose
stores replicate over the mesh: each delivered, none lost, duplicates only with the
same delivery id."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pymongo
import pytest
from conftest import with_workers
from mesh_helpers import MESH, make_ca
from webhook_receiver import Receiver, until

from farts import config, pki
from farts.node import Node

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"tenant-secret"

# Each node runs the mesh (the one-node test alone in it), the database and webhooks.
SERVICES = """
[db]
enabled = true
port = 0
sync = false

[webhooks]
enabled = true
allow_loopback = true
backoff_min = 0.05
backoff_max = 0.5
scan_interval = 0.1
window = {window}

[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
api_keys = ["demo-key"]
secret = "tenant-secret"
"""


async def start(tmp_path: Path, node_id: str, seeds: list[str], window: float = 86400.0) -> Node:
    data = tmp_path / node_id
    mesh = data / "mesh"
    pki.issue(tmp_path / "ca", mesh / "node.crt", mesh / "node.key", ["127.0.0.1"], node_id=node_id)
    text = MESH.format(node_id=node_id, region="test", seeds=json.dumps(seeds), ca=tmp_path / "ca" / "ca.crt",
                       cert=mesh / "node.crt", key=mesh / "node.key").replace("{data_dir}", str(data))
    node = Node(config.parse(with_workers(text, 1) + SERVICES.format(window=window), str(data / "farts.toml")))
    await node.start()
    return node


def cli(node: Node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farts.cli", "webhooks", *args, "--admin", node.urls()["admin"]],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_api_mongodb_and_cli_on_a_node(tmp_path):
    async def main():
        rx = Receiver({"demo": SECRET})
        port = await rx.start()
        make_ca(tmp_path)
        node = await start(tmp_path, "n1", [], window=1.0)
        hooks = node.services["webhooks"]
        url = f"http://127.0.0.1:{port}/hook"
        try:
            async with httpx.AsyncClient(base_url=node.urls()["http"], timeout=30) as http:
                r = await http.post("/api/webhooks", json={"url": url, "event": "comment.created",
                                                           "payload": {"n": 1}},
                                    headers={"authorization": "Bearer demo-key"})
                assert r.status_code == 202
                api_id = r.json()["id"]
                r = await http.post("/api/webhooks", json={"deliveries": [
                    {"url": url, "event": "e", "payload": i} for i in range(3)]},
                    headers={"authorization": "Bearer demo-key"})
                assert r.status_code == 202 and len(r.json()["ids"]) == 3
                batch = r.json()["ids"]
                assert (await http.post("/api/webhooks", json={"url": url, "event": "e", "payload": 1},
                                        headers={"authorization": "Bearer nope"})).status_code == 401
                r = await http.post("/api/webhooks", content=b"{", headers={"authorization": "Bearer demo-key"})
                assert r.status_code == 400 and "JSON" in r.json()["error"]
                r = await http.post("/api/webhooks", content=b"[" * 50000, headers={"authorization": "Bearer demo-key"})
                assert r.status_code == 400 and "JSON" in r.json()["error"]
                r = await http.post("/api/webhooks", json={"url": "http://169.254.169.254/", "event": "e",
                                                           "payload": 1}, headers={"authorization": "Bearer demo-key"})
                assert r.status_code == 400 and "link-local" in r.json()["error"]
                assert (await http.get("/api/webhooks")).status_code == 405

            def mongo_insert():
                with pymongo.MongoClient(node.urls()["db"], serverSelectionTimeoutMS=10000) as client:
                    client.farts.webhooks.insert_one({"_id": "m1", "url": url, "event": "m", "payload": {"x": 1}})
            await asyncio.to_thread(mongo_insert)

            listed = await asyncio.to_thread(cli, node, "list")
            assert listed.returncode == 0, listed.stderr
            assert "not the master" in listed.stdout and "pending: 4" in listed.stdout and api_id in listed.stdout

            hooks.set_master(1)
            from farts.db.store import Store
            from farts.webhooks.queue import claimed_id
            want = {api_id, *batch, claimed_id(Store, "demo", "m1")}
            await until(lambda: set(rx.delivered) == want, what="the API and MongoDB deliveries")
            assert rx.bad_signatures == 0 and rx.bodies[claimed_id(Store, "demo", "m1")]["data"] == {"x": 1}

            # a receiver that refuses everything: dead letters after the 1 s window, then retry by hand
            rx.status = 500
            async with httpx.AsyncClient(base_url=node.urls()["http"], timeout=30) as http:
                r = await http.post("/api/webhooks", json={"url": url, "event": "late", "payload": 0},
                                    headers={"authorization": "Bearer demo-key"})
            late = r.json()["id"]
            await until(lambda: '"count": 1' in json.dumps(hooks.status()["dead"]), what="a dead letter")
            listed = await asyncio.to_thread(cli, node, "list")
            assert "master, epoch 1" in listed.stdout and "dead: 1" in listed.stdout and late in listed.stdout
            rx.status = 204
            retried = await asyncio.to_thread(cli, node, "retry", late)
            assert retried.returncode == 0 and "back in the queue" in retried.stdout, retried.stderr
            await until(lambda: rx.delivered[late] >= 1, what="the retried delivery")
            missing = await asyncio.to_thread(cli, node, "retry", "wh_unknown")
            assert missing.returncode == 1 and "no delivery" in missing.stderr
            await until(lambda: hooks.status()["pending"]["count"] == 0, what="an empty queue")
            metrics = node.metrics.render().decode()
            assert "farts_webhooks_delivered_total 6.0" in metrics and "farts_webhooks_attempt_seconds_bucket" in metrics
            assert 'farts_webhooks_queued{state="pending"} 0.0' in metrics
            assert 'farts_webhooks_queued{state="dead"} 0.0' in metrics
        finally:
            await node.stop()
            await rx.stop()
    asyncio.run(main())


@pytest.mark.timeout(600)
def test_10000_deliveries_across_a_master_handover(tmp_path):
    async def main():
        rx = Receiver({"demo": SECRET})
        port = await rx.start()
        make_ca(tmp_path)
        a = await start(tmp_path, "a", [])
        b = await start(tmp_path, "b", [a.urls()["mesh"].removeprefix("mesh://").rstrip("/")])
        ha, hb = a.services["webhooks"], b.services["webhooks"]
        url = f"http://127.0.0.1:{port}/hook"
        ids: list[str] = []
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                for i in range(10):          # half enqueued on each node
                    node = a if i % 2 else b
                    r = await http.post(node.urls()["http"] + "api/webhooks", headers={"authorization": "Bearer demo-key"},
                                        json={"deliveries": [{"url": url, "event": "e", "payload": {"i": i, "j": j}}
                                                             for j in range(1000)]})
                    assert r.status_code == 202
                    ids += r.json()["ids"]
            ha.set_master(1)
            await until(lambda: len(rx.delivered) >= 3000, timeout=300, what="3,000 deliveries by a")
            ha.set_master(None)                      # a loses the lease mid-way ...
            hb.set_master(2)                         # ... and b takes over with the next epoch
            await until(lambda: len(rx.delivered) == 10_000, timeout=400, what="all 10,000 deliveries")
            for h in (ha, hb):
                await until(lambda h=h: h.status()["pending"]["count"] == 0, timeout=120, what="empty queues")
            assert set(rx.delivered) == set(ids)                       # none lost, none made up
            assert rx.bad_signatures == 0
            assert set(rx.attempts) == set(ids)                        # a duplicate has its delivery's id
            assert ha.status()["dead"]["count"] == hb.status()["dead"]["count"] == 0
            dups = sum(n - 1 for n in rx.delivered.values())
            print(f"duplicates across the handover: {dups}; delivered by a "
                  f"{a.metrics.get('farts_webhooks_delivered_total').get()}, by b "
                  f"{b.metrics.get('farts_webhooks_delivered_total').get()}")
            assert b.metrics.get("farts_webhooks_delivered_total").get() > 0
        finally:
            await b.stop()
            await a.stop()
            await rx.stop()
    asyncio.run(main())
