"""The pub/sub catch-up across a member's restart, without sockets: a restarted member's new
process may send events before this node sees it alive again, or before its link to this
node is up on its side; the catch-up this node then asks for starts from what it had
before (when the member went away; before the event that showed the gap), so the events
published in between are not hidden behind the newer ones. Found by the rolling deploy
under load (test_release_deploy)."""
from __future__ import annotations

from farts.clock import FakeClock
from farts.members import ALIVE, DRAINING, LEFT, SUSPECT, Member
from farts.peer import Envelope
from farts.pubsub.peer import CATCHUP_RETRY, SETTLE, CatchupGone, CatchupRequest, Event, PubSubPeer


class History:
    """What PubSubPeer reads of a PubSub: the newest seq per origin."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.on_local_event = None

    def apply_remote(self, event: dict) -> bool:
        self.last[event["origin"]] = max(event["seq"], self.last.get(event["origin"], 0))
        return True

    def have(self) -> dict[str, int]:
        return dict(self.last)

    def events_after(self, have: dict, limit: int = 2000) -> list:
        return []

    def gone_after(self, have: dict) -> dict:
        return {}

    def mark_missing(self, gone: dict) -> None:
        pass


class Bus:
    def __init__(self) -> None:
        self.handlers, self.sent, self.listeners, self.linked = {}, [], [], set()

    def subscribe(self, cls, fn):
        self.handlers[cls] = fn

    def on_member_change(self, fn):
        self.listeners.append(fn)

    def on_gap(self, fn):
        pass

    def broadcast(self, msg) -> int:
        return 0

    def send(self, node: str, msg) -> bool:
        if node not in self.linked:
            return False
        self.sent.append((node, msg))
        return True

    def member(self, old, new) -> None:
        for fn in self.listeners:
            fn(old, new)


def event(origin: str, seq: int) -> Event:
    return Event({"tenant": "demo", "channel": "c", "origin": origin, "seq": seq, "data": "1"})


def setup():
    history, bus = History(), Bus()
    PubSubPeer("n1", history, bus, FakeClock())
    bus.linked.add("n2")
    return history, bus


def test_the_catch_up_after_a_restart_starts_where_the_member_went_away():
    history, bus = setup()
    bus.handlers[Event](event("n2", 5), Envelope("n2"))
    alive, draining = Member("n2", state=ALIVE), Member("n2", state=DRAINING)
    bus.member(alive, draining)
    bus.member(draining, Member("n2", state=LEFT))
    # its new process's first event arrives before it is seen alive (its refutation is on the way)
    bus.handlers[Event](event("n2", 9), Envelope("n2"))
    bus.member(Member("n2", state=LEFT), alive)
    assert bus.sent == [("n2", CatchupRequest({"n2": 5}))]   # not {"n2": 9}: 6 to 8 would be lost


def test_a_retried_catch_up_keeps_what_this_node_had_when_the_member_came_alive():
    clock = FakeClock()
    history, bus = History(), Bus()
    PubSubPeer("n1", history, bus, clock)
    bus.handlers[Event](event("n2", 5), Envelope("n2"))
    bus.member(None, Member("n2", state=ALIVE))   # heard through gossip: no link yet
    assert bus.sent == []
    bus.linked.add("n2")
    bus.handlers[Event](event("n2", 9), Envelope("n2"))   # the link is up: its events come first
    clock.advance(CATCHUP_RETRY)
    assert bus.sent == [("n2", CatchupRequest({"n2": 5}))]


def test_after_a_gap_the_catch_up_starts_before_the_event_that_showed_it():
    history, bus = setup()
    bus.handlers[Event](event("n2", 5), Envelope("n2"))
    bus.handlers[Event](event("n2", 9), Envelope("n2", gap=2))   # 6 to 8 went to no link of this node
    assert bus.sent == [("n2", CatchupRequest({"n2": 5}))]


def test_a_member_suspected_for_a_moment_is_caught_up_from_where_its_restart_left_it():
    """The catch-up asked when a restarted member came alive (from where it went away) may
    be answered on a link the mesh then closes as the duplicate of another: the answer is
    lost, the SETTLE ask is what brings those events. If the member is suspected for a
    moment meanwhile (its probe went on that link too), the ask when it is alive again
    starts where that round did, not after the events that came live since."""
    clock = FakeClock()
    history, bus = History(), Bus()
    PubSubPeer("n1", history, bus, clock)
    bus.linked.add("n2")
    bus.handlers[Event](event("n2", 5), Envelope("n2"))
    alive, draining, left = Member("n2", state=ALIVE), Member("n2", state=DRAINING), Member("n2", state=LEFT)
    bus.member(alive, draining)
    bus.member(draining, left)
    bus.member(left, alive)
    assert bus.sent == [("n2", CatchupRequest({"n2": 5}))]   # (its answer is lost)
    bus.handlers[Event](event("n2", 9), Envelope("n2"))      # 6 to 8 went before the links were up
    suspect = Member("n2", state=SUSPECT)
    bus.member(alive, suspect)
    bus.member(suspect, alive)
    assert bus.sent[1:] == [("n2", CatchupRequest({"n2": 5}))]   # not {"n2": 9}
    clock.advance(SETTLE)
    assert bus.sent[2] == ("n2", CatchupRequest({"n2": 5}))      # the round's SETTLE ask, kept
    for _ in bus.sent:                                           # (the answers' ends come)
        bus.handlers[CatchupGone](CatchupGone({}), Envelope("n2"))
    asked = len(bus.sent)
    clock.advance(SETTLE * 5)
    assert len(bus.sent) == asked                                # and no more
    assert all(m == CatchupRequest({"n2": 5}) for _, m in bus.sent)   # every ask from where it went away


def test_an_event_lost_on_the_way_is_caught_up_whatever_message_shows_the_gap():
    """The bus numbers every broadcast of a member, of every service: a pub/sub event lost
    on a closed link may first show as a gap in another service's message, never in an
    event's. The events' own numbers show it."""
    clock = FakeClock()
    history, bus = History(), Bus()
    PubSubPeer("n1", history, bus, clock)
    bus.linked.add("n2")
    theirs = PubSubPeer("n2", History(), Bus(), clock)   # (what n2's events carry: numbered by it)
    sent = []
    theirs.bus.broadcast = lambda msg: sent.append(msg)
    for seq in (5, 6, 7):
        theirs.local_event(event("n2", seq).event)
    bus.handlers[Event](sent[0], Envelope("n2"))
    bus.handlers[Event](sent[2], Envelope("n2"))   # the 6 was lost, the gap showed in another message
    assert bus.sent == [("n2", CatchupRequest({"n2": 5}))]
