"""Zoo model ``matmul``: exact on its samples, numpy-equal on random shapes, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow    # needs the built model and rebuilds it in a subprocess

ort = pytest.importorskip("onnxruntime")

from agent import zoo  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from agent.compute.tensors import InputError, inputs_from_json  # noqa: E402
from agent.zoo import matmul  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """models/ when it holds a current build (the Makefile builds it), else a fresh one."""
    if zoo.is_current(MODELS, "matmul") is not None:
        return MODELS
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("zoo")
    zoo.build(out, only=["matmul"])
    return out


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built / "matmul.json").read_text())


@pytest.fixture(scope="module")
def sess(built):
    return ort.InferenceSession(str(built / "matmul.onnx"), session_options(), providers=["CPUExecutionProvider"])


def test_manifest(manifest, built):
    assert manifest["sha256"] == hashlib.sha256((built / "matmul.onnx").read_bytes()).hexdigest()
    assert manifest["inputs"] == [{"name": "a", "dtype": "float32", "shape": [None, None]},
                                  {"name": "b", "dtype": "float32", "shape": [None, None]}]
    assert manifest["outputs"] == [{"name": "c", "dtype": "float32", "shape": [None, None]}]
    assert manifest["flops"] == "2*n*k*m"
    assert manifest["limits"]["max_elements"] == matmul.MAX_ELEMENTS
    assert manifest["limits"]["max_flops"] == 2 * 1024 ** 3
    for s in manifest["samples"]:
        n, k = np.shape(s["inputs"]["a"])
        assert s["flops"] == matmul.flops(n, k, np.shape(s["inputs"]["b"])[1])


def test_samples_exact(manifest, sess):
    for s in manifest["samples"]:
        a = np.asarray(s["inputs"]["a"], dtype=np.float32)
        b = np.asarray(s["inputs"]["b"], dtype=np.float32)
        (c,) = sess.run(None, {"a": a, "b": b})
        assert c.dtype == np.float32
        assert np.array_equal(c, np.asarray(s["expected"]["c"], dtype=np.float32))


@pytest.mark.parametrize("n, k, m", [(1, 1, 1), (7, 13, 5), (64, 300, 17), (256, 256, 256), (1, 1024, 1024)])
def test_equals_numpy(sess, n, k, m):
    rng = np.random.default_rng(n * 1_000_003 + k * 1009 + m)
    a = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal((k, m), dtype=np.float32)
    (c,) = sess.run(None, {"a": a, "b": b})
    assert c.shape == (n, m) and c.dtype == np.float32
    exact = a.astype(np.float64) @ b.astype(np.float64)
    # float32 accumulation over k terms of unit variance: error grows ~ sqrt(k) eps
    np.testing.assert_allclose(c, exact, rtol=1e-4, atol=1e-5 * np.sqrt(k) * 10)
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-5 * np.sqrt(k) * 10)


def test_flops_and_shape_checks():
    assert matmul.flops(2, 3, 4) == 48
    matmul.check_shapes((1024, 1024), (1024, 1024))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        matmul.check_shapes((2, 3), (4, 5))
    with pytest.raises(ValueError, match="c would have"):
        matmul.check_shapes((1 << 20, 1), (1, 2))
    with pytest.raises(ValueError, match="2-D"):
        matmul.check_shapes((2, 3, 4), (4, 5))


def test_manifest_limits_are_enforced(manifest):
    ok = {"a": np.zeros((1024, 1024), np.float32), "b": np.zeros((1024, 1024), np.float32)}
    zoo.check_limits("matmul", ok, manifest)
    for arrays, words in [
        ({"a": np.zeros((1, 1025 * 1024), np.float32), "b": np.zeros((1025 * 1024, 1), np.float32)}, "exceed"),
        ({"a": np.zeros((2048, 1), np.float32), "b": np.zeros((1, 2048), np.float32)}, "c would have"),
        ({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 3), np.float32)}, "inner dimensions differ"),
    ]:
        with pytest.raises(zoo.LimitError, match=words):
            zoo.check_limits("matmul", arrays, manifest)


def test_signature_violations_are_clear(built):
    model = ModelStore(built).get("matmul")
    ok = {"a": [[1.0, 2.0]], "b": [[1.0], [2.0]]}
    assert inputs_from_json(ok, model.inputs, 100)["a"].dtype == np.float32
    cases = [
        ({"a": [1.0, 2.0], "b": [[1.0], [2.0]]}, "rank 1"),
        ({"a": [[1.0, 2.0]]}, "missing ['b']"),
        ({"a": {"dtype": "float64", "data": [[1.0]]}, "b": [[1.0]]}, "dtype 'float64' given"),
        ({"a": [[1.0, 2.0]], "b": [[1.0], ["x"]]}, "non-numbers"),
        ({"a": [[float("nan")]], "b": [[1.0]]}, "NaN"),
        ({"a": [[1.0] * 11], "b": [[1.0]] * 11}, "exceed the limit of 10"),
    ]
    for raw, words in cases:
        with pytest.raises(InputError) as err:
            inputs_from_json(raw, model.inputs, 10)
        assert words in str(err.value), (raw, str(err.value))


def test_inner_dimension_mismatch_fails_clearly(sess):
    """Shapes that pass the signature (all dims dynamic) but do not multiply."""
    with pytest.raises(Exception, match="MatMul") as err:
        sess.run(None, {"a": np.ones((2, 3), np.float32), "b": np.ones((4, 5), np.float32)})
    assert "dimension" in str(err.value).lower() or "shape" in str(err.value).lower()


def _cli_build(out: Path, hashseed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "build", "--out", str(out), "--only", "matmul"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256((out / "matmul.onnx").read_bytes()).hexdigest()


def test_byte_identical_rebuild(built, manifest, tmp_path):
    pytest.importorskip("onnx")
    assert _cli_build(tmp_path / "a", "3") == _cli_build(tmp_path / "b", "4242") == manifest["sha256"]
    assert (tmp_path / "a" / "matmul.json").read_bytes() == (built / "matmul.json").read_bytes()
