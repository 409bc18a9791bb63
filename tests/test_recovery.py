"""A restarted entry node: damaged journal rows are quarantined, every recovered task ends by its deadline.

In process, no sockets: the node is built but its links never open, which is
what a paused target looks like from the entry (nothing ever answers).
"""

import time

import numpy as np
import pytest
import trio

from agent.ops.fleet import FleetSpec, fleet_config
from agent.runtime.journal import Journal
from agent.runtime.metrics import render
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.peers import PeerEntry, Peers
from mesh.wire import TaskRequest, Tensor, encode_message


class _Host:
    """Just enough of a libp2p host to build a Node: nothing here opens a socket."""

    def __init__(self, peer_id: str):
        self.peer_id = peer_id

    def listen_multiaddrs(self) -> list[str]:
        return []


def _request(tid: str, deadline: float) -> TaskRequest:
    return TaskRequest(tid, "sat-0", "sat-5", "digits", {"input": Tensor.from_array(np.ones((1, 64), np.float32))},
                       64, deadline=deadline, model_sha256="ab" * 32)


def _entry(tmp_path, models_dir, journal: Journal) -> Node:
    cfg = fleet_config(FleetSpec(n=8)).with_start(time.time())
    entries = [PeerEntry(f"sat-{i}", i, f"peer-{i}", f"/ip4/127.0.0.1/tcp/{20000 + i}/p2p/peer-{i}",
                         f"http://127.0.0.1:{30000 + i}") for i in range(cfg.size)]
    return Node("sat-0", cfg, Peers(entries), _Host("peer-0"), ModelStore(models_dir), journal=journal)


@pytest.fixture
def journal_with_a_bad_row(tmp_path):
    """Five tasks accepted by sat-0 for sat-5, due in 1.5 s; the third row's bytes damaged in the file."""
    path = tmp_path / "tasks.sqlite"
    j = Journal(path)
    now = time.time()
    for k in range(5):
        j.accept(_request(f"sat-0-t{k}", now + 1.5), "sat-5", "target chosen by the client", now, f"key-{k}")
    j.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    j.close()
    raw = bytearray(path.read_bytes())
    at = raw.find(encode_message(_request("sat-0-t2", now + 1.5)))
    raw[at:at + 8] = b"\xc1" * 8
    path.write_bytes(bytes(raw))
    return Journal(path)


def test_a_bad_row_is_quarantined_and_reported_and_the_others_recover(tmp_path, models_dir, journal_with_a_bad_row):
    node = _entry(tmp_path, models_dir, journal_with_a_bad_row)
    node._recover()
    assert node.recovered == 4
    assert sorted(r for r in node._requests) == ["sat-0-t0", "sat-0-t1", "sat-0-t3", "sat-0-t4"]
    assert all(node.tasks.get(f"sat-0-t{k}").status == "accepted" for k in (0, 1, 3, 4))
    st = node.storage()["journal"]
    assert st["recovered"] == 4 and st["quarantined"] == 1 and st["quarantine"][0]["task_id"] == "sat-0-t2"
    assert node.describe()["storage"]["journal"]["quarantined"] == 1
    assert 'orbitmesh_journal_quarantined_rows{node="sat-0"} 1.0' in render(node).decode()
    # the damaged task answers as failed with the reason, not as unknown and not as pending
    bad = node.find_task("sat-0-t2")
    assert bad.status == "failed" and "journal entry was damaged" in bad.error
    # its idempotency key still names it: a retry gets its failure, not a second task
    assert node.journal.by_key("key-2") == "sat-0-t2" and node._by_idem_key("key-2").status == "failed"
    assert node.find_task("sat-0-t1").status == "accepted"


async def test_every_recovered_task_ends_by_its_deadline_when_its_target_never_answers(
        tmp_path, models_dir, journal_with_a_bad_row):
    """The probe's bug: tasks recovered while their target was paused stayed `accepted` past
    their deadline.  Here the target never answers and, worse, the ledger loses track of
    them (as whatever path left them pending did): the deadline timers still end each one."""
    node = _entry(tmp_path, models_dir, journal_with_a_bad_row)
    node.deadlines.grace_s = 0.2
    node._recover()
    node.ledger._tasks.clear()                      # delivery's own deadline is gone: only the backstop is left
    assert len(node.deadlines) == 4
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._enforce_deadlines)
            while any(node.tasks.get(f"sat-0-t{k}").status == "accepted" for k in (0, 1, 3, 4)):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    for k in (0, 1, 3, 4):
        rec = node.tasks.get(f"sat-0-t{k}")
        assert rec.status == "failed" and "no result by the task's deadline" in rec.error
        assert rec.finished <= rec.deadline + 0.5            # by its deadline (+ the timer's grace and a tick)
        row = node.journal.get(rec.task_id)
        assert row.status == "failed" and row.error == rec.error     # final in the journal too
    assert node.storage()["deadline_timer_failed"] == 4 and not node._requests


async def test_the_backstop_sleeps_while_idle_and_wakes_for_a_sooner_deadline(tmp_path, models_dir):
    """An idle node's backstop sleeps for ever (it polled once a second); a new task wakes it."""
    journal = Journal(tmp_path / "tasks.sqlite")
    node = _entry(tmp_path, models_dir, journal)
    node.deadlines.grace_s = 0.1
    node._recover()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._enforce_deadlines)
            await trio.sleep(0.3)                    # asleep with no deadline at all
            journal.accept(_request("sat-0-soon", time.time() + 0.2), "sat-5", "", time.time())
            rec = node.find_task("sat-0-soon")       # its timer starts here and wakes the backstop
            node.ledger._tasks.clear()               # only the backstop can end it
            while rec.status == "accepted":
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert rec.status == "failed" and "no result by the task's deadline" in rec.error
    # due at deadline + 0.1 s of grace; a once-a-second poll would have ended it up to 1 s later
    assert rec.finished <= rec.deadline + 0.35, rec.finished - rec.deadline


def test_a_task_open_in_the_journal_but_unknown_in_memory_gets_a_timer_when_asked_for(tmp_path, models_dir):
    journal = Journal(tmp_path / "tasks.sqlite")
    node = _entry(tmp_path, models_dir, journal)
    node._recover()                                  # nothing to recover yet
    journal.accept(_request("sat-0-late", time.time() + 30), "sat-5", "", time.time())   # recovery missed it
    rec = node.find_task("sat-0-late")
    assert rec.status == "accepted" and node.tasks.get("sat-0-late") is rec
    assert len(node.deadlines) == 1 and "sat-0-late" in node._requests and node.ledger.pending() == ["sat-0-late"]
    gone = journal.accept(_request("sat-0-old", time.time() - 1), "sat-5", "", time.time() - 31)
    assert gone is None and node.find_task("sat-0-old").status == "failed"


def test_deadline_timers_on_a_fake_clock():
    from agent.runtime.tasks import DeadlineTimers, TaskRecord, TaskTable
    table, timers = TaskTable(capacity=4), DeadlineTimers(grace_s=1.0)
    recs = [TaskRecord(f"t{k}", "digits", "sat-0", "sat-5", created=0.0, deadline=10.0 * (k + 1)) for k in range(3)]
    for r in recs:
        table.add(r)
        timers.watch(r)
    timers.watch(TaskRecord("no-deadline", "digits", "sat-0", "sat-5", created=0.0))   # inf: no timer
    assert len(timers) == 3 and timers.next_at() == 11.0
    assert timers.due(10.9, table) == []                      # the grace: the ledger speaks first
    recs[1].finish(ok=True, when=15.0)                        # ended in time: its timer is a no-op
    assert timers.due(21.0, table) == [recs[0]] and timers.fired == 1
    assert timers.due(31.0, table) == [recs[2]] and len(timers) == 0 and timers.fired == 2
    # timers of finished tasks do not pile up beyond 4 × the table's capacity
    for k in range(40):
        r = TaskRecord(f"x{k}", "digits", "sat-0", "sat-5", created=0.0, deadline=1e9)
        table.add(r)
        timers.watch(r)
        r.finish(ok=True, when=1.0)
    timers.due(32.0, table)
    assert len(timers) <= 4 * table.capacity
