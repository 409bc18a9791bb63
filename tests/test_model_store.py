"""The content-addressed model store and fetching models over the mesh (in process)."""

import hashlib

import numpy as np
import pytest
import trio
from onnx import TensorProto, helper

from agent.compute.model_fetch import ModelFetcher
from agent.compute.models import ModelError, ModelStore, UploadError


def doubler(factor: float = 2.0, pad: int = 0) -> bytes:
    """A tiny real ONNX model: y = x × factor (``pad`` bytes of unused weights make it bigger)."""
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])]
    if pad:
        inits.append(helper.make_tensor("unused", TensorProto.UINT8, [pad], bytes(pad), raw=True))
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "doubler",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture
def store(tmp_path, models_dir):
    return ModelStore(models_dir, uploads=tmp_path / "uploads", max_model_bytes=1 << 20)


def test_an_upload_is_validated_stored_by_hash_and_runs(store):
    data = doubler()
    sha = hashlib.sha256(data).hexdigest()
    info = store.put("double", data, sha)
    assert info["sha256"] == sha and info["inputs"][0]["name"] == "x"
    assert (store.uploads / "blobs" / f"{sha}.onnx").read_bytes() == data
    assert "double" in store.names() and store.has("double", sha) and not store.has("double", "0" * 64)
    out = store.get("double").session.run(None, {"x": np.ones((2, 4), dtype=np.float32)})[0]
    assert np.array_equal(out, np.full((2, 4), 2.0, dtype=np.float32))
    assert store.sha256("digits") == hashlib.sha256((store.directory / "digits.onnx").read_bytes()).hexdigest()


def test_a_new_version_replaces_the_name_and_its_session(store):
    store.put("double", doubler(2.0))
    store.get("double")
    info = store.put("double", doubler(3.0))
    assert store.sha256("double") == info["sha256"]
    out = store.get("double").session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
    assert out[0, 0] == 3.0


@pytest.mark.parametrize("name, data, sha, status, words", [
    ("double", b"not a protobuf at all", None, 400, "not a loadable ONNX model"),
    ("double", doubler(), "0" * 64, 400, "sha256 mismatch"),
    ("double", doubler(pad=2 << 20), None, 413, "exceeds the 1048576-byte limit"),
    ("digits", doubler(), None, 409, "zoo model"),
    ("../etc", doubler(), None, 400, "model name"),
    ("evil\n", doubler(), None, 400, "model name"),          # `$` matches before a trailing newline
    ("double", b"", None, 400, "empty"),
])
def test_bad_uploads_are_refused_with_the_reason_and_nothing_is_written(store, name, data, sha, status, words):
    with pytest.raises(UploadError) as err:
        store.put(name, data, sha)
    assert err.value.status == status and words in str(err.value)
    assert store.uploaded_names() == []


def test_a_node_without_an_upload_store_says_so(models_dir):
    with pytest.raises(UploadError) as err:
        ModelStore(models_dir).put("double", doubler())
    assert err.value.status == 503


async def pair(tmp_path, models_dir, deliver):
    """Two fetchers that talk through ``deliver(msg, to_fetcher)``."""
    a = ModelStore(models_dir, uploads=tmp_path / "a")
    b = ModelStore(models_dir, uploads=tmp_path / "b")
    fetchers = {}
    fetchers["sat-0"] = ModelFetcher("sat-0", a, lambda m, dst: deliver(m, fetchers[dst]), 64)
    fetchers["sat-5"] = ModelFetcher("sat-5", b, lambda m, dst: deliver(m, fetchers[dst]), 64)
    return a, b, fetchers


def wire(msg, to):
    from mesh.wire import ModelChunk
    if isinstance(msg, ModelChunk):
        to.on_chunk(msg)
    else:
        to.send(to.serve(msg), msg.requester)


async def test_a_model_is_fetched_in_chunks_verified_and_stored(tmp_path, models_dir):
    a, b, f = await pair(tmp_path, models_dir, wire)
    data = doubler(pad=3 << 20)                       # 4 pieces
    info = a.put("big", data)
    with trio.fail_after(10):
        await f["sat-5"].fetch("big", info["sha256"], "sat-0", 1e12)
    assert b.read("big") == data and b.has("big", info["sha256"])
    assert f["sat-0"].served_bytes == len(data)


async def test_lost_pieces_are_asked_for_again(tmp_path, models_dir, monkeypatch):
    monkeypatch.setattr("agent.compute.model_fetch.PIECE_TIMEOUT_S", 0.05)
    dropped = []

    def lossy(msg, to):
        from mesh.wire import ModelFetch
        if isinstance(msg, ModelFetch) and msg.attempt == 0 and msg.offset > 0:
            dropped.append(msg.offset)               # every first request for a later piece is lost
            return
        wire(msg, to)

    a, b, f = await pair(tmp_path, models_dir, lossy)
    info = a.put("big", doubler(pad=2 << 20))
    with trio.fail_after(10):
        await f["sat-5"].fetch("big", info["sha256"], "sat-0", 1e12)
    assert dropped and b.has("big", info["sha256"])


async def test_a_holder_without_the_model_or_bad_bytes_fail_the_fetch_with_the_reason(tmp_path, models_dir):
    def tamper(msg, to):
        from dataclasses import replace
        from mesh.wire import ModelChunk
        if isinstance(msg, ModelChunk) and msg.data:
            msg = replace(msg, data=bytes([msg.data[0] ^ 1]) + msg.data[1:])
        wire(msg, to)

    a, b, f = await pair(tmp_path, models_dir, wire)
    with pytest.raises(ModelError, match="has no model 'ghost'"):
        await f["sat-5"].fetch("ghost", "ab" * 32, "sat-0", 1e12)
    a, b, f = await pair(tmp_path / "t", models_dir, tamper)
    info = a.put("double", doubler())
    with pytest.raises(ModelError, match="hashes to"):
        await f["sat-5"].fetch("double", info["sha256"], "sat-0", 1e12)
    assert not b.has("double")


def test_sessions_beyond_the_memory_budget_are_evicted_least_recently_used(tmp_path, models_dir):
    store = ModelStore(models_dir, uploads=tmp_path / "u", session_budget_bytes=1)   # room for one at a time
    store.put("double", doubler())
    store.get("digits")
    store.get("matmul")
    assert store.loaded_names() == ["matmul"] and store.evictions == 1
    store.get("double")
    assert store.loaded_names() == ["double"] and store.evictions == 2
    out = store.get("digits").session.run(None, {"input": np.zeros((1, 64), dtype=np.float32)})
    assert out[0].shape == (1,)                          # reloaded on demand
    assert store.memory()["sessions"].keys() == {"digits"}
    roomy = ModelStore(models_dir, session_budget_bytes=1 << 30)
    roomy.get("digits")
    roomy.get("matmul")
    roomy.get("digits")                                  # a hit moves it to the back of the queue
    assert list(roomy.memory()["sessions"]) == ["matmul", "digits"] and roomy.evictions == 0


def test_concurrent_uploads_of_one_name_never_share_a_temporary_file(store):
    """Issue 18's probe: concurrent PUTs of one name wrote into one temporary file (500s)."""
    import threading
    versions = [doubler(float(k)) for k in range(2, 10)]
    errors = []

    def upload(data):
        try:
            store.put("double", data)
        except Exception as exc:     # any failure is the bug
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(d,)) for d in versions for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.sha256("double") in {hashlib.sha256(d).hexdigest() for d in versions}
    assert not [p for p in store.uploads.rglob("*") if p.name.endswith(".tmp")]
    out = store.get("double").session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
    assert out[0, 0] in {float(k) for k in range(2, 10)}


def test_bytes_that_do_not_match_their_digest_are_refused_on_load_and_reported(store):
    data = doubler(2.0)
    sha = store.put("double", data)["sha256"]
    blob = store.uploads / "blobs" / f"{sha}.onnx"
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))        # one bit flipped on disk
    with pytest.raises(ModelError, match="do not match its sha256"):
        store.get("double")
    assert "double" in store.storage()["damaged"] and not store.loaded("double")
    store.put("double", data)                                   # the same upload again repairs it
    assert store.get("double").sha256 == sha and store.storage()["damaged"] == {}
    # the zoo is checked against its manifest's digest too
    zoo = ModelStore(store.directory)
    assert zoo.get("digits").sha256 == zoo._zoo_sha("digits")


def test_old_versions_beyond_the_retention_are_removed(tmp_path, models_dir):
    store = ModelStore(models_dir, uploads=tmp_path / "u", keep_versions=2, keep_fetched=1)
    shas = [store.put("double", doubler(float(k)))["sha256"] for k in (2, 3, 4, 5)]
    blobs = {p.stem for p in (tmp_path / "u" / "blobs").glob("*.onnx")}
    assert blobs == set(shas[2:]) and store.blobs.collected == 2
    assert store.blobs.ref("double")["versions"] == [shas[3], shas[2]]
    # an older version still kept can be run by digest; a collected one is gone
    assert store.has_version("double", shas[2]) and not store.has_version("double", shas[0])
    # versions fetched for tasks (named nowhere here): the most recent keep_fetched stay
    import os
    for k, factor in enumerate((6.0, 7.0)):
        data = doubler(factor)
        store.put_version("double", data, hashlib.sha256(data).hexdigest())
        path = store.blobs.blob_path(hashlib.sha256(data).hexdigest())
        os.utime(path, (1000.0 + k, 1000.0 + k))                # distinct ages
    store.blobs.collect()
    kept = {p.stem for p in (tmp_path / "u" / "blobs").glob("*.onnx")}
    assert kept == set(shas[2:]) | {hashlib.sha256(doubler(7.0)).hexdigest()}


def test_a_task_never_replaces_another_nodes_model_of_the_same_name(tmp_path, models_dir):
    """Issue 18: a task carrying model 'double' from its entry overwrote the executor's own 'double'."""
    a, b = ModelStore(models_dir, uploads=tmp_path / "a"), ModelStore(models_dir, uploads=tmp_path / "b")
    theirs = a.put("double", doubler(2.0))["sha256"]
    mine = b.put("double", doubler(3.0))["sha256"]
    b.put_version("double", a.read("double"), theirs)           # what a fetch for the task stores
    assert b.sha256("double") == mine                           # the local name still means the local model
    key = b.key("double", theirs)
    assert key == f"double@{theirs}" and b.key("double", mine) == "double"
    x = {"x": np.ones((1, 4), dtype=np.float32)}
    assert b.get(key).session.run(None, x)[0][0, 0] == 2.0      # the task runs the entry's version
    assert b.get("double").session.run(None, x)[0][0, 0] == 3.0  # local users still get theirs
    with pytest.raises(UploadError, match="sha256 mismatch"):
        b.put_version("double", doubler(4.0), theirs)
    with pytest.raises(ModelError, match="unknown model"):
        b.get("double@" + "0" * 64)


def test_stores_of_one_process_share_a_session_per_model_version(tmp_path, tiny_models):
    """Satellites hosted together load each model version once; the session goes with its last holder."""
    import gc
    import shutil

    from agent.compute import models as models_module
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for f in ("matmul.onnx", "matmul.json"):
            shutil.copy(tiny_models / f, tmp_path / d / f)
    a, b = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b", uploads=tmp_path / "b-up")
    ma, mb = a.get("matmul"), b.get("matmul")
    assert ma.session is mb.session and ma.sha256 == mb.sha256
    x = {"a": np.ones((4, 8), np.float32), "b": np.ones((8, 3), np.float32)}
    assert np.array_equal(ma.session.run(None, x)[0], np.full((4, 3), 8.0, np.float32))
    up = b.put("mine", (tmp_path / "a" / "matmul.onnx").read_bytes())   # the same bytes, uploaded: capped
    assert up["sha256"] == ma.sha256 and b.get("mine").session is not ma.session
    key = (ma.sha256, False)
    assert models_module._SHARED_SESSIONS.get(key) is ma.session
    del ma, mb
    assert a.unload("matmul") and b.unload("matmul")
    gc.collect()
    assert models_module._SHARED_SESSIONS.get(key) is None        # no store holds it: gone
    (tmp_path / "b" / "matmul.onnx").write_bytes(b"damaged")
    with pytest.raises(ModelError, match="do not match its sha256"):  # each store still checks its own bytes
        b.get("matmul")
    assert a.get("matmul").session is not None
