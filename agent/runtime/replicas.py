"""A replicated task at its entry: k child tasks, one vote, one answer.

Each replica is an ordinary task (its own id ``PARENT.rI``, journaled and
delivered exactly once, with its deadline and trace), placed on a satellite
of a different plane.  The parent is what the client sees: its outputs are
the agreed answer (``mesh.voting``), its ``replicas`` field lists every
replica's node, status and output digest, the decision, and the nodes that
disagreed or failed, filled in as late answers arrive.  The parent is
journaled with its replicas (``agent/runtime/node_replicas.py``): after the entry
restarts, the vote is taken again on what the replicas recovered.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from agent import wallclock
from agent.runtime.edge_cache import cache_key
from agent.runtime.tasks import FINAL, TaskRecord
from mesh.voting import Vote

GRACE_S = 1.0       # past the deadline, for the replicas' own deadline failures to arrive


def digest(rec: TaskRecord) -> str | None:
    """The outputs' identity, bit for bit (names, dtypes, shapes, bytes)."""
    return cache_key("", rec.outputs) if rec.status == "succeeded" and rec.outputs is not None else None


def replica_view(vote: Vote, children: list[TaskRecord]) -> dict[str, Any]:
    d = vote.decision
    return {
        "agreement": vote.mode, "needed": vote.needed,
        "replicas": [{"task_id": c.task_id, "node": c.executor, "status": c.status,
                      "digest": (digest(c) or "")[:16] or None} for c in children],
        "decision": None if d is None else d.reason,
        "dissenters": vote.dissenters(), "failed": vote.failed(),
    }


async def agree(parent: TaskRecord, children: list[TaskRecord], vote: Vote, finalize: Callable[..., bool]) -> None:
    """Feed the children's answers to the vote as they end; finalize the parent on its decision."""
    send, recv = trio.open_memory_channel[TaskRecord](len(children))

    async def watch(child: TaskRecord) -> None:
        await child.done.wait()
        send.send_nowait(child)

    until = trio.current_time() + max(0.0, parent.deadline - wallclock.now()) + GRACE_S
    async with trio.open_nursery() as nursery:
        for child in children:
            nursery.start_soon(watch, child)
        with trio.move_on_at(until):
            for _ in children:
                child = await recv.receive()
                decided = vote.add(child.executor, child.status == "succeeded", digest(child))
                parent.replicas = replica_view(vote, children)
                if decided is not None and decided.ok:
                    won = next(c for c in children if c.executor == decided.node)
                    finalize(parent, ok=True, when=wallclock.now(), outputs=won.outputs, trace=won.trace,
                             compute_s=won.compute_s)
                elif decided is not None:
                    finalize(parent, ok=False, when=wallclock.now(), error=decided.reason)
        nursery.cancel_scope.cancel()
    if parent.status not in FINAL:
        finalize(parent, ok=False, when=wallclock.now(),
                 error=f"{len(vote.answers)} of {vote.replicas} replicas answered by the deadline; "
                       f"{vote.needed} had to agree")
    parent.replicas = replica_view(vote, children)
