"""The Open Inference Protocol codec (agent/serve/oip_codec.py) and the gRPC messages: pure, no fleet."""

import json

import numpy as np
import pytest

from agent.serve.kserve_grpc import request_from_proto, response_to_proto
from agent.serve.oip_codec import (InferRequest, OipError, check_inputs, decode_infer_response, decode_task_body,
                             encode_infer_request, encode_infer_response, encode_task_body, parse_infer)
from agent.serve.oip_proto import METHODS, POOL
from agent.compute.tensors import TensorSpec

DIGITS_IN = [TensorSpec("input", "float32", (None, 64))]


def test_binary_request_round_trips_and_checks_against_the_signature():
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    body, header = encode_infer_request({"input": x}, parameters={"target": "sat-3"})
    req = parse_infer(body, str(header))
    assert req.parameters == {"target": "sat-3", "binary_data_output": True} and req.binary_default
    np.testing.assert_array_equal(req.inputs["input"], x)
    check_inputs(req.inputs, DIGITS_IN, "digits")


def test_json_request_takes_flat_or_nested_data():
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [[1.5] * 64]}],
           "outputs": [{"name": "label"}]}
    req = parse_infer(json.dumps(doc).encode(), None)
    assert req.inputs["input"].dtype == np.float32 and req.inputs["input"].shape == (1, 64)
    assert req.outputs == ["label"] and req.binary_outputs == {"label": False}


@pytest.mark.parametrize("tamper, message", [
    (lambda b, h: (b[:-4], h), "truncated"),
    (lambda b, h: (b + b"xx", h), "follow the last tensor"),
    (lambda b, h: (b, str(len(b) + 1)), "only"),
    (lambda b, h: (b, "ten"), "not an integer"),
])
def test_broken_binary_bodies_are_400_with_the_reason(tamper, message):
    body, header = encode_infer_request({"input": np.zeros((1, 64), np.float32)})
    body, header = tamper(body, str(header))
    with pytest.raises(OipError, match=message) as err:
        parse_infer(body, header)
    assert err.value.status == 400


@pytest.mark.parametrize("arr, message", [
    (np.zeros((1, 64), np.float64), "datatype FP64, model 'digits' expects FP32"),
    (np.zeros((1, 63), np.float32), r"shape \[1, 63\], model 'digits' expects \[-1, 64\]"),
])
def test_wrong_datatype_or_shape_is_400_naming_what_the_model_expects(arr, message):
    req = parse_infer(*_encoded({"input": arr}))
    with pytest.raises(OipError, match=message) as err:
        check_inputs(req.inputs, DIGITS_IN, "digits")
    assert err.value.status == 400


def _encoded(inputs):
    body, header = encode_infer_request(inputs)
    return body, str(header)


def test_json_data_that_does_not_fit_its_shape_or_type_is_400():
    for t, message in [({"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 63}, "63 values"),
                       ({"name": "input", "datatype": "INT8", "shape": [1], "data": [300]}, "outside the range"),
                       ({"name": "input", "datatype": "INT32", "shape": [1], "data": [1.5]}, "without loss"),
                       ({"name": "input", "datatype": "STRING", "shape": [1], "data": [1]}, "not one of")]:
        with pytest.raises(OipError, match=message):
            parse_infer(json.dumps({"inputs": [t]}).encode(), None)


def test_response_mixes_binary_and_json_outputs_and_decodes_back():
    outs = {"label": np.array([7], np.int64), "probabilities": np.full((1, 10), 0.1, np.float32)}
    req = InferRequest(id="r1", outputs=["probabilities", "label"], binary_outputs={"probabilities": True})
    body, header = encode_infer_response("digits", req, outs, {"executor": "sat-2"})
    assert header is not None and json.loads(body[:header])["id"] == "r1"
    got, params = decode_infer_response(body, str(header))
    assert list(got) == ["probabilities", "label"] and params == {"executor": "sat-2"}
    for k in outs:
        np.testing.assert_array_equal(got[k], outs[k])


def _strict(text):
    """Python's json.loads without its extensions: NaN/Infinity tokens are not JSON."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_non_finite_json_outputs_are_strict_json_strings_that_decode_back(dtype):
    c = np.array([[np.inf], [np.nan], [-np.inf], [1.5]], dtype)
    outs = {"c": c, "n": np.array([3], np.int64)}
    body, header = encode_infer_response("matmul", InferRequest(), outs, {})
    assert header is None
    doc = _strict(body)                                  # a strict parser reads every byte of it
    assert doc["outputs"][0]["data"] == ["Infinity", "NaN", "-Infinity", 1.5]
    assert doc["outputs"][1]["data"] == [3]
    assert b"NaN," not in body.replace(b'"NaN"', b"")     # no bare token anywhere
    got, _ = decode_infer_response(body, None)           # the SDK reads the floats back
    np.testing.assert_array_equal(got["c"], c)
    assert got["c"].dtype == c.dtype
    # tritonclient's as_numpy does np.array(data, dtype): the same values
    np.testing.assert_array_equal(np.array(doc["outputs"][0]["data"], dtype).reshape(c.shape), c)
    # binary outputs carry the exact bits, NaN's included
    body, header = encode_infer_response("matmul", InferRequest(binary_default=True), outs, {})
    got, _ = decode_infer_response(body, str(header))
    assert got["c"].tobytes() == c.tobytes()


def test_a_float_input_that_says_nan_is_still_refused():
    """Only responses use the strings: a request's float data stays numbers, finite ones."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": ["NaN"]}]})
    with pytest.raises(OipError, match="non-numbers"):
        parse_infer(body.encode(), None)


def test_v1_task_body_with_binary_tensors_round_trips():
    x = np.random.default_rng(1).random((1, 4, 8, 8), dtype=np.float32)
    body, header = encode_task_body({"model": "cloudmask", "target": "sat-1"}, {"image": x})
    task = decode_task_body(body, str(header))
    assert task["model"] == "cloudmask" and task["target"] == "sat-1"
    np.testing.assert_array_equal(task["inputs"]["image"], x)
    with pytest.raises(OipError, match="truncated"):
        decode_task_body(body[:-1], str(header))


def test_grpc_request_raw_or_typed_contents_and_response():
    Req = METHODS["ModelInfer"][0]
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    raw = Req(model_name="digits", inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 64]}],
              raw_input_contents=[x.tobytes()])
    typed = Req(model_name="digits", inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                              "contents": {"fp32_contents": x.ravel().tolist()}}])
    for msg in (raw, typed):
        np.testing.assert_array_equal(request_from_proto(msg).inputs["input"], x)
    fp16 = Req(model_name="m", inputs=[{"name": "a", "datatype": "FP16", "shape": [1]}])
    with pytest.raises(OipError, match="only as raw_input_contents"):
        request_from_proto(fp16)
    short = Req(model_name="digits", inputs=raw.inputs, raw_input_contents=[x.tobytes()[:-1]])
    with pytest.raises(OipError, match="needs 256"):
        request_from_proto(short)
    resp = response_to_proto("digits", request_from_proto(raw), {"label": np.array([3], np.int64)},
                              {"hops": 2, "route": "sat-0>sat-1>sat-0", "physics_ms": 1.5})
    assert resp.outputs[0].datatype == "INT64" and np.frombuffer(resp.raw_output_contents[0], "<i8")[0] == 3
    assert resp.parameters["hops"].int64_param == 2 and resp.parameters["physics_ms"].double_param == 1.5


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED


def test_our_messages_are_wire_compatible_with_tritonclients():
    """Every field we declare has the number and type tritonclient's own protocol files give it."""
    from tritonclient.grpc import service_pb2 as theirs
    checked = 0
    for name in ("ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "InferParameter",
                 "InferTensorContents", "RepositoryIndexResponse", "RepositoryModelLoadRequest",
                 "ServerMetadataResponse", "ModelReadyRequest", "ModelConfigResponse",
                 "ModelStreamInferResponse"):
        ours, their = POOL.FindMessageTypeByName(f"inference.{name}"), theirs.DESCRIPTOR.message_types_by_name[name]
        stack = [(ours, their)]
        while stack:
            a, b = stack.pop()
            for f in a.fields:
                g = b.fields_by_name[f.name]
                assert (f.number, f.type, _repeated(f)) == (g.number, g.type, _repeated(g)), f"{a.full_name}.{f.name}"
                checked += 1
                if f.message_type is not None:
                    stack.append((f.message_type, g.message_type))
    assert checked > 60
    service = POOL.FindServiceByName("inference.GRPCInferenceService")
    assert {m.name for m in service.methods} <= set(theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
                                                    .methods_by_name)


@pytest.mark.parametrize("header", [None, "200005"])
def test_json_nested_too_deeply_is_a_400_not_a_crash(header):
    body = b"[" * 100_000 + b"]" * 100_000 + (b"x" * 5 if header else b"")
    with pytest.raises(OipError, match="nested too deeply") as err:
        parse_infer(body, header)
    assert err.value.status == 400
