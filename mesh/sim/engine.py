"""A discrete-event simulator: a heap of events in virtual time driving every node's pure core.

Each node's objects say when they next need time (``next_deadline``); the
simulator keeps one pending tick per node at that time, delivers frames at
their physics arrival times, and applies the fault schedule.  Nothing reads
a clock; every random choice comes from seeded generators (one per node,
one per link direction), and ties in time are broken by insertion order, so
the same seed gives the same run.
"""

from __future__ import annotations

import heapq
import math
import random
from typing import Any, Callable

import msgpack

from mesh.delivery import DeliveryConfig, constellation_delivery
from mesh.gossip_msgs import Ack, Gossip, HopAck, Nack, Ping, SyncReply, SyncRequest, encode, message_from_wire
from mesh.healing import HealingRouter
from mesh.membership import (LinkDown, LinkUp, MembershipConfig, NodeAlive, NodeDead, NodeSuspect, StateChanged,
                             constellation_config)
from mesh.sim import faults as F
from mesh.sim.network import FRAME_OVERHEAD, SimNetwork
from mesh.sim.node import SimNode, TaskFrame
from mesh.topology import Topology

DELIVER, TICK, CALL = 0, 1, 2
_KIND = {Ping: "probe", Ack: "probe", Nack: "probe", Gossip: "gossip", SyncRequest: "sync", SyncReply: "sync",
         HopAck: "task", TaskFrame: "task"}


class Simulator:
    """Every node of a constellation in one process, in virtual time."""

    def __init__(self, topology: Topology, *, n_nodes: int | None = None, seed: int = 0,
                 membership: MembershipConfig | None = None, delivery: DeliveryConfig | None = None,
                 loss: float = 0.0, t0: float = 0.0, step_s: float = 1.0,
                 node_factory: Callable[..., Any] = SimNode, wire_check: bool = False,
                 processing_s: float = 0.0, timer: Callable[[], float] | None = None):
        """``processing_s``: receiver CPU time added to every frame (0: nodes are infinitely fast).
        ``timer``: a clock (e.g. ``time.perf_counter``) to report the run's own wall time
        with; mesh reads no clock itself."""
        self.seed = seed
        self.n = n_nodes if n_nodes is not None else topology.n_sats
        self.net = SimNetwork(topology, t0=t0, step_s=step_s, seed=seed, nodes=self.n)
        if loss:
            self.net.set_loss(loss)
        self.router = HealingRouter(self.net.router.snapshot, first_hops=False)   # shared: one tree serves every node
        self.membership_config = membership or constellation_config()
        self.delivery_config = delivery or constellation_delivery()
        self.node_factory = node_factory
        self.wire_check = wire_check
        self.processing_s = processing_s
        self.timer = timer
        self.now = 0.0
        self._heap: list[tuple] = []
        self._seq = 0
        self._tok = [0] * self.n
        self._tick_at = [math.inf] * self.n
        self.nodes: list[Any] = [None] * self.n
        self.running = [False] * self.n
        self.incarnation_at_start = [0] * self.n
        self.events_processed = 0
        self.frames = 0
        self.bytes = {"probe": 0, "gossip": 0, "sync": 0, "task": 0, "piggyback": 0}
        self.wall_s = 0.0
        # measurements
        self.ever_killed: set[int] = set()
        self.partitioned = False
        self.kills: dict[int, dict[str, Any]] = {}
        self.restarts: dict[int, dict[str, Any]] = {}
        self.convergence: dict[tuple[int, int], dict[str, Any]] = {}
        self._pending_changes: dict[int, dict[str, Any]] = {}
        self.cuts: dict[tuple[int, int], dict[str, Any]] = {}
        self.reroutes: list[dict[str, Any]] = []
        self.false_dead: list[tuple[float, int, int]] = []      # (t, observer, node)
        self.partition_dead = 0
        self.false_suspicions = 0
        self.false_suspects: set[tuple[int, int]] = set()     # (node, incarnation) wrongly suspected
        self.window_start = 0.0
        self.false_link_down = 0
        self.link_down_reports = 0
        self.tasks: dict[str, dict[str, Any]] = {}
        self._task_rng = random.Random(f"{seed}:tasks")

    # -- scheduling ------------------------------------------------------------------------

    def _push(self, t: float, kind: int, a: Any, b: Any = None, c: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b, c))

    def call_at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._push(t, CALL, fn, args)

    def _resched(self, i: int, after_tick: bool = False, d: float | None = None) -> None:
        node = self.nodes[i]
        if node is None:
            return
        if d is None:
            d = node.next_deadline()
        if d == math.inf:
            return
        floor = self.now + 1e-9 if after_tick else self.now
        if d < floor:
            d = floor
        if d < self._tick_at[i]:
            self._tok[i] += 1
            self._tick_at[i] = d
            self._push(d, TICK, i, self._tok[i])

    def send(self, src: int, dst: int, msg: Any) -> None:
        """A node puts ``msg`` on its link to ``dst``."""
        if isinstance(msg, TaskFrame):
            size = msg.wire_size + FRAME_OVERHEAD
            kind = "task"
        else:
            data = encode(msg)
            size = len(data) + FRAME_OVERHEAD
            kind = _KIND[type(msg)]
            if kind == "probe":
                self.bytes["piggyback"] += sum(u.wire_size for u in msg.updates)
            if self.wire_check:
                msg = message_from_wire(msgpack.unpackb(data, raw=False, strict_map_key=True))
        self.bytes[kind] += size
        self.frames += 1
        for at in self.net.transmit(self.now, src, dst, size):
            self._push(at + self.processing_s, DELIVER, dst, src, msg)

    # -- lifecycle -------------------------------------------------------------------------

    def start_all(self, at: float = 0.0, jitter_s: float = 0.0) -> None:
        rng = random.Random(f"{self.seed}:start")
        for i in range(self.n):
            self.call_at(at + (rng.uniform(0, jitter_s) if jitter_s else 0.0), self.start_node, i, 0)

    def start_node(self, i: int, incarnation: int = 0) -> None:
        node = self.node_factory(self, i, incarnation)
        self.nodes[i] = node
        self.running[i] = True
        self.incarnation_at_start[i] = incarnation
        self._tick_at[i] = math.inf
        node.start(self.now)
        self._after(i)

    def kill(self, i: int) -> None:
        self.nodes[i] = None
        self.running[i] = False
        self._tok[i] += 1
        self._tick_at[i] = math.inf
        self.ever_killed.add(i)
        self.kills[i] = {"t": self.now, "first_suspect": None, "first_dead": None, "dead_seen": {}}

    def restart(self, i: int, incarnation: int = 0) -> None:
        self.restarts[i] = {"t": self.now, "alive_seen": {}, "incarnation": None}
        self.start_node(i, incarnation)

    def schedule(self, items: list[Any]) -> None:
        for f in items:
            if isinstance(f, F.Kill):
                self.call_at(f.t, self.kill, f.node)
            elif isinstance(f, F.Restart):
                self.call_at(f.t, self.restart, f.node, f.incarnation)
            elif isinstance(f, F.Cut):
                self.call_at(f.t, self._cut, f.a, f.b, f.announced)
                if f.until is not None:
                    self.call_at(f.until, self._restore, f.a, f.b)
            elif isinstance(f, F.Partition):
                self.call_at(f.t, self._partition, f.group, f.until)
            elif isinstance(f, F.Loss):
                self.call_at(f.t, self.net.set_loss, f.p)
            elif isinstance(f, F.StateChange):
                self.call_at(f.t, self._state_change, f.node, f.values)
            elif isinstance(f, F.CutOnPath):
                self.call_at(f.t, self._cut_on_path, f.src, f.dst, f.until)
            elif isinstance(f, F.Tasks):
                self._schedule_tasks(f, items)
            else:
                raise TypeError(f"not a fault: {f!r}")

    # -- faults ----------------------------------------------------------------------------

    def _cut(self, a: int, b: int, announced: bool) -> None:
        self.net.cut_link(a, b, announced=announced)
        self.cuts[(min(a, b), max(a, b))] = {"t": self.now, "down_seen": {}, "announced": announced}

    def _restore(self, a: int, b: int) -> None:
        self.net.restore_link(a, b)
        c = self.cuts.get((min(a, b), max(a, b)))
        if c is not None:
            c["restored"] = self.now

    def _partition(self, group: frozenset[int], until: float | None) -> None:
        self.partitioned = True
        pairs = []
        for i in group:
            for j, _ in self.net.neighbours(i, self.now):
                if j not in group:
                    pairs.append((i, j))
                    self.net.cut_link(i, j)
        if until is not None:
            self.call_at(until, self._heal, pairs)

    def _heal(self, pairs: list[tuple[int, int]]) -> None:
        for a, b in pairs:
            self.net.restore_link(a, b)
        self.healed_at = self.now

    def _state_change(self, node: int, values: dict[str, Any]) -> None:
        n = self.nodes[node]
        if n is None:
            return
        self._pending_changes[node] = {"t": self.now, "seen": {}}
        n.set_state(self.now, values)
        self._after(node)

    def _cut_on_path(self, src: int, dst: int, until: float | None) -> None:
        already = frozenset((a, b) for a, b in self.net.cut if a < b)
        down = frozenset(i for i in range(self.n) if not self.running[i])
        path = self.router.path(src, dst, self.net.orbit_t(self.now), down_nodes=down, down_links=already)
        if path is None or len(path) < 2:
            return
        k = (len(path) - 1) // 2
        a, b = path[k], path[k + 1]
        self._cut(a, b, False)
        rec = {"t": self.now, "src": src, "dst": dst, "link": (a, b), "path": path, "rerouted": None,
               "detected": None}
        self.reroutes.append(rec)
        self.call_at(self.now + 0.01, self._check_reroute, rec)
        if until is not None:
            self.call_at(until, self._restore, a, b)

    def _check_reroute(self, rec: dict[str, Any]) -> None:
        """Follow each node's own next hop from src: rerouted once the walk avoids the cut link."""
        a, b = rec["link"]
        here, seen = rec["src"], 0
        ok = True
        while here != rec["dst"]:
            node = self.nodes[here]
            nh = None if node is None else node.route(self.now, rec["dst"])
            if nh is None or {here, nh} == {a, b} or seen > 4 * len(rec["path"]):
                ok = False
                break
            here, seen = nh, seen + 1
        if ok:
            rec["rerouted"] = self.now - rec["t"]
            rec["new_path_hops"] = seen
            return
        if self.now - rec["t"] < 120:
            self.call_at(self.now + 0.01, self._check_reroute, rec)

    # -- tasks -------------------------------------------------------------------------------

    def _schedule_tasks(self, f: F.Tasks, items: list[Any]) -> None:
        killed = {x.node for x in items if isinstance(x, F.Kill)}
        pool = list(f.entries) or [i for i in range(self.n) if i not in killed]
        rng = self._task_rng
        for k in range(f.count):
            t = f.t + (f.over_s * k / max(f.count - 1, 1) if f.count > 1 else 0.0)
            entry = rng.choice(pool)
            dst = rng.choice([x for x in pool if x != entry]) if len(pool) > 1 else entry
            tid = f"t{k:05d}-{entry}-{dst}"
            self.call_at(t, self._submit, tid, entry, dst, f.deadline_s, f.size)

    def _submit(self, tid: str, entry: int, dst: int, deadline_s: float, size: int) -> None:
        node = self.nodes[entry]
        self.tasks[tid] = {"t": self.now, "entry": entry, "dst": dst, "state": "in_flight", "reason": "",
                           "trouble": "", "executions": 0, "held": 0}
        if node is None:
            self.tasks[tid].update(state="failed", reason="entry node is down")
            return
        node.submit(self.now, tid, dst, self.now + deadline_s, size)
        self._after(entry)

    def task_executed(self, now: float, tid: str) -> None:
        if tid in self.tasks:
            self.tasks[tid]["executions"] += 1

    def task_delivered(self, now: float, tid: str) -> None:
        rec = self.tasks.get(tid)
        if rec is not None and rec["state"] == "in_flight":
            rec.update(state="delivered", latency=now - rec["t"])

    def task_failed(self, now: float, tid: str, reason: str) -> None:
        rec = self.tasks.get(tid)
        if rec is not None and rec["state"] == "in_flight":
            rec.update(state="failed", reason=reason)

    def task_trouble(self, tid: str, reason: str) -> None:
        rec = self.tasks.get(tid)
        if rec is not None:
            rec["trouble"] = reason

    def task_held(self, tid: str) -> None:
        rec = self.tasks.get(tid)
        if rec is not None:
            rec["held"] += 1

    # -- events from nodes ---------------------------------------------------------------------

    def _after(self, i: int, after_tick: bool = False) -> None:
        node = self.nodes[i]
        if node is None:
            return
        evs = node.take_events()
        if evs:
            self._observe(i, evs)
        self._resched(i, after_tick)

    def _observe(self, obs: int, evs: list[Any]) -> None:
        now = self.now
        for ev in evs:
            typ = type(ev)
            if typ is StateChanged:
                pend = self._pending_changes.get(ev.node)
                if pend is not None:
                    if obs == ev.node:
                        self.convergence[(ev.node, ev.version)] = pend
                        del self._pending_changes[ev.node]
                        pend["seen"][obs] = now
                    continue
                rec = self.convergence.get((ev.node, ev.version))
                if rec is not None and obs not in rec["seen"]:
                    rec["seen"][obs] = now
            elif typ is NodeDead:
                k = self.kills.get(ev.node)
                if k is not None and self.nodes[ev.node] is None:
                    if k["first_dead"] is None:
                        k["first_dead"] = now
                    k["dead_seen"].setdefault(obs, now)
                elif ev.node not in self.ever_killed:
                    if self.partitioned:
                        self.partition_dead += 1
                    else:
                        self.false_dead.append((now, obs, ev.node))
            elif typ is NodeSuspect:
                k = self.kills.get(ev.node)
                if k is not None and self.nodes[ev.node] is None:
                    if k["first_suspect"] is None:
                        k["first_suspect"] = now
                elif ev.node not in self.ever_killed and not self.partitioned:
                    self.false_suspicions += 1
                    self.false_suspects.add((ev.node, ev.incarnation))
            elif typ is NodeAlive:
                r = self.restarts.get(ev.node)
                if r is not None and self.running[ev.node]:
                    r["alive_seen"].setdefault(obs, now)
                    r["incarnation"] = max(r["incarnation"] or 0, ev.incarnation)
            elif typ is LinkDown:
                if ev.by == obs:
                    self.link_down_reports += 1
                    if ((ev.a, ev.b) not in self.net.cut and not self.partitioned
                            and ev.a not in self.ever_killed and ev.b not in self.ever_killed):
                        self.false_link_down += 1
                c = self.cuts.get((ev.a, ev.b))
                if c is not None:
                    c["down_seen"].setdefault(obs, now)
            elif typ is LinkUp:
                pass

    # -- running -------------------------------------------------------------------------------

    def run(self, until: float) -> None:
        """Process every event up to virtual time ``until``."""
        heap = self._heap
        nodes = self.nodes
        pop = heapq.heappop
        t_wall = self.timer() if self.timer else 0.0
        n = 0
        while heap and heap[0][0] <= until:
            t, _, kind, a, b, c = pop(heap)
            self.now = t
            n += 1
            if kind == DELIVER:
                node = nodes[a]
                if node is None:
                    continue
                node.handle(t, b, c)
                self._after(a)
            elif kind == TICK:
                if b != self._tok[a]:
                    continue
                node = nodes[a]
                if node is None:
                    continue
                self._tick_at[a] = math.inf
                d = node.next_deadline()
                if d > t:   # the work it was due for went away (an ack came)
                    self._resched(a, d=d)
                    continue
                node.tick(t)
                self._after(a, after_tick=True)
            else:
                a(*b)
        self.now = until
        self.events_processed += n
        if self.timer:
            self.wall_s += self.timer() - t_wall

    def reset_counters(self) -> None:
        """Start the byte-counting window now (after start-up)."""
        self.bytes = dict.fromkeys(self.bytes, 0)
        self.frames = 0
        self.window_start = self.now

    # -- views for tests -------------------------------------------------------------------------

    def live(self) -> list[int]:
        return [i for i in range(self.n) if self.running[i]]

    def status_everywhere(self, node: int) -> dict[str, int]:
        """How many live observers hold ``node`` as alive / suspect / dead."""
        out = {"alive": 0, "suspect": 0, "dead": 0}
        for i in self.live():
            if i != node:
                out[self.nodes[i].m.status(node)] += 1
        return out
