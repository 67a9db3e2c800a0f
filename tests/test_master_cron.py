"""Cron slots (farts/master/cron.py): due slots, catch-up policies, keys, the record."""
from __future__ import annotations

import datetime

import pytest

from farts.master import cron
from farts.master.cron import Schedule, plan, slot_key

UTC = datetime.UTC


def ts(*args, tz=UTC) -> float:
    return datetime.datetime(*args, tzinfo=tz).timestamp()


def test_the_schedule_is_read_in_its_time_zone_across_a_dst_change():
    paris = Schedule("30 2 * * *", "Europe/Paris")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris, 02:30 does not exist that day:
    # it runs once, at 03:00 CEST (01:00 UTC); the next day at 02:30 CEST (00:30 UTC).
    after = paris.after(ts(2026, 3, 28, 12))
    assert after == ts(2026, 3, 29, 1, 0)
    assert paris.after(after) == ts(2026, 3, 30, 0, 30)
    assert paris.after(ts(2026, 3, 27, 12)) == ts(2026, 3, 28, 1, 30)   # 02:30 CET
    assert Schedule("0 3 * * *", "UTC").after(ts(2026, 12, 5, 3)) == ts(2026, 12, 6, 3)
    assert Schedule("0 3 * * *", "UTC").at_or_after(ts(2026, 12, 5, 3)) == ts(2026, 12, 5, 3)


def test_slot_keys_are_the_name_and_the_utc_instant():
    assert slot_key("report", ts(2026, 12, 5, 3)) == "report@2026-12-05T03:00:00Z"


EVERY_MINUTE = Schedule("* * * * *", "UTC")
T0 = ts(2026, 12, 5, 10, 0)


def test_a_new_cron_misses_nothing_and_runs_its_slots_as_they_come():
    p = plan(EVERY_MINUTE, "all", None, T0 + 30, T0 + 30)
    assert p.run == [] and p.skipped == [] and p.next == T0 + 60
    p = plan(EVERY_MINUTE, "all", p.next, T0 + 30, T0 + 61)
    assert p.run == [T0 + 60] and p.next == T0 + 120


@pytest.mark.parametrize("policy, run, skipped", [
    ("all", [T0 + 60, T0 + 120, T0 + 180, T0 + 240], []),
    ("once", [T0 + 180, T0 + 240], [T0 + 60, T0 + 120]),
    ("skip", [T0 + 240], [T0 + 60, T0 + 120, T0 + 180]),
])
def test_slots_missed_with_no_master_follow_the_catch_up_policy(policy, run, skipped):
    # Handled up to T0; no master from then until T0 + 200; now T0 + 250.
    p = plan(EVERY_MINUTE, policy, T0 + 60, T0 + 200, T0 + 250)
    assert (p.run, p.skipped, p.next) == (run, skipped, T0 + 300)


def test_the_catch_up_is_bounded():
    p = plan(Schedule("* * * * * *", "UTC"), "all", T0, T0 + 10 * cron.MAX_CATCH_UP, T0 + 10 * cron.MAX_CATCH_UP)
    assert len(p.run) == cron.MAX_CATCH_UP


def test_the_record_keeps_the_last_runs_and_never_moves_next_back():
    doc = None
    for i in range(5):
        doc = cron.with_run(doc, "r", "global", cron.record("r", T0 + 60 * i, cron.RUNNING, 1),
                            T0 + 60 * (i + 1), keep=3)
    assert [r["slot"] for r in doc["history"]] == [T0 + 240, T0 + 180, T0 + 120]
    doc = cron.with_run(doc, "r", "global", cron.record("r", T0 + 240, cron.DONE, 1, status=200), T0, keep=3)
    assert doc["next"] == T0 + 300 and doc["history"][0]["state"] == cron.DONE
    assert [r["slot"] for r in cron.unfinished(doc)] == [T0 + 120, T0 + 180]


def test_retries_back_off_doubling():
    assert cron.retry_delays(3, 2.0) == [2.0, 4.0, 8.0]
