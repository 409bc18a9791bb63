"""Every zoo model through a real fleet: results equal onnxruntime's local output.

Four agent processes with real libp2p links; each zoo model's manifest
samples enter at one node and run on the farthest, and the result must be
bit-identical to a local onnxruntime session with the agents' own options.
Signature violations and a broken .onnx file get clear errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import trio

from agent import zoo
from agent.client import ApiError, Client
from agent.compute.models import session_options
from tests.conftest import AUTH, local_fleet

pytestmark = pytest.mark.slow    # needs the built models

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
N = 4
ENTRY = "sat-0"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    """All zoo models (from models/ where current, else freshly built) plus a broken one."""
    d = tmp_path_factory.mktemp("zoo-fleet-models")
    fresh = None
    for name in zoo.BUILDERS:
        src = MODELS
        if zoo.is_current(MODELS, name) is None:
            fresh = fresh or tmp_path_factory.mktemp("zoo-build")
            zoo.build(fresh, only=[name])
            src = fresh
        manifest = zoo.load_manifest(src, name)
        for f in [manifest["file"], f"{name}.json", *manifest.get("files", {})]:
            (d / f).symlink_to(src / f)
    # Looks like a model, is not one: the store must refuse it with a reason.
    (d / "broken.onnx").write_bytes(b"\x08\x07" + b"not a protobuf graph" * 10)
    return d


@pytest.fixture(scope="module")
def running_fleet(tmp_path_factory, zoo_dir):
    with local_fleet(tmp_path_factory.mktemp("fleet"), zoo_dir, N) as running:
        yield running


def _local(zoo_dir: Path, name: str, inputs: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(zoo_dir / f"{name}.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    feed = {i.name: np.asarray(inputs[i.name], dtype=_DTYPES[i.type]) for i in sess.get_inputs()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _jobs(zoo_dir: Path) -> list[tuple[str, dict]]:
    jobs = []
    for name in ("digits", "cloudmask", "embed", "matmul", "rnncell"):
        samples = json.loads((zoo_dir / f"{name}.json").read_text())["samples"]
        jobs += [(name, s) for s in samples[:2]]
    return jobs


def _assert_equal(name: str, rec: dict, want: dict[str, np.ndarray], exact: bool = True) -> None:
    assert rec["status"] == "succeeded", (name, rec.get("error"))
    assert set(rec["outputs"]) == set(want), name
    for out, ref in want.items():
        got = rec["outputs"][out]
        assert got["dtype"] == ref.dtype.name and got["shape"] == list(ref.shape), (name, out)
        arr = np.asarray(got["data"], dtype=ref.dtype)
        if exact or ref.dtype.kind != "f":
            assert np.array_equal(arr, ref), (name, out)
        else:  # a stacked batch runs other kernels (e.g. GEMM, not GEMV): last-bit differences
            np.testing.assert_allclose(arr, ref, rtol=1e-5, atol=1e-7, err_msg=f"{name}.{out}")


async def test_every_zoo_model_matches_local_inference(running_fleet, zoo_dir):
    """One task in flight at a time, so none is batched: results must be bit-identical."""
    _, _, peers, _ = running_fleet
    target = peers.names()[-1]
    async with Client(peers[ENTRY].api, timeout=60) as c:
        for name, sample in _jobs(zoo_dir):
            acc = await c.submit(name, sample["inputs"], target)
            assert acc["executor"] == target
            rec = await c.wait(acc["task_id"], timeout=90)
            _assert_equal(name, rec, _local(zoo_dir, name, sample["inputs"]))


def _same_shape_tasks(zoo_dir: Path, name: str) -> list[dict]:
    """Four different inputs of one shape: what an executor may stack into one batch."""
    rng = np.random.default_rng(7)
    if name == "matmul":
        return [{"a": rng.standard_normal((8, 16)).astype(np.float32).tolist(),
                 "b": rng.standard_normal((16, 4)).astype(np.float32).tolist()} for _ in range(4)]
    if name == "embed":
        from agent.zoo import textprep
        texts = [s["text"] for s in json.loads((zoo_dir / "embed.json").read_text())["samples"][:4]]
        enc = textprep.encode(texts, zoo_dir / "embed.tokenizer.json")  # padded to one length
        return [{k: v[i:i + 1].tolist() for k, v in enc.items()} for i in range(4)]
    if name == "cloudmask":
        tile = np.asarray(json.loads((zoo_dir / "cloudmask.json").read_text())["samples"][0]["inputs"]["image"])
        return [{"image": tile[:, :, 32 * i:32 * i + 32, :32].tolist()} for i in range(4)]
    samples = json.loads((zoo_dir / f"{name}.json").read_text())["samples"]
    return [s["inputs"] for s in samples[:4]]


@pytest.mark.parametrize("name", ["digits", "cloudmask", "embed", "matmul", "rnncell"])
async def test_concurrent_same_shape_tasks_match_local_inference(running_fleet, zoo_dir, name):
    """Tasks that arrive together may share one onnxruntime call; each must still get its own answer."""
    _, _, peers, _ = running_fleet
    target = peers.names()[-1]
    tasks = _same_shape_tasks(zoo_dir, name)
    manifest = json.loads((zoo_dir / f"{name}.json").read_text())
    batchable = manifest.get("batching", {}).get("batchable") is True
    records: dict[int, dict] = {}

    async def one(i: int, inputs: dict) -> None:
        async with Client(peers[ENTRY].api, timeout=60) as c:
            acc = await c.submit(name, inputs, target)
            records[i] = await c.wait(acc["task_id"], timeout=90)

    async with trio.open_nursery() as n:
        for i, inputs in enumerate(tasks):
            n.start_soon(one, i, inputs)
    for i, inputs in enumerate(tasks):
        # Models that may be batched: equal up to kernel rounding.  Models whose
        # manifest forbids it: bit-identical, as if each ran alone.
        _assert_equal(name, records[i], _local(zoo_dir, name, inputs), exact=not batchable)


@pytest.mark.parametrize("model, inputs, status, words", [
    ("cloudmask", {"image": np.zeros((1, 3, 8, 8)).tolist()}, 400, "dimension 1 is 3, model expects 4"),
    ("cloudmask", {"image": {"dtype": "uint8", "shape": [1, 4, 1, 1], "data": [1, 2, 3, 4]}}, 400, "dtype"),
    ("embed", {"input_ids": [[101.5, 102.0]], "attention_mask": [[1, 1]]}, 400, "without loss"),
    ("embed", {"input_ids": [[101, 102]]}, 400, "missing ['attention_mask']"),
    ("matmul", {"a": [1.0, 2.0], "b": [[1.0], [2.0]]}, 400, "rank 1"),
    ("rnncell", {"x": [[0.5] * 8] * 2, "h": [[0.0] * 16] * 2}, 400, "dimension 0 is 2, model expects 1"),
    ("broken", {"x": [1.0]}, 422, "cannot be loaded"),
])
async def test_bad_zoo_requests_get_clear_errors(running_fleet, model, inputs, status, words):
    _, _, peers, _ = running_fleet
    async with httpx.AsyncClient(base_url=peers["sat-1"].api, headers=AUTH) as http:
        r = await http.post("/v1/tasks", json={"model": model, "inputs": inputs})
        assert r.status_code == status, r.text
        assert words in r.json()["error"]
        assert (await http.get("/v1/health")).json()["status"] == "ok"


async def test_rnncell_time_series_as_a_stateful_job_matches_local_steps(running_fleet, zoo_dir):
    """The zoo's stateful step as a job (issue 19): the manifest's ``state`` as
    the job's, chunks of 5 steps carried across the fleet; every step's outputs
    and the final state equal stepping it here, bit for bit."""
    from agent.zoo import rnncell
    _, _, peers, _ = running_fleet
    manifest = json.loads((zoo_dir / "rnncell.json").read_text())
    xs = rnncell.series(20)
    sess = ort.InferenceSession(str(zoo_dir / "rnncell.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    h, want = np.zeros((1, 16), np.float32), []
    for x in xs:
        y, h = sess.run(["y", "h_out"], {"x": x.reshape(1, 8), "h": h})
        want.append((y, h))
    async with Client(peers[ENTRY].api, timeout=60) as c:
        acc = await c.submit_job("rnncell", [{"x": x.reshape(1, 8)} for x in xs], chunk=5, state=manifest["state"])
        info = await c.wait_job(acc["job_id"], timeout=120)
        assert info["status"] == "succeeded", info
        res = await c.job_result(acc["job_id"])
    assert len(res["outputs"]) == len(xs)
    for t, (out, (y, h_out)) in enumerate(zip(res["outputs"], want)):
        assert out["y"].tobytes() == y.tobytes() and out["h_out"].tobytes() == h_out.tobytes(), t
    assert res["state"][0]["h"].tobytes() == want[-1][1].tobytes()


async def test_matmul_shape_mismatch_fails_the_task_clearly(running_fleet):
    """Signature-valid (all dims dynamic) but unmultipliable: refused at the entry with the reason."""
    _, _, peers, _ = running_fleet
    async with Client(peers[ENTRY].api, timeout=30) as c:
        with pytest.raises(ApiError) as err:
            await c.submit("matmul", {"a": [[1.0, 2.0, 3.0]], "b": [[1.0], [2.0]]}, peers.names()[-1])
    assert err.value.status == 400 and "inner dimensions differ" in err.value.message