"""The certificate and its key, from the node that ordered it to every node (sans-IO).

One node of the cluster orders (see CertService.may_order); when it installs a new pair
it broadcasts it (``CertPair``) over the mutual-TLS mesh, and every node that holds a
pair sends it to a member that comes alive, so a node that joins (or comes back) later
gets the current one. Receiving is idempotent: a node installs a pair only when it is
valid and newer than its own (CertService.receive), so N senders cost nothing but bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farts.clock import Clock, Timer
from farts.members import ALIVE, Member
from farts.peer import Envelope, PeerBus, PeerMessage, need

MAX_PEM = 64 * 1024   # a chain of a few certificates, or a key: far below this


@dataclass(frozen=True, slots=True)
class CertPair(PeerMessage):
    TYPE = "certs.pair"
    VERSION = 1
    chain: str   # PEM, the leaf first
    key: str     # PEM

    def to_wire(self) -> dict:
        return {"chain": self.chain, "key": self.key}

    @classmethod
    def from_wire(cls, body: Any) -> CertPair:
        need(cls, isinstance(body, dict), "an object")
        for field in ("chain", "key"):
            value = body.get(field)
            need(cls, isinstance(value, str) and 0 < len(value) <= MAX_PEM and value.isascii(),
                 f'"{field}" (PEM text up to {MAX_PEM} bytes)')
        return cls(body["chain"], body["key"])


SEND_TRIES, SEND_RETRY = 5, 2.0   # a member just seen alive may not have its link up yet


class CertsPeer:
    def __init__(self, me: str, certs, bus: PeerBus, clock: Clock) -> None:
        self.me, self.certs, self.bus, self.clock = me, certs, bus, clock
        self._retries: dict[str, Timer] = {}
        bus.subscribe(CertPair, self.on_pair)
        bus.on_member_change(self.on_member)
        certs.share = self.share

    def share(self, chain: bytes, key: bytes) -> None:
        self.bus.broadcast(CertPair(chain.decode("ascii"), key.decode("ascii")))

    def on_pair(self, msg: CertPair, env: Envelope) -> None:
        self.certs.receive(msg.chain.encode("ascii"), msg.key.encode("ascii"), env.origin)

    def on_member(self, old: Member | None, new: Member) -> None:
        if new.id != self.me and new.state == ALIVE and (old is None or old.state != ALIVE):
            self._send_current(new.id, SEND_TRIES)

    def _send_current(self, node_id: str, tries: int) -> None:
        pending = self._retries.pop(node_id, None)
        if pending is not None:
            pending.cancel()
        pair = self.certs.current_pair()
        if pair is None:
            return
        if not self.bus.send(node_id, CertPair(pair[0].decode("ascii"), pair[1].decode("ascii"))) and tries > 1:
            self._retries[node_id] = self.clock.call_later(SEND_RETRY, self._send_current, node_id, tries - 1)

    def stop(self) -> None:
        for t in self._retries.values():
            t.cancel()
        self._retries.clear()
