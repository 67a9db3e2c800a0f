"""The fanout's io_uring path against its send() path: real sockets on loopback.

The same publish sequence goes through a Fanout with a SendRing and through one without;
every subscriber's socket must then deliver exactly the bytes queued for it, in order, on
both paths.  Small socket buffers and readers that read little at a time make sends go
partial and hit EAGAIN (the counters prove it happened), so the path where the socket
takes part and the transport the rest is exercised on both sides."""
from __future__ import annotations

import asyncio
import random
import socket

import httpx
import pytest
import websockets
from test_pubsub import metric, pubsub_node

from farts.pubsub.fanout import IoUringUnavailable, send_ring
from fast.fanout import Fanout, Subscriber

uvloop = pytest.importorskip("uvloop")

SUBSCRIBERS = 40
EVENTS = 240
CHANNELS = "abc"


class Conn(Subscriber, asyncio.Protocol):
    """The server side of one subscriber connection, as farts/pubsub's streams are."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.transport = transport
        self.fd = sock.fileno() if self.direct else -1   # -1: through the transport only

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc) -> None:
        self.transport = None


async def read_slowly(sock: socket.socket, want: bytes, pace: int) -> bytes:
    """Reads until ``len(want)`` bytes, at most 1,500 at a time, yielding ``pace`` loop
    turns between reads so that the server's socket buffer fills; stops at the first
    byte that differs from ``want`` (the caller's comparison then says where)."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < len(want):
        chunk = await loop.sock_recv(sock, 1500)
        assert chunk, f"connection closed after {len(got)} of {len(want)} bytes"
        got += chunk
        if want[len(got) - len(chunk):len(got)] != chunk:
            break
        for _ in range(pace):
            await asyncio.sleep(0)
    return bytes(got)


async def run(ring) -> tuple[list[bytes], list[bytes], Fanout]:
    """Publishes the seeded sequence; returns what each subscriber was given and what its
    socket delivered, and the fanout (for its counters)."""
    loop = asyncio.get_running_loop()
    rnd = random.Random(19)
    fanout = Fanout(loop.call_soon, lambda sub: pytest.fail("a subscriber was dropped as slow"),
                    max_buffer=1 << 30, ring=ring)
    conns: list[Conn] = []
    server = await loop.create_server(lambda: conns.append(Conn(len(conns) % 7 != 6)) or conns[-1],
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(SUBSCRIBERS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        clients.append(sock)
    while len(conns) < SUBSCRIBERS:
        await asyncio.sleep(0.01)
    expected = [bytearray() for _ in conns]
    members: dict[str, list[int]] = {key: [] for key in CHANNELS}
    for i, conn in enumerate(conns):
        conn.sse = i % 5 == 0
        for key in rnd.sample(CHANNELS, rnd.randint(1, 3)):
            fanout.subscribe(key, conn)
            members[key].append(i)
    for n in range(EVENTS):
        size = rnd.choice((1, 20, 100, 700, 3000, 20000))
        body = rnd.randbytes(size)
        ws, sse = b"W" + body, b"S" + body[::-1]
        key = rnd.choice(CHANNELS)
        assert fanout.publish(key, ws, sse) == len(members[key])
        for i in members[key]:
            expected[i] += sse if conns[i].sse else ws
        if n % 10 == 3:      # a reply to one subscriber, in order with its events
            i = rnd.randrange(SUBSCRIBERS)
            fanout.send(conns[i], b"R%d" % n)
            expected[i] += b"R%d" % n
        for _ in range(rnd.choice((0, 0, 1, 3))):   # two turns run a flush
            await asyncio.sleep(0)
    received = await asyncio.wait_for(
        asyncio.gather(*(read_slowly(c, bytes(expected[i]), i % 4) for i, c in enumerate(clients))), 120)
    for c in clients:
        c.close()
    server.close()
    return [bytes(e) for e in expected], received, fanout


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_uring_and_send_paths_deliver_identical_streams(loop_kind):
    run_loop = asyncio.run if loop_kind == "asyncio" else uvloop.run
    ring = send_ring("on", entries=8)     # 8: a flush of 40 sends takes several submissions
    expected_u, received_u, fanout_u = run_loop(run(ring))
    expected_s, received_s, fanout_s = run_loop(run(send_ring("off")))
    assert expected_u == expected_s      # the same sequence was queued
    for i in range(SUBSCRIBERS):
        assert received_u[i] == expected_u[i], f"io_uring path, subscriber {i}"
        assert received_s[i] == expected_s[i], f"send() path, subscriber {i}"
    assert fanout_u.ring is ring and fanout_u.ring_failures == 0
    assert ring.submissions > 0 and ring.sends > 0
    # The slow readers made sends go partial or EAGAIN on both paths.
    assert fanout_u.short_sends > 0 and fanout_s.short_sends > 0
    ring.close()


def test_the_switch_and_the_fallback_where_the_kernel_refuses():
    assert send_ring("off") is None
    ring = send_ring("auto")
    assert ring is not None               # this machine's kernel allows io_uring
    ring.close()
    # A ring the kernel refuses (0 entries: EINVAL, as a disabled io_uring gives EPERM):
    # "auto" falls back to send(), "on" refuses to start.
    assert send_ring("auto", entries=0) is None
    with pytest.raises(IoUringUnavailable, match=r"\[pubsub\] io_uring"):
        send_ring("on", entries=0)


def test_a_closed_ring_gives_up_and_aborts_only_the_subscribers_it_had():
    """send_all on a failed ring answers None (outcome unknown): the fanout aborts those
    streams, counts the failure and goes on with send()."""
    async def scenario():
        loop = asyncio.get_running_loop()
        ring = send_ring("on")
        fanout = Fanout(loop.call_soon, lambda sub: None, ring=ring)
        conns: list[Conn] = []
        server = await loop.create_server(lambda: conns.append(Conn(True)) or conns[-1], "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        while len(conns) < 2:
            await asyncio.sleep(0.01)
        for c in conns:
            fanout.subscribe("k", c)
        ring.close()                      # the ring fails under the fanout
        fanout.publish("k", b"lost", b"")
        fanout.flush()
        assert fanout.ring is None and fanout.ring_failures == 1
        assert all(c.dropped for c in conns)
        for c in clients:
            c.setblocking(False)
            try:                          # aborted (in a later loop turn), nothing sent
                assert await asyncio.wait_for(loop.sock_recv(c, 10), 30) == b""
            except ConnectionResetError:
                pass
            c.close()
        server.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("mode,expected", [("on", 1), ("off", 0)])
def test_a_node_sends_through_the_path_its_config_names(node_factory, mode, expected):
    """``[pubsub] io_uring`` in a real node: a WebSocket subscriber gets what is
    published, and the metric says which path carried it."""
    node = pubsub_node(node_factory, f"""
[pubsub]
io_uring = "{mode}"
""")

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{node.port('http')}/live") as ws:
            await ws.send('{"op":"subscribe","channel":"c"}')
            assert b'"subscribed"' in (await asyncio.wait_for(ws.recv(), 30)).encode()
            r = await asyncio.to_thread(httpx.post, node.url("http", "/api/publish"),
                                        json={"channel": "c", "data": "x" * 5000},
                                        headers={"authorization": "Bearer demo-key"})
            assert r.status_code == 200, r.text
            assert '"' + "x" * 5000 + '"' in await asyncio.wait_for(ws.recv(), 30)
    asyncio.run(main())
    assert metric(node, "farts_pubsub_io_uring") == expected
    assert metric(node, "farts_pubsub_flushes_total") >= 2   # the subscribed reply, the event
