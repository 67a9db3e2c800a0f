"""Where a read goes (farts/db/replication.py's routing), with a real Replica on a memory
store and a member map standing in for the mesh's view: readPreference modes, a dead
primary, and maxStalenessSeconds against the measured lag (drivers refuse a
maxStalenessSeconds under 90 s, and a real lag of 90 s has no place in a fast test)."""
from __future__ import annotations

import asyncio
import dataclasses

import bson
import pytest
from bson.timestamp import Timestamp

from farts.clock import FakeClock, pack
from farts.db import wire
from farts.db.commands import Command
from farts.db.config import DBConfig
from farts.db.errors import MongoError
from farts.db.replica import MemoryStore, Replica, Status
from farts.db.replication import STARTUP_WAIT, Replication, from_timestamp, to_timestamp
from farts.members import ALIVE, DEAD, Member, MemberMap


class Bus:
    """The part of the PeerBus routing reads: who is there, in what state."""

    def __init__(self, members: MemberMap) -> None:
        self.map = members

    def members(self):
        return self.map.members()


def setup(primary: str):
    wall = [1_000_000]
    members = MemberMap([Member("a"), Member("b"), Member("p")])
    rep = Replication("a", Bus(members), FakeClock(), DBConfig(primary=primary))
    store = MemoryStore("a", lambda: wall[0])
    rep.store, rep.replica = store, Replica("a", store, ("b", "p"))
    rep._started = rep.clock.monotonic()
    return rep, members, wall


def read(mode: str | None, **rp) -> Command:
    pref = None if mode is None else {"mode": mode, **rp}
    return Command("find", "app", {"find": "c", "$db": "app"}, {}, pref)


def test_read_preference_modes_and_a_dead_primary():
    rep, members, _ = setup("p")
    assert rep._route(read(None)) == "p"                 # a driver's default is primary
    assert rep._route(read("primary")) == "p"
    assert rep._route(read("primaryPreferred")) == "p"
    for mode in ("nearest", "secondary", "secondaryPreferred"):
        assert rep._route(read(mode)) is None
    members.update(dataclasses.replace(members.get("p"), state=DEAD, incarnation=1))
    with pytest.raises(MongoError) as e:
        rep._route(read("primary"))
    assert e.value.code == 13435
    assert rep._route(read("primaryPreferred")) is None
    rep2, _, _ = setup("")
    assert rep2._route(read("primary")) is None          # no primary configured: every node answers
    rep3, _, _ = setup("a")
    assert rep3._route(read("primary")) is None          # this node is the primary


def test_max_staleness_uses_the_measured_lag():
    rep, members, wall = setup("")
    assert rep._route(read("nearest", maxStalenessSeconds=90)) is None
    # Peer b reports records this node lacks, written at least 120 s after what it has of b
    # (nothing: the lag counts from HLC 0, more than 120 s).
    rep.replica.receive(Status({"b": 5}, pack(wall[0] + 120_000, 0), 0, 0), "b", 0.0)
    assert rep.replica.lag_ms()["b"] >= 120_000
    with pytest.raises(MongoError) as e:
        rep._route(read("nearest", maxStalenessSeconds=90))
    assert e.value.code == 133
    assert rep._route(read("nearest", maxStalenessSeconds=rep.replica.lag_ms()["b"] // 1000 + 1)) is None
    rep.cfg = DBConfig(primary="p")                       # a stale node sends it to the primary
    assert rep._route(read("nearest", maxStalenessSeconds=90)) == "p"
    assert members.get("p").state == ALIVE


def test_cluster_time_is_the_hlc_in_order():
    for hlc in (0, 1, pack(1_700_000_000_000, 0), pack(1_700_000_000_000, 65535), (1 << 63) - 1):
        assert from_timestamp(to_timestamp(hlc)) == hlc
    a, b = pack(1_700_000_000_000, 7), pack(1_700_000_000_001, 0)
    assert to_timestamp(a) < to_timestamp(b) and isinstance(to_timestamp(a), Timestamp)


def test_replies_carry_the_operation_time_and_cluster_time_of_the_last_commit():
    rep, _, _ = setup("")
    for hlc in (pack(5000, 3), pack(5000, 3), pack(5001, 0), (1 << 63) - 1):
        rep.store.operation_hlc = hlc      # what the LMDB store moves at each commit
        forwarded = {"ok": 1.0, "operationTime": Timestamp(1, 1)}   # (a primary's: this node's goes instead)
        elements = rep.stamp(forwarded)
        reply = bson.decode(wire.encode_msg(0, forwarded, None, elements)[16 + 5:])
        assert list(reply) == ["ok", "operationTime", "$clusterTime"]
        assert reply["operationTime"] == reply["$clusterTime"]["clusterTime"] == to_timestamp(hlc)
        assert set(reply["$clusterTime"]["signature"]) == {"hash", "keyId"} and reply["ok"] == 1.0


def test_writes_wait_once_after_the_start_for_every_alive_peers_vector():
    async def main():
        rep, members, wall = setup("")
        insert = Command("insert", "app", {"insert": "c", "$db": "app"}, {}, None)
        ran = []
        first = asyncio.ensure_future(rep.run(None, insert, lambda: ran.append("first") or {"ok": 1.0}))
        await asyncio.sleep(0)
        assert ran == [] and rep.counts["startup_waits"] == 1
        ahead = pack(wall[0] + 60_000, 0)            # b's clock is a minute ahead of this node's
        rep.replica.receive(Status({}, ahead, 0, 0), "b", 0.0)
        rep._progress()
        await asyncio.sleep(0)
        assert ran == []                              # p has not reported yet
        rep.replica.receive(Status({}, pack(wall[0], 0), 0, 0), "p", 0.0)
        rep._progress()
        assert await first == {"ok": 1.0}
        assert rep.store.covered() > ahead            # a write here is stamped after b's clock
        assert rep.run(None, insert, lambda: "at once") == "at once"   # once: never again

    asyncio.run(main())


def test_a_peer_that_does_not_answer_holds_writes_back_only_for_the_startup_wait():
    async def main():
        rep, _, _ = setup("")
        drop = Command("drop", "app", {"drop": "c", "$db": "app"}, {}, None)
        pending = asyncio.ensure_future(rep.run(None, drop, lambda: "dropped"))
        await asyncio.sleep(0)
        rep.clock.advance(STARTUP_WAIT - 0.1)
        await asyncio.sleep(0)
        assert not pending.done()
        rep.clock.advance(0.2)
        assert await pending == "dropped"
        rep2, members2, _ = setup("")               # dead peers are not waited for
        for n in ("b", "p"):
            members2.update(dataclasses.replace(members2.get(n), state=DEAD, incarnation=1))
        assert rep2.run(None, drop, lambda: "at once") == "at once"

    asyncio.run(main())


def test_caught_up_is_every_reported_write_or_a_moment_behind_a_live_origin():
    rep, _, wall = setup("")
    alive = {"a", "b", "p"}
    assert rep.behind(alive) == ""                       # no report yet: nothing known to miss
    rep.replica.receive(Status({"b": 0}, pack(wall[0], 0), 0, 0), "b", 0.0)
    assert rep.behind(alive) == ""
    # Under a steady stream the latest report runs a little ahead of what is applied here:
    # 200 ms behind b's clock is caught up; 5 s is not, and the reason says by how much.
    rep.replica.receive(Status({"b": 5}, pack(wall[0] + 200, 0), 0, 0), "b", 1.0)
    assert rep.behind(alive) == ""
    rep.replica.receive(Status({"b": 7}, pack(wall[0] + 5_000, 0), 0, 0), "b", 2.0)
    assert rep.behind(alive) == "7 records of b, 5,000 ms behind"
    assert rep.behind({"a", "p"}) == ""                  # b is not alive: its report does not count
    # A third origin's records b has: no lag measured for p here, so every record counts.
    rep.replica.receive(Status({"b": 0, "p": 3}, pack(wall[0] + 5_000, 0), 0, 0), "b", 3.0)
    assert rep.behind(alive) == "3 records of p"
