"""Drives the pure ``mesh.membership`` state machine over the agent's links, in wall time.

``mesh.membership`` decides (who to probe, who is dead, what to gossip);
this module only feeds it the clock and the frames that arrive, and puts
what it returns on the emulated links as ``Control`` frames.  Node ids are
the node indices of the peers file; the protocol's clock is wall time, the
same on every agent, so everyone's physics (``neighbours_fn``) agrees.
"""

from __future__ import annotations

import collections
import math
import logging
from typing import Any, Callable

import trio

from agent import entropy, wallclock
from agent.runtime.loopwatch import LoopLag, process_lag
from agent.runtime.periodic import Chore, Periodic, process_periodic
from agent.links.peers import Peers
from agent.links.transport import LinkLayer
from mesh.dissemination import RecordPool
from mesh.gossip_msgs import HopAck
from mesh.membership import (LinkDown, LinkUp, Membership, MembershipConfig, NodeAlive, NodeDead, NodeSuspect,
                             SelfRefuted, Send, StateChanged, fleet_config)
from mesh.topology import Snapshot
from mesh.trust import Trust
from mesh.wire import Control

log = logging.getLogger(__name__)

RECENT_EVENTS = 256
# The process's one pool of received membership records: the satellites of a host (and the nodes
# of an in-process fleet) hold one copy of each member's state and signed liveness record, not
# one each (O(K·n) per process otherwise; ~1.7 KB a state record; bench/sat_memory.py).
RECORDS = RecordPool()
# The knobs mesh.membership_config.scaled_config sets from the fleet's size, shown in the view.
RATE_KNOBS = ("probe_interval_s", "gossip_interval_s", "state_gossip_s", "drift_gossip_s", "eager_gap_s",
              "sync_interval_s", "suspicion_mult", "dead_probe_every", "join_grace_s")


class MembershipService:
    """One agent's membership: the state machine, its clock, and its frames."""

    def __init__(self, me: str, peers: Peers, links: LinkLayer, snapshot_at: Callable[[float], Snapshot],
                 link_down_expected: Callable[[int, int, float], bool], *, incarnation: int = 0,
                 config: MembershipConfig | None = None, on_hop_ack: Callable[[HopAck, str], None] | None = None,
                 on_view_change: Callable[[], None] | None = None, trust: Trust | None = None,
                 gate: Any = None, state_news: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None):
        """``gate``: a paused satellite's (``agent.links.hybrid_host.Gate``): while it is closed the
        protocol stops like a process under SIGSTOP, and on resume holds its verdicts as after
        any stall, instead of judging neighbours it could not hear.  ``state_news``: whether a
        member's new state matters to placement (``mesh.membership.Membership``'s)."""
        self.peers = peers
        self.gate = gate
        self.links = links
        self.snapshot_at = snapshot_at
        self.on_hop_ack = on_hop_ack
        self.on_view_change = on_view_change
        self.names = peers.name_of                   # shared, read only
        self.me = peers[me].index
        self.m = Membership(self.me, sorted(self.names), self._neighbours, config or fleet_config(),
                            entropy.rng(f"membership:{me}:{incarnation}"), incarnation=incarnation, link_down_expected=link_down_expected,
                            reports_links=True, trust=trust, records=RECORDS, state_news=state_news)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self.counts = collections.Counter()
        # Every suspect / dead verdict this view has held, by subject, for the
        # whole run (the event ring above forgets): what tests and operators
        # check for false deaths.
        self.verdicts: dict[str, collections.Counter[str]] = {"suspect": collections.Counter(),
                                                              "dead": collections.Counter()}
        self.state_at: dict[int, tuple[int, float]] = {}   # node -> (state version, wall time it arrived here)
        self._view = self.m.view_version
        self.on_event: Callable[[Any], None] | None = None   # every protocol event as it happens (the simulator)
        self._heap: Periodic | None = None      # the process's timer heap while run() runs
        self._timer: Chore | None = None        # the one-shot due at the protocol's next deadline
        self._stalled = trio.Event()            # a deadline came while the satellite was paused
        self.lag = LoopLag()       # the process's sampler once run() starts (agent/runtime/loopwatch.py)
        self._adj_key: float | None = None
        self._adj: dict[int, list[tuple[int, float]]] = {}

    # -- physics as the protocol sees it -----------------------------------------------------

    def _neighbours(self, node: int, now: float) -> list[tuple[int, float]]:
        """Links physics has up at ``now`` for any node, limited to the fleet's nodes."""
        snap = self.snapshot_at(now)
        if snap.t != self._adj_key:
            self._adj_key, self._adj = snap.t, {}
        got = self._adj.get(node)
        if got is None:
            got = self._adj[node] = [(j, lat) for j, lat in snap.neighbours(node) if j in self.names]
        return got

    # -- I/O ----------------------------------------------------------------------------------

    def _send_all(self, sends: list[Send]) -> None:
        for s in sends:
            name = self.names.get(s.to)
            if name is None or name not in self.links.links:
                self.counts["unsendable"] += 1   # physics has the link, the agent has not opened it yet
                continue
            self.links.send(name, Control(s.msg))
        self._after()

    def send_to(self, peer: str, msg: Any) -> bool:
        """Put one control message (e.g. a hop ack) on the link to ``peer``."""
        if peer not in self.links.links:
            return False
        return self.links.send(peer, Control(msg))

    def send_hop_ack(self, peer: str, hop_id: str) -> bool:
        return self.send_to(peer, HopAck((hop_id,)))

    def on_control(self, msg: Control, from_node: str) -> None:
        inner = msg.msg
        if isinstance(inner, HopAck):
            if self.on_hop_ack is not None:
                self.on_hop_ack(inner, from_node)
            return
        idx = self.peers[from_node].index if from_node in self.peers else None
        if idx is None:
            return
        self._send_all(self.m.on_message(wallclock.now(), idx, inner))
        self._rearm()

    def set_state(self, values: dict[str, Any]) -> None:
        self._send_all(self.m.set_state(wallclock.now(), values))
        self._rearm()

    def _after(self) -> None:
        for ev in self.m.take_events():
            self._record(ev)
        if self.m.view_version != self._view:
            self._view = self.m.view_version
            if self.on_view_change is not None:
                self.on_view_change()

    def _record(self, ev: Any) -> None:
        if self.on_event is not None:
            self.on_event(ev)
        name = self.names.get
        if isinstance(ev, StateChanged):
            self.counts["state_changes"] += 1
            self.state_at[ev.node] = (ev.version, ev.t)
            return
        row: dict[str, Any] = {"event": type(ev).__name__, "t": ev.t}
        if isinstance(ev, (NodeAlive, NodeSuspect, NodeDead)):
            row["node"] = name(ev.node, str(ev.node))
            row["incarnation"] = ev.incarnation
            if isinstance(ev, (NodeSuspect, NodeDead)):
                row["by"] = name(ev.by, str(ev.by))
                self.verdicts["dead" if isinstance(ev, NodeDead) else "suspect"][row["node"]] += 1
        elif isinstance(ev, (LinkDown, LinkUp)):
            row["link"] = [name(ev.a, str(ev.a)), name(ev.b, str(ev.b))]
            row["by"] = name(ev.by, str(ev.by))
        elif isinstance(ev, SelfRefuted):
            row["incarnation"] = ev.incarnation
        self.counts[row["event"]] += 1
        self.events.append(row)
        level = logging.WARNING if isinstance(ev, (NodeDead, LinkDown)) else logging.INFO
        log.log(level, "%s: membership %s", self.names[self.me], row)

    async def run(self) -> None:
        if wallclock.is_virtual():
            # Virtual time passes only when every task waits: a timer can never run late, so the
            # 10 Hz lag sampler would measure 0 for ever (a fifth of a simulated node's wake-ups).
            await self._run_protocol()
            return
        self.lag = process_lag()
        stop_listening = self.lag.listen(self._on_lag)
        try:
            await self._run_protocol()
        finally:
            stop_listening()

    def link_opened(self, peer: str) -> None:
        """The transport connected ``peer``: it may be starting (see Membership.link_opened)."""
        if peer in self.peers:
            self.m.link_opened(wallclock.now(), self.peers[peer].index)
            self._rearm()

    def _on_lag(self, lag_s: float) -> None:
        self.m.note_lag(wallclock.now(), lag_s)
        self._rearm()

    async def _run_protocol(self) -> None:
        """Start the protocol, then let its deadlines run as one-shot timers on the process's heap
        (agent/runtime/periodic.py): an idle node's protocol costs a call when a deadline is due, not a
        task woken through a cancel scope.  This task only waits out a pause of the satellite."""
        self._heap = process_periodic()
        self._send_all(self.m.start(wallclock.now()))
        self._rearm()
        try:
            while True:
                await self._stalled.wait()
                self._stalled = trio.Event()
                stopped = wallclock.now()
                await self.gate.wait()
                self.m.note_lag(wallclock.now(), wallclock.now() - stopped)
                self._tick()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._heap = None

    def _rearm(self) -> None:
        """Keep the timer at the protocol's next deadline, which every input may move (an ack that
        ends a probe moves it later: a timer left early would tick for nothing).  The deadline is
        exact (mesh/sim drives the same machine by it alone), so there is no periodic safety tick."""
        if self._heap is None:
            return
        due = self.m.next_deadline()
        timer = self._timer
        if timer is not None and not timer.cancelled:
            if timer.due == due:
                return
            timer.cancel()
        self._timer = self._heap.at(due, self._on_timer) if due < math.inf else None

    def _on_timer(self) -> None:
        due = self._timer.due if self._timer is not None else wallclock.now()
        self._timer = None
        if self.gate is not None and self.gate.paused:
            self._stalled.set()          # the task above waits for the gate, then ticks
            return
        # How late?  A stalled loop must not judge silence before it has read what arrived meanwhile.
        late = wallclock.now() - due
        if late > 0:
            self.m.note_lag(wallclock.now(), late)
        self._tick()

    def _tick(self) -> None:
        try:
            self._send_all(self.m.tick(wallclock.now()))
        finally:
            self._rearm()           # even after a bug (logged by the heap), the protocol keeps its clock

    # -- views ----------------------------------------------------------------------------------

    def dead_nodes(self) -> frozenset[int]:
        return self.m.dead_nodes()

    def suspects(self) -> frozenset[int]:
        return self.m.suspects()

    def down_links(self) -> frozenset[tuple[int, int]]:
        return self.m.down_links()

    def state_of(self, name: str) -> dict[str, Any] | None:
        return self.m.node_state(self.peers[name].index)

    def alive_count(self) -> int:
        return sum(1 for n in self.names if self.m.status(n) == "alive")

    def describe(self) -> dict[str, Any]:
        members = []
        for i in sorted(self.names):
            version, at = self.state_at.get(i, (0, None))
            members.append({"node": self.names[i], "status": self.m.status(i),
                            "incarnation": self.m.incarnation_of(i), "state": self.m.node_state(i),
                            "state_version": version, "state_received_at": at})
        return {
            "node": self.names[self.me], "incarnation": self.m.incarnation, "view_version": self.m.view_version,
            "alive": self.alive_count(), "members": members,
            "down_links": sorted([self.names.get(a, str(a)), self.names.get(b, str(b))]
                                 for a, b in self.m.down_links()),
            "rates": {k: getattr(self.m.config, k) for k in RATE_KNOBS},
            "local_health": self.m.lhm, "loop_lag": self.lag.describe(),
            "holding_verdicts": self.m.holding_verdicts(wallclock.now()), "protocol": dict(self.m.stats), "counts": dict(self.counts),
            "verdicts": {kind: dict(c) for kind, c in self.verdicts.items()},
            "trust": dict(self.m.trust.stats) if self.m.trust is not None else None,
            "events": list(self.events),
        }
