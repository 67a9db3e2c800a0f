"""Cross-node pub/sub: five real node processes joined by the mesh, WebSocket clients
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
        nodes.append(start(tmp_path, ca_dir, "n1", []))
        seed = mesh_address(nodes[0])
        nodes += [start(tmp_path, ca_dir, f"n{i}", [seed]) for i in range(2, 6)]

        def linked(node):  # every other member alive, with a direct link (the bus has no relay)
            rows = [m for m in mesh_view(node)["members"] if not m["self"]]
            return len(rows) == 4 and all(m["state"] == "alive" and m["link"] for m in rows)

        for node in nodes:
            assert wait_for(lambda node=node: linked(node), 30), mesh_view(node)
        n1, n2, n3, n4, n5 = nodes

        async def main():
            subs = [(await subscribe(node, "thread"))[0] for node in (n2, n3, n4, n5)]
            ids = await asyncio.to_thread(publish, n1, "thread", list(range(5)))
            for ws in subs:  # nodes 2-5 each get node 1's events, in order, with the same ids
                got = await take(ws, 5)
                assert [m["data"] for m in got] == list(range(5))
                assert [m["id"] for m in got] == ids
            # a publish on n3 reaches the others too: each node is an origin
            more = await asyncio.to_thread(publish, n3, "thread", ["from n3"])
            for ws in subs:
                m = (await take(ws, 1))[0]
                assert m["data"] == "from n3" and m["id"] == more[0]
            last_seen = m["id"]
            for ws in subs:
                await ws.close()
            await asyncio.to_thread(publish, n1, "thread", [f"missed {i}" for i in range(10)])
            await asyncio.to_thread(publish, n5, "elsewhere", ["other channel"])
            # resume on n4 with the cursor n2..n5 gave: exactly the ten, then live ones
            ws, reply = await subscribe(n4, "thread", since=last_seen)
            assert reply["recovered"] is True
            got = await take(ws, 10)
            assert [m["data"] for m in got] == [f"missed {i}" for i in range(10)]
            live = await asyncio.to_thread(publish, n2, "thread", ["live"])
            nxt = (await take(ws, 1))[0]
            assert (nxt["data"], nxt["id"]) == ("live", live[0])
            await ws.close()
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for node in nodes:
            node.stop(signal.SIGTERM)
