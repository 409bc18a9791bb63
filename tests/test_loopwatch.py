"""agent.runtime.loopwatch: one loop-lag sampler per process, heard by every node in it."""

from __future__ import annotations

import time

import trio

from agent.runtime.loopwatch import LAG_SAMPLE_S, process_lag


def test_every_node_of_a_process_hears_the_one_sampler():
    heard: dict[str, list[float]] = {"sat-1": [], "sat-2": []}

    async def main():
        lag = process_lag()
        assert process_lag() is lag
        stops = {n: lag.listen(heard[n].append) for n in heard}
        await trio.sleep(LAG_SAMPLE_S * 1.5)
        time.sleep(0.25)                   # a step that holds the loop for 250 ms (> a sample period)
        await trio.sleep(LAG_SAMPLE_S * 2)
        stops["sat-2"]()                   # sat-2 stops (a crash): it hears no more
        n2 = len(heard["sat-2"])
        await trio.sleep(LAG_SAMPLE_S * 3)
        return lag, n2

    lag, n2 = trio.run(main)
    assert heard["sat-1"][:n2] == heard["sat-2"]                 # the same samples, not one sampler each
    assert max(heard["sat-1"]) > 0.14                            # the held loop was seen
    assert len(heard["sat-1"]) >= n2 + 2 and len(heard["sat-2"]) == n2
    assert lag.describe()["max_ms"] > 140


def test_a_failing_listener_does_not_stop_the_others(caplog):
    heard: list[float] = []

    def broken(_lag):
        raise RuntimeError("a node's bug")

    async def main():
        lag = process_lag()
        lag.listen(broken)
        lag.listen(heard.append)
        await trio.sleep(LAG_SAMPLE_S * 3.5)

    trio.run(main)
    assert len(heard) >= 2 and "loop-lag listener failed" in caplog.text
