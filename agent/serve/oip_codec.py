"""Open Inference Protocol (KServe v2) tensors <-> numpy, for HTTP and gRPC.

Pure: bytes and dicts in, arrays and bytes out; no sockets, no node.  Every
malformed request becomes an :class:`OipError` whose ``status`` is the HTTP
status the protocol's error format answers with (gRPC maps it to a code), so
a bad tensor is a clear 400 at the edge, never an exception deeper in.

The binary tensor data extension: a JSON header of ``Inference-Header-Content-Length``
bytes, then each binary tensor's raw little-endian row-major bytes in the
order of the header's tensors that carry ``parameters.binary_data_size``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.compute.tensors import NON_FINITE, InputError, TensorSpec, cast_checked

# The protocol's datatypes that orbitmesh carries (ONNX's numeric types; BYTES is not one).
V2_TO_NP = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
            "FP16": "float16", "FP32": "float32", "FP64": "float64"}
NP_TO_V2 = {v: k for k, v in V2_TO_NP.items()}
MAX_DIMS = 8
HEADER_LENGTH = "inference-header-content-length"


class OipError(Exception):
    """A request the protocol refuses; ``status`` is the HTTP status (404, 400, 413, 503, ...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """A decoded infer request: typed arrays by input name, in the request's order."""

    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)          # requested by name; empty = all
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_default: bool = False                              # parameters.binary_data_output


def v2_datatype(np_dtype: str) -> str:
    return NP_TO_V2[np_dtype]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """A model's tensor as the protocol describes it (-1 = a dimension of any size)."""
    return {"name": spec.name, "datatype": v2_datatype(spec.dtype),
            "shape": [-1 if d is None else d for d in spec.shape]}


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise OipError(400, f"{where}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    return tuple(raw)


def _dtype(raw: Any, where: str) -> np.dtype:
    name = V2_TO_NP.get(raw) if isinstance(raw, str) else None
    if name is None:
        raise OipError(400, f"{where}: datatype {raw!r} is not one of {', '.join(V2_TO_NP)}")
    return np.dtype(name).newbyteorder("<")


def array_from_bytes(data: bytes | memoryview, datatype: str, shape: list[int] | tuple[int, ...],
                     where: str) -> np.ndarray:
    """Raw little-endian row-major bytes as an array; a size that does not fit the shape is a 400."""
    dt = _dtype(datatype, where)
    shp = _shape(list(shape), where)
    need = math.prod(shp) * dt.itemsize
    if len(data) != need:
        raise OipError(400, f"{where}: {len(data)} bytes of data, but {datatype} {list(shp)} needs {need}")
    return np.frombuffer(data, dtype=dt).reshape(shp)


def array_from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as an array of ``shape``."""
    dt = _dtype(datatype, where)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise OipError(400, f"{where}: 'data' is ragged (nested rows of different lengths)") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise OipError(400, f"{where}: 'data' holds non-numbers; {datatype} needs numbers")
    if arr.size != math.prod(shape):
        raise OipError(400, f"{where}: {arr.size} values in 'data', but shape {list(shape)} holds {math.prod(shape)}")
    if arr.size and ((dt.kind in "iu" and arr.dtype.kind not in "iub") or (dt.kind == "b" and arr.dtype.kind != "b")):
        raise OipError(400, f"{where}: values of kind {arr.dtype.name} cannot be {datatype} without loss")
    if dt.kind in "iu" and arr.size:
        info = np.iinfo(dt)
        if arr.min() < info.min or arr.max() > info.max:
            raise OipError(400, f"{where}: values outside the range of {datatype}")
    try:
        return cast_checked(arr, dt, where).reshape(shape)
    except InputError as exc:
        raise OipError(400, str(exc)) from None


def split_binary(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary tail of a body (no header length: all JSON)."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise OipError(400, f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 <= n <= len(body):
            raise OipError(400, f"Inference-Header-Content-Length is {n}, but the body has only {len(body)} bytes "
                                f"(truncated?)")
        head, tail = body[:n], body[n:]
    return json_object(head, "request header"), memoryview(tail)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (no NaN or infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is too large for a float")
    return value


def loads_strict(data: bytes | str) -> Any:
    """``json.loads`` without Python's extensions: ``NaN``, ``Infinity`` and numbers that
    overflow to infinity (1e400) are refused, as values JSON cannot hold that would
    otherwise reach int() and float checks."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as one JSON object; an OipError 400 naming ``what`` otherwise."""
    try:
        doc = loads_strict(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OipError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise OipError(400, f"{what} is JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise OipError(400, f"{what} must be a JSON object")
    return doc


class BinaryReader:
    """Hands out the binary sections of a body in order, and checks none is missing or left over."""

    def __init__(self, tail: memoryview):
        self.tail, self.at = tail, 0

    def take(self, size: Any, where: str) -> memoryview:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise OipError(400, f"{where}: parameters.binary_data_size must be a non-negative integer")
        if self.at + size > len(self.tail):
            raise OipError(400, f"{where}: binary_data_size {size} runs past the end of the body "
                                f"({len(self.tail) - self.at} bytes left): truncated binary data")
        out = self.tail[self.at:self.at + size]
        self.at += size
        return out

    def finish(self) -> None:
        if self.at != len(self.tail):
            raise OipError(400, f"{len(self.tail) - self.at} bytes of binary data follow the last tensor "
                                f"that declared binary_data_size")


def _params(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OipError(400, f"{where}: 'parameters' must be an object")
    return raw


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An HTTP infer request (JSON, or JSON header + binary tensors) as typed arrays."""
    doc, tail = split_binary(body, header_length)
    unknown = set(doc) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise OipError(400, f"unknown fields {sorted(unknown)}; an infer request has id, parameters, inputs, outputs")
    req = InferRequest(id=str(doc.get("id", "")), parameters=_params(doc.get("parameters"), "request"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OipError(400, "'inputs' must be a non-empty list of tensors")
    reader = BinaryReader(tail)
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise OipError(400, f"inputs[{i}]: a tensor is {{name, datatype, shape, data}}")
        where = f"input {t['name']!r}"
        if t["name"] in req.inputs:
            raise OipError(400, f"{where} given twice")
        shape = _shape(t.get("shape"), where)
        params = _params(t.get("parameters"), where)
        if "binary_data_size" in params:
            if "data" in t:
                raise OipError(400, f"{where}: both 'data' and parameters.binary_data_size")
            req.inputs[t["name"]] = array_from_bytes(reader.take(params["binary_data_size"], where),
                                                     t.get("datatype"), shape, where)
        elif "data" in t:
            req.inputs[t["name"]] = array_from_json(t["data"], t.get("datatype"), shape, where)
        else:
            raise OipError(400, f"{where}: no 'data' and no parameters.binary_data_size")
    reader.finish()
    req.binary_default = bool(req.parameters.get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise OipError(400, "'outputs' must be a list of {name, parameters}")
        for o in outputs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise OipError(400, "each requested output is {name, parameters}")
            req.outputs.append(o["name"])
            p = _params(o.get("parameters"), f"output {o['name']!r}")
            req.binary_outputs[o["name"]] = bool(p.get("binary_data", req.binary_default))
    return req


def check_inputs(inputs: dict[str, np.ndarray], specs: list[TensorSpec], model: str) -> None:
    """Names, datatypes and shapes against the model's signature; 400 with what the model expects."""
    want = {s.name: s for s in specs}
    missing, extra = set(want) - set(inputs), set(inputs) - set(want)
    if missing or extra:
        raise OipError(400, f"model {model!r} takes inputs {sorted(want)}; missing {sorted(missing)}, "
                            f"unexpected {sorted(extra)}")
    for name, arr in inputs.items():
        spec = want[name]
        if arr.dtype.name != spec.dtype:
            raise OipError(400, f"input {name!r}: datatype {v2_datatype(arr.dtype.name)}, model {model!r} expects "
                                f"{v2_datatype(spec.dtype)}")
        fits = arr.ndim == len(spec.shape) and all(w is None or g == w for g, w in zip(arr.shape, spec.shape))
        if not fits:
            raise OipError(400, f"input {name!r}: shape {list(arr.shape)}, model {model!r} expects "
                                f"{[-1 if d is None else d for d in spec.shape]} (-1: any size)")


def select_outputs(outputs: dict[str, np.ndarray], requested: list[str], model: str) -> list[str]:
    """The output names to answer with: those requested (each must exist), else all."""
    if not requested:
        return list(outputs)
    unknown = [n for n in requested if n not in outputs]
    if unknown:
        raise OipError(400, f"model {model!r} has no outputs {unknown}; it has {sorted(outputs)}")
    return requested


def encode_tensor(name: str, arr: np.ndarray, binary: bool, blobs: list[bytes]) -> dict[str, Any]:
    """One tensor's JSON entry; with ``binary`` its little-endian bytes go to ``blobs`` instead of ``data``."""
    arr = np.ascontiguousarray(arr)
    t: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype.name), "shape": list(arr.shape)}
    if binary:
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        t["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        t["data"] = json_data(arr)
    return t


def json_data(arr: np.ndarray) -> list:
    """A tensor's elements for JSON ``data``, row-major.  JSON has no NaN or infinity: a
    float output holding them (an overflow, log of 0) gets the strings "NaN", "Infinity"
    and "-Infinity" for those elements, as protobuf's JSON mapping writes them (so a
    ``ModelInferResponse`` in JSON says the same), as ``/v1`` results do, and as
    ``np.array(data, dtype)`` (tritonclient's ``as_numpy``) reads them back.  Triton
    itself writes bare ``NaN``/``Infinity`` tokens, which strict JSON parsers refuse;
    binary outputs (``binary_data_output``) carry the exact bits either way."""
    data = arr.ravel().tolist()
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        data = [v if math.isfinite(v) else NON_FINITE[repr(v)] for v in data]
    return data


def encode_infer_response(model: str, req: InferRequest, outputs: dict[str, np.ndarray],
                          parameters: dict[str, Any]) -> tuple[bytes, int | None]:
    """The HTTP response body, and the JSON header's length when binary tensors follow it."""
    blobs: list[bytes] = []
    tensors = [encode_tensor(name, outputs[name], req.binary_outputs.get(name, req.binary_default), blobs)
               for name in select_outputs(outputs, req.outputs, model)]
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": tensors}
    if req.id:
        doc["id"] = req.id
    if parameters:
        doc["parameters"] = parameters
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()    # strict JSON, always
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def decode_task_body(body: bytes, header_length: str) -> dict[str, Any]:
    """A ``/v1/tasks`` body with binary tensors: the JSON task, each input
    ``{"dtype", "shape", "binary_data_size"}``, then the inputs' bytes in order."""
    doc, tail = split_binary(body, header_length)
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise OipError(400, "'inputs' must map input names to {dtype, shape, binary_data_size}")
    reader, arrays = BinaryReader(tail), {}
    for name, t in inputs.items():
        where = f"input {name!r}"
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "binary_data_size"}:
            raise OipError(400, f"{where}: with binary tensors each input is {{dtype, shape, binary_data_size}}")
        if not isinstance(t["dtype"], str) or t["dtype"] not in NP_TO_V2:
            raise OipError(400, f"{where}: dtype {t['dtype']!r} is not one of {', '.join(NP_TO_V2)}")
        arrays[name] = array_from_bytes(reader.take(t["binary_data_size"], where), NP_TO_V2[t["dtype"]],
                                        _shape(t["shape"], where), where)
    reader.finish()
    return {**doc, "inputs": arrays}


def encode_task_body(task: dict[str, Any], inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The client side of :func:`decode_task_body`: (body, JSON header length)."""
    specs, blobs = {}, []
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "binary_data_size": len(raw)}
        blobs.append(raw)
    head = json.dumps({**task, "inputs": specs}, separators=(",", ":")).encode()
    return b"".join([head, *blobs]), len(head)


def encode_infer_request(inputs: dict[str, np.ndarray], *, parameters: dict[str, Any] | None = None,
                         binary: bool = True, outputs: list[str] | None = None,
                         request_id: str = "") -> tuple[bytes, int | None]:
    """A v2 infer request body (client side): binary tensors by default; (body, header length or None)."""
    blobs: list[bytes] = []
    tensors = [encode_tensor(name, arr, binary, blobs) for name, arr in inputs.items()]
    params = dict(parameters or {})
    if binary:
        params.setdefault("binary_data_output", True)
    doc: dict[str, Any] = {"inputs": tensors, "parameters": params}
    if outputs:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    if request_id:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    return (b"".join([head, *blobs]), len(head)) if blobs else (head, None)


_NON_FINITE_WORDS = frozenset(NON_FINITE.values())


def _non_finite_back(t: dict[str, Any]) -> Any:
    """A float output's JSON ``data`` with :func:`json_data`'s "NaN"/"Infinity" strings as floats."""
    data = t.get("data")
    if str(t.get("datatype", "")).startswith(("FP", "BF")) and isinstance(data, list):
        return [float(v) if isinstance(v, str) and v in _NON_FINITE_WORDS else v for v in data]
    return data


def decode_infer_response(body: bytes, header_length: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A v2 infer response (client side): (outputs as arrays, the response's parameters)."""
    doc, tail = split_binary(body, header_length)
    reader, out = BinaryReader(tail), {}
    for t in doc.get("outputs", []):
        where = f"output {t.get('name')!r}"
        size = (t.get("parameters") or {}).get("binary_data_size")
        shape = _shape(t.get("shape"), where)
        out[t["name"]] = array_from_bytes(reader.take(size, where), t.get("datatype"), shape, where) \
            if size is not None else array_from_json(_non_finite_back(t), t.get("datatype"), shape, where)
    reader.finish()
    return out, doc.get("parameters") or {}
