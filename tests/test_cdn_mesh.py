"""A purge on one node's admin API empties the cache of every node of the mesh: two
node processes with the same CDN route in front of one real origin (test_cdn's)."""
from __future__ import annotations

import json
import signal

import httpx
from conftest import start_node
from mesh_helpers import MESH, make_ca, mesh_address, mesh_view, wait_for
from test_cdn import cdn_config, origin  # noqa: F401 (a fixture)

from farts import pki

TENANT = """
[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
"""


def start(root, ca_dir, node_id, seeds, origin_port):
    mesh_dir = root / node_id / "node" / "mesh"
    pki.issue(ca_dir, mesh_dir / "node.crt", mesh_dir / "node.key", ["127.0.0.1"], node_id=node_id)
    base = MESH.format(node_id=node_id, region="test", seeds=json.dumps(seeds), ca=ca_dir / "ca.crt",
                       cert=mesh_dir / "node.crt", key=mesh_dir / "node.key")
    return start_node(root / node_id, TENANT + cdn_config(origin_port), base=base)


def test_a_purge_travels_to_every_node(tmp_path, origin):  # noqa: F811
    origin.put("/files/a.jpg", b"A" * 1000, Cache_Control="max-age=600")
    origin.put("/files/b.jpg", b"B" * 1000, Cache_Control="max-age=600")
    ca_dir = make_ca(tmp_path)
    nodes = []
    try:
        nodes.append(start(tmp_path, ca_dir, "n1", [], origin.port))
        nodes.append(start(tmp_path, ca_dir, "n2", [mesh_address(nodes[0])], origin.port))
        for node in nodes:
            assert wait_for(lambda node=node: all(m["state"] == "alive" and (m["self"] or m["link"])
                                                  for m in mesh_view(node)["members"])
                            and len(mesh_view(node)["members"]) == 2, 20), mesh_view(node)
        for node in nodes:
            for name in ("a", "b"):
                for _ in range(2):   # the second is a hit
                    assert httpx.get(node.url("http", f"/media/{name}.jpg")).status_code == 200
        assert origin.count("/files/a.jpg") == origin.count("/files/b.jpg") == 2   # one miss per node
        r = httpx.post(nodes[0].url("admin", "/api/cache/purge"), json={"tenant": "demo", "key": "/media/a.jpg"})
        assert r.status_code == 200 and r.json() == {"purged": 1}

        def refetched_everywhere():
            for node in nodes:
                httpx.get(node.url("http", "/media/a.jpg"))
            return origin.count("/files/a.jpg") >= 4
        # n2 purges when the broadcast arrives: until then its request may still be a hit
        assert wait_for(refetched_everywhere, 10), origin.count("/files/a.jpg")
        for node in nodes:
            assert httpx.get(node.url("http", "/media/b.jpg")).status_code == 200
        assert origin.count("/files/b.jpg") == 2   # b was not purged anywhere
    finally:
        for node in nodes:
            node.stop(signal.SIGTERM)
