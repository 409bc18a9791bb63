"""Bounded work on real agents: issue 18's ConstantOfShape upload is refused, and a
model that runs past its task's deadline is stopped there by the executor, so the
workers it held serve the next task at once."""

import time

import httpx
import numpy as np
import pytest

from agent.client import Client
from tests.conftest import AUTH, local_fleet
from tests.test_executor import loop_model
from tests.test_model_check import attack

WORKERS = 2


@pytest.fixture(scope="module")
def pair(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("bounds"), models_dir, 2, workers=WORKERS) as running:
        yield running


async def test_an_upload_sized_by_its_inputs_is_refused_naming_the_op(pair):
    _, _, peers, _ = pair
    async with httpx.AsyncClient(base_url=peers["sat-0"].api, timeout=30, headers=AUTH) as http:
        r = await http.put("/v1/models/grow", content=attack())
        assert r.status_code == 400 and "op ConstantOfShape takes its output size" in r.json()["error"], r.text
        assert "grow" not in [m["name"] for m in (await http.get("/v1/models")).json()["models"]]


async def test_runs_past_their_deadline_are_stopped_and_free_the_workers(pair, tmp_path, models_dir):
    """Two Loop tasks (10⁹ iterations each) with a 1 s deadline fill both of sat-1's
    workers; they fail by their deadline, and a digits task right after succeeds
    there (before, each run held its worker for the executor's 30 s default)."""
    _, _, peers, _ = pair
    loop_model(tmp_path / "loop.onnx")
    async with httpx.AsyncClient(base_url=peers["sat-0"].api, timeout=30, headers=AUTH) as http:
        r = await http.put("/v1/models/spin", content=(tmp_path / "loop.onnx").read_bytes())
        assert r.status_code == 201, r.text
    x = {"x": [1.0] * 16}
    async with Client(peers["sat-0"].api, timeout=30) as c:
        warm = await c.submit("spin", x, "sat-1", timeout_s=5)     # sat-1 fetches the model first
        assert (await c.wait(warm["task_id"], timeout=30))["status"] == "failed"
        started = time.monotonic()
        ids = [(await c.submit("spin", x, "sat-1", timeout_s=1.0))["task_id"] for _ in range(WORKERS)]
        recs = [await c.wait(t, timeout=10) for t in ids]
        assert all(r["status"] == "failed" for r in recs), recs
        assert time.monotonic() - started < 1.0 + 1.5
        digits = np.asarray([[0.0] * 64], dtype=np.float32)
        acc = await c.submit("digits", {"input": digits.tolist()}, "sat-1", timeout_s=3.0)
        rec = await c.wait(acc["task_id"], timeout=10)
    assert rec["status"] == "succeeded", rec
    async with httpx.AsyncClient(base_url=peers["sat-1"].api, timeout=30, headers=AUTH) as http:
        r = await http.post("/v2/models/spin/infer", json={
            "inputs": [{"name": "x", "shape": [16], "datatype": "FP32", "data": [1.0] * 16}],
            "parameters": {"timeout_s": 1.0, "target": "sat-1"}})
    assert r.status_code == 504, r.text          # by the executor ("deadline exceeded") or the entry's ledger
