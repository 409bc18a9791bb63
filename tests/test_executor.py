"""The executor: batching gives the same answers, a full queue refuses, timeouts stop onnxruntime."""

import json
import os
import shutil
import time

import numpy as np
import onnx
import pytest
import trio
from onnx import TensorProto, helper

from agent.compute import executor as executor_module
from agent.compute.executor import DeadlineExceeded, ExecutionError, Executor, ExecutorBusy
from agent.compute.models import ModelError, ModelStore
from agent.links.priority import idle_is_reversible


def slow_model(path, size=600, depth=40):
    """A chain of MatMuls: ~size³·depth FLOPs, long enough to time out."""
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"y{i}"]))
        prev = f"y{i}"
    w = helper.make_tensor("w", TensorProto.FLOAT, [size, size],
                           (np.eye(size, dtype=np.float32) * 0.5).ravel().tolist())
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", size])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture
def store(tmp_path, models_dir):
    shutil.copy(models_dir / "digits.onnx", tmp_path / "digits.onnx")
    # opt digits into batching for this test (the zoo's manifests decide per model)
    manifest = json.loads((models_dir / "digits.json").read_text())
    manifest["batching"] = {"batchable": True}
    (tmp_path / "digits.json").write_text(json.dumps(manifest))
    shutil.copy(models_dir / "matmul.onnx", tmp_path / "matmul.onnx")
    shutil.copy(models_dir / "matmul.json", tmp_path / "matmul.json")
    slow_model(tmp_path / "slow.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"this is not a protobuf")
    return ModelStore(tmp_path)


def digits_inputs(models_dir, k):
    sample = json.loads((models_dir / "digits.json").read_text())["samples"][k % 16]
    return {"input": np.array(sample["inputs"]["input"], dtype=np.float32)}


async def test_batched_results_equal_single_runs(store, models_dir):
    ex = Executor(store, workers=1, batch_wait_s=0.02)
    results = {}
    async with trio.open_nursery() as n:
        await n.start(ex.serve)

        async def one(k):
            results[k] = await ex.run("digits", digits_inputs(models_dir, k))

        async with trio.open_nursery() as jobs:
            for k in range(12):
                jobs.start_soon(one, k)
        n.cancel_scope.cancel()
    assert ex.batches >= 1 and max(r.batch_size for r in results.values()) > 1
    sess = store.get("digits").session
    for k, r in results.items():
        want = sess.run(None, digits_inputs(models_dir, k))
        assert np.array_equal(r.outputs["label"], want[0]) and np.allclose(r.outputs["probabilities"], want[1])


async def test_sustained_batched_load_neither_jams_nor_starves(store, models_dir):
    """Clients resubmit as soon as they are answered, more of them than the queue
    limit holds tokens for: every task completes, the last one included, and
    every worker gets a share (no batch leaves a worker idle)."""
    ex = Executor(store, workers=2, queue_limit=8, max_batch=8, batch_wait_s=0.001)
    done = 0
    async with trio.open_nursery() as n:
        await n.start(ex.serve)

        async def client(k):
            nonlocal done
            for i in range(40):
                await ex.run("digits", digits_inputs(models_dir, k + i))
                done += 1

        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for k in range(8):
                    clients.start_soon(client, k)
        n.cancel_scope.cancel()
    assert done == 320 and ex.queued == 0 and ex.running == 0
    assert ex.batches > 0 and ex.batched_tasks / ex.batches <= 4.5, "a fair share: about half the queue each"


async def test_a_worker_waits_for_batch_mates_only_where_it_pays(store, models_dir, tmp_path):
    """Waiting idles the worker: worth it for a quick model (digits), not for one whose
    run is many waits long; that one still batches what is already queued."""
    slow_model(tmp_path / "slow.onnx", size=300, depth=40)       # 1.8 GFLOP: ≫ 5 ms a run
    (tmp_path / "slow.json").write_text(json.dumps({"batching": {"batchable": True}}))
    store = ModelStore(tmp_path)
    ex = Executor(store, workers=1, batch_wait_s=0.001)
    x = {"x": np.ones((256, 300), np.float32)}
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        for _ in range(3):
            await ex.run("digits", digits_inputs(models_dir, 0))
        assert ex.batch_waits == 3, "a quick model waits every time"
        await ex.run("slow", x)
        assert ex.batch_waits == 4, "the first run of a model, its cost unknown, waits"
        for _ in range(3):
            await ex.run("slow", x)
        assert ex.batch_waits == 4, "a model far slower than the wait no longer waits"
        results = []

        async def one():
            results.append(await ex.run("slow", x))
        async with trio.open_nursery() as jobs:
            for _ in range(5):
                jobs.start_soon(one)
        n.cancel_scope.cancel()
    assert ex.batch_waits == 4 and max(r.batch_size for r in results) > 1, "the queue still forms batches"


async def test_models_that_opt_out_are_never_batched(store):
    ex = Executor(store, workers=1, batch_wait_s=0.02)
    a, b = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
    results = []
    async with trio.open_nursery() as n:
        await n.start(ex.serve)

        async def one():
            results.append(await ex.run("matmul", {"a": a, "b": b}))

        async with trio.open_nursery() as jobs:
            for _ in range(6):
                jobs.start_soon(one)
        n.cancel_scope.cancel()
    assert len(results) == 6 and all(r.batch_size == 1 for r in results)
    assert all(np.allclose(next(iter(r.outputs.values())), a @ b) for r in results)


async def test_full_queue_refuses(store):
    ex = Executor(store, workers=1, queue_limit=2, batch_wait_s=0)
    x = {"x": np.ones((1, 600), np.float32)}
    errors = []
    async with trio.open_nursery() as n:
        await n.start(ex.serve)

        async def one():
            try:
                await ex.run("slow", x, timeout_s=5)
            except ExecutorBusy as exc:
                errors.append(exc)

        async with trio.open_nursery() as jobs:
            for _ in range(6):
                jobs.start_soon(one)
                await trio.sleep(0)
        n.cancel_scope.cancel()
    assert errors and "queued" in str(errors[0])


async def test_timeout_stops_onnxruntime(store):
    ex = Executor(store, workers=1)
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        t0 = trio.current_time()
        with pytest.raises(ExecutionError, match="timed out after 0.05s"):
            await ex.run("slow", {"x": np.ones((512, 600), np.float32)}, timeout_s=0.05)
        assert trio.current_time() - t0 < 1.0  # it stopped; it did not run to the end
        n.cancel_scope.cancel()


async def test_onnxruntime_errors_reach_the_caller(store):
    ex = Executor(store, workers=1)
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        with pytest.raises(ExecutionError, match="matmul"):  # inner dimensions 3 vs 2
            await ex.run("matmul", {"a": np.ones((1, 3), np.float32), "b": np.ones((2, 1), np.float32)})
        n.cancel_scope.cancel()


async def test_broken_and_unknown_models(store):
    with pytest.raises(ModelError, match="cannot be loaded"):
        store.get("broken")
    with pytest.raises(ModelError, match="unknown model"):
        store.get("nope")
    ex = Executor(store, workers=1)
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        with pytest.raises(ExecutionError, match="broken"):
            await ex.run("broken", {"x": np.ones((1, 1), np.float32)})
        n.cancel_scope.cancel()


def loop_model(path, trips=10 ** 9):
    """A Loop of ``trips`` tiny iterations: slow, but onnxruntime checks terminate between them."""
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Sin", ["v"], ["v_out"])],
                             "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                      helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                      helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n"])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["n"])])
    graph = helper.make_graph([helper.make_node("Loop", ["m", "cond", "x"], ["y"], body=body)], "loop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor("m", TensorProto.INT64, [], [trips]),
                               helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


async def test_a_long_loop_stops_at_the_task_deadline_and_the_worker_goes_on(store, tmp_path, models_dir):
    loop_model(tmp_path / "loop.onnx")
    ex = Executor(store, workers=1)
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        t0 = trio.current_time()
        with pytest.raises(DeadlineExceeded, match="loop: deadline exceeded: timed out after 0.3s"):
            await ex.run("loop", {"x": np.ones(16, np.float32)}, timeout_s=0.3)
        assert trio.current_time() - t0 < 0.3 + 0.5
        assert ex.abandoned == 0 and ex.expired == 1        # onnxruntime stopped it: no thread was left
        assert (await ex.run("digits", digits_inputs(models_dir, 0))).outputs["label"].shape == (1,)
        n.cancel_scope.cancel()


async def test_a_run_that_ignores_terminate_is_abandoned_and_the_worker_replaced(store, models_dir, monkeypatch):
    """One MatMul of 3500³ (seconds of one core) cannot be stopped between nodes:
    the task fails by deadline + grace, the next task runs at once on a fresh thread,
    and the abandoned thread is counted until it ends."""
    monkeypatch.setattr(executor_module, "ABANDON_GRACE_S", 0.3)
    ex = Executor(store, workers=1)
    big = np.ones((3500, 3500), np.float32)
    huge = np.ones((6000, 6000), np.float32)      # 432 GFLOP: seconds even on a fast core
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        t0 = trio.current_time()
        with pytest.raises(DeadlineExceeded, match="did not stop within 0.3s more, so its run was abandoned"):
            await ex.run("matmul", {"a": huge, "b": huge}, timeout_s=0.2)
        assert trio.current_time() - t0 < 0.2 + 0.3 + 1.0    # 1 s of slack: three busy threads on a loaded box
        assert ex.abandoned == 1 and ex.stuck == 1
        # the op it cannot stop computes on only on CPU time nothing else wants (SCHED_IDLE),
        # where the process may take its thread back to the normal policy afterwards
        if idle_is_reversible():
            (tid,) = ex.idled
            assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        else:
            assert ex.idled == set()
        t1 = trio.current_time()
        assert (await ex.run("digits", digits_inputs(models_dir, 0))).outputs["label"].shape == (1,)
        assert trio.current_time() - t1 < 0.5 and ex.stuck == 1   # served while the old run still computes
        # Over the cap (one abandoned run per worker): the task still fails on time,
        # but the worker waits for its run to end instead of leaving a second thread.
        # The first run must still be going then: a fast core does 3500³ in ~1 s.
        t2 = trio.current_time()
        assert ex.stuck == 1, "the first run ended before the cap could be tested: make it bigger"
        with pytest.raises(DeadlineExceeded, match=r"its worker waits for it to end \(1 runs abandoned already\)"):
            await ex.run("matmul", {"a": big, "b": big}, timeout_s=0.2)
        assert trio.current_time() - t2 < 0.2 + 0.3 + 1.0 and ex.abandoned == 2
        with trio.fail_after(60):
            await ex.run("digits", digits_inputs(models_dir, 0))     # after the waited-for run ended
            assert ex.stuck <= 1
            while ex.stuck:
                await trio.sleep(0.1)
        assert ex.idled == set()           # both ended: their threads are back to the normal policy
        n.cancel_scope.cancel()


def _process_cpu_over(seconds: float) -> float:
    t0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - t0


@pytest.mark.parametrize("model", ["loop", "slow"])
async def test_a_run_stopped_at_its_deadline_burns_no_cpu_afterwards(store, tmp_path, model):
    """terminate stops the run itself, not just the wait for it: the process's CPU time
    stops growing at the deadline (a Loop is checked between iterations, the MatMul
    chain between nodes), where the thread would otherwise compute for seconds more."""
    loop_model(tmp_path / "loop.onnx")
    ex = Executor(store, workers=1)
    inputs = {"loop": {"x": np.ones(16, np.float32)}, "slow": {"x": np.ones((2048, 600), np.float32)}}[model]
    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        c0, t0 = time.process_time(), trio.current_time()
        with pytest.raises(DeadlineExceeded, match="deadline exceeded"):
            await ex.run(model, inputs, timeout_s=0.4)
        assert trio.current_time() - t0 < 0.4 + 0.5 and ex.abandoned == 0 and ex.stuck == 0
        assert time.process_time() - c0 > 0.1          # it did compute until then (the measure can see a run)
        after = await trio.to_thread.run_sync(_process_cpu_over, 1.0)
        assert after < 0.1, f"{after:.2f} s of CPU in the second after the deadline: the run goes on"
        n.cancel_scope.cancel()


async def test_a_job_still_queued_at_its_deadline_fails_without_running(store, models_dir):
    ex = Executor(store, workers=1, batch_wait_s=0)
    errors = []
    async with trio.open_nursery() as n:
        await n.start(ex.serve)

        async def hog():
            with pytest.raises(DeadlineExceeded):
                await ex.run("slow", {"x": np.ones((2048, 600), np.float32)}, timeout_s=0.4)

        async def late():
            try:
                await ex.run("digits", digits_inputs(models_dir, 0), timeout_s=0.1)
            except DeadlineExceeded as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as jobs:
            jobs.start_soon(hog)
            await trio.sleep(0.05)
            jobs.start_soon(late)
        with pytest.raises(DeadlineExceeded, match="before it could run"):
            await ex.run("digits", digits_inputs(models_dir, 0), timeout_s=0)
        n.cancel_scope.cancel()
    assert errors == ["digits: deadline exceeded: timed out after 0.1s in the queue, before it could run"]


async def test_a_warm_up_that_would_spin_is_stopped_by_its_bound(store, tmp_path):
    """``POST /v2/repository/models/{name}/load`` warms a model on zeros: bounded like a task."""
    loop_model(tmp_path / "loop.onnx")
    ex = Executor(store, workers=1)
    t0 = trio.current_time()
    await ex.warm_up("loop", timeout_s=0.3)
    assert trio.current_time() - t0 < 0.3 + 0.5 and ex.abandoned == 0
