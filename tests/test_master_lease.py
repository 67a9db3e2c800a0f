"""The master lease (farts/master/lease.py) simulated: Lease machines of one deployment on
a simulated network driven by a FakeClock, each node with its own clock (an offset and a
rate within the drift bound), messages delayed, dropped across partitions, nodes killed
(their persisted promise survives) and restarted.

What must hold, checked at every event and every 10 ms of simulated time: never two
nodes acting as master at once, never one epoch held by two nodes; and what should:
one master soon after any majority can talk, the takeover within the stated bound.
"""
from __future__ import annotations

import random

import pytest

from farts.clock import FakeClock
from farts.master import lease
from farts.master.lease import (
    CANDIDATE,
    FOLLOWER,
    MASTER,
    STOPPED,
    TRANSITIONS,
    Broadcast,
    Lease,
    Persist,
    Role,
    Send,
)

DURATION, DRIFT = 6.0, 0.05
fired: set[tuple[str, str]] = set()   # every (state, event) any test moved a machine by


class Sim:
    def __init__(self, ids, seed=1, delay=0.01, rates=None, duration=DURATION, drift=DRIFT):
        self.clock = FakeClock(start=0.0)
        self.ids, self.delay, self.duration, self.drift = list(ids), delay, duration, drift
        self.rng = random.Random(seed)
        self.rates = rates or {i: 1.0 for i in ids}
        self.offsets = {i: 100.0 * k for k, i in enumerate(ids)}
        self.disk: dict[str, tuple[int, str | None]] = {}
        self.nodes: dict[str, Lease] = {}
        self.timers: dict[str, object] = {}
        self.cut: set[frozenset] = set()
        self.roles: list[tuple[float, str, bool, int]] = []   # (real time, node, active, epoch)
        self.holders: dict[int, str] = {}
        for i in ids:
            self.start(i)

    # -- time --
    def local(self, node_id: str) -> float:
        return self.offsets[node_id] + self.rates[node_id] * self.clock.now

    def real(self, node_id: str, local: float) -> float:
        return (local - self.offsets[node_id]) / self.rates[node_id]

    # -- nodes --
    def start(self, node_id: str) -> None:
        m = Lease(node_id, self.ids, self.duration, self.drift, self.local(node_id), self.rng.random,
                  self.disk.get(node_id, (0, None)))
        original = m._fire

        def recorded(event, now, m=m, original=original):
            if (m.state, event) in TRANSITIONS:
                fired.add((m.state, event))
            return original(event, now)
        m._fire = recorded
        self.nodes[node_id] = m
        self.schedule(node_id)

    def kill(self, node_id: str) -> None:
        """kill -9: the machine is gone, its disk stays."""
        self.nodes.pop(node_id)
        timer = self.timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()

    def stop(self, node_id: str) -> None:
        m = self.nodes[node_id]
        self.run(node_id, m.stop(self.local(node_id)))
        self.kill(node_id)

    def schedule(self, node_id: str) -> None:
        old = self.timers.pop(node_id, None)
        if old is not None:
            old.cancel()
        m = self.nodes.get(node_id)
        if m is None:
            return
        at = m.next_deadline()
        if at != float("inf"):
            when = max(self.clock.now, self.real(node_id, at) + 1e-9)
            self.timers[node_id] = self.clock.call_at(when, self.wake, node_id)

    def wake(self, node_id: str) -> None:
        m = self.nodes.get(node_id)
        if m is not None:
            self.run(node_id, m.tick(self.local(node_id)))

    def run(self, node_id: str, actions) -> None:
        for a in actions:
            if isinstance(a, Persist):
                self.disk[node_id] = (a.epoch, a.holder)
            elif isinstance(a, Send):
                self.deliver(node_id, a.to, a.message)
            elif isinstance(a, Broadcast):
                for other in self.ids:
                    if other != node_id:
                        self.deliver(node_id, other, a.message)
            elif isinstance(a, Role):
                self.roles.append((self.clock.now, node_id, a.active, a.epoch))
                if a.active:
                    assert self.holders.setdefault(a.epoch, node_id) == node_id, \
                        f"epoch {a.epoch} held by {self.holders[a.epoch]} and {node_id}"
        self.schedule(node_id)
        self.check()

    def deliver(self, src: str, dst: str, msg) -> None:
        if frozenset((src, dst)) in self.cut:
            return
        self.clock.call_later(self.delay * (0.5 + self.rng.random()), self.receive, src, dst, msg)

    def receive(self, src: str, dst: str, msg) -> None:
        m = self.nodes.get(dst)
        if m is None or frozenset((src, dst)) in self.cut:
            return
        now = self.local(dst)
        handler = {lease.Ask: m.on_ask, lease.Vote: m.on_vote, lease.Held: m.on_held,
                   lease.Release: m.on_release}[type(msg)]
        self.run(dst, handler(msg, src, now))

    # -- the network --
    def partition(self, *groups) -> None:
        self.cut = {frozenset((a, b)) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.cut = set()

    # -- what holds --
    def acting(self) -> list[str]:
        return [i for i, m in self.nodes.items() if m.acting(self.local(i))]

    def check(self) -> None:
        acting = self.acting()
        assert len(acting) <= 1, f"two masters at {self.clock.now}: {acting}"
        if acting:
            # The reason it holds: while a node acts, a majority still keeps their promise
            # to it (in real time; a node that is down keeps what is on its disk).
            m = self.nodes[acting[0]]
            holding = [i for i in self.ids if (
                self.disk.get(i) == (m.epoch, m.me) if i not in self.nodes else
                (self.nodes[i].promise.epoch, self.nodes[i].promise.holder) == (m.epoch, m.me)
                and self.real(i, self.nodes[i].promise.until) > self.clock.now)]
            assert len(holding) >= m.majority, f"{m.me} acts at {self.clock.now} with promises of {holding}"

    def advance(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.advance(min(0.01, end - self.clock.now))
            self.check()

    def master(self) -> str | None:
        acting = self.acting()
        return acting[0] if acting else None

    def until_master(self, limit: float, other_than: str | None = None) -> float:
        start = self.clock.now
        while self.clock.now - start < limit:
            self.advance(0.01)
            if self.master() not in (None, other_than):
                return self.clock.now - start
        raise AssertionError(f"no master within {limit} s: {[(i, m.state) for i, m in self.nodes.items()]}")


def bound(n: int, duration: float = DURATION) -> float:
    """The takeover bound lease.py states, plus a round trip of the simulated network."""
    return duration * (1 + n / 10) + 0.1


def make_master(sim: Sim, node_id: str) -> None:
    """Stops (and restarts) whoever else wins until node_id is master."""
    while sim.master() != node_id:
        sim.until_master(bound(3))
        if sim.master() != node_id:
            other = sim.master()
            sim.stop(other)
            sim.start(other)


def test_a_single_node_deployment_is_its_own_master_at_once():
    sim = Sim(["solo"])
    sim.advance(0.1 * DURATION + 0.01)   # its campaign waits one step of jitter at most
    assert sim.master() == "solo"
    sim.advance(10 * DURATION)           # renewals keep it
    assert sim.master() == "solo" and sim.nodes["solo"].epoch == 1


def test_three_nodes_elect_one_master_that_everyone_knows():
    sim = Sim(["a", "b", "c"])
    sim.until_master(bound(3))
    master = sim.master()
    sim.advance(5 * DURATION)
    assert sim.master() == master
    epoch = sim.nodes[master].epoch
    assert epoch == 1
    for i, m in sim.nodes.items():
        assert m.master(sim.local(i)) == (master, epoch)
    assert [r for r in sim.roles if r[2]] == [sim.roles[0]]   # became master once, nobody else


def test_a_killed_master_is_replaced_within_the_bound_with_a_higher_epoch():
    sim = Sim(["a", "b", "c"])
    sim.until_master(bound(3))
    old = sim.master()
    sim.advance(2.3)
    sim.kill(old)
    took = sim.until_master(bound(3), other_than=old)
    assert took <= bound(3)
    new = sim.master()
    assert sim.nodes[new].epoch == 2
    sim.start(old)   # it comes back with its promise from disk and does not disturb the master
    sim.advance(5 * DURATION)
    assert sim.master() == new and sim.nodes[new].epoch == 2


def test_a_graceful_stop_hands_over_without_waiting_for_the_lease():
    sim = Sim(["a", "b", "c"])
    sim.until_master(bound(3))
    old = sim.master()
    sim.advance(1.0)
    sim.stop(old)
    assert sim.roles[-1][1:3] == (old, False)
    took = sim.until_master(bound(3), other_than=old)
    assert took < DURATION / 2


@pytest.mark.parametrize("slow_master", [False, True])
def test_a_master_cut_off_in_a_minority_stops_before_the_majority_elects(slow_master):
    # The worst case the drift bound allows: the master's clock slow, the others' fast.
    rates = {"a": 1 - DRIFT, "b": 1 + DRIFT, "c": 1 + DRIFT} if slow_master else None
    sim = Sim(["a", "b", "c"], rates=rates)
    make_master(sim, "a")
    sim.advance(1.7)
    cut_at, old_epoch = sim.clock.now, sim.nodes["a"].epoch
    sim.partition({"a"}, {"b", "c"})
    sim.until_master(bound(3) * 1.2, other_than="a")
    stopped = next(t for t, n, active, _ in sim.roles if n == "a" and not active and t >= cut_at)
    started = sim.roles[-1]
    assert started[2] and started[1] in ("b", "c") and started[3] > old_epoch
    assert stopped < started[0]
    sim.heal()
    sim.advance(5 * DURATION)
    assert sim.master() == started[1]


def test_a_minority_that_campaigns_does_not_unseat_the_master_of_the_majority():
    sim = Sim(["a", "b", "c", "d", "e"])
    sim.until_master(bound(5))
    master = sim.master()
    others = [i for i in sim.ids if i != master]
    sim.partition({master, others[0], others[1]}, {others[2], others[3]})
    sim.advance(10 * DURATION)
    assert sim.master() == master
    assert any(sim.nodes[i].state == CANDIDATE or sim.nodes[i].failures for i in others[2:])
    sim.heal()
    sim.advance(10 * DURATION)
    assert sim.master() is not None


def test_an_epoch_is_never_promised_twice_across_a_restart():
    # a holds epoch 1 with b's vote; c is cut off. b restarts (kill -9) while a keeps going:
    # b's persisted promise stops it voting c in at epoch 1.
    sim = Sim(["a", "b", "c"])
    make_master(sim, "a")
    sim.partition({"a", "b"}, {"c"})
    sim.advance(3 * DURATION)
    sim.kill("b")
    sim.start("b")
    assert sim.nodes["b"].promise.epoch == sim.nodes["a"].epoch
    sim.partition({"a"}, {"b", "c"})     # now c and b can make a majority without a
    sim.until_master(3 * bound(3), other_than="a")
    assert sim.nodes[sim.master()].epoch > sim.nodes["a"].epoch   # (and Sim.run checks the holders)


def test_a_split_vote_backs_off_and_settles():
    # Four nodes, two campaigns at once that split the votes 2-2: both lose, back off
    # (by rank, doubling) and one wins later.
    sim = Sim(["a", "b", "c", "d"], delay=0.05)
    for m in sim.nodes.values():
        m.campaign_at = sim.local(m.me) + 1.0
        sim.schedule(m.me)
    sim.until_master(10 * bound(4))
    assert any(m.failures == 0 and m.state == MASTER for m in sim.nodes.values())


def test_random_partitions_kills_and_drift_never_make_two_masters():
    for seed in range(6):
        rng = random.Random(seed)
        ids = ["n1", "n2", "n3", "n4", "n5"]
        rates = {i: 1 + rng.uniform(-DRIFT, DRIFT) for i in ids}
        sim = Sim(ids, seed=seed, delay=0.02, rates=rates)
        for _ in range(40):
            r = rng.random()
            if r < 0.3:
                k = rng.randint(1, 4)
                shuffled = rng.sample(ids, len(ids))
                sim.partition(set(shuffled[:k]), set(shuffled[k:]))
            elif r < 0.5:
                sim.heal()
            elif r < 0.65 and len(sim.nodes) > 1:
                sim.kill(rng.choice(sorted(sim.nodes)))
            elif r < 0.8:
                for i in ids:
                    if i not in sim.nodes:
                        sim.start(i)
            elif r < 0.9 and sim.master() is not None:
                sim.stop(sim.master())
            sim.advance(rng.uniform(0.1, 2 * DURATION))
        for i in ids:
            if i not in sim.nodes:
                sim.start(i)
        sim.heal()
        sim.until_master(4 * bound(5))
        epochs = [e for _, _, active, e in sim.roles if active]
        assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)


def test_a_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        Lease("x", ["a", "b"], 6.0, 0.05, 0.0, random.random)
    with pytest.raises(ValueError, match="drift"):
        Lease("a", ["a", "b"], 6.0, 0.6, 0.0, random.random)


def test_messages_from_outside_the_deployment_or_for_others_are_ignored():
    m = Lease("a", ["a", "b", "c"], DURATION, DRIFT, 0.0, random.random)
    assert m.on_ask(lease.Ask(5, "z", 1), "z", 0.0) == []            # not a node of the deployment
    assert m.on_ask(lease.Ask(5, "b", 1), "c", 0.0) == []            # c asking in b's name
    assert m.on_held(lease.Held(5, "b"), "c", 0.0) == []
    assert m.promise.epoch == 0 and m.known_epoch == 0


def test_a_candidate_refused_by_a_majority_loses_and_backs_off():
    sim = Sim(["a", "b", "c"])
    sim.until_master(bound(3))
    master = sim.master()
    other = next(i for i in sim.ids if i != master)
    m = sim.nodes[other]
    m.campaign_at = sim.local(other)          # campaign now, against a live lease
    sim.schedule(other)
    sim.advance(0.1)
    assert m.state == FOLLOWER and m.failures == 1
    assert sim.master() == master


def test_a_master_that_hears_of_a_higher_epoch_steps_down():
    sim = Sim(["a", "b", "c"])
    sim.until_master(bound(3))
    master = sim.master()
    m = sim.nodes[master]
    other = next(i for i in sim.ids if i != master)
    actions = m.on_held(lease.Held(m.epoch + 1, other), other, sim.local(master))
    assert actions == [Role(False, 1)] and m.state == FOLLOWER
    m2 = Sim(["x"]).nodes["x"]
    m2.tick(m2.campaign_at)
    assert m2.state == MASTER
    assert m2.observe_epoch(7, m2.campaign_at) == [Role(False, 1)]


@pytest.mark.parametrize("state", [FOLLOWER, CANDIDATE])
def test_stopping_a_node_that_is_not_master_just_stops_it(state):
    m = Lease("a", ["a", "b", "c"], DURATION, DRIFT, 0.0, random.random)
    if state == CANDIDATE:
        m.tick(m.campaign_at)
        assert m.state == CANDIDATE
    original = m._fire

    def recorded(event, now):
        fired.add((m.state, event))
        return original(event, now)
    m._fire = recorded
    assert m.stop(10.0) == [] and m.state == STOPPED


def test_every_transition_of_the_table_was_taken():
    # (runs last in this file: the tests above move the machines through the table)
    missing = set(TRANSITIONS) - fired
    assert not missing, missing
    assert {s for s, _ in TRANSITIONS} == {FOLLOWER, CANDIDATE, MASTER}
    assert STOPPED in {s for _, s in TRANSITIONS.values()}
