"""Jobs at their home node: shards placed across the fleet, streamed in chunks, moved when their satellite fails.

The home is the node a job was submitted to (a satellite, or a ground
station: then the results come down wherever the station has a satellite in
view, held by store-and-forward while it has none).  Each shard is driven by
one coroutine: place it (``Node._place``, the task placement policy, spread
over distinct satellites), send its chunks as ordinary tasks that carry a
``Scan`` (so they are routed, retried, deadlined and traced like any task),
keep each chunk that comes back as a checkpoint (``agent/runtime/job_journal.py``
first, then the plan), and watch the satellite: declared dead, cut off (no
route for ``UNREACHABLE_S``), low on battery in eclipse, or a chunk that
failed or timed out moves the shard.  ``mesh.jobs`` decides what to send and
fences off what a moved shard left behind.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import trio

from agent import entropy, wallclock
from agent.runtime.job_journal import ChunkRow, JobJournal, JobJournalError
from agent.runtime.job_spec import JobError, JobSpec
from agent.runtime.tasks import TaskRecord
from agent.compute.tensors import to_json
from mesh.jobs import JobPlan, Move, PlanError
from mesh.wire import Scan

if TYPE_CHECKING:
    from agent.runtime.job_copy_store import Assembled

log = logging.getLogger(__name__)

MAX_ACTIVE_JOBS = 16
KEEP_FINISHED = 64          # finished jobs kept in memory; older ones are read back from the journal
LOOK_EVERY_S = 0.5          # how often a shard's satellite is looked at
UNREACHABLE_S = 5.0         # no route this long: the shard moves
AVOID_S = 30.0              # a satellite that failed a shard is not given it again this soon
CHUNK_FIRST_S = 10.0        # a chunk's own deadline before the job has timed any chunk
CHUNK_FLOOR_S = 3.0         # and after: CHUNK_SLACK × the job's typical chunk, never less than this
CHUNK_SLACK = 5.0
DOWNLINK_SLACK_S = 60.0     # a station's chunk: its result may come down this long into the pass after it is done
PURGE_EVERY_S = 300.0       # finished jobs past the retention leave the journal
REFUSED_RETRY_S = 1.0       # a chunk the home could not send (its own limits) is tried again this soon
MAX_VOTES_KEPT = 1000       # replicated chunks whose votes a job keeps for its status
TERMINAL = ("succeeded", "failed", "cancelled", "handed_over")
_HANDED_TO = re.compile(r"taken over by (\S+) while ")


class JobHost(Protocol):
    """What a job needs from its node (``agent/runtime/node.py`` provides it)."""

    name: str

    def place_shard(self, spec: JobSpec, exclude: frozenset[str]) -> tuple[str, str]: ...

    def send_chunk(self, spec: JobSpec, task_id: str, executor: str, inputs: dict[str, np.ndarray],
                   scan: Scan, timeout_s: float) -> TaskRecord: ...

    def unfit(self, node: str) -> str | None: ...

    def reachable(self, node: str) -> bool: ...

    def expected_compute_s(self, node: str, model: str) -> float: ...

    @property
    def is_ground(self) -> bool: ...

    def isolated(self) -> bool: ...

    def downlink_wait_s(self, after_s: float) -> float | None: ...


class CopySink(Protocol):
    """Where a home's job records go as they are written (``agent/runtime/job_copies.py``: to its keeper)."""

    def accepted(self, job: Job) -> None: ...

    def checkpoint(self, job: Job, lo: int) -> None: ...

    def moved(self, job: Job, shard: int) -> None: ...

    def ended(self, job: Job) -> None: ...


class Job:
    """One job's record at home: spec, plan, checkpoints (outputs by chunk), state per shard."""

    def __init__(self, job_id: str, spec: JobSpec, created: float, idem_key: str | None = None):
        self.job_id, self.spec, self.created, self.idem_key = job_id, spec, created, idem_key
        self.deadline = created + spec.timeout_s
        self.plan = JobPlan(spec.n, spec.shards, spec.chunk, spec.window, stateful=bool(spec.carry))
        self.chunks: dict[int, tuple[int, dict[str, np.ndarray]]] = {}   # lo -> (hi, outputs)
        self.chunk_node: dict[int, str] = {}        # lo -> the node that ran it (for the job's copy)
        self.state: dict[int, dict[str, np.ndarray]] = {s.index: dict(spec.initial) for s in self.plan.shards}
        self.ran_on: Counter[str] = Counter()       # inputs checkpointed per executing node
        self.came_via: Counter[str] = Counter()     # chunks per node they reached home from (a station: downlinks)
        self.voted: list[tuple[int, int, TaskRecord]] = []   # replicated chunks and their votes
        self.status, self.error, self.finished = "running", "", None
        self.compute_s = 0.0
        self.chunk_s: float | None = None           # typical round trip of a full chunk (EWMA): its deadline
        self.done = trio.Event()
        self.scope: trio.CancelScope | None = None
        self.resume_why = "resumed: the home restarted"    # why its shards are placed again after a read-back
        self.taken_from: str | None = None      # the home this job was taken over from (agent/runtime/job_copies.py)
        self.handed_to: str | None = None       # the node that took it over while this home was down

    def end(self, status: str, error: str = "", when: float | None = None) -> bool:
        if self.status in TERMINAL:
            return False
        self.status, self.error, self.finished = status, error, wallclock.now() if when is None else when
        self.done.set()
        if self.scope is not None:
            self.scope.cancel()
        return True

    def keep(self, shard: int, lo: int, hi: int, node: str, outputs: dict[str, np.ndarray],
             voted: TaskRecord | None = None) -> None:
        self.chunks[lo] = (hi, outputs)
        self.chunk_node[lo] = node
        if voted is not None and voted.replicas is not None:      # every replica that answered ran it
            for r in voted.replicas["replicas"]:
                if r["status"] == "succeeded":
                    self.ran_on[r["node"]] += hi - lo
            if len(self.voted) < MAX_VOTES_KEPT:
                self.voted.append((lo, hi, voted))
        else:
            self.ran_on[node] += hi - lo
        if self.spec.carry:
            self.state[shard] = {inp: np.ascontiguousarray(outputs[out][-1]) for out, inp in self.spec.carry}

    def disagreements(self) -> list[dict[str, Any]]:
        """Replicated chunks where a replica answered differently or failed (filled in as late answers come)."""
        out = []
        for lo, hi, rec in self.voted:
            v = rec.replicas or {}
            if v.get("dissenters") or v.get("failed"):
                out.append({"inputs": [lo, hi - 1], "dissenters": v["dissenters"], "failed": v["failed"],
                            "decision": v.get("decision")})
        return out

    def outputs(self) -> dict[str, np.ndarray]:
        """Every output stacked in input order; each input exactly once, or JobError if one is missing."""
        names, order, at = None, [], 0
        for lo in sorted(self.chunks):
            hi, outs = self.chunks[lo]
            if lo != at:
                raise JobError(409, f"job {self.job_id}: inputs {at}–{lo - 1} have no outputs")
            order.append(outs)
            names, at = list(outs), hi
        if at != self.spec.n:
            raise JobError(409, f"job {self.job_id}: {self.spec.n - at} inputs have no outputs yet")
        return {k: np.concatenate([o[k] for o in order]) for k in names or ()}

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "job_id": self.job_id, "model": self.spec.model, "status": self.status, "error": self.error or None,
            "created": self.created, "finished": self.finished, "deadline": self.deadline,
            "inputs": self.spec.n, "done": plan.completed, "progress": plan.completed / self.spec.n,
            "shards": [s.to_json() for s in plan.shards], "chunk": plan.chunk, "window": plan.window,
            "stateful": bool(self.spec.carry), "target": self.spec.target,
            "moves": sum(max(0, len(s.moves) - 1) for s in plan.shards), "resent": plan.resent,
            "ran_on": dict(self.ran_on.most_common()), "came_via": dict(self.came_via.most_common()),
            "replicas": self.spec.replicas, "disagreements": self.disagreements(),
            "compute_ms": self.compute_s * 1e3, "taken_from": self.taken_from, "handed_to": self.handed_to,
        }

    def result_json(self) -> dict[str, Any]:
        outs = self.outputs()
        body: dict[str, Any] = {"job_id": self.job_id, "model": self.spec.model, "status": self.status,
                                "outputs": [{k: to_json(v[i]) for k, v in outs.items()} for i in range(self.spec.n)]}
        if self.spec.carry:
            body["state"] = [{k: to_json(v) for k, v in self.state[s.index].items()} for s in self.plan.shards]
        return body


class JobBoard:
    """Every job this node is home to: accepted, driven, journaled, recovered after a restart."""

    def __init__(self, host: JobHost, journal: JobJournal | None, clock: Callable[[], float] = wallclock.now):
        """``clock``: wall time (tests drive the board on trio's virtual clock)."""
        self.host, self.journal, self.clock = host, journal, clock
        self.copies: CopySink | None = None      # each job copied to a neighbour (set by the node)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.moved = 0                  # shard moves, for metrics
        self.checkpoints = 0
        self.checkpoint_s = 0.0         # time spent writing checkpoints
        self._why: dict[tuple[str, int], tuple[str, str]] = {}   # a shard's failed chunk: why, on which node

    @property
    def active(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status == "running")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._recover()
            task_status.started()
            while True:
                await trio.sleep(PURGE_EVERY_S)
                if self.journal is not None:
                    try:
                        self.journal.purge()
                    except (JobJournalError, sqlite3.Error) as exc:
                        log.error("job journal not purged: %s", exc)

    def submit(self, spec: JobSpec, idem_key: str | None) -> tuple[Job, bool]:
        """Accept (journal first) and start a job; (its record, whether it is new)."""
        if idem_key is not None:
            known = self.find_by_key(idem_key)
            if known is not None:
                return known, False
        if self.active >= MAX_ACTIVE_JOBS:
            raise JobError(429, f"{self.active} jobs running at {self.host.name}; retry later")
        job = Job(f"{self.host.name}-job-{entropy.hex_id(16)}", spec, self.clock(), idem_key)
        if self.journal is not None:
            try:
                self.journal.accept(job.job_id, idem_key, job.created, spec.to_wire())
            except JobJournalError as exc:
                raise JobError(503, f"{self.host.name} cannot record the job: {exc}") from None
            except sqlite3.IntegrityError as exc:    # the key raced another submission
                known = self.find_by_key(idem_key) if idem_key else None
                if known is not None:
                    return known, False
                raise JobError(409, f"cannot record the job: {exc}") from None
        self._start(job)
        if self.copies is not None:
            self.copies.accepted(job)
        return job, True

    def _start(self, job: Job) -> None:
        self.jobs[job.job_id] = job
        self._forget_old()
        assert self._nursery is not None, "job board is not serving"
        self._nursery.start_soon(self._run, job)

    def _forget_old(self) -> None:
        done = [k for k, j in self.jobs.items() if j.status in TERMINAL]
        for k in done[:max(0, len(done) - KEEP_FINISHED)]:
            del self.jobs[k]

    def find_by_key(self, idem_key: str) -> Job | None:
        for job in self.jobs.values():
            if job.idem_key == idem_key:
                return job
        known = self.journal.by_key(idem_key) if self.journal is not None else None
        return self.get(known) if known else None

    def get(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None or self.journal is None:
            return job
        try:
            row = self.journal.job(job_id)
            return self._read_back(row) if row is not None else None
        except JobJournalError as exc:
            raise JobError(503, str(exc)) from None

    def recent(self, limit: int = 50) -> list[Job]:
        return list(self.jobs.values())[-limit:][::-1]

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.end("cancelled", "cancelled by the client", self.clock()):
            self._record_end(job)
        return job

    # -- driving ------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        if job.status in TERMINAL:        # cancelled before it started
            return
        with trio.CancelScope(deadline=trio.current_time() + max(0.0, job.deadline - self.clock())) as scope:
            job.scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    for shard in job.plan.shards:
                        if not shard.finished:
                            nursery.start_soon(self._drive, job, shard.index)
            except* (PlanError, JobJournalError) as group:
                job.end("failed", str(group.exceptions[0]), self.clock())
            except* Exception as group:         # a bug must fail its job, not take the satellite down
                log.error("job %s failed", job.job_id, exc_info=group)
                job.end("failed", f"internal error: {type(group.exceptions[0]).__name__}: {group.exceptions[0]}",
                        self.clock())
        if job.status == "running":
            if job.plan.finished:
                job.end("succeeded", when=self.clock())
            else:
                job.end("failed", f"deadline passed with {job.plan.completed} of {job.spec.n} inputs done",
                        self.clock())
        self._record_end(job)

    def _record_end(self, job: Job) -> None:
        if self.journal is not None:
            try:
                self.journal.finish(job.job_id, job.status, job.finished or self.clock(), job.error)
            except JobJournalError as exc:
                log.error("job %s: end not journaled: %s", job.job_id, exc)
        if self.copies is not None:
            self.copies.ended(job)

    async def _drive(self, job: Job, i: int) -> None:
        """One shard to its end: place, send chunks, keep checkpoints, move when its satellite fails."""
        plan, shard = job.plan, job.plan.shards[i]
        avoid: dict[str, float] = {}
        why_move = job.resume_why if shard.moves or job.taken_from else "placed"
        wake = trio.Event()
        unreachable_since: float | None = None
        async with trio.open_nursery() as chunks:
            while not shard.finished:
                now = self.clock()
                if shard.node is None:
                    placed = (f"{job.spec.replicas} replicas", "one satellite per plane, placed chunk by chunk") \
                        if job.spec.replicas > 1 else self._place(job, i, avoid, now)
                    if placed is None:
                        await trio.sleep(1.0)        # nothing fits now; the fleet changes
                        continue
                    node, reason = placed
                    move = plan.assign(i, node, now, f"{why_move} ({reason})")
                    self.moved += len(shard.moves) > 1
                    if self.journal is not None:
                        self.journal.move(job.job_id, i, move, shard.resent)
                    if self.copies is not None:
                        self.copies.moved(job, i)
                    unreachable_since = None
                for lo, hi in plan.next_chunks(i):
                    chunks.start_soon(self._chunk, job, i, shard.epoch, shard.node, lo, hi, wake)
                with trio.move_on_after(LOOK_EVERY_S):
                    await wake.wait()
                wake = trio.Event()
                if shard.finished or shard.node is None:
                    if shard.node is None:      # a chunk failed: _chunk said why and where
                        why_move, failed_on = self._why.pop((job.job_id, i), ("moved", None))
                        if failed_on is not None:
                            avoid[failed_on] = self.clock()
                    continue
                if job.spec.replicas > 1:
                    continue                 # each chunk is placed and voted on by itself
                problem = self.host.unfit(shard.node)
                if self.host.isolated():
                    unreachable_since = None      # the home is out of contact (a station between passes), not it
                elif problem is None and not self.host.reachable(shard.node):
                    unreachable_since = unreachable_since or self.clock()
                    if self.clock() - unreachable_since >= UNREACHABLE_S:
                        problem = f"{shard.node} cut off: no route for {UNREACHABLE_S:g} s"
                elif problem is None:
                    unreachable_since = None
                if problem is not None:
                    avoid[shard.node] = self.clock()
                    plan.abandon(i)
                    why_move = f"moved: {problem}"
            chunks.cancel_scope.cancel()

    def _place(self, job: Job, i: int, avoid: dict[str, float], now: float) -> tuple[str, str] | None:
        others = frozenset(s.node for s in job.plan.shards if s.node is not None and s.index != i)
        recent = frozenset(n for n, at in avoid.items() if now - at < AVOID_S)
        for exclude in (others | recent, recent):
            try:
                return self.host.place_shard(job.spec, exclude)
            except JobError:
                continue
        return None

    async def _chunk(self, job: Job, i: int, epoch: int, node: str, lo: int, hi: int, wake: trio.Event) -> None:
        """Send one chunk and wait for it; keep it (checkpoint) or move the shard if it failed."""
        spec, shard = job.spec, job.plan.shards[i]
        inputs = spec.chunk_inputs(lo, hi) | job.state[i]
        steps = hi - lo
        if job.chunk_s is None:
            timeout = max(CHUNK_FIRST_S, 10 * steps * self.host.expected_compute_s(node, spec.model) + 5.0)
        else:       # a chunk that takes many times the job's usual round trip is lost or stuck: move on
            timeout = max(CHUNK_FLOOR_S, CHUNK_SLACK * job.chunk_s * steps / spec.chunk)
        sent_at = self.clock()
        if self.host.is_ground:      # a result comes down at the station's next pass after it is computed
            wait = self.host.downlink_wait_s(timeout)
            timeout = job.deadline - self.clock() if wait is None else wait + DOWNLINK_SLACK_S
        timeout = min(timeout, max(1.0, job.deadline - self.clock()))
        rec, error = None, ""
        while epoch == shard.epoch:
            try:
                rec = self.host.send_chunk(spec, f"{job.job_id}.s{i}.e{epoch}.c{lo}", node, inputs,
                                           Scan(steps, spec.carry), timeout)
                break
            except JobError as exc:      # refused here (too many tasks pending, no planes free): not the
                error = str(exc)         # satellite's fault, so no move; the same chunk again shortly
                if exc.status not in (429, 503):
                    break
                await trio.sleep(REFUSED_RETRY_S)
        if rec is not None:
            await rec.done.wait()
            error = rec.error or ""
        if rec is not None and rec.status == "succeeded" and rec.outputs is not None:
            outputs = {k: np.asarray(v) for k, v in rec.outputs.items()}
            if all(v.shape[:1] == (steps,) for v in outputs.values()) and \
                    job.plan.chunk_done(i, epoch, lo, hi, self.clock()):
                t0 = time.perf_counter()
                if self.journal is not None:     # a write that fails fails the job (JobJournalError)
                    self.journal.checkpoint(job.job_id, i, lo, hi, rec.executor, outputs)
                job.keep(i, lo, hi, rec.executor, outputs, rec)
                if self.copies is not None:
                    self.copies.checkpoint(job, lo)
                took = (self.clock() - sent_at) * spec.chunk / steps
                job.chunk_s = took if job.chunk_s is None else 0.8 * job.chunk_s + 0.2 * took
                job.came_via[_last_relay(rec, self.host.name)] += 1
                self.checkpoints += 1
                self.checkpoint_s += time.perf_counter() - t0
                job.compute_s += rec.compute_s
            wake.set()
            return
        if epoch == shard.epoch and shard.node == node:
            self._why[(job.job_id, i)] = (f"moved: chunk {lo}–{hi - 1} failed on {node}: {error}", node)
            job.plan.abandon(i)
        wake.set()

    # -- recovery ------------------------------------------------------------------------------

    def _recover(self) -> None:
        if self.journal is None:
            return
        try:
            rows = self.journal.open_jobs()
        except JobJournalError as exc:
            log.error("%s: no job recovered: %s", self.host.name, exc)
            return
        for row in rows:
            try:
                job = self._read_back(row)
            except (JobJournalError, JobError, PlanError, KeyError, ValueError, TypeError) as exc:
                log.error("job %s cannot be recovered: %s", row.job_id, exc)
                self.journal.finish(row.job_id, "failed", self.clock(), f"not recoverable after a restart: {exc}")
                continue
            if self.clock() >= job.deadline:
                job.end("failed", "its deadline passed while its home was down", self.clock())
                self._record_end(job)
                self.jobs[job.job_id] = job
                continue
            log.warning("%s: job %s resumes with %d of %d inputs checkpointed", self.host.name, job.job_id,
                        job.plan.completed, job.spec.n)
            self._start(job)
            if self.copies is not None:
                self.copies.accepted(job)

    def _read_back(self, row: Any) -> Job:
        assert self.journal is not None
        job = _rebuilt(row.job_id, JobSpec.from_wire(row.spec), row.created, row.idem_key,
                       self.journal.chunks(row.job_id), self.journal.moves(row.job_id))
        if row.finished is not None:
            job.status, job.finished, job.error = row.status, row.finished, row.error
            if row.status == "handed_over":
                job.handed_to = _HANDED_TO.match(row.error).group(1) if _HANDED_TO.match(row.error) else None
            job.done.set()
        else:
            _count_in_flight_as_resent(job)
        return job

    # -- take-over (agent/runtime/job_copies.py) -----------------------------------------------------------

    def adopt(self, kept: Assembled) -> bool:
        """Drive a job whose home was declared dead, from the copy kept here; False if it is known here already."""
        if kept.job_id in self.jobs or (self.journal is not None and self.journal.job(kept.job_id) is not None):
            return False
        job = _rebuilt(kept.job_id, kept.spec, kept.created, kept.idem_key, kept.chunks, kept.moves)
        job.taken_from = kept.home
        job.resume_why = f"taken over by {self.host.name}: its home {kept.home} was declared dead"
        _count_in_flight_as_resent(job)
        if self.journal is not None:     # journaled as this node's own (all or nothing), so a restart resumes it
            key_taken = kept.idem_key is not None and self.journal.by_key(kept.idem_key) is not None
            job.idem_key = None if key_taken else kept.idem_key      # a key naming another job here stays its
            with self.journal.transaction():
                self.journal.accept(job.job_id, job.idem_key, job.created, kept.spec.to_wire())
                for c in kept.chunks:
                    self.journal.checkpoint(job.job_id, c.shard, c.lo, c.hi, c.node, c.outputs)
                for shard_i, move, _ in kept.moves:
                    self.journal.move(job.job_id, shard_i, move, job.plan.shards[shard_i].resent)
        self._start(job)
        if self.copies is not None:
            self.copies.accepted(job)
        return True

    def handed_over(self, job_id: str, by: str) -> bool:
        """Another node took this job over while this home was down: stop driving it, and say where it went."""
        job = self.get(job_id)
        if job is None or job.status != "running":
            return False
        job.handed_to = by
        if job.end("handed_over", f"taken over by {by} while {self.host.name} was down", self.clock()):
            self._record_end(job)
        return True


def _rebuilt(job_id: str, spec: JobSpec, created: float, idem_key: str | None, chunks: list[ChunkRow],
             moves: list[tuple[int, Move, int]]) -> Job:
    """A job put back from its checkpoints and moves (its journal here, or a copy of another home's)."""
    job = Job(job_id, spec, created, idem_key)
    for c in chunks:
        job.plan.restore(c.shard, c.lo, c.hi)
        job.keep(c.shard, c.lo, c.hi, c.node, c.outputs)
    for shard_i, move, resent in moves:
        job.plan.shards[shard_i].moves.append(move)
        job.plan.shards[shard_i].resent = resent
    return job


def _count_in_flight_as_resent(job: Job) -> None:
    """What was in flight when the home went down is sent again and not known chunk by chunk:
    count the most it can be, so ``resent`` stays an upper bound across a restart or a take-over."""
    for s in job.plan.shards:
        if not s.finished and s.moves:
            s.resent += min(job.plan.window * job.plan.chunk, s.hi - s.done)


def _last_relay(rec: TaskRecord, home: str) -> str:
    """The node a chunk's result reached home from (itself if it ran at home)."""
    nodes = [h.node for h in rec.trace]
    while nodes and nodes[-1] == home:
        nodes.pop()
    return nodes[-1] if nodes else home
