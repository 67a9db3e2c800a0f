"""Cron slots, sans-IO: which slots are due, what the catch-up policy does with missed
ones, and the per-cron record kept in the replicated store.

A schedule is read by croniter in the cron's time zone (five fields; a sixth, seconds,
is accepted for tests). A *slot* is one instant the schedule names, in Unix seconds;
its idempotency key is ``name@2026-12-05T03:00:00Z`` (UTC). The record of a cron
(``_farts.master_crons``, one document per cron) holds ``next`` (the first slot not yet
handled) and ``history`` (the last runs, newest first, each with its slot, state,
epoch, attempts and result). A run is recorded as ``running`` before its request
leaves and updated after: a new master finds a ``running`` run of a master that died
and runs it again with the same key (at least once; the app recognises the key).

Slots that fell before this master started acting and were not handled are *missed*
(no master was alive, or the last one died before them): ``catch_up = "all"`` runs each
in order, ``"once"`` runs the latest and records the others as skipped, ``"skip"``
records them all as skipped. At most ``MAX_CATCH_UP`` of them are looked at.
Runs of one cron never overlap: a slot that falls during a run is run after it.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from croniter import croniter

MAX_CATCH_UP = 1000

RUNNING, DONE, FAILED, SKIPPED = "running", "done", "failed", "skipped"


class Schedule:
    def __init__(self, expr: str, tz: str) -> None:
        self.expr, self.tz = expr, ZoneInfo(tz)

    def after(self, t: float) -> float:
        """The first slot strictly after Unix time t."""
        start = datetime.datetime.fromtimestamp(t, self.tz)
        return croniter(self.expr, start).get_next(float)

    def at_or_after(self, t: float) -> float:
        return self.after(t - 1e-6)


def slot_key(name: str, slot: float) -> str:
    stamp = datetime.datetime.fromtimestamp(slot, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{name}@{stamp}"


@dataclass(frozen=True)
class Plan:
    run: list[float]          # in order
    skipped: list[float]      # missed slots the policy does not run
    next: float               # the first slot after now: the next to handle


def plan(schedule: Schedule, policy: str, next_slot: float | None, active_since: float, now: float) -> Plan:
    """What to do at ``now`` for a cron whose first unhandled slot is ``next_slot`` (None:
    never handled by any master: nothing is missed), on a master acting since ``active_since``."""
    first = schedule.at_or_after(active_since if next_slot is None else next_slot)
    due: list[float] = []
    s = first
    while s <= now and len(due) < MAX_CATCH_UP:
        due.append(s)
        s = schedule.after(s)
    following = s if s > now else schedule.after(now)
    missed = [s for s in due if s < active_since]
    on_time = due[len(missed):]
    if policy == "all":
        run, skipped = missed, []
    elif policy == "once":
        run, skipped = missed[-1:], missed[:-1]
    else:
        run, skipped = [], missed
    return Plan(run + on_time, skipped, following)


def record(name: str, slot: float, state: str, epoch: int, **fields) -> dict:
    return {"slot": slot, "key": slot_key(name, slot), "state": state, "epoch": epoch, **fields}


def with_run(doc: dict | None, name: str, deployment: str, run: dict, next_slot: float | None,
             keep: int) -> dict:
    """The cron's document with ``run`` recorded (replacing the entry of the same slot)
    and ``next`` moved on (never back)."""
    doc = dict(doc or {"_id": name, "deployment": deployment, "history": []})
    history = [r for r in doc["history"] if r["slot"] != run["slot"]]
    history.append(run)
    history.sort(key=lambda r: r["slot"], reverse=True)
    doc["history"] = history[:keep]
    if next_slot is not None:
        doc["next"] = max(doc.get("next", 0.0), next_slot)
    return doc


def unfinished(doc: dict | None) -> list[dict]:
    """Runs a master started and did not finish (it died): oldest first."""
    return sorted((r for r in (doc or {}).get("history", ()) if r["state"] == RUNNING), key=lambda r: r["slot"])


def retry_delays(retries: int, first: float) -> list[float]:
    """Seconds to wait before each retry: first, doubling."""
    return [first * 2 ** i for i in range(retries)]
