"""A v2 request run at its entry runs on the request's own task (``Node.submit(wait=True)``):
the task is over when submit returns, the run is not cut by the caller's cancellation, and
it ends with the node.  In process, no sockets (as tests/test_recovery.py)."""

import time

import numpy as np
import trio

from agent.ops.fleet import FleetSpec, fleet_config
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.peers import PeerEntry, Peers

X = {"input": np.ones((1, 64), np.float32)}


class _Host:
    def __init__(self, peer_id: str):
        self.peer_id = peer_id

    def listen_multiaddrs(self) -> list[str]:
        return []


def _node(models_dir) -> Node:
    cfg = fleet_config(FleetSpec(n=4)).with_start(time.time())
    entries = [PeerEntry(f"sat-{i}", i, f"peer-{i}", f"/ip4/127.0.0.1/tcp/{20000 + i}/p2p/peer-{i}",
                         f"http://127.0.0.1:{30000 + i}") for i in range(cfg.size)]
    return Node("sat-0", cfg, Peers(entries), _Host("peer-0"), ModelStore(models_dir))


async def test_the_task_has_ended_when_submit_returns_and_the_callers_cancellation_does_not_cut_it(models_dir):
    node = _node(models_dir)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await nursery.start(node.executor.serve)
            rec, new = await node.submit("digits", X, "sat-0", 10.0, journaled=False, wait=True)
            assert new and rec.done.is_set() and rec.status == "succeeded" and rec.outputs is not None
            assert [h.event for h in rec.trace] == ["execute"] and rec.breakdown()["compute_ms"] > 0
            # the same task by the usual way, for comparison: started, not yet run
            other, _ = await node.submit("digits", X, "sat-0", 10.0, journaled=False)
            assert other.status in ("accepted", "running")
            await other.done.wait()
            assert set(other.outputs) == set(rec.outputs)
            assert all(np.array_equal(other.outputs[k], rec.outputs[k]) for k in rec.outputs)
            # a caller cancelled while its task runs: the task still runs to its end
            with trio.CancelScope() as scope:
                scope.cancel()
                late, _ = await node.submit("digits", X, "sat-0", 10.0, journaled=False, wait=True)
            assert late.status == "succeeded" and not node._inline_runs and not node._requests
            nursery.cancel_scope.cancel()


async def test_a_run_on_a_callers_task_ends_when_the_node_stops(models_dir):
    node = _node(models_dir)
    seen = []

    async def caller():
        rec, _ = await node.submit("digits", X, "sat-0", 10.0, journaled=False, wait=True)
        seen.append(rec)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(node._end_inline_runs)
            nursery.start_soon(caller)          # no executor serves: its run waits ...
            while not node._inline_runs:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()       # ... until the node stops
    assert not node._inline_runs and seen and seen[0].status != "succeeded"
