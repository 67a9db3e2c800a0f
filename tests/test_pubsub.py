"""Live pub/sub through a real node: websockets and httpx as clients, the publish API.

Every test starts its own node (conftest.start_node) with the two tenants of the base
config: "demo" (localhost, 127.0.0.1, key demo-key) and "other" (other.test, other-key).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time

import httpx
import jwt
import pytest
import websockets
from conftest import WORKERS_1_AND_3

# The base config's tenant secrets are short test strings; PyJWT warns about that.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PUBSUB_ROUTES = """
[[routes]]
prefix = "/live"
kind = "pubsub"
[[routes]]
prefix = "/api/publish"
kind = "pubsub"
[[routes]]
prefix = "/api/presence"
kind = "pubsub"
"""


def pubsub_node(node_factory, extra: str = ""):
    return node_factory(PUBSUB_ROUTES + extra)


def ws_url(node, host: str = "127.0.0.1") -> str:
    return f"ws://{host}:{node.port('http')}/live"


def publish(node, channel, data, key="demo-key"):
    r = httpx.post(node.url("http", "/api/publish"), json={"channel": channel, "data": data},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def publish_batch(node, messages, key="demo-key"):
    r = httpx.post(node.url("http", "/api/publish"), json={"messages": messages},
                   headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["ids"]


async def subscribe(ws, channel, **extra):
    await ws.send(json.dumps({"op": "subscribe", "channel": channel, **extra}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def recv_json(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def metric(node, name: str) -> float:
    text = httpx.get(node.url("admin", "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- subscribe, publish, deliver ---------------------------------------------------------

@WORKERS_1_AND_3
def test_websocket_subscriber_gets_published_events_in_order(node_factory):
    node = pubsub_node(node_factory)

    async def main():
        async with websockets.connect(ws_url(node)) as ws:
            assert await subscribe(ws, "thread-1") == {"op": "subscribed", "channel": "thread-1",
                                                       "recovered": False}
            ids = await asyncio.to_thread(publish_batch, node, [
                {"channel": "thread-1", "data": {"n": i, "text": "héllo"}} for i in range(5)])
            got = [await recv_json(ws) for _ in range(5)]
            assert [g["data"] for g in got] == [{"n": i, "text": "héllo"} for i in range(5)]
            assert [g["id"] for g in got] == ids
            assert {g["channel"] for g in got} == {"thread-1"}
            # ids order: each cursor's seq for this node grows
            seqs = [int(i.rsplit(":", 1)[1]) for i in ids]
            assert seqs == sorted(seqs) and len(set(seqs)) == 5
            await ws.send(json.dumps({"op": "ping"}))
            assert await recv_json(ws) == {"op": "pong"}
    run(main())
    assert metric(node, "farts_pubsub_deliveries_total") == 5


def test_one_connection_many_channels_and_unsubscribe(node_factory):
    node = pubsub_node(node_factory)

    async def main():
        async with websockets.connect(ws_url(node)) as ws:
            await subscribe(ws, "a")
            await subscribe(ws, "b")
            await asyncio.to_thread(publish, node, "a", 1)
            await asyncio.to_thread(publish, node, "b", 2)
            assert [(m["channel"], m["data"]) for m in [await recv_json(ws), await recv_json(ws)]] \
                == [("a", 1), ("b", 2)]
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "a"}))
            assert await recv_json(ws) == {"op": "unsubscribed", "channel": "a"}
            await asyncio.to_thread(publish, node, "a", 3)
            await asyncio.to_thread(publish, node, "b", 4)
            m = await recv_json(ws)
            assert (m["channel"], m["data"]) == ("b", 4)
    run(main())


@WORKERS_1_AND_3
def test_sse_subscriber_gets_events_heartbeats_and_resumes(node_factory):
    node = pubsub_node(node_factory, "[pubsub]\nping_interval = 0.3\n")
    url = node.url("http", "/live/sse")

    def read_events(lines, n):
        events, current = [], {}
        for line in lines:
            if line == "":
                if current:
                    events.append(current)
                    current = {}
                    if len(events) == n:
                        return events
                continue
            if line.startswith(":"):
                continue  # a comment (heartbeat)
            field, _, value = line.partition(": ")
            current[field] = current.get(field, "") + value
        return events

    with httpx.Client(timeout=10) as client:
        with client.stream("GET", url, params=[("channel", "x"), ("channel", "y")]) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            lines = resp.iter_lines()
            ids = publish_batch(node, [{"channel": "x", "data": "one"}, {"channel": "y", "data": [2]}])
            publish(node, "z", "not subscribed")
            events = read_events(lines, 2)
            assert [json.loads(e["data"])["data"] for e in events] == ["one", [2]]
            assert [e["id"] for e in events] == ids
            # the heartbeat comment arrives while nothing is published
            for line in lines:
                if line.startswith(": heartbeat"):
                    break
        later = publish_batch(node, [{"channel": "x", "data": i} for i in range(3)])
        with client.stream("GET", url, params={"channel": "x"}, headers={"last-event-id": ids[1]}) as resp:
            events = read_events(resp.iter_lines(), 3)
            assert [e["id"] for e in events] == later
            assert [json.loads(e["data"])["data"] for e in events] == [0, 1, 2]


# -- resume ------------------------------------------------------------------------------

@WORKERS_1_AND_3
def test_resume_after_disconnect_gets_exactly_the_missed_events_then_live(node_factory):
    node = pubsub_node(node_factory)

    async def main():
        async with websockets.connect(ws_url(node)) as ws:
            await subscribe(ws, "c")
            await asyncio.to_thread(publish, node, "c", "before")
            last = (await recv_json(ws))["id"]
        missed = await asyncio.to_thread(publish_batch, node, [{"channel": "c", "data": i} for i in range(50)])
        async with websockets.connect(ws_url(node)) as ws:
            assert await subscribe(ws, "c", since=last) == {"op": "subscribed", "channel": "c", "recovered": True}
            got = [await recv_json(ws) for _ in range(50)]
            assert [g["data"] for g in got] == list(range(50))
            assert [g["id"] for g in got] == missed
            live = await asyncio.to_thread(publish, node, "c", "live")
            m = await recv_json(ws)
            assert (m["id"], m["data"]) == (live, "live")
            # nothing else (no duplicate) is waiting
            await ws.send(json.dumps({"op": "ping"}))
            assert await recv_json(ws) == {"op": "pong"}
    run(main())


def test_resume_from_a_cursor_outside_the_window_says_not_recovered(node_factory):
    node = pubsub_node(node_factory, "[pubsub]\nhistory_size = 5\n")

    async def main():
        first = await asyncio.to_thread(publish, node, "w", 0)
        await asyncio.to_thread(publish_batch, node, [{"channel": "w", "data": i} for i in range(1, 21)])
        async with websockets.connect(ws_url(node)) as ws:
            assert (await subscribe(ws, "w", since=first))["recovered"] is False
            got = [(await recv_json(ws))["data"] for _ in range(5)]
            assert got == [16, 17, 18, 19, 20]  # what the window still holds
            r = await subscribe(ws, "w2", since="garbage")
            assert r["op"] == "error" and r["code"] == 400
    run(main())


# -- tenants and tokens ----------------------------------------------------------------

@WORKERS_1_AND_3
def test_tenants_never_see_each_others_channels(node_factory):
    node = pubsub_node(node_factory)
    port = node.port("http")

    async def main():
        async with websockets.connect(ws_url(node)) as a, \
                websockets.connect(f"ws://other.test:{port}/live", host="127.0.0.1", port=port) as b:
            await subscribe(a, "shared")
            await subscribe(b, "shared")
            await asyncio.to_thread(publish, node, "shared", "for other", key="other-key")
            assert (await recv_json(b))["data"] == "for other"
            await asyncio.to_thread(publish, node, "shared", "for demo", key="demo-key")
            assert (await recv_json(a))["data"] == "for demo"  # demo's first event: B's never came
            with pytest.raises(asyncio.TimeoutError):
                await recv_json(b, timeout=0.3)
    run(main())
    r = httpx.get(node.url("http", "/api/presence"), params={"channel": "shared"},
                  headers={"authorization": "Bearer other-key"})
    assert r.json() == {"channel": "shared", "subscribers": 0}


def token(secret, channels, exp_in=60):
    return jwt.encode({"channels": channels, "exp": int(time.time()) + exp_in}, secret, algorithm="HS256")


@WORKERS_1_AND_3
def test_private_channels_need_a_valid_token_of_the_same_tenant(node_factory):
    node = pubsub_node(node_factory)

    async def main():
        async with websockets.connect(ws_url(node)) as ws:
            cases = {
                "missing": (None, 401),
                "forged": (token("not-the-secret", ["private:room"]), 403),
                "expired": (token("demo-secret", ["private:room"], exp_in=-10), 403),
                "other tenant": (token("other-secret", ["private:room"]), 403),
                "other channel": (token("demo-secret", ["private:elsewhere"]), 403),
                "garbage": ("not.a.jwt", 403),
            }
            for name, (tok, code) in cases.items():
                extra = {"token": tok} if tok else {}
                r = await subscribe(ws, "private:room", **extra)
                assert (r["op"], r["code"]) == ("error", code), name
            await asyncio.to_thread(publish, node, "private:room", "secret stuff")
            await ws.send(json.dumps({"op": "ping"}))
            assert await recv_json(ws) == {"op": "pong"}  # no event leaked before it
            r = await subscribe(ws, "private:room", token=token("demo-secret", ["private:*"]))
            assert r == {"op": "subscribed", "channel": "private:room", "recovered": False}
            await asyncio.to_thread(publish, node, "private:room", "now you see it")
            assert (await recv_json(ws))["data"] == "now you see it"
    run(main())
    r = httpx.get(node.url("http", "/live/sse"), params={"channel": "private:room"})
    assert r.status_code == 401


# -- bad input ---------------------------------------------------------------------------

def raw_ws(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's worked example
    return s


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_close_code(s: socket.socket) -> int:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    # skip text frames; find the close frame (opcode 8)
    i = 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = struct.unpack("!H", data[j:j + 2])[0], j + 2
        if op == 8:
            return struct.unpack("!H", data[j:j + 2])[0]
        i = j + n
    raise AssertionError(f"no close frame in {data!r}")


@pytest.mark.parametrize("frame,code", [
    (b"\x81\x05hello", 1002),                             # unmasked client frame
    (masked(1, b"\xff\xfe bad utf-8"), 1007),             # invalid UTF-8 text
    (masked(1, b"x" * 3000), 1009),                        # over max_command_bytes
    (masked(2, b"binary"), 1003),                          # binary is not a command
    (masked(9, b"x" * 126), 1002),                         # control frame over 125 bytes
], ids=["unmasked", "bad-utf8", "too-long", "binary", "long-control"])
def test_bad_frames_close_with_the_rfc_code_and_others_carry_on(node_factory, frame, code):
    node = pubsub_node(node_factory, "[pubsub]\nmax_command_bytes = 2048\n")

    async def main():
        async with websockets.connect(ws_url(node)) as good:
            await subscribe(good, "c")
            bad = raw_ws(node.port("http"))
            bad.sendall(frame)
            assert await asyncio.to_thread(read_close_code, bad) == code
            bad.close()
            await asyncio.to_thread(publish, node, "c", "still here")
            assert (await recv_json(good))["data"] == "still here"
    run(main())
    assert node.alive()


def test_bad_commands_get_error_replies_and_the_connection_stays(node_factory):
    node = pubsub_node(node_factory)

    async def main():
        async with websockets.connect(ws_url(node)) as ws:
            for text, code in [("{not json", 400), ("[1,2]", 400), ('{"op":"dance"}', 400),
                               ('{"op":"subscribe"}', 400), ('{"op":"subscribe","channel":""}', 400),
                               ('{"op":"subscribe","channel":"' + "x" * 300 + '"}', 400)]:
                await ws.send(text)
                r = await recv_json(ws)
                assert (r["op"], r["code"]) == ("error", code), text
            assert await subscribe(ws, "fine") == {"op": "subscribed", "channel": "fine", "recovered": False}
    run(main())
    assert metric(node, "farts_pubsub_errors_total") >= 6


def test_http_errors_of_the_endpoints(node_factory):
    node = pubsub_node(node_factory)
    live = node.url("http", "/live")
    assert httpx.get(live).status_code == 426
    r = httpx.get(live, headers={"upgrade": "websocket", "connection": "upgrade",
                                 "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                                 "sec-websocket-version": "8"})
    assert r.status_code == 426 and r.headers["sec-websocket-version"] == "13"
    pub = node.url("http", "/api/publish")
    assert httpx.post(pub, json={"channel": "c", "data": 1}).status_code == 401
    assert httpx.post(pub, json={"channel": "c", "data": 1},
                      headers={"authorization": "Bearer nope"}).status_code == 401
    auth = {"authorization": "Bearer demo-key"}
    assert httpx.post(pub, content=b"{", headers=auth).status_code == 400
    r = httpx.post(pub, json={"messages": [{"channel": "c", "data": 1}, {"channel": 5, "data": 1}]}, headers=auth)
    assert r.status_code == 400 and "messages[1].channel" in r.json()["error"]
    assert httpx.get(pub, headers=auth).status_code == 405
    assert httpx.get(node.url("http", "/live/sse")).status_code == 400
    assert httpx.get(node.url("http", "/live/sse"), params={"channel": "c", "since": "x"}).status_code == 400
    # An event stream is a chunked body: over HTTP/1.0 the transport refuses the upgrade.
    with socket.create_connection(("127.0.0.1", node.port("http")), timeout=5) as s:
        s.sendall(b"GET /live/sse?channel=c HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 400"), "event stream over HTTP/1.0"
    assert metric(node, "farts_pubsub_connections") == 0


# -- presence, slow consumers, many subscribers -----------------------------------------

@WORKERS_1_AND_3
def test_presence_counts_subscribers_of_the_tenant(node_factory):
    node = pubsub_node(node_factory)

    def presence(channel):
        r = httpx.get(node.url("http", "/api/presence"), params={"channel": channel},
                      headers={"authorization": "Bearer demo-key"})
        return r.json()["subscribers"]

    async def main():
        conns = [await websockets.connect(ws_url(node)) for _ in range(3)]
        for ws in conns:
            await subscribe(ws, "room")
        assert await asyncio.to_thread(presence, "room") == 3
        await conns[0].close()
        await conns[1].send(json.dumps({"op": "unsubscribe", "channel": "room"}))
        await recv_json(conns[1])
        assert await asyncio.to_thread(presence, "room") == 1
        for ws in conns[1:]:
            await ws.close()
    run(main())
    assert httpx.get(node.url("http", "/api/presence"), params={"channel": "room"}).status_code == 401


def test_a_slow_consumer_is_dropped_and_1000_fast_subscribers_get_everything(node_factory):
    node = pubsub_node(node_factory, """
        [limits]
        max_connections_per_ip = 5000
        [pubsub]
        max_buffer_bytes = 262144
        """)
    port = node.port("http")
    n_fast, n_events = 1000, 20

    async def main():
        # The slow one subscribes to the channel everyone reads and to a flood channel,
        # then never reads again; a small receive buffer keeps the kernel from soaking
        # up much of what the node sends.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     + masked(1, b'{"op":"subscribe","channel":"thread"}')
                     + masked(1, b'{"op":"subscribe","channel":"flood"}'))
        fast = []
        for _ in range(n_fast):
            ws = await websockets.connect(ws_url(node), compression=None)
            await ws.send('{"op":"subscribe","channel":"thread"}')
            fast.append(ws)
        for ws in fast:
            assert (await recv_json(ws))["op"] == "subscribed"
        counts = [0] * n_fast

        async def drain(i, ws):
            while counts[i] < n_events:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert m["data"] == counts[i]
                counts[i] += 1

        readers = [asyncio.ensure_future(drain(i, ws)) for i, ws in enumerate(fast)]
        flood = "x" * 128 * 1024
        for k in range(n_events):
            await asyncio.to_thread(publish, node, "thread", k)
            await asyncio.to_thread(publish_batch, node, [{"channel": "flood", "data": flood}] * 4)
        await asyncio.gather(*readers)
        assert counts == [n_events] * n_fast
        for ws in fast:
            await ws.close()
        slow.close()
    run(main())
    assert metric(node, "farts_pubsub_slow_consumer_drops_total") == 1


def test_node_ws_client_subscribes_and_receives(node_factory, tmp_path):
    import shutil
    import subprocess
    if shutil.which("node") is None:
        pytest.skip("node is not installed (ci/setup installs it)")
    node = pubsub_node(node_factory)
    script = os.path.join(os.path.dirname(__file__), "node", "ws_subscriber.js")
    env = {**os.environ, "NODE_PATH": os.path.join(os.path.dirname(__file__), "node", "node_modules")}
    proc = subprocess.Popen(["node", script, ws_url(node), "news", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "subscribed"
        ids = publish_batch(node, [{"channel": "news", "data": {"i": i}} for i in range(3)])
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["data"] for g in got] == [{"i": 0}, {"i": 1}, {"i": 2}], err
    assert [g["id"] for g in got] == ids


def test_reconnect_storm_is_served_while_publishing_goes_on(node_factory):
    """1,000 clients connect and subscribe at once (a node restart's worth of
    reconnects, scaled to this machine) while events are published: every publish is
    answered, every storm client is subscribed, and a subscriber from before the storm
    gets every event in order. Per-IP limits still apply to WebSocket connections."""
    node = pubsub_node(node_factory, """
        [limits]
        max_connections_per_ip = 3000
        """)

    async def main():
        async with websockets.connect(ws_url(node)) as steady:
            await subscribe(steady, "storm")

            async def storm_client():
                ws = await websockets.connect(ws_url(node), open_timeout=60)
                await ws.send('{"op":"subscribe","channel":"storm"}')
                assert (await recv_json(ws, timeout=60))["op"] == "subscribed"
                return ws

            async def publisher():
                ids = []
                for k in range(40):
                    ids += await asyncio.to_thread(publish_batch, node, [{"channel": "storm", "data": k}])
                    await asyncio.sleep(0.01)
                return ids

            pub = asyncio.ensure_future(publisher())
            clients = await asyncio.gather(*[storm_client() for _ in range(1000)])
            ids = await pub
            got = [await recv_json(steady, timeout=10) for _ in range(40)]
            assert [g["data"] for g in got] == list(range(40)) and [g["id"] for g in got] == ids
            await asyncio.gather(*[ws.close() for ws in clients])
    run(main())
    assert node.alive()


def test_per_ip_connection_limit_applies_to_websocket_subscribers(node_factory):
    node = pubsub_node(node_factory, """
        [limits]
        max_connections_per_ip = 5
        """)

    async def main():
        conns = [await websockets.connect(ws_url(node)) for _ in range(5)]
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.connect(ws_url(node))
        assert refused.value.response.status_code == 503
        await conns[0].close()
        for _ in range(50):  # until the node has seen the close and freed the place
            try:
                again = await websockets.connect(ws_url(node))
                break
            except websockets.exceptions.InvalidStatus:
                await asyncio.sleep(0.1)
        assert (await subscribe(again, "c"))["op"] == "subscribed"
        for ws in [*conns[1:], again]:
            await ws.close()
    run(main())
    assert metric(node, "farts_http_connections_refused_total") >= 1
