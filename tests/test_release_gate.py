"""The deploy's health gate, without sockets: what makes a restarted node unhealthy (its
/healthz, its version, its replication, the mesh's view of it, a new alert), and the
versions every node's status sample carries to `farts-edge status`."""
from __future__ import annotations

from farts.admin.status import Sampler, StatusSample
from farts.clock import FakeClock
from farts.metrics import Metrics
from farts.peer import Envelope
from farts.release.rollout import health_problem

INFO = {"version": "0.2.0", "caught_up": True}
RESTART = 1000.0


def alert(rule: str, first_seen: float, node: str = "n2") -> dict:
    return {"key": f"{rule}:{node}", "rule": rule, "first_seen": first_seen, "resolved": None}


def test_a_node_on_the_new_version_with_everything_fine_is_healthy():
    assert health_problem("0.2.0", 200, INFO, "alive", [], RESTART) == ""
    assert health_problem("0.2.0", 200, INFO, None, [], RESTART) == ""   # no mesh: nothing to see


def test_each_check_says_why_the_node_is_not_healthy():
    cases = [
        ((503, INFO, "alive", []), "/healthz answered 503"),
        ((0, INFO, "alive", []), "/healthz answered nothing"),
        ((200, None, "alive", []), "no answer from /api/release"),
        ((200, {**INFO, "version": "0.1.0"}, "alive", []), "runs 0.1.0, not yet 0.2.0"),
        ((200, {**INFO, "version": "0.1.0", "successor_exit": 1}, "alive", []),
         "its new process exited with status 1"),
        ((200, {**INFO, "caught_up": False}, "alive", []), "database replication not caught up"),
        ((200, {**INFO, "caught_up": False, "behind": "7 records of n3, 5,000 ms behind"}, "alive", []),
         "database replication not caught up (7 records of n3, 5,000 ms behind)"),
        ((200, INFO, "suspect", []), "the mesh sees it suspect"),
        ((200, INFO, "draining", []), "the mesh sees it draining"),
        ((200, INFO, "alive", [alert("slow_requests", RESTART + 5)]),
         "new alert since its restart: slow_requests:n2"),
    ]
    for (healthz, info, state, alerts), why in cases:
        assert health_problem("0.2.0", healthz, info, state, alerts, RESTART) == why


def test_alerts_from_before_the_restart_and_the_mixed_versions_alert_do_not_stop_it():
    alerts = [alert("disk_full", RESTART - 60), alert("version_mismatch", RESTART + 1, node="")]
    assert health_problem("0.2.0", 200, INFO, "alive", alerts, RESTART) == ""
    # a resolved one opened since the restart still counts: it fired during the bake
    alerts.append({**alert("replication_lag", RESTART + 2), "resolved": RESTART + 3})
    assert "replication_lag:n2" in health_problem("0.2.0", 200, INFO, "alive", alerts, RESTART)


class Bus:
    def __init__(self) -> None:
        self.handlers = {}

    def subscribe(self, cls, fn):
        self.handlers[cls] = fn
        return lambda: None

    def broadcast(self, msg) -> int:
        return 1


def test_each_nodes_version_comes_with_its_own_sample():
    clock = FakeClock()
    s = Sampler("n1", "eu", "0.2.0", 0.0, 0.0, Metrics(), clock)
    bus = Bus()
    s.peer(bus)
    assert s.versions() == {"n1": "0.2.0"}   # its own, before any sample
    s.start()
    clock.advance(1.0)
    sample = s.latest["n1"]
    bus.handlers[StatusSample](StatusSample({**sample, "node": "n2", "version": "0.1.0"}), Envelope("n2"))
    assert s.versions() == {"n1": "0.2.0", "n2": "0.1.0"}
    # n2 restarted onto 0.2.0: its next sample says so
    bus.handlers[StatusSample](StatusSample({**sample, "node": "n2", "version": "0.2.0"}), Envelope("n2"))
    assert s.versions() == {"n1": "0.2.0", "n2": "0.2.0"}
    s.stop()
