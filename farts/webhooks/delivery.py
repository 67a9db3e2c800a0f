"""When each delivery is attempted: a sans-IO scheduler (time is passed in, nothing waits).

Each delivery has a due time and an attempt count. ``take(now)`` hands out the
deliveries to attempt now, within the limits: ``max_in_flight`` in all,
``per_destination`` to one ``scheme://host:port``, and nothing to a destination whose
circuit is open. ``finished(...)`` takes an attempt's outcome and says what follows:

- ``OK``: delivered, forgotten.
- ``FAIL`` (no answer, a timeout, 5xx, 429, 408): retried after an exponential backoff
  (``backoff_min`` doubling per attempt up to ``backoff_max``, each delay drawn between
  half and all of it so that a burst of failures does not come back as one burst; a
  ``Retry-After`` lengthens it). It counts towards the destination's circuit breaker:
  ``breaker_failures`` in a row open the circuit for ``breaker_cooldown`` seconds, then
  one probe goes; its success closes the circuit, its failure opens it again.
- ``REJECTED`` (any other 4xx): retried the same way, but the receiver is up, so the
  breaker's count starts over.
- ``GONE`` (410, or a destination refused for good): dead at once.

A delivery whose next attempt would come after ``window`` seconds from its start is
dead-lettered (one held back by an open circuit meanwhile: when its attempt after the
cooldown fails). Times are wall seconds: the window and due times live in the replicated
store and go on from where they were when another node takes over.

``wakeup(now)`` is when ``take`` may have something new without an attempt finishing
(a due time, a circuit's cooldown ending); the asyncio side sets one timer for it.
"""
from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

OK, FAIL, REJECTED, GONE = "ok", "fail", "rejected", "gone"
DELIVERED, RETRY, DEAD, DROPPED = "delivered", "retry", "dead", "dropped"


@dataclass(slots=True)
class Delivery:
    id: str
    dest: str           # Destination.key: what limits and the breaker count by
    since: float        # wall seconds: the retry window starts here
    attempts: int = 0   # attempts made (the one in flight included)
    due: float = 0.0
    token: int = 0      # which heap entry is current (older ones are skipped)


@dataclass(slots=True)
class _Dest:
    in_flight: int = 0
    failures: int = 0          # in a row
    open_until: float = 0.0    # 0: closed; else open until then, half-open after
    parked: deque = field(default_factory=deque)   # (id, token): due, waiting for room here


class Scheduler:
    def __init__(self, *, window: float = 86400.0, backoff_min: float = 1.0, backoff_max: float = 3600.0,
                 max_in_flight: int = 512, per_destination: int = 32, breaker_failures: int = 10,
                 breaker_cooldown: float = 30.0, rng: random.Random | None = None) -> None:
        self.window, self.backoff_min, self.backoff_max = window, backoff_min, backoff_max
        self.max_in_flight, self.per_destination = max_in_flight, per_destination
        self.breaker_failures, self.breaker_cooldown = breaker_failures, breaker_cooldown
        self.rng = rng or random.Random()
        self.items: dict[str, Delivery] = {}       # every delivery not finished for good
        self.in_flight: dict[str, Delivery] = {}
        self.dests: dict[str, _Dest] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tokens = itertools.count(1)
        self._parked_at: set[str] = set()          # destinations with parked deliveries

    def __len__(self) -> int:
        return len(self.items)

    def add(self, d: Delivery) -> None:
        """A new delivery, or a known one with a new state (not while it is in flight)."""
        if d.id in self.in_flight:
            return
        self.items[d.id] = d
        self._push(d)

    def remove(self, delivery_id: str) -> None:
        """Forgotten (delivered or dead-lettered elsewhere); one in flight finishes DROPPED."""
        self.items.pop(delivery_id, None)

    def _push(self, d: Delivery) -> None:
        d.token = next(self._tokens)
        heapq.heappush(self._heap, (d.due, d.token, d.id))

    def _dest(self, key: str) -> _Dest:
        dest = self.dests.get(key)
        if dest is None:
            dest = self.dests[key] = _Dest()
        return dest

    def _room(self, dest: _Dest, now: float) -> bool:
        if dest.open_until:
            if now < dest.open_until:
                return False
            return dest.in_flight == 0      # half-open: one probe at a time
        return dest.in_flight < self.per_destination

    def _start(self, d: Delivery, dest: _Dest, out: list[Delivery]) -> None:
        d.attempts += 1
        dest.in_flight += 1
        self.in_flight[d.id] = d
        out.append(d)

    def take(self, now: float) -> list[Delivery]:
        """The deliveries to attempt now (each marked in flight, its attempt counted)."""
        out: list[Delivery] = []
        items = self.items
        for key in list(self._parked_at):    # due earlier, waiting for room at their destination
            dest = self.dests[key]
            while dest.parked and len(self.in_flight) < self.max_in_flight and self._room(dest, now):
                did, token = dest.parked.popleft()
                d = items.get(did)
                if d is not None and d.token == token and did not in self.in_flight:
                    self._start(d, dest, out)
            if not dest.parked:
                self._parked_at.discard(key)
        heap = self._heap
        while heap and heap[0][0] <= now and len(self.in_flight) < self.max_in_flight:
            _, token, did = heapq.heappop(heap)
            d = items.get(did)
            if d is None or d.token != token or did in self.in_flight:
                continue
            dest = self._dest(d.dest)
            if self._room(dest, now):
                self._start(d, dest, out)
            else:
                dest.parked.append((did, token))
                self._parked_at.add(d.dest)
        return out

    def wakeup(self, now: float) -> float | None:
        """When ``take`` may next hand something out (None: only after an attempt ends)."""
        times = [self.dests[k].open_until for k in self._parked_at if self.dests[k].open_until > now]
        heap = self._heap
        while heap and (heap[0][2] not in self.items or self.items[heap[0][2]].token != heap[0][1]):
            heapq.heappop(heap)                # stale entries: dropped here, not later
        if heap:
            times.append(heap[0][0])
        return min(times) if times else None

    def backoff(self, attempts: int) -> float:
        base = min(self.backoff_max, self.backoff_min * 2 ** min(attempts - 1, 60))
        return base * (0.5 + 0.5 * self.rng.random())

    def finished(self, delivery_id: str, now: float, outcome: str,
                 retry_after: float | None = None) -> tuple[str, Delivery]:
        """What follows an attempt: (DELIVERED | RETRY | DEAD | DROPPED, the delivery);
        after RETRY, ``delivery.due`` is the next attempt's time."""
        d = self.in_flight.pop(delivery_id)
        dest = self._dest(d.dest)
        dest.in_flight -= 1
        if outcome == OK:
            dest.failures, dest.open_until = 0, 0.0
        elif outcome == FAIL:
            dest.failures += 1
            if dest.open_until or dest.failures >= self.breaker_failures:
                dest.open_until = now + self.breaker_cooldown    # (again, after a failed probe)
        else:
            dest.failures, dest.open_until = 0, 0.0
        if dest.parked:
            self._parked_at.add(d.dest)
        if self.items.get(delivery_id) is not d:
            return (DELIVERED if outcome == OK else DROPPED), d
        if outcome == OK:
            del self.items[delivery_id]
            return DELIVERED, d
        if outcome == GONE:
            del self.items[delivery_id]
            return DEAD, d
        delay = self.backoff(d.attempts)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.backoff_max)
        if now + delay > d.since + self.window:
            del self.items[delivery_id]
            return DEAD, d
        d.due = now + delay
        self._push(d)
        return RETRY, d
