"""Runs inference in worker threads so the trio loop keeps serving links.

- A bounded queue: a full one refuses work (the API answers 429 with
  Retry-After) instead of letting latency grow without limit.
- A worker pool sized to the cores: onnxruntime releases the GIL while it
  computes, so each worker thread really runs in parallel.
- Dynamic batching: tasks for the same model that wait together are run as
  one batch (inputs concatenated along a dynamic first dimension), which
  amortises per-call overhead; ``batch_wait_s`` bounds the extra wait, and a
  worker waits only for models quick enough that their per-call overhead matters
  (a 30 ms model's worker would sit idle for 2 ms to save a fraction of that).
- The task's own deadline, enforced here: a job still queued at its deadline
  fails without running; a run past it is stopped by onnxruntime itself
  (``RunOptions.terminate``, checked between nodes and Loop iterations); a run
  that does not stop within ``ABANDON_GRACE_S`` more (one op longer than
  that) fails the same way and its thread is abandoned to finish alone while
  the worker carries on with a fresh one (``_deadline_exceeded``).  At most
  ``workers`` threads are abandoned at a time; beyond that the task still fails
  on time but its worker waits for the run to end, so a stream of such models
  cannot multiply threads.  An abandoned run's thread goes under ``SCHED_IDLE``
  (where the agent may return it to the normal policy afterwards): its op
  still computes to the end, but only on CPU time nothing else wants.  One task (``agent.compute.deadline_watch``) watches every
  run's deadline: cheaper than a watchdog task and a nursery per run.
- On a virtual clock (``agent.wallclock.virtual``: nodes simulated in one
  process) a run is computed inline on the event loop instead, in zero
  virtual time: a thread would let the clock jump while it computes.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import trio

from agent.compute.deadline_watch import DeadlineWatch
from agent.compute.models import LoadedModel, ModelStore
from agent import entropy, wallclock
from agent.compute import ort_limits
from agent.compute.ort_limits import cap_run
from agent.links.priority import idle_is_reversible, idle_thread, normal_priority_for_this_thread

log = logging.getLogger(__name__)

ABANDON_GRACE_S = 1.0       # past the deadline, for onnxruntime to honour terminate before the thread is left
WARM_UP_S = 10.0            # one run on zeros when a model is loaded


@dataclass(frozen=True)
class Execution:
    outputs: dict[str, np.ndarray]
    compute_s: float
    batch_size: int = 1       # tasks that shared this onnxruntime call


class ExecutionError(RuntimeError):
    """onnxruntime rejected the inputs, failed, or ran past its timeout."""


class DeadlineExceeded(ExecutionError):
    """The task's deadline passed before or while it ran.  ``still_running``: set when
    the run, given up, ends; its worker waits for it (over the cap of abandoned runs)."""

    def __init__(self, message: str, still_running: trio.Event | None = None):
        super().__init__(message)
        self.still_running = still_running


class ExecutorBusy(RuntimeError):
    """The queue is full; retry later."""


@dataclass
class _Job:
    model: str
    inputs: dict[str, np.ndarray]
    timeout_s: float
    deadline: float = 0.0     # trio clock
    done: trio.Event = field(default_factory=trio.Event)
    result: Execution | None = None
    error: Exception | None = None


async def _terminate_at(options: ort.RunOptions, seconds: float) -> None:
    await trio.sleep(seconds)
    options.terminate = True  # onnxruntime stops the run from its side


async def _in_thread(fn: Callable[[], Execution],
                     on_end: Callable[[Execution | None, ExecutionError | None], None] | None) -> Execution:
    """``fn()`` in a thread of trio's cache, given up if cancelled (the thread is left to finish).

    What ``trio.to_thread.run_sync(fn, abandon_on_cancel=True)`` does, less its per-call
    costs (a capacity limiter, a copied context, the thread renamed each time), and with
    ``on_end`` called on the event loop in the same callback that wakes this task: the
    jobs' waiters and this worker then run in one pass of the loop instead of two."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    abandoned = False

    def back(result: Any) -> None:       # on the event loop; ``result``: an outcome.Value or Error
        if abandoned:
            return
        try:
            if on_end is not None:
                error = getattr(result, "error", None)
                if error is None:
                    on_end(result.value, None)
                elif isinstance(error, ExecutionError):
                    on_end(None, error)
        except Exception:      # a bug; never raised into trio's own callback runner
            log.exception("ending a run failed")
        trio.lowlevel.reschedule(task, result)

    def deliver(result: Any) -> None:    # in the thread
        try:
            token.run_sync_soon(back, result)
        except trio.RunFinishedError:
            pass

    def abort(_: Any) -> trio.lowlevel.Abort:
        nonlocal abandoned
        abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED

    trio.lowlevel.start_thread_soon(fn, deliver)
    return await trio.lowlevel.wait_task_rescheduled(abort)


def batchable(model: LoadedModel) -> bool:
    """Only models whose manifest says so: a dynamic first dimension is not
    always a batch (matmul's ``b``), and some models' outputs depend on their
    batch-mates (int8 activations quantised per batch), so batching is opt-in."""
    opted_in = (model.manifest.get("batching") or {}).get("batchable") is True
    return opted_in and all(s.shape and s.shape[0] is None for s in model.inputs + model.outputs)


# A worker waits ``batch_wait_s`` for batch-mates only for a model whose run
# takes less than this many waits: for longer ones the idle worker costs more
# throughput than sharing one call saves (cloud-mask: 30 ms a tile, and its
# fair-share batches form from the queue alone under load).
WAIT_PAYS_BELOW = 5.0
COMPUTE_EWMA = 0.2


def _batch_element_budget(model: LoadedModel) -> int | None:
    return (model.manifest.get("batching") or {}).get("max_elements")


class Executor:
    def __init__(self, store: ModelStore, workers: int | None = None, *, queue_limit: int = 64,
                 max_batch: int = 16, batch_wait_s: float = 0.002, default_timeout_s: float = 30.0):
        self.store = store
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.queue_limit = queue_limit
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.default_timeout_s = default_timeout_s
        self._queues: dict[str, deque[_Job]] = {}
        self._stale: dict[str, int] = {}
        # One token per job.  A batch of k takes one token and marks k − 1 more
        # of its model stale; workers skip stale tokens, so tokens never outgrow
        # the jobs (queued + one batch per worker).
        self._tokens_send, self._tokens_recv = trio.open_memory_channel(queue_limit + max_batch * self.workers)
        self.queued = 0
        self.running = 0
        self.completed = 0
        self.batches = 0
        self.batched_tasks = 0
        self.expired = 0          # jobs failed at their deadline (queued or running)
        self.abandoned = 0        # runs left to finish in a thread of their own
        self._stuck = 0           # of those, still running (updated from their threads)
        self._stuck_lock = threading.Lock()
        self.idled: set[int] = set()   # native ids of abandoned runs' threads under SCHED_IDLE, while they run
        idle_is_reversible()           # probed once here, not on the loop when a run is first abandoned
        self._watch = DeadlineWatch(ABANDON_GRACE_S)
        self.batch_waits = 0
        self._compute_s: dict[str, float] = {}    # per task, smoothed, per model

    def _wait_pays(self, name: str) -> bool:
        """Whether waiting for batch-mates can pay for the worker's idle time."""
        seen = self._compute_s.get(name)
        return seen is None or seen < WAIT_PAYS_BELOW * self.batch_wait_s

    @property
    def full(self) -> bool:
        return self.queued >= self.queue_limit

    def retry_after_s(self) -> int:
        """A hint for clients: about how long the current queue takes to drain."""
        return max(1, int(self.queued / max(self.workers, 1) * 0.05) + 1)

    async def run(self, model_name: str, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> Execution:
        """Queue one task and wait for its result; ExecutorBusy if the queue is full."""
        if self.full:
            raise ExecutorBusy(f"{self.queued} tasks queued (limit {self.queue_limit})")
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise DeadlineExceeded(f"{model_name}: deadline exceeded before it could run")
        job = _Job(model_name, inputs, timeout, trio.current_time() + timeout)
        self._queues.setdefault(model_name, deque()).append(job)
        self.queued += 1
        self._tokens_send.send_nowait(model_name)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The worker pool; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch.serve)
            for _ in range(self.workers):
                nursery.start_soon(self._worker)
            task_status.started()

    async def warm_up(self, model_name: str, timeout_s: float = WARM_UP_S) -> None:
        """One inference on zeros (symbolic dimensions = 1), so the first real
        task does not pay for onnxruntime's first-run allocations.  Bounded like
        a task: an uploaded model may spin on zeros as well as on anything else."""
        model = self.store.get(model_name)
        zeros = {s.name: np.zeros([d or 1 for d in s.shape], dtype=s.dtype) for s in model.inputs}
        options = ort.RunOptions()
        if model.manifest.get("uploaded"):
            cap_run(options)
        async with trio.open_nursery() as nursery:      # its own watchdog: it runs before ``serve`` starts
            nursery.start_soon(_terminate_at, options, timeout_s)
            try:
                await self._run_bounded(model, zeros, options, trio.move_on_after(timeout_s + ABANDON_GRACE_S),
                                        timeout_s)
            except ExecutionError as exc:  # a model may reject zeros, or run too long; it still loaded
                log.info("warm-up of %s skipped: %s", model_name, exc)
                if isinstance(exc, DeadlineExceeded) and exc.still_running is not None:
                    await exc.still_running.wait()
            finally:
                nursery.cancel_scope.cancel()

    async def _worker(self) -> None:
        while True:
            name = await self._tokens_recv.receive()
            if self._stale.get(name):
                self._stale[name] -= 1     # its job went out in an earlier batch
                continue
            queue = self._queues.get(name)
            if not queue:
                continue  # its job was taken into an earlier batch
            try:
                # Loading happens in a thread, but only once: a loaded model
                # costs no thread round trip per task.
                model = self.store.get(name) if self.store.loaded(name) else \
                    await wallclock.off_loop(self.store.get, name)
            except Exception as exc:
                self._fail_all(queue, ExecutionError(f"{name}: {exc}"))
                continue
            if batchable(model) and len(queue) < self.max_batch and self.batch_wait_s > 0 and self._wait_pays(name):
                self.batch_waits += 1
                await trio.sleep(self.batch_wait_s)  # let same-model tasks gather
            jobs = self._drop_expired(self._take_batch(model, queue))
            if len(jobs) > 1:
                self._stale[name] = self._stale.get(name, 0) + len(jobs) - 1
            elif not jobs and self._stale.get(name):
                # Another worker batched our job while we waited, and counted our
                # token as stale: it was this one.
                self._stale[name] -= 1
            if jobs:
                await self._execute(model, jobs)

    def _take_batch(self, model: LoadedModel, queue: deque[_Job]) -> list[_Job]:
        if not queue:
            return []
        first = queue.popleft()
        jobs = [first]
        if batchable(model):
            shape_of = lambda j: {k: v.shape[1:] for k, v in j.inputs.items()}  # noqa: E731
            size_of = lambda j: max((v.size for v in j.inputs.values()), default=0)  # noqa: E731
            want, budget = shape_of(first), _batch_element_budget(model)
            total = size_of(first)
            keep: deque[_Job] = deque()
            # A fair share of what is queued, so a batch never leaves the other
            # workers idle: parallel workers beat one bigger batch on a CPU.
            limit = min(self.max_batch, max(1, math.ceil((len(queue) + 1) / self.workers)))
            while queue and len(jobs) < limit:
                job = queue.popleft()
                fits = budget is None or total + size_of(job) <= budget
                if shape_of(job) == want and fits:
                    jobs.append(job)
                    total += size_of(job)
                else:
                    keep.append(job)
            queue.extendleft(reversed(keep))
        self.queued -= len(jobs)
        return jobs

    def _drop_expired(self, jobs: list[_Job]) -> list[_Job]:
        """Fail the jobs whose deadline passed while they were queued; the rest run."""
        now = trio.current_time()
        if all(j.deadline > now for j in jobs):
            return jobs
        for j in jobs:
            if j.deadline <= now:
                j.error = DeadlineExceeded(f"{j.model}: deadline exceeded: timed out after {j.timeout_s:g}s "
                                         f"in the queue, before it could run")
                j.done.set()
                self.expired += 1
        return [j for j in jobs if j.deadline > now]

    def _fail_all(self, queue: deque[_Job], error: Exception) -> None:
        if queue:
            name = queue[0].model
            self._stale[name] = self._stale.get(name, 0) + len(queue) - 1
        while queue:
            job = queue.popleft()
            self.queued -= 1
            job.error = error
            job.done.set()

    async def _execute(self, model: LoadedModel, jobs: list[_Job]) -> None:
        sizes = [next(iter(j.inputs.values())).shape[0] if j.inputs else 1 for j in jobs]
        feeds = jobs[0].inputs if len(jobs) == 1 else {
            name: np.concatenate([j.inputs[name] for j in jobs], axis=0) for name in jobs[0].inputs}
        options = ort.RunOptions()
        if model.manifest.get("uploaded"):
            cap_run(options)
        budget = min(j.timeout_s for j in jobs)     # what the message says: the task's own timeout
        self.running += len(jobs)
        scope = trio.CancelScope()
        watched = self._watch.watch(min(j.deadline for j in jobs), options, scope)
        reason: list[ExecutionError | None] = []

        def settle(result: Execution | None, failure: ExecutionError | None = None) -> None:
            """The jobs' end, once: called on the event loop as soon as the run ends (before
            this worker resumes, so their waiters wake in the same pass), or by the worker."""
            if reason:
                return
            if result is None and failure is not None and options.terminate:
                self.expired += len(jobs)
                if not isinstance(failure, DeadlineExceeded):
                    failure = DeadlineExceeded(f"{model.name}: deadline exceeded: timed out after {budget:g}s")
            reason.append(failure)
            try:
                self._watch.done(watched)
                self.running -= len(jobs)
                self.completed += len(jobs)
                if result is not None:
                    self._record(model, jobs, sizes, result)
            finally:
                for j in jobs:
                    j.error = failure
                    j.done.set()

        try:
            result = await self._run_bounded(model, feeds, options, scope, budget, on_end=settle)
        except ExecutionError as failure:
            settle(None, failure)
        else:
            settle(result)
        finally:
            settle(None)        # cancelled (the node stops): the waiters wake all the same
        failure = reason[0]
        if isinstance(failure, DeadlineExceeded) and failure.still_running is not None:
            await failure.still_running.wait()    # over the cap of abandoned runs: this worker waits for its own

    def _record(self, model: LoadedModel, jobs: list[_Job], sizes: list[int], result: Execution) -> None:
        """A finished run: its jobs' results (a batch split back), the model's smoothed compute time."""
        per_task = result.compute_s / max(1, len(jobs))
        seen = self._compute_s.get(model.name)
        self._compute_s[model.name] = per_task if seen is None else seen + COMPUTE_EWMA * (per_task - seen)
        if len(jobs) > 1:
            self.batches += 1
            self.batched_tasks += len(jobs)
        if len(jobs) == 1:
            jobs[0].result = Execution(result.outputs, result.compute_s, 1)
            return
        offsets = np.cumsum([0] + sizes)
        for j, lo, hi in zip(jobs, offsets[:-1], offsets[1:]):
            j.result = Execution({k: v[lo:hi] for k, v in result.outputs.items()}, result.compute_s, len(jobs))

    async def _run_bounded(self, model: LoadedModel, feeds: dict[str, np.ndarray], options: ort.RunOptions,
                           scope: trio.CancelScope, budget: float,
                           on_end: Callable[[Execution | None, ExecutionError | None], None] | None = None
                           ) -> Execution:
        """The run in a worker thread, given up when ``scope`` is cancelled (``ABANDON_GRACE_S``
        after its deadline, if onnxruntime has not stopped by then): a thread cannot be
        killed, so it is left to finish."""
        state: dict[str, Any] = {"left": False, "finished": False}
        if wallclock.is_virtual():      # inline, taking no virtual time (the module's docstring)
            with scope:
                await trio.lowlevel.checkpoint()
                state["finished"] = True
                return self._compute(model, feeds, options)
            return self._deadline_exceeded(model, options, budget, state)
        token = trio.lowlevel.current_trio_token()

        def run() -> Execution:
            state["tid"] = threading.get_native_id()
            try:
                return self._run_sync(model, feeds, options)
            finally:
                with self._stuck_lock:
                    state["finished"] = True
                    if state["left"]:
                        self._stuck -= 1
                        if state["tid"] in self.idled:
                            self.idled.discard(state["tid"])
                            normal_priority_for_this_thread()    # trio reuses this thread
                        try:
                            token.run_sync_soon(state["ended"].set)
                        except trio.RunFinishedError:
                            pass

        with scope:
            return await _in_thread(run, on_end)
        return self._deadline_exceeded(model, options, budget, state)

    def _deadline_exceeded(self, model: LoadedModel, options: ort.RunOptions, timeout: float,
                           state: dict[str, Any]) -> Execution:
        options.terminate = True
        ended = None
        with self._stuck_lock:
            if not state["finished"]:
                ended = state["ended"] = trio.Event()
                state["left"] = True
                self._stuck += 1
                if "tid" in state and idle_thread(state["tid"]):
                    self.idled.add(state["tid"])
        self.abandoned += 1
        said = f"{model.name}: deadline exceeded: timed out after {timeout:g}s; onnxruntime did not stop within " \
               f"{ABANDON_GRACE_S:g}s more, so its run was abandoned"
        if ended is not None and self._stuck > self.workers:
            log.warning("%s ran %.1f s past its deadline; %d runs abandoned already, so its worker waits for it",
                        model.name, ABANDON_GRACE_S, self._stuck - 1)
            raise DeadlineExceeded(f"{said}; its worker waits for it to end ({self._stuck - 1} runs abandoned "
                                   f"already)", ended)
        log.warning("%s ran %.1f s past its deadline without stopping; its thread is abandoned (%d still running)",
                    model.name, ABANDON_GRACE_S, self._stuck)
        raise DeadlineExceeded(f"{said} and the worker replaced")

    @property
    def stuck(self) -> int:
        """Abandoned runs still computing."""
        return self._stuck

    def _run_sync(self, model: LoadedModel, inputs: dict[str, np.ndarray], options: ort.RunOptions) -> Execution:
        normal_priority_for_this_thread()
        return self._compute(model, inputs, options)

    def _compute(self, model: LoadedModel, inputs: dict[str, np.ndarray], options: ort.RunOptions) -> Execution:
        t0 = time.perf_counter()
        try:
            values = model.session.run(None, inputs, options)
        except Exception as exc:
            raise ExecutionError(f"{model.name}: {ort_limits.explain(str(exc))}") from None
        # In a seeded simulation (agent.entropy) inference takes zero virtual time, and its real
        # duration must not reach gossip (compute times are gossiped) or the run would not replay.
        compute = 0.0 if entropy.is_seeded() else time.perf_counter() - t0
        return Execution({spec.name: np.asarray(v) for spec, v in zip(model.outputs, values)}, compute)
