"""The agent: one satellite's daemon, tying physics, links, tasks and inference together.

Everything it owns runs in one nursery; cancelling it (SIGTERM, Ctrl-C)
tears the links down and closes the libp2p host cleanly.
"""

from __future__ import annotations

import logging
import collections
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import trio

from agent.edge_cache import Answer, EdgeCache, cache_key
from agent.replicas import agree, replica_view
from agent.executor import ExecutionError, Executor, ExecutorBusy
from agent.job_host import NodeJobHost
from agent.job_journal import JobJournal
from agent.jobs import JobBoard
from agent.journal import DuplicateKey, Journal, JournalError, Row
from agent.membership import MembershipService
from agent.metrics import TaskMetrics
from agent.model_fetch import ModelFetcher
from agent.models import ModelError, ModelStore, bad_name
from agent.p2p import P2PHost
from agent.peers import Peers
from agent.placement import ComputeTable, candidates, compute_to_state, state_changed_enough
from agent.relay import LinkState, Relay
from agent.scan import run_scan, scan_inputs
from agent.tasks import DeadlineTimers, SubmitError, TaskRecord, TaskTable  # noqa: F401 (SubmitError re-exported)
from agent.timekeeper import Timekeeper
from agent.tensors import InputError, check_shape, inputs_from_arrays, inputs_from_json, typed_arrays
from agent.transport import LinkLayer
from agent.zoo import LimitError, check_limits
from mesh.chaos import Entry, FaultConflict, FaultError, FaultTable, Topo
from mesh.config import FleetConfig
from mesh.energy import Battery
from mesh.placement import TARGETS, PlacementError, choose
from mesh.sun import sunlit
from mesh.trust import Trust
from mesh.delivery import ExecutionCache, TaskFailed, TaskLedger, fleet_delivery
from mesh.forwarding import Forwarder
from mesh.gossip_msgs import HopAck
from mesh.healing import HealingRouter
from mesh.voting import MAX_REPLICAS, MODES, Vote
from mesh.link import LinkProfile, link_seed
from mesh.world import World
from mesh.wire import (ChaosUpdate, Scan, ClockUpdate, Control, Hop, Message, ModelChunk, ModelFetch, Probe, TaskQuery, TaskRequest,
                       TaskResult, TaskStatus, Tensor, WireError)

log = logging.getLogger(__name__)

DEFAULT_TASK_TIMEOUT_S = 30.0
MAX_PROBE_RATE_HZ = 2000
MAX_PROBE_SECONDS = 120
MAX_PROBE_BYTES = 256 * 1024
EXEC_CACHE_RESULTS = 256        # results an executor keeps to answer a retried task without running it again
STATE_EVERY_S = 1.0             # how often this node's state is looked at for news worth gossiping
STATE_REFRESH_S = 30.0          # small drifts (battery, compute times, backlog) are gossiped at most this often
CLOSING_LOOKAHEAD_S = 1.0       # a link physics closes within this is "expected down", not a failure
DELIVERY_TICK_MAX_S = 0.5       # the delivery loop looks at its deadlines at least this often
PREWARM_EVERY_S = 0.25
PREWARM_AHEAD_S = 0.6           # warm routes for the snapshot this far ahead
PREWARM_MAX_RATE = 4.0          # orbital seconds per wall second beyond which warming cannot keep up
POWER_STEP_S = 1.0
JOURNAL_PURGE_EVERY_S = 60.0
QUERY_TIMEOUT_S = 5.0           # a task query's answer, beyond any wait asked for
QUERY_ATTEMPTS = 3
OPENING_SETTLE_S = 3.0          # a ground contact younger than this is not probed yet (the link is being opened)


class PowerError(RuntimeError):
    """Work refused to protect the battery's reserve."""


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    index: int
    peer_id: str


class Node:
    def __init__(self, name: str, config: FleetConfig, peers: Peers, host: P2PHost, store: ModelStore,
                 *, workers: int | None = None, incarnation: int = 0, journal: Journal | None = None,
                 trust: Trust | None = None, revoked: frozenset[str] = frozenset(),
                 job_journal: JobJournal | None = None):
        """``trust``: sign this node's gossip and faults and check others' (agent.roster.mesh_trust);
        ``revoked``: members the signed roster revoked (refused at Hello, their records ignored)."""
        if name not in peers:
            raise ValueError(f"node {name!r} is not in the peers file")
        self.config = config
        self.peers = peers
        self.host = host
        self.me = NodeIdentity(name, peers[name].index, host.peer_id)
        if peers[name].peer_id != host.peer_id:
            raise ValueError(f"identity mismatch: peers file says {name} is {peers[name].peer_id}, "
                             f"but this data dir holds {host.peer_id}")
        self.world = World.from_config(config)
        self.constellation = self.world.constellation
        self.topology = self.world.topology
        self.router = self.world.router
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
        partners = [peers.by_index[i].name for i in self._wanted_partners(time.time()) if i in peers.by_index]
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
            members={e.peer_id for e in peers.by_name.values() if e.name not in revoked}, revoked=revoked,
        )
        self.healing = HealingRouter(self.router.snapshot)
        self._cut_cache: tuple[float, frozenset[tuple[int, int]]] = (-1.0, frozenset())
        self._pairs_cache: dict[float, frozenset[tuple[int, int]]] = {}
        self.membership = MembershipService(
            name, peers, self.links, lambda wall: self.router.snapshot(self.orbit_t(wall)), self._link_down_expected,
            incarnation=incarnation, on_hop_ack=self._on_hop_ack, on_view_change=self._view_changed, trust=trust)
        self.delivery_config = fleet_delivery()
        self.relay = Relay(name, peers, self.links, Forwarder(self.me.index, self.healing), self._link_state,
                           lambda peer, now: 2.0 * self._propagation(self.me.name, peer, now),
                           self.membership.send_hop_ack, self._undeliverable, self.delivery_config)
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
        self.battery = None if self.is_ground else Battery(config.energy)   # stations are on the grid
        self.compute_table = ComputeTable()            # compute time per (node, model), from results
        self._out_bytes: dict[str, int] = {}           # last result size per model (placement's transfer term)
        self._in_flight: collections.Counter[str] = collections.Counter()   # tasks placed per executor, unfinished
        self._busy_s = 0.0                             # compute seconds run here (drives the battery)
        self.metrics = TaskMetrics(self.me.name)       # latency and inference histograms for /metrics
        self._requests: dict[str, TaskRequest] = {}   # entry side: what to resend on an end-to-end retry
        self._wake = trio.Event()
        self._tick_at = -math.inf      # when the delivery loop next looks at deadlines by itself
        self.started = time.time()
        self.handovers = 0                             # ground station: satellite-to-satellite handovers so far
        self._handover_t = self.orbit_t(self.started)  # orbital time they are counted up to
        self._nursery: trio.Nursery | None = None
        self.jobs = JobBoard(NodeJobHost(self), job_journal)   # jobs this node is home to (agent/jobs.py)

    # -- physics ---------------------------------------------------------------

    def orbit_t(self, wall: float | None = None) -> float:
        """Orbital time at ``wall`` on the fleet's clock (``agent.timekeeper``): everything
        physics decides here (links, delays, handovers, positions, sunlight) reads it."""
        return self.timekeeper.orbit_t(time.time() if wall is None else wall)

    def _propagation(self, a: str, b: str, sent_at: float) -> float:
        return self.topology.link_latency(self.peers[a].index, self.peers[b].index, self.orbit_t(sent_at))

    def _cut_links(self, now: float) -> frozenset[tuple[int, int]]:
        """Links chaos cuts now, as undirected index pairs (cached for 50 ms: asked per probe)."""
        at, cut = self._cut_cache
        if now - at > 0.05 or now < at:
            pairs = self.chaos.cut_now(now)
            cut = frozenset((min(self.peers[a].index, self.peers[b].index), max(self.peers[a].index, self.peers[b].index))
                            for a, b in pairs if a in self.peers and b in self.peers)
            self._cut_cache = (now, cut)
        return cut

    def _link_down_expected(self, a: int, b: int, now: float) -> bool:
        """A link that is down for a known reason is not a failure: a chaos cut, a
        contact physics closes within a second, or a ground contact still opening."""
        if (min(a, b), max(a, b)) in self._cut_links(now):
            return True
        if (min(a, b), max(a, b)) not in self._pairs_up(now + CLOSING_LOOKAHEAD_S):
            return True
        names = self.topology.names
        if names.is_ground(a) or names.is_ground(b):
            return (min(a, b), max(a, b)) not in self._pairs_up(now - OPENING_SETTLE_S)
        return False

    def _pairs_up(self, wall: float) -> frozenset[tuple[int, int]]:
        """Links (laser and ground) physics has up at ``wall``, from the shared snapshot."""
        snap = self.router.snapshot(self.orbit_t(wall))
        hit = self._pairs_cache.get(snap.t)
        if hit is None:
            pairs = [(int(a), int(b)) for a, b in snap.pairs.tolist()]
            pairs += [(min(int(g), int(s)), max(int(g), int(s))) for g, s in snap.ground_pairs.tolist()]
            hit = frozenset(pairs)
            if len(self._pairs_cache) >= 8:
                self._pairs_cache.pop(next(iter(self._pairs_cache)))
            self._pairs_cache[snap.t] = hit
        return hit

    async def _prewarm_routes(self) -> None:
        """Compute the next snapshot, its routes and what membership will ask of it
        before they are needed, so that forwarding and probing find them cached.

        Each agent warms at its own random point of the step: every agent needs
        the same new snapshot at the same instant, and computing it there would
        stall the whole fleet's event loops together (2 cores, 24 agents)."""
        warmed = None
        ahead_s = random.uniform(PREWARM_AHEAD_S / 2, PREWARM_AHEAD_S * 1.5)
        while True:
            await trio.sleep(PREWARM_EVERY_S * random.uniform(0.5, 1.5))
            ahead = time.time() + ahead_s
            t = self.orbit_t(ahead)
            key = math.floor(t / self.router.step_s)
            if key == warmed or self.orbit_t(ahead + 1.0) - t > PREWARM_MAX_RATE:
                continue      # done already, or the clock runs so fast that steps outpace warming
            warmed = key
            down = self.membership.down_links() | self._cut_links(time.time())
            dead = self.membership.dead_nodes()
            self._pairs_up(ahead)
            await trio.sleep(0)
            self._pairs_up(ahead + CLOSING_LOOKAHEAD_S)      # membership's "closing soon" check
            await trio.sleep(0)
            self.healing.warm([i for i in self.peers.by_index if i != self.me.index], t,
                              down_nodes=dead, down_links=down)

    def _link_state(self, now: float) -> LinkState:
        """What the relay's forwarding decision reads: orbital time, dead nodes, and
        links reported down or cut by chaos (links this node saw fail, the relay's
        ``Forwarder`` adds itself)."""
        return LinkState(self.orbit_t(now), self.membership.dead_nodes(),
                         self.membership.down_links() | self._cut_links(now))

    def _view_changed(self) -> None:
        """A death or a link reported down: frames on their way to it go around now."""
        dead, down = self.membership.dead_nodes(), self.membership.down_links()
        me = self.me.index

        def gone(peer: str) -> bool:
            i = self.peers[peer].index
            return i in dead or (min(me, i), max(me, i)) in down

        self.relay.view_changed(gone)
        self._wake.set()

    def _link_profile(self, peer: str, now: float) -> LinkProfile:
        profile = self.chaos.profile(self.me.name, peer, now, self.base_profile)
        if not self._in_sight(peer, now):
            profile = replace(profile, in_sight=False)
        return profile

    def _in_sight(self, peer: str, now: float) -> bool:
        """Whether physics has this link up now (line of sight, range)."""
        snap = self.router.snapshot(self.orbit_t(now))
        idx = self.peers[peer].index
        return any(n == idx for n, _ in snap.neighbours(self.me.index))

    def _chaos_topo(self) -> Topo:
        names = {i: e.name for i, e in self.peers.by_index.items()}
        links = frozenset(frozenset((names[int(a)], names[int(b)])) for a, b in self.topology.candidates.tolist()
                          if int(a) in names and int(b) in names)
        planes = {n: (self.constellation.shell_of[i], self.constellation.plane_of[i]) for i, n in names.items()
                  if i < len(self.constellation)}
        return Topo(frozenset(names.values()), links, planes)

    def position(self) -> dict[str, float]:
        x, y, z = (float(v) for v in self.topology.node_position(self.me.index, self.orbit_t()))
        r = math.sqrt(x * x + y * y + z * z)
        return {"x_km": x, "y_km": y, "z_km": z, "lat_deg": math.degrees(math.asin(z / r)),
                "lon_deg": math.degrees(math.atan2(y, x)), "radius_km": r}

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Load and warm every model before reporting ready: creating a session
        # takes tens of ms and its first run allocates onnxruntime's arena;
        # neither may stall the event loop (and every frame it is due to
        # release) when the first task arrives.
        for name in self.store.preloadable():
            try:
                await trio.to_thread.run_sync(self.store.get, name)
            except ModelError as exc:
                log.error("model %s is unusable: %s", name, exc)
                continue
            await self.executor.warm_up(name)
        # The first route pays scipy's and the view cache's start-up (~4 ms):
        # not while a frame is due.
        for peer in self.peers.by_index.values():
            self.relay.next_hop(peer.name)
        self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.executor.serve)
            nursery.start_soon(self.links.run)
            nursery.start_soon(self._expire_faults)
            nursery.start_soon(self._follow_the_sky)
            nursery.start_soon(self.membership.run)
            nursery.start_soon(self._delivery_loop)
            nursery.start_soon(self._enforce_deadlines)
            nursery.start_soon(self._publish_state)
            nursery.start_soon(self._power)
            nursery.start_soon(self._prewarm_routes)
            nursery.start_soon(self.timekeeper.run)
            await nursery.start(self.jobs.serve)
            task_status.started()

    # -- live topology ---------------------------------------------------------------

    LINK_GRACE_S = 2.0  # ≫ any link's delay: frames in flight land before a retired link closes
    REWIRE_EVERY_S = 0.5

    def _wanted_partners(self, wall: float) -> set[int]:
        """Laser partners always (their streams stay up; physics drops frames
        while out of sight), plus the ground links physics gives at t."""
        i = self.me.index
        wanted = set(self.topology.partners_of(i, self.orbit_t(wall)))
        if not self.is_ground:
            wanted |= set(self.topology.neighbours_of(i))
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

    async def _follow_the_sky(self) -> None:
        """Open and close ground links as satellites rise, set and hand over."""
        while True:
            await trio.sleep(self.REWIRE_EVERY_S)
            now = time.time()
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

    def _accept_ground(self, name: str, peer_id: str) -> tuple[str, int] | None:
        """An inbound stream from a node we don't link to yet: accept it if
        physics says the link exists now (a station that just saw us rise)."""
        if name not in self.peers or self.peers[name].peer_id != peer_id:
            return None
        if self.peers[name].index not in self._wanted_partners(time.time()):
            return None
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
            state.update(battery=round(self.battery.fraction * 50) / 50, sunlit=self.battery.sunlit,
                         low=self.battery.low())
        return state

    async def _power(self) -> None:
        """Step the battery with orbital time: sunlight from the shared ephemeris,
        load from the compute seconds actually run here."""
        if self.battery is None:
            return
        wall, busy_s = time.time(), self._busy_s
        while True:
            t = self.orbit_t()
            pos = np.asarray(self.topology.node_position(self.me.index, t), dtype=float)[None, :]
            lit = bool(sunlit(pos, self.config.epoch_jd + t / 86400.0)[0])
            now = time.time()
            busy = (self._busy_s - busy_s) / max(1e-9, (now - wall) * max(1, self.executor.workers))
            self.battery.step(self.orbit_t(now) - self.orbit_t(wall), lit, busy)
            wall, busy_s = now, self._busy_s
            await trio.sleep(POWER_STEP_S)

    async def _publish_state(self) -> None:
        """Gossip this node's state when it changed enough to matter to placement
        (checked every STATE_EVERY_S), and small drifts at most every STATE_REFRESH_S."""
        last: dict[str, Any] | None = None
        published = 0.0
        while True:
            state = self._own_state()
            now = time.time()
            if state_changed_enough(last, state) or (state != last and now - published >= STATE_REFRESH_S):
                try:
                    self.membership.set_state(state)
                    last, published = state, now
                except ValueError as exc:   # over the state size limit: a bug, not a reason to stop
                    log.error("state not published: %s", exc)
            await trio.sleep(STATE_EVERY_S)

    async def _expire_faults(self) -> None:
        purged_at = time.time()
        while True:
            await trio.sleep(1.0)
            self.chaos.expire(time.time())
            if self.journal is not None and time.time() - purged_at > JOURNAL_PURGE_EVERY_S:
                purged_at = time.time()
                try:
                    self.journal.purge(purged_at)
                except JournalError as exc:
                    log.error("%s", exc)

    # -- tasks at the entry node --------------------------------------------------

    async def submit(self, model: str, inputs: Any, target: str | None,
                     timeout_s: float = DEFAULT_TASK_TIMEOUT_S, idem_key: str | None = None,
                     journaled: bool = True, cache: bool = True, replicas: int = 1,
                     agreement: str = "majority") -> tuple[TaskRecord, bool]:
        """Validate and accept a task; (its record, whether it is new). SubmitError with a clear reason.

        ``inputs`` is JSON (checked and typed here) or a dict of arrays already
        decoded from binary tensors (checked here against the signature).
        ``journaled=False``: a task whose submitter waits for it on its own
        connection and gave no idempotency key; if this node dies nobody can
        ask for it again, so it skips the journal (the mesh still delivers it
        exactly once, by its deadline, with its trace).

        With ``idem_key``, a retry of the same submission (the client never saw
        the answer) gets the task it created the first time, not a second one.
        """
        if idem_key is not None:
            if not isinstance(idem_key, str) or not 0 < len(idem_key) <= 128:
                raise SubmitError(400, "an idempotency key must be a string of 1–128 characters")
            done = self._by_idem_key(idem_key)
            if done is not None:
                return done, False
        if not isinstance(model, str) or not model:
            raise SubmitError(400, "'model' must be a non-empty string")
        if bad_name(model):
            raise SubmitError(400, bad_name(model))
        if target is not None and not isinstance(target, str):
            raise SubmitError(400, "'target' must be a node name such as 'sat-7', or 'auto'")
        try:
            # Loading a large model takes a while: never on the event loop.
            loaded = self.store.get(model) if self.store.loaded(model) else \
                await trio.to_thread.run_sync(self.store.get, model)
        except ModelError as exc:
            raise SubmitError(404 if "unknown model" in str(exc) else 422, str(exc)) from None
        try:
            limit = self.config.limits.max_frame_bytes // 4
            arrays = inputs_from_arrays(inputs, loaded.inputs, limit) if typed_arrays(inputs) else \
                inputs_from_json(inputs, loaded.inputs, max_elements=limit)
            check_limits(model, arrays, loaded.manifest)
        except (InputError, LimitError) as exc:
            raise SubmitError(400, str(exc)) from None
        placed = target in (None, "") or target in TARGETS
        if not placed and target not in self.peers:
            raise SubmitError(404, f"unknown target node {target!r}; nodes are {self.peers.names()[0]} … "
                                   f"{self.peers.names()[-1]}, or one of {', '.join(TARGETS)}")
        if target in self.peers and self.peers[target].index in self.membership.dead_nodes():
            raise SubmitError(503, f"{target} is down (declared dead by the fleet's membership); "
                                   f"submit with target 'auto' or to another node")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise SubmitError(400, f"'replicas' must be an integer in 1–{MAX_REPLICAS}")
        if not isinstance(agreement, str) or agreement not in MODES:
            raise SubmitError(400, f"'agreement' must be one of {', '.join(MODES)}")
        if replicas != 1:
            if not placed:
                raise SubmitError(400, "replicas are placed by the fleet (one per plane): leave 'target' out or "
                                       f"use one of {', '.join(TARGETS)}")
        answer_key = None
        if cache and placed and replicas == 1:   # a named target asks for execution there (agent/edge_cache.py)
            answer_key = cache_key(loaded.sha256 or self.store.sha256(model), arrays)
            hit = self.edge_cache.get(answer_key)
            if hit is not None:
                return self._answer_from_cache(model, hit, idem_key, timeout_s), True
        if len(self._requests) + replicas > self.config.limits.max_pending_tasks:
            raise SubmitError(429, f"{len(self._requests)} tasks pending at {self.me.name}; retry later")
        why = "target chosen by the client"
        if placed:
            executors, why = self._place(model, target or "auto", arrays, loaded, timeout_s, replicas)
            executor = executors[0]
        else:
            executors, executor = [target], target
        if executor == self.me.name and self.executor.full:
            raise SubmitError(429, f"executor at {self.me.name} is full ({self.executor.queued} tasks queued); "
                                   f"retry in {self.executor.retry_after_s()}s")
        if idem_key is not None:
            # A concurrent submission with the same key may have been accepted while this one
            # awaited the model load: answer its task (no await from here to the _idem entry).
            done = self._by_idem_key(idem_key)
            if done is not None:
                return done, False
        if replicas > 1:
            return self._submit_replicas(model, loaded, arrays, executors, why, agreement, timeout_s, idem_key,
                                         journaled), True
        return self._accept(model, loaded, arrays, executor, why, timeout_s, idem_key, journaled, answer_key), True

    def _accept(self, model: str, loaded: Any, arrays: dict[str, np.ndarray], executor: str, why: str,
                timeout_s: float, idem_key: str | None, journaled: bool, answer_key: str | None,
                task_id: str | None = None, scan: Scan | None = None) -> TaskRecord:
        """Record (journal first), track and start one task; no await, so nothing interleaves."""
        now = time.time()
        # The entry's name in the id: any node can tell where to ask about it.
        rec = TaskRecord(task_id or f"{self.me.name}-{uuid.uuid4().hex}", model, self.me.name, executor, created=now,
                         journaled=journaled and self.journal is not None, deadline=now + timeout_s)
        req = TaskRequest(rec.task_id, self.me.name, executor, model,
                          {k: Tensor.from_array(v) for k, v in arrays.items()}, ttl=self.config.limits.ttl,
                          deadline=now + timeout_s, model_sha256=loaded.sha256 or self.store.sha256(model), scan=scan)
        if self.journal is not None and journaled:
            try:       # on disk before anyone is told: a crash from here on loses nothing
                self.journal.accept(req, executor, why, now, idem_key)
            except DuplicateKey as exc:
                raise SubmitError(409, f"idempotency key {idem_key!r} is taken by a task {self.me.name} cannot "
                                       f"read back ({exc}); use a new key") from None
            except JournalError as exc:
                raise SubmitError(503, f"{self.me.name} cannot record the task: {exc}") from None
        self._remember_key(idem_key, rec.task_id)
        if answer_key is not None:
            self._answer_keys[rec.task_id] = answer_key
        self.tasks.add(rec)
        self.deadlines.watch(rec)
        # A local task is not retried end to end (nothing can lose it); a remote one
        # is re-sent under the same id if no result came back in time.
        self.ledger.submit(now, rec.task_id, self.peers[executor].index, req.deadline,
                           retry_after=math.inf if executor == self.me.name else None)
        self._requests[rec.task_id] = req
        assert self._nursery is not None, "node is not running"
        rec.placement = why
        self._in_flight[executor] += 1
        if executor == self.me.name:
            # What _on_request would do, one task hand-off sooner; the ledger's only
            # time for it is its deadline, usually long after the loop's next look.
            self._nursery.start_soon(self._execute, req, now, 0.0, "entry")
            if req.deadline < self._tick_at:
                self._wake.set()
        else:
            self._nursery.start_soon(self._on_request, req, now, 0.0, None, "entry")
            self._wake.set()
        return rec

    def _submit_replicas(self, model: str, loaded: Any, arrays: dict[str, np.ndarray], executors: list[str],
                         why: str, agreement: str, timeout_s: float, idem_key: str | None,
                         journaled: bool) -> TaskRecord:
        """One task per replica (each journaled and delivered exactly once like any task), and a parent
        whose outputs are the agreed answer (agent/replicas.py)."""
        now = time.time()
        parent = TaskRecord(f"{self.me.name}-{uuid.uuid4().hex}", model, self.me.name, ",".join(executors),
                            created=now, journaled=False, deadline=now + timeout_s, placement=why)
        children = [self._accept(model, loaded, arrays, ex, f"replica {i + 1} of {len(executors)} of {parent.task_id}",
                                 timeout_s, None, journaled, None, task_id=f"{parent.task_id}.r{i}")
                    for i, ex in enumerate(executors)]
        vote = Vote(len(executors), agreement)
        parent.replicas = replica_view(vote, children)
        self.tasks.add(parent)
        self._remember_key(idem_key, parent.task_id)
        assert self._nursery is not None, "node is not running"
        self._nursery.start_soon(agree, parent, children, vote, self._finalize)
        return parent

    def _remember_key(self, idem_key: str | None, task_id: str) -> None:
        if idem_key is not None:
            self._idem[idem_key] = task_id
            if len(self._idem) > 65536:
                self._idem.pop(next(iter(self._idem)))

    def _answer_from_cache(self, model: str, hit: Answer, idem_key: str | None, timeout_s: float) -> TaskRecord:
        """A task answered at once from the edge cache: final before anyone sees it, not journaled."""
        now = time.time()
        rec = TaskRecord(f"{self.me.name}-{uuid.uuid4().hex}", model, self.me.name, self.me.name, created=now,
                         journaled=False, deadline=now + timeout_s,
                         placement=f"edge cache: computed by {hit.executor}")
        self.tasks.add(rec)
        self._finalize(rec, ok=True, when=time.time(), outputs=dict(hit.outputs),
                       trace=(Hop(self.me.name, now, time.time(), "cache",
                                  detail=f"answered from the edge cache; computed by {hit.executor}"),))
        self._remember_key(idem_key, rec.task_id)
        return rec

    def _by_idem_key(self, idem_key: str) -> TaskRecord | None:
        """The task an earlier submission with this idempotency key created, if any."""
        try:
            known = self._idem.get(idem_key) or (self.journal.by_key(idem_key) if self.journal else None)
        except JournalError as exc:
            raise SubmitError(503, f"{self.me.name} cannot read its task journal: {exc}") from None
        return self.find_task(known) if known is not None else None

    @property
    def busy_s(self) -> float:
        """onnxruntime seconds run here since start."""
        return self._busy_s

    def find_task(self, task_id: str) -> TaskRecord | None:
        """A task this node accepted: in memory, or (finished, within retention) in the journal."""
        rec = self.tasks.get(task_id)
        if rec is not None or self.journal is None:
            return rec
        try:
            row = self.journal.get(task_id)
            damaged = self.journal.quarantined_task(task_id) if row is None else None
        except JournalError as exc:
            log.error("%s", exc)
            return None
        if damaged is not None:
            # Its journal row could not be read back: it ends, visibly, as a failure.
            reason, created = damaged
            rec = TaskRecord(task_id, "?", self.me.name, "?", created=created or 0.0, journaled=False)
            rec.finish(ok=False, when=created or 0.0,
                       error=f"{self.me.name}: the task's journal entry was damaged and is quarantined ({reason})")
            return rec
        if row is None:
            return None
        if row.finished is None:
            # Open in the journal but unknown here (recovery missed it): it gets what
            # recovery gives every open task, a re-send and a deadline timer.
            return self._recover_row(row, time.time())
        rec = TaskRecord(row.task_id, row.model, self.me.name, row.executor, created=row.created,
                         placement=row.placement)
        if row.finished is not None:
            res = row.result
            rec.finish(ok=row.status == "succeeded", when=row.finished, error=row.error,
                       outputs={k: t.to_array() for k, t in res.outputs.items()} if res and res.ok else None,
                       trace=res.trace if res else (), compute_s=res.compute_s if res else 0.0)
        return rec

    def _recover(self) -> None:
        """After a restart: every task accepted but not final is sent again under its id
        (or failed at once if its deadline passed while this node was down).  A row the
        journal cannot read back is quarantined there and reported; the others recover."""
        if self.journal is None:
            return
        try:
            rows = self.journal.open_tasks()
        except JournalError as exc:
            log.error("%s: no task recovered: %s", self.me.name, exc)
            return
        now = time.time()
        for row in rows:
            self._recover_row(row, now)
        if rows or self.journal.quarantined_now:
            log.warning("%s: recovered %d unfinished tasks from the journal; %d damaged row(s) quarantined",
                        self.me.name, self.recovered, self.journal.quarantined_now)

    def _recover_row(self, row: Row, now: float) -> TaskRecord:
        """One open journal row back in memory: re-sent at once, with its deadline timer."""
        rec = TaskRecord(row.task_id, row.model, self.me.name, row.executor, created=row.created,
                         placement=row.placement, deadline=row.deadline)
        self.tasks.add(rec)
        if row.idem_key:
            self._idem[row.idem_key] = row.task_id
        if row.deadline <= now:
            self._finalize(rec, ok=False, when=now, error=f"{self.me.name} was down until after the deadline")
            return rec
        self.deadlines.watch(rec)
        self._requests[row.task_id] = row.request
        executor = row.executor if row.executor in self.peers else self.me.name
        self._in_flight[executor] += 1
        # Retry at once: whatever was in flight died with the old process.
        try:
            self.ledger.submit(now, row.task_id, self.peers[executor].index, row.deadline, retry_after=0.0)
        except ValueError as exc:       # known to the ledger already: its timer stands
            log.warning("%s: %s", self.me.name, exc)
        self.recovered += 1
        self._wake.set()
        return rec

    async def _enforce_deadlines(self) -> None:
        """The backstop behind the ledger: a task still pending after its deadline ends
        now, failed with the reason, whatever happened to its target or its frames.
        A task of its own, so nothing that delays delivery can delay this."""
        while True:
            wait = self.deadlines.next_at() - time.time()
            await trio.sleep(max(0.05, min(wait, 1.0)))
            for rec in self.deadlines.due(time.time(), self.tasks):
                self._deadline_passed(rec)

    def _deadline_passed(self, rec: TaskRecord) -> None:
        reason = (f"{self.me.name}: no result by the task's deadline ({rec.deadline - rec.created:.1f} s after it "
                  f"was accepted); executor {rec.executor}")
        log.warning("task %s still %s at its deadline: failed by the deadline timer", rec.task_id, rec.status)
        self.ledger.fail(time.time(), rec.task_id, reason)
        self._fail(rec.task_id, reason)

    def _finalize(self, rec: TaskRecord, *, ok: bool, when: float, outputs: dict[str, np.ndarray] | None = None,
                  error: str = "", trace: tuple[Hop, ...] = (), compute_s: float = 0.0,
                  result: TaskResult | None = None) -> bool:
        """The task's one final state: in memory, then in the journal."""
        if not rec.finish(ok=ok, when=when, outputs=outputs, error=error, trace=trace, compute_s=compute_s):
            return False
        answer_key = self._answer_keys.pop(rec.task_id, None)
        if ok and answer_key is not None and outputs is not None:
            self.edge_cache.put(answer_key, outputs, rec.executor, when)
        self.metrics.task_finished(rec.status, rec.breakdown())
        if self.journal is not None and rec.journaled:
            try:
                self.journal.finish(rec.task_id, ok, when, result, error)
            except JournalError as exc:
                log.error("%s", exc)
        return True

    def _place(self, model: str, target: str, arrays: dict[str, np.ndarray], loaded: Any,
               timeout_s: float, replicas: int = 1, exclude: frozenset[str] = frozenset()) -> tuple[list[str], str]:
        """Executors by expected completion (``mesh.placement``): one, or ``replicas`` satellites in
        different planes (so one plane's outage or one upset cannot take them all); SubmitError(503)
        if not enough fit."""
        in_bytes = sum(a.nbytes for a in arrays.values())
        own = self._own_state()
        local = self.compute_table.get(self.me.name, model)
        big = loaded.path.stat().st_size > 1 << 20
        default = local if local is not None else (0.1 if big else 0.005)
        load_s = self.store.load_s.get(model, 0.5 if big else 0.01)
        dead = self.membership.dead_nodes()
        names = [e.name for i, e in self.peers.by_index.items() if i not in dead and e.name not in exclude]
        cands = candidates(self.me.name, model, names, self._path_to, self.membership.state_of,
                           self.compute_table, self._in_flight, own, load_s, loaded.path.stat().st_size,
                           self.config.links.isl_bandwidth_bps)
        c = self.constellation
        plane = {n: (c.shell_of[self.peers[n].index], c.plane_of[self.peers[n].index]) for n in names
                 if self.peers[n].index < len(c)}
        chosen: list[str] = []
        why = ""
        for k in range(replicas):
            if replicas > 1:   # satellites only, one per plane
                used = {plane[n] for n in chosen}
                cands = [x for x in cands if x.node in plane and plane[x.node] not in used]
            try:
                choice = choose(target, cands, in_bytes=in_bytes, out_bytes=self._out_bytes.get(model, in_bytes),
                                bandwidth_bps=self.config.links.isl_bandwidth_bps, default_compute_s=default,
                                heavy_s=self.config.energy.heavy_ms / 1e3, time_left_s=timeout_s)
            except PlacementError as exc:
                extra = f" (replica {k + 1} of {replicas}: one per plane, {k} placed)" if replicas > 1 else ""
                raise SubmitError(503, f"cannot place a {model!r} task ({target}){extra}: {exc}") from None
            chosen.append(choice.node)
            why = why or choice.why
        if replicas > 1:
            return chosen, f"{target}: {replicas} replicas, one per plane, best first ({why})"
        return chosen, f"{target}: {why}"

    def _path_to(self, dst: str) -> tuple[float, int] | None:
        """One-way latency and hop count of the route to ``dst`` as routing sees it now."""
        now = time.time()
        t = self.orbit_t(now)
        path = self.healing.path(self.me.index, self.peers[dst].index, t, down_nodes=self.membership.dead_nodes(),
                                 down_links=self.membership.down_links() | self._cut_links(now))
        if path is None:
            return None
        snap = self.router.snapshot(t)
        return sum(snap.latency(a, b) for a, b in zip(path, path[1:])), len(path) - 1

    async def _delivery_loop(self) -> None:
        """Hop retransmissions, held frames, end-to-end retries and task deadlines."""
        while True:
            now = time.time()
            wait = min(self.relay.next_deadline(), self.ledger.next_deadline()) - now
            if wait > 0:
                nap = min(wait, DELIVERY_TICK_MAX_S)
                self._tick_at = now + nap    # wall clock, as deadlines are
                with trio.move_on_after(nap):
                    await self._wake.wait()
                self._wake = trio.Event()
            self._tick_at = -math.inf       # ticking now: a new deadline is seen on the next pass
            self.relay.tick()
            for x in self.ledger.tick(time.time()):
                if isinstance(x, TaskFailed):
                    self._fail(x.task_id, x.reason)
                else:
                    req = self._requests.get(x.task_id)
                    if req is not None:
                        log.info("%s: no result for task %s yet; attempt %d", self.me.name, x.task_id, x.attempt)
                        await self._on_request(replace(req, attempt=x.attempt), time.time(), 0.0, None, "retry")

    def _fail(self, task_id: str, reason: str) -> None:
        self._requests.pop(task_id, None)
        rec = self.tasks.get(task_id)
        if rec is not None and rec.status not in ("succeeded", "failed") and self._in_flight.get(rec.executor):
            self._in_flight[rec.executor] -= 1
        if rec is not None and self._finalize(rec, ok=False, when=time.time(), error=reason):
            log.warning("task %s failed: %s", task_id, reason)

    def _undeliverable(self, msg: TaskRequest | TaskResult, reason: str) -> None:
        """A frame held past its deadline: the task fails with the reason, never silently."""
        if isinstance(msg, TaskRequest):
            if msg.entry == self.me.name:
                self.ledger.note(msg.task_id, reason)
                failed = self.ledger.fail(time.time(), msg.task_id, reason)
                if failed is not None:
                    self._fail(msg.task_id, reason)
                return
            self._send_result(TaskResult(msg.task_id, msg.entry, msg.executor, ok=False, error=reason,
                                         ttl=self.config.limits.ttl, trace=msg.trace, attempt=msg.attempt,
                                         deadline=time.time() + DEFAULT_TASK_TIMEOUT_S))
        elif isinstance(msg, TaskResult):
            log.warning("result of %s could not return to %s: %s", msg.task_id, msg.entry, reason)
        else:
            log.warning("%s %s undeliverable: %s", type(msg).__name__, msg.hop_id, reason)

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
        qid = uuid.uuid4().hex[:16]
        send, recv = trio.open_memory_channel(1)
        self._queries[qid] = send
        try:
            for attempt in range(QUERY_ATTEMPTS):
                self._send_routed(TaskQuery(qid, self.me.name, entry, task_id, wait_s, self.config.limits.ttl,
                                            time.time() + wait_s + QUERY_TIMEOUT_S, attempt), entry)
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

    def _send_routed(self, msg: ModelFetch | ModelChunk | TaskQuery | TaskStatus, dst: str) -> None:
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

    # -- chaos ------------------------------------------------------------------------

    def apply_fault(self, spec: Any) -> tuple[dict[str, Any], bool]:
        """Validate, record and flood a fault; raises FaultError with the reason."""
        now = time.time()
        entry, changed = self.chaos.issue(spec, now, self.me.name)
        if changed:
            self._flood([entry], exclude=None)
        fault = next((f for f in self.chaos.listing(now) if f["id"] == entry.id), None)
        if fault is None:   # not applied: a removal newer than this clock is known (another node's clock)
            raise FaultConflict(f"fault {entry.id} was not applied: this node knows a newer removal of it; "
                                f"retry in a moment")
        return fault, changed

    def clear_fault(self, fid: str | None) -> list[str]:
        """Remove one fault (KeyError if unknown) or, with None, all of them."""
        now = time.time()
        tombs = self.chaos.remove_all(now, self.me.name) if fid is None else [self.chaos.remove(fid, now, self.me.name)]
        if tombs:
            self._flood(tombs, exclude=None)
        return [t.id for t in tombs]

    def _flood(self, entries: list[Entry], exclude: str | None) -> None:
        msg = ChaosUpdate(tuple(e.to_wire() for e in entries))
        for peer in self.links.links:
            if peer != exclude:
                self.links.send(peer, msg)

    def _on_chaos(self, msg: ChaosUpdate, from_node: str) -> None:
        news = []
        for raw in msg.entries:
            try:
                entry = Entry.from_wire(raw)
            except (FaultError, WireError) as exc:
                log.warning("bad chaos entry from %s: %s", from_node, exc)
                continue
            if self.chaos.merge(entry, now=time.time()):
                news.append(entry)
            elif self.chaos.last_refusal is not None:
                log.warning("chaos entry %s from %s refused: %s", entry.id, from_node, self.chaos.last_refusal)
        if news:
            self._flood(news, exclude=from_node)

    def _link_up(self, peer: str) -> None:
        self.membership.link_opened(peer)
        self._sync_chaos(peer)
        self.timekeeper.sync(peer)

    def _sync_chaos(self, peer: str) -> None:
        """A (re)connected neighbour gets the whole table: it may have missed floods."""
        entries = self.chaos.entries()
        if entries:
            self.links.send(peer, ChaosUpdate(tuple(e.to_wire() for e in entries)))

    # -- probes -----------------------------------------------------------------------

    def start_probe(self, peer: str, rate_hz: float, size: int, duration_s: float) -> dict[str, Any]:
        if peer not in self.links.links:
            raise SubmitError(404, f"{self.me.name} has no laser link to {peer!r}; its links: "
                                   f"{', '.join(sorted(self.links.links))}")
        if not 0 < rate_hz <= MAX_PROBE_RATE_HZ:
            raise SubmitError(400, f"rate_hz must be in (0, {MAX_PROBE_RATE_HZ}]")
        if not 0 <= size <= MAX_PROBE_BYTES:
            raise SubmitError(400, f"size must be in [0, {MAX_PROBE_BYTES}] bytes")
        if not 0 < duration_s <= MAX_PROBE_SECONDS:
            raise SubmitError(400, f"duration_s must be in (0, {MAX_PROBE_SECONDS}]")
        count = max(1, int(rate_hz * duration_s))
        assert self._nursery is not None
        self._nursery.start_soon(self._probe, peer, 1.0 / rate_hz, size, count)
        return {"peer": peer, "frames": count, "rate_hz": rate_hz, "size": size}

    async def _probe(self, peer: str, interval: float, size: int, count: int) -> None:
        padding = b"\0" * max(0, size - 30)  # ≈ size bytes on the wire with headers
        stats = self.links.links[peer].stats
        start = trio.current_time()
        for seq in range(count):
            await trio.sleep_until(start + seq * interval)
            stats.probes_sent += 1
            self.links.send(peer, Probe(seq, padding))

    async def _on_request(self, req: TaskRequest, arrived: float, expected: float, came_from: str | None,
                          event: str) -> None:
        if req.executor == self.me.name:
            assert self._nursery is not None
            self._nursery.start_soon(self._execute, req, arrived, expected, event)
            return
        hop = Hop(self.me.name, arrived, 0.0, event, expected)
        if event in ("entry", "retry"):
            self.relay.seen(req)
        problem = self._forward(req, req.executor, hop, came_from)
        if problem:
            self._send_result(TaskResult(req.task_id, req.entry, req.executor, ok=False, error=problem,
                                         ttl=self.config.limits.ttl, trace=req.trace + (hop,), attempt=req.attempt,
                                         deadline=req.deadline))

    async def _execute(self, req: TaskRequest, arrived: float, expected: float, event: str) -> None:
        state, cached = self.exec_cache.begin(req.task_id)
        if state == "running":
            return          # a retry overtook the first attempt; that one's result answers both
        if state == "done":
            self._send_result(replace(cached, attempt=req.attempt, trace=req.trace + (
                Hop(self.me.name, arrived, time.time(), "execute", expected, detail="repeat: answered from cache"),)))
            return
        rec = self.tasks.get(req.task_id) if req.entry == self.me.name else None
        if rec is not None:
            rec.status = "running"
        ok, outputs, error, compute = False, {}, "", 0.0
        try:
            self._check_power(req.model)
            if req.model_sha256 and not self.store.has_version(req.model, req.model_sha256):
                await self.fetcher.fetch(req.model, req.model_sha256, req.entry, req.deadline or time.time() + 60)
            key = self.store.key(req.model, req.model_sha256)    # the task's version, whatever the name means here
            model = self.store.get(key) if self.store.loaded(key) else \
                await trio.to_thread.run_sync(self.store.get, key)
            if req.scan is not None:        # a job chunk (agent/scan.py)
                stacked, state = scan_inputs(model, req.inputs, req.scan)
                result = await run_scan(model, stacked, state, req.scan,
                                        lambda feeds, left: self.executor.run(key, feeds, left), req.deadline)
            else:
                arrays = {}
                for spec in model.inputs:
                    if spec.name not in req.inputs:
                        raise InputError(f"input {spec.name!r} missing")
                    arr = req.inputs[spec.name].to_array()
                    if arr.dtype.name != spec.dtype:
                        raise InputError(f"input {spec.name!r}: dtype {arr.dtype.name}, model expects {spec.dtype}")
                    check_shape(arr, spec)
                    arrays[spec.name] = arr
                check_limits(req.model, arrays, model.manifest)
                # The task's own deadline, not the executor's default: a run past it is stopped there.
                result = await self.executor.run(key, arrays, req.deadline - time.time() if req.deadline else None)
            ok, compute = True, result.compute_s
            self._busy_s += compute
            self.compute_table.observe(self.me.name, req.model, compute / max(1, result.batch_size))
            self.metrics.inference_done(req.model, compute / max(1, result.batch_size))
            outputs = self._upset({k: np.asarray(v) for k, v in result.outputs.items()})
        except ExecutorBusy as exc:
            error = f"{self.me.name}: executor busy ({exc}); retry later"
        except (ModelError, InputError, LimitError, ExecutionError, PowerError) as exc:
            error = f"{self.me.name}: {exc}"
        batch = f", batch of {result.batch_size}" if ok and result.batch_size > 1 else ""
        if ok and req.scan is not None:
            batch = f", chunk of {req.scan.steps} inputs"
        hop = Hop(self.me.name, arrived, time.time(), "execute", expected,
                  detail=f"compute {compute * 1e3:.2f} ms{batch}" if ok else error)
        self.executed += 1
        res = TaskResult(req.task_id, req.entry, self.me.name, ok, outputs, error, self.config.limits.ttl,
                         req.trace + (hop,), compute, req.attempt, req.deadline)
        self.exec_cache.finish(req.task_id, res)
        self._send_result(res)

    def _upset(self, outputs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """The results as they leave; under a ``bitflip`` fault one bit of them flips at its rate,
        silently, as a radiation upset would (only replicas in majority can tell)."""
        rate = self.chaos.result_corruption(self.me.name, time.time())
        if rate and random.random() < rate:
            names = [k for k, v in outputs.items() if v.nbytes]
            if names:
                k = random.choice(names)
                flipped = np.array(outputs[k], copy=True)
                raw = flipped.reshape(-1).view(np.uint8)
                raw[random.randrange(raw.size)] ^= np.uint8(1 << random.randrange(8))
                outputs = {**outputs, k: flipped}
                self.upsets += 1
        return {k: Tensor.from_array(v) for k, v in outputs.items()}

    def _check_power(self, model: str) -> None:
        """In eclipse below the reserve, heavy work is refused: the bus needs the charge."""
        if self.battery is None or not self.battery.low():
            return
        expected = self.compute_table.get(self.me.name, model)
        if expected is None:
            expected = math.inf     # never measured here: assume the worst
        if not self.battery.accepts(expected):
            b = self.battery
            raise PowerError(f"battery at {b.fraction:.0%} in eclipse, below its {b.config.reserve:.0%} reserve: "
                             f"heavy work refused (expected {expected * 1e3:.0f} ms > {b.config.heavy_ms:g} ms)")

    def _send_result(self, res: TaskResult) -> None:
        """Send a result (its trace already ends with this node's hop) back to its entry node."""
        if res.entry == self.me.name:
            self._complete(res, time.time(), 0.0)
            return
        self.relay.seen(res)
        last = res.trace[-1] if res.trace and res.trace[-1].node == self.me.name else None
        trace = res.trace[:-1] if last else res.trace
        hop = last or Hop(self.me.name, time.time(), 0.0, "forward")
        problem = self._forward(replace(res, trace=trace), res.entry, hop, None)
        if problem:
            log.warning("result of %s cannot return to %s: %s", res.task_id, res.entry, problem)

    def _on_result(self, res: TaskResult, arrived: float, expected: float, came_from: str) -> None:
        if res.entry == self.me.name:
            self._complete(res, arrived, expected)
            return
        problem = self._forward(res, res.entry, Hop(self.me.name, arrived, 0.0, "forward", expected), came_from)
        if problem:
            log.warning("result of %s dropped at %s: %s", res.task_id, self.me.name, problem)

    def _forward(self, msg: TaskRequest | TaskResult, dst: str, hop: Hop, came_from: str | None) -> str:
        """Hand ``msg`` and this node's ``hop`` to the relay towards ``dst``; "" or why it cannot go.

        No route is not a failure here: the relay holds the frame until one appears.
        """
        problem = self.relay.send(msg, dst, came_from, hop)
        self._wake.set()
        return problem

    def _complete(self, res: TaskResult, arrived: float, expected: float) -> None:
        rec = self.tasks.get(res.task_id)
        if rec is None:
            log.warning("result for unknown task %s", res.task_id)
            return
        if not self.ledger.on_result(arrived, res.task_id) and rec.status in ("succeeded", "failed"):
            return      # a repeat (retried task whose first result also arrived)
        self._requests.pop(res.task_id, None)
        if self._in_flight.get(rec.executor):
            self._in_flight[rec.executor] -= 1
        if res.ok:
            if res.compute_s > 0 and rec.executor != self.me.name:
                self.compute_table.observe(rec.executor, rec.model, res.compute_s)
            self._out_bytes[rec.model] = sum(t.nbytes for t in res.outputs.values())
        hop = Hop(self.me.name, arrived, arrived, "deliver", expected)
        outputs = {k: t.to_array() for k, t in res.outputs.items()} if res.ok else None
        trace = res.trace + (hop,) if expected else res.trace
        self._finalize(rec, ok=res.ok, when=arrived, outputs=outputs, error=res.error, trace=trace,
                       compute_s=res.compute_s, result=replace(res, trace=trace))

    # -- views -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        t = self.orbit_t()
        snap = self.router.snapshot(t)
        up = dict(snap.neighbours(self.me.index))
        neighbours = []
        for name, link in sorted(self.links.links.items(), key=lambda kv: self.peers[kv[0]].index):
            idx = self.peers[name].index
            neighbours.append({
                "node": name, "peer_id": self.peers[name].peer_id, "link_up": link.up,
                "in_sight": idx in up,
                "latency_ms": self.topology.link_latency(self.me.index, idx, t) * 1e3,
            })
        if self.is_ground:
            view = self.topology.ground_view(self.me.index, t)
            orbit: dict[str, Any] = {"ground_station": True, "t_s": t,
                                     "serving": None if view.serving is None or view.serving < 0
                                     else self.topology.names.name(view.serving),
                                     "visible": len(view.visible), "handover": view.policy,
                                     "handovers": None if view.policy == "all" else self.count_handovers(time.time())}
        else:
            shell = self.constellation.shells[self.constellation.shell_of[self.me.index]]
            orbit = {"shell": shell.name, "plane": self.constellation.plane_of[self.me.index],
                     "slot": self.constellation.slot_of[self.me.index], "t_s": t,
                     "altitude_km": shell.altitude_km, "inclination_deg": shell.inclination_deg}
        return {
            "node": self.me.name, "index": self.me.index, "peer_id": self.me.peer_id,
            "kind": "ground" if self.is_ground else "satellite",
            "multiaddrs": self.host.listen_multiaddrs(),
            "orbit": orbit, "clock": self._clock_brief(),
            "position": self.position(), "neighbours": neighbours,
            "models": self.store.names(),
            "tasks": self.tasks.counts(), "uptime_s": time.time() - self.started,
            "incarnation": self.membership.m.incarnation, "members_alive": self.membership.alive_count(),
            "executed": self.executed,
            "energy": self.battery.describe() if self.battery is not None else None,
            "compute_ms": {m: round(s * 1e3, 3) for m, s in self.compute_table.of_node(self.me.name).items()},
            "sessions": self.store.memory(),
            "storage": self.storage(),
            "edge_cache": self.edge_cache.describe(),
            "results_corrupted": self.upsets,
        }

    def _clock_brief(self) -> dict[str, Any]:
        """The fleet clock as this node runs it (GET /v1/time has the whole record)."""
        scale, paused = self.timekeeper.timeline.speed(time.time())
        return {"scale": scale, "paused": paused}

    def storage(self) -> dict[str, Any]:
        """Recovery and integrity: what the journal recovered and quarantined, what the
        deadline backstop had to end, and the model store's retention and damage."""
        journal: dict[str, Any] | None = None
        if self.journal is not None:
            journal = {"recovered": self.recovered, "quarantined": self.journal.quarantined(),
                       "quarantined_since_start": self.journal.quarantined_now,
                       "set_aside": str(self.journal.set_aside) if self.journal.set_aside else None,
                       "quarantine": self.journal.quarantine_listing(10)}
        return {"journal": journal, "deadline_timer_failed": self.deadlines.fired, "models": self.store.storage()}

    def describe_membership(self) -> dict[str, Any]:
        out = self.membership.describe()
        out["delivery"] = {**self.relay.describe(), "tasks_in_flight": len(self.ledger),
                           "end_to_end_retries": self.ledger.retries, "duplicate_results": self.ledger.duplicates}
        return out

    def health(self) -> dict[str, Any]:
        links = self.links.links
        return {"status": "ok", "node": self.me.name, "links_up": sum(l.up for l in links.values()),
                "links_total": len(links), "ready": self.links.all_up(),
                "members_alive": self.membership.alive_count(), "members_total": len(self.peers.by_index)}

    def link_stats(self, samples: bool = False) -> list[dict[str, Any]]:
        out = []
        for n, link in sorted(self.links.links.items()):
            row = {"peer": n, "up": link.up, **link.stats.as_dict()}
            if samples:
                row["probe_errors_s"] = list(link.stats.probe_errors)
            out.append(row)
        return out


def data_paths(data_dir: Path) -> dict[str, Path]:
    return {"identity": Path(data_dir) / "identity.key"}
