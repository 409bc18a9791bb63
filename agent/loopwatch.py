"""Find what holds an agent's event loop: log task steps that run too long.

Frames are released by the event loop, so any task step that keeps it busy
for a millisecond delays every frame due in that millisecond.  Set
``ORBITMESH_SLOW_STEP_MS`` (e.g. 0.5) to log each longer step with its task.
"""

from __future__ import annotations

import logging
import os
import time

import trio

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
