"""The bus between MeshServices in one event loop, over real mutual-TLS loopback links."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from farts import config, pki
from farts.members import MemberMap
from farts.mesh import MeshService
from farts.mesh.frames import FrameReader, Hello
from farts.metrics import Metrics

CFG = """
[node]
id = "{id}"
region = "r-{id}"
data_dir = "{dir}"
[mesh]
enabled = true
port = 0
seeds = {seeds}
ca = "{ca}"
cert = "node.crt"
key = "node.key"
probe_interval = 0.2
probe_timeout = 0.1
reconnect_min = 0.02
reconnect_max = 0.2
queue_max_bytes = 262144
"""


def make(tmp_path, node_id, seeds=(), load=None):
    ca = tmp_path / "ca"
    pki.make_ca(ca)
    d = tmp_path / node_id
    pki.issue(ca, d / "node.crt", d / "node.key", ["127.0.0.1"], node_id=node_id)
    text = CFG.format(id=node_id, dir=d, ca=ca / "ca.crt", seeds=list(seeds)).replace("'", '"')
    cfg = config.parse(text, str(d / "farts.toml"))
    members = MemberMap()
    return MeshService(cfg, members, Metrics(), load)


async def until(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def address(svc):
    host, port = svc.links.address
    return f"{host}:{port}"


@pytest.fixture
def trio(tmp_path):
    async def start():
        a = make(tmp_path, "a", load=lambda: 0.25)
        await a.start()
        b, c = make(tmp_path, "b", [address(a)]), make(tmp_path, "c", [address(a)])
        await b.start()
        await c.start()
        for s in (a, b, c):
            await until(lambda s=s: len(s.links.links) == 2 and len(s.members.alive()) == 3)
        return a, b, c
    return start


def test_broadcast_arrives_once_in_order_and_send_reaches_one(trio):
    async def main():
        a, b, c = await trio()
        got = {"b": [], "c": []}
        b.bus.subscribe("chat", lambda m: got["b"].append(m))
        c.bus.subscribe("chat", lambda m: got["c"].append(m))
        direct = []
        c.bus.subscribe("direct", direct.append)
        for i in range(1000):
            assert a.bus.broadcast("chat", {"n": i}) == 2
        assert a.bus.send("c", "direct", b"only c")
        assert not a.bus.send("nobody", "direct", b"x")
        await until(lambda: len(got["b"]) == len(got["c"]) == 1000 and direct)
        for msgs in got.values():
            assert [m.body["n"] for m in msgs] == list(range(1000))
            seqs = [m.seq for m in msgs]  # one sequence per origin, across message types
            assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] < 1010
            assert all(m.origin == "a" and m.gap == 0 and m.epoch == a.epoch for m in msgs)
            assert [m.hlc for m in msgs] == sorted(m.hlc for m in msgs)
        assert direct[0].body == b"only c" and direct[0].seq == 0
        # The member map each service writes: everyone, with region and mesh address, and
        # each member's load figure as it shares it.
        assert {m.id: m.region for m in b.bus.members()} == {"a": "r-a", "b": "r-b", "c": "r-c"}
        await until(lambda: b.members.get("a").load == 0.25 and c.members.get("a").load == 0.25)
        assert b.members.get("c").load == 0.0
        changes = []
        a.bus.on_member_change(lambda old, new: changes.append((new.id, new.state)))
        await c.stop()
        await until(lambda: ("c", "left") in changes)
        for s in (a, b):
            await s.stop()
    asyncio.run(main())


def test_a_peer_that_stops_reading_is_disconnected_not_buffered(trio, tmp_path):
    async def main():
        a, b, c = await trio()
        # A member with a valid certificate that says HELLO, then never reads a byte.
        ca = tmp_path / "ca"
        pki.issue(ca, tmp_path / "slow.crt", tmp_path / "slow.key", ["127.0.0.1"], node_id="slow")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca / "ca.crt")
        ctx.load_cert_chain(tmp_path / "slow.crt", tmp_path / "slow.key")
        host, port = a.links.address
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        FrameReader(1 << 20).feed(await reader.read(65536))
        writer.transport.pause_reading()
        writer.write(Hello("slow", "", 0, 0, (), "127.0.0.1:1", (0, 0), 0).encode())
        await until(lambda: "slow" in a.links.links)
        received = []
        b.bus.subscribe("big", received.append)
        broadcasts = 0
        for _ in range(200):  # 200 x 64 KiB = 12.5 MiB: far past queue_max_bytes (256 KiB) + socket buffers
            a.bus.broadcast("big", b"x" * 65536)
            broadcasts += 1
            await asyncio.sleep(0)
            if "slow" not in a.links.links:
                break
        assert "slow" not in a.links.links
        assert a.stats.closed.get(("slow_peer",)) == 1
        assert a.bus.dropped.get(("big",)) >= 1
        # The others are not affected: still linked, and what was sent to them arrives.
        await until(lambda: len(received) == broadcasts)
        assert "b" in a.links.links and "c" in a.links.links
        writer.transport.abort()
        for s in (a, b, c):
            await s.stop()
    asyncio.run(main())
