"""Channel history and the cursors that resume it, on any node.

Every event is stamped by the node it was published on (its *origin*) with a sequence
number that only grows on that origin: ``max(last + 1, microseconds since the epoch)``,
so it also keeps growing across restarts. Events of one origin reach every node in
that order (the mesh link is one ordered stream per peer), so "have seen origin o up to
seq s" is exact on every node, whatever the interleaving of origins there.

A cursor is therefore a vector: ``"node-1:1732582394123456,node-2:1732582394130001"``,
the last seq of each origin the node had seen when the event went out. Resuming with it
on any node replays the history events whose seq passes the cursor's entry for their
origin. The vector lists only origins that still have events in some history on the
issuing node (others have nothing left to replay), so ids stay short. For an origin the
cursor does not list, events newer than the cursor's newest seq are replayed; that one
comparison is across clocks, as precise as the nodes' clocks agree.

``recovered`` is false when the node may lack events the client has not seen: some were
evicted past the cursor, the channel's record on this node starts after it, or a peer's
catch-up said it could no longer send some past the cursor (``missing``: this node was
away longer than the peer's history reaches).
"""
from __future__ import annotations

from collections import deque

from farts.clock import Clock


class BadCursor(ValueError):
    pass


def encode_cursor(vector: dict[str, int]) -> str:
    return ",".join(f"{origin}:{seq}" for origin, seq in sorted(vector.items()))


def decode_cursor(text: str) -> dict[str, int]:
    vector = {}
    if not text or len(text) > 8192:
        raise BadCursor("empty or oversized cursor")
    for part in text.split(","):
        origin, sep, seq = part.rpartition(":")
        if not sep or not origin or not seq.isdigit():
            raise BadCursor(f"bad cursor part {part[:64]!r}")
        vector[origin] = int(seq)
    return vector


class Event:
    __slots__ = ("origin", "seq", "at", "id", "message")

    def __init__(self, origin: str, seq: int, at: float, id: str, message: bytes) -> None:
        self.origin, self.seq, self.at, self.id, self.message = origin, seq, at, id, message


class Channel:
    """One channel's recent events, oldest first."""

    __slots__ = ("events", "evicted", "missing", "born")

    def __init__(self, born: int) -> None:
        self.events: deque[Event] = deque()
        self.evicted: dict[str, int] = {}   # origin -> newest seq dropped from here
        self.missing: dict[str, int] = {}   # origin -> newest seq never had, gone from the peers asked
        self.born = born                    # seq clock reading when this record started


class History:
    """Histories of all channels of a node, the origin clocks, and the id vector."""

    def __init__(self, node_id: str, size: int, seconds: float, clock: Clock) -> None:
        self.node_id = node_id
        self.clock = clock
        self.size = size
        self.seconds = seconds
        self.channels: dict[str, Channel] = {}
        self.last_seq: dict[str, int] = {}     # per origin: newest seq applied here (dedupe)
        self.retained: dict[str, int] = {}     # per origin: events of it held in histories

    def next_seq(self) -> int:
        seq = max(self.last_seq.get(self.node_id, 0) + 1, int(self.clock.wall() * 1_000_000))
        return seq

    def channel(self, key: str, create: bool = True, first_seq: int | None = None) -> Channel | None:
        """The channel's record; a new one starts now, or at ``first_seq`` when an event
        starts it (one published elsewhere: another node, or this worker's node process),
        since the record holds that event: a cursor at it must resume."""
        ch = self.channels.get(key)
        if ch is None and create:
            now = self.next_seq()
            ch = self.channels[key] = Channel(now if first_seq is None else min(first_seq, now))
        return ch

    def snapshot(self) -> dict:
        """What the node's next process takes over (a restart): events keep their ids, so
        a cursor issued here resumes there exactly."""
        return {"last_seq": self.last_seq, "channels": [
            {"key": key, "born": ch.born, "evicted": ch.evicted, "missing": ch.missing,
             "events": [(ev.origin, ev.seq, ev.id, ev.message.decode()) for ev in ch.events]}
            for key, ch in self.channels.items()]}

    def restore(self, snap: dict) -> None:
        """Takes over the snapshot of the process before this one."""
        now = self.clock.monotonic()
        for origin, seq in snap["last_seq"].items():
            self.last_seq[origin] = max(seq, self.last_seq.get(origin, 0))
        for c in snap["channels"]:
            ch = self.channel(c["key"])
            ch.born, ch.evicted = min(ch.born, c["born"]), dict(c["evicted"])
            ch.missing = dict(c.get("missing", {}))   # (a process of a release before it has none)
            for origin, seq, event_id, message in c["events"]:
                ch.events.append(Event(origin, seq, now, event_id, message.encode()))
                self.retained[origin] = self.retained.get(origin, 0) + 1

    def is_new(self, key: str, origin: str, seq: int) -> bool:
        """Whether an event from another node should be applied: newer than anything of
        its origin here, or a late one (a catch-up after a partition) that this channel
        has neither seen nor evicted."""
        if seq > self.last_seq.get(origin, 0):
            return True
        ch = self.channels.get(key)
        if ch is None:
            return True   # nothing of this channel is held here: nothing to duplicate
        if seq <= ch.evicted.get(origin, 0):
            return False
        return not any(ev.seq == seq and ev.origin == origin for ev in ch.events)

    def after(self, have: dict[str, int], limit: int) -> list[tuple[str, Event]]:
        """(channel key, event) of every event held here that ``have`` (origin -> last
        seq, from a peer) lacks, oldest first per channel: the catch-up a peer asks for."""
        out = []
        for key, ch in self.channels.items():
            for ev in ch.events:
                if ev.seq > have.get(ev.origin, 0):
                    out.append((key, ev))
                    if len(out) >= limit:
                        return out
        return out

    def gone_after(self, have: dict[str, int]) -> dict[str, dict[str, int]]:
        """Per channel, origin -> newest seq of the events after ``have`` (a peer's, asking
        for a catch-up) that this node can no longer send: evicted, or missing here too."""
        out = {}
        for key, ch in self.channels.items():
            gone = {}
            for origin, seq in (*ch.evicted.items(), *ch.missing.items()):
                if seq > max(have.get(origin, 0), gone.get(origin, 0)):
                    gone[origin] = seq
            if gone:
                out[key] = gone
        return out

    def mark_missing(self, gone: dict[str, dict[str, int]]) -> None:
        """What a peer's catch-up could no longer send (its ``gone_after``): resumes from
        before it are not recovered here (the events may still come from another peer)."""
        for key, origins in gone.items():
            ch = self.channel(key)
            for origin, seq in origins.items():
                if seq > ch.missing.get(origin, 0):
                    ch.missing[origin] = seq

    def append(self, key: str, origin: str, seq: int, make_message) -> Event:
        """Records the event and returns it; ``make_message(id)`` builds its JSON text."""
        now = self.clock.monotonic()
        if seq > self.last_seq.get(origin, 0):
            self.last_seq[origin] = seq
        self.retained[origin] = self.retained.get(origin, 0) + 1
        ch = self.channel(key, first_seq=seq)
        vector = {o: self.last_seq[o] for o, n in self.retained.items() if n > 0}
        event_id = encode_cursor(vector)
        ev = Event(origin, seq, now, event_id, make_message(event_id))
        ch.events.append(ev)
        self._trim(ch, now)
        return ev

    def _trim(self, ch: Channel, now: float) -> None:
        events = ch.events
        oldest = now - self.seconds
        while events and (len(events) > self.size or events[0].at < oldest):
            ev = events.popleft()
            if ev.seq > ch.evicted.get(ev.origin, 0):
                ch.evicted[ev.origin] = ev.seq
            n = self.retained[ev.origin] - 1
            if n:
                self.retained[ev.origin] = n
            else:
                del self.retained[ev.origin]

    def behind(self, cursor: dict[str, int]) -> bool:
        """Whether ``cursor`` names an event not received here yet (seen elsewhere first)."""
        last = self.last_seq
        return any(seq > last.get(origin, 0) for origin, seq in cursor.items())

    def since(self, key: str, cursor: dict[str, int]) -> tuple[list[Event], bool]:
        """Events after ``cursor`` on the channel, and whether that list is complete."""
        ch = self.channel(key)
        self._trim(ch, self.clock.monotonic())
        newest = max(cursor.values())
        # (a cursor ahead of this history: what lies between is not here to replay)
        recovered = newest >= ch.born and not self.behind(cursor) and all(
            seq <= cursor.get(origin, newest) for gone in (ch.evicted, ch.missing) for origin, seq in gone.items())
        out = [ev for ev in ch.events if ev.seq > cursor.get(ev.origin, newest)]
        return out, recovered

    def sweep(self, is_watched) -> None:
        """Drops expired events, and channels with no events that nobody watches."""
        now = self.clock.monotonic()
        for key in list(self.channels):
            ch = self.channels[key]
            self._trim(ch, now)
            if not ch.events and not is_watched(key):
                del self.channels[key]
