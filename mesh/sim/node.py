"""One simulated satellite: the same Membership and delivery objects an agent drives.

This is what ``agent/runtime/node.py`` does with real time and real links, done
with virtual time: feed messages and time into ``mesh.membership`` and
``mesh.delivery``, send what they return, and forward tasks as
``mesh.forwarding`` decides (the agent's relay asks the same object).  Task
frames here carry only sizes (no tensors) and execute
instantly; everything else is the production code path.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Protocol

from mesh.delivery import (DedupWindow, DeliveryConfig, ExecutionCache, Expired, HopFailed, HopSender, StoreAndForward,
                           TaskFailed, TaskLedger, Transmit)
from mesh.forwarding import Forward, Forwarder, Hold
from mesh.gossip_msgs import HopAck
from mesh.healing import HealingRouter
from mesh.membership import Membership, MembershipConfig
from mesh.sim.network import SimNetwork


class SimHost(Protocol):
    """What a simulated node needs from its driver (``mesh.sim.engine.Simulator``):
    declared here so that the engine imports the node and not the other way round."""

    seed: int
    n: int
    net: SimNetwork
    router: HealingRouter
    membership_config: MembershipConfig
    delivery_config: DeliveryConfig

    def send(self, src: int, dst: int, msg: Any) -> None: ...
    def task_executed(self, now: float, tid: str) -> None: ...
    def task_delivered(self, now: float, tid: str) -> None: ...
    def task_failed(self, now: float, tid: str, reason: str) -> None: ...
    def task_trouble(self, tid: str, reason: str) -> None: ...
    def task_held(self, tid: str) -> None: ...


@dataclass(frozen=True)
class TaskFrame:
    """A routed task request or result as the simulator carries it (sizes only)."""

    kind: str            # "req" | "res"
    task_id: str
    attempt: int
    entry: int
    dst: int
    deadline: float
    ttl: int
    size: int            # payload bytes
    hop_id: str

    @property
    def wire_size(self) -> int:
        return self.size + 48 + len(self.task_id)


class SimNode:
    """Membership + per-hop reliability + store-and-forward + end-to-end retry, for one node."""

    def __init__(self, sim: SimHost, me: int, incarnation: int = 0):
        self.sim = sim
        self.me = me
        net = sim.net
        rng = random.Random(f"{sim.seed}:{me}:{incarnation}")
        self.m = Membership(me, range(sim.n), net.neighbours, sim.membership_config, rng,
                            incarnation=incarnation, link_down_expected=net.link_down_expected)
        dcfg = sim.delivery_config
        self.hops = HopSender(dcfg, lambda to, now: 2.0 * (net.latency(me, to, now) or 0.01))
        self.dedup = DedupWindow(dcfg.dedup_capacity, dcfg.dedup_ttl_s)
        self.store = StoreAndForward(dcfg.store_capacity, dcfg.store_recheck_s)
        self.ledger = TaskLedger(dcfg)
        self.exec = ExecutionCache(dcfg.exec_cache)
        self.fwd = Forwarder(me, sim.router)             # next hop, hop limit, avoided links, hold or drop
        self._view = -1
        self.ttl = 64
        self._tasks: dict[str, tuple[float, int]] = {}   # entry side: task id -> (deadline, size)

    # -- driver interface -----------------------------------------------------------------

    def start(self, now: float) -> None:
        self._send_all(self.m.start(now))

    def take_events(self) -> list[Any]:
        return self.m.take_events()

    def set_state(self, now: float, values: dict[str, Any]) -> None:
        self._send_all(self.m.set_state(now, values))

    def next_deadline(self) -> float:
        t = self.m.next_deadline()
        if self.hops._out:
            t = min(t, self.hops.next_deadline())
        if len(self.store):
            t = min(t, self.store.next_deadline())
        if len(self.ledger):
            t = min(t, self.ledger.next_deadline())
        if self.fwd.avoid:
            t = min(t, self.fwd.next_expiry())
        return t

    def handle(self, now: float, frm: int, msg: Any) -> None:
        if isinstance(msg, TaskFrame):
            self._on_task(now, frm, msg)
        elif isinstance(msg, HopAck):
            for mid in msg.ids:
                self.hops.on_ack(now, mid, frm)
        else:
            self._send_all(self.m.on_message(now, frm, msg))
        self._check_view(now)

    def tick(self, now: float) -> None:
        self._send_all(self.m.tick(now))
        if self.fwd.avoid and self.fwd.expire(now):
            self._view = -1          # an avoided link is back: held frames may have a route
        for x in self.hops.tick(now):
            if isinstance(x, Transmit):
                self.sim.send(self.me, x.to, x.item)
            else:
                self._hop_failed(now, x)
        for e in self.store.expire(now):
            self._expired(now, e)
        for x in self.ledger.tick(now):
            if isinstance(x, TaskFailed):
                self.sim.task_failed(now, x.task_id, x.reason)
            else:
                self._send_request(now, x.task_id, x.dst, x.attempt)
        self._check_view(now, force=self.store.next_deadline() <= now)

    # -- tasks ----------------------------------------------------------------------------

    def submit(self, now: float, task_id: str, dst: int, deadline: float, size: int = 1024) -> None:
        a = self.ledger.submit(now, task_id, dst, deadline)
        self._tasks[task_id] = (deadline, size)
        self._send_request(now, task_id, dst, a.attempt)

    def _send_request(self, now: float, task_id: str, dst: int, attempt: int) -> None:
        deadline, size = self._tasks[task_id]
        f = TaskFrame("req", task_id, attempt, self.me, dst, deadline, self.ttl, size, f"req:{task_id}:{attempt}")
        self.dedup.first(now, f.hop_id)
        self._deliver_or_forward(now, f, None)

    def _down_links(self) -> frozenset[tuple[int, int]]:
        """Links this node knows are down: reported by membership, or cut with an announcement."""
        dl = self.m.down_links()
        announced = self.sim.net.announced
        return dl | frozenset(announced) if announced else dl

    def route(self, now: float, dst: int, came_from: int | None = None) -> int | None:
        return self.fwd.next_hop(now, self.sim.net.orbit_t(now), dst, dead_nodes=self.m.dead_nodes(),
                                 down_links=self._down_links(), came_from=came_from)

    def _on_task(self, now: float, frm: int, f: TaskFrame) -> None:
        self.sim.send(self.me, frm, HopAck((f.hop_id,)))
        if not self.dedup.first(now, f.hop_id):
            return
        self._deliver_or_forward(now, f, frm)

    def _deliver_or_forward(self, now: float, f: TaskFrame, came_from: int | None) -> None:
        if f.dst == self.me:
            if f.kind == "req":
                state, _ = self.exec.begin(f.task_id)
                if state == "running":
                    return
                if state == "new":
                    self.exec.finish(f.task_id, True)
                    self.sim.task_executed(now, f.task_id)
                res = TaskFrame("res", f.task_id, f.attempt, f.entry, f.entry, f.deadline, self.ttl, 256,
                                f"res:{f.task_id}:{f.attempt}")
                self.dedup.first(now, res.hop_id)
                self._deliver_or_forward(now, res, None)
            elif self.ledger.on_result(now, f.task_id):
                self.sim.task_delivered(now, f.task_id)
            return
        d = self.fwd.decide(now, self.sim.net.orbit_t(now), f.dst, f.ttl, f.deadline, dead_nodes=self.m.dead_nodes(),
                            down_links=self._down_links(), came_from=came_from)
        if type(d) is Forward:
            f2 = replace(f, ttl=d.ttl)
            tx = self.hops.send(now, f2.hop_id, d.to, f2, f2.size)
            self.sim.send(self.me, tx.to, f2)
        elif type(d) is Hold:
            e = self.store.hold(now, f.hop_id, f, f.dst, d.until, why=d.why)
            self.sim.task_held(f.task_id)
            if e is not None:
                self._expired(now, e)
        else:
            self.sim.task_trouble(f.task_id, d.reason)
            self.ledger.note(f.task_id, d.reason)   # our own task: its failure says why

    def _hop_failed(self, now: float, x: HopFailed) -> None:
        """Local repair: avoid that link for a while and route the frame again."""
        self.fwd.hop_failed(now, x.to)
        self.sim.task_trouble(x.item.task_id, x.reason)
        self._deliver_or_forward(now, replace(x.item, ttl=x.item.ttl + 1), None)

    def _expired(self, now: float, e: Expired) -> None:
        self.sim.task_trouble(e.item.task_id, e.reason)
        self.ledger.note(e.item.task_id, e.reason)   # our own task: its failure says why

    def _check_view(self, now: float, force: bool = False) -> None:
        v = self.m.view_version
        if v == self._view and not force:
            return
        self._view = v
        if not len(self.store):
            return
        for h in self.store.release_ready(now, lambda dst: self.route(now, dst) is not None):
            self._deliver_or_forward(now, h.item, None)

    # -- output ---------------------------------------------------------------------------

    def _send_all(self, sends: list) -> None:
        send = self.sim.send
        me = self.me
        for s in sends:
            send(me, s.to, s.msg)


class FloodNode:
    """Baseline: naive flooding.  Every new state record is forwarded at once,
    as its own frame, to every neighbour but the one it came from; no
    batching, no retransmission, no budget."""

    def __init__(self, sim: SimHost, me: int, incarnation: int = 0):
        from mesh.dissemination import StateTable
        self.sim = sim
        self.me = me
        self.states = StateTable(me, 4096)
        self._events: list[Any] = []

    def start(self, now: float) -> None:
        pass

    def take_events(self) -> list[Any]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        return math.inf

    def tick(self, now: float) -> None:
        pass

    def set_state(self, now: float, values: dict[str, Any]) -> None:
        from mesh.membership import StateChanged
        rec = self.states.set_own(values)
        self._events.append(StateChanged(self.me, rec.version, now))
        self._flood(now, rec, None)

    def _flood(self, now: float, rec: Any, exclude: int | None) -> None:
        from mesh.gossip_msgs import Gossip
        for n, _ in self.sim.net.neighbours(self.me, now):
            if n != exclude:
                self.sim.send(self.me, n, Gossip((rec,)))

    def handle(self, now: float, frm: int, msg: Any) -> None:
        from mesh.membership import StateChanged
        for rec in msg.updates:
            if rec.node != self.me and self.states.merge(rec):
                self._events.append(StateChanged(rec.node, rec.version, now))
                self._flood(now, rec, frm)
