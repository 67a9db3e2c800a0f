"""The master lease's messages on the mesh bus, and the view of every deployment's master.

Requests and votes go to the nodes of one deployment (``send``); announcements and
releases are broadcast to every member, so each node knows the master of every
deployment (``/api/mesh``, ``farts-edge status``). Every message names its deployment:
a node hands only its own deployment's messages to its ``Lease``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from farts.master import lease
from farts.peer import PeerMessage, need

MAX_NAME = 128


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63


def _name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_NAME


def _check(cls: type[PeerMessage], body: Any, fields: dict[str, Any]) -> None:
    need(cls, isinstance(body, dict) and set(body) == set(fields),
         "an object {" + ", ".join(fields) + "}")
    for key, ok in fields.items():
        need(cls, ok(body[key]), key)


@dataclass(frozen=True, slots=True)
class LeaseAsk(PeerMessage):
    TYPE = "master.ask"
    VERSION = 1
    deployment: str
    ask: lease.Ask

    def to_wire(self) -> dict:
        a = self.ask
        return {"d": self.deployment, "epoch": a.epoch, "candidate": a.candidate, "round": a.round}

    @classmethod
    def from_wire(cls, body: Any) -> LeaseAsk:
        _check(cls, body, {"d": _name, "epoch": _int, "candidate": _name, "round": _int})
        return cls(body["d"], lease.Ask(body["epoch"], body["candidate"], body["round"]))


@dataclass(frozen=True, slots=True)
class LeaseVote(PeerMessage):
    TYPE = "master.vote"
    VERSION = 1
    deployment: str
    vote: lease.Vote

    def to_wire(self) -> dict:
        v = self.vote
        return {"d": self.deployment, "epoch": v.epoch, "candidate": v.candidate, "round": v.round,
                "granted": v.granted, "promised_epoch": v.promised_epoch, "promised_to": v.promised_to}

    @classmethod
    def from_wire(cls, body: Any) -> LeaseVote:
        _check(cls, body, {"d": _name, "epoch": _int, "candidate": _name, "round": _int,
                           "granted": lambda v: isinstance(v, bool), "promised_epoch": _int,
                           "promised_to": lambda v: v is None or _name(v)})
        return cls(body["d"], lease.Vote(body["epoch"], body["candidate"], body["round"], body["granted"],
                                         body["promised_epoch"], body["promised_to"]))


@dataclass(frozen=True, slots=True)
class LeaseHeld(PeerMessage):
    TYPE = "master.held"
    VERSION = 1
    deployment: str
    held: lease.Held

    def to_wire(self) -> dict:
        return {"d": self.deployment, "epoch": self.held.epoch, "holder": self.held.holder}

    @classmethod
    def from_wire(cls, body: Any) -> LeaseHeld:
        _check(cls, body, {"d": _name, "epoch": _int, "holder": _name})
        return cls(body["d"], lease.Held(body["epoch"], body["holder"]))


@dataclass(frozen=True, slots=True)
class LeaseRelease(PeerMessage):
    TYPE = "master.release"
    VERSION = 1
    deployment: str
    release: lease.Release

    def to_wire(self) -> dict:
        return {"d": self.deployment, "epoch": self.release.epoch, "holder": self.release.holder}

    @classmethod
    def from_wire(cls, body: Any) -> LeaseRelease:
        _check(cls, body, {"d": _name, "epoch": _int, "holder": _name})
        return cls(body["d"], lease.Release(body["epoch"], body["holder"]))


# The machine's message type -> its wire class.
WIRE: dict[type, type[PeerMessage]] = {lease.Ask: LeaseAsk, lease.Vote: LeaseVote, lease.Held: LeaseHeld,
                                       lease.Release: LeaseRelease}


def wrap(deployment: str, message) -> PeerMessage:
    return WIRE[type(message)](deployment, message)


def unwrap(msg: PeerMessage):
    """The lease machine's message a wire message carries."""
    return getattr(msg, dataclasses.fields(msg)[1].name)


class Masters:
    """Every deployment's master as this node last heard it: announcements last one
    lease duration from their arrival, a release ends one at once."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._seen: dict[str, tuple[str, int, float]] = {}   # deployment -> (holder, epoch, until)
        self.epochs: dict[str, int] = {}                       # deployment -> highest epoch heard

    def held(self, deployment: str, held: lease.Held, now: float) -> None:
        self._seen[deployment] = (held.holder, held.epoch, now + self.duration)
        self.epochs[deployment] = max(self.epochs.get(deployment, 0), held.epoch)

    def released(self, deployment: str, rel: lease.Release) -> None:
        seen = self._seen.get(deployment)
        if seen is not None and seen[:2] == (rel.holder, rel.epoch):
            del self._seen[deployment]

    def view(self, now: float) -> dict[str, dict]:
        """deployment -> {"master": id or None, "epoch": n}."""
        out = {d: {"master": None, "epoch": e} for d, e in self.epochs.items()}
        for d, (holder, epoch, until) in self._seen.items():
            if now < until:
                out[d] = {"master": holder, "epoch": epoch}
        return out


@dataclass(frozen=True, slots=True)
class NodeReport(PeerMessage):
    """What every node tells the master of itself for the alert rules, each interval."""
    TYPE = "master.report"
    VERSION = 1
    deployment: str
    version: str
    disk_used: float | None

    def to_wire(self) -> dict:
        return {"d": self.deployment, "version": self.version, "disk_used": self.disk_used}

    @classmethod
    def from_wire(cls, body: Any) -> NodeReport:
        _check(cls, body, {"d": _name, "version": _name,
                           "disk_used": lambda v: v is None or (isinstance(v, (int, float))
                                                                and not isinstance(v, bool) and 0 <= v <= 1)})
        return cls(body["d"], body["version"], None if body["disk_used"] is None else float(body["disk_used"]))
