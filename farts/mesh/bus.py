"""The message bus other services get from the mesh (handed over by farts/node.py).

It implements ``farts.peer.PeerBus`` for typed messages:

- ``members()`` and ``on_member_change(fn)``: the live node map the mesh keeps.
- ``broadcast(msg)``: to every member with a link; ``send(node_id, msg)``: to one. Both
  return without waiting; the caller does its own local delivery.
- ``subscribe(MessageClass, fn)``: ``fn(msg, Envelope)`` for each valid message of that
  class from a peer; one that does not validate (or is of another version) is counted
  in ``farts_mesh_bad_messages_total{kind="bus:<type>"}`` and dropped, the link stays.

The same methods also take a raw type name and body (``broadcast("chat", body)``,
``subscribe("chat", fn(BusMessage))``): what the bus tests and benchmarks use.

Ordering: a broadcast carries its origin, the origin's process epoch and a sequence
number that grows by one per broadcast. Links are direct (full mesh) TCP, so
messages from one origin arrive in order; a message older than the last one seen
from that origin (same epoch) is dropped, and a jump forward (a link dropped in
between, or a slow peer was disconnected) is counted as a gap and handed on with
``gap`` set, so a subscriber can catch up from its own history. A new epoch is a
restarted origin: its sequence starts again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farts.clock import HLC, LOGICAL_MASK, pack, unpack
from farts.members import Member, MemberMap
from farts.mesh.frames import BUS, encode
from farts.metrics import Metrics
from farts.peer import BadMessage, Envelope, PeerMessage, split_wire_type

log = logging.getLogger("farts.mesh.bus")


@dataclass(frozen=True, slots=True)
class BusMessage:
    type: str
    origin: str
    epoch: int
    seq: int                 # per-origin broadcast number (0: a direct send)
    hlc: int                 # the origin's hybrid logical clock (farts.clock packing) when it sent
    body: Any
    gap: int = 0             # broadcasts from this origin missed just before this one


class Bus:
    def __init__(self, me: str, epoch: int, members: MemberMap, hlc: HLC,
                 links: Callable[[], dict], metrics: Metrics) -> None:
        self.me, self.epoch, self._members, self.hlc = me, epoch, members, hlc
        self._links = links  # node id -> an object with send(bytes) -> bool
        self._subs: dict[str, list[Callable[[BusMessage], None]]] = {}
        self._gap_listeners: list[Callable[[str], None]] = []
        self._seq = 0
        self._last: dict[str, tuple[int, int]] = {}   # origin -> (epoch, seq)
        self.sent = metrics.counter("farts_mesh_bus_sent_total", "Bus messages queued to peers", ("type",))
        self.dropped = metrics.counter("farts_mesh_bus_dropped_total",
                                       "Bus messages not queued (no link, or the peer was too slow)", ("type",))
        self.received = metrics.counter("farts_mesh_bus_received_total", "Bus messages received", ("type",))
        self.gaps = metrics.counter("farts_mesh_bus_gaps_total", "Broadcasts missed (sequence jumps)", ("origin",))
        self.bad = metrics.counter("farts_mesh_bad_messages_total",
                                   "Well-framed messages that made no sense (link closed, except a bus "
                                   "message that fails its type's checks: dropped)", ("kind",))

    # ---- for the services ------------------------------------------------------

    def members(self) -> list[Member]:
        return self._members.members()

    def on_member_change(self, fn: Callable[[Member | None, Member], None]) -> Callable[[], None]:
        return self._members.on_change(fn)

    def on_gap(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """``fn(origin)`` when a broadcast of that origin shows others missed before it
        (whatever its type: a service whose own message was lost hears of it here first,
        before the message is handed on). Returns an unsubscribe."""
        self._gap_listeners.append(fn)
        return lambda: self._gap_listeners.remove(fn)

    def subscribe(self, msg_type, fn) -> Callable[[], None]:
        """A PeerMessage class: ``fn(msg, Envelope)`` for each valid one; a type name:
        ``fn(BusMessage)`` for each message of that name. Returns an unsubscribe."""
        if isinstance(msg_type, type) and issubclass(msg_type, PeerMessage):
            cls, typed_fn = msg_type, fn

            def fn(m: BusMessage) -> None:
                try:
                    msg = self._parse(cls, m.type, m.body)
                except BadMessage as e:
                    self.bad.inc(("bus:" + cls.TYPE,))
                    log.warning("mesh: bad %s message from %s: %s", cls.TYPE, m.origin, e)
                    return
                typed_fn(msg, Envelope(m.origin, m.gap, m.hlc))

            # Every version of the type lands here, so an old or new one is refused, not ignored.
            msg_type = cls.TYPE
        self._subs.setdefault(msg_type, []).append(fn)
        return lambda: self._subs[msg_type].remove(fn)

    @staticmethod
    def _parse(cls: type[PeerMessage], wire_name: str, body: Any) -> PeerMessage:
        version = split_wire_type(wire_name)[1]
        if version != cls.VERSION:
            raise cls.bad("version", f"got version {version}, this node speaks {cls.VERSION}")
        return cls.from_wire(body)

    def broadcast(self, msg_type, body: Any = None) -> int:
        """Queues a PeerMessage (or a type name and body) to every linked peer; returns
        how many took it."""
        if isinstance(msg_type, PeerMessage):
            msg_type, body = msg_type.wire_type(), msg_type.to_wire()
        self._seq += 1
        frame = self._frame(msg_type, self._seq, body)
        n = 0
        for link in list(self._links().values()):
            if link.send(frame):
                n += 1
            else:
                self.dropped.inc((msg_type,))
        self.sent.inc((msg_type,), n)
        return n

    def send(self, node_id: str, msg_type, body: Any = None) -> bool:
        """Queues a PeerMessage (or a type name and body) to one peer; False when there
        is no link to it or it was too slow."""
        if isinstance(msg_type, PeerMessage):
            msg_type, body = msg_type.wire_type(), msg_type.to_wire()
        link = self._links().get(node_id)
        if link is not None and link.send(self._frame(msg_type, 0, body)):
            self.sent.inc((msg_type,))
            return True
        self.dropped.inc((msg_type,))
        return False

    # ---- for the mesh service ----------------------------------------------------

    def _frame(self, msg_type: str, seq: int, body: Any) -> bytes:
        ms, c = unpack(self.hlc.now())  # (ms, logical) on the wire, as before the clock was shared
        return encode(BUS, [msg_type, self.me, self.epoch, seq, ms, c, body])

    def deliver(self, src: str, payload: list) -> None:
        """One BUS frame from the link to src. Raises ValueError/TypeError if malformed."""
        msg_type, origin, epoch, seq, ms, c, body = payload
        if not isinstance(msg_type, str) or origin != src:
            raise ValueError("bus message type or origin")
        if not 0 <= c <= LOGICAL_MASK or ms < 0:
            raise ValueError("bus message hlc")
        hlc = pack(int(ms), int(c))
        self.hlc.observe(hlc)
        gap = 0
        if seq:
            last = self._last.get(origin)
            if last is not None and last[0] == epoch:
                if seq <= last[1]:
                    return  # a duplicate or older: already delivered
                gap = seq - last[1] - 1
            elif last is not None and epoch < last[0]:
                return  # from an older life of that origin
            self._last[origin] = (epoch, seq)
            if gap:
                self.gaps.inc((origin,), gap)
                for listener in list(self._gap_listeners):
                    try:
                        listener(origin)
                    except Exception:  # noqa: BLE001 - as a subscriber's (below)
                        log.exception("bus gap listener failed")
        self.received.inc((msg_type,))
        msg = BusMessage(msg_type, origin, epoch, seq, hlc, body, gap)
        for fn in list(self._subs.get(split_wire_type(msg_type)[0], ())):
            try:
                fn(msg)
            except Exception:  # one broken subscriber must not cut the link for the others
                log.exception("bus subscriber for %r failed", msg_type)
