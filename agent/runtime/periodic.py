"""One timer heap per process for the nodes' periodic chores and one-shot timers.

Every node has chores that run on a fixed period: re-wire ground links as
satellites rise and set (0.5 s), once a second step the battery, look whether
its state is worth gossiping and expire chaos faults (one chore), re-send the
clock (10 s).  As one trio task each, they cost a timer, a cancel scope and a
``Cancelled`` per wake-up and node: ~5 wake-ups per node per second, which a
process of 66 satellites (or a simulation of 1,584) pays 330 (or 7,900) times a
second.  Here the process keeps one heap of chores and one task that sleeps
until the earliest is due, then runs every chore due within ``COALESCE_S``.

Chores are plain functions, run on this task: they must not block.  Each
starts at a phase its caller picks (a node picks a random one, so a
thousand nodes' chores do not all land in one instant), then keeps its
period; a chore that fell more than a period behind (a stalled loop) skips
ahead instead of running the missed ones back to back.  A long batch
yields to the event loop every ``YIELD_AFTER_S`` of work, so that a frame
due meanwhile is not held back by other nodes' chores; under a virtual
clock it yields every ``YIELD_EVERY_CHORES`` chores instead, because a
yield timed by the CPU would make a seeded simulation's schedule depend on
the machine's load.  A chore that raises
is logged and keeps its schedule.

``spread(period, fn)`` is ``every`` for a chore that any phase suits (a node's battery step,
its look at the sky): it joins one of ``ROUNDS_PER_PERIOD`` rounds of that period, the least
full, and each round is one heap entry that runs its chores one after another.  A thousand
nodes' chores then cost a few heap operations a period, not one pop and push each (at
starlink-s1 those were a tenth of a simulation), and are still spread over the period.

``at(due, fn)`` puts a one-shot timer on the same heap: a node's protocol
deadlines (membership's next probe or suspicion timeout) then cost a
call on this task when due, not a task of their own that sleeps in a cancel
scope and is woken by a ``Cancelled``.  One-shots are not coalesced: they
run when due, not early.  Per ``trio.run`` (a ``RunVar``), started on
first use as a system task, as :mod:`agent.links.release` is.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import Callable

import trio

from agent import wallclock
from agent.per_run import per_run

log = logging.getLogger(__name__)

COALESCE_S = 0.005      # chores due this soon run with the one due now (one wake-up, not several)
YIELD_AFTER_S = 0.001   # of chores' CPU before the batch lets the loop run other tasks
YIELD_EVERY_CHORES = 16  # the same, counted in chores, where the clock is virtual (deterministic)
ROUNDS_PER_PERIOD = 8    # ``spread`` chores of one period share this many heap entries, spread over it


class Chore:
    """A registered periodic function (``period_s`` None: a one-shot timer); ``cancel()`` it when
    its node stops."""

    __slots__ = ("fn", "period_s", "due", "cancelled", "runs", "errors", "round")

    def __init__(self, fn: Callable[[], object], period_s: float | None, due: float):
        self.fn, self.period_s, self.due = fn, period_s, due
        self.cancelled = False
        self.runs = 0
        self.errors = 0
        self.round: _Round | None = None    # the round it runs in (``spread``), else its own heap entry

    def cancel(self) -> None:
        self.cancelled = True


class _Round:
    """``spread`` chores of one period that run together: one heap entry for all of them."""

    __slots__ = ("period_s", "due", "chores", "cancelled")

    def __init__(self, period_s: float, due: float):
        self.period_s, self.due = period_s, due
        self.chores: list[Chore] = []
        self.cancelled = False          # (a heap entry's flag; a round leaves the heap once empty)


class Periodic:
    """The process's chore heap; ``every`` from any task of the run, ``run`` is its one task."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Chore | _Round]] = []
        self._rounds: dict[float, list[_Round]] = {}     # period -> its rounds (``spread``)
        self._seq = itertools.count()
        self._alarm = wallclock.Alarm()
        self.wakeups = 0

    def __len__(self) -> int:
        return sum(sum(not c.cancelled for c in item.chores) if isinstance(item, _Round) else not item.cancelled
                   for _, _, item in self._heap)

    def every(self, period_s: float, fn: Callable[[], object], *, first_in: float | None = None) -> Chore:
        """Run ``fn()`` every ``period_s``, the first time ``first_in`` from now (default: one period)."""
        if not period_s > 0:
            raise ValueError(f"a chore's period must be > 0 s, not {period_s!r}")
        chore = Chore(fn, period_s, wallclock.now() + (period_s if first_in is None else max(0.0, first_in)))
        self._push(chore)
        return chore

    def spread(self, period_s: float, fn: Callable[[], object]) -> Chore:
        """Run ``fn()`` every ``period_s`` at a phase this heap picks: in the least full of the
        period's rounds, first within a period from now."""
        if not period_s > 0:
            raise ValueError(f"a chore's period must be > 0 s, not {period_s!r}")
        rounds = self._rounds.get(period_s)
        if rounds is None:
            now = wallclock.now()
            rounds = self._rounds[period_s] = [_Round(period_s, now + period_s * (k + 1) / ROUNDS_PER_PERIOD)
                                               for k in range(ROUNDS_PER_PERIOD)]
        rnd = min(rounds, key=lambda r: len(r.chores))
        if not rnd.chores:        # out of the heap since it emptied: its next turn at its phase
            now = wallclock.now()
            rnd.due = now + ((rnd.due - now) % period_s or period_s)
            self._push(rnd)
        chore = Chore(fn, period_s, rnd.due)
        chore.round = rnd
        rnd.chores.append(chore)
        return chore

    def at(self, due: float, fn: Callable[[], object]) -> Chore:
        """Run ``fn()`` once at wall time ``due`` (at once if it has passed), unless cancelled first."""
        chore = Chore(fn, None, due)
        self._push(chore)
        return chore

    def _push(self, chore: Chore | _Round) -> None:
        heapq.heappush(self._heap, (chore.due, next(self._seq), chore))
        self._alarm.sooner(chore.due)

    async def run(self) -> None:
        while True:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            due = self._heap[0][0] if self._heap else float("inf")
            if due > wallclock.now():
                await self._alarm.sleep(due)
                continue
            self.wakeups += 1
            await self._run_due()

    async def _run_due(self) -> None:
        now = wallclock.now()
        batch: list[Chore] = []
        rounds: list[_Round] = []
        heap = self._heap
        while heap and (heap[0][0] <= now or (heap[0][0] <= now + COALESCE_S and heap[0][2].period_s is not None)):
            _, _, item = heapq.heappop(heap)
            if isinstance(item, _Round):
                item.chores = [c for c in item.chores if not c.cancelled]
                if item.chores:
                    batch += item.chores
                    rounds.append(item)
            elif not item.cancelled:
                batch.append(item)
        for rnd in rounds:       # next period's turn, before the chores run (one may join a round)
            rnd.due += rnd.period_s
            if rnd.due <= now:   # fell a period or more behind: skip ahead, as a chore would
                rnd.due = now + rnd.period_s
            self._push(rnd)
        virtual = wallclock.is_virtual()
        worked_since = time.perf_counter()
        for ran, chore in enumerate(batch, 1):
            if chore.cancelled:        # an earlier chore of the batch stopped it
                continue
            try:
                chore.fn()
            except Exception:          # one node's bug must not stop every node's chores
                chore.errors += 1
                log.exception("periodic chore %s failed", getattr(chore.fn, "__qualname__", chore.fn))
            chore.runs += 1
            if chore.period_s is None:
                chore.cancelled = True     # done: a one-shot runs once
            elif chore.round is not None:
                chore.due = chore.round.due
            else:
                chore.due += chore.period_s
                if chore.due <= now:       # fell a period or more behind: skip ahead, do not catch up
                    chore.due = now + chore.period_s
                self._push(chore)
            if virtual:
                if ran % YIELD_EVERY_CHORES == 0:
                    await trio.lowlevel.checkpoint()
            elif time.perf_counter() - worked_since > YIELD_AFTER_S:
                await trio.lowlevel.checkpoint()
                worked_since = time.perf_counter()


_PERIODIC: trio.lowlevel.RunVar = trio.lowlevel.RunVar("orbitmesh_periodic")


def process_periodic() -> Periodic:
    """This ``trio.run``'s chore heap, started on first use."""
    return per_run(_PERIODIC, Periodic, Periodic.run, "orbitmesh periodic chores")
