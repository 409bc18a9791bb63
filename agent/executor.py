"""Runs inference in worker threads so the trio loop keeps serving links.

onnxruntime releases the GIL while it computes, so ``trio.to_thread`` with a
capacity limiter gives real parallelism up to the worker count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import trio

from agent.models import ModelStore
from agent.priority import normal_priority_for_this_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    outputs: dict[str, np.ndarray]
    compute_s: float


class ExecutionError(RuntimeError):
    """onnxruntime rejected the inputs or failed while running."""


class Executor:
    def __init__(self, store: ModelStore, workers: int = 1):
        self.store = store
        self._limiter = trio.CapacityLimiter(workers)
        self.running = 0
        self.completed = 0

    async def run(self, model_name: str, inputs: dict[str, np.ndarray]) -> Execution:
        self.running += 1
        try:
            return await trio.to_thread.run_sync(self._run_sync, model_name, inputs, limiter=self._limiter)
        finally:
            self.running -= 1
            self.completed += 1

    async def warm_up(self, model_name: str) -> None:
        """One inference on zeros (symbolic dimensions = 1), so the first real
        task does not pay for onnxruntime's first-run allocations."""
        model = self.store.get(model_name)
        zeros = {s.name: np.zeros([d or 1 for d in s.shape], dtype=s.dtype) for s in model.inputs}
        try:
            await trio.to_thread.run_sync(self._run_sync, model_name, zeros, limiter=self._limiter)
        except ExecutionError as exc:  # a model may reject zeros; it still loaded
            log.debug("warm-up of %s skipped: %s", model_name, exc)

    def _run_sync(self, model_name: str, inputs: dict[str, np.ndarray]) -> Execution:
        normal_priority_for_this_thread()
        model = self.store.get(model_name)
        t0 = time.perf_counter()
        try:
            values = model.session.run(None, inputs)
        except Exception as exc:
            raise ExecutionError(f"{model_name}: {str(exc).splitlines()[0][:300]}") from None
        compute = time.perf_counter() - t0
        return Execution({spec.name: np.asarray(v) for spec, v in zip(model.outputs, values)}, compute)
