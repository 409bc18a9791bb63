"""The agent: one satellite's daemon, tying physics, links, tasks and inference together.

Everything it owns runs in one nursery; cancelling it (SIGTERM, Ctrl-C)
tears the links down and closes the libp2p host cleanly.

``Node`` is one object whose concerns live in mixins, one module each (they share
``self``; each declares what it uses of the node): physics (``agent.runtime.node_physics``),
the task at its entry node (``agent.runtime.node_tasks``) and its journal read back
(``agent.runtime.node_recovery``), the task at its executor (``agent.runtime.node_exec``), routed
messages (``agent.runtime.node_messages``), faults and probes (``agent.runtime.node_chaos``) and the
views (``agent.runtime.node_views``). Here: the constructor, ``run`` and the live topology.
"""

from __future__ import annotations

import logging
import collections
import functools
import math
import random
from pathlib import Path
from typing import Any

import trio

from agent import wallclock
from agent.runtime.edge_cache import EdgeCache
from agent.compute.executor import Executor
from agent.runtime.job_copies import JobCopies
from agent.runtime.job_copy_store import CopyStore
from agent.runtime.job_host import NodeJobHost
from agent.runtime.job_journal import JobJournal
from agent.runtime.jobs import JobBoard
from agent.runtime.journal import Journal, JournalError, ReplicatedRow
from agent.runtime.membership import MembershipService
from agent.runtime.metrics import TaskMetrics
from agent.compute.model_fetch import ModelFetcher
from agent.compute.models import ModelError, ModelStore
from agent.runtime.node_chaos import FaultsAndProbes
from agent.runtime.node_exec import Execution, PowerError  # noqa: F401 (PowerError re-exported)
from agent.runtime.node_messages import RoutedMessages
from agent.runtime.node_physics import NodePhysics
from agent.runtime.node_recovery import TaskRecovery
from agent.runtime.node_replicas import ReplicatedTasks
from agent.runtime.node_tasks import DEFAULT_TASK_TIMEOUT_S, EntryTasks  # noqa: F401 (DEFAULT_TASK_TIMEOUT_S re-exported)
from agent.runtime.node_views import NodeViews
from agent.runtime.periodic import process_periodic
from agent.links.p2p import P2PHost
from agent.links.peers import NodeIdentity, Peers
from agent.runtime.placement import ComputeTable, compute_to_state, state_changed_enough
from agent.runtime.relay import Relay
from agent.runtime.tasks import DeadlineTimers, SubmitError, TaskTable  # noqa: F401 (SubmitError re-exported)
from agent.runtime.timekeeper import REFRESH_EVERY_S, Timekeeper
from agent.links.transport import LinkLayer
from mesh.chaos import FaultTable
from mesh.config import FleetConfig
from mesh.energy import Battery
from mesh.membership_config import MembershipConfig, battery_news_step, scaled_config, state_refresh_s
from mesh.trust import Trust
from mesh.delivery import ExecutionCache, TaskLedger, fleet_delivery
from mesh.forwarding import Forwarder
from mesh.link import LinkProfile, link_seed
from mesh.world import World
from mesh.wire import TaskRequest

log = logging.getLogger(__name__)

EXEC_CACHE_RESULTS = 256        # results an executor keeps to answer a retried task without running it again
EACH_SECOND_S = 1.0             # the battery's step, the look at the state for news worth gossiping, faults' expiry,
#                                 job copies (as job_copies.LOOK_EVERY_S)
JOURNAL_PURGE_EVERY_S = 60.0


class Node(NodePhysics, EntryTasks, ReplicatedTasks, TaskRecovery, Execution, RoutedMessages, FaultsAndProbes,
           NodeViews):
    def __init__(self, name: str, config: FleetConfig, peers: Peers, host: P2PHost, store: ModelStore,
                 *, workers: int | None = None, incarnation: int = 0, journal: Journal | None = None,
                 trust: Trust | None = None, revoked: frozenset[str] = frozenset(),
                 job_journal: JobJournal | None = None, world: World | None = None, gate: Any = None,
                 sats_per_process: int = 1, membership: MembershipConfig | None = None):
        """``trust``: sign this node's gossip and faults and check others' (agent.links.roster.mesh_trust);
        ``revoked``: members the signed roster revoked (refused at Hello, their records ignored);
        ``world``: one built from ``config`` to share (nodes in one process need one copy of the
        constellation and its snapshot cache, not one each); ``gate``: a satellite host's pause gate
        for this node, which stops its membership protocol while closed (``MembershipService``);
        ``sats_per_process``: how many satellites share this process (a satellite host's K): with
        the peers file's size it sets the membership's rates (``mesh.membership_config.scaled_config``);
        ``membership``: a config to use instead (benchmarks, tests)."""
        if name not in peers:
            raise ValueError(f"node {name!r} is not in the peers file")
        self.config = config
        self.peers = peers
        self.host = host
        self.me = NodeIdentity(name, peers[name].index, host.peer_id)
        if peers[name].peer_id != host.peer_id:
            raise ValueError(f"identity mismatch: peers file says {name} is {peers[name].peer_id}, "
                             f"but this data dir holds {host.peer_id}")
        if world is not None and world.config is not config:
            raise ValueError("world: must be built from this node's config")
        self.world = world if world is not None else World.from_config(config)
        self.constellation = self.world.constellation
        self.topology = self.world.topology
        self.router = self.world.router
        self._cut_cache: tuple[float, frozenset[tuple[int, int]]] = (-1.0, frozenset())
        self._pairs_cache: dict[float, frozenset[tuple[int, int]]] = {}
        self._down_memo: tuple = (None, frozenset(), frozenset())   # _link_down_expected's sets at one now
        if self.topology.names.index(name) != self.me.index:
            raise ValueError(f"peers file numbers {name} as {self.me.index}, the config as "
                             f"{self.topology.names.index(name)}")
        if len(peers.by_name) > self.topology.n_nodes:
            raise ValueError("peers file lists more nodes than the config has satellites and stations")
        self.is_ground = self.topology.names.is_ground(self.me.index)
        self.store = store
        self.executor = Executor(store, workers=workers)
        self.tasks = TaskTable()
        self.deadlines = DeadlineTimers()              # every accepted task ends by its deadline (backstop)
        # The fleet's orbital clock (time control): the config's clock until a switch arrives.
        self.timekeeper = Timekeeper(name, config.clock, trust=trust,
                                     node_index=lambda n: peers[n].index if n in peers else None,
                                     send=lambda peer, msg: self.links.send(peer, msg),
                                     neighbours=lambda: self.links.links)
        partners = [peers.by_index[i].name for i in self._wanted_partners(wallclock.now()) if i in peers.by_index]
        # Links that never come and go with the sky (a satellite's laser neighbours in its shell).
        self._laser_partners = frozenset(peers.by_index[i].name for i in self.topology.neighbours_of(self.me.index)
                                         if i in peers.by_index) if not self.is_ground else frozenset()
        self._sky_quiet = (math.inf, -math.inf)   # orbital times in which no station can see us
        self.trust = trust
        self.chaos = FaultTable(self._chaos_topo(), trust=trust,
                                node_index=lambda n: peers[n].index if n in peers else None)
        self.base_profile = LinkProfile(bandwidth_bps=config.links.isl_bandwidth_bps,
                                        queue_frames=config.limits.link_queue_frames)
        self.links = LinkLayer(
            name, host, {p: (peers[p].multiaddr, peers[p].peer_id) for p in partners},
            self._propagation, self._link_profile, self._on_message,
            seeds={p: link_seed(config.name, name, p) for p in partners},
            queue_frames=config.limits.link_queue_frames, max_frame_bytes=config.limits.max_frame_bytes,
            on_link_up=self._link_up, accept_unknown=self._accept_ground,
            members=peers.member_ids(revoked), revoked=revoked,     # one set per process, replaced on a revoke
        )
        self.healing = self.world.healing                # shared with the nodes that share the world
        self.membership = MembershipService(
            name, peers, self.links, lambda wall: self.router.snapshot(self.orbit_t(wall)), self._link_down_expected,
            incarnation=incarnation, on_hop_ack=self._on_hop_ack, on_view_change=self._view_changed, trust=trust,
            gate=gate, config=membership or scaled_config(len(peers.by_name), sats_per_process),
            state_news=functools.partial(state_changed_enough, battery_step=battery_news_step(len(peers.by_name))))
        self.delivery_config = fleet_delivery()
        self.relay = Relay(name, peers, self.links, Forwarder(self.me.index, self.healing), self._link_state,
                           lambda peer, now: 2.0 * self._propagation(self.me.name, peer, now),
                           self.membership.send_hop_ack, self._undeliverable, self.delivery_config)
        self.relay.on_deadline = self._deadline_sooner
        self.ledger = TaskLedger(self.delivery_config, name_of=self.topology.names.name)
        self.fetcher = ModelFetcher(name, store, self._send_routed, config.limits.ttl)
        self.exec_cache = ExecutionCache(EXEC_CACHE_RESULTS)
        self.executed = 0                              # inferences run here (gossiped)
        self.journal = journal
        self.recovered = 0                             # unfinished tasks read back from the journal at start
        self._idem: dict[str, str] = {}                # idempotency key -> task id (recent; the journal has all)
        self.edge_cache = EdgeCache()
        self.upsets = 0                                  # results this node corrupted under a bitflip fault
        self._answer_keys: dict[str, str] = {}         # task id -> its edge-cache key, until it ends
        self._queries: dict[str, trio.MemorySendChannel] = {}   # task queries this node is waiting on
        self._votes_to_resume: list[ReplicatedRow] = []   # replicated tasks open at a restart (agent/runtime/node_replicas.py)
        self.battery = None if self.is_ground else Battery(config.energy)   # stations are on the grid
        self.compute_table = ComputeTable()            # compute time per (node, model), from results
        self._out_bytes: dict[str, int] = {}           # last result size per model (placement's transfer term)
        self._in_flight: collections.Counter[str] = collections.Counter()   # tasks placed per executor, unfinished
        self._busy_s = 0.0                             # compute seconds run here (drives the battery)
        self.metrics = TaskMetrics(self.me.name)       # latency and inference histograms for /metrics
        self._requests: dict[str, TaskRequest] = {}   # entry side: what to resend on an end-to-end retry
        self._wake = trio.Event()
        self._deadline_wake = trio.Event()    # set when a task's deadline is earlier than the backstop's sleep
        self._published: tuple[dict[str, Any] | None, float] = (None, 0.0)   # last state gossiped, drifts due
        self._refresh_s = state_refresh_s(len(peers.by_name))    # small drifts: this often on average
        self._battery_step = battery_news_step(len(peers.by_name))   # a charge move that is news at once
        self._purged_at = wallclock.now()               # the journal's last purge
        self._power_from = (wallclock.now(), 0.0)       # (wall, compute s run) at the battery's last step
        self._tick_at = -math.inf      # when the delivery loop next looks at deadlines by itself
        self.started = wallclock.now()
        self.handovers = 0                             # ground station: satellite-to-satellite handovers so far
        self._handover_t = self.orbit_t(self.started)  # orbital time they are counted up to
        self._nursery: trio.Nursery | None = None
        self._inline_runs: set[trio.CancelScope] = set()   # tasks run on their submitter's trio task
        self.jobs = JobBoard(NodeJobHost(self), job_journal)   # jobs this node is home to (agent/runtime/jobs.py)
        self.job_copies = JobCopies(NodeJobHost(self), self.jobs,       # their copies on a neighbour, and
                                    CopyStore(job_journal) if job_journal else None)   # others' kept here
        self.jobs.copies = self.job_copies

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Load and warm every model before reporting ready: creating a session
        # takes tens of ms and its first run allocates onnxruntime's arena;
        # neither may stall the event loop (and every frame it is due to
        # release) when the first task arrives.
        for name in self.store.preloadable():
            try:
                await wallclock.off_loop(self.store.get, name)
            except ModelError as exc:
                log.error("model %s is unusable: %s", name, exc)
                continue
            await self.executor.warm_up(name)
        # The first route pays scipy's and the view cache's start-up (~4 ms): not while a
        # frame is due.  One destination is enough: that call computes this node's first hops
        # to every destination at once (asking for each was 2/3 of a 1,584-node start).
        other = next((p.name for p in self.peers.by_index.values() if p.name != self.me.name), None)
        if other is not None:
            self.relay.next_hop(other)
        self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._resume_votes()
            await nursery.start(self.executor.serve)
            nursery.start_soon(self.links.run)
            nursery.start_soon(self._chores)
            nursery.start_soon(self.membership.run)
            nursery.start_soon(self._delivery_loop)
            nursery.start_soon(self._enforce_deadlines)
            nursery.start_soon(self._end_inline_runs)
            nursery.start_soon(self._prewarm_routes)
            await nursery.start(self.jobs.serve)
            await nursery.start(functools.partial(self.job_copies.serve, own_chore=False))   # _each_second looks
            task_status.started()

    # -- live topology ---------------------------------------------------------------

    LINK_GRACE_S = 2.0  # ≫ any link's delay: frames in flight land before a retired link closes
    REWIRE_EVERY_S = 0.5

    def _wanted_partners(self, wall: float) -> set[int]:
        """Laser partners always (their streams stay up; physics drops frames
        while out of sight), plus the ground (and inter-shell) links physics gives at t."""
        i = self.me.index
        wanted = set(self.topology.contacts_of(i, self.orbit_t(wall)))
        if not self.is_ground:
            wanted.update(self.topology.neighbours_of(i))
        return wanted

    # A longer gap (a stopped process, a clock step) is skipped, not replayed: it would
    # walk every handover slot in it while the event loop waits.
    HANDOVER_COUNT_MAX_S = 3600.0

    def count_handovers(self, wall: float) -> int:
        """Handovers this station has made since it started, under the configured policy
        (mesh.handover's count, advanced to ``wall``); 0 for satellites and under ``all``."""
        if self.is_ground and self.topology.handover != "all":
            t = self.orbit_t(wall)
            if t - self._handover_t > self.HANDOVER_COUNT_MAX_S:
                self._handover_t = t
            elif t > self._handover_t:
                self.handovers += self.topology.handovers(self.me.index, self._handover_t, t)
                self._handover_t = t
        return self.handovers

    async def _chores(self) -> None:
        """This node's periodic chores, on the process's one chore heap (agent/runtime/periodic.py)
        rather than a task and a timer each; they stop with the node."""
        periodic = process_periodic()
        if self.battery is not None:     # the battery first: a first state that did not say "low" in eclipse
            self._power_from = (wallclock.now(), self._busy_s)     # was corrected by a second flood
            self._power()
        self._publish_state()            # at once: placement elsewhere needs it before the first period
        chores = [periodic.spread(period, fn) for period, fn in (     # one heap entry per round of nodes
            (self.REWIRE_EVERY_S, self._follow_the_sky), (EACH_SECOND_S, self._each_second),
            (REFRESH_EVERY_S, self.timekeeper.refresh))]
        try:
            await trio.sleep_forever()
        finally:
            for chore in chores:
                chore.cancel()

    def _each_second(self) -> None:
        """The once-a-second chores as one: step the battery first (the state then says whether
        it is low now), look at the state for news, expire faults, look after job copies
        (``JobCopies.look``, LOOK_EVERY_S).  One chore per node rather than four, in one of a
        few rounds for all nodes (``Periodic.spread``): at starlink-s1 the heap's own pops and
        pushes, one pair per chore, were 5–13% of a simulation."""
        if self.battery is not None:
            self._power()
        self._publish_state()
        self._expire_faults()
        self.job_copies.look()

    def _follow_the_sky(self) -> None:
        """Open and close ground links as satellites rise, set and hand over."""
        now = wallclock.now()
        if not self.is_ground and self.links.links.keys() <= self._laser_partners:
            # Most satellites most of the time: nothing in view, no ground link to close.  Below
            # every station's mask by a margin, a satellite stays out of view for a while
            # (``Topology.ground_quiet_s``): no look at the sky until then.
            t = self.orbit_t(now)
            since, until = self._sky_quiet
            if since <= t < until:
                return
            if not self.topology.contacts_of(self.me.index, t):
                self._sky_quiet = (t, t + self.topology.ground_quiet_s(self.me.index, t))
                return
        self.count_handovers(now)
        wanted = {self.peers.by_index[i].name for i in self._wanted_partners(now) if i in self.peers.by_index}
        for name in wanted - set(self.links.links):
            if name < self.me.name:
                continue  # the other end dials; _accept_ground takes it
            entry = self.peers[name]
            log.info("%s: %s came into view", self.me.name, name)
            self.links.add_link(name, entry.multiaddr, entry.peer_id, link_seed(self.config.name, self.me.name, name))
        for name, link in list(self.links.links.items()):
            if name not in wanted and not link.retiring:
                log.info("%s: %s out of view; closing the link in %.0fs", self.me.name, name, self.LINK_GRACE_S)
                self.links.retire_link(name, self.LINK_GRACE_S)
            elif name in wanted and link.retiring:
                self.links.add_link(name, link.multiaddr, self.peers[name].peer_id, 0)

    def revoke(self, names: frozenset[str]) -> None:
        """The roster now revokes ``names``: close their links, refuse them, ignore their records."""
        for name in sorted(names - self.links.revoked):
            if name not in self.peers or name == self.me.name:
                continue
            log.warning("%s: %s is revoked by the roster; closing its link and ignoring its records",
                        self.me.name, name)
            if self.trust is not None:
                self.trust.revoke(self.peers[name].index)
            self.links.revoke(name, self.peers[name].peer_id)

    def _accept_ground(self, name: str, peer_id: str) -> tuple[str, int] | str | None:
        """An inbound stream from a node we don't link to yet: accept it if
        physics says the link exists now (a station that just saw us rise).  A member
        that physics has out of view is refused quietly: its look at the sky came a
        moment before ours (a satellite that has just set), routine at every handover."""
        if name not in self.peers or self.peers[name].peer_id != peer_id:
            return None
        if self.peers[name].index not in self._wanted_partners(wallclock.now()):
            return "not in view"
        return self.peers[name].multiaddr, link_seed(self.config.name, self.me.name, name)

    def _own_state(self) -> dict[str, Any]:
        """What the rest of the fleet should know about this node (gossiped; small).

        Only what placement reads: every published change is a fleet-wide
        dissemination, so counters that move with every task (tasks run,
        tasks pending) stay in ``GET /v1/node`` instead."""
        workers = max(1, self.executor.workers)
        backlog = (self.executor.running + self.executor.queued) / workers
        state: dict[str, Any] = {
            "backlog": round(backlog, 1), "workers": workers,
            "models": sorted(self.store.names())[:12], "loaded": self.store.loaded_names()[:8],
            "cm": compute_to_state(self.compute_table.of_node(self.me.name), limit=6)}
        if self.battery is not None:
            state.update(battery=round(self.battery.fraction * 50) / 50, low=self.battery.low())
        return state

    def _power(self) -> None:
        """Step the battery with orbital time: sunlight from the shared ephemeris (``World.sunlit``,
        every satellite of the process at once, to the second), load from the compute seconds
        actually run here (every EACH_SECOND_S)."""
        assert self.battery is not None
        wall, busy_s = self._power_from
        now = wallclock.now()
        t = self.orbit_t(now)
        lit = self.world.sunlit(t)[self.me.index]
        busy = (self._busy_s - busy_s) / max(1e-9, (now - wall) * max(1, self.executor.workers))
        self.battery.step(t - self.orbit_t(wall), lit, busy)
        self._power_from = (now, self._busy_s)

    def _publish_state(self) -> None:
        """Gossip this node's state when it changed enough to matter to placement
        (checked every EACH_SECOND_S), and small drifts once a refresh period on average
        (``mesh.membership_config.state_refresh_s``: longer in large fleets), 0.5 to 1.5 of it
        drawn each time, so that a fleet started together does not re-publish in waves."""
        last, drifts_due = self._published
        state = self._own_state()
        now = wallclock.now()
        if state_changed_enough(last, state, self._battery_step) or (state != last and now >= drifts_due):
            try:
                self.membership.set_state(state)
                self._published = (state, now + self._refresh_s * random.uniform(0.5, 1.5))
            except ValueError as exc:   # over the state size limit: a bug, not a reason to stop
                log.error("state not published: %s", exc)

    def _expire_faults(self) -> None:
        now = wallclock.now()
        self.chaos.expire(now)
        if self.journal is not None and now - self._purged_at > JOURNAL_PURGE_EVERY_S:
            self._purged_at = now
            try:
                self.journal.purge(now)
            except JournalError as exc:
                log.error("%s", exc)


def data_paths(data_dir: Path) -> dict[str, Path]:
    return {"identity": Path(data_dir) / "identity.key"}
