"""Zoo model ``embed`` and its run-time tokeniser (agent.zoo.textprep)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow    # needs the built model and rebuilds it in a subprocess

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from agent import zoo  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from agent.compute.tensors import InputError, inputs_from_json  # noqa: E402
from agent.zoo import embed, textprep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
BUILD_DEPS = ("onnx", "torch", "transformers", "onnxscript")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """models/ when it holds a current build (the Makefile builds it), else a fresh one (~20 s)."""
    if zoo.is_current(MODELS, "embed") is not None:
        return MODELS
    for mod in BUILD_DEPS:
        pytest.importorskip(mod)
    out = tmp_path_factory.mktemp("zoo")
    zoo.build(out, only=["embed"])
    return out


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built / "embed.json").read_text())


@pytest.fixture(scope="module")
def sess(built):
    return ort.InferenceSession(str(built / "embed.onnx"), session_options(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer(built) -> Path:
    return built / embed.TOKENIZER_FILE


def test_manifest(manifest, built):
    assert manifest["sha256"] == hashlib.sha256((built / "embed.onnx").read_bytes()).hexdigest()
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": [None, None]},
                                  {"name": "attention_mask", "dtype": "int64", "shape": [None, None]}]
    assert manifest["outputs"] == [{"name": "sentence_embedding", "dtype": "float32", "shape": [None, 384]}]
    pre = manifest["preprocess"]
    assert pre["kind"] == "tokenize" and pre["tokenizer"] == "embed.tokenizer.json" and pre["max_len"] == 256
    tok_sha = hashlib.sha256((built / "embed.tokenizer.json").read_bytes()).hexdigest()
    assert manifest["files"] == {"embed.tokenizer.json": tok_sha}
    assert manifest["source"]["files"]["tokenizer.json"] == tok_sha  # shipped unchanged
    assert manifest["source"]["wheel_sha256"] == embed.WHEEL_SHA256
    assert 15e6 < manifest["size_bytes"] < 30e6  # int8, not the 87 MB float32 graph
    assert manifest["quality"]["min_cosine_int8_vs_float32"] >= 0.97
    assert [s["text"] for s in manifest["samples"]] == [t for _, t in embed.SENTENCES]
    data = (built / "embed.onnx").read_bytes()  # the exporter's stack traces are stripped
    assert b"stack_trace" not in data and b"site-packages" not in data and str(REPO).encode() not in data


def test_textprep_reproduces_the_samples(manifest, tokenizer):
    for s in manifest["samples"]:
        enc = textprep.encode(s["text"], tokenizer)
        assert sorted(enc) == ["attention_mask", "input_ids"]
        assert all(v.dtype == np.int64 for v in enc.values())
        assert enc["input_ids"].tolist() == s["inputs"]["input_ids"]
        assert enc["attention_mask"].tolist() == s["inputs"]["attention_mask"]
    ids = manifest["samples"][0]["inputs"]["input_ids"][0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]


def test_unit_vectors_and_paraphrases_closer(manifest, sess):
    embs = []
    for s in manifest["samples"]:
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in s["inputs"].items()}
        (e,) = sess.run(None, feed)
        assert e.shape == (1, 384) and e.dtype == np.float32
        embs.append(e[0])
    e = np.stack(embs)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    groups = [s["group"] for s in manifest["samples"]]
    sim = e @ e.T
    n = len(groups)
    for i in range(n):
        for j in range(n):
            if i != j and groups[i] == groups[j]:
                others = [sim[i, k] for k in range(n) if groups[k] != groups[i]]
                assert sim[i, j] > max(others) + 0.1, (groups[i], sim[i, j], max(others))


def test_padded_batch_matches_single_sentences(manifest, sess, tokenizer):
    texts = [s["text"] for s in manifest["samples"]]
    batch = textprep.encode(texts, tokenizer)
    lengths = batch["attention_mask"].sum(axis=1)
    assert batch["input_ids"].shape == (len(texts), lengths.max()) and lengths.min() < lengths.max()
    (eb,) = sess.run(None, batch)
    for i, s in enumerate(manifest["samples"]):
        (e1,) = sess.run(None, {k: np.asarray(v, np.int64) for k, v in s["inputs"].items()})
        # int8 activations are quantised per tensor, i.e. over the whole batch,
        # so a sentence's embedding moves slightly with its batch-mates.
        assert float(eb[i] @ e1[0]) > 0.98


def test_textprep_truncates_and_rejects_bad_input(tokenizer):
    long = " ".join(["satellite"] * 600)
    assert textprep.encode(long, tokenizer)["input_ids"].shape == (1, 256)
    assert textprep.encode(long, tokenizer, max_len=16)["input_ids"].shape == (1, 16)
    assert "token_type_ids" in textprep.encode("x", tokenizer, with_token_type_ids=True)
    for bad, words in [([], "empty"), ([1, 2], "strings"), (None, "strings"),
                       (["x"] * (textprep.MAX_TEXTS + 1), "limit")]:
        with pytest.raises(textprep.TextError, match=words):
            textprep.encode(bad, tokenizer)
    with pytest.raises(textprep.TextError, match="max_len"):
        textprep.encode("x", tokenizer, max_len=10_000)
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        textprep.encode("x", tokenizer.parent / "embed.json")


def test_signature_violations_are_clear(built, manifest):
    model = ModelStore(built).get("embed")
    ok = manifest["samples"][0]["inputs"]
    assert inputs_from_json(ok, model.inputs, 10_000)["input_ids"].dtype == np.int64
    cases = [
        ({"input_ids": [[101.5, 102.0]], "attention_mask": [[1, 1]]}, "cannot be int64 without loss"),
        ({"input_ids": ok["input_ids"]}, "missing ['attention_mask']"),
        ({**ok, "token_type_ids": [[0]]}, "unexpected ['token_type_ids']"),
        ({"input_ids": [101, 102], "attention_mask": [1, 1]}, "rank 1"),
    ]
    for raw, words in cases:
        with pytest.raises(InputError) as err:
            inputs_from_json(raw, model.inputs, 10_000)
        assert words in str(err.value), (words, str(err.value))


def test_limits_beyond_the_signature(manifest, sess):
    """Too long or out-of-vocabulary input: onnxruntime's error is opaque, check_limits' is not."""
    ids = np.full((1, 600), 2000, np.int64)
    with pytest.raises(Exception, match="Add"):  # what a task would fail with unchecked
        sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with pytest.raises(zoo.LimitError, match="dimension 1 is 600, embed accepts at most 512"):
        zoo.check_limits("embed", {"input_ids": ids, "attention_mask": np.ones_like(ids)}, manifest)
    ids = np.array([[101, 40000, 102]], np.int64)
    with pytest.raises(zoo.LimitError, match=r"value 40000 is outside embed's range \[0, 30521\]"):
        zoo.check_limits("embed", {"input_ids": ids, "attention_mask": np.ones_like(ids)}, manifest)
    ids = np.array([[101, 2000, 102]], np.int64)
    with pytest.raises(zoo.LimitError, match="value 2 is outside"):
        zoo.check_limits("embed", {"input_ids": ids, "attention_mask": np.full_like(ids, 2)}, manifest)
    s = manifest["samples"][0]["inputs"]
    zoo.check_limits("embed", {k: np.asarray(v, np.int64) for k, v in s.items()}, manifest)
    assert manifest["limits"]["max_shape"]["input_ids"][0] == textprep.MAX_TEXTS


def test_tampered_tokenizer_means_rebuild(built, tmp_path):
    for f in ("embed.onnx", "embed.json", "embed.tokenizer.json"):
        shutil.copy(built / f, tmp_path / f)
    assert zoo.is_current(tmp_path, "embed") is not None
    with open(tmp_path / "embed.tokenizer.json", "ab") as f:
        f.write(b" ")
    assert zoo.is_current(tmp_path, "embed") is None
    (tmp_path / "embed.tokenizer.json").unlink()
    assert zoo.is_current(tmp_path, "embed") is None


def test_byte_identical_rebuild(built, manifest, tmp_path):
    """Export + quantisation again, under another PYTHONHASHSEED: same bytes (~20 s)."""
    for mod in BUILD_DEPS:
        pytest.importorskip(mod)
    out = tmp_path / "again"
    env = {**os.environ, "PYTHONHASHSEED": "31337"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "agent.zoo", "build", "--out", str(out), "--only", "embed"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((out / "embed.onnx").read_bytes()).hexdigest() == manifest["sha256"]
    assert (out / "embed.tokenizer.json").read_bytes() == (built / "embed.tokenizer.json").read_bytes()
    assert (out / "embed.json").read_bytes() == (built / "embed.json").read_bytes()
