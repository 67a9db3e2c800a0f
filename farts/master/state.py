"""The master's state in the replicated database, fenced by the lease epoch.

Reserved namespaces (no "$": no tenant's namespace, always "tenant$db.coll", can reach
them): ``_farts.master_epochs`` (per deployment: the highest epoch that wrote),
``_farts.master_crons`` (per cron: the next slot to handle and the last runs),
``_farts.master_runs`` (per slot ``name@slot``: the run), ``_farts.master_alerts``
and ``_farts.master_acks`` (acks are their own documents: a user's ack never races
the master's rewrite of the alert), ``_farts.master_refusals`` (a release bundle a node
refused, written by that node: the ``bundle_refused`` alert).

Fencing: every master write runs in the store's writer thread, in one transaction
with a check of the deployment's epoch record: a write of a lower epoch than the
highest recorded is refused (``Fenced``), a higher one records its epoch. So once a
new master has written here, a stale one cannot.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

EPOCHS = "_farts.master_epochs"
CRONS = "_farts.master_crons"
RUNS = "_farts.master_runs"
ALERTS = "_farts.master_alerts"
ACKS = "_farts.master_acks"
REFUSALS = "_farts.master_refusals"


class Fenced(Exception):
    """A write of a master whose epoch is below the highest recorded."""

    def __init__(self, epoch: int, recorded: int) -> None:
        super().__init__(f"epoch {epoch} is fenced off: epoch {recorded} has written")
        self.epoch, self.recorded = epoch, recorded


def put(w, ns: str, doc: dict) -> None:
    """Insert or replace (a whole-document write: the last writer wins)."""
    old = w.get(ns, doc["_id"])
    if old is None:
        w.insert(ns, doc)
    elif old != doc:
        w.replace(ns, old, doc, {"op": "r", "doc": doc})


class MasterState:
    """Reads and fenced writes on the node's store (handed over by node.py as a function
    that returns the DB service's store once it runs)."""

    def __init__(self, store: Callable[[], Any], deployment: str, node: str, wall: Callable[[], float]) -> None:
        self._store, self.deployment, self.node, self.wall = store, deployment, node, wall

    @property
    def store(self):
        s = self._store()
        if s is None:
            raise RuntimeError("the database is not open")
        return s

    def recorded_epoch(self) -> int:
        doc = self.get(EPOCHS, self.deployment)
        return int(doc["epoch"]) if doc else 0

    def get(self, ns: str, _id) -> dict | None:
        with self.store.read() as txn:
            return self.store.get(txn, ns, _id)

    def all(self, ns: str) -> list[dict]:
        with self.store.read() as txn:
            return self.store.scan(txn, ns, {}, None)

    async def write(self, epoch: int, fn: Callable[[Any], Any]) -> Any:
        """Runs fn(WriteTxn) after the fence check, in one transaction; raises Fenced."""
        deployment, node, wall = self.deployment, self.node, self.wall

        def fenced(w):
            rec = w.get(EPOCHS, deployment)
            if rec is not None and rec["epoch"] > epoch:
                raise Fenced(epoch, rec["epoch"])
            if rec is None or rec["epoch"] < epoch:
                put(w, EPOCHS, {"_id": deployment, "epoch": epoch, "node": node, "since": wall()})
            return fn(w)
        return await asyncio.wrap_future(self.store.submit(fenced))

    async def write_unfenced(self, fn: Callable[[Any], Any]) -> Any:
        """A write that is not the master's (an operator's ack, from any node)."""
        return await asyncio.wrap_future(self.store.submit(fn))
