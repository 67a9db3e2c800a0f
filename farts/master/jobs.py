"""The crons on the master, the asyncio side of ``cron.py``: a clock timer per cron at its
next slot, the runs (an HTTP request to an upstream group, or a built-in task), their
retries and their records in the replicated store, every write fenced by the epoch.

HTTP runs carry ``Idempotency-Key: <name>@<slot>`` and ``X-Farts-Master-Epoch: <epoch>``
(and ``X-Farts-Cron-Slot``, the slot in ISO 8601 UTC, ``X-Farts-Master-Node``, the node): an app that sees a key again
(a master died mid-run and its successor ran the slot again) can answer it as before,
and one that sees an epoch lower than one it already saw can refuse it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from farts.clock import Clock, Timer
from farts.master import cron, outbound
from farts.master.config import CronConfig
from farts.master.state import CRONS, Fenced, MasterState, put
from farts.metrics import Metrics

log = logging.getLogger("farts.master.cron")

RETRY_AFTER_ERROR = 1.0   # seconds before a cron whose bookkeeping failed (the store) is looked at again


class NotMaster(Exception):
    """This node stopped acting as master during a run: it is left to the next one."""


class Crons:
    def __init__(self, crons: list[CronConfig], state: MasterState, clock: Clock, metrics: Metrics,
                 epoch: Callable[[], int | None], keep: int, http=None, upstreams: dict | None = None,
                 tasks: dict[str, Callable[[], Awaitable[Any] | Any]] | None = None) -> None:
        """``epoch()``: the fencing epoch while this node acts as master, else None;
        ``http``: the node's Client; ``upstreams``: name -> list of "host:port"."""
        self.crons = {c.name: c for c in crons}
        self.schedules = {c.name: cron.Schedule(c.schedule, c.timezone) for c in crons}
        self.state, self.clock, self.epoch, self.keep = state, clock, epoch, keep
        self.http, self.upstreams, self.tasks = http, upstreams or {}, tasks or {}
        self._timers: dict[str, Timer] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._since = 0.0
        self.runs = metrics.counter("farts_master_cron_runs_total", "Cron slots handled by this node as master, "
                                    "by cron and outcome (done, failed, skipped)", ("cron", "outcome"))
        self.attempts = metrics.counter("farts_master_cron_attempts_total", "Cron run attempts (retries count)",
                                        ("cron",))
        for c in crons:
            if c.action == "task" and c.task not in self.tasks:
                raise ValueError(f"master.crons: {c.name}: no built-in task {c.task!r} "
                                 f"(known: {', '.join(sorted(self.tasks)) or 'none'})")

    # ---- the role ----------------------------------------------------------------------

    def activate(self) -> None:
        self._since = self.clock.wall()
        for name in self.crons:
            self._start(name)

    def deactivate(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    def _start(self, name: str) -> None:
        if name not in self._running:
            task = asyncio.ensure_future(self._due(name))
            self._running[name] = task
            task.add_done_callback(lambda t, name=name: self._done(name, t))

    def _done(self, name: str, task: asyncio.Task) -> None:
        """A cron's due work ended: its timer is set for the next slot (here, once the task
        is gone, so the timer always finds the cron idle)."""
        if self._running.get(name) is task:
            del self._running[name]
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, NotMaster) or self.epoch() is None:
            return
        if exc is not None:
            log.error("cron %s: %s (again in %s s)", name, exc, RETRY_AFTER_ERROR)
        at = task.result() if exc is None else self.clock.wall() + RETRY_AFTER_ERROR
        self._timers[name] = self.clock.call_later(max(0.0, at - self.clock.wall()), self._start, name)

    # ---- one cron ----------------------------------------------------------------------

    async def _due(self, name: str) -> float:
        """Runs what is due of one cron (unfinished runs of a dead master first); returns
        the next slot."""
        c, schedule = self.crons[name], self.schedules[name]
        doc = self.state.get(CRONS, name)
        for r in cron.unfinished(doc):
            await self._run(c, r["slot"], None)
        while True:
            doc = self.state.get(CRONS, name)
            p = cron.plan(schedule, c.catch_up, doc.get("next") if doc else None, self._since, self.clock.wall())
            for slot in p.skipped:
                await self._write(c, cron.record(name, slot, cron.SKIPPED, self._epoch()), schedule.after(slot))
                self.runs.inc((name, cron.SKIPPED))
            for slot in p.run:
                await self._run(c, slot, schedule.after(slot))
            if not p.run and not p.skipped:
                if doc is None:
                    await self._write(c, None, p.next)
                return p.next

    def _epoch(self) -> int:
        epoch = self.epoch()
        if epoch is None:
            raise NotMaster()
        return epoch

    async def _write(self, c: CronConfig, run: dict | None, next_slot: float | None) -> None:
        epoch, keep, deployment = self._epoch(), self.keep, self.state.deployment

        def write(w):
            doc = w.get(CRONS, c.name)
            if run is None:
                new = dict(doc or {"_id": c.name, "deployment": deployment, "history": []})
                new["next"] = max(new.get("next", 0.0), next_slot)
            else:
                new = cron.with_run(doc, c.name, deployment, run, next_slot, keep)
            put(w, CRONS, new)
        try:
            await self.state.write(epoch, write)
        except Fenced:
            raise NotMaster() from None

    async def _run(self, c: CronConfig, slot: float, next_slot: float | None) -> None:
        """One slot: recorded as running, attempted (with retries), recorded as done or failed."""
        epoch = self._epoch()
        started = self.clock.wall()
        await self._write(c, cron.record(c.name, slot, cron.RUNNING, epoch, started=started, attempts=0),
                          next_slot)
        delays = cron.retry_delays(c.retries, c.retry_delay)
        attempt, result = 0, {}
        while True:
            attempt += 1
            self.attempts.inc((c.name,))
            result = await self._attempt(c, slot, self._epoch())
            if result.get("ok") or attempt > len(delays):
                break
            await self.clock.sleep(delays[attempt - 1])
        state = cron.DONE if result.pop("ok") else cron.FAILED
        await self._write(c, cron.record(c.name, slot, state, self._epoch(), started=started,
                                         finished=self.clock.wall(), attempts=attempt, **result), None)
        self.runs.inc((c.name, state))
        if state == cron.FAILED:
            log.warning("cron %s: slot %s failed after %d attempts: %s", c.name, cron.slot_key(c.name, slot),
                        attempt, result.get("error"))

    async def _attempt(self, c: CronConfig, slot: float, epoch: int) -> dict:
        if c.action == "task":
            try:
                out = self.tasks[c.task]()
                if asyncio.iscoroutine(out) or asyncio.isfuture(out):
                    await asyncio.wait_for(out, c.timeout)
                return {"ok": True}
            except Exception as e:  # noqa: BLE001 - a failed task is a failed run, recorded
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return await self._http(c, slot, epoch)

    async def _http(self, c: CronConfig, slot: float, epoch: int) -> dict:
        key = cron.slot_key(c.name, slot)
        body = c.body.encode()
        headers = [(b"idempotency-key", key.encode()), (b"x-farts-master-epoch", str(epoch).encode()),
                   (b"x-farts-cron-slot", key.split("@", 1)[1].encode()),
                   (b"x-farts-master-node", self.state.node.encode())]
        if body:
            try:
                json.loads(body)
                headers.append((b"content-type", b"application/json"))
            except ValueError:
                headers.append((b"content-type", b"application/octet-stream"))
        error = "no servers"
        for server in self.upstreams.get(c.upstream, ()):
            host, _, port = server.rpartition(":")
            pool = self.http.pool("http", host, int(port))
            try:
                status = await outbound.send(self.http, pool, c.method.encode(), c.path.encode(),
                                             [(b"host", server.encode()), *headers], body, c.timeout)
            except Exception as e:  # noqa: BLE001 - recorded, then the next server
                error = f"{server}: {type(e).__name__}: {e}"
                continue
            if 200 <= status < 300:
                return {"ok": True, "status": status, "server": server}
            error = f"{server}: HTTP {status}"
        return {"ok": False, "error": error}

    def failing(self) -> dict[str, int]:
        """cron name -> its latest finished runs that failed in a row (the cron_failed
        alert; a run that succeeds resolves it)."""
        out = {}
        for name in self.crons:
            failed = 0
            for r in (self.state.get(CRONS, name) or {}).get("history", ()):   # newest first
                if r["state"] == cron.DONE:
                    break
                failed += r["state"] == cron.FAILED
            if failed:
                out[name] = failed
        return out

    # ---- for `farts-edge crons list` ----------------------------------------------------

    def listing(self) -> list[dict]:
        out = []
        for name, c in self.crons.items():
            try:
                doc = self.state.get(CRONS, name) or {}
            except RuntimeError:
                doc = {}
            nxt = self.schedules[name].after(self.clock.wall())
            out.append({"name": name, "schedule": c.schedule, "timezone": c.timezone, "action": c.action,
                        "target": c.upstream + c.path if c.action == "http" else c.task,
                        "catch_up": c.catch_up, "next": nxt, "next_key": cron.slot_key(name, nxt),
                        "history": doc.get("history", [])})
        return out

