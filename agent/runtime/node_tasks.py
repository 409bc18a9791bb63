"""The task lifecycle at its entry node: validate and accept (journal first), place,
replicate, answer from the edge cache, retry end to end, enforce deadlines, and end
every task exactly once (``_finalize``). What happens at the executor is
``agent.runtime.node_exec``; reading tasks back from the journal is ``agent.runtime.node_recovery``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import trio

from agent import entropy, wallclock
from agent.runtime.edge_cache import Answer, cache_key
from agent.runtime.journal import DuplicateKey, JournalError
from agent.compute.models import ModelError, bad_name
from agent.runtime.placement import candidates
from agent.runtime.tasks import SubmitError, TaskRecord
from agent.compute.tensors import InputError, inputs_from_arrays, inputs_from_json, typed_arrays
from agent.zoo import LimitError, check_limits
from mesh.delivery import TaskFailed
from mesh.placement import TARGETS, PlacementError, choose
from mesh.voting import MAX_REPLICAS, MODES
from mesh.wire import Hop, Scan, TaskRequest, TaskResult, Tensor

if TYPE_CHECKING:
    import collections

    from agent.runtime.edge_cache import EdgeCache
    from agent.compute.executor import Executor
    from agent.runtime.journal import Journal
    from agent.runtime.membership import MembershipService
    from agent.runtime.metrics import TaskMetrics
    from agent.compute.models import ModelStore
    from agent.links.peers import NodeIdentity, Peers
    from agent.runtime.placement import ComputeTable
    from agent.runtime.relay import Relay
    from agent.runtime.tasks import DeadlineTimers, TaskTable
    from mesh.config import FleetConfig
    from mesh.delivery import TaskLedger
    from mesh.healing import HealingRouter
    from mesh.orbit import Constellation
    from mesh.routing import Router

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs

DEFAULT_TASK_TIMEOUT_S = 30.0
DEADLINE_BATCH_S = 0.05        # the deadline backstop sleeps at least this long (tasks ending together: one pass)
# A safety net only: the relay and the ledger's callers wake the loop for any deadline sooner than
# its sleep (``_deadline_sooner``); an idle node used to look twice a second for nothing.
DELIVERY_TICK_MAX_S = 5.0


class EntryTasks:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    config: FleetConfig
    peers: Peers
    store: ModelStore
    executor: Executor
    tasks: TaskTable
    deadlines: DeadlineTimers
    journal: Journal | None
    ledger: TaskLedger
    relay: Relay
    membership: MembershipService
    healing: HealingRouter
    router: Router
    constellation: Constellation
    compute_table: ComputeTable
    edge_cache: EdgeCache
    metrics: TaskMetrics
    _idem: dict[str, str]
    _answer_keys: dict[str, str]
    _requests: dict[str, TaskRequest]
    _in_flight: collections.Counter[str]
    _out_bytes: dict[str, int]
    _nursery: trio.Nursery | None
    _inline_runs: set[trio.CancelScope]
    _wake: trio.Event
    _deadline_wake: trio.Event
    _tick_at: float
    orbit_t: Callable[..., float]                                   # NodePhysics
    _cut_links: Callable[[float], frozenset[tuple[int, int]]]       # NodePhysics
    sunlit_of: Callable[[str], bool | None]                         # NodePhysics
    _own_state: Callable[[], dict[str, Any]]                        # Node
    find_task: Callable[[str], TaskRecord | None]                   # TaskRecovery
    _on_request: Callable[..., Any]                                 # Execution
    _execute: Callable[..., Any]                                    # Execution
    _send_result: Callable[[TaskResult], None]                      # Execution
    _submit_replicas: Callable[..., TaskRecord]                     # ReplicatedTasks

    # -- tasks at the entry node --------------------------------------------------

    async def submit(self, model: str, inputs: Any, target: str | None,
                     timeout_s: float = DEFAULT_TASK_TIMEOUT_S, idem_key: str | None = None,
                     journaled: bool = True, cache: bool = True, replicas: int = 1,
                     agreement: str = "majority", wait: bool = False) -> tuple[TaskRecord, bool]:
        """Validate and accept a task; (its record, whether it is new). SubmitError with a clear reason.

        ``inputs`` is JSON (checked and typed here) or a dict of arrays already
        decoded from binary tensors (checked here against the signature).
        ``journaled=False``: a task whose submitter waits for it on its own
        connection and gave no idempotency key; if this node dies nobody can
        ask for it again, so it skips the journal (the mesh still delivers it
        exactly once, by its deadline, with its trace).

        With ``idem_key``, a retry of the same submission (the client never saw
        the answer) gets the task it created the first time, not a second one.

        ``wait=True``: the caller waits for the task's end anyway (the v2 protocol),
        so a task executed here runs on the caller's own trio task, to its end, before
        this returns: two task hand-offs fewer (agent/serve/oip.py).  The run is shielded
        from the caller's cancellation (the task's deadline bounds it, as any task's)
        and ends with the node.
        """
        if idem_key is not None:
            if not isinstance(idem_key, str) or not 0 < len(idem_key) <= 128:
                raise SubmitError(400, "an idempotency key must be a string of 1–128 characters")
            done = self._by_idem_key(idem_key)
            if done is not None:
                return done, False
        if not isinstance(model, str) or not model:
            raise SubmitError(400, "'model' must be a non-empty string")
        if bad_name(model):
            raise SubmitError(400, bad_name(model))
        if target is not None and not isinstance(target, str):
            raise SubmitError(400, "'target' must be a node name such as 'sat-7', or 'auto'")
        loaded = await self.load_model(model)
        try:
            limit = self.config.limits.max_frame_bytes // 4
            arrays = inputs_from_arrays(inputs, loaded.inputs, limit) if typed_arrays(inputs) else \
                inputs_from_json(inputs, loaded.inputs, max_elements=limit)
            check_limits(model, arrays, loaded.manifest)
        except (InputError, LimitError) as exc:
            raise SubmitError(400, str(exc)) from None
        placed = target in (None, "") or target in TARGETS
        if not placed and target not in self.peers:
            raise SubmitError(404, f"unknown target node {target!r}; nodes are {self.peers.names()[0]} … "
                                   f"{self.peers.names()[-1]}, or one of {', '.join(TARGETS)}")
        if target in self.peers and self.peers[target].index in self.membership.dead_nodes():
            raise SubmitError(503, f"{target} is down (declared dead by the fleet's membership); "
                                   f"submit with target 'auto' or to another node")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise SubmitError(400, f"'replicas' must be an integer in 1–{MAX_REPLICAS}")
        if not isinstance(agreement, str) or agreement not in MODES:
            raise SubmitError(400, f"'agreement' must be one of {', '.join(MODES)}")
        if replicas != 1:
            if not placed:
                raise SubmitError(400, "replicas are placed by the fleet (one per plane): leave 'target' out or "
                                       f"use one of {', '.join(TARGETS)}")
        if idem_key is not None:
            # A concurrent submission with the same key may have been accepted, or even answered
            # into the edge cache, while this one awaited the model load: answer its task.  From
            # here to the _idem entry (the cache's answer or _accept) nothing awaits.
            done = self._by_idem_key(idem_key)
            if done is not None:
                return done, False
        answer_key = None
        if cache and placed and replicas == 1:   # a named target asks for execution there (agent/runtime/edge_cache.py)
            answer_key = cache_key(loaded.sha256 or self.store.sha256(model), arrays)
            hit = self.edge_cache.get(answer_key)
            if hit is not None:
                return self._answer_from_cache(model, hit, idem_key, timeout_s), True
        if len(self._requests) + replicas > self.config.limits.max_pending_tasks:
            raise SubmitError(429, f"{len(self._requests)} tasks pending at {self.me.name}; retry later")
        why = "target chosen by the client"
        if placed:
            executors, why = self._place(model, target or "auto", arrays, loaded, timeout_s, replicas)
            executor = executors[0]
        else:
            executors, executor = [target], target
        if executor == self.me.name and self.executor.full:
            raise SubmitError(429, f"executor at {self.me.name} is full ({self.executor.queued} tasks queued); "
                                   f"retry in {self.executor.retry_after_s()}s")
        if replicas > 1:
            return self._submit_replicas(model, loaded, arrays, executors, why, agreement, timeout_s, idem_key,
                                         journaled), True
        rec = self._accept(model, loaded, arrays, executor, why, timeout_s, idem_key, journaled, answer_key,
                           inline=wait)
        if wait and executor == self.me.name:
            await self._execute_inline(self._requests[rec.task_id], rec.created)
        return rec, True

    async def _execute_inline(self, req: TaskRequest, arrived: float) -> None:
        """``_execute`` on the caller's task: shielded from the caller, cancelled with the node."""
        with trio.CancelScope(shield=True) as scope:
            self._inline_runs.add(scope)
            try:
                await self._execute(req, arrived, 0.0, "entry")
            finally:
                self._inline_runs.discard(scope)

    async def _end_inline_runs(self) -> None:
        """A task of the node's nursery: when the node stops, runs on callers' tasks stop too."""
        try:
            await trio.sleep_forever()
        finally:
            for scope in list(self._inline_runs):
                scope.cancel()

    async def load_model(self, model: str) -> Any:
        """A request's model, loaded; SubmitError 404 (unknown) or 422 (unusable).  Loading a large
        model takes a while: never on the event loop."""
        try:
            return self.store.get(model) if self.store.loaded(model) else \
                await wallclock.off_loop(self.store.get, model)
        except ModelError as exc:
            raise SubmitError(404 if "unknown model" in str(exc) else 422, str(exc)) from None

    def _accept(self, model: str, loaded: Any, arrays: dict[str, np.ndarray], executor: str, why: str,
                timeout_s: float, idem_key: str | None, journaled: bool, answer_key: str | None,
                task_id: str | None = None, scan: Scan | None = None, inline: bool = False) -> TaskRecord:
        """Record (journal first), track and start one task; no await, so nothing interleaves.
        ``inline``: a task for this node is not started; the caller runs it (``submit(wait=True)``)."""
        now = wallclock.now()
        # The entry's name in the id: any node can tell where to ask about it.
        rec = TaskRecord(task_id or f"{self.me.name}-{entropy.hex_id()}", model, self.me.name, executor, created=now,
                         journaled=journaled and self.journal is not None, deadline=now + timeout_s)
        req = TaskRequest(rec.task_id, self.me.name, executor, model,
                          {k: Tensor.from_array(v) for k, v in arrays.items()}, ttl=self.config.limits.ttl,
                          deadline=now + timeout_s, model_sha256=loaded.sha256 or self.store.sha256(model), scan=scan)
        if self.journal is not None and journaled:
            try:       # on disk before anyone is told: a crash from here on loses nothing
                self.journal.accept(req, executor, why, now, idem_key)
            except DuplicateKey as exc:
                raise SubmitError(409, f"idempotency key {idem_key!r} is taken by a task {self.me.name} cannot "
                                       f"read back ({exc}); use a new key") from None
            except JournalError as exc:
                raise SubmitError(503, f"{self.me.name} cannot record the task: {exc}") from None
        self._remember_key(idem_key, rec.task_id)
        if answer_key is not None:
            self._answer_keys[rec.task_id] = answer_key
        self.tasks.add(rec)
        self._watch_deadline(rec)
        # A local task is not retried end to end (nothing can lose it); a remote one
        # is re-sent under the same id if no result came back in time.
        self.ledger.submit(now, rec.task_id, self.peers[executor].index, req.deadline,
                           retry_after=math.inf if executor == self.me.name else None)
        self._requests[rec.task_id] = req
        assert self._nursery is not None, "node is not running"
        rec.placement = why
        self._in_flight[executor] += 1
        if executor == self.me.name:
            # What _on_request would do, one task hand-off sooner; the ledger's only
            # time for it is its deadline, usually long after the loop's next look.
            if not inline:
                self._nursery.start_soon(self._execute, req, now, 0.0, "entry")
            self._deadline_sooner(req.deadline)
        else:
            self._nursery.start_soon(self._on_request, req, now, 0.0, None, "entry")
            self._wake.set()
        return rec

    def _remember_key(self, idem_key: str | None, task_id: str) -> None:
        if idem_key is not None:
            self._idem[idem_key] = task_id
            if len(self._idem) > 65536:
                self._idem.pop(next(iter(self._idem)))

    def _answer_from_cache(self, model: str, hit: Answer, idem_key: str | None, timeout_s: float) -> TaskRecord:
        """A task answered at once from the edge cache: final before anyone sees it, not journaled."""
        now = wallclock.now()
        rec = TaskRecord(f"{self.me.name}-{entropy.hex_id()}", model, self.me.name, self.me.name, created=now,
                         journaled=False, deadline=now + timeout_s,
                         placement=f"edge cache: computed by {hit.executor}")
        self.tasks.add(rec)
        self._finalize(rec, ok=True, when=wallclock.now(), outputs=dict(hit.outputs),
                       trace=(Hop(self.me.name, now, wallclock.now(), "cache",
                                  detail=f"answered from the edge cache; computed by {hit.executor}"),))
        self._remember_key(idem_key, rec.task_id)
        return rec

    def _by_idem_key(self, idem_key: str) -> TaskRecord | None:
        """The task an earlier submission with this idempotency key created, if any."""
        try:
            known = self._idem.get(idem_key) or (self.journal.by_key(idem_key) if self.journal else None)
        except JournalError as exc:
            raise SubmitError(503, f"{self.me.name} cannot read its task journal: {exc}") from None
        return self.find_task(known) if known is not None else None

    async def _enforce_deadlines(self) -> None:
        """The backstop behind the ledger: a task still pending after its deadline ends
        now, failed with the reason, whatever happened to its target or its frames.
        A task of its own, so nothing that delays delivery can delay this.  It sleeps
        until the earliest deadline (for ever on an idle node: no wake-up per second),
        and :meth:`_watch_deadline` wakes it for an earlier one."""
        while True:
            wait = self.deadlines.next_at() - wallclock.now()
            if wait > 0:
                self._deadline_wake = trio.Event()
                with trio.move_on_after(max(DEADLINE_BATCH_S, wait)):
                    await self._deadline_wake.wait()
                continue
            for rec in self.deadlines.due(wallclock.now(), self.tasks):
                self._deadline_passed(rec)

    def _watch_deadline(self, rec: TaskRecord) -> None:
        if self.deadlines.watch(rec):
            self._deadline_wake.set()

    def _deadline_passed(self, rec: TaskRecord) -> None:
        reason = (f"{self.me.name}: no result by the task's deadline ({rec.deadline - rec.created:.1f} s after it "
                  f"was accepted); executor {rec.executor}")
        log.warning("task %s still %s at its deadline: failed by the deadline timer", rec.task_id, rec.status)
        self.ledger.fail(wallclock.now(), rec.task_id, reason)
        self._fail(rec.task_id, reason)

    def _finalize(self, rec: TaskRecord, *, ok: bool, when: float, outputs: dict[str, np.ndarray] | None = None,
                  error: str = "", trace: tuple[Hop, ...] = (), compute_s: float = 0.0,
                  result: TaskResult | None = None) -> bool:
        """The task's one final state: in memory, then in the journal."""
        if not rec.finish(ok=ok, when=when, outputs=outputs, error=error, trace=trace, compute_s=compute_s):
            return False
        answer_key = self._answer_keys.pop(rec.task_id, None)
        if ok and answer_key is not None and outputs is not None:
            self.edge_cache.put(answer_key, outputs, rec.executor, when)
        self.metrics.task_finished(rec.status, rec.breakdown())
        if self.journal is not None and rec.journaled:
            try:
                self.journal.finish(rec.task_id, ok, when, result, error)
            except JournalError as exc:
                log.error("%s", exc)
        return True

    def _place(self, model: str, target: str, arrays: dict[str, np.ndarray], loaded: Any,
               timeout_s: float, replicas: int = 1, exclude: frozenset[str] = frozenset()) -> tuple[list[str], str]:
        """Executors by expected completion (``mesh.placement``): one, or ``replicas`` satellites in
        different planes (so one plane's outage or one upset cannot take them all); SubmitError(503)
        if not enough fit."""
        in_bytes = sum(a.nbytes for a in arrays.values())
        own = self._own_state()
        local = self.compute_table.get(self.me.name, model)
        big = loaded.path.stat().st_size > 1 << 20
        default = local if local is not None else (0.1 if big else 0.005)
        load_s = self.store.load_s.get(model, 0.5 if big else 0.01)
        dead = self.membership.dead_nodes()
        names = [e.name for i, e in self.peers.by_index.items() if i not in dead and e.name not in exclude]
        cands = candidates(self.me.name, model, names, self._paths_from_me(), self.membership.state_of,
                           self.compute_table, self._in_flight, own, load_s, loaded.path.stat().st_size,
                           self.config.links.isl_bandwidth_bps, self.sunlit_of)
        c = self.constellation
        plane = {n: (c.shell_of[self.peers[n].index], c.plane_of[self.peers[n].index]) for n in names
                 if self.peers[n].index < len(c)}
        chosen: list[str] = []
        why = ""
        for k in range(replicas):
            if replicas > 1:   # satellites only, one per plane
                used = {plane[n] for n in chosen}
                cands = [x for x in cands if x.node in plane and plane[x.node] not in used]
            try:
                choice = choose(target, cands, in_bytes=in_bytes, out_bytes=self._out_bytes.get(model, in_bytes),
                                bandwidth_bps=self.config.links.isl_bandwidth_bps, default_compute_s=default,
                                heavy_s=self.config.energy.heavy_ms / 1e3, time_left_s=timeout_s)
            except PlacementError as exc:
                extra = f" (replica {k + 1} of {replicas}: one per plane, {k} placed)" if replicas > 1 else ""
                raise SubmitError(503, f"cannot place a {model!r} task ({target}){extra}: {exc}") from None
            chosen.append(choice.node)
            why = why or choice.why
        if replicas > 1:
            return chosen, f"{target}: {replicas} replicas, one per plane, best first ({why})"
        return chosen, f"{target}: {why}"

    def _paths_from_me(self) -> Callable[[str], tuple[float, int] | None]:
        """Latency and hop count to every node at once (one Dijkstra, ``HealingRouter.routes_from``):
        placement asks for every live node, and a route tree per node would cost one Dijkstra each."""
        now = wallclock.now()
        lat, hops = self.healing.routes_from(self.me.index, self.orbit_t(now), down_nodes=self.membership.dead_nodes(),
                                             down_links=self.membership.down_links() | self._cut_links(now))

        def path_of(dst: str) -> tuple[float, int] | None:
            i = self.peers[dst].index
            return None if i >= len(hops) or hops[i] < 0 else (float(lat[i]), int(hops[i]))
        return path_of

    def _path_to(self, dst: str) -> tuple[float, int] | None:
        """One-way latency and hop count of the route to ``dst`` as routing sees it now."""
        now = wallclock.now()
        t = self.orbit_t(now)
        path = self.healing.path(self.me.index, self.peers[dst].index, t, down_nodes=self.membership.dead_nodes(),
                                 down_links=self.membership.down_links() | self._cut_links(now))
        if path is None:
            return None
        snap = self.router.snapshot(t)
        return sum(snap.latency(a, b) for a, b in zip(path, path[1:])), len(path) - 1

    def _deadline_sooner(self, t: float) -> None:
        """A hop timer, held frame or task deadline at ``t``: wake the loop if it sleeps past it."""
        if t < self._tick_at:
            self._wake.set()

    async def _delivery_loop(self) -> None:
        """Hop retransmissions, held frames, end-to-end retries and task deadlines, each when due."""
        while True:
            now = wallclock.now()
            wait = min(self.relay.next_deadline(), self.ledger.next_deadline()) - now
            if wait > 0:
                nap = min(wait, DELIVERY_TICK_MAX_S)
                self._tick_at = now + nap    # wall clock, as deadlines are
                with trio.move_on_after(nap):
                    await self._wake.wait()
                self._wake = trio.Event()
            self._tick_at = -math.inf       # ticking now: a new deadline is seen on the next pass
            self.relay.tick()
            for x in self.ledger.tick(wallclock.now()):
                if isinstance(x, TaskFailed):
                    self._fail(x.task_id, x.reason)
                else:
                    req = self._requests.get(x.task_id)
                    if req is not None:
                        log.info("%s: no result for task %s yet; attempt %d", self.me.name, x.task_id, x.attempt)
                        await self._on_request(replace(req, attempt=x.attempt), wallclock.now(), 0.0, None, "retry")

    def _fail(self, task_id: str, reason: str) -> None:
        self._requests.pop(task_id, None)
        rec = self.tasks.get(task_id)
        if rec is not None and rec.status not in ("succeeded", "failed") and self._in_flight.get(rec.executor):
            self._in_flight[rec.executor] -= 1
        if rec is not None and self._finalize(rec, ok=False, when=wallclock.now(), error=reason):
            log.warning("task %s failed: %s", task_id, reason)

    def _undeliverable(self, msg: TaskRequest | TaskResult, reason: str) -> None:
        """A frame held past its deadline: the task fails with the reason, never silently."""
        if isinstance(msg, TaskRequest):
            if msg.entry == self.me.name:
                self.ledger.note(msg.task_id, reason)
                failed = self.ledger.fail(wallclock.now(), msg.task_id, reason)
                if failed is not None:
                    self._fail(msg.task_id, reason)
                return
            self._send_result(TaskResult(msg.task_id, msg.entry, msg.executor, ok=False, error=reason,
                                         ttl=self.config.limits.ttl, trace=msg.trace, attempt=msg.attempt,
                                         deadline=wallclock.now() + DEFAULT_TASK_TIMEOUT_S))
        elif isinstance(msg, TaskResult):
            log.warning("result of %s could not return to %s: %s", msg.task_id, msg.entry, reason)
        else:
            log.warning("%s %s undeliverable: %s", type(msg).__name__, msg.hop_id, reason)

    def _complete(self, res: TaskResult, arrived: float, expected: float) -> None:
        rec = self.tasks.get(res.task_id)
        if rec is None:
            log.warning("result for unknown task %s", res.task_id)
            return
        if not self.ledger.on_result(arrived, res.task_id) and rec.status in ("succeeded", "failed"):
            return      # a repeat (retried task whose first result also arrived)
        self._requests.pop(res.task_id, None)
        if self._in_flight.get(rec.executor):
            self._in_flight[rec.executor] -= 1
        if res.ok:
            if res.compute_s > 0 and rec.executor != self.me.name:
                self.compute_table.observe(rec.executor, rec.model, res.compute_s)
            self._out_bytes[rec.model] = sum(t.nbytes for t in res.outputs.values())
        hop = Hop(self.me.name, arrived, arrived, "deliver", expected)
        outputs = {k: t.to_array() for k, t in res.outputs.items()} if res.ok else None
        trace = res.trace + (hop,) if expected else res.trace
        self._finalize(rec, ok=res.ok, when=arrived, outputs=outputs, error=res.error, trace=trace,
                       compute_s=res.compute_s, result=replace(res, trace=trace))
