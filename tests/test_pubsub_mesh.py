"""Cross-node pub/sub: three real node processes joined by the mesh, WebSocket clients
(the websockets library) on each, events published through one node's HTTP API."""
from __future__ import annotations

import asyncio
import json
import signal

import httpx
import websockets
from conftest import start_node
from mesh_helpers import MESH, make_ca, mesh_address, mesh_view, wait_for

from farts import pki

TENANT_AND_ROUTES = """
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


def start(root, ca_dir, node_id, seeds):
    mesh_dir = root / node_id / "node" / "mesh"
    if not (mesh_dir / "node.crt").exists():
        pki.issue(ca_dir, mesh_dir / "node.crt", mesh_dir / "node.key", ["127.0.0.1"], node_id=node_id)
    base = MESH.format(node_id=node_id, region="test", seeds=json.dumps(seeds), ca=ca_dir / "ca.crt",
                       cert=mesh_dir / "node.crt", key=mesh_dir / "node.key")
    return start_node(root / node_id, TENANT_AND_ROUTES, base=base)


def publish(node, channel, items):
    r = httpx.post(node.url("http", "/api/publish"), headers={"authorization": "Bearer demo-key"},
                   json={"messages": [{"channel": channel, "data": d} for d in items]})
    assert r.status_code == 200, r.text
    return r.json()["ids"]


async def subscribe(node, channel, since=None):
    ws = await websockets.connect(f"ws://127.0.0.1:{node.port('http')}/live")
    cmd = {"op": "subscribe", "channel": channel, **({"since": since} if since else {})}
    await ws.send(json.dumps(cmd))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply["op"] == "subscribed", reply
    return ws, reply


async def take(ws, n):
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n)]


def test_events_cross_the_mesh_and_a_client_resumes_on_another_node(tmp_path):
    ca_dir = make_ca(tmp_path)
    nodes = []
    try:
        n1 = start(tmp_path, ca_dir, "n1", [])
        nodes.append(n1)
        seed = mesh_address(n1)
        nodes += [start(tmp_path, ca_dir, f"n{i}", [seed]) for i in (2, 3)]
        def linked(node):  # every other member alive, with a direct link (the bus has no relay)
            rows = [m for m in mesh_view(node)["members"] if not m["self"]]
            return len(rows) == 2 and all(m["state"] == "alive" and m["link"] for m in rows)

        for node in nodes:
            assert wait_for(lambda node=node: linked(node), 30), mesh_view(node)
        n1, n2, n3 = nodes

        async def main():
            ws2, _ = await subscribe(n2, "thread")
            ws3, _ = await subscribe(n3, "thread")
            ids = await asyncio.to_thread(publish, n1, "thread", list(range(5)))
            got2, got3 = await take(ws2, 5), await take(ws3, 5)
            assert [m["data"] for m in got2] == [m["data"] for m in got3] == list(range(5))
            assert [m["id"] for m in got2] == [m["id"] for m in got3] == ids  # the same cursors everywhere
            # a publish on n3 reaches n2 (and n1's history) too: each node is an origin
            more = await asyncio.to_thread(publish, n3, "thread", ["from n3"])
            m2, m3 = (await take(ws2, 1))[0], (await take(ws3, 1))[0]
            assert m2["data"] == m3["data"] == "from n3" and m3["id"] == more[0]
            last_seen = m2["id"]
            await ws2.close()
            await asyncio.to_thread(publish, n1, "thread", [f"missed {i}" for i in range(10)])
            await asyncio.to_thread(publish, n3, "elsewhere", ["other channel"])
            # resume on n3 with the cursor n2 gave: exactly the ten, then live ones
            ws, reply = await subscribe(n3, "thread", since=last_seen)
            assert reply["recovered"] is True
            got = await take(ws, 10)
            assert [m["data"] for m in got] == [f"missed {i}" for i in range(10)]
            live = await asyncio.to_thread(publish, n2, "thread", ["live"])
            nxt = (await take(ws, 1))[0]
            assert (nxt["data"], nxt["id"]) == ("live", live[0])
            await ws.close()
            await ws3.close()
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for node in nodes:
            node.stop(signal.SIGTERM)
