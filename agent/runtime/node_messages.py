"""What arrives over the links, dispatched by kind (membership, tasks, results, task
queries, model pieces, job copies, chaos, clock, probes), and the routed messages this node starts:
task queries to another entry node and model pieces.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable

import trio

from agent import entropy, wallclock
from agent.runtime.tasks import SubmitError
from mesh.gossip_msgs import HopAck
from mesh.wire import (ChaosUpdate, ClockUpdate, Control, JobCopy, Message, ModelChunk, ModelFetch, Probe, TaskQuery, TaskRequest,
                       TaskResult, TaskStatus)

if TYPE_CHECKING:
    from agent.runtime.job_copies import JobCopies
    from agent.runtime.membership import MembershipService
    from agent.compute.model_fetch import ModelFetcher
    from agent.links.peers import NodeIdentity, Peers
    from agent.runtime.relay import Relay
    from agent.runtime.tasks import TaskRecord
    from agent.runtime.timekeeper import Timekeeper
    from agent.links.transport import LinkLayer
    from mesh.config import FleetConfig

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs

QUERY_TIMEOUT_S = 5.0           # a task query's answer, beyond any wait asked for
QUERY_ATTEMPTS = 3


class RoutedMessages:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    config: FleetConfig
    peers: Peers
    links: LinkLayer
    relay: Relay
    membership: MembershipService
    fetcher: ModelFetcher
    timekeeper: Timekeeper
    job_copies: JobCopies
    _queries: dict[str, trio.MemorySendChannel]
    _nursery: trio.Nursery | None
    _wake: trio.Event
    find_task: Callable[[str], TaskRecord | None]                   # TaskRecovery
    _on_request: Callable[..., Any]                                 # Execution
    _on_result: Callable[[TaskResult, float, float, str], None]     # Execution
    _on_chaos: Callable[[ChaosUpdate, str], None]                   # FaultsAndProbes

    # -- routed messages ------------------------------------------------------------

    async def _on_message(self, msg: Message, from_node: str, arrived: float, expected: float) -> None:
        if isinstance(msg, Control):
            self.membership.on_control(msg, from_node)
        elif isinstance(msg, TaskRequest):
            if self.relay.received(msg, from_node):
                await self._on_request(msg, arrived, expected, from_node, "forward")
        elif isinstance(msg, TaskResult):
            if self.relay.received(msg, from_node):
                self._on_result(msg, arrived, expected, from_node)
        elif isinstance(msg, TaskQuery):
            if self.relay.received(msg, from_node):
                if msg.entry == self.me.name:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_query, msg)
                else:
                    self.relay.send(msg, msg.entry, from_node)
        elif isinstance(msg, TaskStatus):
            if self.relay.received(msg, from_node):
                if msg.asker == self.me.name:
                    send = self._queries.get(msg.query_id)
                    if send is not None:
                        try:
                            send.send_nowait(msg)
                        except trio.WouldBlock:
                            pass
                else:
                    self.relay.send(msg, msg.asker, from_node)
        elif isinstance(msg, ModelFetch):
            if self.relay.received(msg, from_node):
                if msg.holder == self.me.name:
                    self._send_routed(self.fetcher.serve(msg), msg.requester)
                else:
                    self.relay.send(msg, msg.holder, from_node)
        elif isinstance(msg, ModelChunk):
            if self.relay.received(msg, from_node):
                if msg.requester == self.me.name:
                    self.fetcher.on_chunk(msg)
                else:
                    self.relay.send(msg, msg.requester, from_node)
        elif isinstance(msg, JobCopy):
            if self.relay.received(msg, from_node):
                if msg.receiver == self.me.name:
                    self.job_copies.on_message(msg)
                else:
                    self.relay.send(msg, msg.receiver, from_node)
        elif isinstance(msg, ChaosUpdate):
            self._on_chaos(msg, from_node)
        elif isinstance(msg, ClockUpdate):
            self.timekeeper.on_update(msg, from_node)
        elif isinstance(msg, Probe):
            self.links.links[from_node].stats.probes_received += 1

    async def query_task(self, task_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """A task accepted elsewhere: ask its entry node (named in the id) over the mesh."""
        entry = task_id.rsplit("-", 1)[0] if "-" in task_id else ""
        if entry not in self.peers or entry == self.me.name:
            raise SubmitError(404, f"no task {task_id!r} at {self.me.name}")
        qid = entropy.hex_id(16)
        send, recv = trio.open_memory_channel(1)
        self._queries[qid] = send
        try:
            for attempt in range(QUERY_ATTEMPTS):
                self._send_routed(TaskQuery(qid, self.me.name, entry, task_id, wait_s, self.config.limits.ttl,
                                            wallclock.now() + wait_s + QUERY_TIMEOUT_S, attempt), entry)
                with trio.move_on_after(wait_s + QUERY_TIMEOUT_S):
                    status = await recv.receive()
                    if status.error:
                        raise SubmitError(404, status.error)
                    return json.loads(status.record)
        finally:
            del self._queries[qid]
        raise SubmitError(504, f"{entry}, where task {task_id!r} entered, did not answer {self.me.name} "
                               f"over the mesh ({QUERY_ATTEMPTS} tries)")

    async def _answer_query(self, q: TaskQuery) -> None:
        rec = self.find_task(q.task_id)
        if rec is None:
            self._send_routed(TaskStatus(q.query_id, q.asker, self.me.name, q.task_id, b"",
                                         f"no task {q.task_id!r} at its entry node {self.me.name}",
                                         self.config.limits.ttl, q.deadline, q.attempt), q.asker)
            return
        if q.wait_s > 0:
            with trio.move_on_after(q.wait_s):
                await rec.done.wait()
        self._send_routed(TaskStatus(q.query_id, q.asker, self.me.name, q.task_id,
                                     json.dumps(rec.to_json()).encode(), "", self.config.limits.ttl, q.deadline,
                                     q.attempt), q.asker)

    def _send_routed(self, msg: ModelFetch | ModelChunk | TaskQuery | TaskStatus | JobCopy, dst: str) -> None:
        """Start a model piece (or a request for one) towards ``dst`` over the relay."""
        if dst == self.me.name:
            return
        self.relay.seen(msg)
        problem = self.relay.send(msg, dst)
        if problem:
            log.warning("%s towards %s: %s", type(msg).__name__, dst, problem)
        self._wake.set()

    def _on_hop_ack(self, ack: HopAck, from_node: str) -> None:
        for hop_id in ack.ids:
            self.relay.on_ack(hop_id, from_node)
