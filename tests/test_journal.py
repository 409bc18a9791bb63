"""The task journal: what an entry node accepted survives a crash of the process."""

import numpy as np
import pytest

from agent.journal import Journal, JournalError
from mesh.wire import Hop, TaskRequest, TaskResult, Tensor


def request(tid="sat-0-aa", deadline=2e9):
    return TaskRequest(tid, "sat-0", "sat-5", "digits", {"input": Tensor.from_array(np.ones((1, 64), np.float32))},
                       64, deadline=deadline, model_sha256="ab" * 32)


def test_accepted_tasks_survive_a_crash_and_come_back_unfinished(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request("sat-0-aa"), "sat-5", "auto: earliest expected completion", 100.0, "key-1")
    j.accept(request("sat-0-bb"), "sat-5", "", 101.0)
    j.finish("sat-0-bb", False, 102.0, None, "boom")
    del j                                                   # no close: a kill -9 does not close either
    again = Journal(tmp_path / "t.sqlite")
    [row] = again.open_tasks()
    assert row.task_id == "sat-0-aa" and row.request == request("sat-0-aa") and row.idem_key == "key-1"
    assert row.placement.startswith("auto") and row.finished is None
    assert again.by_key("key-1") == "sat-0-aa" and again.by_key("nope") is None
    assert again.get("sat-0-bb").error == "boom"


def test_a_task_has_one_final_state_and_keeps_its_result(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request(), "sat-5", "", 100.0)
    res = TaskResult("sat-0-aa", "sat-0", "sat-5", True, {"label": Tensor.from_array(np.array([3]))},
                     trace=(Hop("sat-5", 1.0, 1.1, "execute"),), compute_s=0.001)
    j.finish("sat-0-aa", True, 103.0, res)
    j.finish("sat-0-aa", False, 104.0, None, "late failure")   # ignored: it is final already
    row = j.get("sat-0-aa")
    assert row.status == "succeeded" and row.finished == 103.0 and row.result == res and row.error == ""
    assert j.open_tasks() == [] and j.counts() == {"succeeded": 1}


def test_an_idempotency_key_names_one_task(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request("sat-0-aa"), "sat-5", "", 100.0, "k")
    with pytest.raises(JournalError, match="UNIQUE"):   # DuplicateKey
        j.accept(request("sat-0-bb"), "sat-5", "", 100.0, "k")


def test_finished_tasks_are_forgotten_after_the_retention(tmp_path):
    j = Journal(tmp_path / "t.sqlite", retention_s=60)
    for i, done in enumerate([10.0, 50.0, None]):
        j.accept(request(f"sat-0-{i}"), "sat-5", "", 0.0)
        if done is not None:
            j.finish(f"sat-0-{i}", True, done, None)
    assert j.purge(now=100.0) == 1                          # finished at 10 s: older than 60 s
    assert j.get("sat-0-0") is None and j.get("sat-0-1") is not None and j.get("sat-0-2") is not None


def test_a_damaged_entry_or_an_unwritable_file_is_a_clear_error(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request(), "sat-5", "", 100.0)
    j.db.execute("UPDATE tasks SET request = ?", (b"\xc1garbage",))
    with pytest.raises(JournalError, match="damaged journal entry"):
        j.open_tasks()
    (tmp_path / "dir").mkdir()
    with pytest.raises(JournalError, match="task journal"):
        Journal(tmp_path / "dir")
