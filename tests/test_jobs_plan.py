"""mesh/jobs.py: shards, chunks in flight, checkpoints, and the fence a move puts up."""

import pytest

from mesh.jobs import MAX_MOVES, JobPlan, PlanError


def test_inputs_split_into_contiguous_shards_that_cover_each_input_once():
    plan = JobPlan(50, 4, 5)
    bounds = [(s.lo, s.hi) for s in plan.shards]
    assert bounds == [(0, 13), (13, 26), (26, 38), (38, 50)]
    assert JobPlan(3, 8, 5).shards[-1].hi == 3 and len(JobPlan(3, 8, 5).shards) == 3   # never an empty shard


def test_a_shard_sends_at_most_its_window_and_only_once_placed():
    plan = JobPlan(20, 1, 4, window=2)
    assert plan.next_chunks(0) == []                 # not placed yet
    plan.assign(0, "sat-1", 0.0, "placed")
    assert plan.next_chunks(0) == [(0, 4), (4, 8)]
    assert plan.next_chunks(0) == []                 # window full
    assert plan.chunk_done(0, 0, 0, 4, 1.0)
    assert plan.next_chunks(0) == [(8, 12)]
    assert plan.shards[0].done == 4


def test_out_of_order_chunks_advance_the_checkpoint_only_when_contiguous():
    plan = JobPlan(12, 1, 4, window=3)
    plan.assign(0, "a", 0.0, "placed")
    plan.next_chunks(0)
    assert plan.chunk_done(0, 0, 4, 8, 1.0)
    s = plan.shards[0]
    assert s.done == 0 and s.completed == 4
    assert plan.chunk_done(0, 0, 0, 4, 1.0)
    assert s.done == 8
    assert not plan.chunk_done(0, 0, 0, 4, 1.0)     # a repeat is not kept twice


def test_a_move_fences_off_the_old_epoch_and_resends_only_what_was_in_flight():
    plan = JobPlan(20, 1, 4, window=2)
    plan.assign(0, "a", 0.0, "placed")
    plan.next_chunks(0)                              # (0,4) (4,8)
    plan.chunk_done(0, 0, 0, 4, 1.0)
    plan.next_chunks(0)                              # (8,12)
    plan.chunk_done(0, 0, 8, 12, 1.5)                # ahead of the checkpoint
    lost = plan.abandon(0)
    s = plan.shards[0]
    assert lost == 4 and s.resent == 4 and s.epoch == 1 and s.node is None
    assert not plan.chunk_done(0, 0, 4, 8, 2.0)      # the old satellite's late answer is ignored
    move = plan.assign(0, "b", 3.0, "moved: a died")
    assert move.src == "a" and move.resume_at == 4
    assert plan.next_chunks(0) == [(4, 8), (12, 16)]   # skips 8–11, already home
    assert plan.chunk_done(0, 1, 4, 8, 4.0) and s.done == 12


def test_stateful_jobs_send_one_chunk_at_a_time():
    plan = JobPlan(10, 1, 3, window=4, stateful=True)
    plan.assign(0, "a", 0.0, "placed")
    assert plan.next_chunks(0) == [(0, 3)]
    assert plan.next_chunks(0) == []


def test_restored_checkpoints_resume_where_they_ended():
    plan = JobPlan(20, 2, 4)
    plan.restore(0, 0, 4)
    plan.restore(0, 4, 8)
    plan.restore(1, 14, 18)
    assert plan.shards[0].done == 8 and plan.shards[1].done == 10 and plan.completed == 12
    plan.assign(1, "x", 0.0, "resumed")
    assert plan.next_chunks(1) == [(10, 14), (18, 20)]
    with pytest.raises(PlanError):
        plan.restore(0, 8, 12)                       # outside shard 0


@pytest.mark.parametrize("args", [(0, 1, 1), (10_001, 1, 1), (10, 0, 1), (10, 65, 1), (10, 1, 0), (10, 1, 257)])
def test_shapes_out_of_bounds_are_refused(args):
    with pytest.raises(PlanError):
        JobPlan(*args)


def test_a_shard_that_keeps_moving_gives_up():
    plan = JobPlan(4, 1, 1)
    for k in range(MAX_MOVES):
        plan.assign(0, f"n{k}", float(k), "moved")
        plan.abandon(0)
    with pytest.raises(PlanError, match="moved"):
        plan.assign(0, "last", 99.0, "moved")
