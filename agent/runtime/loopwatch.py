"""How punctual an agent's event loop is: its measured lag, and what holds it.

Frames are released by the event loop, so any task step that keeps it busy
for a millisecond delays every frame due in that millisecond.  ``LoopLag``
measures the delay continuously (the failure detector needs it); set
``ORBITMESH_SLOW_STEP_MS`` (e.g. 0.5) to log each longer step with its task.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Callable

import trio

from agent.per_run import per_run

log = logging.getLogger(__name__)


class SlowStepLogger(trio.abc.Instrument):
    def __init__(self, threshold_s: float):
        self.threshold_s = threshold_s
        self._t0: float | None = None  # None until a step is seen from its start

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._t0 is None:
            return
        took = time.perf_counter() - self._t0
        if took > self.threshold_s:
            log.warning("event loop held %.2f ms by %s", took * 1e3, task.name)


def install_from_env() -> None:
    raw = os.environ.get("ORBITMESH_SLOW_STEP_MS")
    if raw:
        trio.lowlevel.add_instrument(SlowStepLogger(float(raw) / 1e3))


LAG_SAMPLE_S = 0.1
LAG_WINDOW = 600          # samples kept: the last minute at 10 Hz


class LoopLag:
    """How late this process's event loop runs its timers, sampled at 10 Hz.

    A timer due at t that runs at t + lag means every frame, ack and verdict
    of this agent was that late too: the failure detector feeds on it
    (Lifeguard's local health, ``Membership.note_lag``) and operators read it
    in ``GET /v1/membership`` (``loop_lag``).  The lag is the event loop's, so a
    process samples it once for all the satellites it hosts (:func:`process_lag`):
    a sampler per satellite was 10 wake-ups per satellite per second.
    """

    def __init__(self) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)
        self.max_s = 0.0
        self.over_100ms = 0
        self._listeners: set[Callable[[float], None]] = set()

    def listen(self, on_lag: Callable[[float], None]) -> Callable[[], None]:
        """Call ``on_lag(lag_s)`` after each sample, until the returned function is called."""
        self._listeners.add(on_lag)
        return lambda: self._listeners.discard(on_lag)

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.samples.append(lag_s)
        self.max_s = max(self.max_s, lag_s)
        self.over_100ms += lag_s > 0.1

    def describe(self) -> dict[str, float | int]:
        recent = sorted(self.samples)
        pick = (lambda q: recent[min(len(recent) - 1, int(q * len(recent)))]) if recent else (lambda q: 0.0)
        return {"p50_ms": pick(0.5) * 1e3, "p99_ms": pick(0.99) * 1e3, "recent_max_ms": pick(1.0) * 1e3,
                "max_ms": self.max_s * 1e3, "over_100ms": self.over_100ms, "samples": len(recent)}

    async def watch(self) -> None:
        """Sample forever; every listener hears each sample."""
        while True:
            t0 = trio.current_time()
            await trio.sleep(LAG_SAMPLE_S)
            lag = trio.current_time() - t0 - LAG_SAMPLE_S
            self.record(lag)
            for on_lag in list(self._listeners):
                try:
                    on_lag(lag)
                except Exception:     # one node's bug must not stop the others' lag
                    log.exception("a loop-lag listener failed")


_PROCESS_LAG: trio.lowlevel.RunVar = trio.lowlevel.RunVar("orbitmesh_loop_lag")


def process_lag() -> LoopLag:
    """This ``trio.run``'s lag sampler, started on first use."""
    return per_run(_PROCESS_LAG, LoopLag, LoopLag.watch, "orbitmesh loop lag")
