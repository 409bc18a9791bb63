"""The task at its executor, and on its way there and back: run it here (model fetch,
input checks, power, the chaos upset) or forward it, and send the result home to its
entry node. The entry side is ``agent.runtime.node_tasks``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import trio

from agent import wallclock
from agent.compute.executor import ExecutionError, ExecutorBusy
from agent.compute.models import ModelError
from agent.runtime.scan import run_scan, scan_inputs
from agent.compute.tensors import InputError, check_shape
from agent.zoo import LimitError, check_limits
from mesh.wire import Hop, TaskRequest, TaskResult, Tensor

if TYPE_CHECKING:
    from agent.compute.executor import Executor
    from agent.runtime.metrics import TaskMetrics
    from agent.compute.model_fetch import ModelFetcher
    from agent.compute.models import ModelStore
    from agent.links.peers import NodeIdentity
    from agent.runtime.placement import ComputeTable
    from agent.runtime.relay import Relay
    from agent.runtime.tasks import TaskTable
    from mesh.chaos import FaultTable
    from mesh.config import FleetConfig
    from mesh.delivery import ExecutionCache
    from mesh.energy import Battery

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs


class PowerError(RuntimeError):
    """Work refused to protect the battery's reserve."""


class Execution:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    config: FleetConfig
    store: ModelStore
    executor: Executor
    exec_cache: ExecutionCache
    fetcher: ModelFetcher
    tasks: TaskTable
    relay: Relay
    chaos: FaultTable
    battery: Battery | None
    compute_table: ComputeTable
    metrics: TaskMetrics
    executed: int
    upsets: int
    _busy_s: float
    _nursery: trio.Nursery | None
    _wake: trio.Event
    _complete: Callable[[TaskResult, float, float], None]           # EntryTasks

    @property
    def busy_s(self) -> float:
        """onnxruntime seconds run here since start."""
        return self._busy_s

    async def _on_request(self, req: TaskRequest, arrived: float, expected: float, came_from: str | None,
                          event: str) -> None:
        if req.executor == self.me.name:
            assert self._nursery is not None
            self._nursery.start_soon(self._execute, req, arrived, expected, event)
            return
        hop = Hop(self.me.name, arrived, 0.0, event, expected)
        if event in ("entry", "retry"):
            self.relay.seen(req)
        problem = self._forward(req, req.executor, hop, came_from)
        if problem:
            self._send_result(TaskResult(req.task_id, req.entry, req.executor, ok=False, error=problem,
                                         ttl=self.config.limits.ttl, trace=req.trace + (hop,), attempt=req.attempt,
                                         deadline=req.deadline))

    async def _execute(self, req: TaskRequest, arrived: float, expected: float, event: str) -> None:
        state, cached = self.exec_cache.begin(req.task_id)
        if state == "running":
            return          # a retry overtook the first attempt; that one's result answers both
        if state == "done":
            self._send_result(replace(cached, attempt=req.attempt, trace=req.trace + (
                Hop(self.me.name, arrived, wallclock.now(), "execute", expected, detail="repeat: answered from cache"),)))
            return
        rec = self.tasks.get(req.task_id) if req.entry == self.me.name else None
        if rec is not None:
            rec.status = "running"
        ok, outputs, error, compute = False, {}, "", 0.0
        try:
            self._check_power(req.model)
            if req.model_sha256 and not self.store.has_version(req.model, req.model_sha256):
                await self.fetcher.fetch(req.model, req.model_sha256, req.entry, req.deadline or wallclock.now() + 60)
            key = self.store.key(req.model, req.model_sha256)    # the task's version, whatever the name means here
            model = self.store.get(key) if self.store.loaded(key) else \
                await wallclock.off_loop(self.store.get, key)
            if req.scan is not None:        # a job chunk (agent/runtime/scan.py)
                stacked, state = scan_inputs(model, req.inputs, req.scan)
                result = await run_scan(model, stacked, state, req.scan,
                                        lambda feeds, left: self.executor.run(key, feeds, left), req.deadline)
            else:
                arrays = {}
                for spec in model.inputs:
                    if spec.name not in req.inputs:
                        raise InputError(f"input {spec.name!r} missing")
                    arr = req.inputs[spec.name].to_array()
                    if arr.dtype.name != spec.dtype:
                        raise InputError(f"input {spec.name!r}: dtype {arr.dtype.name}, model expects {spec.dtype}")
                    check_shape(arr, spec)
                    arrays[spec.name] = arr
                check_limits(req.model, arrays, model.manifest)
                # The task's own deadline, not the executor's default: a run past it is stopped there.
                result = await self.executor.run(key, arrays, req.deadline - wallclock.now() if req.deadline else None)
            ok, compute = True, result.compute_s
            self._busy_s += compute
            self.compute_table.observe(self.me.name, req.model, compute / max(1, result.batch_size))
            self.metrics.inference_done(req.model, compute / max(1, result.batch_size))
            outputs = self._upset({k: np.asarray(v) for k, v in result.outputs.items()})
        except ExecutorBusy as exc:
            error = f"{self.me.name}: executor busy ({exc}); retry later"
        except (ModelError, InputError, LimitError, ExecutionError, PowerError) as exc:
            error = f"{self.me.name}: {exc}"
        batch = f", batch of {result.batch_size}" if ok and result.batch_size > 1 else ""
        if ok and req.scan is not None:
            batch = f", chunk of {req.scan.steps} inputs"
        hop = Hop(self.me.name, arrived, wallclock.now(), "execute", expected,
                  detail=f"compute {compute * 1e3:.2f} ms{batch}" if ok else error)
        self.executed += 1
        res = TaskResult(req.task_id, req.entry, self.me.name, ok, outputs, error, self.config.limits.ttl,
                         req.trace + (hop,), compute, req.attempt, req.deadline)
        self.exec_cache.finish(req.task_id, res)
        self._send_result(res)

    def _upset(self, outputs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """The results as they leave; under a ``bitflip`` fault one bit of them flips at its rate,
        silently, as a radiation upset would (only replicas in majority can tell)."""
        rate = self.chaos.result_corruption(self.me.name, wallclock.now())
        if rate and random.random() < rate:
            names = [k for k, v in outputs.items() if v.nbytes]
            if names:
                k = random.choice(names)
                flipped = np.array(outputs[k], copy=True)
                raw = flipped.reshape(-1).view(np.uint8)
                raw[random.randrange(raw.size)] ^= np.uint8(1 << random.randrange(8))
                outputs = {**outputs, k: flipped}
                self.upsets += 1
        return {k: Tensor.from_array(v) for k, v in outputs.items()}

    def _check_power(self, model: str) -> None:
        """In eclipse below the reserve, heavy work is refused: the bus needs the charge."""
        if self.battery is None or not self.battery.low():
            return
        expected = self.compute_table.get(self.me.name, model)
        if expected is None:
            expected = math.inf     # never measured here: assume the worst
        if not self.battery.accepts(expected):
            b = self.battery
            raise PowerError(f"battery at {b.fraction:.0%} in eclipse, below its {b.config.reserve:.0%} reserve: "
                             f"heavy work refused (expected {expected * 1e3:.0f} ms > {b.config.heavy_ms:g} ms)")

    def _send_result(self, res: TaskResult) -> None:
        """Send a result (its trace already ends with this node's hop) back to its entry node."""
        if res.entry == self.me.name:
            self._complete(res, wallclock.now(), 0.0)
            return
        self.relay.seen(res)
        last = res.trace[-1] if res.trace and res.trace[-1].node == self.me.name else None
        trace = res.trace[:-1] if last else res.trace
        hop = last or Hop(self.me.name, wallclock.now(), 0.0, "forward")
        problem = self._forward(replace(res, trace=trace), res.entry, hop, None)
        if problem:
            log.warning("result of %s cannot return to %s: %s", res.task_id, res.entry, problem)

    def _on_result(self, res: TaskResult, arrived: float, expected: float, came_from: str) -> None:
        if res.entry == self.me.name:
            self._complete(res, arrived, expected)
            return
        problem = self._forward(res, res.entry, Hop(self.me.name, arrived, 0.0, "forward", expected), came_from)
        if problem:
            log.warning("result of %s dropped at %s: %s", res.task_id, self.me.name, problem)

    def _forward(self, msg: TaskRequest | TaskResult, dst: str, hop: Hop, came_from: str | None) -> str:
        """Hand ``msg`` and this node's ``hop`` to the relay towards ``dst``; "" or why it cannot go.

        No route is not a failure here: the relay holds the frame until one appears.
        """
        problem = self.relay.send(msg, dst, came_from, hop)
        self._wake.set()
        return problem
