"""A node with worker processes, end to end: fixed routes, the reverse proxy and pub/sub
with ``[node] workers = 1`` (served in the node process) and ``workers = 3`` (three
worker processes on SO_REUSEPORT sockets), real clients (httpx, websockets), a real
upstream; a worker killed with SIGKILL is replaced while the others serve.

With several workers a client lands on one by the kernel's hash of its address: the
tests open many connections so that every worker serves some (the chance that a dozen
connections all land on one of three workers is 3 * 3^-12).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets
from conftest import BASE_CONFIG
from test_pubsub import PUBSUB_ROUTES

ROUTES = """
[[routes]]
prefix = "/hello"
kind = "static"
body = "hello from a worker"
[[routes]]
prefix = "/app"
kind = "proxy"
upstream = "app"

[upstreams.app]
servers = ["{upstream}"]
""" + PUBSUB_ROUTES

CONNECTIONS = 12


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/app/slow":
            time.sleep(0.3)
        body = json.dumps({"path": self.path, "rid": self.headers.get("x-request-id", "")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def node_with(node_factory, upstream, workers: int):
    base = BASE_CONFIG.replace('data_dir = "{data_dir}"', f'data_dir = "{{data_dir}}"\nworkers = {workers}')
    return node_factory(ROUTES.replace("{upstream}", upstream), base=base)


def metric(node, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(node.url("admin", "/metrics"), timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def eventually(check, timeout: float = 30.0):
    """Polls until ``check()`` is true (metrics reach the node every half second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def worker_pids(node) -> list[int]:
    """The pids of the workers now serving, from the node's log ("worker N (pid P) ready")."""
    ready = {}
    for m in re.finditer(r"worker (\d+) \(pid (\d+)\) ready", node.log()):
        ready[int(m.group(1))] = int(m.group(2))
    return list(ready.values())


def get_new_connections(url: str, n: int, **kw) -> list[httpx.Response]:
    """n requests, each on a new connection (so each is placed on a worker anew)."""
    out = []
    for _ in range(n):
        with httpx.Client(timeout=30, **kw) as c:
            out.append(c.get(url))
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_fixed_and_proxy_from_every_worker(node_factory, upstream, workers):
    node = node_with(node_factory, upstream, workers)
    for r in get_new_connections(node.url("http", "/hello"), CONNECTIONS):
        assert r.status_code == 200 and r.text == "hello from a worker"
    for r in get_new_connections(node.url("https", "/hello"), 3, verify=ssl.create_default_context(cafile=node.ca)):
        assert r.status_code == 200 and r.text == "hello from a worker"
    proxied = get_new_connections(node.url("http", "/app/x?y=1"), CONNECTIONS)
    assert all(r.status_code == 200 and r.json()["path"] == "/app/x?y=1" for r in proxied)
    # The request id names the process that proxied it (node id, boot id, counter).
    processes = {r.json()["rid"].rsplit("-", 1)[0] for r in proxied}
    assert len(processes) == (1 if workers == 1 else 3)
    assert len(worker_pids(node)) == (0 if workers == 1 else 3)
    # The metrics of every process, summed at the node's admin listener.
    assert eventually(lambda: metric(node, "farts_http_requests_total", route="/hello")
                      == CONNECTIONS + 3), node.log()
    assert eventually(lambda: metric(node, "farts_proxy_requests_total", upstream="app", outcome="ok")
                      == CONNECTIONS)
    # A slow request on a worker is in the node's /api/slow.
    assert httpx.get(node.url("http", "/app/slow"), timeout=30).status_code == 200
    assert eventually(lambda: "/app/slow" in [r["target"] for r in httpx.get(node.url("admin", "/api/slow"),
                                                                               timeout=10).json()["requests"]])
    # The status page's samples count the workers' requests too.
    def status_rps():
        history = httpx.get(node.url("admin", "/api/history"), timeout=10).json()["history"]
        return sum(row[1] or 0 for row in history.get("test-node", []))
    assert eventually(lambda: status_rps() > 0)


async def _pubsub_everywhere(node, channel: str) -> None:
    url = f"ws://127.0.0.1:{node.port('http')}/live"
    subs = [await websockets.connect(url) for _ in range(CONNECTIONS)]
    for ws in subs:
        await ws.send(json.dumps({"op": "subscribe", "channel": channel}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "subscribed"
    # Presence, asked of any worker, counts the subscribers of all.
    for _ in range(CONNECTIONS // 2):
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(node.url("http", f"/api/presence?channel={channel}"),
                            headers={"authorization": "Bearer demo-key"})
            assert r.json() == {"channel": channel, "subscribers": CONNECTIONS}
    # Publishes through new connections (so through every worker), one event each.
    ids = []
    for i in range(6):
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(node.url("http", "/api/publish"), json={"channel": channel, "data": {"n": i}},
                             headers={"authorization": "Bearer demo-key"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
    for ws in subs:   # every event exactly once, in the publish order, with the same ids
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(6)]
        assert [(e["data"]["n"], e["id"]) for e in got] == list(enumerate(ids))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)   # and nothing more
    for ws in subs:
        await ws.close()
    # Resume from the second event, on new connections (any worker): the same four.
    for _ in range(CONNECTIONS // 2):
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": channel, "since": ids[1]}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["op"] == "subscribed" and answer["recovered"] is True
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(4)]
            assert [e["id"] for e in got] == ids[2:]
    # The same with event streams (Last-Event-ID), on new connections.
    for _ in range(CONNECTIONS // 2):
        assert await _sse_ids(node, channel, ids[1], 4) == ids[2:]


async def _sse_ids(node, channel: str, last_id: str, n: int) -> list[str]:
    got: list[str] = []
    async with httpx.AsyncClient(timeout=30) as c, c.stream(
            "GET", node.url("http", f"/live/sse?channel={channel}"), headers={"last-event-id": last_id}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                got.append(line[4:])
                if len(got) == n:
                    return got
    return got


@pytest.mark.parametrize("workers", [1, 3])
def test_pubsub_reaches_every_worker_once_and_resumes_anywhere(node_factory, upstream, workers):
    node = node_with(node_factory, upstream, workers)
    asyncio.run(asyncio.wait_for(_pubsub_everywhere(node, "news"), 120))
    assert eventually(lambda: metric(node, "farts_pubsub_events_published_total") == 6)
    # 12 subscribers, 6 events: each delivered live once, whichever process holds the
    # subscriber (replays on resume are not counted as deliveries).
    assert eventually(lambda: metric(node, "farts_pubsub_deliveries_total") >= CONNECTIONS * 6)
    time.sleep(1)   # (two metrics pushes: a duplicate delivery would show by now)
    assert metric(node, "farts_pubsub_deliveries_total") == CONNECTIONS * 6


def test_a_killed_worker_is_replaced_while_the_others_serve(node_factory, upstream):
    node = node_with(node_factory, upstream, 3)
    asyncio.run(asyncio.wait_for(_publish_one(node), 60))   # history the new worker must get
    before = worker_pids(node)
    # Its subscribers are lost with it, and counted: those closed under the clients.
    lost = asyncio.run(asyncio.wait_for(_subscribers_across_a_kill(node, before[0]), 120))
    assert lost >= 1   # (30 subscribers all on the two others: (2/3)^30)
    assert eventually(lambda: metric(node, "farts_worker_lost_connections_total") == lost), (
        lost, metric(node, "farts_worker_lost_connections_total"))
    # New connections keep being answered: those the kernel places on the dead worker's
    # socket wait in its queue (the node process holds it) for the worker started after it.
    for r in get_new_connections(node.url("http", "/hello"), CONNECTIONS):
        assert r.status_code == 200
    assert eventually(lambda: metric(node, "farts_worker_restarts_total", reason="killed") == 1), node.log()
    assert eventually(lambda: len(set(worker_pids(node)) - set(before)) == 1)
    assert eventually(lambda: metric(node, "farts_workers") == 3)
    # The new worker has the history too: resume works on every worker.
    asyncio.run(asyncio.wait_for(_resume_everywhere(node), 120))
    assert node.stop() == 0   # and the node drains the three on SIGTERM


async def _subscribers_across_a_kill(node, pid: int) -> int:
    """30 subscribers; SIGKILL to worker ``pid``; an event: how many connections died."""
    url = f"ws://127.0.0.1:{node.port('http')}/live"
    subs = [await websockets.connect(url) for _ in range(30)]
    for ws in subs:
        await ws.send(json.dumps({"op": "subscribe", "channel": "crash"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "subscribed"
    # (a scrape asks every worker: then the node knows each one's open connections)
    assert await asyncio.to_thread(eventually, lambda: metric(node, "farts_http_connections_open",
                                                                listener="http") >= 30)
    os.kill(pid, signal.SIGKILL)
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(node.url("http", "/api/publish"), json={"channel": "crash", "data": "after"},
                         headers={"authorization": "Bearer demo-key"})
        assert r.status_code == 200, r.text
    lost = 0
    for ws in subs:
        try:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["data"] == "after"
        except websockets.ConnectionClosed:
            lost += 1
        await ws.close()
    return lost


async def _publish_one(node) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(node.url("http", "/api/publish"), json={"channel": "kept", "data": "before"},
                         headers={"authorization": "Bearer demo-key"})
        assert r.status_code == 200, r.text


async def _resume_everywhere(node) -> None:
    url = f"ws://127.0.0.1:{node.port('http')}/live"
    for _ in range(CONNECTIONS):
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "kept", "since": "test-node:1"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "subscribed"
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["data"] == "before"


def test_workers_flag_and_a_worker_stopped_alone_is_replaced(node_factory, upstream):
    node = node_factory(ROUTES.replace("{upstream}", upstream), serve_args=("--workers", "2"))
    assert b"(2 worker processes)" in node.output[0]
    before = worker_pids(node)
    assert len(before) == 2
    os.kill(before[0], signal.SIGTERM)   # drains alone; not a crash: no connection counted lost
    assert eventually(lambda: metric(node, "farts_worker_restarts_total", reason="exited") == 1)
    assert eventually(lambda: len(set(worker_pids(node)) - set(before)) == 1)
    for r in get_new_connections(node.url("http", "/hello"), CONNECTIONS):
        assert r.status_code == 200
    assert metric(node, "farts_worker_lost_connections_total") == 0
