"""Restart without dropping work: a node under load is taken over by `serve --takeover`.

Real clients the whole time: httpx publishing and fetching over keep-alive connections,
300 WebSocket subscribers (the websockets library) that resume with their cursors when
told to (close 1012), a pymongo writer. After the restart: no HTTP request failed,
every subscriber has every event exactly once and in order, every acknowledged write is
in the database the new process serves.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading

import httpx
import pymongo
import pytest
import websockets
from conftest import BASE_CONFIG, start_node
from pymongo.errors import AutoReconnect, DuplicateKeyError
from test_pubsub import PUBSUB_ROUTES, ws_url

SUBSCRIBERS = 300
SSE_SUBSCRIBERS = 20
CONFIG = PUBSUB_ROUTES + """
[[routes]]
prefix = "/ping"
kind = "static"
body = "pong"
[db]
enabled = true
port = 0
[release]
reconnect_spread = 2.0
"""


class Subscriber:
    def __init__(self, url: str) -> None:
        self.url = url
        self.got: list = []
        self.last: str | None = None
        self.restarts = 0
        self.not_recovered = 0   # resumes answered "recovered": false

    async def run(self, subscribed: asyncio.Event) -> None:
        while True:
            try:
                async with websockets.connect(self.url, open_timeout=60) as ws:
                    cmd = {"op": "subscribe", "channel": "c"}
                    if self.last is not None:
                        cmd["since"] = self.last
                    await ws.send(json.dumps(cmd))
                    reply = json.loads(await ws.recv())
                    assert reply["op"] == "subscribed", reply
                    self.not_recovered += "since" in cmd and not reply["recovered"]
                    subscribed.set()
                    while True:
                        m = json.loads(await ws.recv())
                        self.got.append(m["data"])
                        self.last = m["id"]
            except websockets.ConnectionClosed as e:
                assert e.rcvd is not None and e.rcvd.code == 1012, e
                self.restarts += 1


class SSESubscriber(Subscriber):
    """An event stream client that does what an EventSource does: on the end of the
    stream it reconnects with Last-Event-ID."""

    async def run(self, subscribed: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None)) as client:
            while True:
                told = False
                headers = {"last-event-id": self.last} if self.last else {}
                async with client.stream("GET", self.url, headers=headers) as r:
                    assert r.status_code == 200
                    subscribed.set()
                    kind, event_id, data = "message", None, None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("id: "):
                            event_id = line[4:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif line == "":
                            if kind == "reconnect":
                                told = True
                            elif data is not None:
                                self.got.append(json.loads(data)["data"])
                                self.last = event_id
                            kind, event_id, data = "message", None, None
                assert told, "the stream ended without a reconnect event"
                self.restarts += 1


class Load:
    """HTTP load on nodes until ``finish``: a publisher (to each of ``publish_urls`` in turn,
    each event's data in ``published`` once answered 200) and a getter per URL of
    ``ping_urls`` (a static "pong"), every failed request in ``failures``."""

    def __init__(self, publish_urls: list[str], ping_urls: list[str], pause: float, ping_pause: float = 0.0) -> None:
        self.publish_urls, self.ping_urls, self.pause, self.ping_pause = publish_urls, ping_urls, pause, ping_pause
        self.failures: list = []
        self.published: list = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._publisher()), *(asyncio.ensure_future(self._getter(u))
                                                                  for u in ping_urls)]

    async def _publisher(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                try:
                    r = await client.post(self.publish_urls[n % len(self.publish_urls)], json={"channel": "c", "data": n},
                                          headers={"authorization": "Bearer demo-key"})
                    if r.status_code != 200:
                        self.failures.append(("publish", r.status_code, r.text))
                        continue
                except httpx.HTTPError as e:
                    self.failures.append(("publish", repr(e)))
                    continue
                self.published.append(n)
                n += 1
                await asyncio.sleep(self.pause)

    async def _getter(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    r = await client.get(url)
                    if r.status_code != 200 or r.text != "pong":
                        self.failures.append(("get", r.status_code))
                except httpx.HTTPError as e:
                    self.failures.append(("get", repr(e)))
                await asyncio.sleep(self.ping_pause)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def delivered(subs: list, tasks: list, published: list) -> None:
    """Waits until every subscriber has had time for every event (or one failed: its
    error is raised), then stops them."""
    for _ in range(600):
        if all(len(s.got) >= len(published) for s in subs) or any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.1)
    for t in tasks:
        if t.done():
            t.result()
        t.cancel()


def mongo_writer(host: str, port: int, stop: threading.Event, acked: list, errors: list) -> None:
    client = pymongo.MongoClient(host, port, serverSelectionTimeoutMS=30000, retryWrites=False)
    coll = client.restart.writes
    i = 0
    while not stop.is_set():
        try:
            coll.insert_one({"_id": i})
        except AutoReconnect as e:   # the connection closed: not acknowledged, try it again
            errors.append(repr(e))
            continue
        except DuplicateKeyError:
            pass   # committed by the try whose answer was lost
        acked.append(i)
        i += 1
    client.close()


# The listening sockets the new process takes over: the node's own, or with workers their
# groups too (farts/workers/supervisor.py hand_over).
TAKEN = {1: "http, https, admin, db",
         2: "forwarded, admin, " + ", ".join(f"workers.{key}.{i}" for key in ("http", "https", "db") for i in (0, 1))}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("old_workers, new_workers", [(1, 1), (2, 2), (1, 2)],
                         ids=["workers1", "workers2", "workers1-then-2"])
def test_restart_under_load_drops_nothing(tmp_path, old_workers, new_workers):
    old = start_node(tmp_path, CONFIG, workers=old_workers)
    db_host, db_port = re.search(r"db\s+mongodb://([\d.]+):(\d+)/", b"".join(old.output).decode()).groups()
    async def main():
        subs = [Subscriber(ws_url(old)) for _ in range(SUBSCRIBERS)]
        subs += [SSESubscriber(old.url("http", "/live/sse?channel=c")) for _ in range(SSE_SUBSCRIBERS)]
        ready = [asyncio.Event() for _ in subs]
        tasks = [asyncio.ensure_future(s.run(r)) for s, r in zip(subs, ready, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)

        load = Load([old.url("http", "/api/publish")], [old.url("http", "/ping")] * 4, pause=0.005)
        stop_db, acked, db_errors = threading.Event(), [], []
        writer = threading.Thread(target=mongo_writer, args=(db_host, int(db_port), stop_db, acked, db_errors))
        writer.start()
        # A client whose keep-alive connection to the old process stays quiet until the
        # subscribers are moving: its publish is answered by the old process, and must reach
        # those already on the new one too.
        late = httpx.AsyncClient(timeout=60, limits=httpx.Limits(keepalive_expiry=300))   # (kept while quiet)
        assert (await late.get(old.url("http", "/ping"))).status_code == 200
        await asyncio.sleep(1.5)
        new = await asyncio.to_thread(start_node, tmp_path, CONFIG, serve_args=("--takeover",), workers=new_workers)
        try:
            assert new.urls["http"] == old.urls["http"]   # the same socket, taken over
            await asyncio.sleep(1.0)   # (reconnect_spread is 2 s)
            r = await late.post(old.url("http", "/api/publish"), json={"channel": "c", "data": "late"},
                                headers={"authorization": "Bearer demo-key"})
            assert r.status_code == 200 and "~" in r.json()["id"], r.text   # the old process's origin
            load.published.append("late")
            await late.aclose()
            assert await asyncio.to_thread(old.proc.wait, 60) == 0, old.log()
            await asyncio.sleep(1.0)   # load on the new process alone for a while
            await load.finish()
            stop_db.set()
            await asyncio.to_thread(writer.join, 60)
            await delivered(subs, tasks, load.published)
            return subs, load, acked, db_errors, new
        except BaseException:
            new.stop()
            raise

    subs, load, acked, db_errors, new = asyncio.run(main())
    try:
        assert load.failures == []
        assert len(load.published) > 50
        for s in subs:   # every event, once (the late one may come before or after others)
            assert sorted(map(str, s.got)) == sorted(map(str, load.published))
        assert [s.restarts for s in subs] == [1] * len(subs)   # each resumed once, on the new process
        assert len(acked) > 20
        client = pymongo.MongoClient(db_host, int(db_port), serverSelectionTimeoutMS=10000)
        present = {d["_id"] for d in client.restart.writes.find({}, {"_id": 1})}
        client.close()
        assert set(acked) <= present, sorted(set(acked) - present)[:20]
        assert f"took over {TAKEN[old_workers]} from" in new.log()
    finally:
        new.stop()


@pytest.mark.timeout(180)
def test_a_mesh_node_taken_over_rejoins_and_its_subscribers_miss_nothing_of_the_peers(tmp_path):
    from mesh_helpers import make_ca, mesh_address, start_mesh_node, states, wait_for

    ca = make_ca(tmp_path)
    tenants = BASE_CONFIG[BASE_CONFIG.index("[[tenants]]"):]
    extra = "\n" + tenants + PUBSUB_ROUTES + "[release]\nreconnect_spread = 0.5\n"
    a = start_mesh_node(tmp_path, ca, "a", [], extra=extra)
    b = start_mesh_node(tmp_path, ca, "b", [mesh_address(a)], extra=extra)
    alive = lambda n, other: states(n).get(other, ("",))[0] == "alive"  # noqa: E731
    assert wait_for(lambda: alive(a, "b") and alive(b, "a"), 30)
    publish = lambda data: httpx.post(b.url("http", "/api/publish"), json={"channel": "c", "data": data},  # noqa: E731
                                      headers={"authorization": "Bearer demo-key"}).raise_for_status()

    async def main():
        sub = Subscriber(ws_url(a))
        subscribed = asyncio.Event()
        task = asyncio.ensure_future(sub.run(subscribed))
        await asyncio.wait_for(subscribed.wait(), 30)
        await asyncio.to_thread(publish, "before")
        new = await asyncio.to_thread(start_mesh_node, tmp_path, ca, "a", [], extra=extra,
                                      serve_args=("--takeover",))
        try:
            await asyncio.to_thread(publish, "during")   # (a may be rejoining the mesh now)
            assert await asyncio.to_thread(a.proc.wait, 60) == 0
            assert await asyncio.to_thread(wait_for, lambda: alive(b, "a") and alive(new, "b"), 30), \
                (states(b), states(new))
            await asyncio.to_thread(publish, "after")
            for _ in range(300):
                if len(sub.got) >= 3 or task.done():
                    break
                await asyncio.sleep(0.1)
            task.cancel()
            return sub, new
        except BaseException:
            new.stop()
            raise

    sub, new = asyncio.run(main())
    try:
        # Each once; "during" may come after "after": published while the new process
        # joins the mesh, it can reach it by the catch-up, after the live "after".
        assert sorted(sub.got) == ["after", "before", "during"] and sub.got[0] == "before"
        assert sub.restarts == 1
    finally:
        new.stop()
        b.stop()
