"""The 500s issue 18's probe found, each now a clear 4xx (in process, no sockets)."""

import json
import threading

import numpy as np
import pytest

from agent.runtime.journal import DuplicateKey, Journal
from agent.compute.models import ModelStore
from agent.serve.oip_codec import OipError, array_from_json
from agent.compute.tensors import InputError, TensorSpec, from_json, to_json
from mesh.chaos import MAX_FAULTS, FaultConflict, FaultTable, Topo
from mesh.wire import TaskRequest
from tests.test_model_store import doubler

MATRIX = TensorSpec("a", "float32", (None, None))


@pytest.mark.parametrize("value, dtype", [(1e39, "float32"), (-1e39, "float32"), (70000, "float16"),
                                          (1e300, "float32")])
def test_a_finite_number_too_big_for_the_dtype_is_a_400_not_an_infinity(value, dtype):
    with pytest.raises(InputError, match=f"outside the range of {dtype}"):
        from_json([[value]], TensorSpec("a", dtype, (None, None)), 100)
    with pytest.raises(OipError, match=f"outside the range of {dtype}") as info:
        array_from_json([value], {"float32": "FP32", "float16": "FP16"}[dtype], (1,), "input 'a'")
    assert info.value.status == 400


def test_the_largest_float32_still_fits():
    assert from_json([[3.4e38, -3.4e38]], MATRIX, 100).dtype == np.float32


def test_a_result_with_nan_or_infinity_is_still_json():
    """A model may overflow on its own (3e38 × 2 in float32): the GET must serve it, not 500."""
    arr = np.array([[np.inf, -np.inf], [np.nan, 1.5]], dtype=np.float32)
    doc = to_json(arr)
    text = json.dumps(doc, allow_nan=False)                  # what Starlette's JSONResponse demands
    assert json.loads(text)["data"] == [["Infinity", "-Infinity"], ["NaN", 1.5]]
    back = np.array(doc["data"], dtype=np.float32)
    assert np.isposinf(back[0, 0]) and np.isneginf(back[0, 1]) and np.isnan(back[1, 0]) and back[1, 1] == 1.5
    assert to_json(np.array([1, 2], dtype=np.int64))["data"] == [1, 2]


def test_the_fault_after_the_limit_is_a_conflict_that_states_the_limit():
    names = [f"sat-{i}" for i in range(2)]
    table = FaultTable(Topo(frozenset(names), frozenset({frozenset(names)}), {n: (0, 0) for n in names}))
    for i in range(MAX_FAULTS):
        _, changed = table.issue({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": f"{i + 1}ms"}, 100.0, "sat-0")
        assert changed
    with pytest.raises(FaultConflict, match=f"the limit is {MAX_FAULTS}"):
        table.issue({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "5s"}, 100.0, "sat-0")
    # one already in force is still answered (idempotent), and room comes back after a removal
    assert table.issue({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "1ms"}, 100.0, "sat-0")[1] is False
    first = table.listing(100.0)[0]["id"]
    table.remove(first, 101.0, "sat-0")
    assert table.issue({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "5s"}, 102.0, "sat-0")[1] is True


def test_a_second_task_with_a_journaled_idempotency_key_is_a_duplicate_key_error(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    req = TaskRequest("sat-0-aa", "sat-0", "sat-1", "digits", {}, ttl=8, deadline=2e9)
    j.accept(req, "sat-1", "", 100.0, "k")
    with pytest.raises(DuplicateKey):
        j.accept(TaskRequest("sat-0-bb", "sat-0", "sat-1", "digits", {}, ttl=8, deadline=2e9), "sat-1", "", 100.0, "k")
    assert j.by_key("k") == "sat-0-aa"


def test_concurrent_uploads_of_one_name_all_succeed(tmp_path, models_dir):
    """Threads of one process used to share one temporary file: the loser's rename failed (a 500)."""
    store = ModelStore(models_dir, uploads=tmp_path / "uploads", max_model_bytes=1 << 20)
    versions = [doubler(float(k)) for k in range(2, 10)]
    results, errors = [], []
    start = threading.Barrier(len(versions))

    def upload(data: bytes) -> None:
        start.wait()
        try:
            results.append(store.put("same", data)["sha256"])
        except Exception as exc:  # noqa: BLE001 — any exception is the failure under test
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == len(versions)
    assert store.sha256("same") in results                   # the name points at one complete version
    assert not list((tmp_path / "uploads").rglob("*.tmp"))   # no temporary file left behind
