"""One heap and one timer release every received frame of the process, each when it is due.

A frame's due time is ``sent_at + distance/c + extra`` (``agent/links/transport.py``).
Each link used to run its own releaser task with its own heap and timerfd: a
process hosting 24 satellites ran ~100 of them, each waking for its own frames
and paying a cancel scope per frame (8.4 timer wake-ups per idle satellite per
second), and frames due in the same instant on different links woke the loop
once per link.  Here the process has one releaser (issue 14: "one timer heap
releasing every frame of the process"): frames from every link of every node
go into one heap, one task sleeps until the earliest is due and then releases
everything that is due, in due-time order.

It sleeps coarsely (trio) until ``COARSE_MARGIN_S`` before the earliest due,
then on the precise timer (a timerfd at the absolute instant).  A frame pushed
while it sleeps that is due sooner brings the coarse sleep's end forward, or
re-arms the timerfd to the earlier instant, so no frame waits behind a later one.

Handlers run on the releaser's task: ``deliver`` must not block (the node's
handlers hand long work to their own tasks).  A frame whose link closed, or
whose node stopped, before it was due is dropped, as it would have been with
that link's own releaser.  The releaser is per ``trio.run`` (a ``RunVar``),
started on first use as a system task, so every LinkLayer of a process shares
it without being told, and tests that each call ``trio.run`` get their own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import Any, Callable

import trio

from agent import wallclock
from agent.per_run import per_run
from agent.links.timer import COARSE_MARGIN_S, PreciseTimer

log = logging.getLogger(__name__)

class FrameReleaser:
    """The process's release heap.  ``push`` from any task of the run; ``run`` is its one task."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[float, float], Any]]] = []
        self._seq = itertools.count()
        self._alarm = wallclock.Alarm()       # the coarse sleep (it ends a margin before the due time)
        self._armed: float | None = None     # the timerfd is armed for this due time
        self._timer = PreciseTimer()
        self.released = 0
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, release: Callable[[float, float], Any]) -> None:
        """``release(due, released_at)`` runs (and is awaited, if it returns an awaitable) at ``due``."""
        heapq.heappush(self._heap, (due, next(self._seq), release))
        if not self._alarm.sooner(due) and self._armed is not None and due < self._armed:
            self._armed = due
            self._timer.arm(due)

    async def _sleep_precisely(self, due: float) -> None:
        """Until ``due`` or until a pushed frame re-arms the timer earlier (the caller re-reads the heap)."""
        if not self._timer.precise:
            await self._timer.sleep_until(due)
            return
        self._armed = due
        self._timer.arm(due)
        try:
            await self._timer.fired()
        finally:
            self._armed = None
        due = self._heap[0][0] if self._heap else due
        while time.time() < due:
            await trio.lowlevel.checkpoint()

    async def run(self) -> None:
        virtual = wallclock.is_virtual()
        margin = 0.0 if virtual else COARSE_MARGIN_S
        try:
            while True:
                due = self._heap[0][0] if self._heap else float("inf")
                now = wallclock.now()
                if due - now > margin:
                    # Sleep; a frame pushed meanwhile that is due sooner brings the wake-up forward.
                    await self._alarm.sleep(due, lead=margin)
                    continue
                if due > now:
                    await self._sleep_precisely(due)
                self.wakeups += 1
                await self._release_due()
        finally:
            self._timer.close()

    async def _release_due(self) -> None:
        """Everything due by now, in due-time order (a handler may push more; those wait their turn)."""
        heap = self._heap
        while heap and heap[0][0] <= wallclock.now():
            due, _, release = heapq.heappop(heap)
            self.released += 1
            try:
                done = release(due, wallclock.now())
                if done is not None:
                    await done
            except Exception:   # a bug in one handler must not stop every link of the process
                log.exception("a frame's handler failed")


_RELEASER: trio.lowlevel.RunVar = trio.lowlevel.RunVar("orbitmesh_frame_releaser")


def process_releaser() -> FrameReleaser:
    """This ``trio.run``'s releaser, started on first use."""
    return per_run(_RELEASER, FrameReleaser, FrameReleaser.run, "orbitmesh frame releaser")
