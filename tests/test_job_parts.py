"""A job's parts without a fleet: the spec checked at the home, the chunk run at an executor, the journal."""

from pathlib import Path

import numpy as np
import pytest
import trio

from agent.compute.executor import Execution
from agent.runtime.job_journal import JobJournal, JobJournalError
from agent.runtime.job_spec import JobError, JobSpec, parse_job
from agent.compute.models import LoadedModel
from agent.runtime.scan import run_scan, scan_inputs
from agent.compute.tensors import InputError, TensorSpec
from mesh.jobs import Move
from mesh.wire import Scan, Tensor

TARGETS = ("auto", "nearest", "sunlit")
DIGITS = LoadedModel("digits", Path("digits.onnx"), None, [TensorSpec("input", "float32", (None, 64))],
                     [TensorSpec("label", "int64", (None,)), TensorSpec("probabilities", "float32", (None, 10))],
                     manifest={"batching": {"batchable": True}})
CELL = LoadedModel("cell", Path("cell.onnx"), None,
                   [TensorSpec("x", "float32", (1, 2)), TensorSpec("h", "float32", (1, 3))],
                   [TensorSpec("y", "float32", (1, 1)), TensorSpec("h_out", "float32", (1, 3))])


def parse(body, model=DIGITS, **kw):
    return parse_job(body, model, "0" * 64, max_elements=1 << 20, max_chunk_bytes=kw.pop("max_chunk_bytes", 1 << 20),
                     targets=TARGETS)


def test_inputs_are_checked_and_stacked_and_the_spec_survives_the_journal_encoding():
    spec = parse({"model": "digits", "inputs": [{"input": [[float(i)] * 64]} for i in range(7)], "shards": 3})
    assert spec.n == 7 and spec.inputs["input"].shape == (7, 1, 64) and spec.shards == 3 and not spec.carry
    back = JobSpec.from_wire(spec.to_wire())
    assert back.n == 7 and np.array_equal(back.inputs["input"], spec.inputs["input"]) and back.chunk == spec.chunk


def test_binary_inputs_arrive_stacked_and_are_checked_one_by_one():
    xs = np.arange(5 * 64, dtype=np.float32).reshape(5, 1, 64)
    spec = parse({"model": "digits", "inputs": {"input": xs}})
    assert spec.n == 5 and np.array_equal(spec.inputs["input"], xs)
    with pytest.raises(JobError, match="input 0"):
        parse({"model": "digits", "inputs": {"input": np.zeros((5, 1, 63), np.float32)}})
    with pytest.raises(JobError, match="first axis"):
        parse({"model": "digits", "inputs": {"input": np.zeros((0, 1, 64), np.float32)}})


@pytest.mark.parametrize("body, status, words", [
    ({"model": "digits", "inputs": []}, 400, "non-empty list"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 63]}]}, 400, "input 0"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}, {"input": [[1.0] * 64] * 2}]}, 400, "share their shapes"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}], "shards": 0}, 400, "'shards'"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}], "target": "sat-3"}, 400, "placement policy"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}], "timeout_s": float("inf")}, 400, "timeout_s"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}], "priority": 1}, 400, "unknown field"),
    ({"model": "digits", "inputs": [{"input": [[1.0] * 64]}] * 10_001}, 413, "at most 10000"),
])
def test_bad_jobs_are_refused_with_the_reason(body, status, words):
    with pytest.raises(JobError, match=words) as exc:
        parse(body)
    assert exc.value.status == status


def test_chunks_are_sized_to_fit_a_frame():
    spec = parse({"model": "digits", "inputs": [{"input": [[1.0] * 64]}] * 40, "chunk": 32}, max_chunk_bytes=256 * 10)
    assert spec.chunk == 10          # 256 bytes an input
    with pytest.raises(JobError) as exc:
        parse({"model": "digits", "inputs": [{"input": [[1.0] * 64]}]}, max_chunk_bytes=100)
    assert exc.value.status == 413


def test_a_stateful_step_names_its_state_and_starts_from_zeros():
    spec = parse({"model": "cell", "inputs": [{"x": [[1.0, 2.0]]}] * 4, "state": {"carry": {"h_out": "h"}}}, CELL)
    assert spec.carry == (("h_out", "h"),) and spec.shards == 1 and set(spec.inputs) == {"x"}
    assert np.array_equal(spec.initial["h"], np.zeros((1, 3), np.float32))
    for state, words in [({"carry": {"y": "h"}}, "cannot feed"), ({"carry": {"nope": "h"}}, "must map"),
                         ({"carry": {"h_out": "h"}, "initial": {"x": [[0.0, 0.0]]}}, "carried inputs only"),
                         ({"carry": {"h_out": "h"}, "initial": {"h": [[0.0]]}}, "state.initial")]:
        with pytest.raises(JobError, match=words):
            parse({"model": "cell", "inputs": [{"x": [[1.0, 2.0]]}], "state": state}, CELL)


async def fake_cell(feeds, left):
    """h' = h + sum(x), y = h'[0]: enough to see the state carried step to step."""
    h = feeds["h"] + feeds["x"].sum()
    return Execution({"y": h[:, :1].copy(), "h_out": h}, 0.001)


async def test_a_chunk_runs_in_order_carrying_its_state():
    xs = np.arange(8, dtype=np.float32).reshape(4, 1, 2)
    scan = Scan(4, (("h_out", "h"),))
    stacked, state = scan_inputs(CELL, {"x": Tensor.from_array(xs), "h": Tensor.from_array(np.ones((1, 3),
                                                                                              np.float32))}, scan)
    out = await run_scan(CELL, stacked, state, scan, fake_cell, None)
    assert out.outputs["y"][:, 0, 0].tolist() == [2.0, 7.0, 16.0, 29.0]    # 1+1, +5, +9, +13
    assert out.outputs["h_out"].shape == (4, 1, 3) and out.batch_size == 4


async def test_a_batchable_chunk_without_state_is_one_call():
    calls = []

    async def run(feeds, left):
        calls.append(feeds["input"].shape)
        return Execution({"label": feeds["input"][:, 0].astype(np.int64),
                          "probabilities": np.zeros((feeds["input"].shape[0], 10), np.float32)}, 0.002)
    xs = np.arange(3 * 2 * 64, dtype=np.float32).reshape(3, 2, 64)
    scan = Scan(3)
    stacked, state = scan_inputs(DIGITS, {"input": Tensor.from_array(xs)}, scan)
    out = await run_scan(DIGITS, stacked, state, scan, run, None)
    assert calls == [(6, 64)] and out.outputs["label"].shape == (3, 2)
    assert out.outputs["label"][2, 1] == xs[2, 1, 0]


def test_a_chunk_that_does_not_match_its_scan_is_refused():
    with pytest.raises(InputError, match="leading axis of 3"):
        scan_inputs(DIGITS, {"input": Tensor.from_array(np.zeros((2, 1, 64), np.float32))}, Scan(3))
    with pytest.raises(InputError, match="not an output"):
        scan_inputs(CELL, {"x": Tensor.from_array(np.zeros((1, 1, 2), np.float32)),
                           "h": Tensor.from_array(np.zeros((1, 3), np.float32))}, Scan(1, (("z", "h"),)))


def test_the_journal_keeps_each_checkpoint_once_and_forgets_finished_jobs(tmp_path):
    j = JobJournal(tmp_path / "jobs.sqlite", retention_s=10)
    j.accept("sat-0-job-1", "k1", 100.0, {"model": "digits"})
    out = {"label": np.arange(4, dtype=np.int64)}
    j.checkpoint("sat-0-job-1", 0, 0, 4, "sat-3", out)
    j.checkpoint("sat-0-job-1", 0, 0, 4, "sat-9", {"label": np.zeros(4, np.int64)})   # a repeat: ignored
    j.move("sat-0-job-1", 0, Move(101.0, None, "sat-3", "placed", 0))
    (c,) = j.chunks("sat-0-job-1")
    assert c.node == "sat-3" and np.array_equal(c.outputs["label"], out["label"])
    assert [m.dst for _, m, _ in j.moves("sat-0-job-1")] == ["sat-3"] and j.by_key("k1") == "sat-0-job-1"
    assert [r.job_id for r in j.open_jobs()] == ["sat-0-job-1"]
    j.finish("sat-0-job-1", "succeeded", 105.0)
    assert j.open_jobs() == [] and j.purge(now=120.0) == 1 and j.chunks("sat-0-job-1") == []
    j.db.execute("INSERT INTO jobs (job_id, created, spec, status) VALUES ('bad', 1, x'c1', 'running')")
    with pytest.raises(JobJournalError, match="damaged"):
        j.open_jobs()
