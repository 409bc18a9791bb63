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
- A per-task timeout that stops onnxruntime itself (``RunOptions.terminate``),
  not just the caller's wait.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import trio

from agent.models import LoadedModel, ModelStore
from agent.priority import normal_priority_for_this_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    outputs: dict[str, np.ndarray]
    compute_s: float
    batch_size: int = 1       # tasks that shared this onnxruntime call


class ExecutionError(RuntimeError):
    """onnxruntime rejected the inputs, failed, or ran past its timeout."""


class ExecutorBusy(RuntimeError):
    """The queue is full; retry later."""


@dataclass
class _Job:
    model: str
    inputs: dict[str, np.ndarray]
    timeout_s: float
    done: trio.Event = field(default_factory=trio.Event)
    result: Execution | None = None
    error: Exception | None = None


def _batchable(model: LoadedModel) -> bool:
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
        job = _Job(model_name, inputs, timeout_s or self.default_timeout_s)
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
            for _ in range(self.workers):
                nursery.start_soon(self._worker)
            task_status.started()

    async def warm_up(self, model_name: str) -> None:
        """One inference on zeros (symbolic dimensions = 1), so the first real
        task does not pay for onnxruntime's first-run allocations."""
        model = self.store.get(model_name)
        zeros = {s.name: np.zeros([d or 1 for d in s.shape], dtype=s.dtype) for s in model.inputs}
        try:
            await trio.to_thread.run_sync(self._run_sync, model, zeros, ort.RunOptions())
        except ExecutionError as exc:  # a model may reject zeros; it still loaded
            log.debug("warm-up of %s skipped: %s", model_name, exc)

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
                    await trio.to_thread.run_sync(self.store.get, name)
            except Exception as exc:
                self._fail_all(queue, ExecutionError(f"{name}: {exc}"))
                continue
            if _batchable(model) and len(queue) < self.max_batch and self.batch_wait_s > 0 and self._wait_pays(name):
                self.batch_waits += 1
                await trio.sleep(self.batch_wait_s)  # let same-model tasks gather
            jobs = self._take_batch(model, queue)
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
        if _batchable(model):
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
        timeout = min(j.timeout_s for j in jobs)
        self.running += len(jobs)
        try:
            async with trio.open_nursery() as nursery:
                async def watchdog() -> None:
                    await trio.sleep(timeout)
                    options.terminate = True  # onnxruntime stops the run from its side
                nursery.start_soon(watchdog)
                try:
                    result = await trio.to_thread.run_sync(self._run_sync, model, feeds, options)
                except ExecutionError as failure:
                    reason = (ExecutionError(f"{model.name}: timed out after {timeout:g}s")
                              if options.terminate else failure)
                    for j in jobs:
                        j.error = reason
                    return
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.running -= len(jobs)
            self.completed += len(jobs)
            for j in jobs:
                j.done.set()
        per_task = result.compute_s / max(1, len(jobs))
        seen = self._compute_s.get(model.name)
        self._compute_s[model.name] = per_task if seen is None else seen + COMPUTE_EWMA * (per_task - seen)
        if len(jobs) > 1:
            self.batches += 1
            self.batched_tasks += len(jobs)
        offsets = np.cumsum([0] + sizes)
        for j, lo, hi in zip(jobs, offsets[:-1], offsets[1:]):
            outs = result.outputs if len(jobs) == 1 else {k: v[lo:hi] for k, v in result.outputs.items()}
            j.result = Execution(outs, result.compute_s, len(jobs))

    def _run_sync(self, model: LoadedModel, inputs: dict[str, np.ndarray], options: ort.RunOptions) -> Execution:
        normal_priority_for_this_thread()
        t0 = time.perf_counter()
        try:
            values = model.session.run(None, inputs, options)
        except Exception as exc:
            raise ExecutionError(f"{model.name}: {str(exc).splitlines()[0][:300]}") from None
        compute = time.perf_counter() - t0
        return Execution({spec.name: np.asarray(v) for spec, v in zip(model.outputs, values)}, compute)
