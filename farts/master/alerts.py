"""Alerts, sans-IO: the rules over the cluster's facts, and each alert's life (first seen,
escalated tier by tier unless acknowledged, resolved), ``now`` passed in.

Facts are what the master knows of each node of its deployment (mesh state, version,
replication lag, certificate days left, slow requests per minute, disk use, release
bundles it refused lately) and of the
deployment (webhook dead letters lately, when the last deploy was). ``evaluate`` turns
them into the alerts firing now, each under a *dedupe key* (``rule:node``, or ``rule``
for a deployment-wide one): an alert is one key's episode, from its first evaluation
firing to its first not firing.

Escalation ("first the room, then the floor, then the building"): a new alert notifies
the first tier's targets; unacknowledged after that tier's delay, the next tier's; an
ack stops the climb; the resolution goes to every tier that was told.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from farts.master.config import RULES, AlertRule, Tier

FIRING, ESCALATED, RESOLVED = "firing", "escalated", "resolved"


@dataclass(frozen=True)
class NodeFacts:
    id: str
    state: str = "alive"                 # as the mesh sees it (alive, suspect, dead, left...)
    dead_for: float = 0.0                # seconds this master has seen it dead
    version: str | None = None
    lag_ms: float | None = None          # the largest replication lag it reports
    cert_days: float | None = None       # the fewest days left on its certificates
    slow_per_min: float | None = None
    disk_used: float | None = None       # 0..1 of its data disk
    refused: int = 0                     # release bundles it refused in the last hour
    refused_reason: str = ""             # why it refused the latest


@dataclass(frozen=True)
class Facts:
    nodes: tuple[NodeFacts, ...]
    dead_letters: int = 0                # webhook deliveries dead-lettered in the last 10 minutes
    since_deploy: float | None = None    # seconds since the last deploy (a version changed)
    failed_crons: dict = field(default_factory=dict)   # cron name -> its latest runs that failed in a row


@dataclass(frozen=True)
class Firing:
    key: str
    rule: str
    severity: str
    summary: str


def threshold(rule: AlertRule) -> float:
    return RULES[rule.rule][1] if rule.threshold < 0 else rule.threshold


LIVE = ("alive", "suspect", "draining")

# The rules about one node: rule -> (fires(node, threshold), summary(node, threshold)).
PER_NODE = {
    "node_dead": (lambda n, t: n.state == "dead" and n.dead_for >= t,
                  lambda n, t: f"node {n.id} is dead (for {n.dead_for:.0f} s)"),
    "replication_lag": (lambda n, t: n.state in LIVE and n.lag_ms is not None and n.lag_ms > t,
                        lambda n, t: f"node {n.id} lags {n.lag_ms:.0f} ms behind (over {t:.0f})"),
    "cert_expiring": (lambda n, t: n.state in LIVE and n.cert_days is not None and n.cert_days < t,
                      lambda n, t: f"a certificate of {n.id} expires in {n.cert_days:.1f} days"),
    "slow_requests": (lambda n, t: n.state in LIVE and n.slow_per_min is not None and n.slow_per_min > t,
                      lambda n, t: f"{n.slow_per_min:.0f} slow requests/min on {n.id} (over {t:.0f})"),
    "disk_full": (lambda n, t: n.state in LIVE and n.disk_used is not None and n.disk_used >= t,
                  lambda n, t: f"the data disk of {n.id} is {n.disk_used:.0%} full"),
    "bundle_refused": (lambda n, t: n.refused >= t,
                       lambda n, t: f"node {n.id} refused {n.refused} release bundle(s) in the last hour, "
                                    f"the latest: {n.refused_reason}"),
}


def evaluate(rules: list[AlertRule], facts: Facts, bake_seconds: float) -> dict[str, Firing]:
    """The alerts firing now, by dedupe key."""
    out: dict[str, Firing] = {}
    baking = facts.since_deploy is not None and facts.since_deploy < bake_seconds
    for r in rules:
        if r.after_deploy and not baking:
            continue
        t = threshold(r)
        if r.rule in PER_NODE:
            fires, summary = PER_NODE[r.rule]
            for n in facts.nodes:
                if fires(n, t):
                    key = f"{r.rule}:{n.id}"
                    out[key] = Firing(key, r.rule, r.severity, summary(n, t))
        elif r.rule == "webhook_dead_letters" and facts.dead_letters >= t:
            out[r.rule] = Firing(r.rule, r.rule, r.severity,
                                 f"{facts.dead_letters} webhook deliveries dead-lettered in 10 min")
        elif r.rule == "cron_failed":
            for name, failed in facts.failed_crons.items():
                if failed >= t:
                    key = f"{r.rule}:{name}"
                    out[key] = Firing(key, r.rule, r.severity, f"cron {name}: its last {failed} run(s) failed")
        elif r.rule == "version_mismatch":
            live = [n for n in facts.nodes if n.state in LIVE and n.version]
            versions = Counter(n.version for n in live)
            if len(versions) > 1:
                common = versions.most_common(1)[0][0]
                odd = sorted(f"{n.id} ({n.version})" for n in live if n.version != common)
                if len(odd) >= t:
                    out[r.rule] = Firing(r.rule, r.rule, r.severity, f"{', '.join(odd)} not on {common}")
    return out


@dataclass(frozen=True)
class Notification:
    url: str
    payload: dict


@dataclass
class Alert:
    id: str
    key: str
    rule: str
    severity: str
    summary: str
    first_seen: float
    last_seen: float
    tier: int = -1                  # the highest tier told (-1: none, no escalation policy)
    tier_since: float = 0.0
    acked: dict | None = None       # {"by", "at"}
    resolved: float | None = None
    notified: list = field(default_factory=list)   # [(tier name, state, at)]

    def doc(self) -> dict:
        return {"_id": self.id, **{k: getattr(self, k) for k in (
            "key", "rule", "severity", "summary", "first_seen", "last_seen", "tier", "tier_since", "acked",
            "resolved")}, "notified": [list(n) for n in self.notified]}

    @staticmethod
    def from_doc(d: dict) -> Alert:
        return Alert(d["_id"], d["key"], d["rule"], d["severity"], d["summary"], d["first_seen"], d["last_seen"],
                     d.get("tier", -1), d.get("tier_since", 0.0), d.get("acked"), d.get("resolved"),
                     [tuple(n) for n in d.get("notified", ())])


def step(open_alerts: dict[str, Alert], firing: dict[str, Firing], acks: dict[str, dict],
         tiers: list[Tier], now: float) -> tuple[list[Alert], list[Notification]]:
    """One evaluation: new alerts opened (the first tier told), open ones escalated or
    resolved. ``open_alerts`` (by key) is updated in place; returns the alerts that
    changed (to write) and the notifications to send."""
    changed: list[Alert] = []
    out: list[Notification] = []

    def tell(a: Alert, tier: int, state: str) -> None:
        t = tiers[tier]
        a.notified.append((t.name, state, now))
        payload = {"alert": a.id, "key": a.key, "rule": a.rule, "severity": a.severity, "summary": a.summary,
                   "state": state, "tier": t.name, "first_seen": a.first_seen, "acked": a.acked, "at": now}
        out.extend(Notification(url, payload) for url in t.targets)

    for key, f in firing.items():
        a = open_alerts.get(key)
        if a is None:
            a = open_alerts[key] = Alert(f"{key}@{int(now)}", key, f.rule, f.severity, f.summary, now, now)
            if tiers:
                a.tier, a.tier_since = 0, now
                tell(a, 0, FIRING)
            changed.append(a)
            continue
        a.last_seen, a.summary = now, f.summary
        if a.acked is None and a.id in acks:
            a.acked = acks[a.id]
        if a.acked is None and 0 <= a.tier < len(tiers) - 1 and now - a.tier_since >= tiers[a.tier].delay:
            a.tier, a.tier_since = a.tier + 1, now
            tell(a, a.tier, ESCALATED)
        changed.append(a)
    for key in [k for k in open_alerts if k not in firing]:
        a = open_alerts.pop(key)
        a.resolved = a.last_seen = now
        if a.acked is None and a.id in acks:
            a.acked = acks[a.id]
        for tier in range(a.tier + 1):
            tell(a, tier, RESOLVED)
        changed.append(a)
    return changed, out
