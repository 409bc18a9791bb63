"""``rnncell``: one step of an Elman recurrent cell, the zoo's stateful job step.

A job over a time series runs this model once per time step and carries the
state between steps (issue 19, "stateful steps"):

    h_out = tanh(x @ W + h @ U + b)        x float32 [1, 8], h float32 [1, 16]
    y     = h_out @ V + c                  y float32 [1, 4]

Feed ``h_out`` of step t as ``h`` of step t+1, starting from zeros.  The
manifest's ``state`` (``{"carry": {"h_out": "h"}}``) is that rule in the form a
job's ``state`` takes (``POST /v1/jobs``, ``agent/runtime/job_spec.py``).  A job that
checkpoints ``h`` after step t and resumes from it must end bit-identical to
one that never stopped: every step is a pure function of its two inputs, and
float32 survives JSON (float32 -> Python float -> float32 is exact).

The weights are fixed, not trained: uniform draws from numpy's PCG64 with
``SEED``, scaled so that the recurrence neither saturates tanh nor blows up
(``U``'s spectral radius is about ``GAIN_U`` < 1, so the state forgets).  They
are initializers in the graph; nothing is downloaded.  The batch dimension is
fixed to 1: a step of one sequence, not a batchable model.

``reference`` runs the same recurrence in numpy float32, for tests.
onnxruntime is the authority: its MatMul and Tanh kernels round differently,
so numpy agrees with it to about 1e-6, not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "rnncell"
RECIPE = 1  # bump when anything below changes the produced model or manifest
OPSET = 17
SEED = 19                  # issue 19
N_IN, N_STATE, N_OUT = 8, 16, 4
GAIN_W, GAIN_U, GAIN_V = 0.8, 0.9, 1.0
SAMPLE_STEPS = 5
SAMPLE_DECIMALS = 6        # expected values and carried states, as stored in the manifest
DESCRIPTION = (
    "Stateful job step: one step of an Elman recurrent cell with fixed weights. Inputs 'x' "
    f"float32 [1, {N_IN}] (one time step of an {N_IN}-channel series) and 'h' float32 [1, {N_STATE}] "
    f"(the state); outputs 'y' float32 [1, {N_OUT}] = h_out @ V + c and 'h_out' float32 "
    f"[1, {N_STATE}] = tanh(x @ W + h @ U + b). Feed 'h_out' of step t as 'h' of step t+1, "
    "starting from zeros. The zoo's example of a stateful job step; batch fixed to 1."
)


def weights() -> dict[str, np.ndarray]:
    """W [8, 16], U [16, 16], b [16], V [16, 4], c [4], float32, the same on every build.

    Uniform on [-a, a] with a = gain * sqrt(3 / fan_in): variance gain^2 / fan_in.
    ``Generator.random`` is the plainest draw numpy has (stable across versions).
    """
    rng = np.random.default_rng(SEED)

    def uniform(shape: tuple[int, ...], gain: float, fan_in: int) -> np.ndarray:
        a = gain * np.sqrt(3.0 / fan_in)
        return ((rng.random(shape) * 2.0 - 1.0) * a).astype(np.float32)

    return {
        "W": uniform((N_IN, N_STATE), GAIN_W, N_IN),
        "U": uniform((N_STATE, N_STATE), GAIN_U, N_STATE),
        "b": uniform((N_STATE,), 0.1, 1),
        "V": uniform((N_STATE, N_OUT), GAIN_V, N_STATE),
        "c": uniform((N_OUT,), 0.1, 1),
    }


def series(steps: int) -> np.ndarray:
    """A sample 8-channel time series, float32 [steps, 8]: sines of different
    periods and phases, rounded to 4 decimals so a reader can type them."""
    return _series64(steps).astype(np.float32)


def _series64(steps: int) -> np.ndarray:
    t = np.arange(steps, dtype=np.float64)[:, None]
    ch = np.arange(N_IN, dtype=np.float64)[None, :]
    return np.round(np.sin(2 * np.pi * t / (5.0 + ch) + ch * 0.7) * (1.0 - 0.05 * ch), 4)


def reference(xs: np.ndarray, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recurrence in numpy float32: ``(ys [T, 4], hs [T, 16])``, where
    ``hs[t]`` is the state after step t (``hs[-1]`` the final one).

    ``xs`` is [T, 8] (or [T, 1, 8]); ``h0`` is [1, 16] or [16].  For tests
    only: onnxruntime is the authority and this agrees with it to ~1e-6.
    """
    xs = np.asarray(xs, dtype=np.float32)
    if xs.ndim == 3 and xs.shape[1] == 1:
        xs = xs[:, 0, :]
    if xs.ndim != 2 or xs.shape[1] != N_IN:
        raise ValueError(f"rnncell.reference: xs must be [T, {N_IN}], got {list(xs.shape)}")
    h = np.asarray(h0, dtype=np.float32).reshape(-1)
    if h.shape != (N_STATE,):
        raise ValueError(f"rnncell.reference: h0 must hold {N_STATE} values, got {h.size}")
    w = weights()
    ys = np.empty((len(xs), N_OUT), np.float32)
    hs = np.empty((len(xs), N_STATE), np.float32)
    for t, x in enumerate(xs):
        h = np.tanh(x @ w["W"] + h @ w["U"] + w["b"]).astype(np.float32)
        ys[t] = h @ w["V"] + w["c"]
        hs[t] = h
    return ys, hs


def make_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .kit import canonicalize_onnx

    inits = [numpy_helper.from_array(arr, name) for name, arr in weights().items()]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xW"]),
        helper.make_node("MatMul", ["h", "U"], ["hU"]),
        helper.make_node("Add", ["xW", "hU"], ["xW_hU"]),
        helper.make_node("Add", ["xW_hU", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "V"], ["hV"]),
        helper.make_node("Add", ["hV", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N_IN]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, N_STATE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N_OUT]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, N_STATE])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="orbitmesh.zoo", ir_version=8,  # ir 8: readable by onnxruntime >= 1.14
    )
    canonicalize_onnx(model, NAME, DESCRIPTION)
    onnx.checker.check_model(model, full_check=True)
    return model


def _samples(steps: int) -> list[dict]:
    """The first ``steps`` steps of ``series`` from the zero state, chained.

    Computed in float64 and rounded to ``SAMPLE_DECIMALS``, not taken from
    onnxruntime, whose last bits vary between CPU generations: the manifest
    stays byte-identical everywhere.  Each sample's ``h`` is the previous
    sample's expected ``h_out`` as stored, so the samples chain exactly.
    """
    w = {k: v.astype(np.float64) for k, v in weights().items()}
    h = np.zeros(N_STATE)
    out = []
    for t, x in enumerate(_series64(steps)):
        fed_x, fed_h = (v.astype(np.float32).astype(np.float64) for v in (x, h))  # what the model gets
        h_exact = np.tanh(fed_x @ w["W"] + fed_h @ w["U"] + w["b"])
        y = np.round(h_exact @ w["V"] + w["c"], SAMPLE_DECIMALS)
        h_out = np.round(h_exact, SAMPLE_DECIMALS)
        out.append({
            "step": t,
            "inputs": {"x": [x.tolist()], "h": [h.tolist()]},
            "expected": {"y": [y.tolist()], "h_out": [h_out.tolist()]},
        })
        h = h_out
    return out


def build(out_dir: Path) -> dict:
    import onnx

    from .kit import base_manifest, write_model

    model = make_model()
    model_bytes = model.SerializeToString()
    manifest = {
        **base_manifest(model, RECIPE, DESCRIPTION),
        # A job's "state" as POST /v1/jobs takes it (agent/runtime/job_spec.py): h_out
        # feeds h; "initial" left out means zeros.
        "state": {"carry": {"h_out": "h"}},
        "weights": {"init": "uniform, variance gain^2/fan_in", "seed": SEED, "numpy_generator": "PCG64",
                    "gains": {"W": GAIN_W, "U": GAIN_U, "V": GAIN_V}},
        "batching": {"batchable": False,
                     "why": "one step of one sequence: batch fixed to 1, and step t+1 needs step t's h_out"},
        "toolchain": {"onnx": onnx.__version__, "numpy": np.__version__},
        "samples": _samples(SAMPLE_STEPS),
    }
    return write_model(Path(out_dir), NAME, model_bytes, manifest)
