"""The garbage collector's settings for long-running processes (agent/collector.py)."""

import gc

from agent import collector


def test_a_throughput_run_freezes_the_start_up_heap_collects_rarely_and_puts_everything_back():
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]           # alive at "start-up"
    with collector.throughput():
        assert gc.get_threshold() == collector.THROUGHPUT_THRESHOLDS
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold()[0] > 10 * before[0]
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_freezing_keeps_objects_alive_and_freed_by_reference_counting():
    import weakref

    class Thing:
        pass
    t = Thing()
    ref = weakref.ref(t)
    try:
        collector.freeze_start_up()
        assert gc.get_freeze_count() > 0 and ref() is t
        del t                                   # no cycle: reference counting frees it, frozen or not
        assert ref() is None
    finally:
        gc.unfreeze()


def test_the_simulators_start_collects_rarely_without_freezing_and_a_throughput_run_inside_puts_it_back():
    before = gc.get_threshold()
    with collector.rarely():
        assert gc.get_threshold() == collector.THROUGHPUT_THRESHOLDS and gc.get_freeze_count() == 0
        with collector.throughput():
            assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == collector.THROUGHPUT_THRESHOLDS and gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
