"""The CDN with three workers: the workers forward CDN routes to the node process, so
the node keeps one cache (one fill per object whichever worker a client lands on, one
LRU budget) and a purge applies to every worker's clients."""
from __future__ import annotations

import ssl

import httpx
from conftest import BASE_CONFIG
from test_workers_node import CONNECTIONS, eventually, get_new_connections, metric

CDN = """
[cdn]
flush_interval = 0.2

[cdn.origins.files]
kind = "dir"
path = "origin"

[[routes]]
prefix = "/media/"
kind = "cdn"
origin = "files"
"""


def test_one_cache_for_every_worker(node_factory):
    base = BASE_CONFIG.replace('data_dir = "{data_dir}"', 'data_dir = "{data_dir}"\nworkers = 3')
    node = node_factory(CDN, base=base)
    (node.data_dir / "origin").mkdir()
    body = b"cached once\n" * 200
    (node.data_dir / "origin" / "a.txt").write_bytes(body)
    url = node.url("http", "/media/a.txt")
    first = httpx.get(url, timeout=30)
    assert first.status_code == 200 and first.content == body and first.headers["x-cache"] == "MISS"
    assert eventually(lambda: httpx.get(url, timeout=30).headers["x-cache"] == "HIT")
    for r in get_new_connections(url, CONNECTIONS):   # through every worker: the one cache
        assert r.content == body and r.headers["x-cache"] == "HIT"
    assert eventually(lambda: metric(node, "farts_cdn_origin_requests_total") >= 1)
    assert metric(node, "farts_cdn_origin_requests_total") == 1
    purged = httpx.post(node.url("admin", "/api/cache/purge"), json={"tenant": "demo"}, timeout=10)
    assert purged.status_code == 200 and purged.json()["purged"] >= 1
    assert httpx.get(url, timeout=30).headers["x-cache"] == "MISS"
    # The node process sees the client's scheme, not the worker's hop (farts/workers/hop.py):
    # an HTTPS client's answer is cached apart from an HTTP client's, as without workers.
    secure, tls = node.url("https", "/media/a.txt"), ssl.create_default_context(cafile=node.ca)
    first = httpx.get(secure, timeout=30, verify=tls)
    assert first.content == body and first.headers["x-cache"] == "MISS"
    assert eventually(lambda: httpx.get(secure, timeout=30, verify=tls).headers["x-cache"] == "HIT")
