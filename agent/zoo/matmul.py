"""``matmul``: a compute job whose cost each task sets, for load tests.

One ONNX ``MatMul``: inputs ``a`` float32 [n, k] and ``b`` float32 [k, m], all
three dimensions dynamic; output ``c`` = a @ b, float32 [n, m].  A task costs
exactly ``2 * n * k * m`` floating-point operations (multiply-adds counted as
two), so a load generator dials the work per task with the shapes: 256^3 is
~34 MFLOP (~0.35 ms on one AVX-512 core at ~100 GFLOP/s), 1024^3 ~2.1 GFLOP
(~23 ms).

Limits (``limits`` in the manifest): every input and the output at most
``MAX_ELEMENTS`` elements.  Capping the inputs alone is not enough - with
k = 1, n = m = 2^20 would ask for a 4 TB output - and with all three capped
the largest task is n = k = m = 1024, i.e. 2^31 FLOP and 4 MiB per tensor.
"""

from __future__ import annotations

from pathlib import Path

NAME = "matmul"
RECIPE = 2  # bump when anything below changes the produced model or manifest
OPSET = 17
MAX_ELEMENTS = 1 << 20
SAMPLE_SHAPES = [(2, 3, 2), (4, 8, 3)]  # (n, k, m): small enough to read in the manifest
DESCRIPTION = (
    "Tunable compute job: 'c' = 'a' @ 'b'. Inputs 'a' float32 [n, k], 'b' float32 "
    "[k, m] (all dimensions dynamic); output 'c' float32 [n, m]. Cost 2*n*k*m FLOP; "
    f"each tensor at most {MAX_ELEMENTS} elements."
)


def flops(n: int, k: int, m: int) -> int:
    """Floating-point operations of one task with these shapes."""
    return 2 * n * k * m


def check_shapes(a_shape, b_shape) -> None:
    """Raise ValueError unless the shapes multiply and stay within the limits."""
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ValueError(f"matmul: a and b must be 2-D, got {list(a_shape)} and {list(b_shape)}")
    (n, k), (k2, m) = a_shape, b_shape
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ: a is [{n}, {k}], b is [{k2}, {m}]")
    for what, size in (("a", n * k), ("b", k * m), ("c", n * m)):
        if size > MAX_ELEMENTS:
            raise ValueError(f"matmul: {what} would have {size} elements, limit {MAX_ELEMENTS}")


def check_inputs(arrays) -> None:
    """Hook for ``agent.zoo.check_limits``: a task's ``a`` and ``b`` must multiply within limits."""
    if "a" in arrays and "b" in arrays:
        check_shapes(arrays["a"].shape, arrays["b"].shape)


def make_model():
    import onnx
    from onnx import TensorProto, helper

    from .kit import canonicalize_onnx

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        NAME,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", "k"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", "m"])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", "m"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="orbitmesh.zoo", ir_version=8,  # ir 8: readable by onnxruntime >= 1.14
    )
    canonicalize_onnx(model, NAME, DESCRIPTION)
    onnx.checker.check_model(model, full_check=True)
    return model


def build(out_dir: Path) -> dict:
    import numpy as np
    import onnx

    from .kit import base_manifest, write_model

    model = make_model()
    model_bytes = model.SerializeToString()
    samples = []
    for n, k, m in SAMPLE_SHAPES:
        # Small integers and halves: exact in float32, so a reader can check
        # c by hand and any correct kernel returns identical bits.
        a = ((np.arange(n * k) % 7) - 3).reshape(n, k) / 2
        b = ((np.arange(k * m) % 5) - 2).reshape(k, m) / 2
        samples.append({
            "inputs": {"a": a.tolist(), "b": b.tolist()},
            "expected": {"c": (a @ b).tolist()},
            "flops": flops(n, k, m),
        })
    manifest = {
        **base_manifest(model, RECIPE, DESCRIPTION),
        "flops": "2*n*k*m",
        "limits": {
            "max_elements": MAX_ELEMENTS,
            "max_output_elements": MAX_ELEMENTS,
            "max_flops": flops(1024, 1024, 1024),
            "check": "agent.zoo.check_limits (inner dimensions and output size: matmul.check_inputs)",
        },
        # b's first dimension is k, not a batch: two tasks' b stacked along
        # axis 0 would no longer multiply.  The executor must not batch this.
        "batching": {"batchable": False, "why": "input b's first dimension is the inner dimension k, not a batch"},
        "toolchain": {"onnx": onnx.__version__},
        "samples": samples,
    }
    return write_model(Path(out_dir), NAME, model_bytes, manifest)
