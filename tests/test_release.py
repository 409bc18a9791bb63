"""agent.links.release: one heap and one timer release every frame of the process, each when due."""

from __future__ import annotations

import time

import pytest
import trio

from agent import wallclock
from agent.links.memory_host import MemoryNetwork
from agent.links import release as release_mod
from agent.links.release import FrameReleaser, process_releaser
from agent.links.transport import LinkLayer
from mesh.link import LinkProfile
from mesh.wire import Probe


def recorder(log: list, tag):
    def release(due: float, released: float) -> None:
        log.append((tag, due, released))
    return release


async def test_one_releaser_per_run_releases_in_due_order_exactly_when_due(virtual_clock):
    releaser = process_releaser()
    assert process_releaser() is releaser
    log: list = []
    t0 = wallclock.now()
    for tag, delay in (("c", 0.030), ("a", 0.010), ("b", 0.020), ("a2", 0.010)):
        releaser.push(t0 + delay, recorder(log, tag))
    await trio.sleep(0.05)
    assert [tag for tag, _, _ in log] == ["a", "a2", "b", "c"]        # equal dues: in push order
    assert all(released == pytest.approx(due, abs=1e-9) for _, due, released in log)
    assert len(releaser) == 0 and releaser.released == 4


async def test_a_frame_due_sooner_wakes_the_sleeping_releaser(virtual_clock):
    releaser = process_releaser()
    log: list = []
    t0 = wallclock.now()
    releaser.push(t0 + 10.0, recorder(log, "late"))
    await trio.sleep(1.0)                       # the releaser sleeps towards t0 + 10
    releaser.push(t0 + 2.0, recorder(log, "soon"))
    await trio.sleep(1.5)
    assert [(tag, released) for tag, _, released in log] == [("soon", pytest.approx(t0 + 2.0, abs=1e-9))]
    await trio.sleep(8.0)
    assert [tag for tag, _, _ in log] == ["soon", "late"]


def test_separate_runs_get_separate_releasers():
    seen = []

    async def main():
        seen.append(process_releaser())

    trio.run(main)
    trio.run(main)
    assert seen[0] is not seen[1]


async def test_on_the_real_clock_a_sooner_frame_rearms_the_precise_timer(monkeypatch):
    """The releaser waits on the timerfd for a frame 40 ms out (inside the coarse margin,
    widened to 50 ms here so that a loaded machine cannot outrun the test); one due sooner
    arrives meanwhile and must go first, not behind the later one (the timer is re-armed)."""
    monkeypatch.setattr(release_mod, "COARSE_MARGIN_S", 0.05)
    releaser = FrameReleaser()
    log: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(releaser.run)
        await trio.sleep(0.01)
        releaser.push(time.time() + 0.040, recorder(log, "later"))
        while releaser._armed is None and not log:             # trio may run us first: let it get there
            await trio.sleep(0)
        assert releaser._armed is not None                     # waiting on the timerfd
        releaser.push(time.time() + 0.010, recorder(log, "sooner"))
        with trio.fail_after(2):
            while len(log) < 2:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert [tag for tag, _, _ in log] == ["sooner", "later"]
    assert all(released >= due for _, due, released in log)
    (_, sooner_due, sooner_released), _ = log
    assert sooner_released - sooner_due < 0.015     # not held until the later frame's timer (30 ms on)


async def test_a_failing_handler_does_not_stop_the_others(virtual_clock, caplog):
    releaser = process_releaser()
    log: list = []

    def broken(due, released):
        raise RuntimeError("handler bug")

    t0 = wallclock.now()
    releaser.push(t0 + 0.001, broken)
    releaser.push(t0 + 0.002, recorder(log, "after"))
    await trio.sleep(0.01)
    assert [tag for tag, _, _ in log] == ["after"]
    assert "handler failed" in caplog.text


async def test_awaitable_handlers_are_awaited_in_turn(virtual_clock):
    releaser = process_releaser()
    log: list = []

    async def slow(due, released):
        log.append(("slow", wallclock.now()))
        await trio.sleep(0.005)

    t0 = wallclock.now()
    releaser.push(t0 + 0.001, slow)
    releaser.push(t0 + 0.002, lambda due, released: log.append(("next", released)))
    await trio.sleep(0.02)
    assert [tag for tag, _ in log] == ["slow", "next"]
    assert log[1][1] == pytest.approx(t0 + 0.006, abs=1e-9)     # it waited for the first handler


def twin_layers(deliveries: dict, *, queue_frames: int = 64, delay: float = 0.01):
    net = MemoryNetwork()
    hosts = {n: net.host(f"pid-{n}") for n in ("a", "b", "c")}
    addr = {n: (f"/memory/pid-{n}/p2p/pid-{n}", f"pid-{n}") for n in hosts}

    def deliver_to(n):
        async def deliver(msg, peer, released, expected):
            deliveries.setdefault(n, []).append((peer, msg.seq, released))
        return deliver

    layers = {n: LinkLayer(n, hosts[n], {o: addr[o] for o in hosts if o != n}, lambda a, b, t: delay,
                           lambda peer, t: LinkProfile(), deliver_to(n), seeds={o: 7 for o in hosts},
                           queue_frames=queue_frames, max_frame_bytes=1 << 20)
              for n in hosts}
    return hosts, layers


async def start_all(nursery, hosts, layers) -> None:
    """Every twin host serving and every layer running, all links up."""
    for n in hosts:
        await nursery.start(hosts[n].serve)
        nursery.start_soon(layers[n].run)
    await all_up(layers)


async def all_up(layers) -> None:
    with trio.fail_after(10):
        while not all(layer.all_up() for layer in layers.values()):
            await trio.sleep(0.01)


async def test_the_links_of_every_node_in_the_process_share_one_heap(virtual_clock):
    got: dict = {}
    hosts, layers = twin_layers(got)
    async with trio.open_nursery() as nursery:
        await start_all(nursery, hosts, layers)
        releaser = process_releaser()
        assert all(layer._releaser is releaser for layer in layers.values())
        before = releaser.released
        t0 = wallclock.now()
        layers["a"].send("b", Probe(1, b""))
        layers["c"].send("b", Probe(2, b""))
        layers["b"].send("a", Probe(3, b""))
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert sorted((peer, seq) for peer, seq, _ in got["b"]) == [("a", 1), ("c", 2)]
    assert [(peer, seq) for peer, seq, _ in got["a"]] == [("b", 3)]
    assert all(released == pytest.approx(t0 + 0.01, abs=1e-6) for peer, seq, released in got["a"] + got["b"])
    assert releaser.released - before == 3


async def test_frames_of_a_stopped_node_are_dropped_not_delivered(virtual_clock):
    got: dict = {}
    hosts, layers = twin_layers(got, delay=0.5)
    async with trio.open_nursery() as nursery:
        for n in hosts:
            await nursery.start(hosts[n].serve)
        scopes = {}
        for n in hosts:
            scopes[n] = trio.CancelScope()

            async def run(n=n):
                with scopes[n]:
                    await layers[n].run()
            nursery.start_soon(run)
        await all_up(layers)
        layers["a"].send("b", Probe(1, b""))
        layers["a"].send("c", Probe(2, b""))
        await trio.sleep(0.1)                 # in the heap, due in 0.4 s
        assert process_releaser()._heap
        scopes["b"].cancel()                  # b crashes with a frame in flight to it
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert "b" not in got
    assert [(peer, seq) for peer, seq, _ in got["c"]] == [("a", 2)]


async def test_a_links_share_of_the_heap_is_bounded_the_reader_waits(virtual_clock):
    got: dict = {}
    hosts, layers = twin_layers(got, queue_frames=4, delay=1.0)
    async with trio.open_nursery() as nursery:
        await start_all(nursery, hosts, layers)
        sent = sum(layers["a"].send("b", Probe(k, b"")) for k in range(6))
        await trio.sleep(0.5)
        link = layers["b"].links["a"]
        assert link.releasing == 4            # the bound: the other frames wait in the stream
        await trio.sleep(3.0)
        assert link.releasing == 0
        nursery.cancel_scope.cancel()
    assert [seq for _, seq, _ in got["b"]] == list(range(sent)) and sent >= 5
