"""The master lease's messages on the mesh bus, and the view of every deployment's master.

Requests and votes go to the nodes of one deployment (``send``); announcements and
releases are broadcast to every member, so each node knows the master of every
deployment (``/api/mesh``, ``farts-edge status``). Every message names its deployment:
a node hands only its own deployment's messages to its ``Lease``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

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


class LeaseMessage(PeerMessage):
    """A lease machine's message (``INNER``) on the wire: its fields, each checked by
    ``FIELDS``, and the deployment ``d``. Subclasses are dataclasses (deployment, message)."""

    __slots__ = ()
    INNER: ClassVar[type]
    FIELDS: ClassVar[dict[str, Callable[[Any], bool]]]

    def to_wire(self) -> dict:
        return {"d": self.deployment, **dataclasses.asdict(self.message)}

    @classmethod
    def from_wire(cls, body: Any) -> LeaseMessage:
        _check(cls, body, {"d": _name, **cls.FIELDS})
        return cls(body["d"], cls.INNER(**{k: body[k] for k in cls.FIELDS}))


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _holder_or_none(v: Any) -> bool:
    return v is None or _name(v)


HOLDER = {"epoch": _int, "holder": _name}


@dataclass(frozen=True, slots=True)
class LeaseAsk(LeaseMessage):
    TYPE, VERSION, INNER = "master.ask", 1, lease.Ask
    FIELDS = {"epoch": _int, "candidate": _name, "round": _int}
    deployment: str
    message: lease.Ask


@dataclass(frozen=True, slots=True)
class LeaseVote(LeaseMessage):
    TYPE, VERSION, INNER = "master.vote", 1, lease.Vote
    FIELDS = {"epoch": _int, "candidate": _name, "round": _int, "granted": _bool, "promised_epoch": _int,
              "promised_to": _holder_or_none}
    deployment: str
    message: lease.Vote


@dataclass(frozen=True, slots=True)
class LeaseHeld(LeaseMessage):
    TYPE, VERSION, INNER, FIELDS = "master.held", 1, lease.Held, HOLDER
    deployment: str
    message: lease.Held


@dataclass(frozen=True, slots=True)
class LeaseRelease(LeaseMessage):
    TYPE, VERSION, INNER, FIELDS = "master.release", 1, lease.Release, HOLDER
    deployment: str
    message: lease.Release


LEASE_MESSAGES = (LeaseAsk, LeaseVote, LeaseHeld, LeaseRelease)
# The machine's message type -> its wire class.
WIRE: dict[type, type[LeaseMessage]] = {cls.INNER: cls for cls in LEASE_MESSAGES}


def wrap(deployment: str, message) -> LeaseMessage:
    return WIRE[type(message)](deployment, message)


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
