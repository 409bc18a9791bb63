"""A real fleet: 12 agent processes, real libp2p links, real onnxruntime.

Tasks enter at several nodes and run on far nodes; every result must equal
onnxruntime's local output, every trace must follow a shortest path, and each
path's measured latency must be at least the physics, and the median path
within 2 ms of it.
"""

import json
import signal
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import trio

from agent.ops import fleet
from agent.client import ApiError, Client
from agent.compute.models import session_options
from mesh.orbit import Constellation, iso_to_jd
from mesh.topology import Topology
from tests.conftest import AUTH, local_fleet

AUTH_LINE = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())

N = 12


@pytest.fixture(scope="module")
def running_fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("fleet"), models_dir, N) as running:
        yield running


def samples(models_dir):
    return json.loads((models_dir / "digits.json").read_text())["samples"]


def local_reference(models_dir, inputs):
    sess = ort.InferenceSession(str(models_dir / "digits.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {"input": np.array(inputs["input"], dtype=np.float32)})))


async def test_tasks_cross_the_mesh_and_match_local_inference(running_fleet, models_dir):
    spec, cfg, peers, _ = running_fleet
    topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)))
    names = peers.names()
    t_now = cfg.clock.orbit_t(time.time())
    snap = topo.snapshot(t_now)
    jobs = []
    for k, entry in enumerate(["sat-0", "sat-5", "sat-7", "sat-10"]):
        far = max(names, key=lambda n: snap.shortest_path(peers[entry].index, peers[n].index)[1])
        for s in samples(models_dir)[2 * k: 2 * k + 2]:
            jobs.append((entry, far, s))
    results = []
    # Two tasks in flight from four entry nodes.  12 agents share 2 cores
    # here; bench/task_overhead.py measures the tail under heavier load
    # (docs/benchmarks.md).
    in_flight = trio.CapacityLimiter(2)

    async def one(entry, target, sample):
        async with in_flight, Client(peers[entry].api) as c:
            acc = await c.submit("digits", sample["inputs"], target)
            assert acc["executor"] == target and acc["entry"] == entry
            results.append((sample, await c.wait(acc["task_id"], timeout=30)))

    async with trio.open_nursery() as n:
        for job in jobs:
            n.start_soon(one, *job)
    assert len(results) == len(jobs)
    excess = []
    for sample, rec in results:
        assert rec["status"] == "succeeded", rec
        ref = local_reference(models_dir, sample["inputs"])
        for name, want in ref.items():
            got = np.array(rec["outputs"][name]["data"], dtype=want.dtype)
            assert np.array_equal(got, want), (name, got, want)
        trace = rec["trace"]
        nodes = [h["node"] for h in trace]
        ex = nodes.index(rec["executor"])
        forward, back = nodes[: ex + 1], nodes[ex:]
        assert forward[0] == back[-1] == rec["entry"]
        assert len(forward) >= 4, "the farthest node is at least 3 hops away in a 3×4 shell"
        for path, legs in ((forward, trace[1: ex + 1]), (back, trace[ex + 1:])):
            idx = [peers[n].index for n in path]
            t_leg = cfg.clock.orbit_t(trace[nodes.index(path[0])]["departed"])
            leg_snap = topo.snapshot(t_leg)
            _, best = leg_snap.shortest_path(idx[0], idx[-1])
            cost = sum(leg_snap.latency(a, b) for a, b in zip(idx, idx[1:]))
            assert cost == pytest.approx(best, rel=1e-3), f"{path} is not a shortest path"
            physics = sum(h["link_expected_ms"] for h in legs)
            measured = sum(h["link_measured_ms"] for h in legs)
            assert measured >= physics - 1e-6, (measured, physics)
            excess.append((measured - physics,
                           f"path {path}: measured {measured:.3f} ms vs physics {physics:.3f} ms; hops: "
                           + "; ".join(f"{h['node']} {h['link_measured_ms']:.3f}/{h['link_expected_ms']:.3f}"
                                       for h in legs)))
            for h in legs:  # each hop's expected delay is the physics at that moment
                assert h["link_expected_ms"] > 20  # demo-12 laser hops are 30–43 ms
    # Emulation error per 3-hop path: typically ~0.1 ms; 12 agents with their
    # membership traffic share 2 cores, so a path now and then waits for a CPU
    # (docs/benchmarks.md has the distribution): the median must stay within
    # 2 ms and no path may be off by a whole link's worth of milliseconds.
    errors = sorted(e for e, _ in excess)
    assert errors[len(errors) // 2] <= 2.0, excess
    assert errors[-1] <= 10.0, max(excess)


@pytest.mark.parametrize("body, status, words", [
    ({"model": "nope", "inputs": {}}, 404, "unknown model"),
    ({"model": "digits", "inputs": {"input": [[1.0] * 63]}}, 400, "dimension 1 is 63"),
    ({"model": "digits", "inputs": {"input": [["a"] * 64]}}, 400, "non-numbers"),
    ({"model": "digits", "inputs": {"input": {"dtype": "int64", "data": [1] * 64}}}, 400, "dtype"),
    ({"model": "digits", "inputs": {"wrong": [[1.0] * 64]}}, 400, "missing"),
    ({"model": "digits", "inputs": {"input": [[1.0] * 64]}, "target": "sat-999"}, 404, "unknown target"),
    ({"model": "digits", "inputs": {"input": [[1.0] * 64]}, "extra": 1}, 400, "unknown fields"),
    ([1, 2], 400, "JSON object"),
])
async def test_bad_requests_get_clear_errors(running_fleet, body, status, words):
    _, _, peers, _ = running_fleet
    async with httpx.AsyncClient(base_url=peers["sat-2"].api, headers=AUTH) as http:
        r = await http.post("/v1/tasks", json=body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]
        assert (await http.get("/v1/health")).json()["status"] == "ok"


async def test_malformed_and_oversized_bodies(running_fleet):
    _, cfg, peers, _ = running_fleet
    async with httpx.AsyncClient(base_url=peers["sat-3"].api, headers=AUTH) as http:
        r = await http.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = await http.post("/v1/tasks", content=b"x" * (cfg.limits.max_body_bytes + 1))
        assert r.status_code == 413 and "limit" in r.json()["error"]
        r = await http.post("/v1/tasks", content=b"[" * 100_000 + b"]" * 100_000)      # a RecursionError, once a 500
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
        r = await http.get("/v1/tasks/doesnotexist")
        assert r.status_code == 404
        assert (await http.get("/v1/health")).json()["status"] == "ok"


async def test_node_view(running_fleet):
    _, cfg, peers, _ = running_fleet
    async with Client(peers["sat-4"].api) as c:
        info = await c.node()
    assert info["node"] == "sat-4" and info["peer_id"] == peers["sat-4"].peer_id
    assert 540 < info["position"]["radius_km"] - 6378.135 < 560
    assert len(info["neighbours"]) == 4 and all(n["link_up"] for n in info["neighbours"])


async def test_restarted_agent_keeps_identity_and_rejoins(running_fleet, models_dir):
    spec, cfg, peers, procs = running_fleet
    victim = "sat-6"
    async with httpx.AsyncClient(timeout=5) as http:
        nbr = (await http.get(peers[victim].api + "/v1/links")).json()["links"][0]["peer"]
        assert (await http.get(peers[nbr].api + "/v1/ready")).status_code == 200
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(5)
    async with httpx.AsyncClient(timeout=5) as http:       # a neighbour's link is down: not ready for probes
        with trio.fail_after(15):
            while (r := await http.get(peers[nbr].api + "/v1/ready")).status_code != 503:
                await trio.sleep(0.2)
        assert r.json()["ready"] is False and r.json()["links_up"] < r.json()["links_total"]
    async with Client(peers["sat-0"].api) as c:
        with pytest.raises(ApiError):
            async with Client(peers[victim].api, timeout=1.0) as dead:
                await dead.health()
        procs[victim] = fleet.start_agent(spec, victim)
        with trio.fail_after(30):
            while True:
                try:
                    async with Client(peers[victim].api, timeout=1.0) as back:
                        if (await back.health())["ready"]:
                            info = await back.node()
                            break
                except ApiError:
                    pass
                await trio.sleep(0.2)
        assert info["peer_id"] == peers[victim].peer_id  # identity persisted in the data dir
        async with httpx.AsyncClient(timeout=5) as http:
            with trio.fail_after(15):
                while (await http.get(peers[nbr].api + "/v1/ready")).status_code != 200:
                    await trio.sleep(0.2)
        acc = await c.submit("digits", samples(models_dir)[0]["inputs"], victim)
        rec = await c.wait(acc["task_id"], timeout=30)
        assert rec["status"] == "succeeded", rec


async def test_an_uploaded_model_runs_on_a_far_node_that_fetches_it_over_the_mesh(running_fleet):
    import hashlib

    from tests.test_model_store import doubler
    _, _, peers, _ = running_fleet
    data = doubler(1.5, pad=(3 << 20) + 12345)          # 4 pieces over the mesh
    sha = hashlib.sha256(data).hexdigest()
    async with httpx.AsyncClient(base_url=peers["sat-0"].api, timeout=60, headers=AUTH) as http:
        r = await http.put("/v1/models/scaler", content=data, headers={"X-Content-SHA256": sha})
        assert r.status_code == 201 and r.json()["sha256"] == sha, r.text
        assert (await http.put("/v1/models/scaler", content=data)).status_code == 200   # same bytes again
        for body, headers, status, words in [
            (b"garbage", {}, 400, "not a loadable ONNX model"),
            (data, {"X-Content-SHA256": "0" * 64}, 400, "sha256 mismatch"),
            (data, {}, 409, "zoo model"),
        ]:
            name = "digits" if status == 409 else "scaler2"
            r = await http.put(f"/v1/models/{name}", content=body, headers=headers)
            assert r.status_code == status and words in r.json()["error"], r.text
    # Over the size limit: refused from the declared length, before any body is read.
    host, port = peers["sat-0"].api.split("//")[1].split(":")
    sock = await trio.open_tcp_stream(host, int(port))
    await sock.send_all(f"PUT /v1/models/huge HTTP/1.1\r\nHost: {host}\r\n{AUTH_LINE}Content-Length: {65 << 20}\r\n\r\n".encode())
    head = b""
    with trio.fail_after(10):
        while b"limit" not in head:
            chunk = await sock.receive_some(4096)
            if not chunk:
                break
            head += chunk
    await sock.aclose()
    assert head.startswith(b"HTTP/1.1 413") and b"exceeds the 67108864-byte limit" in head, head
    async with Client(peers["sat-0"].api) as c:
        acc = await c.submit("scaler", {"x": [[1.0, 2.0, 3.0, 4.0]]}, "sat-6")
        rec = await c.wait(acc["task_id"], timeout=60)
    assert rec["status"] == "succeeded", rec
    assert rec["outputs"]["y"]["data"] == [[1.5, 3.0, 4.5, 6.0]]
    async with Client(peers["sat-6"].api) as c:
        assert "scaler" in (await c.node())["models"]          # it kept the verified copy
    # Addressed by hash (issue 18): sat-9 has its own "scaler"; a task from sat-0 runs
    # sat-0's version there, and sat-9's name still means sat-9's model afterwards.
    mine = doubler(3.0)
    async with httpx.AsyncClient(base_url=peers["sat-9"].api, timeout=60, headers=AUTH) as http:
        r = await http.put("/v1/models/scaler", content=mine)
        assert r.status_code == 201 and r.json()["sha256"] == hashlib.sha256(mine).hexdigest(), r.text
    async with Client(peers["sat-0"].api) as c:
        rec = await c.wait((await c.submit("scaler", {"x": [[1.0, 2.0, 3.0, 4.0]]}, "sat-9"))["task_id"], timeout=60)
    assert rec["status"] == "succeeded" and rec["outputs"]["y"]["data"] == [[1.5, 3.0, 4.5, 6.0]], rec
    async with Client(peers["sat-9"].api) as c:
        rec = await c.wait((await c.submit("scaler", {"x": [[1.0, 2.0, 3.0, 4.0]]}, "sat-9"))["task_id"], timeout=60)
        assert rec["status"] == "succeeded" and rec["outputs"]["y"]["data"] == [[3.0, 6.0, 9.0, 12.0]], rec
        storage = (await c.node())["storage"]["models"]
        assert storage["damaged"] == {} and storage["keep_versions"] == 3
