"""The clock and timer facility: FakeClock drives timers in order without sleeping;
LoopClock runs the same entries on a real loop."""
from __future__ import annotations

import asyncio

from farts.clock import FakeClock, LoopClock


def test_fake_clock_runs_due_timers_in_time_order_each_at_its_time():
    clock = FakeClock(start=10.0)
    seen = []
    clock.call_later(3, lambda: seen.append(("c", clock.monotonic())))
    clock.call_later(1, lambda: seen.append(("a", clock.monotonic())))
    clock.call_at(12.0, lambda: seen.append(("b", clock.monotonic())))
    assert clock.advance(2.5) == 2
    assert seen == [("a", 11.0), ("b", 12.0)]
    assert clock.monotonic() == 12.5
    clock.advance(1)
    assert seen[-1] == ("c", 13.0)
    assert clock.pending() == 0


def test_cancelled_timer_never_runs():
    clock = FakeClock()
    seen = []
    t = clock.call_later(1, seen.append, 1)
    t.cancel()
    t.cancel()  # twice is fine
    assert clock.advance(5) == 0 and seen == []


def test_every_ticks_with_now_and_survives_a_failing_tick():
    clock = FakeClock(start=0.0)
    ticks = []

    def tick(now):
        ticks.append(now)
        if len(ticks) == 2:
            raise RuntimeError("one bad tick")

    handle = clock.every(1.0, tick)
    clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]
    handle.cancel()
    clock.advance(10)
    assert ticks == [1.0, 2.0, 3.0]


def test_every_with_jitter_stays_within_bounds():
    clock = FakeClock(start=0.0)
    ticks = []
    clock.every(1.0, ticks.append, jitter=0.2)
    clock.advance(100)
    gaps = [b - a for a, b in zip([0.0, *ticks[:-1]], ticks, strict=True)]
    assert 80 <= len(ticks) <= 125
    assert all(0.8 - 1e-9 <= g <= 1.2 + 1e-9 for g in gaps)


def test_wall_clock_step_does_not_move_monotonic_and_hlc_never_goes_back():
    clock = FakeClock()
    first = clock.hlc.now()
    mono = clock.monotonic()
    clock.step_wall(-60)  # NTP steps the wall clock back a minute
    assert clock.monotonic() == mono
    assert clock.hlc.now() > first


def test_loop_clock_runs_entries_on_a_real_loop():
    async def main():
        clock = LoopClock()
        ticks = []
        done = asyncio.get_running_loop().create_future()

        def tick(now):
            ticks.append(now)
            if len(ticks) == 3:
                handle.cancel()
                done.set_result(None)

        handle = clock.every(0.01, tick)
        once = []
        clock.call_later(0.0, once.append, 1)
        await asyncio.wait_for(done, 5)
        assert once == [1]
        assert ticks == sorted(ticks) and len(ticks) == 3

    asyncio.run(main())


def test_sleep_on_a_fake_clock_ends_when_the_clock_is_advanced_past_it():
    import asyncio

    async def main():
        clock = FakeClock()
        woke = []

        async def sleeper():
            await clock.sleep(5.0)
            woke.append(clock.monotonic())

        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        clock.advance(4.9)
        await asyncio.sleep(0)
        assert woke == []
        clock.advance(0.2)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert woke and task.done()
        cancelled = asyncio.ensure_future(clock.sleep(1.0))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert all(t.cancelled for _, _, t in clock._heap)   # its timer went with it

    asyncio.run(main())
