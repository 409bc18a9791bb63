"""agent.wallclock: the process's clock, real or virtual, and what follows it (timer, links, compute)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import trio
from trio.testing import MockClock

from agent import wallclock
from agent.compute.executor import Executor
from agent.links.memory_host import MemoryNetwork
from agent.compute.models import ModelStore
from agent.links.timer import PreciseTimer
from agent.links.transport import LinkLayer
from mesh.link import LinkProfile
from mesh.wire import Probe


def test_the_real_clock_is_the_default_and_comes_back_after_a_virtual_one():
    assert not wallclock.is_virtual()
    assert abs(wallclock.now() - time.time()) < 0.05
    clock = MockClock()
    with wallclock.virtual(clock, origin=1_000_000.0) as origin:
        assert origin == 1_000_000.0 and wallclock.is_virtual()
        assert wallclock.now() == 1_000_000.0
        clock.jump(2.5)
        assert wallclock.now() == 1_000_002.5 and wallclock.monotonic() == clock.current_time()
        with pytest.raises(RuntimeError, match="virtual clock already"):
            with wallclock.virtual(MockClock()):
                pass
    assert not wallclock.is_virtual() and abs(wallclock.now() - time.time()) < 0.05


def run_sleepers(clock: trio.abc.Clock, n: int = 20) -> tuple[list[tuple[float, float]], int]:
    """``n`` tasks that sleep until distinct instants; returns (due, woke) pairs and the turns of
    the event loop that waited (trio's ``before_io_wait``)."""
    woke: list[tuple[float, float]] = []
    turns = [0]

    class Turns(trio.abc.Instrument):
        def before_io_wait(self, timeout: float) -> None:
            turns[0] += 1

    async def sleeper(due: float) -> None:
        await trio.sleep_until(due)
        woke.append((due, trio.current_time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(sleeper, 0.5 + 0.37 * ((i * 7) % n))
    trio.run(main, clock=clock, instruments=[Turns()])
    return woke, turns[0]


def test_the_simulators_clock_jumps_to_each_deadline_in_one_turn_of_the_loop():
    jumped, turns = run_sleepers(wallclock.JumpClock())
    mocked, mock_turns = run_sleepers(MockClock(autojump_threshold=0))
    # Turns per instant: the slope from 20 to 40 sleepers (start and end take a few turns).
    per_instant = (run_sleepers(wallclock.JumpClock(), 40)[1] - turns) / 20
    mock_per_instant = (run_sleepers(MockClock(autojump_threshold=0), 40)[1] - mock_turns) / 20
    assert [d for d, _ in jumped] == sorted(d for d, _ in jumped)        # woken in time order,
    assert all(woke == due for due, woke in jumped)                        # exactly on time,
    assert [d for d, _ in mocked] == [d for d, _ in jumped]                # as MockClock wakes them,
    assert (per_instant, mock_per_instant) == (1, 2)                       # in one turn, not two
    clock = wallclock.JumpClock(start=5.0)
    clock.jump(1.5)
    assert clock.current_time() == 6.5
    with pytest.raises(ValueError, match="only moves forward"):
        clock.jump(-1.0)


async def test_wall_time_and_trio_time_move_together_and_threads_read_the_same(virtual_clock):
    t0, trio0 = wallclock.now(), trio.current_time()
    await trio.sleep(3600)                       # an hour of virtual time, no real time
    assert wallclock.now() - t0 == pytest.approx(3600, abs=1e-6)
    assert trio.current_time() - trio0 == pytest.approx(3600, abs=1e-9)
    assert wallclock.to_trio(wallclock.now()) == pytest.approx(trio.current_time(), abs=1e-9)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(wallclock.now()))
    worker.start()
    worker.join()
    assert seen == [wallclock.now()]


async def test_the_precise_timer_wakes_exactly_at_the_due_wall_instant_in_virtual_time(virtual_clock):
    timer = PreciseTimer()
    try:
        for ahead in (0.0001, 0.0123, 90.0):
            due = wallclock.now() + ahead
            await timer.sleep_until(due)
            assert wallclock.now() == pytest.approx(due, abs=1e-9)
        before = wallclock.now()
        await timer.sleep_until(before - 1.0)      # already past: no wait
        assert wallclock.now() == before
    finally:
        timer.close()


async def test_off_loop_runs_inline_on_a_virtual_clock_and_in_a_thread_on_the_real_one(virtual_clock):
    loop_thread = threading.get_ident()
    t0 = trio.current_time()
    assert await wallclock.off_loop(threading.get_ident) == loop_thread
    assert trio.current_time() == t0


async def test_off_loop_uses_a_worker_thread_on_the_real_clock():
    assert await wallclock.off_loop(threading.get_ident) != threading.get_ident()


async def test_a_link_over_the_twin_releases_each_frame_at_sent_plus_delay_in_virtual_time(virtual_clock):
    net = MemoryNetwork()
    hosts = {n: net.host(f"mem-{n}") for n in ("a", "b")}
    addr = {n: (f"/memory/mem-{n}/p2p/mem-{n}", f"mem-{n}") for n in hosts}
    got = []

    async def deliver(msg, peer, released, expected):
        got.append((msg, released, expected))

    async def ignore(*_):
        pass

    delay = 0.0123
    layers = {n: LinkLayer(n, hosts[n], {o: addr[o] for o in hosts if o != n}, lambda a, b, t: delay,
                           lambda peer, t: LinkProfile(), deliver if n == "b" else ignore,
                           seeds={o: 7 for o in hosts}, queue_frames=64, max_frame_bytes=1 << 20)
              for n in hosts}
    async with trio.open_nursery() as nursery:
        for n in hosts:
            await nursery.start(hosts[n].serve)
            nursery.start_soon(layers[n].run)
        with trio.fail_after(10):
            while not all(layer.all_up() for layer in layers.values()):
                await trio.sleep(0.01)
        sent = []
        for k in range(5):
            sent.append(wallclock.now())
            assert layers["a"].send("b", Probe(k, b"x" * k))
            await trio.sleep(0.004)                  # frames overlap in flight
        with trio.fail_after(10):
            while len(got) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [m.seq for m, _, _ in got] == list(range(5))
    for at, (_, released, expected) in zip(sent, got):
        assert expected == pytest.approx(delay, abs=1e-9)
        assert released - at == pytest.approx(delay, abs=1e-6)      # serialization: none on this profile
    stats = layers["b"].links["a"].stats
    assert stats.late_frames == 0 and max(abs(e) for e in stats.probe_errors) < 1e-6


async def test_inference_takes_no_virtual_time_and_no_thread_on_a_virtual_clock(tiny_models, virtual_clock):
    executor = Executor(ModelStore(tiny_models), workers=1)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 2), np.float32)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve)
        await executor.warm_up("matmul")
        threads = threading.active_count()
        t0 = trio.current_time()
        out = await executor.run("matmul", {"a": a, "b": b}, timeout_s=0.001)   # its deadline cannot pass
        assert trio.current_time() == t0 and threading.active_count() == threads
        nursery.cancel_scope.cancel()
    assert np.array_equal(out.outputs["c"], a @ b) and out.compute_s > 0 and executor.expired == 0


async def test_an_alarm_sleeps_until_due_and_only_something_sooner_brings_it_forward(virtual_clock):
    alarm = wallclock.Alarm()
    start = wallclock.now()
    woke: list[float] = []

    async def sleeper(due: float, lead: float = 0.0) -> None:
        await alarm.sleep(due, lead)
        woke.append(wallclock.now() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, start + 10.0)
        await trio.sleep(1.0)
        assert not alarm.sooner(start + 12.0)          # later than the sleep: no change
        await trio.sleep(1.0)
        assert woke == [] and alarm.sooner(start + 5.0)
        await trio.sleep(1.0)
        assert woke == [] and alarm.sooner(start + 4.0) and not alarm.sooner(start + 4.5)
    assert woke == [4.0] and alarm.until == float("-inf")   # at the sooner time, not at once
    async with trio.open_nursery() as nursery:         # for ever, until something comes
        nursery.start_soon(sleeper, float("inf"), 0.5)
        await trio.sleep(100.0)
        assert len(woke) == 1 and alarm.sooner(start + 200.0)
    assert woke[1] == 199.5                             # with the lead it asked for
    async with trio.open_nursery() as nursery:         # a time already past: at once
        nursery.start_soon(sleeper, start + 300.0)
        await trio.sleep(1.0)
        assert alarm.sooner(start + 100.0)
    assert woke[2] == 200.5                             # started at 199.5, one second later


async def test_an_alarm_wakes_at_its_deadline_without_a_cancelled_and_outside_cancellation_still_works(
        virtual_clock, monkeypatch):
    made: list[object] = []
    create = trio.Cancelled._create

    def counted(*args, **kw):
        made.append(args)
        return create(*args, **kw)
    monkeypatch.setattr(trio.Cancelled, "_create", counted)
    alarm = wallclock.Alarm()
    start = wallclock.now()
    for k in range(1, 4):
        await alarm.sleep(start + k)
        assert wallclock.now() == start + k
    assert made == []                        # trio.sleep would have raised three
    async with trio.open_nursery() as nursery:
        nursery.start_soon(alarm.sleep, start + 100.0)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()        # the parked sleeper ends with Cancelled, as any task
    assert len(made) >= 1 and wallclock.now() == start + 4.0
    assert alarm.until == float("-inf") and not alarm.sooner(start + 5.0)
