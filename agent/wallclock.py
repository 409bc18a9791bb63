"""The process's wall clock: real by default, virtual for nodes that share a simulated process.

Every part of a node reads wall time here (``now()``), never ``time.time()``:
frames are stamped with it, links release at ``sent + distance / c`` by it,
membership, deadlines and journals count with it.  A process runs on one clock
because all the satellites it hosts share wall time.

``virtual(clock)`` switches the process to ``origin + clock.current_time()``
for a trio ``MockClock`` (tests, the simulator): wall time and trio time then
move together, so a deadline computed from one and slept on with the other
agrees exactly, and virtual time passes only when every task waits.  Readable
from any thread (a float read).

Work that the daemon puts on a thread (onnxruntime, model loading) must not
run in a thread under a virtual clock: with ``autojump_threshold=0`` the clock
jumps as soon as the loop waits for the thread, so deadlines would pass while
it computes.  ``off_loop`` therefore runs such work inline under a virtual
clock (compute takes zero virtual time, as in a simulator's model of it) and
in trio's thread cache otherwise.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, TypeVar

import trio

T = TypeVar("T")

_clock: trio.abc.Clock | None = None
_origin = 0.0


def now() -> float:
    """Wall time in seconds since the Unix epoch: real, or the virtual clock's."""
    clock = _clock
    if clock is None:
        return time.time()
    return _origin + clock.current_time()


def monotonic() -> float:
    """A clock for intervals (cache ages, refresh periods): ``time.monotonic()``, or the virtual clock."""
    clock = _clock
    if clock is None:
        return time.monotonic()
    return clock.current_time()


class JumpClock(trio.abc.Clock):
    """Virtual time for the simulator: whenever the event loop has no task to run, time jumps
    straight to the next deadline, and the tasks due then run in that same turn of the loop.

    trio's ``MockClock(autojump_threshold=0)`` keeps the same time but spends two turns on
    each instant (an idle turn that jumps, then a turn that expires the deadline) and reads
    the real clock inside every ``current_time``.  A starlink-s1 simulation wakes at tens of
    thousands of distinct instants a simulated minute, so those turns were a visible share
    of its CPU.  What it lacks: ``jump`` only forwards (no rate), and
    ``trio.testing.wait_all_tasks_blocked`` wakes only when no deadline is left at all."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # trio asks only when no task is runnable: nothing can happen before ``deadline``.
        if deadline == math.inf:
            return math.inf      # nothing due at all: wait for I/O (a signal), as MockClock does
        if deadline > self._now:
            self._now = deadline
        return 0.0

    def jump(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"virtual time only moves forward, not by {seconds!r} s")
        self._now += seconds


def is_virtual() -> bool:
    return _clock is not None


def to_trio(wall: float) -> float:
    """The trio-clock instant of the wall instant ``wall`` (for ``trio.sleep_until`` / deadlines)."""
    if _clock is not None:
        return wall - _origin
    return trio.current_time() + (wall - time.time())


@contextlib.contextmanager
def virtual(clock: trio.abc.Clock, origin: float | None = None) -> Iterator[float]:
    """Run the process on ``origin + clock.current_time()`` inside the block (one at a time).

    ``origin`` defaults to the real time now, so the virtual wall starts where the
    real one is; yields the origin."""
    global _clock, _origin
    if _clock is not None:
        raise RuntimeError("the process is on a virtual clock already")
    _origin = (time.time() if origin is None else origin) - clock.current_time()
    _clock = clock
    try:
        yield _origin
    finally:
        _clock, _origin = None, 0.0


class Alarm:
    """One task's sleep until a wall-clock due time, brought forward when work due sooner arrives.

    The process's heaps (:mod:`agent.links.release`, :mod:`agent.runtime.periodic`) sleep
    until their earliest item; a push of an earlier one calls :meth:`sooner`.  They wake
    hundreds of times a second in a satellite host, so the sleep is a parked task, not
    ``trio.sleep``: trio ends a timed sleep by raising ``Cancelled`` into the task, and
    creating, raising and catching that exception was a tenth of an idle node's CPU.  Here
    the deadline's abort reschedules the task instead (trio's documented ``Abort.FAILED``
    path); a cancellation from outside still arrives as ``Cancelled``.  ``sooner`` moves the
    sleep's deadline earlier rather than waking the sleeper to sleep again: half of a
    heap's wake-ups were such re-sleeps, one trip through the event loop each."""

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None     # the parked sleeper
        self._scope: trio.CancelScope | None = None      # its deadline
        self._lead = 0.0               # how long before the due time the sleeper wants to wake
        self.until = math.inf          # the due time slept for (-inf: awake)

    def sooner(self, due: float) -> bool:
        """Bring the sleeper's wake-up forward if ``due`` comes before the time it sleeps for;
        whether it will be awake by ``due`` (less the lead it asked for)."""
        if due < self.until:
            if self._task is not None and self._scope is not None:
                self.until = due
                self._scope.deadline = to_trio(due - self._lead)
            else:
                self.until = -math.inf
            return True
        return False

    async def sleep(self, due: float, lead: float = 0.0) -> None:
        """Until ``lead`` seconds before ``due`` (inf: for ever), or before an earlier time that
        :meth:`sooner` names."""
        self.until, self._lead = due, lead
        task = trio.lowlevel.current_task()
        with trio.CancelScope(deadline=to_trio(due - lead)) as scope:
            def abort(raise_cancel: object) -> trio.lowlevel.Abort:
                self._task = self._scope = None
                if scope.cancel_called:          # our own deadline: wake up normally
                    trio.lowlevel.reschedule(task)
                    return trio.lowlevel.Abort.FAILED
                return trio.lowlevel.Abort.SUCCEEDED    # cancelled from outside: Cancelled, as usual

            self._task, self._scope = task, scope
            try:
                await trio.lowlevel.wait_task_rescheduled(abort)
            finally:
                self._task = self._scope = None
                self.until = -math.inf


async def off_loop(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` off the event loop: in a worker thread on the real clock, inline
    (after a checkpoint, taking no virtual time) on a virtual one."""
    if _clock is not None:
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)
