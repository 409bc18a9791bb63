"""JSON tensors at the API edge, checked against a model's signature.

Checking names, dtypes, shapes and sizes here, before anything reaches
onnxruntime or the mesh, turns every bad input into a clear 400 at the entry
node instead of an opaque runtime error several hops away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# onnxruntime's type strings → numpy dtype names.
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


class InputError(ValueError):
    """A task input that does not fit the model; the message says how."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                      # numpy dtype name
    shape: tuple[int | None, ...]   # None = any size (symbolic dimension)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _kind_ok(arr: np.ndarray, dtype: np.dtype) -> bool:
    """May JSON numbers of ``arr``'s kind be cast to ``dtype`` without lying?"""
    if arr.size == 0:
        return True
    k = arr.dtype.kind
    if dtype.kind == "f":
        return k in "iuf"
    if dtype.kind in "iu":
        return k in "iu"
    if dtype.kind == "b":
        return k == "b"
    return False


def from_json(value: Any, spec: TensorSpec, max_elements: int) -> np.ndarray:
    """A nested JSON list (or ``{"dtype","shape","data"}``) as an array for ``spec``."""
    declared = None
    if isinstance(value, dict):
        unknown = set(value) - {"dtype", "shape", "data"}
        if unknown or "data" not in value:
            raise InputError(f"input {spec.name!r}: a typed tensor is {{\"dtype\", \"shape\", \"data\"}}")
        declared = value.get("dtype")
        if declared is not None and declared != spec.dtype:
            raise InputError(f"input {spec.name!r}: dtype {declared!r} given, model expects {spec.dtype!r}")
        shape = value.get("shape")
        value = value["data"]
    else:
        shape = None
    if not isinstance(value, (list, int, float, bool)):
        raise InputError(f"input {spec.name!r}: expected a (nested) list of numbers, got {type(value).__name__}")
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        raise InputError(f"input {spec.name!r}: ragged nested list (rows of different lengths)") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InputError(f"input {spec.name!r}: contains non-numbers or ragged rows")
    if arr.size > max_elements:
        raise InputError(f"input {spec.name!r}: {arr.size} elements exceed the limit of {max_elements}")
    if shape is not None:
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise InputError(f"input {spec.name!r}: shape must be a list of non-negative integers")
        if math.prod(shape) != arr.size:
            raise InputError(f"input {spec.name!r}: shape {shape} does not hold {arr.size} elements")
        arr = arr.reshape(shape)
    target = np.dtype(spec.dtype)
    if not _kind_ok(arr, target):
        raise InputError(f"input {spec.name!r}: values of kind {arr.dtype.name} cannot be {spec.dtype} without loss")
    if target.kind == "f" and arr.size and not np.all(np.isfinite(arr.astype(np.float64))):
        raise InputError(f"input {spec.name!r}: contains NaN or infinity")
    arr = cast_checked(arr, target, f"input {spec.name!r}")
    check_shape(arr, spec)
    return arr


def cast_checked(arr: np.ndarray, target: np.dtype, where: str) -> np.ndarray:
    """``arr`` as ``target``; a finite number that the narrower type cannot hold
    (1e39 as float32 would become infinity) is an InputError, not a silent inf."""
    if target.kind == "f" and arr.dtype.kind in "iuf" and arr.size:
        with np.errstate(over="ignore"):
            out = arr.astype(target)
        finite_before = np.isfinite(arr.astype(np.float64))
        if np.any(finite_before & ~np.isfinite(out)):
            limit = float(np.finfo(target).max)
            raise InputError(f"{where}: a value is outside the range of {target.name} (largest magnitude {limit:.4g})")
        return out
    return arr.astype(target)


def check_shape(arr: np.ndarray, spec: TensorSpec) -> None:
    if arr.ndim != len(spec.shape):
        raise InputError(f"input {spec.name!r}: rank {arr.ndim} (shape {list(arr.shape)}), model expects "
                         f"rank {len(spec.shape)} {_fmt(spec.shape)}")
    for i, (got, want) in enumerate(zip(arr.shape, spec.shape)):
        if want is not None and got != want:
            raise InputError(f"input {spec.name!r}: dimension {i} is {got}, model expects {want} "
                             f"(shape {list(arr.shape)} vs {_fmt(spec.shape)})")


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def inputs_from_json(raw: Any, specs: list[TensorSpec], max_elements: int) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict):
        raise InputError("inputs: expected an object mapping input names to tensors")
    want = {s.name for s in specs}
    missing, extra = want - set(raw), set(raw) - want
    if missing or extra:
        raise InputError(f"inputs: model expects {sorted(want)}; missing {sorted(missing)}, unexpected {sorted(extra)}")
    return {s.name: from_json(raw[s.name], s, max_elements) for s in specs}


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def to_json(arr: np.ndarray) -> dict[str, Any]:
    """A result tensor as JSON.  JSON has no NaN or infinity, and a model may
    produce them (an overflow in float32, log of 0): those elements become the
    strings "NaN", "Infinity" and "-Infinity" (protobuf's JSON mapping does the
    same; ``np.array(data, dtype)`` reads them back), so a result can always be
    served instead of failing every GET with a 500."""
    data = arr.tolist()
    if arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr)):
        data = _replace_non_finite(data)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": data}


def _replace_non_finite(x: Any) -> Any:
    if isinstance(x, list):
        return [_replace_non_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return NON_FINITE[repr(x)]
    return x


def inputs_from_arrays(raw: dict[str, np.ndarray], specs: list[TensorSpec], max_elements: int) -> dict[str, np.ndarray]:
    """Arrays already typed (binary tensors, the Open Inference Protocol) checked like JSON ones."""
    want = {s.name for s in specs}
    missing, extra = want - set(raw), set(raw) - want
    if missing or extra:
        raise InputError(f"inputs: model expects {sorted(want)}; missing {sorted(missing)}, unexpected {sorted(extra)}")
    for s in specs:
        arr = raw[s.name]
        if arr.dtype.name != s.dtype:
            raise InputError(f"input {s.name!r}: dtype {arr.dtype.name} given, model expects {s.dtype!r}")
        if arr.size > max_elements:
            raise InputError(f"input {s.name!r}: {arr.size} elements exceed the limit of {max_elements}")
        check_shape(arr, s)
    return {s.name: raw[s.name] for s in specs}


def typed_arrays(inputs: Any) -> bool:
    """Are these inputs decoded arrays (not JSON still to be checked)?"""
    return isinstance(inputs, dict) and bool(inputs) and all(isinstance(v, np.ndarray) for v in inputs.values())
