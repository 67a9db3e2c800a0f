"""The master's fenced writes on a real store (LMDB): a lower epoch than the highest
recorded is refused, in the same transaction as the write it guards."""
from __future__ import annotations

import asyncio

import pytest

from farts.db.store import Store
from farts.master.state import CRONS, EPOCHS, Fenced, MasterState, put


def test_a_write_of_a_lower_epoch_than_recorded_is_refused(tmp_path):
    store = Store(tmp_path / "db", "node-1", sync=False, replicated=True)
    state = MasterState(lambda: store, "global", "node-1", lambda: 1000.0)

    async def main():
        await state.write(2, lambda w: put(w, CRONS, {"_id": "a", "by": 2}))
        assert state.recorded_epoch() == 2
        with pytest.raises(Fenced) as e:
            await state.write(1, lambda w: put(w, CRONS, {"_id": "a", "by": 1}))
        assert (e.value.epoch, e.value.recorded) == (1, 2)
        assert state.get(CRONS, "a")["by"] == 2          # the refused write left nothing
        await state.write(2, lambda w: put(w, CRONS, {"_id": "a", "by": "2 again"}))
        await state.write(3, lambda w: put(w, CRONS, {"_id": "b", "by": 3}))
        assert state.get(EPOCHS, "global") == {"_id": "global", "epoch": 3, "node": "node-1", "since": 1000.0}
        assert sorted(d["_id"] for d in state.all(CRONS)) == ["a", "b"]
    try:
        asyncio.run(main())
    finally:
        store.close()


def test_without_a_store_it_says_so():
    state = MasterState(lambda: None, "global", "node-1", lambda: 0.0)
    with pytest.raises(RuntimeError, match="not open"):
        state.recorded_epoch()


def test_resolved_alerts_past_the_kept_number_go_with_their_acks(tmp_path, monkeypatch):
    from farts.clock import FakeClock
    from farts.master import alerting
    from farts.master.config import AlertsConfig
    from farts.master.state import ACKS, ALERTS
    from farts.metrics import Metrics
    monkeypatch.setattr(alerting, "KEEP_RESOLVED", 3)
    store = Store(tmp_path / "db", "node-1", sync=False, replicated=True)
    clock = FakeClock()
    state = MasterState(lambda: store, "global", "node-1", clock.wall)
    a = alerting.Alerting(AlertsConfig(), state, clock, Metrics(), lambda: 1, ["node-1"], "1.0", ".", list, dict)

    async def main():
        docs = [{"_id": f"k{i}@1", "key": f"k{i}", "resolved": float(i) if i < 6 else None, "first_seen": 0.0}
                for i in range(8)]
        await state.write(1, lambda w: [put(w, ALERTS, d) for d in docs] + [put(w, ACKS, {"_id": "k1@1"})])
        await a._prune(1)
        assert sorted(d["_id"] for d in state.all(ALERTS)) == ["k3@1", "k4@1", "k5@1", "k6@1", "k7@1"]
        assert state.all(ACKS) == []
    try:
        asyncio.run(main())
    finally:
        store.close()


def test_one_evaluation_reads_the_refused_bundles_once_alerts_on_the_recent_and_deletes_the_old(tmp_path):
    from farts.clock import FakeClock
    from farts.master import alerting
    from farts.master.config import AlertsConfig
    from farts.master.state import REFUSALS
    from farts.metrics import Metrics
    store = Store(tmp_path / "db", "node-1", sync=False, replicated=True)
    clock = FakeClock()
    state = MasterState(lambda: store, "global", "node-1", clock.wall)
    a = alerting.Alerting(AlertsConfig(), state, clock, Metrics(), lambda: 1, ["node-1"], "1.0", ".", list, dict)
    reads = []
    read_all = state.all
    state.all = lambda ns: reads.append(ns) or read_all(ns)
    now = clock.wall()
    old = {"_id": "node-1@old", "node": "node-1", "reason": "tampered, long ago", "at": now - 2 * alerting.REFUSAL_WINDOW}
    new = {"_id": "node-1@new", "node": "node-1", "reason": "tampered", "at": now - 10}

    async def main():
        await state.write(1, lambda w: [put(w, REFUSALS, old), put(w, REFUSALS, new)])
        await a._evaluate()
        assert reads.count(REFUSALS) == 1
        assert "node node-1 refused 1 release bundle(s)" in a.open["bundle_refused:node-1"].summary
        assert read_all(REFUSALS) == [new]
    try:
        asyncio.run(main())
    finally:
        store.close()
