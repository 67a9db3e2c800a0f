"""What services say to their peers: the bus interface and the typed, versioned message base.

A service owns its peer protocol (pub/sub catch-up, CDN purge, later oplog shipping,
certificates, the master lease) as a sans-IO object written against ``PeerBus``; the
mesh's ``Bus`` implements it, tests hand in a fake. Messages are frozen dataclasses
with a ``TYPE`` and a ``VERSION``; ``from_wire`` checks everything a peer sent and
raises ``BadMessage`` (counted by the bus, never handed to the protocol), so no
protocol needs its own isinstance checks.

On the wire a message is its bus type name and a msgpack body. Version 1 of a
message uses the bare ``TYPE`` (what nodes sent before messages were versioned, so
the two interoperate); a later version is ``TYPE@VERSION``, and a message of a
version this node does not speak is refused as a ``BadMessage``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from farts.members import Member


class BadMessage(ValueError):
    """A peer message that does not validate; ``reason`` is a short metric label."""

    def __init__(self, type_: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{type_}: {reason}" + (f" ({detail})" if detail else ""))
        self.type, self.reason = type_, reason


class PeerMessage:
    """Base of every peer message: subclasses are frozen dataclasses that set TYPE and
    VERSION. Most carry one value, sent as it is: such a message only says how to check
    it (``parse(body) -> value``, raising ``BadMessage``); one with more fields overrides
    ``to_wire`` and ``from_wire``."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_wire(self) -> Any:
        (only,) = dataclasses.fields(self)
        return getattr(self, only.name)

    @classmethod
    def from_wire(cls, body: Any) -> PeerMessage:
        return cls(cls.parse(body))

    @classmethod
    def parse(cls, body: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def wire_type(cls) -> str:
        return wire_type(cls.TYPE, cls.VERSION)

    @classmethod
    def bad(cls, reason: str, detail: str = "") -> BadMessage:
        return BadMessage(cls.TYPE, reason, detail)


def wire_type(type_: str, version: int) -> str:
    return type_ if version == 1 else f"{type_}@{version}"


def split_wire_type(name: str) -> tuple[str, int]:
    """``"pubsub.event@2"`` -> ``("pubsub.event", 2)``; a bare name is version 1."""
    type_, at, version = name.partition("@")
    if not at:
        return name, 1
    if not version.isdigit():
        raise BadMessage(type_, "version", repr(version))
    return type_, int(version)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Where a received message came from (the bus fills it)."""
    origin: str
    gap: int = 0        # broadcasts from this origin missed just before this one
    hlc: int = 0        # the origin's HLC timestamp when it sent


M = TypeVar("M", bound=PeerMessage)


class PeerBus(Protocol):
    """The mesh as services see it (``farts.mesh.bus.Bus``; a fake in unit tests)."""

    def members(self) -> list[Member]: ...

    def on_member_change(self, fn: Callable[[Member | None, Member], None]) -> Callable[[], None]: ...

    def broadcast(self, msg: PeerMessage) -> int:
        """To every member with a link; returns how many took it."""

    def send(self, node_id: str, msg: PeerMessage) -> bool:
        """To one member; False when there is no link to it (or it is too slow)."""

    def subscribe(self, cls: type[M], fn: Callable[[M, Envelope], None]) -> Callable[[], None]:
        """``fn(message, envelope)`` for each valid message of that class from a peer."""

    def on_gap(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """``fn(origin)`` when a broadcast of any type from origin shows earlier ones were
        missed (before that broadcast is handed on)."""


# ---- small validators the message classes share -------------------------------------------


def need(cls: type[PeerMessage], ok: bool, what: str) -> None:
    if not ok:
        raise cls.bad("field", what)


def optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)
