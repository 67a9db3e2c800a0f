"""The rolling deploy's state machine on a FakeClock: the order, the health gate, the bake,
the stop and the rollback. A fake cluster answers each action after a delay."""
from __future__ import annotations

from farts.clock import FakeClock
from farts.release import rollout
from farts.release.deploy import mesh_admin_urls
from farts.release.rollout import CheckHealth, Finished, Install, Restart, Rollback, Rollout, Verify

NODES = ["n1", "n2", "n3"]


class Cluster:
    """Answers the machine's actions: each after ``delay`` seconds, ok unless ``bad``
    says otherwise for (action type, node); ``unhealthy_after`` makes a node's health
    checks fail from that time on."""

    def __init__(self, machine: Rollout, clock: FakeClock, bad=(), unhealthy_after: dict | None = None,
                 slow_health: dict | None = None) -> None:
        self.m, self.clock, self.bad = machine, clock, set(bad)
        self.unhealthy_after = unhealthy_after or {}
        self.slow_health = slow_health or {}   # node -> healthy only from that time on
        self.log: list = []
        self.finished: Finished | None = None
        clock.every(0.5, lambda now: self.run(self.m.tick(now)))

    def run(self, actions) -> None:
        for a in actions:
            if isinstance(a, Finished):
                self.finished = a
                continue
            self.log.append((type(a).__name__, a.node, self.clock.monotonic()))
            self.clock.call_later(0.1, self.answer, a)

    def answer(self, a) -> None:
        now = self.clock.monotonic()
        ok = (type(a), a.node) not in self.bad
        if isinstance(a, CheckHealth):
            ok = ok and now < self.unhealthy_after.get(a.node, float("inf")) \
                and now >= self.slow_health.get(a.node, 0.0)
        self.run(self.m.done(a.node, ok, "" if ok else f"{type(a).__name__} failed", now))

    def steps(self, node: str) -> list[str]:
        out = []
        for name, n, _ in self.log:
            if n == node and (not out or out[-1] != name):
                out.append(name)
        return out


def deploy(bad=(), **kw):
    clock = FakeClock()
    m = Rollout("0.2.0", list(NODES), canary=1, bake=10, canary_bake=20, health_timeout=15, poll=1)
    c = Cluster(m, clock, bad, **kw)
    c.run(m.start(clock.monotonic()))
    for _ in range(400):
        if c.finished is not None:
            break
        clock.advance(0.5)
    return m, c


def test_every_node_in_turn_canary_first_each_gated_and_baked():
    m, c = deploy()
    assert c.finished == Finished(True, "3 nodes run 0.2.0")
    assert [p.state for p in m.progress] == [rollout.DONE] * 3
    for n in NODES:
        assert c.steps(n) == ["Verify", "Install", "Restart", "CheckHealth"]
    # one node at a time: each node's first action comes after the previous node's last
    firsts = [next(t for _, n, t in c.log if n == node) for node in NODES]
    lasts = [max(t for _, n, t in c.log if n == node) for node in NODES]
    assert firsts[1] > lasts[0] and firsts[2] > lasts[1]
    # the canary baked for canary_bake, the others for bake: health checked all along
    checks = lambda node: [t for name, n, t in c.log if n == node and name == "CheckHealth"]  # noqa: E731
    assert checks("n1")[-1] - checks("n1")[0] >= 19
    assert 9 <= checks("n2")[-1] - checks("n2")[0] < 19


def test_a_refused_bundle_stops_the_deploy_before_anything_is_installed():
    m, c = deploy(bad={(Verify, "n1")})
    assert not c.finished.ok and c.finished.reason == "n1: Verify failed"
    assert [p.state for p in m.progress] == [rollout.FAILED, rollout.PENDING, rollout.PENDING]
    assert c.steps("n1") == ["Verify"] and c.steps("n2") == []


def test_a_failed_install_stops_without_a_rollback():
    m, c = deploy(bad={(Install, "n2")})
    assert [p.state for p in m.progress] == [rollout.DONE, rollout.FAILED, rollout.PENDING]
    assert "Rollback" not in c.steps("n2")


def test_a_node_never_healthy_is_rolled_back_and_the_deploy_stops():
    m, c = deploy(slow_health={"n2": 10_000})
    assert [p.state for p in m.progress] == [rollout.DONE, rollout.ROLLED_BACK, rollout.PENDING]
    assert c.steps("n2") == ["Verify", "Install", "Restart", "CheckHealth", "Rollback"]
    assert not c.finished.ok and "not healthy within 15 s" in c.finished.reason
    assert c.finished.reason.endswith("rolled back")
    assert c.steps("n3") == []


def test_a_node_healthy_late_but_within_the_timeout_goes_on():
    m, c = deploy(slow_health={"n1": 1000.0 + 8})
    assert c.finished.ok


def test_unhealthy_while_baking_rolls_back():
    m, c = deploy(unhealthy_after={"n1": 1000.0 + 12})   # healthy at first, then not, during its bake
    assert m.progress[0].state == rollout.ROLLED_BACK
    assert "unhealthy while baking" in c.finished.reason


def test_a_failed_restart_rolls_back_and_a_failed_rollback_says_so():
    m, c = deploy(bad={(Restart, "n1"), (Rollback, "n1")})
    assert m.progress[0].state == rollout.ROLLBACK_FAILED
    assert c.finished.reason == "n1: rollback failed: Rollback failed"


def test_late_answers_after_the_deploy_stopped_change_nothing():
    m, c = deploy(bad={(Verify, "n1")})
    assert m.done("n1", True, "", 5000.0) == [] and m.tick(5000.0) == []
    assert m.status()["state"] == "stopped"


def test_a_deploy_goes_by_default_to_the_live_members_of_the_mesh():
    status = {"members": [
        {"id": "n1", "self": True, "state": "alive", "mesh": "127.0.0.1:7946"},
        {"id": "n2", "self": False, "state": "alive", "mesh": "127.0.0.2:7946"},
        {"id": "n3", "self": False, "state": "draining", "mesh": "[::1]:7946"},
        {"id": "n4", "self": False, "state": "dead", "mesh": "127.0.0.4:7946"}]}
    assert mesh_admin_urls(status, "n1", ("127.0.0.1", 9100)) == {
        "n1": "http://127.0.0.1:9100/", "n2": "http://127.0.0.2:9100/", "n3": "http://[::1]:9100/"}
    assert mesh_admin_urls(None, "n1", ("127.0.0.1", 9100)) == {"n1": "http://127.0.0.1:9100/"}
    assert mesh_admin_urls(status, "n1", None) == {}


def test_a_node_whose_new_process_died_is_rolled_back_at_once_not_at_the_timeout():
    clock = FakeClock()
    m = Rollout("0.2.0", list(NODES), canary=1, bake=10, canary_bake=20, health_timeout=15, poll=1)
    assert m.start(clock.monotonic()) == [Verify("n1")]
    m.done("n1", True, "", 1.0)
    m.done("n1", True, "", 2.0)   # installed; restart sent
    assert m.done("n1", True, "", 3.0) == []   # restarted: checking
    (check,) = m.tick(4.5)
    assert isinstance(check, CheckHealth)
    assert m.done("n1", False, "its new process exited with status 1", 4.6, final=True) == [Rollback("n1")]
    assert m.progress[0].state == rollout.ROLLING_BACK
