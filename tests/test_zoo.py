"""Model zoo: build correctness, byte-identical rebuilds, skip-if-unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
ort = pytest.importorskip("onnxruntime")

from agent import zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    results = zoo.build(out, only=["digits"])
    assert results["digits"][1] is True
    return out


def _session(out: Path):
    return ort.InferenceSession(str(out / "digits.onnx"), providers=["CPUExecutionProvider"])


def test_registry_and_manifest(built):
    assert "digits" in zoo.BUILDERS
    m = json.loads((built / "digits.json").read_text())
    assert m["name"] == "digits"
    assert m["sha256"] == hashlib.sha256((built / "digits.onnx").read_bytes()).hexdigest()
    assert m["accuracy"] >= 0.95
    assert m["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 64]}]
    assert [(o["name"], o["dtype"], o["shape"]) for o in m["outputs"]] == [
        ("label", "int64", [None]),
        ("probabilities", "float32", [None, 10]),
    ]
    assert len(m["samples"]) == 16
    assert all(len(s["inputs"]["input"][0]) == 64 for s in m["samples"])


def test_onnxruntime_predicts_samples(built):
    sess = _session(built)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    samples = json.loads((built / "digits.json").read_text())["samples"]
    correct = 0
    for s in samples:
        x = np.asarray(s["inputs"]["input"], dtype=np.float32)
        label, probs = sess.run(None, {"input": x})
        assert label.shape == (1,) and label.dtype == np.int64
        assert probs.shape == (1, 10) and probs.dtype == np.float32
        correct += int(label[0] == s["label"])
    assert correct >= 14


@pytest.mark.parametrize("batch", [1, 5])
def test_batch_inference(built, batch):
    sess = _session(built)
    samples = json.loads((built / "digits.json").read_text())["samples"]
    x = np.asarray([s["inputs"]["input"][0] for s in samples[:batch]], dtype=np.float32)
    label, probs = sess.run(None, {"input": x})
    assert label.shape == (batch,) and probs.shape == (batch, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == label).all()


def _cli_build(out: Path, hashseed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.zoo", "build", "--out", str(out), "--only", "digits"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout
    return hashlib.sha256((out / "digits.onnx").read_bytes()).hexdigest()


def test_byte_identical_across_hash_seeds(built, tmp_path):
    """skl2onnx's opset order depends on PYTHONHASHSEED; the build must not."""
    a = _cli_build(tmp_path / "a", "1")
    b = _cli_build(tmp_path / "b", "12345")
    assert a == b
    assert a == hashlib.sha256((built / "digits.onnx").read_bytes()).hexdigest()


def test_skip_if_unchanged(tmp_path):
    out = tmp_path / "zoo"
    (m1, rebuilt) = zoo.build(out)["digits"]
    assert rebuilt
    onnx_path = out / "digits.onnx"
    mtime = onnx_path.stat().st_mtime_ns

    # Unchanged: skipped, file untouched, same manifest returned.
    m2, rebuilt = zoo.build(out)["digits"]
    assert not rebuilt and m2 == m1 and onnx_path.stat().st_mtime_ns == mtime

    # --force rebuilds (to identical bytes).
    m3, rebuilt = zoo.build(out, force=True)["digits"]
    assert rebuilt and m3["sha256"] == m1["sha256"]

    # Corrupted model: hash no longer matches the manifest -> rebuilt.
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    assert zoo.is_current(out, "digits") is None
    m4, rebuilt = zoo.build(out)["digits"]
    assert rebuilt and m4["sha256"] == m1["sha256"]

    # Manifest from an older recipe -> rebuilt.
    mpath = out / "digits.json"
    stale = json.loads(mpath.read_text())
    stale["recipe"] = -1
    mpath.write_text(json.dumps(stale))
    assert zoo.is_current(out, "digits") is None
    _, rebuilt = zoo.build(out)["digits"]
    assert rebuilt

    # Missing manifest -> rebuilt.
    mpath.unlink()
    _, rebuilt = zoo.build(out)["digits"]
    assert rebuilt and zoo.is_current(out, "digits") is not None


def test_unknown_model_rejected(tmp_path):
    with pytest.raises(KeyError):
        zoo.build(tmp_path, only=["nope"])


def test_import_does_not_need_build_toolchain():
    """Agents import agent.zoo; it must not pull in sklearn/skl2onnx/onnx."""
    code = (
        "import sys, agent.zoo; "
        "bad = [m for m in ('sklearn', 'skl2onnx', 'onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
