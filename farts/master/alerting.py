"""The alerts on the master, the asyncio side of ``alerts.py``: every ``alerts.interval``
the facts are gathered (the mesh's member states, each node's ``NodeReport`` and status
sample), the rules evaluated, the alerts' records written (fenced by the epoch) and the
notifications POSTed (JSON) to the escalation tiers' targets.

Every node reports itself (version, disk use) each interval, master or not. Acks are
written by any node (``_farts.master_acks``) and read by the master at each evaluation;
so are the release bundles a node refused (``_farts.master_refusals``, written by that
node: the replicated store carries them to whichever node is master).
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from farts.clock import Clock, Timer
from farts.master import alerts, outbound
from farts.master.alerts import Alert, Facts, NodeFacts
from farts.master.config import AlertsConfig
from farts.master.peer import NodeReport
from farts.master.state import ACKS, ALERTS, REFUSALS, Fenced, MasterState, put
from farts.metrics import Metrics

log = logging.getLogger("farts.master.alerts")

DEAD_LETTER_WINDOW = 600.0
REFUSAL_WINDOW = 3600.0   # a refused release bundle counts this long (the bundle_refused alert)
NOTIFY_TIMEOUT = 10.0
DEPLOYS = "_farts.master_deploys"
LISTED = 100          # alerts `alerts list` shows (open first, then the latest resolved)
KEEP_RESOLVED = 500   # resolved alerts kept in the store (the oldest go, with their acks)


class Alerting:
    def __init__(self, cfg: AlertsConfig, state: MasterState, clock: Clock, metrics: Metrics,
                 epoch: Callable[[], int | None], nodes: list[str], version: str, data_dir,
                 members: Callable[[], list], samples: Callable[[], dict], http=None,
                 dead_letters: Callable[[], float] = lambda: 0, failed_crons: Callable[[], dict] = dict) -> None:
        """``members()``: the mesh's members; ``samples()``: node id -> its status sample;
        ``dead_letters()``: the webhook service's count of dead-lettered deliveries;
        ``failed_crons()``: cron name -> its latest runs that failed in a row."""
        self.cfg, self.state, self.clock, self.epoch = cfg, state, clock, epoch
        self.nodes, self.version, self.data_dir = nodes, version, data_dir
        self.members, self.samples, self.http, self.dead_letters = members, samples, http, dead_letters
        self.failed_crons = failed_crons
        self.reports: dict[str, NodeReport] = {}
        self.dead_since: dict[str, float] = {}
        self._dead: deque[tuple[float, float]] = deque()   # (when, the dead-letter count then)
        self.open: dict[str, Alert] = {}
        self._timer: Timer | None = None
        self._report_timer: Timer | None = None
        self._busy = False
        self.bus = None
        self.fired = metrics.counter("farts_master_alerts_total", "Alerts opened, by rule and severity",
                                     ("rule", "severity"))
        self.notifications = metrics.counter("farts_master_notifications_total",
                                             "Alert notifications POSTed, by tier and outcome", ("tier", "outcome"))
        metrics.gauge("farts_master_alerts_open", "Alerts firing (on the master)", lambda: len(self.open))

    # ---- every node ------------------------------------------------------------------------

    def start_reporting(self, bus) -> None:
        self.bus = bus
        self._report_timer = self.clock.every(self.cfg.interval, self._report, first=0.0)

    def own_report(self) -> NodeReport:
        try:
            usage = shutil.disk_usage(self.data_dir)
            used = round(usage.used / usage.total, 4) if usage.total else None
        except OSError:
            used = None
        return NodeReport(self.state.deployment, self.version, used)

    def _report(self, now: float) -> None:
        report = self.own_report()
        self.reports[self.state.node] = report
        if self.bus is not None:
            self.bus.broadcast(report)

    def refused(self, reason: str) -> None:
        """This node refused a release bundle: recorded in the replicated store for the
        master's ``bundle_refused`` alert. Callable from any thread (the bundle is verified
        in the thread pool); a store that is not open is logged, not raised."""
        at = self.clock.wall()
        doc = {"_id": f"{self.state.node}@{at:.6f}", "node": self.state.node, "reason": reason[:500], "at": at}
        try:
            done = self.state.store.submit(lambda w: put(w, REFUSALS, doc))
        except RuntimeError as e:
            log.warning("alerts: cannot record the refused bundle: %s", e)
            return

        def written(f) -> None:
            if f.exception() is not None:
                log.warning("alerts: recording the refused bundle failed: %s", f.exception())
        done.add_done_callback(written)

    def received(self, report: NodeReport, origin: str) -> None:
        if report.deployment == self.state.deployment:
            self.reports[origin] = report

    def _dead_lately(self, now: float) -> int:
        """Dead letters over the last DEAD_LETTER_WINDOW (what the count grew by since the
        look at or just before its start; a count that went down started again)."""
        total = float(self.dead_letters())
        if self._dead and total < self._dead[-1][1]:
            self._dead.clear()
        self._dead.append((now, total))
        while len(self._dead) > 1 and self._dead[1][0] <= now - DEAD_LETTER_WINDOW:
            self._dead.popleft()
        return int(total - self._dead[0][1])

    def stop(self) -> None:
        self.deactivate()
        if self._report_timer is not None:
            self._report_timer.cancel()

    # ---- the master ------------------------------------------------------------------------

    def activate(self) -> None:
        self.open = {d["key"]: Alert.from_doc(d) for d in self.state.all(ALERTS) if d.get("resolved") is None}
        self._timer = self.clock.every(self.cfg.interval, self._tick, first=0.0)

    def deactivate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.open = {}

    def facts(self, refused_lately: list[dict]) -> Facts:
        """``refused_lately``: the refused bundles of the last REFUSAL_WINDOW (``_refusals``)."""
        now = self.clock.monotonic()
        states = {m.id: m.state for m in self.members()}
        samples = self.samples()
        refusals: dict[str, list[dict]] = {}
        for d in sorted(refused_lately, key=lambda d: d["at"]):
            refusals.setdefault(d["node"], []).append(d)
        out = []
        for node in self.nodes:
            state = "alive" if node == self.state.node else states.get(node, "unknown")
            if state == "dead":
                self.dead_since.setdefault(node, now)
            else:
                self.dead_since.pop(node, None)
            s, r = samples.get(node) or {}, self.reports.get(node)
            lag = ((s.get("db") or {}).get("lag_ms") or {}).values()
            certs = (s.get("certs") or {}).values()
            refused = refusals.get(node, [])
            out.append(NodeFacts(node, state, now - self.dead_since.get(node, now),
                                 r.version if r else s.get("version"), max(lag, default=None),
                                 min(certs, default=None), s.get("slow_per_min"), r.disk_used if r else None,
                                 len(refused), refused[-1]["reason"] if refused else ""))
        return Facts(tuple(out), self._dead_lately(now), self._since_deploy(out), self.failed_crons())

    def _refusals(self) -> tuple[list[dict], list[dict]]:
        """The refused bundles in the store, read once: those of the last REFUSAL_WINDOW,
        and the older ones (to delete)."""
        since = self.clock.wall() - REFUSAL_WINDOW
        lately: list[dict] = []
        expired: list[dict] = []
        for d in self.state.all(REFUSALS):
            (expired if d["at"] < since else lately).append(d)
        return lately, expired

    def _since_deploy(self, nodes: list[NodeFacts]) -> float | None:
        """A deploy is a live node's version changing; the versions and the time of the
        last change are kept in the store (a new master goes on with them)."""
        versions = {n.id: n.version for n in nodes if n.version and n.state == "alive"}
        doc = self.state.get(DEPLOYS, self.state.deployment)
        known = doc["versions"] if doc else {}
        changed = any(known.get(k) not in (None, v) for k, v in versions.items())
        wall = self.clock.wall()
        if doc is None or changed or set(versions) - set(known):
            doc = {"_id": self.state.deployment, "versions": {**known, **versions},
                   "at": wall if changed else (doc or {}).get("at")}
            epoch = self.epoch()
            if epoch is not None:
                asyncio.ensure_future(self._write(epoch, lambda w, doc=doc: put(w, DEPLOYS, doc)))
        return None if doc.get("at") is None else wall - doc["at"]

    def _tick(self, now: float) -> None:
        if self._busy or self.epoch() is None:
            return
        self._busy = True
        task = asyncio.ensure_future(self._evaluate())
        task.add_done_callback(self._evaluated)

    def _evaluated(self, task: asyncio.Task) -> None:
        self._busy = False
        if not task.cancelled() and task.exception() is not None:
            log.error("alerts: evaluation failed: %s", task.exception())

    async def _evaluate(self) -> None:
        epoch = self.epoch()
        if epoch is None:
            return
        refused_lately, expired = self._refusals()
        firing = alerts.evaluate(self.cfg.rules, self.facts(refused_lately), self.cfg.bake_seconds)
        acks = {d["_id"]: {"by": d.get("by"), "at": d.get("at")} for d in self.state.all(ACKS)}
        new_keys = set(firing) - set(self.open)
        changed, notes = alerts.step(self.open, firing, acks, self.cfg.escalation, self.clock.wall())
        for key in new_keys:
            f = firing[key]
            self.fired.inc((f.rule, f.severity))
            log.warning("alert %s (%s): %s", key, f.severity, f.summary)
        if changed:
            docs = [a.doc() for a in changed]
            if not await self._write(epoch, lambda w: [put(w, ALERTS, d) for d in docs]):
                return
            if any(a.resolved is not None for a in changed):
                await self._prune(epoch)
        if expired:
            await self._write(epoch, lambda w: [w.delete(REFUSALS, d) for d in expired])
        for n in notes:
            asyncio.ensure_future(self._notify(n, epoch))

    async def _prune(self, epoch: int) -> None:
        resolved = sorted((d for d in self.state.all(ALERTS) if d.get("resolved") is not None),
                          key=lambda d: d["resolved"])
        old = resolved[:max(0, len(resolved) - KEEP_RESOLVED)]
        if old:
            def prune(w) -> None:
                for d in old:
                    w.delete(ALERTS, d)
                    ack = w.get(ACKS, d["_id"])
                    if ack is not None:
                        w.delete(ACKS, ack)
            await self._write(epoch, prune)

    async def _write(self, epoch: int, fn) -> bool:
        try:
            await self.state.write(epoch, fn)
            return True
        except Fenced:
            return False

    async def _notify(self, n: alerts.Notification, epoch: int) -> None:
        body = json.dumps({**n.payload, "deployment": self.state.deployment, "epoch": epoch}).encode()
        parts = urlsplit(n.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        tier = n.payload["tier"]
        try:
            status = await outbound.send(self.http, self.http.pool_for(n.url), b"POST", target.encode(),
                                         [(b"host", parts.netloc.encode()), (b"content-type", b"application/json"),
                                          (b"x-farts-master-epoch", str(epoch).encode())], body, NOTIFY_TIMEOUT)
            ok = 200 <= status < 300
            self.notifications.inc((tier, "sent" if ok else "refused"))
            if not ok:
                log.warning("alerts: %s answered %d to a notification of %s", n.url, status,
                            n.payload["alert"])
        except Exception as e:  # noqa: BLE001 - logged and counted; the next state change tells again
            self.notifications.inc((tier, "failed"))
            log.warning("alerts: notifying %s of %s failed: %s", n.url, n.payload["alert"], e)

    # ---- the operator ------------------------------------------------------------------------

    def listing(self) -> list[dict]:
        docs = self.state.all(ALERTS)
        acks = {d["_id"]: d for d in self.state.all(ACKS)}
        for d in docs:
            if d.get("acked") is None and d["_id"] in acks:
                d["acked"] = {"by": acks[d["_id"]].get("by"), "at": acks[d["_id"]].get("at")}
            tier = d.get("tier", -1)
            d["id"] = d.pop("_id")
            d["tier"] = self.cfg.escalation[tier].name if 0 <= tier < len(self.cfg.escalation) else None
        docs.sort(key=lambda d: (d.get("resolved") is not None, -d["first_seen"]))
        return docs[:LISTED]

    async def ack(self, ident: str, by: str) -> str | None:
        """Acknowledges an alert by id, or the open one of a dedupe key; its id, or None."""
        docs = self.state.all(ALERTS)
        doc = next((d for d in docs if d["_id"] == ident), None) or \
            next((d for d in docs if d["key"] == ident and d.get("resolved") is None), None)
        if doc is None:
            return None
        ack = {"_id": doc["_id"], "by": by, "at": self.clock.wall()}
        await self.state.write_unfenced(lambda w: put(w, ACKS, ack))
        return doc["_id"]

