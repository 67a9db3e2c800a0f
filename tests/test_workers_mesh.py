"""Pub/sub across the mesh with worker processes: node n1 serves in one process, node n2
with three workers. An event published on n1 reaches n2's subscribers on every worker
once; one published through any of n2's workers reaches n1's subscribers once."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from conftest import start_node
from mesh_helpers import MESH, make_ca, mesh_address, mesh_view, wait_for
from test_pubsub_mesh import TENANT_AND_ROUTES

from farts import pki

SUBSCRIBERS = 9   # on n2: by the kernel's hash, some on each of its 3 workers


def start(root, ca_dir, node_id, seeds, workers, extra: str = TENANT_AND_ROUTES, node: str = ""):
    """A mesh node with ``workers``; ``extra``: the config after the [mesh] table; ``node``:
    more lines for its [node] table."""
    mesh_dir = root / node_id / "node" / "mesh"
    pki.issue(ca_dir, mesh_dir / "node.crt", mesh_dir / "node.key", ["127.0.0.1"], node_id=node_id)
    base = MESH.format(node_id=node_id, region="test", seeds=json.dumps(seeds), ca=ca_dir / "ca.crt",
                       cert=mesh_dir / "node.crt", key=mesh_dir / "node.key")
    base = base.replace('data_dir = "{data_dir}"', f'data_dir = "{{data_dir}}"\nworkers = {workers}\n{node}')
    return start_node(root / node_id, extra, base=base)


async def subscribers(node, n: int, channel: str) -> list:
    out = []
    for _ in range(n):
        ws = await websockets.connect(f"ws://127.0.0.1:{node.port('http')}/live")
        await ws.send(json.dumps({"op": "subscribe", "channel": channel}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "subscribed"
        out.append(ws)
    return out


async def publish(node, channel: str, data) -> str:
    async with httpx.AsyncClient(timeout=30) as c:   # a new connection: any worker
        r = await c.post(node.url("http", "/api/publish"), json={"channel": channel, "data": data},
                         headers={"authorization": "Bearer demo-key"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


async def exactly(subs: list, expected: list) -> None:
    for ws in subs:
        got = [json.loads(await asyncio.wait_for(ws.recv(), 15)) for _ in expected]
        assert [(e["data"], e["id"]) for e in got] == expected
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


def test_mesh_events_reach_every_worker_once(tmp_path):
    ca_dir = make_ca(tmp_path)
    n1 = start(tmp_path, ca_dir, "n1", [], 1)
    n2 = None
    try:
        n2 = start(tmp_path, ca_dir, "n2", [mesh_address(n1)], 3)
        for node in (n1, n2):
            assert wait_for(lambda node=node: any(m["state"] == "alive" and m["link"]
                                                  for m in mesh_view(node)["members"] if not m["self"]), 30)

        async def main():
            on_n1 = await subscribers(n1, 2, "t")
            on_n2 = await subscribers(n2, SUBSCRIBERS, "t")
            from_n1 = [("a", await publish(n1, "t", "a"))]
            await exactly(on_n1 + on_n2, from_n1)
            from_n2 = [(d, await publish(n2, "t", d)) for d in ("b", "c", "d")]
            await exactly(on_n1 + on_n2, from_n2)
            for ws in on_n1 + on_n2:
                await ws.close()

        asyncio.run(asyncio.wait_for(main(), 180))
    finally:
        for node in (n2, n1):
            if node is not None:
                node.stop()
