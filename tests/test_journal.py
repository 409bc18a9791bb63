"""The task journal: what an entry node accepted survives a crash of the process."""

import sqlite3

import numpy as np
import pytest

from agent.runtime.journal import DuplicateKey, Journal, JournalError
from mesh.wire import Hop, TaskRequest, TaskResult, Tensor, encode_message


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


def test_a_damaged_entry_is_quarantined_and_an_unwritable_file_is_a_clear_error(tmp_path):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request(), "sat-5", "", 100.0)
    j.db.execute("UPDATE tasks SET request = ?", (b"\xc1garbage",))
    assert j.open_tasks() == [] and j.quarantined() == 1 and j.quarantined_now == 1
    reason, created = j.quarantined_task("sat-0-aa")
    assert "damaged journal entry" in reason and created == 100.0
    assert j.get("sat-0-aa") is None and j.counts() == {}
    (tmp_path / "dir").mkdir()
    with pytest.raises(JournalError, match="task journal"):
        Journal(tmp_path / "dir")


def test_one_row_corrupted_in_the_file_is_quarantined_and_the_others_recover(tmp_path):
    """Bytes flipped inside one row of a real journal file (as a bad sector or a stray
    write would): recovery reads every other row back and reports the bad one."""
    path = tmp_path / "tasks.sqlite"
    j = Journal(path)
    for k in range(5):
        j.accept(request(f"sat-0-t{k}"), "sat-5", "", 100.0 + k, f"key-{k}")
    j.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")       # every row in the main file
    j.close()
    raw = bytearray(path.read_bytes())
    victim = encode_message(request("sat-0-t2"))
    at = raw.find(victim)
    assert at > 0
    raw[at:at + 8] = b"\xc1" * 8                           # msgpack's one never-used byte
    path.write_bytes(bytes(raw))
    again = Journal(path)
    rows = again.open_tasks()
    assert [r.task_id for r in rows] == ["sat-0-t0", "sat-0-t1", "sat-0-t3", "sat-0-t4"]
    assert again.quarantined() == 1 and again.quarantine_listing()[0]["task_id"] == "sat-0-t2"
    assert again.quarantined_task("sat-0-t2") is not None and again.quarantined_task("sat-0-t1") is None
    again.close()
    third = Journal(path)                                   # the quarantine is kept; nothing is quarantined twice
    assert len(third.open_tasks()) == 4 and third.quarantined() == 1 and third.quarantined_now == 0


@pytest.mark.parametrize("column, value", [("created", "yesterday"), ("deadline", None), ("status", "lost"),
                                           ("model", b"\x00\xff"), ("result", "not a blob")])
def test_fields_of_the_wrong_type_are_damage_too(tmp_path, column, value):
    j = Journal(tmp_path / "t.sqlite")
    j.accept(request("sat-0-aa"), "sat-5", "", 100.0)
    j.accept(request("sat-0-bb"), "sat-5", "", 101.0)
    try:
        j.db.execute(f"UPDATE tasks SET {column} = ? WHERE task_id = 'sat-0-aa'", (value,))
    except sqlite3.IntegrityError:                          # NOT NULL: write around it as damage would
        j.db.execute("PRAGMA writable_schema = ON")
        j.db.execute(f"UPDATE tasks SET {column} = 'x' WHERE task_id = 'sat-0-aa'")
    assert [r.task_id for r in j.open_tasks()] == ["sat-0-bb"] and j.quarantined() == 1


def test_a_file_that_is_no_database_any_more_is_set_aside_and_the_node_starts(tmp_path):
    path = tmp_path / "tasks.sqlite"
    j = Journal(path)
    j.accept(request(), "sat-5", "", 100.0)
    j.close()
    path.write_bytes(b"\x00" * 100 + path.read_bytes()[100:])      # its header overwritten
    again = Journal(path)
    assert again.set_aside is not None and again.set_aside.is_file() and again.set_aside.name.startswith(
        "tasks.sqlite.damaged-")
    assert again.open_tasks() == []
    again.accept(request("sat-0-new"), "sat-5", "", 200.0)          # and it works
    assert [r.task_id for r in again.open_tasks()] == ["sat-0-new"]


def test_a_replicated_tasks_parent_is_kept_open_then_final_and_its_key_names_it(tmp_path):
    j = Journal(tmp_path / "tasks.sqlite", retention_s=10)
    j.accept_replicated("sat-0-abc", "k1", "digits", ["sat-1", "sat-5", "sat-9"], "majority", "one per plane", 100.0, 130.0)
    with pytest.raises(DuplicateKey):
        j.accept_replicated("sat-0-def", "k1", "digits", ["sat-2"], "first", "", 101.0, 131.0)
    assert j.by_key("k1") == "sat-0-abc"
    [row] = j.open_replicated()
    assert row.executors == ("sat-1", "sat-5", "sat-9") and row.agreement == "majority" and row.finished is None
    j.finish_replicated("sat-0-abc", True, 120.0, "sat-0-abc.r1")
    j.finish_replicated("sat-0-abc", False, 121.0, None, "late")        # one final state: the first
    row = j.replicated("sat-0-abc")
    assert (row.status, row.finished, row.winner, row.error) == ("succeeded", 120.0, "sat-0-abc.r1", "")
    assert j.open_replicated() == [] and j.replicated("nope") is None
    j.purge(now=131.0)
    assert j.replicated("sat-0-abc") is None and j.by_key("k1") is None


def test_a_journal_never_written_holds_no_file_and_reads_as_empty(tmp_path):
    """Most nodes of a big fleet are never a task's entry nor a job's home: their journals open no
    file (three each in WAL mode; 4,414 nodes of one process would need 26,000), until the first write."""
    from agent.runtime.job_copy_store import CopyStore
    from agent.runtime.job_journal import JobJournal
    tasks, jobs = Journal(tmp_path / "tasks.sqlite"), JobJournal(tmp_path / "jobs.sqlite")
    copies = CopyStore(jobs)
    assert tasks.open_tasks() == [] and tasks.open_replicated() == [] and tasks.get("sat-0-aa") is None
    assert tasks.by_key("k") is None and tasks.counts() == {} and tasks.quarantined() == 0 and tasks.purge() == 0
    assert jobs.open_jobs() == [] and jobs.job("j") is None and jobs.purge() == 0
    assert copies.kept() == [] and copies.row("j") is None and copies.purge(60.0) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    tasks.accept(request(), "sat-5", "", 100.0)
    copies.store("j1", "sat-3", "accept", {"created": 1.0, "idem_key": None, "spec": {"n": 4, "timeout_s": 60.0}})
    assert {"tasks.sqlite", "jobs.sqlite"} <= {p.name for p in tmp_path.iterdir()}
    assert [r.task_id for r in tasks.open_tasks()] == ["sat-0-aa"] and [r.job_id for r in copies.kept()] == ["j1"]
    tasks.close(), jobs.close()
    again = JobJournal(tmp_path / "jobs.sqlite")      # a past life's file: the copies' tables are there
    assert [r.job_id for r in CopyStore(again).kept()] == ["j1"]

