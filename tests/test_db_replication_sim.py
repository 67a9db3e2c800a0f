"""Replication between simulated nodes (farts/db/replica.py over farts/db/merge.py).

No sockets and no real time: each node is a Replica on a MemoryStore with its own wall
clock (skewed), the network is a list of messages in flight, in their wire form (msgpack
of to_wire, decoded with from_wire as the mesh bus does). The test decides what is
delivered, in which order, what is duplicated or dropped, and which links are cut.

The property: after any such history and a heal, every node holds exactly the documents
the stamp-ordered replay of every acknowledged write defines (so they are identical),
every acknowledged $inc is counted, and no operation ever arrived below a node's
compaction horizon.
"""
from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farts.clock import FakeClock
from farts.db import merge, replica
from farts.db.keys import encode as id_key
from farts.db.replica import (
    BATCH,
    FLUSH_INTERVAL,
    LEFT_GRACE,
    MESSAGES,
    RELAY_AFTER,
    RESEND,
    MemoryStore,
    Record,
    Records,
    Replica,
    ReplicaPeer,
    SnapshotChunk,
    Status,
)
from farts.members import ALIVE, Member, MemberMap
from farts.peer import BadMessage, Envelope

NS = "t.c"
COUNTERS = ("c1", "c2")


class Net:
    def __init__(self, ids, *, seed: int = 0, retain_records: int = 100_000, skew=None) -> None:
        self.ids = list(ids)
        self.now = 0.0
        self.rnd = random.Random(seed)
        skew = skew or {}
        self.stores = {n: MemoryStore(n, lambda n=n: 1_700_000_000_000 + int(self.now * 1000) + skew.get(n, 0))
                       for n in self.ids}
        self.replicas = {n: Replica(n, self.stores[n], tuple(self.ids), retain_records=retain_records)
                         for n in self.ids}
        self.flight: list[tuple[str, str, type, bytes]] = []
        self.cut: set[frozenset] = set()
        self.written: list[Record] = []     # every acknowledged (locally committed) write

    # -- the network --

    def up(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def send(self, src: str, out) -> None:
        for to, msg in out:
            for dst in ([to] if to is not None else [n for n in self.ids if n != src]):
                if dst in self.replicas and self.up(src, dst):   # a send on a cut link is refused
                    self.flight.append((src, dst, type(msg), msgpack.packb(msg.to_wire())))

    def deliver(self, i: int = 0, dup: bool = False) -> None:
        src, dst, cls, wire = self.flight[i] if dup else self.flight.pop(i)
        if not self.up(src, dst):
            return
        msg = cls.from_wire(msgpack.unpackb(wire))
        self.send(dst, self.replicas[dst].receive(msg, src, self.now))

    def partition(self, *groups) -> None:
        self.cut = {frozenset((a, b)) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        cut, self.cut = self.cut, set()
        for pair in cut:
            a, b = sorted(pair)
            self.send(a, self.replicas[a].link_up(b, self.now))
            self.send(b, self.replicas[b].link_up(a, self.now))

    def tick(self, node: str) -> None:
        self.send(node, self.replicas[node].tick(self.now))

    # -- the nodes --

    def write(self, node: str, _id, op: dict) -> Record:
        record = self.stores[node].write(NS, _id, op)
        self.written.append(record)
        return record

    def add_node(self, node: str, **kw) -> None:
        self.ids.append(node)
        self.stores[node] = MemoryStore(node, lambda: 1_700_000_000_000 + int(self.now * 1000))
        self.replicas[node] = Replica(node, self.stores[node], tuple(self.ids), **kw)
        for n in self.ids:
            self.replicas[n].set_members(self.ids)
        for n in self.ids[:-1]:
            self.send(node, self.replicas[node].link_up(n, self.now))

    def settle(self, rounds: int = 60) -> int:
        """Heals, then ticks everyone and delivers everything (shuffled) until nothing moves."""
        self.heal()
        for r in range(rounds):
            self.now += 0.5
            for n in self.ids:
                self.tick(n)
            while self.flight:
                self.deliver(self.rnd.randrange(len(self.flight)))
            if r > 3 and self.converged():
                return r
        return rounds

    def converged(self) -> bool:
        vvs = [self.stores[n].applied() for n in self.ids]
        dumps = [self.stores[n].dump() for n in self.ids]
        return all(v.keys() == vvs[0].keys() and all(v[o][0] == vvs[0][o][0] for o in v) for v in vvs) \
            and all(d == dumps[0] for d in dumps)

    def expected(self) -> dict:
        """The definition: every acknowledged write, replayed per document in stamp order."""
        per_doc: dict = {}
        for r in self.written:
            per_doc.setdefault((r.ns, id_key(r.id)), []).append(r)
        out = {}
        for key, records in sorted(per_doc.items()):
            state = None
            for r in sorted(records, key=lambda r: r.stamp.key()):
                state = merge.apply(state, r.stamp, r.op).state
            if merge.visible(state) is not None:
                out[key] = merge.visible(state)
        return out


def assert_converged(net: Net) -> None:
    expected = net.expected()
    for n in net.ids:
        assert net.stores[n].dump() == expected, n
        assert net.stores[n].outcomes.get("late", 0) == 0, n
    incs = {c: sum(r.op["inc"]["n"] for r in net.written if r.id == c and "inc" in r.op) for c in COUNTERS}
    for n in net.ids:
        for c in COUNTERS:
            doc = net.stores[n].get(NS, c)
            assert doc is not None and doc["n"] == incs[c], (n, c)


def seeded(ids=("a", "b", "c"), **kw) -> Net:
    """A cluster whose counters exist everywhere before the test starts."""
    net = Net(ids, **kw)
    for c in COUNTERS:
        net.write(ids[0], c, {"op": "i", "doc": {"_id": c, "n": 0}})
    net.settle()
    return net


# ---- the protocol, step by step -----------------------------------------------------------------


def test_a_write_is_shipped_applied_and_acknowledged():
    net = Net(["a", "b"])
    rec = net.write("a", 1, {"op": "i", "doc": {"_id": 1, "x": 1}})
    assert net.replicas["a"].acked("a", rec.seq) == 1
    net.send("a", net.replicas["a"].flush(net.now))
    assert [(s, d, c) for s, d, c, _ in net.flight] == [("a", "b", Records)]
    net.deliver()
    assert net.stores["b"].get(NS, 1) == {"_id": 1, "x": 1}
    assert [(s, d, c) for s, d, c, _ in net.flight] == [("b", "a", Status)]    # the ack
    net.deliver()
    assert net.replicas["a"].acked("a", rec.seq) == 2


def test_a_node_alone_sends_nothing_and_a_member_that_comes_gets_its_writes_by_catch_up():
    net = Net(["a"])
    net.write("a", 1, {"op": "i", "doc": {"_id": 1, "x": 1}})
    net.now += 1.0
    assert net.replicas["a"].flush(net.now) == [] and net.replicas["a"].tick(net.now) == []   # no frame, no status
    net.write("a", 2, {"op": "i", "doc": {"_id": 2}})
    net.add_node("b")
    net.settle()
    assert net.stores["b"].dump() == net.stores["a"].dump() and len(net.stores["b"].dump()) == 2


def test_lag_per_origin_is_what_its_last_report_says_it_wrote_and_this_node_lacks():
    net = Net(["a", "b"])
    net.write("a", 1, {"op": "i", "doc": {"_id": 1}})
    net.send("a", net.replicas["a"].flush(net.now))
    net.deliver()
    net.flight.clear()
    net.now += 3
    net.write("a", 1, {"op": "u", "set": {"x": 1}})
    net.send("a", net.replicas["a"].link_up("b", net.now))     # a's status, its record not shipped
    net.deliver()
    assert net.replicas["b"].lag_ms() == {"a": 3000}
    net.send("a", net.replicas["a"].flush(net.now))
    while net.flight:
        net.deliver()
    assert net.replicas["b"].lag_ms() == {"a": 0}


def test_own_records_not_flushed_yet_are_left_to_the_flush_not_shipped_twice():
    net = Net(["a", "b"])
    net.write("a", 1, {"op": "i", "doc": {"_id": 1}})
    net.send("b", net.replicas["b"].link_up("a", net.now))    # b asks before a flushed
    net.deliver()
    assert not [m for m in net.flight if m[2] is Records]
    net.send("a", net.replicas["a"].flush(net.now))
    assert [(s, d, c) for s, d, c, _ in net.flight if c is Records] == [("a", "b", Records)]


def test_a_duplicate_batch_is_applied_once():
    net = Net(["a", "b"])
    net.write("a", 1, {"op": "i", "doc": {"_id": 1, "n": 0}})
    net.write("a", 1, {"op": "u", "inc": {"n": 1}})
    net.send("a", net.replicas["a"].flush(net.now))
    net.deliver(0, dup=True)
    net.deliver(0)
    assert net.stores["b"].get(NS, 1)["n"] == 1
    assert net.replicas["b"].stats["duplicates"] == 2 and net.stores["b"].applied()["a"][0] == 2


def test_a_gap_is_held_back_and_filled_by_catch_up():
    net = Net(["a", "b"])
    net.write("a", 1, {"op": "i", "doc": {"_id": 1, "n": 0}})
    net.send("a", net.replicas["a"].flush(net.now))
    net.flight.clear()                                   # the first batch is lost
    net.write("a", 1, {"op": "u", "inc": {"n": 5}})
    net.send("a", net.replicas["a"].flush(net.now))
    net.deliver()
    assert net.stores["b"].get(NS, 1) is None            # seq 2 waits for seq 1
    assert [(s, d, c) for s, d, c, _ in net.flight] == [("b", "a", Status)]
    net.now += 10
    net.deliver()                                        # a ships seq 1 again
    net.deliver()
    assert net.stores["b"].get(NS, 1) == {"_id": 1, "n": 5}


def test_catch_up_after_a_partition_ships_exactly_what_is_missing():
    net = seeded()
    net.partition({"a"}, {"b", "c"})
    for i in range(30):
        net.write("a", f"a{i}", {"op": "i", "doc": {"_id": f"a{i}"}})
        net.write("b", f"b{i}", {"op": "i", "doc": {"_id": f"b{i}"}})
        net.write("c", "c1", {"op": "u", "inc": {"n": 1}})
    for n in "abc":
        net.tick(n)
    net.flight = [m for m in net.flight if m[2] is not Records or m[0] != "a"]   # a's broadcast lost
    while net.flight:
        net.deliver()
    before = {n: dict(net.replicas[n].stats) for n in "abc"}
    net.settle()
    assert_converged(net)
    shipped = sum(net.replicas[n].stats["catchup_records"] - before[n]["catchup_records"] for n in "abc")
    applied = sum(net.replicas[n].stats["applied"] - before[n]["applied"] for n in "abc")
    assert applied == 30 * 2 + 60                   # a's 30 to b and to c; b's and c's 60 to a
    assert shipped >= applied - 0 and shipped <= applied * 2   # a catch-up never ships everything again


def test_a_third_node_relays_only_what_the_origin_cannot_deliver():
    """A peer that is behind gets an origin's records from that origin, not from every
    node that has them too; when the origin cannot reach it (a partial partition), a
    third node relays them once the peer has made no progress for RELAY_AFTER intervals."""
    net = seeded(("a", "b", "c"))
    net.partition({"c"}, {"a", "b"})
    for i in range(5):
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
    net.tick("a")
    while net.flight:
        net.deliver()
    assert net.stores["b"].applied()["a"][0] == net.stores["a"].applied()["a"][0]
    # c comes back: a and b both hear c's vector; only a ships a's records.
    net.heal()
    while any(src == "c" for src, _, _, _ in net.flight):     # c's vector reaches a and b
        net.deliver(next(i for i, f in enumerate(net.flight) if f[0] == "c"))
    relayed = [(src, m) for src, dst, cls, wire in net.flight if dst == "c" and cls is Records
               for m in [Records.from_wire(msgpack.unpackb(wire))]]
    assert relayed and all(src == "a" for src, _ in relayed)
    while net.flight:
        net.deliver()
    assert net.replicas["c"].stats["duplicates"] == 0 and net.converged()

    # Only b reaches c: a's records get there through b, after RELAY_AFTER status intervals.
    net.cut = {frozenset(("a", "c"))}
    for i in range(5, 9):
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
    for _ in range(int(RELAY_AFTER * 4) + 4):
        net.now += net.replicas["b"].status_interval / 2
        for n in net.ids:
            net.tick(n)
        while net.flight:
            net.deliver()
    assert net.stores["c"].applied()["a"][0] == net.stores["a"].applied()["a"][0]
    assert_converged(net)


def test_a_full_buffer_still_takes_the_records_that_fill_its_gap(monkeypatch):
    """Broadcasts that came while a peer was not linked yet leave a gap; what comes after
    fills the buffer; the catch-up's records that fill the gap must still get in."""
    monkeypatch.setattr(replica, "MAX_BUFFERED", 5)
    clock = [1_000_000]
    a, b = MemoryStore("a", lambda: clock[0]), MemoryStore("b", lambda: clock[0])
    records = [a.write(NS, i, {"op": "i", "doc": {"_id": i}}) for i in range(20)]
    rb = Replica("b", b, ("a",))
    rb.receive(Records(tuple(records[2:])), "a", 0.0)
    assert b.applied() == {} and rb.stats["buffered_dropped"] == 15    # 3..5 held, 6..20 dropped
    rb.receive(Records(tuple(records[:2])), "a", 0.0)
    assert b.applied()["a"][0] == 5
    rb.receive(Records(tuple(records[5:])), "a", 0.0)
    assert b.applied()["a"][0] == 20 and b.dump() == a.dump()


def test_catch_up_keeps_at_most_a_window_in_flight_and_sends_nothing_twice(monkeypatch):
    monkeypatch.setattr(replica, "WINDOW", 64)
    net = Net(["a", "b"])
    net.partition({"a"}, {"b"})
    for i in range(1000):
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
    net.tick("a")                         # flushed while b was cut off: b catches up by its vector
    net.heal()
    while net.flight:
        in_flight = sum(len(Records.from_wire(msgpack.unpackb(w)).records)
                        for _, dst, cls, w in net.flight if dst == "b" and cls is Records)
        assert in_flight <= 64 + BATCH    # a window past the acknowledged, and one flush
        net.now += 0.01
        net.deliver()
    net.settle()
    assert net.converged() and net.replicas["b"].stats["duplicates"] == 0


def test_a_restarted_node_ships_what_its_last_process_left_unshipped_while_it_keeps_writing():
    # A restart (farts/release/handover.py) stops the old process's replica between two
    # flushes: its last commits were never shipped. The next process's broadcasts then
    # start past a gap at every peer; the gap must be filled by catch-up, not wait until
    # the writes stop (they did not, in a rolling deploy under load: 60 s of lag).
    net = seeded(("a", "b"))
    for i in range(3):
        net.write("a", f"unshipped{i}", {"op": "i", "doc": {"_id": f"unshipped{i}"}})
    net.replicas["a"] = Replica("a", net.stores["a"], tuple(net.ids))    # the next process
    net.send("a", net.replicas["a"].link_up("b", net.now))
    net.send("b", net.replicas["b"].link_up("a", net.now))
    for i in range(100):                       # 10 s of a write every 100 ms
        net.now += 0.1
        net.write("a", f"later{i}", {"op": "i", "doc": {"_id": f"later{i}"}})
        for n in ("a", "b"):
            net.tick(n)
        while net.flight:
            net.deliver()
        if i == 50:
            assert net.stores["b"].get(NS, "unshipped0") == {"_id": "unshipped0"}, "still a gap after 5 s"
    assert net.stores["b"].applied()["a"][0] >= net.stores["a"].applied()["a"][0] - 1


def test_a_new_node_behind_the_retained_oplog_gets_a_snapshot():
    net = seeded(retain_records=5)
    for i in range(40):
        net.write("abc"[i % 3], f"d{i % 7}", {"op": "u", "set": {"x": i}} if i > 7 else
                  {"op": "i", "doc": {"_id": f"d{i % 7}", "s": [i]}})
    net.write("b", "d1", {"op": "u", "pull": {"s": [1]}})
    net.settle()
    assert all(net.stores[n].retained("a") < 5 for n in "bc")    # everyone has them: dropped
    net.add_node("d", retain_records=5)
    net.settle()
    assert_converged(net)
    assert net.replicas["d"].stats["snapshots_installed"] >= 1
    assert [net.replicas[n].stats["snapshots_sent"] for n in "abc"] == [1, 0, 0]   # one stream, not three
    # d writes and everyone sees it
    net.write("d", "c2", {"op": "u", "inc": {"n": 3}})
    net.settle()
    assert_converged(net)


def test_a_node_keeps_its_own_unshipped_writes_through_a_snapshot():
    net = seeded(retain_records=3)
    net.partition({"c"}, {"a", "b"})
    for i in range(20):
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
        net.write("b", f"x{i}", {"op": "u", "set": {"b": i}})
    for _ in range(6):                       # more than c retains of anyone else's
        net.write("c", "c1", {"op": "u", "inc": {"n": 7}})
    net.write("c", "mine", {"op": "i", "doc": {"_id": "mine"}})
    for _ in range(5):                       # a and b settle between themselves, drop what they both have
        net.now += 1
        for n in "abc":
            net.tick(n)
        while net.flight:
            net.deliver()
    net.replicas["a"].set_members(["a", "b"], now=net.now)    # c left long ago: a drops b's records
    net.replicas["b"].set_members(["a", "b"], now=net.now)
    net.now += LEFT_GRACE
    for n in "ab":
        net.now += 1
        net.tick(n)
    net.flight.clear()
    assert net.stores["a"].retained("b") == 0
    for n in "ab":
        net.replicas[n].set_members(["a", "b", "c"])
    net.settle()
    assert_converged(net)
    assert net.replicas["c"].stats["snapshots_installed"] >= 1
    assert net.stores["a"].get(NS, "mine") == {"_id": "mine"}


def test_a_node_keeps_its_own_records_while_a_snapshot_to_it_is_on_the_way():
    # The snapshot's vector is read when it starts; this node's own records after it are
    # re-applied on top when it is installed, so they must not be dropped meanwhile, even
    # once every peer reports them (ReplicaStore.install_snapshot, Replica._retain).
    net = seeded(retain_records=3)
    net.partition({"c"}, {"a", "b"})
    for i in range(300):                     # more than one snapshot chunk (SNAPSHOT_DOCS)
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
    for n in "ab":
        net.replicas[n].set_members(["a", "b"], now=net.now)
    net.now += LEFT_GRACE
    for _ in range(3):                       # a and b drop what they both have
        net.now += 1
        for n in "ab":
            net.tick(n)
        while net.flight:
            net.deliver()
    for n in "ab":
        net.replicas[n].set_members(["a", "b", "c"], now=net.now)
    net.heal()
    for _ in range(20):                      # until a's snapshot to c is on the wire
        net.now += 0.5
        for n in "abc":
            net.tick(n)
        while [m for m in net.flight if m[2] is not SnapshotChunk]:
            net.deliver(next(i for i, m in enumerate(net.flight) if m[2] is not SnapshotChunk))
        if any(m[2] is SnapshotChunk for m in net.flight):
            break
    chunks = [m for m in net.flight if m[2] is SnapshotChunk]
    assert len(chunks) >= 2
    net.deliver(net.flight.index(chunks[0]))          # the first chunk is in, the rest is not
    net.write("c", "mine", {"op": "i", "doc": {"_id": "mine"}})
    for _ in range(6):                       # c ships it; a and b report it: c could drop it
        net.now += 0.5
        for n in "abc":
            net.tick(n)
        while [m for m in net.flight if m[2] is not SnapshotChunk]:
            net.deliver(next(i for i, m in enumerate(net.flight) if m[2] is not SnapshotChunk))
    assert all(net.replicas[n].peers["c"].report.vv.get("c", 0) >= net.stores["c"].applied()["c"][0] for n in "ab")
    # Kept for the snapshot. (Dropped, a peer's relay would bring it back here; the LMDB
    # store refuses such a snapshot instead: StaleSnapshot, test_db_replica_store.py.)
    assert net.stores["c"].retained("c") >= 1
    net.settle()                             # the rest of the snapshot, installed
    assert net.replicas["c"].stats["snapshots_installed"] >= 1
    assert net.stores["c"].get(NS, "mine") == {"_id": "mine"}
    assert_converged(net)


def test_a_member_that_left_for_a_restart_catches_up_from_the_oplog_without_a_snapshot():
    # A restart leaves the mesh and joins again seconds later: the peers keep their own
    # records it lacks for LEFT_GRACE, so it needs no snapshot (a whole copy of the
    # database, for every node of a rolling deploy).
    net = seeded(retain_records=3)
    net.partition({"c"}, {"a", "b"})
    for n in "ab":
        net.replicas[n].set_members(["a", "b"], now=net.now)
    for i in range(20):
        net.now += 0.5
        net.write("a", f"x{i}", {"op": "i", "doc": {"_id": f"x{i}"}})
        net.write("b", f"y{i}", {"op": "i", "doc": {"_id": f"y{i}"}})
        for n in "ab":
            net.tick(n)
        while net.flight:
            net.deliver()
    assert net.stores["a"].retained("a") >= 20 and net.stores["b"].retained("b") >= 20
    for n in "ab":
        net.replicas[n].set_members(["a", "b", "c"], now=net.now)
    net.settle()
    assert_converged(net)
    assert sum(r.stats["snapshots_sent"] for r in net.replicas.values()) == 0

def test_compaction_runs_once_every_member_has_reported_and_forgets_metadata():
    net = seeded()
    net.write("a", "d", {"op": "i", "doc": {"_id": "d", "s": []}})
    net.write("b", "d", {"op": "u", "add": {"s": ["x"]}})
    net.write("c", "d", {"op": "u", "set": {"y": 1}})
    net.write("a", "gone", {"op": "i", "doc": {"_id": "gone"}})
    net.write("b", "gone", {"op": "d"})
    net.settle()
    for _ in range(4):                       # the reports go round twice more
        net.settle(rounds=1)
    for n in "abc":
        docs = net.stores[n].docs
        assert (NS, id_key("gone")) not in docs                 # the tombstone is gone
        state = docs[(NS, id_key("d"))][1]
        assert "o" not in state and state["m"] == {"w": {}, "e": {}} and state["t"] > 0
    assert_converged(net)


def test_compaction_waits_until_no_pull_in_flight_can_have_missed_what_it_forgets():
    """c (clock 10 s ahead) pulls "x" before b's re-add of "x" reaches it; its pull is still
    in flight when every node has applied b's add and c has said so. Compacting b's add on
    a now would make it look seen by the pull: a would drop "x", the others keep it."""
    net = seeded(skew={"c": 10_000})
    net.write("a", "s", {"op": "i", "doc": {"_id": "s", "s": ["x"]}})
    net.settle()

    def pump(drop):
        while net.flight:
            if drop(net.flight[0]):
                net.flight.pop(0)
            else:
                net.deliver(0)

    x = net.write("b", "s", {"op": "u", "add": {"s": ["x"]}})
    net.tick("b")
    lost = [m for m in net.flight if m[1] == "c"]
    pump(lambda m: m[1] == "c")                       # b's add reaches a, not c
    net.now += 1.1
    net.tick("c")                                     # c reports (its HLC is past b's add)
    pump(lambda m: m[1] == "c")
    pull = net.write("c", "s", {"op": "u", "pull": {"s": ["x"]}})
    assert pull.op["ctx"].get("b", 0) < x.seq         # c had not seen b's add
    net.tick("c")
    net.flight = [m for m in net.flight if m[2] is not Records] + lost   # the pull is delayed
    for _ in range(6):                                # everyone has b's add and reports it
        pump(lambda m: m[0] == "c" and m[2] is Records)
        net.now += 1.1
        for n in "abc":
            net.tick(n)
    pump(lambda m: m[0] == "c" and m[2] is Records)
    assert net.stores["c"].applied()["b"][0] >= x.seq
    assert net.replicas["a"].stable() >= x.hlc        # every node has applied the add ...
    assert net.replicas["a"].compaction_point() < x.hlc   # ... but c's pull may not have seen it
    net.settle()
    assert_converged(net)
    assert net.stores["a"].get(NS, "s")["s"] == ["x"]


def test_a_dead_member_holds_compaction_back():
    net = seeded()
    net.partition({"c"}, {"a", "b"})
    net.write("a", "d", {"op": "i", "doc": {"_id": "d"}})
    point = {n: net.replicas[n].compaction_point() for n in "ab"}
    for _ in range(10):
        net.now += 1
        for n in "ab":
            net.tick(n)
        while net.flight:
            net.deliver()
    assert all(net.replicas[n].compaction_point() == point[n] for n in "ab")
    assert "o" in net.stores["a"].docs[(NS, id_key("d"))][1]


def test_a_member_dead_for_longer_than_the_retention_stops_holding_metadata_and_the_oplog_back():
    net = seeded(retain_records=5)
    for n in net.ids:
        net.replicas[n].forget_dead_after = 20.0
    net.partition({"c"}, {"a", "b"})
    for n in "ab":
        net.replicas[n].set_members(net.ids, dead={"c"}, now=net.now)

    def run(seconds):
        for _ in range(int(seconds)):
            net.write("ab"[int(net.now) % 2], "c1", {"op": "u", "inc": {"n": 1}})
            net.now += 1
            for n in "ab":
                net.tick(n)
            while net.flight:
                net.deliver()

    run(15)                                      # dead, not for long yet: everything is kept
    assert "c" not in net.replicas["a"].forgotten
    assert net.stores["a"].retained("a") >= 7 and len(net.stores["a"].docs[(NS, id_key("c1"))][1]["o"]) >= 15
    run(30)                                      # past forget_dead_after: bounded
    assert net.replicas["a"].forgotten == {"c"}
    for n in "ab":
        assert net.stores[n].retained("a") <= 5 and net.stores[n].retained("b") <= 5
        assert len(net.stores[n].docs[(NS, id_key("c1"))][1].get("o", [])) <= 5
    for n in "ab":                               # c comes back: a snapshot, and it converges
        net.replicas[n].set_members(net.ids, dead=(), now=net.now)
    assert net.replicas["a"].forgotten == set()
    net.settle()
    assert_converged(net)
    assert net.replicas["c"].stats["snapshots_installed"] >= 1


def test_malformed_messages_are_refused():
    good = Record("a", 1, 5, NS, 1, {"op": "d"}).to_wire()
    assert Records.from_wire([good]).records[0].op == {"op": "d"}
    for bad in ([good[:4]], [["a", 0] + good[2:]], [good[:4] + [b"xx"]], "x",
                [good[:4] + [Record("a", 1, 5, NS, 1, {"op": "u", "inc": {"n": "1"}}).to_wire()[4]]]):
        with pytest.raises(BadMessage):
            Records.from_wire(bad)
    with pytest.raises(BadMessage):
        Status.from_wire({"vv": {"a": -1}, "hlc": 1, "frontier": 0, "stable": 0})
    with pytest.raises(BadMessage):
        SnapshotChunk.from_wire({"sid": 1, "index": 0, "docs": [["ns", "not bytes"]], "vv": None})


def test_on_a_bus_local_writes_are_flushed_together_and_a_peer_coming_up_gets_the_vector():
    sent = []

    class Bus:
        def __init__(self):
            self.map, self.subs = MemberMap([Member("a"), Member("b", state="dead")]), {}

        def members(self):
            return self.map.members()

        def on_member_change(self, fn):
            return self.map.on_change(fn)

        def broadcast(self, msg):
            sent.append((None, msg))
            return 1

        def send(self, node_id, msg):
            sent.append((node_id, msg))
            return True

        def subscribe(self, cls, fn):
            self.subs[cls] = fn
            return lambda: None

    bus, clock = Bus(), FakeClock()
    store = MemoryStore("a", clock.wall_ms)
    peer = ReplicaPeer(Replica("a", store), bus, clock, tick=10)
    assert peer.replica.members == {"a", "b"} and set(bus.subs) == set(MESSAGES)
    for i in range(3):
        store.write(NS, i, {"op": "i", "doc": {"_id": i}})
        peer.committed_locally()
    clock.advance(0)
    assert [(to, type(m), len(m.records)) for to, m in sent] == [(None, Records, 3)]
    # That flush carried several commits: the next ones wait for FLUSH_INTERVAL after it
    # and go together; after a flush of one commit, half of it.
    for i in range(3, 5):
        store.write(NS, i, {"op": "i", "doc": {"_id": i}})
        peer.committed_locally()
        clock.advance(FLUSH_INTERVAL / 4)
    assert len(sent) == 1
    clock.advance(FLUSH_INTERVAL / 2)
    assert [(to, type(m), len(m.records)) for to, m in sent][1:] == [(None, Records, 2)]
    for i, apart in ((5, 1.0), (6, 0.6)):   # past the spacing: at once (then flushes of one commit)
        clock.advance(FLUSH_INTERVAL * apart)
        store.write(NS, i, {"op": "i", "doc": {"_id": i}})
        peer.committed_locally()
        clock.advance(0)
    assert [(to, type(m), len(m.records)) for to, m in sent][2:] == [(None, Records, 1)] * 2
    clock.advance(FLUSH_INTERVAL / 10)
    store.write(NS, 7, {"op": "i", "doc": {"_id": 7}})   # soon after a flush of one commit
    peer.committed_locally()
    clock.advance(FLUSH_INTERVAL * 0.3)
    assert len(sent) == 4
    clock.advance(FLUSH_INTERVAL * 0.15)   # just past half the interval after that flush (not at: float sums)
    assert [(to, type(m), len(m.records)) for to, m in sent][4:] == [(None, Records, 1)]
    del sent[:]
    bus.map.update(Member("b", state=ALIVE))
    assert sent[-1][0] == "b" and sent[-1][1].vv == {"a": 8}
    # The broadcast went out while b was down: taken as lost when b comes up, so b's
    # vector gets the records at once; asked again at once, they are in flight: not again
    # before RESEND.
    bus.subs[Status](Status({"a": 0}, 1, 0, 0), Envelope("b"))
    assert [len(m.records) for to, m in sent if to == "b" and isinstance(m, Records)] == [8]
    bus.subs[Status](Status({"a": 0}, 1, 0, 0), Envelope("b"))
    assert [len(m.records) for to, m in sent if to == "b" and isinstance(m, Records)] == [8]
    clock.advance(RESEND)
    bus.subs[Status](Status({"a": 0}, 1, 0, 0), Envelope("b"))
    assert [len(m.records) for to, m in sent if to == "b" and isinstance(m, Records)] == [8, 8]
    peer.stop()


# ---- the property ----------------------------------------------------------------------------

IDS = ("d0", "d1", "d2")
FIELDS = st.sampled_from(["x", "n", "s", "d.y"])
VALUES = st.sampled_from([0, 1, "v", [1]])


@st.composite
def operations(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(COUNTERS)), {"op": "u", "inc": {"n": draw(st.sampled_from([1, 2, 5]))}}
    _id, f = draw(st.sampled_from(IDS)), draw(FIELDS)
    kind = draw(st.sampled_from(["i", "r", "d", "set", "unset", "inc", "push", "add", "pull"]))
    if kind in ("i", "r"):
        return _id, {"op": kind, "doc": {"_id": _id, f.split(".")[0]: draw(VALUES), "s": [draw(VALUES)]}}
    if kind == "d":
        return _id, {"op": "d"}
    if kind == "unset":
        return _id, {"op": "u", "unset": [f]}
    if kind == "inc":
        return _id, {"op": "u", "inc": {f: 1}}
    if kind == "set":
        return _id, {"op": "u", "set": {f: draw(VALUES)}}
    return _id, {"op": "u", kind: {"s": draw(st.lists(st.sampled_from([0, 1, "v"]), min_size=1, max_size=2))}}


@st.composite
def histories(draw, nodes):
    steps = []
    for _ in range(draw(st.integers(5, 40))):
        kind = draw(st.sampled_from(["write", "write", "write", "deliver", "deliver", "dup", "drop",
                                     "tick", "time", "partition", "heal"]))
        if kind == "write":
            steps.append(("write", draw(st.sampled_from(nodes)), draw(operations())))
        elif kind == "partition":
            steps.append(("partition", draw(st.lists(st.sampled_from(nodes), min_size=1, unique=True))))
        elif kind == "tick":
            steps.append(("tick", draw(st.sampled_from(nodes))))
        else:
            steps.append((kind, draw(st.integers(0, 10**6))))
    return steps


def run_history(net: Net, steps) -> None:
    for step in steps:
        kind = step[0]
        if kind == "write":
            _, node, (_id, op) = step
            net.write(node, _id, op)
        elif kind == "tick":
            net.tick(step[1])
        elif kind == "time":
            net.now += step[1] % 3 + 0.1
        elif kind == "partition":
            side = set(step[1])
            net.partition(side, set(net.ids) - side)
        elif kind == "heal":
            net.heal()
        elif net.flight:
            i = step[1] % len(net.flight)
            if kind == "drop":
                net.flight.pop(i)
            else:
                net.deliver(i, dup=(kind == "dup"))


@pytest.mark.parametrize("n", [3, 5])
def test_any_history_converges_to_the_replay_of_every_acknowledged_write(n):
    nodes = "abcde"[:n]

    @settings(max_examples=40 if n == 3 else 15, suppress_health_check=[HealthCheck.too_slow])
    @given(histories(nodes), st.sampled_from([4, 100_000]), st.integers(0, 2**32),
           st.lists(st.integers(-3000, 3000), min_size=n, max_size=n))
    def check(steps, retain, seed, skews):
        net = seeded(tuple(nodes), seed=seed, retain_records=retain, skew=dict(zip(nodes, skews, strict=True)))
        run_history(net, steps)
        net.settle()
        assert_converged(net)

    check()


def test_a_long_partition_with_writes_on_both_sides_heals():
    net = seeded(("a", "b", "c", "d"), seed=7, retain_records=BATCH)
    rnd = random.Random(7)
    net.partition({"a", "b"}, {"c", "d"})
    for i in range(600):
        node = rnd.choice("abcd")
        net.write(node, rnd.choice(COUNTERS + ("p", "q")),
                  rnd.choice([{"op": "u", "inc": {"n": 1}}, {"op": "u", "add": {"s": [i % 5]}},
                              {"op": "u", "pull": {"s": [i % 5]}}]))
        if i % 50 == 0:
            net.write(node, "p", {"op": "i", "doc": {"_id": "p", "s": []}})
            net.now += 1
            for n in "abcd":
                net.tick(n)
            while net.flight:
                net.deliver(rnd.randrange(len(net.flight)))
    net.settle()
    assert_converged(net)


def test_housekeeping_runs_at_most_once_per_interval():
    """Compaction and retention are write transactions over every document with metadata:
    a node runs them at most every housekeeping_interval, not on every tick (an idle node
    on the LMDB store committed 19 times a second before)."""
    calls = []

    class Counting(MemoryStore):
        def compact(self, stable):
            calls.append(stable)
            super().compact(stable)

    now = [0.0]
    store = Counting("a", lambda: 1_700_000_000_000 + int(now[0] * 1000))
    replica = Replica("a", store, housekeeping_interval=1.0)
    for _ in range(40):           # 2 s of 50 ms ticks; the clock (and so the stable time) moves
        store.write(NS, "k", {"op": "u", "inc": {"n": 1}})
        replica.tick(now[0])
        now[0] += 0.05
    assert 2 <= len(calls) <= 3, len(calls)
    every_tick = Replica("a", Counting("a", lambda: 1_700_000_000_000 + int(now[0] * 1000)))
    calls.clear()
    for _ in range(10):
        now[0] += 0.05
        every_tick.tick(now[0])
    assert len(calls) == 10
