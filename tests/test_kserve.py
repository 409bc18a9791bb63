"""The Open Inference Protocol with the clients users have (tritonclient, HTTP and gRPC)
against a real four-satellite fleet; outputs compared with onnxruntime called directly."""

import json
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import trio
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from agent.client import Client
from agent.compute.models import session_options
from mesh.orbit import Constellation, iso_to_jd
from mesh.topology import Topology
from tests.conftest import AUTH, local_fleet, with_token

ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("kserve"), models_dir, 4) as running:
        yield running


@pytest.fixture(scope="module")
def digits(models_dir):
    sess = ort.InferenceSession(str(models_dir / "digits.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).uniform(0, 16, (3, 64)).astype(np.float32)
    label, probs = sess.run(None, {"input": x})
    return sess, x, {"label": label, "probabilities": probs}


def _far(fleet) -> str:
    """The satellite most link hops away from sat-0 now."""
    _, cfg, peers, _ = fleet
    snap = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch))).snapshot(cfg.clock.orbit_t(time.time()))
    return max((n for n in peers.names() if n != "sat-0"),
               key=lambda n: len(snap.shortest_path(0, peers[n].index)[0]))


def _http(fleet, node="sat-0"):
    return with_token(th.InferenceServerClient(fleet[2][node].api.split("//", 1)[1], network_timeout=60.0))


def _grpc(fleet, node="sat-0"):
    return with_token(tg.InferenceServerClient(fleet[2][node].grpc))


def _expect_signature(meta, sess):
    def rows(ts):
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in ts]

    def ort_rows(args):
        return [(a.name, ORT_TO_V2[a.type], [d if isinstance(d, int) else -1 for d in a.shape]) for a in args]
    assert rows(meta["inputs"]) == ort_rows(sess.get_inputs())
    assert rows(meta["outputs"]) == ort_rows(sess.get_outputs())


def test_peers_file_lists_a_grpc_port_per_node(fleet):
    spec, _, peers, _ = fleet
    doc = json.loads((spec.directory / "peers.json").read_text())
    assert [n["grpc"] for n in doc["nodes"]] == [f"127.0.0.1:{spec.grpc_base_port + i}" for i in range(4)]


def test_server_and_model_metadata_come_from_the_onnx_file(fleet, digits, models_dir):
    h, g = _http(fleet), _grpc(fleet)
    assert h.is_server_live() and h.is_server_ready() and g.is_server_live() and g.is_server_ready()
    assert "binary_tensor_data" in h.get_server_metadata()["extensions"]
    assert g.get_server_metadata(as_json=True)["name"] == "orbitmesh"
    _expect_signature(h.get_model_metadata("digits"), digits[0])
    _expect_signature(g.get_model_metadata("digits", as_json=True), digits[0])
    cloud = ort.InferenceSession(str(models_dir / "cloudmask.onnx"), providers=["CPUExecutionProvider"])
    _expect_signature(h.get_model_metadata("cloudmask"), cloud)
    for cfg in (h.get_model_config("digits"), g.get_model_config("digits", as_json=True)["config"]):
        assert cfg["platform"] == "onnxruntime_onnx" and int(cfg.get("max_batch_size", 0)) == 0
        assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in cfg["input"]] == \
            [("input", "TYPE_FP32", [-1, 64])]
        assert [t["name"] for t in cfg["output"]] == ["label", "probabilities"]


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_equals_onnxruntime(fleet, digits, binary):
    _, x, want = digits
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    r = _http(fleet).infer("digits", [inp], outputs=outs, parameters={"target": "sat-0"})
    np.testing.assert_array_equal(r.as_numpy("label"), want["label"])
    np.testing.assert_allclose(r.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    p = r.get_response()["parameters"]
    assert p["executor"] == "sat-0" and p["route"] == "sat-0" and p["hops"] == 0


def test_non_finite_outputs_in_json_are_strict_json_and_read_back(fleet):
    """A model may overflow on its own (3e38 × 10 in float32): the /v2 JSON answer stays JSON
    (the strings "Infinity", "NaN", as protobuf's JSON mapping writes them), tritonclient's
    as_numpy reads the floats back, and binary outputs carry the exact values."""
    a = np.array([[3e38, 1.0], [3e38, -3e38], [-3e38, 1.0], [0.5, 0.25]], np.float32)
    b = np.array([[10.0], [10.0]], np.float32)
    want = np.array([[np.inf], [np.nan], [-np.inf], [7.5]], np.float32)
    body = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [4, 2], "data": a.ravel().tolist()},
                       {"name": "b", "datatype": "FP32", "shape": [2, 1], "data": b.ravel().tolist()}],
            "parameters": {"target": "sat-0"}}
    r = httpx.post(f"{fleet[2]['sat-0'].api}/v2/models/matmul/infer", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text

    def refuse(token):
        raise ValueError(f"bare {token} is not JSON")
    doc = json.loads(r.text, parse_constant=refuse)
    assert doc["outputs"][0]["data"] == ["Infinity", "NaN", "-Infinity", 7.5]
    for binary in (False, True):
        ins = [th.InferInput("a", [4, 2], "FP32"), th.InferInput("b", [2, 1], "FP32")]
        ins[0].set_data_from_numpy(a, binary_data=binary)
        ins[1].set_data_from_numpy(b, binary_data=binary)
        res = _http(fleet).infer("matmul", ins, outputs=[th.InferRequestedOutput("c", binary_data=binary)],
                                 parameters={"target": "sat-0"})
        got = res.as_numpy("c")
        assert got.dtype == np.float32 and got.shape == (4, 1)
        np.testing.assert_array_equal(got, want)         # NaN == NaN here, inf == inf


def test_grpc_infer_equals_onnxruntime(fleet, digits):
    _, x, want = digits
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = _grpc(fleet).infer("digits", [inp], parameters={"target": "sat-0"})
    np.testing.assert_array_equal(r.as_numpy("label"), want["label"])
    np.testing.assert_allclose(r.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)


def test_grpc_stream_answers_every_request_and_reports_errors_in_band(fleet, digits):
    import queue
    _, x, want = digits
    answers: queue.Queue = queue.Queue()
    client = _grpc(fleet)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(6):
            inp = tg.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("digits", [inp], request_id=f"r{i}", parameters={"target": "sat-1"})
        bad = tg.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(7)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert sorted(ok) == [f"r{i}" for i in range(6)]
    for r in ok.values():
        np.testing.assert_array_equal(r.as_numpy("label"), want["label"])
    assert len(errors) == 1 and "expects [-1, 64]" in str(errors[0])


def test_routed_to_a_far_satellite_over_both_protocols(fleet, digits):
    _, x, want = digits
    far = _far(fleet)
    hin = th.InferInput("input", list(x.shape), "FP32")
    hin.set_data_from_numpy(x)
    gin = tg.InferInput("input", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    hr = _http(fleet).infer("digits", [hin], parameters={"target": far})
    gr = _grpc(fleet).infer("digits", [gin], parameters={"target": far})
    hp = hr.get_response()["parameters"]
    gp = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in gr.get_response().parameters.items()}
    for r, p in ((hr, hp), (gr, gp)):
        np.testing.assert_array_equal(r.as_numpy("label"), want["label"])
        route = p["route"].split(">")
        assert p["executor"] == far and route[0] == route[-1] == "sat-0" and far in route
        assert p["hops"] >= 2 and p["physics_ms"] > 0 and p["compute_ms"] > 0
        assert p["total_ms"] >= p["physics_ms"] + p["compute_ms"]


def test_without_target_placement_decides(fleet, digits):
    _, x, want = digits
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = _http(fleet).infer("digits", [inp], parameters={"cache": False})
    p = r.get_response()["parameters"]
    assert p["executor"] in fleet[2] and p["placement"].startswith("auto")
    np.testing.assert_array_equal(r.as_numpy("label"), want["label"])


def test_a_repeated_request_is_answered_from_the_entrys_edge_cache(fleet, digits):
    """Same model version, same input bytes, placement left to the fleet: the second answer comes
    from sat-0's cache (no route, no compute), equal to the first; cache=false computes again."""
    _, x, want = digits
    x = x + np.float32(1.0)                       # inputs no other test sends
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    first = _http(fleet).infer("digits", [inp])
    again = _http(fleet).infer("digits", [inp])
    computed = _http(fleet).infer("digits", [inp], parameters={"cache": False})
    p1, p2, p3 = (r.get_response()["parameters"] for r in (first, again, computed))
    assert not p1["placement"].startswith("edge cache") and p1["compute_ms"] > 0
    assert p2["placement"].startswith("edge cache: computed by") and p2["compute_ms"] == 0 and p2["route"] == "sat-0"
    assert not p3["placement"].startswith("edge cache") and p3["compute_ms"] > 0
    for r in (again, computed):
        np.testing.assert_array_equal(r.as_numpy("label"), first.as_numpy("label"))
    metrics = httpx.get(f"{fleet[2]['sat-0'].api}/metrics", timeout=10).text
    hits = [line for line in metrics.splitlines() if line.startswith('orbitmesh_edge_cache_lookups_total{node="sat-0",result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_an_idempotency_key_makes_a_retry_get_the_same_task(fleet, digits):
    _, x, want = digits
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    h = _http(fleet)
    first, again = (h.infer("digits", [inp], parameters={"idempotency_key": "kserve-retry-1", "target": "sat-1"})
                    for _ in range(2))
    ids = [r.get_response()["parameters"]["task_id"] for r in (first, again)]
    assert ids[0] == ids[1]
    np.testing.assert_array_equal(again.as_numpy("label"), want["label"])
    plain = [h.infer("digits", [inp]).get_response()["parameters"]["task_id"] for _ in range(2)]
    assert plain[0] != plain[1]


def test_cloudmask_binary_equals_onnxruntime(fleet, models_dir):
    sess = ort.InferenceSession(str(models_dir / "cloudmask.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(1, 4, 64, 64)).astype(np.float32)
    inp = tg.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = _grpc(fleet, "sat-1").infer("cloudmask", [inp], parameters={"target": "sat-1"}, client_timeout=60)
    want = sess.run(None, {"image": x})[0]
    np.testing.assert_array_equal(r.as_numpy("mask"), want)
    # JSON both ways: 330 KB of request text and a 4096-value answer, parsed and printed off the event loop
    hin = th.InferInput("image", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=False)
    out = [th.InferRequestedOutput("mask", binary_data=False)]
    hr = _http(fleet, "sat-1").infer("cloudmask", [hin], outputs=out, parameters={"target": "sat-1"})
    np.testing.assert_array_equal(hr.as_numpy("mask"), want)


def test_repository_index_load_and_unload(fleet):
    h, g = _http(fleet, "sat-2"), _grpc(fleet, "sat-2")
    names = {m["name"] for m in h.get_model_repository_index()}
    assert {"digits", "cloudmask"} <= names
    h.unload_model("matmul")
    assert not h.is_model_ready("matmul") and not g.is_model_ready("matmul")
    state = {m["name"]: m["state"] for m in h.get_model_repository_index()}
    assert state["matmul"] == "UNAVAILABLE" and state["digits"] == "READY"
    g.load_model("matmul")
    assert h.is_model_ready("matmul")
    with pytest.raises(InferenceServerException, match="unknown model"):
        g.unload_model("no-such-model")


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_bad_input_gets_the_right_status_and_the_agent_stays_healthy(fleet, digits):
    h, g = _http(fleet), _grpc(fleet)
    x = digits[1]
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        h.get_model_metadata("nope")
    assert _status(e.value) == "404"
    with pytest.raises(InferenceServerException) as e:
        g.get_model_metadata("nope")
    assert _status(e.value) == "StatusCode.NOT_FOUND"
    for client, mod in ((h, th), (g, tg)):
        wrong_type = mod.InferInput("input", list(x.shape), "FP64")
        wrong_type.set_data_from_numpy(x.astype(np.float64))
        with pytest.raises(InferenceServerException, match="datatype FP64, model 'digits' expects FP32"):
            client.infer("digits", [wrong_type])
        wrong_shape = mod.InferInput("input", [1, 32], "FP32")
        wrong_shape.set_data_from_numpy(np.zeros((1, 32), np.float32))
        with pytest.raises(InferenceServerException, match=r"expects \[-1, 64\]"):
            client.infer("digits", [wrong_shape])
    api = fleet[2]["sat-0"].api
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    truncated = httpx.post(f"{api}/v2/models/digits/infer", content=head + b"\0" * 100,
                           headers={"Inference-Header-Content-Length": str(len(head)), **AUTH})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    huge = httpx.post(f"{api}/v2/models/digits/infer", content=b"\0" * (16 * 1024 * 1024 + 1), timeout=30,
                      headers=AUTH)
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    with pytest.raises(InferenceServerException) as e:
        big = tg.InferInput("input", [65536, 64], "FP32")
        big.set_data_from_numpy(np.zeros((65536, 64), np.float32))
        g.infer("digits", [big])
    assert _status(e.value) == "StatusCode.RESOURCE_EXHAUSTED"
    unknown = httpx.post(f"{api}/v2/models/nope/infer", json={"inputs": []}, headers=AUTH)
    assert httpx.post(f"{api}/v2/models/digits/infer", json={"inputs": []}).status_code == 401
    assert unknown.status_code == 404 and unknown.json() == {"error": unknown.json()["error"]}
    assert httpx.get(f"{api}/v2/health/ready").json() == {"ready": True}
    ok = th.InferInput("input", list(x.shape), "FP32")
    ok.set_data_from_numpy(x)
    np.testing.assert_array_equal(h.infer("digits", [ok]).as_numpy("label"), digits[2]["label"])


async def test_sdk_speaks_v2_and_v1_binary_tasks(fleet, digits):
    _, x, want = digits
    far = _far(fleet)
    async with Client(fleet[2]["sat-0"].api) as c:
        meta = await c.model_metadata("digits")
        assert meta["inputs"][0]["shape"] == [-1, 64]
        for binary in (True, False):
            res = await c.infer("digits", {"input": x}, target=far, binary=binary)
            assert isinstance(res.outputs["label"], np.ndarray) and res.parameters["executor"] == far
            np.testing.assert_array_equal(res.outputs["label"], want["label"])
            np.testing.assert_allclose(res.outputs["probabilities"], want["probabilities"], rtol=1e-6)
        acc = await c.submit("digits", {"input": x}, target=far)
        done = await c.wait(acc["task_id"], timeout=30)
        assert done["status"] == "succeeded" and done["executor"] == far
        assert done["outputs"]["label"]["data"] == want["label"].tolist()


async def test_grpc_pushes_back_beyond_its_limit_instead_of_queueing():
    """With one call allowed in flight, a second is refused with RESOURCE_EXHAUSTED at once."""
    from agent.serve.kserve_grpc import serve_grpc
    from agent.serve.oip_codec import InferRequest

    release = trio.Event()

    class SlowService:
        def check_known(self, name, version):
            pass

        async def infer(self, name, version, req: InferRequest):
            await release.wait()
            return {"y": np.ones(2, np.float32)}, {"executor": "here"}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_grpc(
            SlowService(), "127.0.0.1", 0, max_message_bytes=1 << 20, max_concurrent=1, task_status=task_status))
        client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tg.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.zeros(1, np.float32))
        results = {}

        def first():
            results["first"] = client.infer("m", [inp]).as_numpy("y")
        nursery.start_soon(trio.to_thread.run_sync, first)
        await trio.sleep(0.5)
        with pytest.raises(InferenceServerException) as e:
            await trio.to_thread.run_sync(lambda: client.infer("m", [inp], client_timeout=5))
        assert _status(e.value) == "StatusCode.RESOURCE_EXHAUSTED"
        release.set()
        with trio.fail_after(10):
            while "first" not in results:
                await trio.sleep(0.05)
        np.testing.assert_array_equal(results["first"], np.ones(2, np.float32))
        client.close()
        nursery.cancel_scope.cancel()


def test_repository_index_takes_no_body_or_json_and_refuses_other_bytes(fleet):
    url = f"{fleet[2]['sat-0'].api}/v2/repository/index"
    assert httpx.post(url, headers=AUTH, timeout=10).status_code == 200
    assert httpx.post(url, headers=AUTH, content=b"{}", timeout=10).status_code == 200
    blank = httpx.post(url, headers={**AUTH, "Content-Type": "application/json"}, content=b" \t\r\n", timeout=10)
    assert blank.status_code == 400 and "error" in blank.json()      # whitespace alone is no JSON document (RFC 8259)
    bad = httpx.post(url, headers={**AUTH, "Content-Type": "application/json"}, content=b"\x0c", timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()          # a form feed is not JSON (schemathesis found it)
