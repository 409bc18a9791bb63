"""Model zoo: registry, the digits model, byte-identical rebuilds, skip-if-unchanged.

The other zoo models have their own files (tests/test_zoo_<name>.py); the
real-fleet check of all of them is tests/test_zoo_fleet.py.
"""

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


@pytest.mark.slow    # a subprocess
def test_byte_identical_across_hash_seeds(built, tmp_path):
    """skl2onnx's opset order depends on PYTHONHASHSEED; the build must not."""
    a = _cli_build(tmp_path / "a", "1")
    b = _cli_build(tmp_path / "b", "12345")
    assert a == b
    assert a == hashlib.sha256((built / "digits.onnx").read_bytes()).hexdigest()


def test_skip_if_unchanged(tmp_path):
    out = tmp_path / "zoo"
    only = ["digits"]  # the mechanism is shared; digits builds in a second
    (m1, rebuilt) = zoo.build(out, only=only)["digits"]
    assert rebuilt
    onnx_path = out / "digits.onnx"
    mtime = onnx_path.stat().st_mtime_ns

    # Unchanged: skipped, file untouched, same manifest returned.
    m2, rebuilt = zoo.build(out, only=only)["digits"]
    assert not rebuilt and m2 == m1 and onnx_path.stat().st_mtime_ns == mtime

    # --force rebuilds (to identical bytes).
    m3, rebuilt = zoo.build(out, only=only, force=True)["digits"]
    assert rebuilt and m3["sha256"] == m1["sha256"]

    # Corrupted model: hash no longer matches the manifest -> rebuilt.
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    assert zoo.is_current(out, "digits") is None
    m4, rebuilt = zoo.build(out, only=only)["digits"]
    assert rebuilt and m4["sha256"] == m1["sha256"]

    # Manifest from an older recipe -> rebuilt.
    mpath = out / "digits.json"
    stale = json.loads(mpath.read_text())
    stale["recipe"] = -1
    mpath.write_text(json.dumps(stale))
    assert zoo.is_current(out, "digits") is None
    _, rebuilt = zoo.build(out, only=only)["digits"]
    assert rebuilt

    # Missing manifest -> rebuilt.
    mpath.unlink()
    _, rebuilt = zoo.build(out, only=only)["digits"]
    assert rebuilt and zoo.is_current(out, "digits") is not None


def test_unknown_model_rejected(tmp_path):
    with pytest.raises(KeyError):
        zoo.build(tmp_path, only=["nope"])


BUILD_ONLY = ("sklearn", "skl2onnx", "onnx", "torch", "transformers", "onnxscript",
              "tokenizers", "tifffile", "imagecodecs", "ukis_csmask", "scipy")


@pytest.mark.slow    # a subprocess
def test_import_does_not_need_build_toolchain():
    """Agents import agent.zoo; it must not pull in any build-only package."""
    code = (
        "import sys, agent.zoo; "
        f"bad = [m for m in {BUILD_ONLY!r} if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.slow    # a subprocess
def test_registry_lists_every_model_module():
    assert list(zoo.BUILDERS) == ["digits", "cloudmask", "embed", "matmul", "rnncell"]
    for m in zoo._MODULES:
        assert zoo.BUILDERS[m.NAME] is m.build and zoo.RECIPES[m.NAME] == m.RECIPE
        assert isinstance(m.RECIPE, int) and m.DESCRIPTION
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "list"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.split() == sorted(zoo.BUILDERS)


@pytest.mark.slow    # a subprocess
def test_cli_rejects_unknown_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "build", "--out", str(tmp_path), "--only", "nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown model" in proc.stderr


def _fake_pip(tmp_path, monkeypatch, payload: bytes | None, stderr: str = ""):
    """Stand in for ``pip download``: write ``payload`` (or fail) without a network."""
    monkeypatch.setenv("ORBITMESH_ZOO_CACHE", str(tmp_path / "cache"))
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if payload is not None:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / "pkg-1.0-py3-none-any.whl").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0 if payload is not None else 1, "", stderr)

    monkeypatch.setattr(zoo.kit.subprocess, "run", run)
    return calls


def test_pip_download_checks_the_pinned_hash(tmp_path, monkeypatch):
    good = b"wheel bytes"
    digest = hashlib.sha256(good).hexdigest()
    calls = _fake_pip(tmp_path, monkeypatch, good)
    path = zoo.pip_download("pkg==1.0", "pkg-1.0-py3-none-any.whl", digest)
    assert path.read_bytes() == good and len(calls) == 1
    assert "--no-deps" in calls[0] and "pkg==1.0" in calls[0]
    # Cached and intact: no second download.
    assert zoo.pip_download("pkg==1.0", "pkg-1.0-py3-none-any.whl", digest) == path
    assert len(calls) == 1
    # A download that does not match the pin is refused and removed.
    path.unlink()
    _fake_pip(tmp_path, monkeypatch, b"tampered")
    with pytest.raises(zoo.FetchError, match="does not match the pinned"):
        zoo.pip_download("pkg==1.0", "pkg-1.0-py3-none-any.whl", digest)
    assert not path.exists()


def test_pip_download_failure_is_clear(tmp_path, monkeypatch):
    _fake_pip(tmp_path, monkeypatch, None,
              stderr="WARNING: noise\nERROR: No matching distribution found for pkg==1.0\n")
    with pytest.raises(zoo.FetchError, match="pip download pkg==1.0 failed: ERROR: No matching"):
        zoo.pip_download("pkg==1.0", "pkg-1.0-py3-none-any.whl", "0" * 64)


def test_check_limits_generic():
    manifest = {"limits": {"max_elements": 6, "max_shape": {"x": [None, 3]}, "value_range": {"x": [0, 9]}}}
    zoo.check_limits("digits", {"x": np.zeros((2, 3), np.int64)}, manifest)
    zoo.check_limits("digits", {"x": np.zeros((2, 3))}, None)  # no manifest: nothing to check
    for arr, words in [
        (np.zeros((7, 1), np.int64), "7 elements exceed digits's limit of 6"),
        (np.zeros((1, 4), np.int64), "dimension 1 is 4, digits accepts at most 3"),
        (np.full((1, 2), 10, np.int64), "value 10 is outside digits's range [0, 9]"),
        (np.full((1, 2), -1, np.int64), "value -1 is outside"),
    ]:
        with pytest.raises(zoo.LimitError) as err:
            zoo.check_limits("digits", {"x": arr}, manifest)
        assert words in str(err.value)


def test_check_limits_runs_the_model_hook():
    a, b = np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(zoo.LimitError, match="inner dimensions differ"):
        zoo.check_limits("matmul", {"a": a, "b": b}, {"limits": {}})
    with pytest.raises(zoo.LimitError, match="c would have"):
        zoo.check_limits("matmul", {"a": np.zeros((2048, 1), np.float32), "b": np.zeros((1, 2048), np.float32)}, {})
    zoo.check_limits("matmul", {"a": a, "b": a.T.copy()}, {})


def test_canonical_models_carry_no_build_paths(built):
    data = (built / "digits.onnx").read_bytes()
    assert str(REPO).encode() not in data and b"stack_trace" not in data
