"""The CDN purge protocol over the mesh bus, sans-IO.

A purge accepted by this node's admin API is broadcast (``Purge``); every peer with a
CDN runs it too (a peer without one does not subscribe, so it ignores it). The
checks are the admin API's: a tenant id, and at most one of a path prefix or a key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farts.peer import Envelope, PeerBus, PeerMessage, need, optional_str

from . import purge
from .service import CDN


@dataclass(frozen=True, slots=True)
class Purge(PeerMessage):
    TYPE = "cdn.purge"
    VERSION = 1
    tenant: str
    prefix: str | None = None
    key: str | None = None

    def spec(self) -> dict:
        """What ``purge.apply`` and the admin API take."""
        out: dict[str, Any] = {"tenant": self.tenant}
        if self.prefix is not None:
            out["prefix"] = self.prefix
        if self.key is not None:
            out["key"] = self.key
        return out

    def to_wire(self) -> dict:
        return self.spec()

    @classmethod
    def from_wire(cls, body: Any) -> Purge:
        need(cls, isinstance(body, dict), "an object")
        need(cls, isinstance(body.get("tenant"), str), '"tenant" (a string)')
        need(cls, optional_str(body.get("prefix")) and optional_str(body.get("key")),
             '"prefix" and "key" are strings when present')
        return cls(body["tenant"], body.get("prefix"), body.get("key"))


class PurgePeer:
    """Runs peers' purges on this node's CDN; ``purge_everywhere(spec)`` is what the admin
    API calls after a local purge. (A node without a CDN has no PurgePeer: it ignores them.)"""

    def __init__(self, cdn: CDN, bus: PeerBus) -> None:
        self.cdn, self.bus = cdn, bus
        bus.subscribe(Purge, self.on_purge)

    def purge_everywhere(self, spec: dict) -> int:
        return self.bus.broadcast(Purge(spec["tenant"], spec.get("prefix"), spec.get("key")))

    def on_purge(self, msg: Purge, env: Envelope) -> None:
        purge.apply(self.cdn, msg.spec())
