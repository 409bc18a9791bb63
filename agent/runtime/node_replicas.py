"""Replicated tasks at their entry: k replicas, one vote, and the parent journaled with them.

The parent is written to the task journal (table ``replicated``) before its
replicas, which are ordinary journaled tasks ``PARENT.rI``; its end names the
replica whose answer won.  So after the entry restarts, the vote is taken again
from the replicas' recovered or final states, a retry with the same
idempotency key finds the same parent, and a finished parent is read back with
the winner's outputs.  The vote itself is ``agent/runtime/replicas.py`` (and
``mesh.voting``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from agent import entropy, wallclock
from agent.runtime.journal import DuplicateKey, JournalError, ReplicatedRow
from agent.runtime.replicas import agree, digest, replica_view
from agent.runtime.tasks import SubmitError, TaskRecord
from mesh.voting import Vote
from mesh.wire import Scan

if TYPE_CHECKING:
    import trio

    from agent.runtime.journal import Journal
    from agent.links.peers import NodeIdentity
    from agent.runtime.tasks import TaskTable

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs


class ReplicatedTasks:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    tasks: TaskTable
    journal: Journal | None
    _nursery: trio.Nursery | None
    _votes_to_resume: list[ReplicatedRow]
    _accept: Callable[..., TaskRecord]                   # EntryTasks
    _finalize: Callable[..., bool]                       # EntryTasks
    _remember_key: Callable[[str | None, str], None]     # EntryTasks
    find_task: Callable[[str], TaskRecord | None]        # TaskRecovery

    def _submit_replicas(self, model: str, loaded: Any, arrays: dict[str, np.ndarray], executors: list[str],
                         why: str, agreement: str, timeout_s: float, idem_key: str | None,
                         journaled: bool, task_id: str | None = None, scan: Scan | None = None) -> TaskRecord:
        """One task per replica (each journaled and delivered exactly once like any task), and a parent
        whose outputs are the agreed answer (agent/runtime/replicas.py).  ``scan``: a job's chunk (agent/runtime/jobs.py)."""
        now = wallclock.now()
        journaled = journaled and self.journal is not None
        parent = TaskRecord(task_id or f"{self.me.name}-{entropy.hex_id()}", model, self.me.name, ",".join(executors),
                            created=now, journaled=False, deadline=now + timeout_s, placement=why)
        if journaled:
            assert self.journal is not None
            try:       # the parent first: a crash before its replicas are written leaves them "never recorded"
                self.journal.accept_replicated(parent.task_id, idem_key, model, executors, agreement, why, now,
                                               now + timeout_s)
            except DuplicateKey as exc:
                raise SubmitError(409, f"idempotency key {idem_key!r} is taken ({exc}); use a new key") from None
            except JournalError as exc:
                raise SubmitError(503, f"{self.me.name} cannot record the task: {exc}") from None
        try:
            children = [self._accept(model, loaded, arrays, ex, f"replica {i + 1} of {len(executors)} of "
                                     f"{parent.task_id}", timeout_s, None, journaled, None,
                                     task_id=f"{parent.task_id}.r{i}", scan=scan)
                        for i, ex in enumerate(executors)]
        except SubmitError as exc:
            if journaled:       # refused: its row must not stay open, or a retry with its key would find it
                assert self.journal is not None
                try:
                    self.journal.finish_replicated(parent.task_id, False, wallclock.now(), None, f"not accepted: {exc}")
                except JournalError as exc2:
                    log.error("%s", exc2)
            raise
        self._remember_key(idem_key, parent.task_id)
        self._start_vote(parent, children, agreement, journaled)
        return parent

    def _start_vote(self, parent: TaskRecord, children: list[TaskRecord], agreement: str, journaled: bool) -> None:
        vote = Vote(len(children), agreement)
        parent.replicas = replica_view(vote, children)
        self.tasks.add(parent)
        journal = self.journal if journaled else None

        def finalize(rec: TaskRecord, *, ok: bool, when: float, outputs: dict[str, np.ndarray] | None = None,
                     error: str = "", trace: tuple = (), compute_s: float = 0.0) -> bool:
            if not self._finalize(rec, ok=ok, when=when, outputs=outputs, error=error, trace=trace, compute_s=compute_s):
                return False
            if journal is not None:
                winner = next((c.task_id for c in children if outputs is not None and c.outputs is outputs), None)
                try:
                    journal.finish_replicated(rec.task_id, ok, when, winner, error)
                except JournalError as exc:
                    log.error("%s", exc)
            return True
        assert self._nursery is not None, "node is not running"
        self._nursery.start_soon(agree, parent, children, vote, finalize)

    def _replicas_of(self, row: ReplicatedRow) -> list[TaskRecord]:
        out = []
        for i, ex in enumerate(row.executors):
            child = self.find_task(f"{row.task_id}.r{i}")
            if child is None:       # the entry died between the parent's row and this replica's
                child = TaskRecord(f"{row.task_id}.r{i}", row.model, self.me.name, ex, created=row.created,
                                   journaled=False)
                child.finish(ok=False, when=row.created, error=f"{self.me.name} went down before this replica was "
                                                               "recorded")
            out.append(child)
        return out

    def _resume_votes(self) -> None:
        """After a restart (the nursery is open): every open replicated task votes again on its replicas,
        recovered (sent again) or final in the journal."""
        rows, self._votes_to_resume = self._votes_to_resume, []
        for row in rows:
            if self.tasks.get(row.task_id) is not None:
                continue
            parent = TaskRecord(row.task_id, row.model, self.me.name, ",".join(row.executors), created=row.created,
                                journaled=False, deadline=row.deadline, placement=row.placement)
            self._remember_key(row.idem_key, row.task_id)
            self._start_vote(parent, self._replicas_of(row), row.agreement, True)

    def _replicated_record(self, row: ReplicatedRow) -> TaskRecord:
        """A finished replicated task read back: the winner's outputs, and the vote as its replicas ended."""
        children = self._replicas_of(row)
        vote = Vote(len(children), row.agreement)
        for c in children:
            vote.add(c.executor, c.status == "succeeded", digest(c))
        won = next((c for c in children if c.task_id == row.winner), None)
        rec = TaskRecord(row.task_id, row.model, self.me.name, ",".join(row.executors), created=row.created,
                         placement=row.placement)
        rec.finish(ok=row.status == "succeeded", when=row.finished or row.created, error=row.error,
                   outputs=won.outputs if won is not None else None, trace=won.trace if won is not None else (),
                   compute_s=won.compute_s if won is not None else 0.0)
        rec.replicas = replica_view(vote, children)
        return rec
