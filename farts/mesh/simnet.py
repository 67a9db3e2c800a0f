"""A simulated network for the SWIM machine: virtual time, latency, loss, crashes.

Deterministic for a given seed. The tests (hypothesis schedules) and
bench/mesh_sim.py (detection time and false positives at 100 and 1,000 members)
drive the same `Swim` class the nodes run, with nothing between it and this heap
of timed events.
"""
from __future__ import annotations

import heapq
import random
from collections.abc import Iterable

from farts.members import DEAD
from farts.mesh.swim import Swim, SwimConfig


class SimNet:
    def __init__(self, ids: Iterable[str], cfg: SwimConfig, seed: int = 0, loss: float = 0.0,
                 latency: tuple[float, float] = (0.0005, 0.005)) -> None:
        self.rng = random.Random(seed)
        self.cfg, self.loss, self.latency = cfg, loss, latency
        self.now = 0.0
        self.nodes: dict[str, Swim] = {}
        self.crashed: set[str] = set()
        # Pairs that cannot reach each other (a partition), either direction.
        self.cut: set[frozenset] = set()
        self._heap: list = []
        self._n = 0
        self._wake: dict[str, float] = {}
        self.sent = 0
        # (time, observer, subject, new state, incarnation) for every change seen.
        self.log: list[tuple[float, str, str, str, int]] = []
        ids = list(ids)
        for i in ids:  # everyone starts knowing everyone (a formed cluster)
            s = self.nodes[i] = Swim(i, {}, cfg, 0.0, random.Random(self.rng.random()))
            for j in ids:
                if j != i:
                    s.add_peer(0.0, j, 0, {})
            s.changes.clear()
            s._gossip.clear()
            self._schedule_wake(i)

    def _push(self, t: float, *item) -> None:
        self._n += 1
        heapq.heappush(self._heap, (t, self._n, *item))

    def _schedule_wake(self, node_id: str) -> None:
        t = max(self.now, self.nodes[node_id].next_wakeup())
        if t < self._wake.get(node_id, float("inf")):
            self._wake[node_id] = t
            self._push(t, "wake", node_id, None, None)

    def _flush(self, node_id: str) -> None:
        s = self.nodes[node_id]
        for p, _old in s.changes:
            self.log.append((self.now, node_id, p.id, p.state, p.incarnation))
        s.changes.clear()
        for dest, msg in s.outbox:
            self.sent += 1
            if dest in self.crashed or frozenset((node_id, dest)) in self.cut:
                continue
            if self.loss and self.rng.random() < self.loss:
                continue
            self._push(self.now + self.rng.uniform(*self.latency), "msg", dest, node_id, msg)
        s.outbox.clear()
        self._schedule_wake(node_id)

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, kind, node_id, src, msg = heapq.heappop(self._heap)
            self.now = t
            if node_id in self.crashed or node_id not in self.nodes:
                continue
            s = self.nodes[node_id]
            if kind == "wake":
                if self._wake.get(node_id) != t:
                    continue  # superseded by an earlier wakeup
                del self._wake[node_id]
                s.tick(t)
            else:
                s.receive(t, src, msg)
            self._flush(node_id)
        self.now = t_end

    def crash(self, node_id: str) -> None:
        self.crashed.add(node_id)

    def restart(self, node_id: str, via: str) -> None:
        """A fresh process (incarnation 0) for node_id that knows only `via`."""
        self.crashed.discard(node_id)
        s = self.nodes[node_id] = Swim(node_id, {}, self.cfg, self.now, random.Random(self.rng.random()))
        s.add_peer(self.now, via, 0, {})
        s.connected(self.now, via)
        self._wake.pop(node_id, None)
        self._flush(node_id)

    def leave(self, node_id: str) -> None:
        self.nodes[node_id].leave(self.now)
        self._flush(node_id)
        self.crashed.add(node_id)

    def state(self, observer: str, subject: str) -> str | None:
        p = self.nodes[observer].peers.get(subject)
        return p.state if p else None

    def live(self) -> list[str]:
        return [i for i in self.nodes if i not in self.crashed]

    def declared_dead(self, subject: str) -> list[tuple[float, str]]:
        """(time, observer) of every declaration of subject as dead."""
        return [(t, o) for t, o, s, st, _ in self.log if s == subject and st == DEAD]
