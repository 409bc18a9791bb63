"""Jobs on 8 real agents: sharded across satellites, a killed satellite's shard moves, a killed home resumes.

Every output is compared with onnxruntime run here on the same input, and
each input's output must be there exactly once, whatever moved.
"""

import json
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import trio

from agent.ops.chaos_cli import LocalNodeChaos
from agent.client import ApiError, Client
from tests.conftest import local_fleet

N = 8


@pytest.fixture(scope="module")
def jfleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("jobfleet"), models_dir, N) as (spec, cfg, peers, _):
        yield spec, peers


def digits_inputs(models_dir, n):
    samples = json.loads((models_dir / "digits.json").read_text())["samples"]
    return [np.asarray(samples[i % len(samples)]["inputs"]["input"], np.float32) for i in range(n)]


def reference(models_dir, xs):
    sess = ort.InferenceSession(str(models_dir / "digits.onnx"), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"input": x}) for x in xs]


def assert_outputs_equal_onnxruntime(models_dir, xs, result):
    assert len(result["outputs"]) == len(xs)            # each input once, none twice
    for x, got, (label, probs) in zip(xs, result["outputs"], reference(models_dir, xs)):
        assert np.array_equal(got["label"], label)
        assert np.allclose(got["probabilities"], probs, rtol=1e-5, atol=1e-6)


def assert_resent_within_what_was_in_flight(info):
    for s in info["shards"]:
        moves = len(s["moves"]) - 1
        assert s["resent"] <= moves * info["window"] * info["chunk"], s


async def answering(url):
    with trio.fail_after(60):
        while True:
            try:
                async with Client(url) as c:
                    return await c.health()
            except ApiError:
                await trio.sleep(0.3)


async def wait_for(c, job_id, done_at_least):
    with trio.fail_after(60):
        while True:
            info = await c.job(job_id)
            if info["done"] >= done_at_least or info["status"] != "running":
                return info
            await trio.sleep(0.05)


async def test_a_job_is_sharded_over_satellites_and_every_output_equals_onnxruntime(jfleet, models_dir):
    spec, peers = jfleet
    xs = digits_inputs(models_dir, 120)
    async with Client(peers["sat-2"].api) as c:
        acc = await c.submit_job("digits", [{"input": x} for x in xs], shards=4, chunk=5)
        assert acc["job_id"].startswith("sat-2-job-") and acc["status"] == "running" and len(acc["shards"]) == 4
        info = await c.wait_job(acc["job_id"], 60)
        result = await c.job_result(acc["job_id"])
    assert info["status"] == "succeeded" and info["done"] == 120 and info["resent"] == 0
    assert len(info["ran_on"]) >= 3 and sum(info["ran_on"].values()) == 120      # spread, each input once
    assert len({s["node"] for s in info["shards"]}) == 4                          # one satellite per shard
    assert_outputs_equal_onnxruntime(models_dir, xs, result)


async def test_binary_inputs_make_the_same_job(jfleet, models_dir):
    spec, peers = jfleet
    xs = digits_inputs(models_dir, 30)
    async with Client(peers["sat-6"].api) as c:
        acc = await c.submit_job("digits", {"input": np.stack(xs)}, shards=2, chunk=4)   # binary tensors
        info = await c.wait_job(acc["job_id"], 60)
        result = await c.job_result(acc["job_id"])
    assert info["status"] == "succeeded" and info["inputs"] == 30
    assert_outputs_equal_onnxruntime(models_dir, xs, result)


async def test_a_killed_satellites_shard_moves_and_resumes_from_its_checkpoint(jfleet, models_dir):
    spec, peers = jfleet
    xs = digits_inputs(models_dir, 400)
    chaos = LocalNodeChaos(spec.directory)
    async with Client(peers["sat-0"].api) as c:
        acc = await c.submit_job("digits", [{"input": x} for x in xs], shards=4, chunk=2, window=1)
        info = await wait_for(c, acc["job_id"], 40)
        assert info["status"] == "running", "the job ended before a satellite could be killed under it"
        victim = next(s for s in info["shards"] if s["node"] != "sat-0" and s["done"] < s["inputs"][1] - s["inputs"][0])
        killed_at = time.time()
        await trio.to_thread.run_sync(chaos.run, "kill", victim["node"])
        try:
            info = await c.wait_job(acc["job_id"], 90)
            result = await c.job_result(acc["job_id"])
            metrics = (await c._http.get("/metrics")).text
        finally:
            await trio.to_thread.run_sync(chaos.run, "restart", victim["node"])
            await answering(peers[victim["node"]].api)         # back for the tests after this one
    assert info["status"] == "succeeded", info
    shard = info["shards"][victim["shard"]]
    move = next(m for m in shard["moves"] if m["from"] == victim["node"])
    assert move["to"] != victim["node"] and move["resume_at"] >= victim["checkpoint"]
    assert move["at"] - killed_at < 10, f"the shard moved {move['at'] - killed_at:.1f} s after the kill"
    assert_resent_within_what_was_in_flight(info)
    assert_outputs_equal_onnxruntime(models_dir, xs, result)
    moved = [line for line in metrics.splitlines() if line.startswith('orbitmesh_job_shard_moves_total{node="sat-0"}')]
    assert moved and float(moved[0].split()[-1]) >= 1


async def test_a_killed_home_resumes_its_job_from_its_journal(jfleet, models_dir):
    spec, peers = jfleet
    xs = digits_inputs(models_dir, 300)
    chaos = LocalNodeChaos(spec.directory)
    async with Client(peers["sat-5"].api) as c:
        acc = await c.submit_job("digits", [{"input": x} for x in xs], shards=3, chunk=2, window=1,
                                 idempotency_key="home-restart-1")
        before = await wait_for(c, acc["job_id"], 30)
        assert before["status"] == "running"
    await trio.to_thread.run_sync(chaos.run, "kill", "sat-5")
    await trio.to_thread.run_sync(chaos.run, "restart", "sat-5")
    with trio.fail_after(60):
        while True:
            try:
                async with Client(peers["sat-5"].api) as c:
                    again = await c.submit_job("digits", [{"input": x} for x in xs], idempotency_key="home-restart-1")
                    break
            except ApiError as exc:
                assert exc.status in (0, 503), exc
                await trio.sleep(0.5)
    assert again["job_id"] == acc["job_id"]              # the same key is the same job, not a second one
    async with Client(peers["sat-5"].api) as c:
        info = await c.wait_job(acc["job_id"], 90)
        result = await c.job_result(acc["job_id"])
    assert info["status"] == "succeeded", info
    resumed = [m for s in info["shards"] for m in s["moves"] if "home restarted" in m["why"]]
    assert resumed and all(m["to"] != "sat-5" for m in resumed)     # not onto itself before it knows the fleet
    assert_outputs_equal_onnxruntime(models_dir, xs, result)


async def test_a_dead_homes_job_is_taken_over_by_the_neighbour_that_keeps_its_copy(jfleet, models_dir):
    spec, peers = jfleet
    xs = digits_inputs(models_dir, 400)
    chaos = LocalNodeChaos(spec.directory)
    async with Client(peers["sat-6"].api) as c:
        acc = await c.submit_job("digits", [{"input": x} for x in xs], shards=3, chunk=2, window=1)
        job_id = acc["job_id"]
        with trio.fail_after(30):     # its keeper holds every input (then it can take the job over)
            while True:
                info = await c.job(job_id)
                keeper = (info["copy"] or {}).get("keeper")
                if keeper:
                    async with Client(peers[keeper].api) as k:
                        kept = {j["job_id"]: j for j in (await k.jobs())["kept"]}
                    if kept.get(job_id, {}).get("inputs_held") == 400:
                        break
                await trio.sleep(0.1)
    assert info["status"] == "running", "the job ended before its home could be killed"
    assert keeper != "sat-6" and int(keeper.split("-")[1]) < N
    await trio.to_thread.run_sync(chaos.run, "kill", "sat-6")
    killed_at = time.time()
    try:
        async with Client(peers[keeper].api) as k:
            with trio.fail_after(90):
                while True:
                    try:
                        taken = await k.job(job_id)
                        break
                    except ApiError as exc:
                        assert exc.status == 404 and "keeps its copy" in exc.message, exc.message
                        await trio.sleep(0.2)
            took_over_s = time.time() - killed_at
            cli = [sys.executable, "-m", "agent", "--dir", str(spec.directory), "--models", str(spec.models)]
            shown = await trio.to_thread.run_sync(lambda: subprocess.run(
                cli + ["job", "status", job_id], capture_output=True, text=True, timeout=120))
            info = await k.wait_job(job_id, 120)
            result = await k.job_result(job_id)
            listed = await trio.to_thread.run_sync(lambda: subprocess.run(
                cli + ["job", "--node", keeper, "list"], capture_output=True, text=True, timeout=60))
    finally:
        await trio.to_thread.run_sync(chaos.run, "restart", "sat-6")
        await answering(peers["sat-6"].api)
    print(f"take-over {took_over_s:.1f} s after the kill (membership's verdict + the grace)")
    assert taken["taken_from"] == "sat-6" and taken["home"] == keeper
    assert shown.returncode == 0 and f"job {job_id}" in shown.stdout, shown.stdout + shown.stderr
    assert f"{job_id}  copy kept for sat-6" in listed.stdout and "taken over" in listed.stdout, listed.stdout
    assert info["status"] == "succeeded", info
    assert_outputs_equal_onnxruntime(models_dir, xs, result)
    resumed = [m for s in info["shards"] for m in s["moves"] if f"taken over by {keeper}" in m["why"]]
    assert resumed
    async with Client(peers["sat-6"].api) as c:      # back: the keeper tells it, and it yields
        with trio.fail_after(60):
            while (old := await c.job(job_id))["status"] == "running":
                await trio.sleep(0.5)
    assert old["status"] == "handed_over" and old["handed_to"] == keeper, old


async def test_bad_jobs_get_clear_errors_and_a_job_is_found_at_its_home(jfleet, models_dir):
    spec, peers = jfleet
    x = digits_inputs(models_dir, 1)[0].tolist()
    async with Client(peers["sat-1"].api) as c:
        for body, status, words in [
            ({"model": "nope", "inputs": [{"input": x}]}, 404, "unknown model"),
            ({"model": "digits", "inputs": [{"input": x}, {"input": x + x}]}, 400, "share their shapes"),
            ({"model": "digits", "inputs": [{"input": x}], "state": {"carry": {"label": "input"}}}, 400, "cannot feed"),
            ({"model": "digits"}, 400, "non-empty list"),
        ]:
            with pytest.raises(ApiError) as exc:
                await c._call("POST", "/v1/jobs", json=body)
            assert exc.value.status == status and words in exc.value.message, exc.value.message
        acc = await c.submit_job("digits", [{"input": x}] * 2000, shards=2, chunk=1, window=1)
        cancelled = await c.cancel_job(acc["job_id"])
        assert cancelled["status"] == "cancelled"
        with pytest.raises(ApiError) as exc:
            await c.job_result(acc["job_id"])
        assert exc.value.status == 409 and "cancelled" in exc.value.message
        assert acc["job_id"] in [j["job_id"] for j in (await c.jobs())["jobs"]]
    async with Client(peers["sat-3"].api) as other:
        with pytest.raises(ApiError) as exc:
            await other.job(acc["job_id"])
        assert exc.value.status == 404 and "sat-1" in exc.value.message


def test_the_cli_submits_shows_progress_and_writes_the_result(jfleet, tmp_path):
    spec, peers = jfleet
    cli = [sys.executable, "-m", "agent", "--dir", str(spec.directory), "--models", str(spec.models)]
    r = subprocess.run(cli + ["job", "--node", "sat-4", "submit", "digits", "--samples", "60", "--shards", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "60/60 inputs  succeeded" in r.stdout and "shard" in r.stdout, r.stdout
    job_id = r.stdout.split()[1]
    r = subprocess.run(cli + ["job", "result", job_id, "--out", str(tmp_path / "out.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "out.json").read_text())["outputs"]) == 60
    r = subprocess.run(cli + ["job", "status", "sat-4-job-0000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no job" in r.stderr
