"""The master service of a node: the asyncio side of the lease, and what the master does.

Every node runs it; the one that holds its deployment's lease acts (crons, alerts, and
whatever node.py wires to ``on_role``: the webhook deliveries). The lease machine
(``lease.py``) is driven here: its deadlines are clock timers, its messages ride the
mesh bus (``LeasePeer``), its promise is a small file under data_dir/master written
(in the thread pool) before any action that follows it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from farts.clock import Clock, Timer
from farts.master import lease
from farts.master.alerting import Alerting
from farts.master.config import MasterConfig, deployment_nodes
from farts.master.geoshare import GeoShare
from farts.master.jobs import Crons
from farts.master.lease import Broadcast, Lease, Persist, Role, Send
from farts.master.peer import LEASE_MESSAGES, LeaseHeld, LeaseRelease, Masters, NodeReport, wrap
from farts.master.state import Fenced, MasterState
from farts.metrics import Metrics
from farts.peer import Envelope, PeerBus
from farts.transport.http import Request, Response

log = logging.getLogger("farts.master")

SETTLE_STEP = 0.05    # seconds between looks at whether the database has caught up (taking over)
PERSIST_RETRY = 1.0   # seconds before a failed write of the lease promise is tried again


class MasterService:
    def __init__(self, cfg, metrics: Metrics, clock: Clock, store: Callable[[], Any], http=None,
                 tasks: dict[str, Callable[[], Any]] | None = None, geo: GeoShare | None = None, version: str = "",
                 samples: Callable[[], dict] = dict, caught_up: Callable[[], bool] = lambda: True,
                 dead_letters: Callable[[], float] = lambda: 0) -> None:
        """``store``: a function returning the node's database store once it is open;
        ``http``: the node's outbound Client (cron requests, notifications); ``tasks``:
        the built-in tasks crons may name; ``geo``: the GeoIP database published to
        this node (shown in the status); ``samples()``: node id -> its status sample
        (the alert rules read lag, certificates, slow requests in them); ``caught_up()``:
        whether the database has what the other nodes have (waited for before acting);
        ``dead_letters()``: the webhook service's dead-letter count (an alert rule)."""
        self.caught_up = caught_up
        self.geo = geo
        self.cfg: MasterConfig = cfg.master
        self.me, self.deployment = cfg.node.id, cfg.node.deployment
        self.nodes = deployment_nodes(cfg)
        self.clock, self.metrics = clock, metrics
        self.path: Path = cfg.path("master") / f"lease-{self.deployment}.json"
        self.state = MasterState(store, self.deployment, self.me, clock.wall)
        self.masters = Masters(self.cfg.lease_seconds)
        self.crons = Crons(self.cfg.crons, self.state, clock, metrics, self.epoch, self.cfg.history, http,
                           {name: up.servers for name, up in cfg.upstreams.items()}, tasks)
        self.alerts = Alerting(self.cfg.alerts, self.state, clock, metrics, self.epoch, self.nodes, version,
                               cfg.data_dir, lambda: self.bus.members() if self.bus is not None else [],
                               samples, http, dead_letters, self.crons.failing)
        self.lease: Lease | None = None
        self.bus: PeerBus | None = None
        self._role_fns: list[Callable[[bool, int], None]] = []
        self._timer: Timer | None = None
        self._persisting = False
        self._queued: list = []
        self.active_epoch = 0           # the epoch this node acts with (0: not master)
        self.changes = metrics.counter("farts_master_changes_total",
                                       "Times this node became (active) or stopped being master", ("change",))
        self.persist_failures = metrics.counter("farts_master_promise_write_failures_total",
                                                "Writes of the lease promise that failed (retried; no vote leaves meanwhile)")
        self.fenced = metrics.counter("farts_master_fenced_writes_total",
                                      "Master writes refused: a higher epoch had written")
        metrics.gauge("farts_master_active", "1 while this node acts as its deployment's master",
                      lambda: 1 if self.acting() else 0)
        metrics.gauge("farts_master_epoch", "The lease epoch of each deployment's master, as this node knows it",
                      lambda: {(d,): v["epoch"] for d, v in self.view().items()}, ("deployment",))

    # ---- for node.py and the other services ---------------------------------------------

    def on_role(self, fn: Callable[[bool, int], None]) -> None:
        """fn(active, epoch) when this node becomes master (active) and when it stops."""
        self._role_fns.append(fn)

    def acting(self) -> bool:
        """Master now: the lease holds, and the role callbacks have heard of it (a role
        waits behind a promise being written)."""
        return self._lease_holds() and self.active_epoch == self.lease.epoch

    def _lease_holds(self) -> bool:
        return self.lease is not None and self.lease.acting(self.clock.monotonic())

    def epoch(self) -> int | None:
        """The fencing epoch to stamp a side effect with, or None when not master now."""
        return self.active_epoch if self.acting() else None

    def attach(self, bus: PeerBus) -> LeasePeer:
        self.bus = bus
        return LeasePeer(self, bus)

    def view(self) -> dict[str, dict]:
        """deployment -> {"master", "epoch"}: every deployment this node heard of."""
        now = self.clock.monotonic()
        out = self.masters.view(now)
        if self.lease is not None:
            holder, epoch = self.lease.master(now)
            out[self.deployment] = {"master": holder, "epoch": epoch}
        return out

    def status(self) -> dict:
        lz = self.lease
        return {"deployment": self.deployment, "node": self.me, "nodes": self.nodes,
                "state": lz.state if lz else "not started", "acting": self.acting(),
                "epoch": self.epoch(), "deployments": self.view(),
                "geoip": asdict(self.geo.current) if self.geo is not None and self.geo.current else None}

    # ---- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        promised = await asyncio.get_running_loop().run_in_executor(None, self._read_promise)
        self.lease = Lease(self.me, self.nodes, self.cfg.lease_seconds, self.cfg.clock_drift,
                           self.clock.monotonic(), random.random, promised)
        try:
            self._run(self.lease.observe_epoch(self.state.recorded_epoch(), self.clock.monotonic()))
        except RuntimeError as e:
            log.warning("master: %s: the recorded epoch is not read", e)
        self._schedule()
        self.alerts.start_reporting(self.bus)

    def release(self) -> None:
        """Stops acting and frees the voters (before the mesh goes)."""
        if self.lease is not None and self.lease.state != lease.STOPPED:
            self._run(self.lease.stop(self.clock.monotonic()))

    def stop(self) -> None:
        self.release()
        self.crons.deactivate()
        self.alerts.stop()
        if self._timer is not None:
            self._timer.cancel()

    # ---- the machine, driven --------------------------------------------------------------

    def _wake(self) -> None:
        self._timer = None
        self._run(self.lease.tick(self.clock.monotonic()))

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.lease.next_deadline()
        if at != float("inf"):
            self._timer = self.clock.call_at(at, self._wake)

    def handle(self, message, sender: str) -> None:
        """One lease message of this deployment from a peer."""
        if self.lease is None:
            return
        now = self.clock.monotonic()
        on = {lease.Ask: self.lease.on_ask, lease.Vote: self.lease.on_vote, lease.Held: self.lease.on_held,
              lease.Release: self.lease.on_release}[type(message)]
        self._run(on(message, sender, now))

    def _run(self, actions: list) -> None:
        if self._persisting:
            self._queued += actions
            return
        for i, a in enumerate(actions):
            if isinstance(a, Persist):
                self._persisting = True
                self._queued = list(actions[i + 1:])
                self._persist(a)
                return
            self._do(a)
        if self.lease.state != lease.STOPPED:
            self._schedule()

    def _persist(self, p: Persist) -> None:
        fut = asyncio.get_running_loop().run_in_executor(None, self._write_promise, p.epoch, p.holder)
        fut.add_done_callback(lambda f: self._persisted(f, p))

    def _persisted(self, fut: asyncio.Future, p: Persist) -> None:
        if fut.exception() is not None:
            # Not durable: nothing that depends on it happens (no vote leaves) until it is;
            # the same write is tried again (a node whose disk refuses it never votes).
            self.persist_failures.inc()
            log.error("master: cannot write %s (again in %s s): %s", self.path, PERSIST_RETRY, fut.exception())
            self.clock.call_later(PERSIST_RETRY, self._persist, p)
            return
        self._persisting = False
        queued, self._queued = self._queued, []
        self._run(queued)

    def _do(self, a) -> None:
        if isinstance(a, Send):
            if self.bus is not None:
                self.bus.send(a.to, wrap(self.deployment, a.message))
        elif isinstance(a, Broadcast):
            if self.bus is not None:
                self.bus.broadcast(wrap(self.deployment, a.message))
        elif isinstance(a, Role):
            self._role(a.active, a.epoch)

    def _role(self, active: bool, epoch: int) -> None:
        # A role held back behind a slow promise write may be over by the time it comes
        # (then the machine's step-down follows): what never started does not start or stop.
        if active and not self._lease_holds() or not active and self.active_epoch != epoch:
            return
        self.active_epoch = epoch if active else 0
        self.changes.inc(("active" if active else "stopped",))
        log.warning("master: %s %s master of deployment %s (epoch %d)", self.me,
                    "is now" if active else "is no longer", self.deployment, epoch)
        if active:
            asyncio.ensure_future(self._activate(epoch))
        else:
            self.crons.deactivate()
            self.alerts.deactivate()
        for fn in list(self._role_fns):
            try:
                fn(active, epoch)
            except Exception:
                log.exception("master: a role callback failed")

    async def _activate(self, epoch: int) -> None:
        """Records the new epoch in the store (from then on a lower one cannot write
        there), waits (a lease duration at most) for the database to have what the other
        nodes have (the last master's records), then runs the crons and the alerts."""
        began = self.clock.monotonic()
        while (not self.caught_up() and self.clock.monotonic() < began + self.cfg.lease_seconds
               and self.epoch() == epoch):
            await self.clock.sleep(SETTLE_STEP)
        waited = self.clock.monotonic() - began
        if waited >= SETTLE_STEP:
            log.info("master: waited %.1f s for the database to catch up before acting", waited)
        try:
            await self.state.write(epoch, lambda w: None)
        except Fenced as e:
            self.fenced.inc()
            self._run(self.lease.observe_epoch(e.recorded, self.clock.monotonic()))
            return
        except RuntimeError as e:
            log.error("master: epoch %d not recorded: %s", epoch, e)
            return
        if self.epoch() == epoch:
            self.crons.activate()
            self.alerts.activate()

    # ---- the promise on disk --------------------------------------------------------------

    def _read_promise(self) -> tuple[int, str | None]:
        try:
            data = json.loads(self.path.read_text())
            return int(data["epoch"]), data["holder"]
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as e:
            # An unreadable promise must not be taken as none: refuse to start.
            raise RuntimeError(f"master: {self.path}: unreadable lease promise ({e}); "
                               "remove it only if this node has been down for a lease duration") from None

    def _write_promise(self, epoch: int, holder: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"deployment": self.deployment, "epoch": epoch, "holder": holder}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LeasePeer:
    """The lease's messages on the bus: this deployment's go to the service, every
    deployment's announcements to the view of masters."""

    def __init__(self, service: MasterService, bus: PeerBus) -> None:
        self.service = service
        self._unsubscribe = [bus.subscribe(cls, self._on) for cls in LEASE_MESSAGES]
        self._unsubscribe.append(bus.subscribe(NodeReport, lambda m, env: service.alerts.received(m, env.origin)))

    def _on(self, msg, env: Envelope) -> None:
        s = self.service
        now = s.clock.monotonic()
        if isinstance(msg, LeaseHeld) and msg.message.holder == env.origin:
            s.masters.held(msg.deployment, msg.message, now)
        elif isinstance(msg, LeaseRelease) and msg.message.holder == env.origin:
            s.masters.released(msg.deployment, msg.message)
        if msg.deployment == s.deployment:
            s.handle(msg.message, env.origin)

    def stop(self) -> None:
        """Before the mesh stops: the master releases its lease while peers can hear it."""
        self.service.release()
        for unsubscribe in self._unsubscribe:
            unsubscribe()


def _json(status: int, data) -> Response:
    return Response(status, [(b"content-type", b"application/json")],
                    json.dumps(data, indent=1, default=str).encode() + b"\n")


class MasterAdminHandler:
    """GET /api/master: the lease and the deployments' masters; /api/master/crons: the
    crons and their last runs; /api/master/alerts: the alerts; POST
    /api/master/alerts/ack {"id": ID or dedupe key, "by": who}: stops its escalation."""

    def __init__(self, master: MasterService) -> None:
        self.master = master
        self.bad = master.metrics.counter("farts_master_bad_requests_total",
                                          "Master admin API requests refused (bad JSON, unknown path)")

    def _refuse(self, status: int, error: str) -> Response:
        self.bad.inc()
        log.warning("master admin API: %s", error)
        return _json(status, {"error": error})

    async def handle(self, req: Request) -> Response:
        if req.method in (b"GET", b"HEAD") and req.path == b"/api/master":
            return _json(200, self.master.status())
        if req.method in (b"GET", b"HEAD") and req.path == b"/api/master/crons":
            return _json(200, {"master": self.master.status(), "crons": self.master.crons.listing()})
        if req.method in (b"GET", b"HEAD") and req.path == b"/api/master/alerts":
            return _json(200, {"master": self.master.status(), "alerts": self.master.alerts.listing()})
        if req.method == b"POST" and req.path == b"/api/master/alerts/ack":
            raw = await req.body.read() if req.body is not None else b""
            try:
                body = json.loads(raw)
                ident, by = body["id"], str(body.get("by") or "operator")
                if not isinstance(ident, str) or not ident:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return self._refuse(400, 'expected JSON {"id": "<alert id or dedupe key>", "by": "<who>"}')
            acked = await self.master.alerts.ack(ident, by[:200])
            if acked is None:
                return _json(404, {"error": f"no alert {ident!r}"})
            return _json(200, {"id": acked, "by": by})
        return self._refuse(404, f"no such master API: {req.method.decode()} {req.path.decode(errors='replace')}")
