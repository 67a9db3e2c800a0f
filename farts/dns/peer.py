"""Run-time TXT records on every node's DNS, over the mesh bus (sans-IO).

An ACME DNS-01 challenge must be answerable by whichever node the CA asks: the TXT
record is set here and broadcast (``Txt``); every peer with a DNS service sets it too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farts.peer import Envelope, PeerBus, PeerMessage, need


@dataclass(frozen=True, slots=True)
class Txt(PeerMessage):
    TYPE = "dns.txt"
    VERSION = 1
    name: str
    values: tuple[str, ...]

    def to_wire(self) -> dict:
        return {"name": self.name, "values": list(self.values)}

    @classmethod
    def from_wire(cls, body: Any) -> Txt:
        need(cls, isinstance(body, dict), "an object")
        need(cls, isinstance(body.get("name"), str) and 0 < len(body["name"]) <= 253, '"name" (a domain name)')
        values = body.get("values")
        need(cls, isinstance(values, list) and len(values) <= 16
             and all(isinstance(v, str) and len(v) <= 255 for v in values), '"values" (up to 16 strings)')
        return cls(body["name"], tuple(values))


class TxtPeer:
    """Sets peers' TXT records on this node's DNS; ``set_everywhere`` sets one here and
    on every peer."""

    def __init__(self, dns, bus: PeerBus) -> None:
        self.dns, self.bus = dns, bus
        bus.subscribe(Txt, self.on_txt)

    def set_everywhere(self, name: str, values: list[str]) -> bool:
        ok = self.dns.set_txt(name, values)
        self.bus.broadcast(Txt(name, tuple(values)))
        return ok

    def on_txt(self, msg: Txt, env: Envelope) -> None:
        self.dns.set_txt(msg.name, list(msg.values))
