"""The job machinery in process, on trio's virtual clock: satellites that die, stall, run low, answer late.

``JobBoard`` drives jobs through its ``JobHost`` interface; here the host is
a handful of in-memory satellites whose "model" is exact arithmetic, so
every output can be checked, every execution counted, and a run of many
virtual minutes takes milliseconds.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import trio
import trio.testing

from agent.runtime.job_journal import JobJournal
from agent.runtime.job_spec import JobError, JobSpec
from agent.runtime.jobs import JobBoard
from agent.runtime.tasks import TaskRecord
from mesh.wire import Hop


class Sky:
    """In-memory satellites: each runs a chunk in ``compute_s`` per input unless told to misbehave."""

    def __init__(self, nursery: trio.Nursery, names: list[str], compute_s: float = 0.01):
        self.nursery, self.compute_s = nursery, compute_s
        self.nodes = {n: {"dead": False, "low": False, "silent": False, "late": False} for n in names}
        self.name = "home"
        self.is_ground = False
        self.executions: Counter[int] = Counter()     # input index -> times run anywhere
        self.sent: Counter[str] = Counter()           # chunks sent, per job id
        self.refuse = 0                               # the next sends refused at home (its own limits)

    def place_shard(self, spec, exclude):
        for n, st in self.nodes.items():
            if n not in exclude and not st["dead"] and not st["low"]:
                return n, f"{n} is healthy"
        raise JobError(503, "no satellite fits")

    def send_chunk(self, spec, task_id, executor, inputs, scan, timeout_s):
        if self.refuse:
            self.refuse -= 1
            raise JobError(429, "256 tasks pending at home")
        rec = TaskRecord(task_id, spec.model, self.name, executor, created=trio.current_time(),
                         deadline=trio.current_time() + timeout_s)
        first = int(task_id.rsplit(".c", 1)[1])
        self.sent[task_id.split(".s")[0]] += 1
        self.nursery.start_soon(self._run, rec, executor, inputs, scan, first, timeout_s)
        return rec

    async def _run(self, rec, node, inputs, scan, first, timeout_s):
        with trio.move_on_after(timeout_s):
            st = self.nodes[node]
            await trio.sleep(self.compute_s * scan.steps)
            if self.is_ground:                       # the result comes down at the station's next pass
                await trio.sleep(self.downlink_wait_s(0.0))
            while st["silent"]:
                await trio.sleep(1.0)
            if st["dead"] and not st["late"]:
                await trio.sleep_forever()
            for k in range(scan.steps):
                self.executions[first + k] += 1
            if scan.carry:
                h, ys, hs = inputs["h"], [], []
                for x in inputs["x"]:
                    h = h + x
                    ys.append(h * 2)
                    hs.append(h)
                outputs = {"y": np.stack(ys), "h_out": np.stack(hs)}
            else:
                outputs = {"y": inputs["x"] * 3}
            rec.finish(ok=True, when=trio.current_time(), outputs=outputs,
                       trace=(Hop(node, 0.0, 0.0, "execute"), Hop(self.name, 0.0, 0.0, "deliver")))
            return
        rec.finish(ok=False, when=trio.current_time(), error=f"no result from {node} in {timeout_s:.1f} s")

    def unfit(self, node):
        st = self.nodes[node]
        if st["dead"]:
            return f"{node} declared dead"
        if st["low"]:
            return f"{node} in eclipse with its battery below the reserve"
        return None

    def reachable(self, node):
        return True

    def expected_compute_s(self, node, model):
        return self.compute_s

    def isolated(self):
        return False

    def downlink_wait_s(self, after_s):
        """A station (``is_ground``) sees a satellite for the first PASS_S of every PASS_EVERY_S."""
        at = trio.current_time() + after_s
        phase = at % PASS_EVERY_S
        return after_s if phase <= PASS_S - 20.0 else after_s + PASS_EVERY_S - phase


PASS_EVERY_S, PASS_S = 600.0, 120.0


def spec(n: int, shards: int = 3, chunk: int = 4, window: int = 2, stateful: bool = False) -> JobSpec:
    xs = np.arange(n * 2, dtype=np.float32).reshape(n, 1, 2)
    carry = (("h_out", "h"),) if stateful else ()
    initial = {"h": np.zeros((1, 2), np.float32)} if stateful else {}
    return JobSpec("cell" if stateful else "triple", "0" * 64, {"x": xs}, n, carry, initial, shards, chunk, window,
                   "auto", 3600.0)


async def run_board(names, body, journal=None, compute_s=0.01):
    async with trio.open_nursery() as nursery:
        sky = Sky(nursery, names, compute_s)
        board = JobBoard(sky, journal, clock=trio.current_time)
        await nursery.start(board.serve)
        try:
            return await body(sky, board)
        finally:
            nursery.cancel_scope.cancel()


def clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def until(predicate, step=0.01):
    while not predicate():
        await trio.sleep(step)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_every_input_is_kept_once_over_distinct_satellites(n):
    async def body(sky, board):
        job, new = board.submit(spec(n), None)
        await job.done.wait()
        return sky, job
    sky, job = trio.run(run_board, ["s1", "s2", "s3", "s4"], body, clock=clock())
    assert job.status == "succeeded" and job.plan.resent == 0
    assert np.array_equal(job.outputs()["y"], job.spec.inputs["x"] * 3)
    assert set(sky.executions) == set(range(n)) and max(sky.executions.values()) == 1
    assert len({s.node for s in job.plan.shards}) == len(job.plan.shards)


def test_a_dead_satellite_loses_at_most_its_chunks_in_flight_and_its_late_answers_are_fenced_off():
    async def body(sky, board):
        job, _ = board.submit(spec(60, shards=2, chunk=4, window=2), None)
        await until(lambda: job.plan.shards[0].done >= 12)
        victim = job.plan.shards[0].node
        sky.nodes[victim].update(dead=True, late=True)      # declared dead, but its last answers still arrive
        await job.done.wait()
        return sky, job, victim
    sky, job, victim = trio.run(run_board, ["s1", "s2", "s3"], body, clock=clock())
    assert job.status == "succeeded"
    shard = job.plan.shards[0]
    assert shard.moves[-1].src == victim and "declared dead" in shard.moves[-1].why and shard.node != victim
    assert shard.resent <= 1 * job.plan.window * job.plan.chunk
    assert np.array_equal(job.outputs()["y"], job.spec.inputs["x"] * 3)          # each output once, right
    assert sum(sky.executions.values()) - 60 <= shard.resent                      # re-run only what was in flight


def test_a_satellite_low_in_eclipse_hands_its_shard_on():
    async def body(sky, board):
        job, _ = board.submit(spec(40, shards=1, chunk=2, window=1), None)
        await until(lambda: job.plan.completed >= 10)
        sky.nodes[job.plan.shards[0].node]["low"] = True
        await job.done.wait()
        return job
    job = trio.run(run_board, ["s1", "s2"], body, clock=clock())
    assert job.status == "succeeded" and [m.dst for m in job.plan.shards[0].moves] == ["s1", "s2"]
    assert "eclipse" in job.plan.shards[0].moves[-1].why


def test_a_stalled_satellite_is_left_after_its_chunk_outlives_the_usual_round_trip():
    async def body(sky, board):
        job, _ = board.submit(spec(40, shards=1, chunk=2, window=1), None)
        await until(lambda: job.plan.completed >= 10)
        stalled_at = trio.current_time()
        sky.nodes[job.plan.shards[0].node]["silent"] = True          # paused: alive, says nothing
        await until(lambda: len(job.plan.shards[0].moves) > 1)
        moved_after = trio.current_time() - stalled_at
        await job.done.wait()
        return job, moved_after
    job, moved_after = trio.run(run_board, ["s1", "s2"], body, clock=clock())
    assert job.status == "succeeded" and "failed on s1" in job.plan.shards[0].moves[-1].why
    assert moved_after < 4.0, f"moved {moved_after:.1f} s after the satellite stalled"


def test_a_station_home_waits_for_passes_without_moving_and_leaves_a_stalled_satellite_after_the_next_one():
    async def body(sky, board):
        sky.is_ground = True
        job, _ = board.submit(spec(40, shards=1, chunk=4, window=1), None)
        await until(lambda: job.plan.completed >= 12, step=1.0)
        assert len(job.plan.shards[0].moves) == 1, "results that wait for a pass are not lost chunks"
        stalled_at = trio.current_time()
        sky.nodes[job.plan.shards[0].node]["silent"] = True
        await until(lambda: len(job.plan.shards[0].moves) > 1 or job.done.is_set(), step=1.0)
        moved_after = trio.current_time() - stalled_at
        await job.done.wait()
        return sky, job, moved_after
    sky, job, moved_after = trio.run(run_board, ["s1", "s2"], body, None, 10.0, clock=clock())   # 40 s a chunk
    assert job.status == "succeeded" and "failed on s1" in job.plan.shards[0].moves[-1].why
    assert np.array_equal(job.outputs()["y"], job.spec.inputs["x"] * 3)
    # before: a stalled chunk at a station waited for the job's whole deadline (3,600 s here)
    assert moved_after < PASS_EVERY_S + PASS_S + 120.0, f"moved {moved_after:.0f} s after the satellite stalled"


def test_a_stateful_job_that_moves_ends_bit_identical_to_one_that_does_not():
    async def body(sky, board):
        calm, _ = board.submit(spec(30, shards=1, chunk=4, stateful=True), None)
        await calm.done.wait()
        moved, _ = board.submit(spec(30, shards=1, chunk=4, stateful=True), None)
        await until(lambda: moved.plan.completed >= 12)
        sky.nodes[moved.plan.shards[0].node]["dead"] = True
        await moved.done.wait()
        return calm, moved
    calm, moved = trio.run(run_board, ["s1", "s2"], body, clock=clock())
    assert moved.status == calm.status == "succeeded" and moved.plan.shards[0].node == "s2"
    a, b = calm.outputs(), moved.outputs()
    assert a["y"].tobytes() == b["y"].tobytes() and a["h_out"].tobytes() == b["h_out"].tobytes()
    assert calm.state[0]["h"].tobytes() == moved.state[0]["h"].tobytes()
    assert float(b["y"][-1, 0, 0]) == 2 * sum(range(0, 60, 2))                  # h = Σ x over the series


def test_a_restarted_home_resumes_from_its_journal_and_keeps_each_output_once(tmp_path):
    path = tmp_path / "jobs.sqlite"

    async def first(sky, board):
        job, _ = board.submit(spec(60, shards=2, chunk=3, window=1), "key-1")
        await until(lambda: job.plan.completed >= 21)
        return job.job_id, job.plan.completed        # the home "dies" here: the board is cancelled

    async def second(sky, board):
        job = board.get(job_id)
        assert job is not None and job.status == "running" and job.plan.completed >= done_before
        again, new = board.submit(spec(60), "key-1")
        assert again is job and not new
        await job.done.wait()
        return sky, job

    job_id, done_before = trio.run(run_board, ["s1", "s2"], first, JobJournal(path), clock=clock())
    sky, job = trio.run(run_board, ["s1", "s2"], second, JobJournal(path), clock=clock())
    assert job.status == "succeeded"
    assert np.array_equal(job.outputs()["y"], job.spec.inputs["x"] * 3)
    assert all("home restarted" in s.moves[-1].why for s in job.plan.shards if s.moves[-1].at > 0)
    assert sum(sky.executions.values()) <= 60 - done_before + 2 * 3                 # only what had no checkpoint
    assert JobJournal(path).job(job_id).status == "succeeded"


def test_cancel_stops_a_job_and_too_many_running_jobs_are_refused():
    async def body(sky, board):
        jobs = [board.submit(spec(10_000 // 10, chunk=1, window=1), None)[0] for _ in range(16)]
        with pytest.raises(JobError) as exc:
            board.submit(spec(10), None)
        assert exc.value.status == 429
        board.cancel(jobs[0].job_id)
        await jobs[0].done.wait()
        sent = sky.sent[jobs[0].job_id]
        await trio.sleep(1.0)
        return jobs[0], sent, sky.sent[jobs[0].job_id], jobs[1]
    job, sent, later, other = trio.run(run_board, ["s1", "s2"], body, clock=clock())
    assert job.status == "cancelled" and job.error == "cancelled by the client"
    assert later == sent and other.status == "running"                 # nothing more sent; the others go on


def test_a_chunk_the_home_cannot_send_yet_waits_without_moving_the_shard():
    async def body(sky, board):
        sky.refuse = 25
        job, _ = board.submit(spec(20, shards=1, chunk=4, window=2), None)
        await job.done.wait()
        return job
    job = trio.run(run_board, ["s1", "s2"], body, clock=clock())
    assert job.status == "succeeded" and len(job.plan.shards[0].moves) == 1 and job.plan.resent == 0

