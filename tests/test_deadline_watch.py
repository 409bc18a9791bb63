"""The executor's one deadline task: terminate at the deadline, cancel after the
grace, never touch a finished run, and keep its heap to the runs still going."""

import onnxruntime as ort
import trio

from agent.compute.deadline_watch import DeadlineWatch


async def test_terminate_then_cancel_and_finished_runs_are_left_alone(autojump_clock):   # virtual time: exact
    watch = DeadlineWatch(grace_s=0.2)
    async with trio.open_nursery() as n:
        await n.start(watch.serve)
        now = trio.current_time()
        late, finished = (ort.RunOptions(), trio.CancelScope()), (ort.RunOptions(), trio.CancelScope())
        watch.watch(now + 0.3, *late)          # registered first, due later: the watch must wake earlier
        watch.done(watch.watch(now + 0.1, *finished))
        early = (ort.RunOptions(), trio.CancelScope())
        watch.watch(now + 0.1, *early)
        await trio.sleep(0.15)
        assert early[0].terminate and not early[1].cancel_called and not late[0].terminate
        await trio.sleep(0.2)
        assert early[1].cancel_called and late[0].terminate and not late[1].cancel_called
        assert not finished[0].terminate and not finished[1].cancel_called
        n.cancel_scope.cancel()


async def test_finished_entries_are_compacted_away():
    watch = DeadlineWatch(grace_s=1.0)
    far = trio.current_time() + 3600
    for _ in range(5000):
        watch.done(watch.watch(far, ort.RunOptions(), trio.CancelScope()))
    assert len(watch._heap) <= 1025


async def test_a_steady_stream_of_short_runs_wakes_the_watch_about_once_per_deadline_period(autojump_clock):
    watch = DeadlineWatch(grace_s=1.0)
    async with trio.open_nursery() as n:
        await n.start(watch.serve)
        for _ in range(3000):                  # 300 s of runs 0.1 s apart, each with a 30 s deadline
            entry = watch.watch(trio.current_time() + 30, ort.RunOptions(), trio.CancelScope())
            await trio.sleep(0.1)
            watch.done(entry)
        assert watch.wakes < 3000 / 30
        n.cancel_scope.cancel()
