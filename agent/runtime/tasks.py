"""Tasks a node accepted: their state, result and hop-by-hop trace, and a deadline timer for each.

Bounded: finished tasks beyond ``capacity`` are forgotten oldest first.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from agent.compute.tensors import to_json
from mesh.wire import Hop

PENDING = ("accepted", "forwarding", "running")


class SubmitError(Exception):
    """A task the node refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


FINAL = ("succeeded", "failed")


@dataclass
class TaskRecord:
    task_id: str
    model: str
    entry: str
    executor: str
    created: float
    status: str = "accepted"
    finished: float | None = None
    outputs: dict[str, np.ndarray] | None = None
    error: str = ""
    trace: tuple[Hop, ...] = ()
    compute_s: float = 0.0
    placement: str = ""           # why this executor (placement's reason, or the client's choice)
    journaled: bool = True        # recorded in the journal (see Node.submit)
    deadline: float = math.inf    # wall time by which it ends, one way or the other (DeadlineTimers)
    replicas: dict[str, Any] | None = None   # a replicated task's vote (agent/runtime/replicas.py)
    done: trio.Event = field(default_factory=trio.Event, repr=False)

    def finish(self, *, ok: bool, when: float, outputs: dict[str, np.ndarray] | None = None,
               error: str = "", trace: tuple[Hop, ...] = (), compute_s: float = 0.0) -> bool:
        """Move to a final state once; later calls (a late result after a timeout) are ignored."""
        if self.status in FINAL:
            return False
        self.status = "succeeded" if ok else "failed"
        self.finished, self.outputs, self.error = when, outputs, error
        self.trace = trace or self.trace
        self.compute_s = compute_s
        self.done.set()
        return True

    def breakdown(self) -> dict[str, float] | None:
        if self.finished is None:
            return None
        total = self.finished - self.created
        physics = sum(h.link_expected_s for h in self.trace)
        links_measured = sum(cur.arrived - prev.departed for prev, cur in zip(self.trace, self.trace[1:]))
        return {
            "total_ms": total * 1e3,
            "physics_ms": physics * 1e3,
            "links_measured_ms": links_measured * 1e3,
            "compute_ms": self.compute_s * 1e3,
            "overhead_ms": (total - physics - self.compute_s) * 1e3,
            "hops": max(0, sum(1 for h in self.trace if h.link_expected_s > 0)),
        }

    def to_json(self) -> dict[str, Any]:
        hops = []
        prev = None
        for h in self.trace:
            hops.append({
                "node": h.node, "event": h.event, "arrived": h.arrived, "departed": h.departed,
                "link_expected_ms": h.link_expected_s * 1e3 if prev else None,
                "link_measured_ms": (h.arrived - prev.departed) * 1e3 if prev else None,
                "dwell_ms": (h.departed - h.arrived) * 1e3, "detail": h.detail,
            })
            prev = h
        return {
            "task_id": self.task_id, "model": self.model, "entry": self.entry, "executor": self.executor,
            "placement": self.placement,
            "status": self.status, "created": self.created, "finished": self.finished,
            "error": self.error or None,
            "outputs": {k: to_json(v) for k, v in self.outputs.items()} if self.outputs is not None else None,
            "trace": hops, "latency": self.breakdown(),
            **({"replicas": self.replicas} if self.replicas is not None else {}),
        }


class TaskTable:
    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()

    def add(self, rec: TaskRecord) -> None:
        self._tasks[rec.task_id] = rec
        while len(self._tasks) > self.capacity:
            oldest = next((k for k, r in self._tasks.items() if r.status in FINAL), None)
            if oldest is None:
                break
            del self._tasks[oldest]

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def recent(self, limit: int) -> list[TaskRecord]:
        """The newest ``limit`` records, newest first (the console's task feed)."""
        out: list[TaskRecord] = []
        for rec in reversed(self._tasks.values()):
            if len(out) >= limit:
                break
            out.append(rec)
        return out

    def pending(self) -> int:
        return sum(1 for r in self._tasks.values() if r.status in PENDING)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._tasks.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


class DeadlineTimers:
    """One timer per accepted task, kept apart from delivery's own bookkeeping.

    The ledger (``mesh.delivery.TaskLedger``) fails a task at its deadline
    while it tracks it; this is the backstop that makes "every task ends by
    its deadline" not depend on that: whatever path a task took (recovered
    from the journal, re-sent, held for a paused target, its ledger entry
    lost to a bug), :meth:`due` names every task still pending ``grace_s``
    after its deadline, and the node fails it with the reason.
    """

    def __init__(self, grace_s: float = 1.0):
        self.grace_s = grace_s
        self._heap: list[tuple[float, str]] = []
        self.fired = 0                       # tasks this backstop had to end (the ledger had not)

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, rec: TaskRecord) -> bool:
        """Start ``rec``'s timer; True when it is now the earliest (a sleeping timer must wake sooner)."""
        if not math.isfinite(rec.deadline):
            return False
        at = rec.deadline + self.grace_s
        earliest = at < self.next_at()
        heapq.heappush(self._heap, (at, rec.task_id))
        return earliest

    def next_at(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def due(self, now: float, table: TaskTable) -> list[TaskRecord]:
        """Records still pending past their deadline (+ grace); their timers are spent."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, task_id = heapq.heappop(self._heap)
            rec = table.get(task_id)
            if rec is not None and rec.status in PENDING:
                out.append(rec)
        self.fired += len(out)
        if len(self._heap) > 4 * table.capacity:      # timers of long-finished tasks: drop them
            self._heap = [(t, i) for t, i in self._heap
                          if (r := table.get(i)) is not None and r.status in PENDING]
            heapq.heapify(self._heap)
        return out
