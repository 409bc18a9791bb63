"""agent.runtime.periodic: one heap runs every node's periodic chores in a process."""

from __future__ import annotations

import time

import pytest
import trio

from agent import wallclock
from agent.runtime.periodic import COALESCE_S, ROUNDS_PER_PERIOD, Periodic, process_periodic


async def test_chores_keep_their_period_and_phase(virtual_clock):
    periodic = process_periodic()
    assert process_periodic() is periodic
    t0 = wallclock.now()
    runs: dict[str, list[float]] = {"half": [], "one": []}
    periodic.every(0.5, lambda: runs["half"].append(wallclock.now() - t0), first_in=0.1)
    periodic.every(1.0, lambda: runs["one"].append(wallclock.now() - t0))
    await trio.sleep(3.05)
    assert runs["half"] == pytest.approx([0.1, 0.6, 1.1, 1.6, 2.1, 2.6], abs=1e-6)
    assert runs["one"] == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


async def test_chores_due_together_share_one_wake_up(virtual_clock):
    periodic = process_periodic()
    t0 = wallclock.now()
    seen: list[tuple[int, float]] = []
    for k in range(50):                  # fifty nodes' chores, due within the coalescing window
        periodic.every(1.0, lambda k=k: seen.append((k, wallclock.now() - t0)), first_in=1.0 + k * COALESCE_S / 100)
    before = periodic.wakeups
    await trio.sleep(1.5)
    assert sorted(k for k, _ in seen) == list(range(50))
    assert periodic.wakeups - before == 1
    assert all(at == pytest.approx(1.0, abs=1e-6) for _, at in seen)


async def test_spread_chores_share_a_few_rounds_spread_over_the_period_and_keep_it(virtual_clock):
    periodic = process_periodic()
    t0 = wallclock.now()
    runs: dict[int, list[float]] = {k: [] for k in range(100)}
    chores = [periodic.spread(1.0, lambda k=k: runs[k].append(wallclock.now() - t0)) for k in range(100)]
    assert len(periodic._heap) == ROUNDS_PER_PERIOD          # a hundred chores, a heap entry per round
    await trio.sleep(3.01)
    phases = sorted({round(at[0], 6) for at in runs.values()})
    assert phases == pytest.approx([(k + 1) / ROUNDS_PER_PERIOD for k in range(ROUNDS_PER_PERIOD)])
    assert all(at == pytest.approx([at[0], at[0] + 1.0, at[0] + 2.0]) for at in runs.values())   # period kept
    per_round = [sum(1 for at in runs.values() if at[0] == pytest.approx(p)) for p in phases]
    assert max(per_round) - min(per_round) <= 1                                   # balanced
    for c in chores[:60]:
        c.cancel()
    await trio.sleep(1.0)
    assert sum(len(at) for at in runs.values()) == 300 + 40 and len(periodic) == 40
    for c in chores[60:]:
        c.cancel()
    await trio.sleep(1.0)
    assert len(periodic._heap) == 0                           # empty rounds leave the heap
    late: list[float] = []
    periodic.spread(1.0, lambda: late.append(wallclock.now() - t0))      # and come back at their phase
    await trio.sleep(1.0)
    assert len(late) == 1 and round(late[0] % 1.0, 6) in {round(p % 1.0, 6) for p in phases}
    with pytest.raises(ValueError, match="period must be > 0"):
        periodic.spread(0.0, lambda: None)


async def test_a_cancelled_chore_stops_and_a_failing_one_keeps_its_schedule(virtual_clock, caplog):
    periodic = process_periodic()
    runs = {"a": 0, "b": 0}

    def a():
        runs["a"] += 1

    def b():
        runs["b"] += 1
        raise RuntimeError("a node's bug")

    chore_a = periodic.every(1.0, a)
    chore_b = periodic.every(1.0, b)
    await trio.sleep(2.5)
    chore_a.cancel()
    await trio.sleep(2.0)
    assert runs == {"a": 2, "b": 4}
    assert chore_b.errors == 4 and "periodic chore" in caplog.text
    assert len(periodic) == 1


async def test_a_stalled_loop_skips_ahead_instead_of_catching_up(virtual_clock):
    periodic = process_periodic()
    at: list[float] = []
    t0 = wallclock.now()
    periodic.every(1.0, lambda: at.append(wallclock.now() - t0))

    def stall():
        virtual_clock.jump(5.0)          # the whole loop stood still for 5 s (e.g. a stopped process)

    periodic.every(100.0, stall, first_in=1.5)
    await trio.sleep(8.2)
    # 1.0, then the stall at 1.5 moves time to 6.5: the chore due at 2.0 runs once at 6.5, not 5 times
    assert at == pytest.approx([1.0, 6.5, 7.5], abs=1e-6)


async def test_a_long_batch_lets_the_loop_run_between_chores():
    """Many slow chores due together: another task gets turns before the batch ends."""
    periodic = Periodic()
    done: list[int] = []
    ticks: list[int] = []

    def slow(k):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0012:     # each chore alone is over the batch's 1 ms
            pass
        done.append(k)

    async def other():
        while len(done) < 20:
            ticks.append(len(done))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(periodic.run)
        for k in range(20):
            periodic.every(10.0, lambda k=k: slow(k), first_in=0.0)
        nursery.start_soon(other)
        with trio.fail_after(5):
            while len(done) < 20:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert len({t for t in ticks if 0 < t < 20}) >= 5     # it ran while the batch was half done


def test_bad_periods_are_refused():
    async def main():
        with pytest.raises(ValueError, match="period must be > 0"):
            process_periodic().every(0.0, lambda: None)
    trio.run(main)


async def test_a_one_shot_runs_once_when_due_not_early_and_not_if_cancelled(virtual_clock):
    periodic = process_periodic()
    t0 = wallclock.now()
    runs: list[tuple[str, float]] = []
    periodic.every(1.0, lambda: runs.append(("chore", wallclock.now() - t0)))
    # Due within the coalescing window after the chore: a chore may run that early, a one-shot not.
    periodic.at(t0 + 1.0 + COALESCE_S / 2, lambda: runs.append(("once", wallclock.now() - t0)))
    dropped = periodic.at(t0 + 1.5, lambda: runs.append(("cancelled", wallclock.now() - t0)))
    periodic.at(t0 - 5.0, lambda: runs.append(("past", wallclock.now() - t0)))
    dropped.cancel()
    await trio.sleep(2.2)
    assert [k for k, _ in runs] == ["past", "chore", "once", "chore"]
    at = dict(runs[:3])
    assert at["past"] == pytest.approx(0.0, abs=1e-6)
    assert at["once"] == pytest.approx(1.0 + COALESCE_S / 2, abs=1e-6)
    assert len(periodic) == 1             # the chore; the one-shots are done or cancelled
