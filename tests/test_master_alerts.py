"""Alert rules and escalation (farts/master/alerts.py), time passed in."""
from __future__ import annotations

import dataclasses

import pytest

from farts.master.alerts import ESCALATED, FIRING, RESOLVED, Alert, Facts, NodeFacts, evaluate, step
from farts.master.config import RULES, AlertRule, Tier

HEALTHY = NodeFacts("n1", version="1.0", lag_ms=10, cert_days=60, slow_per_min=0, disk_used=0.3)


def facts(**changes) -> Facts:
    """n1 changed as told, n2 and n3 healthy."""
    return Facts((dataclasses.replace(HEALTHY, **changes), dataclasses.replace(HEALTHY, id="n2"),
                  dataclasses.replace(HEALTHY, id="n3")))


ALL = [AlertRule(name) for name in RULES]

CASES = {
    "node_dead": (facts(state="dead", dead_for=5.0), "node_dead:n1"),
    "replication_lag": (facts(lag_ms=45_000), "replication_lag:n1"),
    "cert_expiring": (facts(cert_days=3.5), "cert_expiring:n1"),
    "slow_requests": (facts(slow_per_min=120), "slow_requests:n1"),
    "disk_full": (facts(disk_used=0.95), "disk_full:n1"),
    "version_mismatch": (facts(version="1.1"), "version_mismatch"),
    "webhook_dead_letters": (dataclasses.replace(facts(), dead_letters=3), "webhook_dead_letters"),
    "cron_failed": (dataclasses.replace(facts(), failed_crons={"geoip": 1}), "cron_failed:geoip"),
    "bundle_refused": (facts(refused=1, refused_reason="SHA-256 differs"), "bundle_refused:n1"),
}


def test_a_healthy_deployment_fires_nothing():
    assert evaluate(ALL, facts(), 1800) == {}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_fires_on_its_condition_and_its_alert_resolves_after(rule):
    bad, key = CASES[rule]
    firing = evaluate(ALL, bad, 1800)
    assert list(firing) == [key] and firing[key].rule == rule
    tiers = [Tier("room", ["http://room/"], 60.0)]
    open_alerts: dict[str, Alert] = {}
    changed, sent = step(open_alerts, firing, {}, tiers, 1000.0)
    assert [a.key for a in changed] == [key] and [n.payload["state"] for n in sent] == [FIRING]
    assert changed[0].first_seen == 1000.0 and changed[0].id == f"{key}@1000"
    changed, sent = step(open_alerts, evaluate(ALL, bad, 1800), {}, tiers, 1010.0)   # deduplicated
    assert sent == [] and changed[0].first_seen == 1000.0
    changed, sent = step(open_alerts, evaluate(ALL, facts(), 1800), {}, tiers, 1020.0)
    assert changed[0].resolved == 1020.0 and [n.payload["state"] for n in sent] == [RESOLVED]
    assert open_alerts == {}


def test_thresholds_severities_and_after_deploy_rules():
    rules = [AlertRule("slow_requests", threshold=500, severity="critical"),
             AlertRule("replication_lag", threshold=1000, after_deploy=True)]
    assert evaluate(rules, facts(slow_per_min=120, lag_ms=5000), 1800) == {}
    assert evaluate(rules, facts(slow_per_min=600), 1800)["slow_requests:n1"].severity == "critical"
    baking = dataclasses.replace(facts(lag_ms=5000), since_deploy=60.0)
    assert list(evaluate(rules, baking, 1800)) == ["replication_lag:n1"]
    baked = dataclasses.replace(facts(lag_ms=5000), since_deploy=4000.0)
    assert evaluate(rules, baked, 1800) == {}
    # A dead node does not count as slow, lagging or on another version.
    assert evaluate([AlertRule("version_mismatch"), AlertRule("node_dead", threshold=30)],
                    facts(state="dead", dead_for=10, version="0.9"), 1800) == {}


TIERS = [Tier("room", ["http://room/a", "http://room/b"], 60.0), Tier("floor", ["http://floor/"], 120.0),
         Tier("building", ["http://building/"], 300.0)]


def walk(acks_at: float | None, until: float):
    """An alert firing from t=0 evaluated every 10 s until `until`; acked at acks_at."""
    firing = evaluate(ALL, CASES["disk_full"][0], 1800)
    open_alerts: dict[str, Alert] = {}
    told = []
    t = 0.0
    while t <= until:
        acks = {a.id: {"by": "ops", "at": acks_at} for a in open_alerts.values()} \
            if acks_at is not None and t >= acks_at else {}
        _, sent = step(open_alerts, firing, acks, TIERS, t)
        told += [(t, n.url, n.payload["state"]) for n in sent]
        t += 10.0
    return told, open_alerts


def test_escalation_walks_room_floor_building_with_the_delays():
    told, _ = walk(None, 1000.0)
    assert told == [(0.0, "http://room/a", FIRING), (0.0, "http://room/b", FIRING),
                    (60.0, "http://floor/", ESCALATED), (180.0, "http://building/", ESCALATED)]


def test_an_ack_stops_the_escalation_and_the_resolution_goes_to_every_tier_told():
    told, open_alerts = walk(90.0, 1000.0)   # acked while at the floor
    assert [(t, u) for t, u, _ in told] == [(0.0, "http://room/a"), (0.0, "http://room/b"), (60.0, "http://floor/")]
    (a,) = open_alerts.values()
    assert a.acked == {"by": "ops", "at": 90.0} and a.tier == 1
    _, sent = step(open_alerts, {}, {}, TIERS, 1010.0)
    assert [(n.url, n.payload["state"]) for n in sent] == [
        ("http://room/a", RESOLVED), ("http://room/b", RESOLVED), ("http://floor/", RESOLVED)]


def test_an_alert_round_trips_through_its_document():
    _, open_alerts = walk(90.0, 200.0)
    (a,) = open_alerts.values()
    assert Alert.from_doc(a.doc()) == a


def test_without_a_policy_alerts_are_recorded_and_nobody_is_told():
    open_alerts: dict[str, Alert] = {}
    changed, sent = step(open_alerts, evaluate(ALL, CASES["node_dead"][0], 1800), {}, [], 0.0)
    assert sent == [] and changed[0].tier == -1


def test_dead_letters_are_what_the_webhook_count_grew_by_in_ten_minutes():
    from farts.clock import FakeClock
    from farts.master.alerting import Alerting
    from farts.master.config import AlertsConfig
    from farts.master.state import MasterState
    from farts.metrics import Metrics
    clock, count = FakeClock(), [0]
    a = Alerting(AlertsConfig(), MasterState(lambda: None, "global", "n1", clock.wall), clock, Metrics(),
                 lambda: 1, ["n1"], "1.0", ".", list, dict, dead_letters=lambda: count[0])
    seen = []
    for minute in range(25):
        count[0] += 2 if minute in (3, 4) else 0
        seen.append(a._dead_lately(clock.now))
        clock.advance(60)
    # 2 dead letters in the minute before each of the looks at minutes 3 and 4: out of the
    # window once 10 minutes older
    assert seen == [0, 0, 0, 2] + [4] * 9 + [2] + [0] * 11
    count[0] = 1   # the webhook service started again: its count too
    assert a._dead_lately(clock.now) == 0
