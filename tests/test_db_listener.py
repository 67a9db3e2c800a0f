"""The MongoDB wire listener on the listener kit: an idle connection and a message that
stops half way are closed on the (fake) clock's deadlines; one address gets at most
limits.max_connections_per_ip connections. A real DBService on loopback, raw sockets
(pymongo would reconnect behind our back), time moved by a FakeClock."""
from __future__ import annotations

import asyncio
import struct

import bson

from farts.clock import FakeClock
from farts.config import Limits
from farts.db.config import DBConfig
from farts.db.server import DBService
from farts.metrics import Metrics

LIMITS = Limits(idle_timeout=60.0, header_timeout=5.0, max_connections_per_ip=2)


def msg(body: dict, request_id: int = 1) -> bytes:
    payload = b"\0\0\0\0\0" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict:
    writer.write(msg({"ping": 1, "$db": "admin"}))
    head = await asyncio.wait_for(reader.readexactly(16), 5)
    body = await reader.readexactly(struct.unpack("<i", head[:4])[0] - 16)
    return bson.decode(body[5:])


async def until(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def run(tmp_path, test) -> None:
    async def main() -> None:
        clock = FakeClock()
        svc = DBService(DBConfig(enabled=True, port=0), tmp_path / "db", "n", Metrics(),
                        limits=LIMITS, clock=clock)
        await svc.start()
        try:
            await test(svc, clock)
        finally:
            await svc.stop()

    asyncio.run(main())


async def closed_between(svc, clock, reader, writer, still_open: float, closed: float, kind: str) -> None:
    """Time moves ``still_open`` s: the connection stays; ``closed`` s more: it goes."""
    clock.advance(still_open)
    await asyncio.sleep(0.05)
    assert len(svc.connections) == 1
    clock.advance(closed)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert svc.kit.stats.timeouts.get(("db", kind)) == 1
    writer.close()


def test_an_idle_connection_is_closed_after_idle_timeout(tmp_path):
    async def test(svc, clock):
        reader, writer = await asyncio.open_connection(*svc.address)
        assert (await ping(reader, writer))["ok"] == 1
        clock.advance(59)
        assert (await ping(reader, writer))["ok"] == 1   # the answer counts as activity
        await closed_between(svc, clock, reader, writer, 59, 2, "idle")

    run(tmp_path, test)


def test_a_message_that_stops_half_way_is_closed_after_the_read_deadline(tmp_path):
    async def test(svc, clock):
        reader, writer = await asyncio.open_connection(*svc.address)
        assert (await ping(reader, writer))["ok"] == 1
        writer.write(msg({"ping": 1, "$db": "admin"})[:20])
        conn = next(iter(svc.connections))
        await until(conn.partial)
        await closed_between(svc, clock, reader, writer, 4, 2, "read")

    run(tmp_path, test)


def test_one_address_gets_at_most_max_connections_per_ip(tmp_path):
    async def test(svc, clock):
        conns = [await asyncio.open_connection(*svc.address) for _ in range(3)]
        assert await asyncio.wait_for(conns[2][0].read(), 5) == b""
        for reader, writer in conns[:2]:
            assert (await ping(reader, writer))["ok"] == 1
        assert svc.stats.refused.get(("db", "max_connections_per_ip")) == 1
        conns[0][1].close()
        await until(lambda: len(svc.connections) == 1)
        reader, writer = await asyncio.open_connection(*svc.address)   # a place is free again
        assert (await ping(reader, writer))["ok"] == 1
        for _, w in [*conns, (reader, writer)]:
            w.close()

    run(tmp_path, test)
