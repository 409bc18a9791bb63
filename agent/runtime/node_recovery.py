"""The entry node's journal, read back: after a restart every unfinished task is sent
again under its id (or failed if its deadline passed meanwhile), and a finished task is
found there when it is no longer in memory (a replicated task's parent too: it votes again on
its replicas, ``agent/runtime/node_replicas.py``). Writing the journal is ``agent.runtime.node_tasks``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from agent import wallclock
from agent.runtime.journal import JournalError, ReplicatedRow, Row
from agent.runtime.tasks import TaskRecord

if TYPE_CHECKING:
    import collections

    import trio

    from agent.runtime.journal import Journal
    from agent.links.peers import NodeIdentity, Peers
    from agent.runtime.tasks import DeadlineTimers, TaskTable
    from mesh.delivery import TaskLedger
    from mesh.wire import TaskRequest

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs


class TaskRecovery:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    peers: Peers
    tasks: TaskTable
    deadlines: DeadlineTimers
    journal: Journal | None
    ledger: TaskLedger
    recovered: int
    _idem: dict[str, str]
    _requests: dict[str, TaskRequest]
    _in_flight: collections.Counter[str]
    _wake: trio.Event
    _finalize: Callable[..., bool]                                  # EntryTasks
    _watch_deadline: Callable[[TaskRecord], None]                   # EntryTasks
    _nursery: trio.Nursery | None
    _votes_to_resume: list[ReplicatedRow]
    _resume_votes: Callable[[], None]                               # ReplicatedTasks
    _replicated_record: Callable[[ReplicatedRow], TaskRecord]       # ReplicatedTasks

    def find_task(self, task_id: str) -> TaskRecord | None:
        """A task this node accepted: in memory, or (finished, within retention) in the journal."""
        rec = self.tasks.get(task_id)
        if rec is not None or self.journal is None:
            return rec
        try:
            row = self.journal.get(task_id)
            damaged = self.journal.quarantined_task(task_id) if row is None else None
        except JournalError as exc:
            log.error("%s", exc)
            return None
        if damaged is not None:
            # Its journal row could not be read back: it ends, visibly, as a failure.
            reason, created = damaged
            rec = TaskRecord(task_id, "?", self.me.name, "?", created=created or 0.0, journaled=False)
            rec.finish(ok=False, when=created or 0.0,
                       error=f"{self.me.name}: the task's journal entry was damaged and is quarantined ({reason})")
            return rec
        if row is None:
            return self._replicated_task(task_id)
        if row.finished is None:
            # Open in the journal but unknown here (recovery missed it): it gets what
            # recovery gives every open task, a re-send and a deadline timer.
            return self._recover_row(row, wallclock.now())
        rec = TaskRecord(row.task_id, row.model, self.me.name, row.executor, created=row.created,
                         placement=row.placement)
        if row.finished is not None:
            res = row.result
            rec.finish(ok=row.status == "succeeded", when=row.finished, error=row.error,
                       outputs={k: t.to_array() for k, t in res.outputs.items()} if res and res.ok else None,
                       trace=res.trace if res else (), compute_s=res.compute_s if res else 0.0)
        return rec

    def _recover(self) -> None:
        """After a restart: every task accepted but not final is sent again under its id
        (or failed at once if its deadline passed while this node was down).  A row the
        journal cannot read back is quarantined there and reported; the others recover."""
        if self.journal is None:
            return
        try:
            rows = self.journal.open_tasks()
        except JournalError as exc:
            log.error("%s: no task recovered: %s", self.me.name, exc)
            return
        now = wallclock.now()
        for row in rows:
            self._recover_row(row, now)
        try:        # replicated tasks vote again once the node runs (agent/runtime/node_replicas.py)
            self._votes_to_resume = self.journal.open_replicated()
        except JournalError as exc:
            log.error("%s: no replicated task recovered: %s", self.me.name, exc)
        if rows or self.journal.quarantined_now:
            log.warning("%s: recovered %d unfinished tasks from the journal; %d damaged row(s) quarantined",
                        self.me.name, self.recovered, self.journal.quarantined_now)

    def _replicated_task(self, task_id: str) -> TaskRecord | None:
        """A replicated task's parent from the journal: final (with the winner's outputs), or open and
        voting again (its entry restarted and recovery has not reached it yet)."""
        assert self.journal is not None
        try:
            row = self.journal.replicated(task_id)
        except JournalError as exc:
            log.error("%s", exc)
            return None
        if row is None:
            return None
        if row.finished is not None:
            return self._replicated_record(row)
        if self._nursery is None:
            return None
        self._votes_to_resume.append(row)
        self._resume_votes()
        return self.tasks.get(task_id)

    def _recover_row(self, row: Row, now: float) -> TaskRecord:
        """One open journal row back in memory: re-sent at once, with its deadline timer."""
        rec = TaskRecord(row.task_id, row.model, self.me.name, row.executor, created=row.created,
                         placement=row.placement, deadline=row.deadline)
        self.tasks.add(rec)
        if row.idem_key:
            self._idem[row.idem_key] = row.task_id
        if row.deadline <= now:
            self._finalize(rec, ok=False, when=now, error=f"{self.me.name} was down until after the deadline")
            return rec
        self._watch_deadline(rec)
        self._requests[row.task_id] = row.request
        executor = row.executor if row.executor in self.peers else self.me.name
        self._in_flight[executor] += 1
        # Retry at once: whatever was in flight died with the old process.
        try:
            self.ledger.submit(now, row.task_id, self.peers[executor].index, row.deadline, retry_after=0.0)
        except ValueError as exc:       # known to the ledger already: its timer stands
            log.warning("%s: %s", self.me.name, exc)
        self.recovered += 1
        self._wake.set()
        return rec
