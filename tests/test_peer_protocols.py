"""The services' peer protocols alone: a fake bus, a FakeClock, no sockets.

The fake bus puts every message through its wire form (to_wire, then from_wire), as
the mesh's Bus does; the last tests drive the real Bus with fake links for what only
it does (versions, counting bad messages).
"""
from __future__ import annotations

import msgpack
import pytest

from farts.cdn.key import tenant_prefix
from farts.cdn.peer import Purge, PurgePeer
from farts.certs.peer import CertPair
from farts.clock import HLC, FakeClock
from farts.members import ALIVE, DEAD, Member, MemberMap
from farts.mesh.bus import Bus
from farts.mesh.frames import BUS, FrameError, FrameReader, Hello
from farts.mesh.service import Load
from farts.metrics import Metrics
from farts.peer import BadMessage, Envelope, PeerMessage
from farts.pubsub.peer import (
    ANSWER_TRIES,
    ANSWER_WAIT,
    BATCH,
    CATCHUP_RETRY,
    CATCHUP_TRIES,
    SETTLE,
    CatchupEvents,
    CatchupGone,
    CatchupRequest,
    Event,
    PubSubPeer,
)


class FakeBus:
    """PeerBus for tests: records what goes out; ``deliver`` plays a message from a peer."""

    def __init__(self) -> None:
        self.members_ = MemberMap()
        self.subs: dict[type, list] = {}
        self.sent: list[tuple[str | None, PeerMessage]] = []   # (None: broadcast, msg)
        self.linked: set[str] = set()
        self.gap_listeners: list = []

    def members(self):
        return self.members_.members()

    def on_member_change(self, fn):
        return self.members_.on_change(fn)

    def on_gap(self, fn):
        self.gap_listeners.append(fn)

    def broadcast(self, msg):
        self.sent.append((None, type(msg).from_wire(msgpack.unpackb(msgpack.packb(msg.to_wire())))))
        return len(self.linked)

    def send(self, node_id, msg):
        if node_id not in self.linked:
            return False
        self.sent.append((node_id, msg))
        return True

    def subscribe(self, cls, fn):
        self.subs.setdefault(cls, []).append(fn)
        return lambda: self.subs[cls].remove(fn)

    def deliver(self, msg: PeerMessage, origin: str = "b", gap: int = 0) -> None:
        wire = msgpack.unpackb(msgpack.packb(msg.to_wire()))
        for fn in self.subs.get(type(msg), ()):
            fn(type(msg).from_wire(wire), Envelope(origin, gap))


class FakePubSub:
    """What the pub/sub protocol uses of PubSub."""

    def __init__(self, events=()) -> None:
        self.on_local_event = None
        self.applied: list[dict] = []
        self.events = list(events)
        self.asked: list[dict] = []

    def apply_remote(self, event):
        self.applied.append(event)
        return True

    def have(self):
        return {"a": 7}

    def events_after(self, have, limit=2000):
        self.asked.append(have)
        return self.events

    def gone_after(self, have):
        return {}

    def mark_missing(self, gone):
        self.missing = gone


def ev(seq, origin="b"):
    return {"tenant": "t", "channel": "c", "origin": origin, "seq": seq, "data": "{}"}


@pytest.fixture
def pubsub_peer():
    bus, ps, clock = FakeBus(), FakePubSub(), FakeClock()
    return bus, ps, clock, PubSubPeer("a", ps, bus, clock)


# ---- pub/sub ----------------------------------------------------------------------------------


def test_a_local_publish_is_broadcast(pubsub_peer):
    bus, ps, _, peer = pubsub_peer
    ps.on_local_event(ev(1, "a"))
    ps.on_local_event(ev(2, "a"))   # (numbered by this process: a peer tells a lost one)
    assert bus.sent == [(None, Event({**ev(n, "a"), "bp": peer.process, "bn": n})) for n in (1, 2)]


def test_a_remote_event_is_applied_and_a_gap_asks_its_origin_for_a_catchup(pubsub_peer):
    bus, ps, _, _ = pubsub_peer
    bus.linked.add("b")
    bus.deliver(Event(ev(1)))
    assert ps.applied == [ev(1)] and bus.sent == []
    bus.deliver(Event(ev(5)), gap=3)
    assert ps.applied == [ev(1), ev(5)]
    assert bus.sent == [("b", CatchupRequest({"a": 7}))]


def test_a_gap_in_another_service_s_broadcast_asks_for_a_catchup_at_once(pubsub_peer):
    """A node's last event, lost on a closed link, shows in no later event of it: the bus's
    next broadcast of that node, of whatever service, tells of the gap."""
    bus, _, _, _ = pubsub_peer
    bus.linked.add("b")
    assert len(bus.gap_listeners) == 1
    bus.gap_listeners[0]("b")
    assert bus.sent == [("b", CatchupRequest({"a": 7}))]


def test_a_catchup_is_answered_in_batches():
    bus, ps = FakeBus(), FakePubSub([ev(i) for i in range(2 * BATCH + 50)])
    PubSubPeer("a", ps, bus, FakeClock())
    bus.linked.add("b")
    bus.deliver(CatchupRequest({"a": 3, "b": 0}))
    assert ps.asked == [{"a": 3, "b": 0}]
    *batches, end = bus.sent
    assert [(dest, len(m.events)) for dest, m in batches] == [("b", BATCH), ("b", BATCH), ("b", 50)]
    assert [e for _, m in batches for e in m.events] == ps.events
    assert end == ("b", CatchupGone({}))   # the answer's end, whatever is gone (here: nothing)


def test_catchup_events_are_applied(pubsub_peer):
    bus, ps, _, _ = pubsub_peer
    bus.deliver(CatchupEvents((ev(1), ev(2))))
    assert ps.applied == [ev(1), ev(2)]


def test_a_member_coming_alive_is_asked_once_it_has_a_link(pubsub_peer):
    bus, ps, clock, _ = pubsub_peer
    bus.members_.update(Member("b", state=ALIVE))   # heard through gossip: no link yet
    assert bus.sent == [] and clock.pending() == 1
    clock.advance(CATCHUP_RETRY * 3)
    assert bus.sent == [] and clock.pending() == 1
    bus.linked.add("b")
    clock.advance(CATCHUP_RETRY)
    assert bus.sent == [("b", CatchupRequest({"a": 7}))] and clock.pending() == 2   # the SETTLE ask, the answer's check
    bus.deliver(CatchupGone({}))   # its answer ended
    clock.advance(SETTLE)   # once more: what it sent while its links formed
    assert bus.sent[1:] == [("b", CatchupRequest({"a": 7}))] and clock.pending() == 1
    bus.deliver(CatchupGone({}))
    clock.advance(ANSWER_WAIT)
    assert len(bus.sent) == 2 and clock.pending() == 0


def test_an_ask_whose_answer_does_not_end_is_sent_again_a_few_times(pubsub_peer):
    """An answer sent on a link that closed under it is lost with everything after it on
    that link: its end (a CatchupGone, always sent) never comes."""
    bus, _, clock, _ = pubsub_peer
    bus.linked.add("b")
    bus.deliver(Event(ev(1)))
    bus.deliver(Event(ev(5)), gap=3)
    clock.advance(ANSWER_WAIT * 10)
    assert bus.sent == [("b", CatchupRequest({"a": 7}))] * ANSWER_TRIES
    bus.deliver(Event(ev(9)), gap=1)
    bus.deliver(CatchupGone({}))   # (one of the earlier asks' answers, late: counted all the same)
    bus.deliver(CatchupGone({}))
    bus.deliver(CatchupGone({}))
    bus.deliver(CatchupGone({}))   # this one's
    clock.advance(ANSWER_WAIT * 10)
    assert len(bus.sent) == ANSWER_TRIES + 1


def test_catchup_retries_give_up_after_a_while(pubsub_peer):
    bus, _, clock, _ = pubsub_peer
    bus.members_.update(Member("b", state=ALIVE))
    assert clock.advance(CATCHUP_RETRY * CATCHUP_TRIES * 2) == CATCHUP_TRIES - 1
    assert clock.pending() == 0


def test_no_catchup_for_itself_a_member_already_alive_or_a_dead_one(pubsub_peer):
    bus, _, clock, _ = pubsub_peer
    bus.linked.update({"a", "b"})
    bus.members_.update(Member("a", state=ALIVE))
    bus.members_.update(Member("c", state=DEAD))
    bus.members_.update(Member("b", state=ALIVE))
    bus.members_.update(Member("b", state=ALIVE, incarnation=2))
    assert bus.sent == [("b", CatchupRequest({"a": 7}))]


def test_stop_cancels_pending_retries(pubsub_peer):
    bus, _, clock, peer = pubsub_peer
    bus.members_.update(Member("b", state=ALIVE))
    peer.stop()
    assert clock.advance(60) == 0


def test_coming_alive_again_restarts_the_retries_instead_of_adding_a_second_round(pubsub_peer):
    bus, _, clock, _ = pubsub_peer
    bus.members_.update(Member("b", state=ALIVE))
    bus.members_.update(Member("b", state=DEAD))
    bus.members_.update(Member("b", state=ALIVE, incarnation=1))
    assert clock.pending() == 1


@pytest.mark.parametrize("cls, body", [
    (Event, ["not", "an", "object"]),
    (CatchupRequest, {"a": "7"}),
    (CatchupRequest, {"a": True}),
    (CatchupRequest, [1]),
    (CatchupEvents, {"a": 1}),
    (CatchupEvents, [ev(1), 3]),
    (Purge, {"prefix": "/a"}),
    (Purge, {"tenant": "t", "key": 3}),
    (Purge, "t"),
    (Load, "0.5"),
    (Load, True),
    (Load, float("nan")),
    (CertPair, {"chain": "x"}),
    (CertPair, {"chain": "x" * (64 * 1024 + 1), "key": "k"}),
    (CertPair, {"chain": "caf\u00e9", "key": "k"}),
])
def test_bad_bodies_are_refused(cls, body):
    with pytest.raises(BadMessage) as e:
        cls.from_wire(body)
    assert e.value.type == cls.TYPE and e.value.reason == "field"


# ---- CDN purge -----------------------------------------------------------------------------


class FakeCDN:
    def __init__(self) -> None:
        self.purged = []

    def purge(self, prefix, exact):
        self.purged.append((prefix, exact))
        return 1


def test_a_purge_is_broadcast_and_a_peers_purge_runs_here():
    bus, cdn = FakeBus(), FakeCDN()
    peer = PurgePeer(cdn, bus)
    peer.purge_everywhere({"tenant": "t", "prefix": "/img/"})
    assert bus.sent == [(None, Purge("t", prefix="/img/"))]
    bus.deliver(Purge("t", key="/a.jpg?v=2"))
    bus.deliver(Purge("t"))
    assert cdn.purged == [(tenant_prefix("t", "/a.jpg?v=2"), True), (tenant_prefix("t", ""), False)]


# ---- the mesh's Bus as the PeerBus -----------------------------------------------------------


class FakeLink:
    def __init__(self) -> None:
        self.frames = []

    def send(self, frame):
        self.frames.append(frame)
        return True


def real_bus(me="a"):
    links = {"b": FakeLink()}
    return Bus(me, 1, MemberMap(), HLC(clock=lambda: 5), lambda: links, Metrics()), links, None


def frame_payload(frame):
    reader = FrameReader(1 << 20)
    reader.hello_seen = True
    [(kind, payload)] = reader.feed(frame)
    assert kind == BUS
    return payload


def test_the_bus_carries_a_typed_message_with_its_envelope():
    a, links, _ = real_bus("a")
    b, _, _ = real_bus("b")
    got = []
    b.subscribe(Event, lambda m, env: got.append((m, env.origin, env.gap)))
    a.broadcast(Event(ev(1, "a")))
    payload = frame_payload(links["b"].frames[0])
    assert payload[0] == "pubsub.event"   # version 1: the bare type name (as before versions)
    b.deliver("a", payload)
    assert got == [(Event(ev(1, "a")), "a", 0)]


def test_the_bus_refuses_bad_and_other_version_messages_and_counts_them():
    b, _, _ = real_bus("b")
    got = []
    b.subscribe(CatchupRequest, lambda m, env: got.append(m))
    b.deliver("a", ["pubsub.catchup", "a", 1, 0, 5, 0, {"a": "x"}])
    b.deliver("a", ["pubsub.catchup@2", "a", 1, 0, 5, 0, {"a": 1}])
    assert got == [] and b.bad.get(("bus:pubsub.catchup",)) == 2
    b.deliver("a", ["pubsub.catchup", "a", 1, 0, 5, 0, {"a": 1}])
    assert got == [CatchupRequest({"a": 1})]


def test_a_later_version_goes_on_the_wire_under_its_versioned_name():
    class EventV2(Event):
        VERSION = 2
    a, links, _ = real_bus("a")
    a.send("b", EventV2(ev(1, "a")))
    assert frame_payload(links["b"].frames[0])[0] == "pubsub.event@2"


def test_hlc_out_of_range_in_a_frame_is_bad():
    b, _, _ = real_bus("b")
    with pytest.raises(ValueError):
        b.deliver("a", ["x", "a", 1, 0, 5, 1 << 16, None])
    hello = Hello("a", "r", 0.0, 0.0, (), "h:1", (5, 1 << 16), 0).encode()
    with pytest.raises(FrameError, match="hlc"):
        FrameReader(1 << 20).feed(hello)


# ---- the mesh's load figure, on the injected clock ----------------------------------------------


def test_the_load_figure_is_shared_every_interval_and_peers_loads_land_in_the_member_map():
    from farts import config
    from farts.mesh.service import LOAD_INTERVAL, MeshService

    cfg = config.parse('[node]\nid = "a"\n[mesh]\nenabled = true', "x.toml")
    members, clock, load = MemberMap([Member("a"), Member("b")]), FakeClock(), [0.25]
    mesh = MeshService(cfg, members, Metrics(), lambda: load[0], clock=clock)
    sent = []
    mesh.bus.broadcast = sent.append
    mesh.share_load()
    clock.advance(0)
    assert sent == [Load(0.25)] and members.get("a").load == 0.25
    load[0] = 0.5
    clock.advance(LOAD_INTERVAL - 0.01)
    assert sent == [Load(0.25)]
    clock.advance(0.01)
    assert sent == [Load(0.25), Load(0.5)] and members.get("a").load == 0.5
    mesh.bus.deliver("b", ["mesh.load", "b", 1, 1, 5, 0, 0.75])
    assert members.get("b").load == 0.75


# ---- dns.txt: DNS-01 challenge records on every node -----------------------------------------
def test_txt_records_set_here_go_to_every_peer_and_peers_set_theirs():
    from farts.dns.peer import Txt, TxtPeer

    class Dns:   # what TxtPeer uses of DNSServer
        def __init__(self):
            self.records: dict[str, list[str]] = {}

        def set_txt(self, name, values):
            self.records[name] = list(values)
            return name.endswith("farts.test")

    bus, dns = FakeBus(), Dns()
    peer = TxtPeer(dns, bus)
    assert peer.set_everywhere("_acme-challenge.farts.test", ["v1", "v2"])
    assert dns.records == {"_acme-challenge.farts.test": ["v1", "v2"]}
    assert bus.sent == [(None, Txt("_acme-challenge.farts.test", ("v1", "v2")))]
    bus.deliver(Txt("_acme-challenge.shop.farts.test", ("w",)))
    assert dns.records["_acme-challenge.shop.farts.test"] == ["w"]
    for bad in ({"name": "", "values": []}, {"name": "x", "values": ["y" * 256]}, {"name": "x", "values": "v"},
                {"values": []}, ["x"]):
        with pytest.raises(BadMessage):
            Txt.from_wire(bad)
