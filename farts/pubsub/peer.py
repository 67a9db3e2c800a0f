"""Cross-node pub/sub over the mesh bus, sans-IO.

Every local publish is broadcast (``Event``, numbered per process); peers apply it (the
PubSub object deduplicates by origin and seq). A gap in a process's numbers (or in the
bus's), or a peer that comes back alive, triggers a catch-up: this node sends what it has
(``CatchupRequest``: origin -> newest seq) and the peer answers with the events it lacks
(``CatchupEvents``, in batches of ``BATCH`` so frames stay well under
mesh.max_frame_bytes), then what it can no longer send (``CatchupGone``: evicted from its
history, or missing there too; the asking node answers resumes from before that "not
recovered"). A catch-up asked while another is pending starts where that one did, if
earlier: what it was for may not have arrived. The answer always ends with a
``CatchupGone`` (empty when nothing is gone): an ask whose end has not come within
``ANSWER_WAIT`` is sent again (an answer sent on a link that closed under it is lost with
everything after it on that link, and nothing else would tell).

The protocol talks to the PubSub object only through ``publish``'s hook
``on_local_event``, ``apply_remote(event)``, ``have()``, ``events_after(have)``,
``gone_after(have)`` and ``mark_missing(gone)``; it reads no clock: a retry is a timer on
the injected clock.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from farts.clock import Clock, Timer
from farts.members import ALIVE, Member
from farts.peer import Envelope, PeerBus, PeerMessage, need

BATCH = 200
CATCHUP_TRIES = 20        # a member heard through gossip may have no link yet: retry ...
CATCHUP_RETRY = 0.5       # ... every half second, for ten seconds
SETTLE = 2.0              # the catch-up after a member came alive, once more this much later
ANSWER_WAIT = 2.0         # an ask whose answer has not ended by then is sent again ...
ANSWER_TRIES = 3          # ... this many times at most (a release before the end marker sends none)


@dataclass(frozen=True, slots=True)
class Event(PeerMessage):
    """One event published on its origin (what ``PubSub.on_local_event`` got there)."""
    TYPE = "pubsub.event"
    VERSION = 1
    event: dict

    @classmethod
    def parse(cls, body: Any) -> dict:
        # The fields are PubSub.apply_remote's to check (it counts bad_remote_event).
        need(cls, isinstance(body, dict), "an event object")
        return body


@dataclass(frozen=True, slots=True)
class CatchupRequest(PeerMessage):
    """"Send me what you have after this": origin -> newest seq the sender applied."""
    TYPE = "pubsub.catchup"
    VERSION = 1
    have: dict

    @classmethod
    def parse(cls, body: Any) -> dict[str, int]:
        need(cls, isinstance(body, dict), "an object origin -> seq")
        need(cls, _seqs(body), "origin -> integer seq")
        return body


@dataclass(frozen=True, slots=True)
class CatchupEvents(PeerMessage):
    """One batch of the events a catch-up asked for."""
    TYPE = "pubsub.events"
    VERSION = 1
    events: tuple

    @classmethod
    def parse(cls, body: Any) -> tuple:
        need(cls, isinstance(body, list), "a list of events")
        need(cls, all(isinstance(ev, dict) for ev in body), "event objects")
        return tuple(body)


@dataclass(frozen=True, slots=True)
class CatchupGone(PeerMessage):
    """After a catch-up's events: per channel key, origin -> newest seq of the events asked
    for that the sender no longer has (up to ``GONE_BATCH`` channels a message)."""
    TYPE = "pubsub.gone"
    VERSION = 1
    gone: dict

    @classmethod
    def parse(cls, body: Any) -> dict:
        need(cls, isinstance(body, dict), "an object channel -> {origin: seq}")
        need(cls, all(isinstance(k, str) and isinstance(v, dict) and _seqs(v) for k, v in body.items()),
             "channel -> {origin: integer seq}")
        return body


def _seqs(value: dict) -> bool:
    """origin -> integer seq."""
    return all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items())


MESSAGES = (Event, CatchupRequest, CatchupEvents, CatchupGone)
GONE_BATCH = 500


class PubSubAPI(Protocol):
    on_local_event: Any

    def apply_remote(self, event: dict) -> bool: ...

    def have(self) -> dict[str, int]: ...

    def events_after(self, have: dict, limit: int = ...) -> list[dict]: ...

    def gone_after(self, have: dict) -> dict[str, dict[str, int]]: ...

    def mark_missing(self, gone: dict[str, dict[str, int]]) -> None: ...


class PubSubPeer:
    """Subscribes to the bus and hooks the PubSub's local events when built."""

    def __init__(self, me: str, pubsub: PubSubAPI, bus: PeerBus, clock: Clock) -> None:
        self.me, self.pubsub, self.bus, self.clock = me, pubsub, bus, clock
        # member -> its pending catch-up ask (a retry, or the SETTLE one) and where it starts
        self._pending: dict[str, tuple[Timer, dict[str, int]]] = {}
        # This process's broadcasts of events are numbered ("bn", 1, 2, ...; "bp" names the
        # process): a member tells a lost one by the next one's number.
        self.process, self._sent = secrets.token_hex(6), 0
        self._heard: dict[str, tuple[str, int]] = {}   # member -> (its process, last number heard)
        self._away: dict[str, dict[str, int]] = {}   # member not alive -> have() when it went
        self._asks: dict[str, int] = {}      # member -> catch-up asks sent to it
        self._answers: dict[str, int] = {}   # member -> answers' ends (CatchupGone) heard from it
        self._checks: dict[tuple[str, int], Timer] = {}   # (member, ask number) -> its answer's check
        pubsub.on_local_event = self.local_event
        bus.subscribe(Event, self.on_event)
        bus.subscribe(CatchupRequest, self.on_catchup)
        bus.subscribe(CatchupEvents, self.on_events)
        bus.subscribe(CatchupGone, self.on_gone)
        bus.on_member_change(self.on_member)
        bus.on_gap(self.on_gap)

    def local_event(self, event: dict) -> None:
        self._sent += 1
        self.bus.broadcast(Event({**event, "bp": self.process, "bn": self._sent}))

    def on_event(self, msg: Event, env: Envelope) -> None:
        # After a gap the catch-up starts from what this node had before this event: once
        # applied, its seq would be past the missed ones.
        have = self.pubsub.have() if env.gap or self._missed(env.origin, msg.event) else None
        self.pubsub.apply_remote(msg.event)
        if have is not None:
            self._ask_catchup(env.origin, CATCHUP_TRIES, have, again=False)

    def on_gap(self, origin: str) -> None:
        """A broadcast of that member was missed, of whatever service: the next of its
        events may be long in coming (the publishing stopped), or never (its process is
        going), so the catch-up is asked now, from what this node has (nothing of that
        member's after the lost one has arrived yet)."""
        self._ask_catchup(origin, CATCHUP_TRIES, self.pubsub.have(), again=False)

    def _missed(self, origin: str, event: dict) -> bool:
        """Whether events of that member's process were broadcast before this one and not
        heard here. (The bus's ``gap`` counts every type of broadcast: a lost event may
        first show as a gap in another service's message, and never in an event's.)"""
        process, n = event.get("bp"), event.get("bn")
        if not isinstance(process, str) or not isinstance(n, int):
            return False   # (a node of a release before the numbering)
        last_process, last = self._heard.get(origin, (None, 0))
        self._heard[origin] = (process, n)
        return n > (last if process == last_process else 0) + 1

    def on_catchup(self, msg: CatchupRequest, env: Envelope) -> None:
        events = self.pubsub.events_after(msg.have)
        for i in range(0, len(events), BATCH):
            self.bus.send(env.origin, CatchupEvents(tuple(events[i:i + BATCH])))
        gone = list(self.pubsub.gone_after(msg.have).items())
        for i in range(0, max(1, len(gone)), GONE_BATCH):   # (at least one: the answer's end)
            self.bus.send(env.origin, CatchupGone(dict(gone[i:i + GONE_BATCH])))

    def on_events(self, msg: CatchupEvents, env: Envelope) -> None:
        for ev in msg.events:
            self.pubsub.apply_remote(ev)

    def on_gone(self, msg: CatchupGone, env: Envelope) -> None:
        self._answers[env.origin] = self._answers.get(env.origin, 0) + 1
        self.pubsub.mark_missing(msg.gone)

    def on_member(self, old: Member | None, new: Member) -> None:
        if new.id == self.me:
            return
        if new.state == ALIVE and (old is None or old.state != ALIVE):
            self._ask_catchup(new.id, CATCHUP_TRIES, self._away.pop(new.id, None) or self.pubsub.have())
        elif new.state != ALIVE and old is not None and old.state == ALIVE:
            # The catch-up starts from what this node had when the member stopped being
            # alive: a restarted member's new process may send events before it is seen
            # alive again, and they would hide the ones published in between.
            self._away[new.id] = self.pubsub.have()

    def _ask_catchup(self, node_id: str, tries: int, have: dict[str, int], again: bool = True) -> None:
        # ``have`` is what this node had when the member came alive, kept for the retries:
        # events of it that arrive meanwhile (once its link is up, before the retry) would
        # move the newest seq past the ones this node missed while it was away. Once sent,
        # it is sent ``again`` SETTLE seconds later: the member's broadcasts while its links
        # to this node formed (one per side, the duplicate closed) may have reached no link,
        # and an answer sent on the closed duplicate is lost.
        pending = self._pending.pop(node_id, None)
        if pending is not None:
            # Asked again before the last ask's round ended (the member was suspected for a
            # moment, or a gap showed): the new one starts where the pending one did if that
            # is earlier, since what that round was for may not have arrived yet.
            timer, started = pending
            timer.cancel()
            have = earliest(have, started)
            again = True
        if self._send_ask(node_id, have):
            if again:
                self._pending[node_id] = (self.clock.call_later(SETTLE, self._due, node_id, CATCHUP_TRIES, have,
                                                                False), have)
        elif tries > 1:
            self._pending[node_id] = (self.clock.call_later(CATCHUP_RETRY, self._due, node_id, tries - 1, have,
                                                            again), have)

    def _due(self, node_id: str, tries: int, have: dict[str, int], again: bool) -> None:
        self._pending.pop(node_id, None)   # (this very ask)
        self._ask_catchup(node_id, tries, have, again)

    def _send_ask(self, node_id: str, have: dict[str, int], answer_tries: int = ANSWER_TRIES) -> bool:
        """Sends the ask (False without a link) and checks ANSWER_WAIT later that its answer
        ended."""
        if not self.bus.send(node_id, CatchupRequest(have)):
            return False
        n = self._asks[node_id] = self._asks.get(node_id, 0) + 1
        self._checks[(node_id, n)] = self.clock.call_later(ANSWER_WAIT, self._check_answer, node_id, n, have,
                                                           answer_tries)
        return True

    def _check_answer(self, node_id: str, n: int, have: dict[str, int], answer_tries: int) -> None:
        """The n-th ask to that member: sent again if fewer than n answers have ended (as
        it was: the round's retries and SETTLE ask go on as they were scheduled)."""
        self._checks.pop((node_id, n), None)
        if self._answers.get(node_id, 0) < n and answer_tries > 1:
            self._send_ask(node_id, have, answer_tries - 1)

    def stop(self) -> None:
        for timer, _ in self._pending.values():
            timer.cancel()
        self._pending.clear()
        for timer in self._checks.values():
            timer.cancel()
        self._checks.clear()


def earliest(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """The catch-up start that covers both: per origin the lower seq (an origin one of them
    lacks: everything of it)."""
    return {origin: min(seq, b[origin]) for origin, seq in a.items() if origin in b}
