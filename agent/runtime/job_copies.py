"""Each job copied to a neighbour of its home, and taken over there when the home is declared dead.

The home's journal keeps its jobs through a restart, but not through the loss
of the home itself.  So the home also sends every job to one *keeper*, a
satellite it has a laser link to (same plane first: those links never
rewire): the job, its inputs in slices, every checkpoint and move, its end.
Each record is acknowledged once the keeper has written it
(``agent/runtime/job_copy_store.py``) and sent again until then (after 3 s, doubling
to 24 s), at most
``RECORD_WINDOW`` of a job in flight.  A keeper that is suspected, dead or
cut off is replaced, and the new one gets the whole copy.

When the fleet's membership declares the home dead and it stays dead for
``TAKEOVER_GRACE_S`` (a home restarted sooner resumes its jobs from its own
journal, which is never behind the copy), the keeper takes the job over: it journals the copy as its own, and shards resume from the last
checkpoint the copy holds (the inputs sent again are at most those
checkpointed at the old home but not yet copied, plus those in flight).
If the old home comes back, the keeper tells it (``taken``), and the old
home ends its own copy of the job as ``handed_over``, naming the new home.
A partition can make both drive the job for a while; each result still
holds every input exactly once, and the home that hears ``taken`` yields.
Fleet members are trusted here as for tasks: records ride the signed,
authenticated links, but a routed record's sender is not signed end to end.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import msgpack
import trio

from agent import wallclock
from agent.runtime.job_copy_store import CopyError, CopyRow, CopyStore
from agent.runtime.periodic import process_periodic
from agent.runtime.job_journal import JobJournalError, arrays_to_wire
from mesh.wire import JobCopy

if TYPE_CHECKING:
    from agent.runtime.jobs import Job, JobBoard

log = logging.getLogger(__name__)

RECORD_WINDOW = 16          # a job's records sent and not yet acknowledged
RESEND_S = 3.0              # an unacknowledged record goes again after this, doubling up to
RESEND_MAX_S = 24.0         # this (a record held by store-and-forward is not piled up behind itself)
LOOK_EVERY_S = 1.0          # keepers checked, records resent, dead homes' jobs taken over
TELL_EVERY_S = 5.0          # a home that is back hears "taken" this often until it acknowledges
TAKEOVER_GRACE_S = 10.0     # a home dead this long loses its jobs to their keepers: one restarted sooner
                            # resumes them from its own journal, which is never behind its copy
MAX_RECORD_BYTES_SHARE = 2  # a slice of inputs fills at most 1/2 of a frame


class CopyHost(Protocol):
    """What copying needs from the node (``agent/runtime/job_host.py`` provides it)."""

    name: str
    max_frame_bytes: int

    def choose_keeper(self, exclude: frozenset[str]) -> str | None: ...

    def keeper_problem(self, node: str) -> str | None: ...

    def declared_dead(self, node: str) -> bool: ...

    def send_copy(self, dst: str, job_id: str, op: str, body: bytes) -> str: ...


@dataclass
class Outbox:
    """A job's records on their way to its keeper; each key names a record rebuilt from the job when sent."""

    keeper: str
    pending: OrderedDict[str, tuple[float, int] | None] = field(default_factory=OrderedDict)
    acked: int = 0          # pending: key -> (when last sent, times sent), None before the first

    def queue(self, key: str) -> None:
        if key not in self.pending:
            self.pending[key] = None

    def due(self, key: str, now: float) -> bool:
        sent = self.pending[key]
        return sent is None or now - sent[0] >= min(RESEND_MAX_S, RESEND_S * 2 ** (sent[1] - 1))


class JobCopies:
    """Both sides: the home's outboxes (its jobs' copies) and the keeper's store (others' jobs)."""

    def __init__(self, host: CopyHost, board: "JobBoard", store: CopyStore | None,
                 clock: Callable[[], float] = wallclock.now, retention_s: float = 3600.0):
        self.host, self.board, self.store, self.clock = host, board, store, clock
        self._last_purge = clock()            # the copy store's last purge (again when serve starts)
        self.retention_s = retention_s
        self.out: dict[str, Outbox] = {}
        self.records_sent = 0
        self.takeovers = 0
        self.handovers = 0
        self._unassemblable: set[str] = set()
        self._told_at: dict[str, float] = {}
        self._forgets: dict[tuple[str, str], float] = {}   # (job, old keeper) -> last sent, until acknowledged
        self._dead_since: dict[str, float] = {}     # homes of kept jobs seen declared dead, since when

    # -- the home's side ----------------------------------------------------------------------

    def accepted(self, job: "Job") -> None:
        """A new job (or one resumed after a restart or taken over): its whole copy goes to a keeper."""
        keeper = self.host.choose_keeper(frozenset())
        if keeper is None:
            log.warning("job %s: no neighbour to keep its copy yet", job.job_id)
            self.out[job.job_id] = Outbox("")
        else:
            self.out[job.job_id] = Outbox(keeper)
        self._queue_all(job)
        self._pump(job)

    def _queue_all(self, job: "Job") -> None:
        box = self.out[job.job_id]
        box.queue("accept")
        step = self._slice(job)
        for lo in range(0, job.spec.n, step):
            box.queue(f"inputs:{lo}")
        for lo in sorted(job.chunks):
            box.queue(f"chunk:{lo}")
        for s in job.plan.shards:
            for k in range(len(s.moves)):
                box.queue(f"move:{s.index}:{k}")
        if job.finished is not None:
            box.queue("end")

    def checkpoint(self, job: "Job", lo: int) -> None:
        self._add(job, f"chunk:{lo}")

    def moved(self, job: "Job", shard: int) -> None:
        self._add(job, f"move:{shard}:{len(job.plan.shards[shard].moves) - 1}")

    def ended(self, job: "Job") -> None:
        self._add(job, "end")

    def _add(self, job: "Job", key: str) -> None:
        box = self.out.get(job.job_id)
        if box is not None:
            box.queue(key)
            self._pump(job)

    def describe(self, job_id: str) -> dict[str, Any] | None:
        box = self.out.get(job_id)
        if box is None:
            return None
        return {"keeper": box.keeper or None, "behind": len(box.pending), "acknowledged": box.acked}

    def kept(self, job_id: str) -> dict[str, Any] | None:
        """A job this node keeps a copy of (and has not taken over), or None."""
        row = self.store.row(job_id) if self.store is not None else None
        if row is None or row.taken is not None:
            return None
        return self._kept_json(row)

    def kept_list(self, limit: int = 50) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return [self._kept_json(r) for r in self.store.kept()[-limit:]]

    def _kept_json(self, row: CopyRow) -> dict[str, Any]:
        assert self.store is not None
        held, done = self.store.progress(row.job_id)
        return {"job_id": row.job_id, "home": row.home, "status": row.status, "inputs": row.inputs,
                "inputs_held": held, "checkpointed": done, "taken": row.taken is not None}

    def _slice(self, job: "Job") -> int:
        return max(1, min(job.spec.n, self.host.max_frame_bytes // MAX_RECORD_BYTES_SHARE // max(1, job.spec.item_bytes)))

    def _body(self, job: "Job", key: str) -> dict[str, Any]:
        kind, _, rest = key.partition(":")
        if kind == "accept":
            return {"idem_key": job.idem_key, "created": job.created, "spec": job.spec.to_wire(with_inputs=False)}
        if kind == "inputs":
            lo = int(rest)
            hi = min(job.spec.n, lo + self._slice(job))
            return {"lo": lo, "hi": hi, "arrays": arrays_to_wire(job.spec.chunk_inputs(lo, hi))}
        if kind == "chunk":
            lo = int(rest)
            hi, outputs = job.chunks[lo]
            shard = next(s.index for s in job.plan.shards if s.lo <= lo < s.hi)
            return {"shard": shard, "lo": lo, "hi": hi, "node": job.chunk_node.get(lo, ""),
                    "outputs": arrays_to_wire(outputs)}
        if kind == "move":
            shard, k = (int(x) for x in rest.split(":"))
            m = job.plan.shards[shard].moves[k]
            return {"shard": shard, "at": m.at, "src": m.src, "dst": m.dst, "why": m.why, "resume_at": m.resume_at,
                    "resent": job.plan.shards[shard].resent}
        if kind == "end":
            return {"status": job.status, "finished": job.finished or self.clock(), "error": job.error}
        raise ValueError(f"no copy record {key!r}")

    def _pump(self, job: "Job") -> None:
        """Send what the window allows: records never sent, and those unacknowledged for RESEND_S."""
        box = self.out.get(job.job_id)
        if box is None or not box.keeper:
            return
        now = self.clock()
        in_flight = sum(1 for key, sent in box.pending.items() if sent is not None and not box.due(key, now))
        gate = "accept" in box.pending      # nothing else before the keeper has the job itself
        for key, sent in list(box.pending.items()):
            if in_flight >= RECORD_WINDOW or (gate and key != "accept"):
                break
            if not box.due(key, now):
                continue
            body = msgpack.packb(self._body(job, key) | {"key": key})
            problem = self.host.send_copy(box.keeper, job.job_id, key.partition(":")[0], body)
            if problem:
                log.debug("job %s: copy record %s to %s: %s", job.job_id, key, box.keeper, problem)
                break
            box.pending[key] = (now, 1 if sent is None else sent[1] + 1)
            in_flight += 1
            self.records_sent += 1

    def _check_keepers(self) -> None:
        for job_id, box in list(self.out.items()):
            job = self.board.jobs.get(job_id)
            if job is None:
                del self.out[job_id]
                continue
            problem = self.host.keeper_problem(box.keeper) if box.keeper else "none chosen yet"
            if problem is not None:
                keeper = self.host.choose_keeper(frozenset({box.keeper}))
                if keeper is not None and keeper != box.keeper:
                    if box.keeper:
                        log.warning("job %s: copy moves from %s to %s (%s)", job_id, box.keeper, keeper, problem)
                        self._forgets[(job_id, box.keeper)] = -math.inf
                    self.out[job_id] = Outbox(keeper)
                    self._queue_all(job)
            self._pump(job)
        # An old keeper must drop its copy, or it could take the job over too: told until it acknowledges
        # (for as long as the job is known here).
        now = self.clock()
        for (job_id, old), at in list(self._forgets.items()):
            if job_id not in self.board.jobs:
                del self._forgets[(job_id, old)]
            elif now - at >= TELL_EVERY_S:
                self._forgets[(job_id, old)] = now
                self.host.send_copy(old, job_id, "forget", msgpack.packb({"key": "forget"}))

    # -- the keeper's side --------------------------------------------------------------------

    def on_message(self, msg: JobCopy) -> None:
        try:
            body = msgpack.unpackb(msg.body)
            if not isinstance(body, dict) or not isinstance(body.get("key"), str):
                raise CopyError("a copy record's body is a map with its 'key'")
            if msg.op == "ack":
                self._on_ack(msg.job_id, body["key"], msg.sender)
            elif msg.op == "taken":
                self._on_taken(msg.job_id, str(body.get("by", msg.sender)), msg.sender)
            else:
                self._keep(msg, body)
        except (CopyError, ValueError, TypeError, msgpack.ExtraData) as exc:
            log.warning("job copy record %s from %s refused: %s", msg.op, msg.sender, exc)
        except (JobJournalError, sqlite3.Error) as exc:
            log.error("job copy record %s from %s not kept: %s", msg.op, msg.sender, exc)

    def _keep(self, msg: JobCopy, body: dict[str, Any]) -> None:
        if self.store is None:
            return      # no journal: nothing kept, nothing acknowledged; the home keeps trying another
        row = self.store.row(msg.job_id)
        if row is not None and row.home != msg.sender:
            if row.taken is not None:       # this node drives the job: whoever else does must yield
                self.host.send_copy(msg.sender, msg.job_id, "taken", msgpack.packb({"key": "taken", "by": self.host.name}))
                return
            if msg.op != "accept":
                raise CopyError(f"job {msg.job_id} is kept here for {row.home}, not {msg.sender}")
            # The job has a new home (it took it over from row.home): its copy replaces the old one.
            log.warning("job %s: copy kept for %s replaced by %s's", msg.job_id, row.home, msg.sender)
            self.store.forget(msg.job_id)
            row = None
        if row is not None and row.taken is not None:
            if msg.op != "forget":      # the old home is back and still sending: it must yield
                self.host.send_copy(msg.sender, msg.job_id, "taken", msgpack.packb({"key": "taken", "by": self.host.name}))
            return
        if row is None and msg.op not in ("accept", "forget"):
            # The home sends nothing else before its accept is acknowledged: a record of an unknown job is
            # not kept (a copy never holds rows of a job it does not know) and not acknowledged.
            raise CopyError(f"{msg.op} record of job {msg.job_id} before its accept")
        self.store.store(msg.job_id, msg.sender, msg.op, body)
        self.host.send_copy(msg.sender, msg.job_id, "ack", msgpack.packb({"key": body["key"]}))

    def _on_ack(self, job_id: str, key: str, sender: str) -> None:
        if key == "taken":
            if self.store is not None and self.store.row(job_id) is not None:
                self.store.mark_told(job_id)
            return
        if key == "forget":
            self._forgets.pop((job_id, sender), None)
            return
        box = self.out.get(job_id)
        if box is None or box.keeper != sender or box.pending.pop(key, False) is False:
            return
        box.acked += 1
        for k, sent in box.pending.items():     # the keeper answers: what it lacks need not wait out a backoff
            if sent is not None:
                box.pending[k] = (sent[0], 1)
        job = self.board.jobs.get(job_id)
        if job is None or (not box.pending and job.finished is not None):     # its end is acknowledged too
            del self.out[job_id]
            return
        self._pump(job)

    def _on_taken(self, job_id: str, by: str, sender: str) -> None:
        box = self.out.get(job_id)
        if box is not None and box.keeper == sender:
            del self.out[job_id]      # the taker was its keeper; any other keeper hears the end (handed_over)
        if self.board.handed_over(job_id, by):
            self.handovers += 1
        self.host.send_copy(sender, job_id, "ack", msgpack.packb({"key": "taken"}))

    def _take_over_dead_homes(self) -> None:
        if self.store is None:
            return
        now = self.clock()
        rows = self.store.kept()
        for home in {r.home for r in rows}:
            if self.host.declared_dead(home):
                self._dead_since.setdefault(home, now)
            else:
                self._dead_since.pop(home, None)
        for row in rows:
            if row.status != "running":
                continue
            dead_for = now - self._dead_since.get(row.home, now)
            if row.taken is None and row.job_id not in self._unassemblable and dead_for >= TAKEOVER_GRACE_S:
                try:
                    job = self.store.assemble(row.job_id)
                except CopyError as exc:
                    log.error("job %s cannot be taken over from %s: %s", row.job_id, row.home, exc)
                    self._unassemblable.add(row.job_id)
                    continue
                try:
                    adopted = self.board.adopt(job)
                except (JobJournalError, sqlite3.Error) as exc:     # not taken: tried again next round
                    log.error("job %s cannot be taken over from %s now: %s", row.job_id, row.home, exc)
                    continue
                if not adopted:         # known here already (this node was its home once): left alone
                    log.error("job %s is known here already; its copy from %s is not taken over", row.job_id, row.home)
                    self._unassemblable.add(row.job_id)
                    continue
                self.store.mark_taken(row.job_id, now)
                self.takeovers += 1
                log.warning("%s: took job %s over from %s, declared dead", self.host.name, row.job_id, row.home)
            elif row.taken is not None and not row.told and not self.host.declared_dead(row.home) \
                    and now - self._told_at.get(row.job_id, -TELL_EVERY_S) >= TELL_EVERY_S:
                self._told_at[row.job_id] = now
                self.host.send_copy(row.home, row.job_id, "taken", msgpack.packb({"key": "taken", "by": self.host.name}))

    # -- the loop -----------------------------------------------------------------------------

    async def serve(self, *, own_chore: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Look every LOOK_EVERY_S, as a chore on the process's heap (agent/runtime/periodic.py), not a
        task and a timer per node: an idle satellite's look costs a call, not a wake-up.
        ``own_chore=False``: the caller calls :meth:`look` from a chore of its own as often (a
        node's once-a-second chore: one heap entry per node, not two)."""
        self._last_purge = self.clock()
        chore = process_periodic().every(LOOK_EVERY_S, self.look) if own_chore else None
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            if chore is not None:
                chore.cancel()

    def look(self) -> None:
        try:
            self._check_keepers()
            self._take_over_dead_homes()
            if self.store is not None and self.clock() - self._last_purge > 300.0:
                self._last_purge = self.clock()
                self.store.purge(self.retention_s, self.clock())
        except (JobJournalError, sqlite3.Error) as exc:
            log.error("job copies: %s", exc)
