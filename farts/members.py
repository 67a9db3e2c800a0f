"""The live node map: which nodes of the deployment exist and which are alive.

Shared layer, so services can depend on it without depending on each other: the
mesh writes it (membership changes), the DNS reads it (nearest live nodes), the
status views print it. Until a mesh runs, it holds the static node list from the
config and nothing changes it.

One event loop, no locks: readers call ``alive()`` per query and get the current
snapshot; writers replace a member and every ``on_change`` callback runs at once.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

ALIVE, SUSPECT, DEAD, LEFT, DRAINING = "alive", "suspect", "dead", "left", "draining"
# Suspect nodes still answer (a suspicion is often false); dead, left and draining do not.
SERVING = frozenset({ALIVE, SUSPECT})


@dataclass(frozen=True)
class Member:
    id: str
    region: str = ""
    lat: float = 0.0
    lon: float = 0.0
    # Public addresses clients are sent to (IPv4 and/or IPv6 literals).
    addresses: tuple[str, ...] = ()
    state: str = ALIVE
    incarnation: int = 0
    load: float = 0.0
    meta: dict = field(default_factory=dict, compare=False)


class MemberMap:
    def __init__(self, members: list[Member] = ()) -> None:
        self._members: dict[str, Member] = {m.id: m for m in members}
        self._listeners: list[Callable[[Member | None, Member], None]] = []
        self._alive: tuple[Member, ...] | None = None
        # Bumped on every change: caches keyed on the map compare it.
        self.version = 0

    def members(self) -> list[Member]:
        return list(self._members.values())

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def alive(self) -> tuple[Member, ...]:
        """Members that should receive traffic, cached until the next change."""
        if self._alive is None:
            self._alive = tuple(m for m in self._members.values() if m.state in SERVING)
        return self._alive

    def update(self, member: Member) -> None:
        """Adds or replaces a member; listeners hear (old or None, new)."""
        old = self._members.get(member.id)
        if old == member:
            return
        self._members[member.id] = member
        self._alive = None
        self.version += 1
        for fn in list(self._listeners):
            fn(old, member)

    def set_state(self, node_id: str, state: str) -> None:
        m = self._members[node_id]
        self.update(dataclasses.replace(m, state=state))

    def on_change(self, fn: Callable[[Member | None, Member], None]) -> Callable[[], None]:
        """Calls ``fn(old, new)`` on every change; returns a function that stops it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)
