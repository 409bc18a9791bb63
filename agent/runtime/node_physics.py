"""The node's physics: orbital time, link delays and profiles, which links are up or
expected down, and route warming. Every agent computes these by itself from the
shared config (``mesh.world``), so these methods only read; the node owns the state.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Generator
from weakref import WeakKeyDictionary

import trio

from agent import wallclock
from agent.runtime.periodic import process_periodic
from agent.runtime.relay import LinkState
from mesh.chaos import Topo
from mesh.link import LinkProfile

if TYPE_CHECKING:
    from agent.runtime.membership import MembershipService
    from agent.links.peers import NodeIdentity, Peers
    from agent.runtime.relay import Relay
    from agent.runtime.timekeeper import Timekeeper
    from mesh.chaos import FaultTable
    from mesh.healing import HealingRouter
    from mesh.orbit import Constellation
    from mesh.routing import Router
    from mesh.topology import Topology
    from mesh.world import World

CLOSING_LOOKAHEAD_S = 1.0       # a link physics closes within this is "expected down", not a failure
PREWARM_EVERY_S = 0.25
PREWARM_MAX_NAP_S = 1.0         # the longest sleep between looks at the fleet's clock
PREWARM_AHEAD_S = 0.6           # warm routes for the snapshot this far ahead
PREWARM_MAX_RATE = 4.0          # orbital seconds per wall second beyond which warming cannot keep up
OPENING_SETTLE_S = 3.0          # a ground contact younger than this is not probed yet (the link is being opened)
# A warm computes this process's neighbours' tables with ours while its Dijkstra sources × nodes
# stay within this: ~30 sources, ~5 ms, at 1,584 satellites; every node of a 198-node process.
PREWARM_MAX_WORK = 50_000
# A node warms its routes ahead only while it routes frames: within this long of its last one.
PREWARM_WHILE_ROUTING_S = 30.0
WARM_WHEN_VIRTUAL = False       # warm routes under a virtual clock too (tests of the warming)


# healing router -> indices of the nodes warming routes on it: the nodes of one process
_WARMING: WeakKeyDictionary = WeakKeyDictionary()
# router -> the last step whose snapshots a node of this process warmed
_STEPPED: WeakKeyDictionary = WeakKeyDictionary()


_TOPOS: WeakKeyDictionary = WeakKeyDictionary()     # topology -> {peers -> Topo}


def chaos_topo(topology: "Topology", constellation: "Constellation", peers: "Peers") -> Topo:
    """The fleet as fault validation sees it: names, laser links, planes.  Built once per
    (topology, peers) and shared by the nodes of a process that share both (a satellite host,
    a simulation): ~1 MB per node at starlink-s1's size (bench/sat_memory.py)."""
    per_peers = _TOPOS.setdefault(topology, WeakKeyDictionary())
    topo = per_peers.get(peers)
    if topo is None:
        names = {i: e.name for i, e in peers.by_index.items()}
        links = frozenset(frozenset((names[int(a)], names[int(b)])) for a, b in topology.candidates.tolist()
                          if int(a) in names and int(b) in names)
        planes = {n: (constellation.shell_of[i], constellation.plane_of[i]) for i, n in names.items()
                  if i < len(constellation)}
        topo = per_peers[peers] = Topo(frozenset(names.values()), links, planes)
    return topo


class NodePhysics:
    """Mixin of ``agent.runtime.node.Node``; what it reads of the node:"""
    me: NodeIdentity
    peers: Peers
    world: World
    constellation: Constellation
    topology: Topology
    router: Router
    healing: HealingRouter
    timekeeper: Timekeeper
    chaos: FaultTable
    base_profile: LinkProfile
    membership: MembershipService
    relay: Relay
    _cut_cache: tuple[float, frozenset[tuple[int, int]]]
    _pairs_cache: dict[float, frozenset[tuple[int, int]]]
    _down_memo: tuple[tuple[float, int] | None, frozenset[tuple[int, int]], frozenset[tuple[int, int]]]
    _wake: trio.Event

    # -- physics ---------------------------------------------------------------

    def orbit_t(self, wall: float | None = None) -> float:
        """Orbital time at ``wall`` on the fleet's clock (``agent.runtime.timekeeper``): everything
        physics decides here (links, delays, handovers, positions, sunlight) reads it."""
        return self.timekeeper.orbit_t(wallclock.now() if wall is None else wall)

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
        contact physics closes within a second, or a ground contact still opening.

        Membership asks it for every neighbour at one ``now``: the sets are looked up once per ``now``
        (and once more if a clock switch arrived meanwhile: orbital time at ``now`` may differ)."""
        at = (now, self.timekeeper.timeline.merged)
        memo = self._down_memo
        if memo[0] != at:
            memo = self._down_memo = (at, self._cut_links(now), self._pairs_up(now + CLOSING_LOOKAHEAD_S))
        pair = (a, b) if a < b else (b, a)
        if pair in memo[1] or pair not in memo[2]:
            return True
        names = self.topology.names
        if names.is_ground(a) or names.is_ground(b):
            return pair not in self._pairs_up(now - OPENING_SETTLE_S)
        return False

    def _pairs_up(self, wall: float) -> frozenset[tuple[int, int]]:
        """Links (laser and ground) physics has up at ``wall``, from the shared snapshot."""
        snap = self.router.snapshot(self.orbit_t(wall))
        hit = self._pairs_cache.get(snap.t)
        if hit is None:
            hit = snap.pair_set()
            if len(self._pairs_cache) >= 8:
                self._pairs_cache.pop(next(iter(self._pairs_cache)))
            self._pairs_cache[snap.t] = hit
        return hit

    async def _prewarm_routes(self) -> None:
        """Compute the next snapshot, this node's next hops (while it routes frames:
        ``PREWARM_WHILE_ROUTING_S``) and what membership will ask of it before they are needed,
        so that forwarding and probing find them cached.

        Each agent warms at its own random point of the step: every agent needs
        the same new snapshot at the same instant, and computing it there would
        stall the whole fleet's event loops together (2 cores, 24 agents).  The looks
        are one-shot timers on the process's chore heap (``agent.runtime.periodic``), not a
        task that sleeps: a task's wake-up per node per second was most of the warm's cost
        once the warm itself was shared.

        Under a virtual clock (the simulator, in-process tests) nothing is warmed: computing takes
        no simulated time there (``wallclock.off_loop``), so warming ahead buys no latency, and a
        frame that needs a route computes it at once, the same route from the same snapshot and
        view (caches are keyed by both).  At starlink-s1's size warming was ~11% of the
        simulation's CPU.  ``WARM_WHEN_VIRTUAL`` turns it on (the warming's own tests)."""
        if wallclock.is_virtual() and not WARM_WHEN_VIRTUAL:
            await trio.sleep_forever()
        periodic = process_periodic()
        ahead_s = random.uniform(PREWARM_AHEAD_S / 2, PREWARM_AHEAD_S * 1.5)
        local = _WARMING.setdefault(self.healing, set())
        state: dict = {"warmed": None}

        def look() -> None:
            steps = self._prewarm_steps(state, ahead_s, local)
            go_on(steps)

        def go_on(steps) -> None:
            try:
                next(steps)          # a piece done: the rest after what else is due (a frame)
                state["timer"] = periodic.at(wallclock.now(), lambda: go_on(steps))
            except StopIteration as done:
                state["timer"] = periodic.at(wallclock.now() + done.value, look)
            except Exception:
                state["timer"] = periodic.at(wallclock.now() + PREWARM_MAX_NAP_S, look)
                raise         # the heap logs it; warming goes on

        state["timer"] = periodic.at(wallclock.now() + PREWARM_EVERY_S * random.uniform(0.5, 1.5), look)
        try:
            await trio.sleep_forever()
        finally:
            state["timer"].cancel()
            local.discard(self.me.index)

    def _prewarm_steps(self, state: dict, ahead_s: float, local: set[int]) -> Generator[None, None, float]:
        """One look (a generator: it pauses between pieces); returns how long until the next."""
        ahead = wallclock.now() + ahead_s
        t = self.orbit_t(ahead)
        key = math.floor(t / self.router.step_s)
        rate = self.orbit_t(ahead + 1.0) - t
        # Look again when the next step comes within ``ahead_s`` (not a fixed poll: four wake-ups a
        # second per node were a sixth of an idle satellite's timers), but at most
        # PREWARM_MAX_NAP_S, so that a change of the fleet's clock is followed soon.
        to_next = ((key + 1) * self.router.step_s - t) / rate if rate > 0 else PREWARM_MAX_NAP_S
        nap = min(PREWARM_MAX_NAP_S, max(PREWARM_EVERY_S / 4, to_next))
        if key == state["warmed"] or rate > PREWARM_MAX_RATE:
            return nap        # done already, or the clock runs so fast that steps outpace warming
        state["warmed"] = key
        # The first node of the process to reach a step builds its snapshots: a pause between
        # the pieces then; the others find them built, and pausing would only cost wake-ups.
        first = _STEPPED.get(self.router) != key
        _STEPPED[self.router] = key
        self._pairs_up(ahead)
        if first:
            yield
        self._pairs_up(ahead + CLOSING_LOOKAHEAD_S)      # membership's "closing soon" check
        if first:
            yield
        # Only a node that routes frames has its routes warmed: an idle satellite's table was
        # recomputed every step (1 s) for nobody (at starlink-s1 half of an idle host's busy samples).
        # The first frame after a quiet spell computes the table then, as the simulator does.
        if wallclock.now() - self.relay.fwd.decided_at > PREWARM_WHILE_ROUTING_S:
            local.discard(self.me.index)
            return nap
        local.add(self.me.index)
        down = self.membership.down_links() | self._cut_links(wallclock.now())
        dead = self.membership.dead_nodes()
        # Our own hops, and those of this process's nodes nearest us that have none for this
        # view yet (neighbours share Dijkstra sources): each finds its own there.
        self.healing.warm_from(self.me.index, t, down_nodes=dead, down_links=down, also=local,
                               max_sources=max(4, PREWARM_MAX_WORK // self.topology.n_nodes))
        return nap

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

    def sunlit_of(self, name: str) -> bool | None:
        """Whether satellite ``name`` is in sunlight now, from the ephemeris every node shares
        (None: a station, on the grid).  Read here, not gossiped: at starlink-s1 every eclipse
        edge was a state record to every node, ~0.56 a second per node."""
        i = self.peers[name].index
        lit = self.world.sunlit(self.orbit_t())
        return lit[i] if i < len(lit) else None

    def _in_sight(self, peer: str, now: float) -> bool:
        """Whether physics has this link up now (line of sight, range): asked per frame sent."""
        a, b = self.me.index, self.peers[peer].index
        return ((a, b) if a < b else (b, a)) in self._pairs_up(now)

    def _chaos_topo(self) -> Topo:
        return chaos_topo(self.topology, self.constellation, self.peers)

    def position(self) -> dict[str, float]:
        x, y, z = (float(v) for v in self.topology.node_position(self.me.index, self.orbit_t()))
        r = math.sqrt(x * x + y * y + z * z)
        return {"x_km": x, "y_km": y, "z_km": z, "lat_deg": math.degrees(math.asin(z / r)),
                "lon_deg": math.degrees(math.atan2(y, x)), "radius_km": r}
