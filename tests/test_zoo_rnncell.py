"""Zoo model ``rnncell``: a stateful step whose chained and resumed runs are bit-identical."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

pytestmark = pytest.mark.slow    # needs the built model and rebuilds it in a subprocess

ort = pytest.importorskip("onnxruntime")

from agent import zoo  # noqa: E402
from agent.compute.executor import Executor  # noqa: E402
from agent.runtime.job_spec import parse_job  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from agent.runtime.scan import run_scan, scan_inputs  # noqa: E402
from agent.compute.tensors import InputError, from_json, inputs_from_json, to_json  # noqa: E402
from agent.zoo import rnncell  # noqa: E402
from mesh.wire import Scan, Tensor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
STEPS = 20


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """models/ when it holds a current build (the Makefile builds it), else a fresh one."""
    if zoo.is_current(MODELS, "rnncell") is not None:
        return MODELS
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("zoo")
    zoo.build(out, only=["rnncell"])
    return out


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built / "rnncell.json").read_text())


def _session(built: Path):
    return ort.InferenceSession(str(built / "rnncell.onnx"), session_options(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sess(built):
    return _session(built)


def _run(sess, xs: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed ``xs`` [T, 8] one step at a time from state ``h``: (ys [T, 4], hs [T, 16])."""
    ys, hs = [], []
    for x in xs:
        y, h = sess.run(["y", "h_out"], {"x": x.reshape(1, -1), "h": h})
        ys.append(y[0])
        hs.append(h[0])
    return np.stack(ys), np.stack(hs)


def _zeros() -> np.ndarray:
    return np.zeros((1, rnncell.N_STATE), np.float32)


def test_manifest_and_signature(manifest, built, sess):
    assert manifest["sha256"] == hashlib.sha256((built / "rnncell.onnx").read_bytes()).hexdigest()
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 8]},
                                  {"name": "h", "dtype": "float32", "shape": [1, 16]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": [1, 4]},
                                   {"name": "h_out", "dtype": "float32", "shape": [1, 16]}]
    assert [(i.name, i.shape, i.type) for i in sess.get_inputs()] == [("x", [1, 8], "tensor(float)"),
                                                                      ("h", [1, 16], "tensor(float)")]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("y", [1, 4]), ("h_out", [1, 16])]
    assert manifest["state"] == {"carry": {"h_out": "h"}}                   # a job's "state", as is
    assert manifest["batching"]["batchable"] is False
    desc = manifest["description"]
    assert "Feed 'h_out' of step t as 'h' of step t+1, starting from zeros" in desc
    assert "stateful job step" in desc
    assert len(manifest["samples"]) == rnncell.SAMPLE_STEPS


def test_weights_are_fixed_initializers_that_keep_tanh_unsaturated(built):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(built / "rnncell.onnx"))
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w = rnncell.weights()
    assert stored.keys() == w.keys()
    for name, arr in w.items():
        assert arr.dtype == np.float32 and np.array_equal(stored[name], arr), name
        assert np.array_equal(rnncell.weights()[name], arr), name          # same draw every time
    assert max(abs(np.linalg.eigvals(w["U"]))) < 1.0                      # the state forgets
    xs = rnncell.series(500)
    _, hs = rnncell.reference(xs, _zeros())
    h_before = np.vstack([_zeros(), hs[:-1]])                             # the state each step starts from
    pre = xs @ w["W"] + h_before @ w["U"] + w["b"]
    assert np.abs(pre).max() < 3.0                                         # tanh'(3) ~ 0.01: still alive


def test_sequence_step_by_step_equals_reference(sess):
    xs = rnncell.series(STEPS)
    ys, hs = _run(sess, xs, _zeros())
    ref_ys, ref_hs = rnncell.reference(xs, _zeros())
    assert ys.dtype == np.float32 and ys.shape == (STEPS, 4) and hs.shape == (STEPS, 16)
    np.testing.assert_allclose(ys, ref_ys, rtol=0, atol=1e-5)
    np.testing.assert_allclose(hs, ref_hs, rtol=0, atol=1e-5)
    assert np.abs(hs[-1]).max() > 0.1                                      # the state is doing something
    # A random series and a non-zero starting state too.
    rng = np.random.default_rng(5)
    xr = rng.uniform(-1, 1, (STEPS, 8)).astype(np.float32)
    h0 = rng.uniform(-0.5, 0.5, (1, 16)).astype(np.float32)
    for got, want in zip(_run(sess, xr, h0), rnncell.reference(xr, h0)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_same_sequence_twice_is_bit_identical(built, sess):
    xs = rnncell.series(STEPS)
    first = _run(sess, xs, _zeros())
    again = _run(sess, xs, _zeros())
    fresh = _run(_session(built), xs, _zeros())                            # another session, as on another node
    for a, b, c in zip(first, again, fresh):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_resume_from_a_checkpoint_after_step_10_is_bit_identical(built, sess):
    """What issue 19 asks of a stateful job: a run cut after step 10 and resumed
    elsewhere from its checkpointed state ends exactly like one that never stopped."""
    xs = rnncell.series(STEPS)
    ys, hs = _run(sess, xs, _zeros())
    head_ys, head_hs = _run(sess, xs[:10], _zeros())
    # The checkpoint travels as JSON, like a task's outputs: float32 -> float -> float32 is exact.
    checkpoint = json.loads(json.dumps({"h": head_hs[-1:].tolist(), "done": 10}))
    h = np.asarray(checkpoint["h"], dtype=np.float32)
    assert h.tobytes() == hs[9:10].tobytes()
    tail_ys, tail_hs = _run(_session(built), xs[checkpoint["done"]:], h)
    assert np.concatenate([head_ys, tail_ys]).tobytes() == ys.tobytes()
    assert np.concatenate([head_hs, tail_hs]).tobytes() == hs.tobytes()
    assert tail_hs[-1].tobytes() == hs[-1].tobytes()


def test_manifest_samples_reproduce(manifest, sess):
    samples = manifest["samples"]
    xs = rnncell.series(len(samples))
    assert np.array_equal(np.asarray([s["inputs"]["x"][0] for s in samples], np.float32), xs)
    assert samples[0]["inputs"]["h"] == [[0.0] * 16]
    for t, s in enumerate(samples):
        assert s["step"] == t
        if t:
            assert s["inputs"]["h"] == samples[t - 1]["expected"]["h_out"]  # the samples chain
        feed = {k: np.asarray(v, dtype=np.float32) for k, v in s["inputs"].items()}
        y, h = sess.run(["y", "h_out"], feed)
        # Expected values are float64 rounded to 6 decimals; onnxruntime is float32.
        np.testing.assert_allclose(y, np.asarray(s["expected"]["y"]), rtol=0, atol=1e-5)
        np.testing.assert_allclose(h, np.asarray(s["expected"]["h_out"]), rtol=0, atol=1e-5)
    # Chained from zeros by onnxruntime itself, the states stay within the samples' rounding.
    _, hs = _run(sess, xs, _zeros())
    np.testing.assert_allclose(hs, np.asarray([s["expected"]["h_out"][0] for s in samples]), rtol=0, atol=1e-5)


def test_reference_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"xs must be \[T, 8\]"):
        rnncell.reference(np.zeros((3, 7)), _zeros())
    with pytest.raises(ValueError, match="h0 must hold 16 values"):
        rnncell.reference(np.zeros((3, 8)), np.zeros((1, 8)))
    ys, hs = rnncell.reference(np.zeros((3, 1, 8)), np.zeros(16))        # [T, 1, 8] and a flat h0 are fine
    assert ys.shape == (3, 4) and hs.shape == (3, 16)


def test_signature_violations_are_clear(built):
    model = ModelStore(built).get("rnncell")
    ok = {"x": [[0.5] * 8], "h": [[0.0] * 16]}
    assert inputs_from_json(ok, model.inputs, 100)["h"].shape == (1, 16)
    cases = [
        ({"x": [[0.5] * 8] * 2, "h": [[0.0] * 16] * 2}, "dimension 0 is 2, model expects 1"),   # no batches
        ({"x": [[0.5] * 8], "h": [[0.0] * 15]}, "dimension 1 is 15, model expects 16"),
        ({"x": [[0.5] * 8]}, "missing ['h']"),
        ({"x": [0.5] * 8, "h": [[0.0] * 16]}, "rank 1"),
        ({"x": [[float("nan")] * 8], "h": [[0.0] * 16]}, "NaN"),
    ]
    for raw, words in cases:
        with pytest.raises(InputError) as err:
            inputs_from_json(raw, model.inputs, 100)
        assert words in str(err.value), (raw, str(err.value))


async def test_interleaved_sequences_through_the_executor_are_never_batched(built, sess):
    """Four sequences stepped concurrently through an agent's executor: each
    step runs alone (a stateful step must not share a call) and every
    sequence ends bit-identical to running it alone here."""
    ex = Executor(ModelStore(built), workers=1, batch_wait_s=0.02)
    rng = np.random.default_rng(11)
    seqs = [rng.uniform(-1, 1, (8, 8)).astype(np.float32) for _ in range(4)]
    got: dict[int, list] = {}

    async def sequence(i: int) -> None:
        h, ys = _zeros(), []
        for x in seqs[i]:
            r = await ex.run("rnncell", {"x": x.reshape(1, 8), "h": h})
            assert r.batch_size == 1
            h = r.outputs["h_out"]
            ys.append(r.outputs["y"][0])
        got[i] = [np.stack(ys), h]

    async with trio.open_nursery() as n:
        await n.start(ex.serve)
        async with trio.open_nursery() as jobs:
            for i in range(len(seqs)):
                jobs.start_soon(sequence, i)
        n.cancel_scope.cancel()
    for i, xs in enumerate(seqs):
        ys, hs = _run(sess, xs, _zeros())
        assert got[i][0].tobytes() == ys.tobytes() and got[i][1].tobytes() == hs[-1:].tobytes(), i


async def test_a_job_with_the_manifests_state_resumes_bit_identical(built, manifest, sess):
    """The job machinery in process: ``manifest["state"]`` is accepted as the
    job's state, and a 20-step series run as chunks through ``agent.runtime.scan``
    (what an executing satellite does), cut after step 10 with the state
    checkpointed as JSON and resumed on another executor, ends exactly like
    the uninterrupted chunk and like stepping here."""
    store = ModelStore(built)
    loaded = store.get("rnncell")
    xs = rnncell.series(STEPS)
    body = {"model": "rnncell", "inputs": [{"x": x.reshape(1, 8).tolist()} for x in xs], "state": manifest["state"]}
    spec = parse_job(body, loaded, manifest["sha256"], max_elements=1 << 20, max_chunk_bytes=1 << 20,
                     targets=("auto",))
    assert spec.carry == (("h_out", "h"),) and spec.shards == 1
    assert spec.initial["h"].tobytes() == _zeros().tobytes()

    async def chunk(ex: Executor, lo: int, hi: int, state: dict[str, np.ndarray]):
        wire = {k: Tensor.from_array(v) for k, v in (spec.chunk_inputs(lo, hi) | state).items()}
        scan = Scan(hi - lo, spec.carry)
        stacked, carried = scan_inputs(loaded, wire, scan)
        result = await run_scan(loaded, stacked, carried, scan, lambda feeds, left: ex.run("rnncell", feeds, left),
                                None)
        return result.outputs, {inp: result.outputs[out][-1] for out, inp in spec.carry}

    async with trio.open_nursery() as n:
        here, there = Executor(store, workers=1), Executor(ModelStore(built), workers=1)
        await n.start(here.serve)
        await n.start(there.serve)
        whole, _ = await chunk(here, 0, STEPS, spec.initial)
        head, state = await chunk(here, 0, 10, spec.initial)
        checkpoint = json.loads(json.dumps({k: to_json(v) for k, v in state.items()}))
        state = {k: from_json(v, next(s for s in loaded.inputs if s.name == k), 1 << 20) for k, v in checkpoint.items()}
        tail, _ = await chunk(there, 10, STEPS, state)
        n.cancel_scope.cancel()
    ys, hs = _run(sess, xs, _zeros())
    for out, want in (("y", ys), ("h_out", hs)):
        assert whole[out].shape == (STEPS, 1, want.shape[1])
        assert whole[out].tobytes() == want.tobytes(), out
        assert np.concatenate([head[out], tail[out]]).tobytes() == want.tobytes(), out


def _cli_build(out: Path, hashseed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "build", "--out", str(out), "--only", "rnncell"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256((out / "rnncell.onnx").read_bytes()).hexdigest()


def test_byte_identical_rebuild(built, manifest, tmp_path):
    pytest.importorskip("onnx")
    assert _cli_build(tmp_path / "a", "3") == _cli_build(tmp_path / "b", "4242") == manifest["sha256"]
    assert (tmp_path / "a" / "rnncell.json").read_bytes() == (built / "rnncell.json").read_bytes()
