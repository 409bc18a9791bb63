"""The mesh at an instant: which laser and ground links exist and what they cost.

Which satellite pairs may carry a laser link is :mod:`mesh.isl`: Hypatia's
+Grid within a shell (fixed), and optional links to the nearest satellites of
adjacent shells (re-chosen every ``inter_shell_interval_s``).  A laser link
exists only while its line of sight clears the grazing altitude and its range
is within the terminal's reach.

Ground stations are nodes ``n_sats + k``.  A ground link exists while the
satellite is above the station's elevation mask (and, if set, within
``ground_max_range_km``: Hypatia's distance form of the mask); under a
handover policy only the satellite the station is connected to counts (see
:class:`Topology`).
Latency is distance / c, exact at any t through :meth:`Topology.link_latency`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
# Imported up front (~0.3 s) on purpose: a lazy import would stall an agent's
# event loop the first time it routes a frame.
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from mesh.ground import DEFAULT_ELEVATION_MASK_DEG, GroundStation, StationSet
from mesh.handover import DEFAULT_HANDOVER_INTERVAL_S, HANDOVER_POLICIES, Handover  # noqa: F401 (re-exported)
from mesh.isl import (GRAZING_ALTITUDE_KM, LASER_TERMINALS, adjacent_shells, grid_pairs,  # noqa: F401 (re-exported)
                      inter_shell_pairs, nearest_pairs, segment_clearance_km)
from mesh.nodes import NodeNames
from mesh.orbit import EARTH_RADIUS_KM, SPEED_OF_LIGHT_KM_S, Constellation
from mesh.sky import SkyBuckets

# Two paths whose latencies differ by less than this are a tie (broken on
# the lower node index); it only absorbs float rounding of equal sums.
TIE_EPSILON_S = 1e-12
# Inter-shell terminals re-point at this period: slow enough for a laser to
# acquire (seconds), fast enough that a chosen pair stays close in its slot.
DEFAULT_INTER_SHELL_INTERVAL_S = 10.0


def latency_s(distance_km: float) -> float:
    return distance_km / SPEED_OF_LIGHT_KM_S


_EMPTY_PAIRS = np.empty((0, 2), dtype=np.int64)


@dataclass
class Snapshot:
    """The mesh at time ``t``: positions and the links that are up.

    Nodes ``0 .. n_sats-1`` are satellites, the rest ground stations;
    ``positions`` has a row per node.  Ground stations do not relay (a path
    may start or end at one but not pass through it) unless ``ground_relays``
    is set: then a path may go down to a station and up again (a bent pipe).
    """

    t: float
    positions: np.ndarray
    pairs: np.ndarray          # laser links that are up, (M, 2), a < b
    distance_km: np.ndarray    # per link in ``pairs``
    ground_pairs: np.ndarray = field(default_factory=lambda: _EMPTY_PAIRS)     # (G, 2): (ground node, sat)
    ground_distance_km: np.ndarray = field(default_factory=lambda: np.empty(0))
    ground_elevation_deg: np.ndarray = field(default_factory=lambda: np.empty(0))
    n_sats: int | None = None
    ground_relays: bool = False
    _csr: tuple | None = field(default=None, repr=False)
    _trees: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _pair_set: frozenset | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_sats is None:
            self.n_sats = len(self.positions)

    def pair_set(self) -> frozenset[tuple[int, int]]:
        """Every link up (laser and ground) as ``(a, b)``, ``a < b``; built once per snapshot, so
        nodes that share a world (a simulation, a satellite host) share it."""
        if self._pair_set is None:
            g, s = self.ground_pairs[:, 0], self.ground_pairs[:, 1]
            lo = np.concatenate([self.pairs[:, 0], np.minimum(g, s)]).tolist()
            hi = np.concatenate([self.pairs[:, 1], np.maximum(g, s)]).tolist()
            self._pair_set = frozenset(zip(lo, hi))     # built in C: a satellite host builds ~2 a second
        return self._pair_set

    @property
    def n_nodes(self) -> int:
        return len(self.positions)

    # -- graph ------------------------------------------------------------------

    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both directions of every link, sorted by (from, to): the CSR layout."""
        if self._csr is None:
            a = np.concatenate([self.pairs[:, 0], self.ground_pairs[:, 0]]).astype(np.int64)
            b = np.concatenate([self.pairs[:, 1], self.ground_pairs[:, 1]]).astype(np.int64)
            w = np.concatenate([self.distance_km, self.ground_distance_km]) / SPEED_OF_LIGHT_KM_S
            u, v, ww = np.r_[a, b], np.r_[b, a], np.r_[w, w]
            order = np.lexsort((v, u))
            u, v, ww = u[order], v[order], ww[order]
            indptr = np.searchsorted(u, np.arange(self.n_nodes + 1))
            self._csr = (u, v, ww, indptr)
        return self._csr[0], self._csr[1], self._csr[2]

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(from, to, latency s) of both directions of every link up, sorted by (from, to);
        built once per snapshot and shared by everyone who reads it (do not modify)."""
        return self._edges()

    def neighbours(self, i: int) -> list[tuple[int, float]]:
        """(neighbour, latency in s) of every link of ``i`` that is up, by neighbour index."""
        self._edges()
        _, v, w, indptr = self._csr  # type: ignore[misc]
        lo, hi = indptr[i], indptr[i + 1]
        return list(zip(v[lo:hi].tolist(), w[lo:hi].tolist()))

    def latency(self, a: int, b: int) -> float:
        for n, lat in self.neighbours(a):
            if n == b:
                return lat
        raise KeyError(f"no link {a}–{b} at t={self.t}")

    def _tree(self, dst: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latency to ``dst`` and next hop towards it, for every node.

        Dijkstra (scipy) from ``dst`` over reversed edges; an edge may enter a
        ground node only if that node is ``dst``, so stations never relay.
        The next hop of u is the lowest-index neighbour on a shortest path:
        a rule every agent applies to the same numbers, and loop-free since
        each hop strictly lowers the remaining latency.
        """
        n = self.n_nodes
        gs = self.n_sats
        # Links are symmetric and sorted by (u, v), so the reversed graph is the
        # same CSR with the rows of ground nodes other than dst left empty
        # (a reversed edge u→v is the real edge v→u, which may enter u only if
        # u is a satellite or dst).  Built from (data, indices, indptr)
        # directly: the COO constructor was most of a small graph's cost.
        rows = (u < gs) | (u == dst) | self.ground_relays
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(u[rows], minlength=n), out=indptr[1:])
        m = csr_matrix((np.maximum(w[rows], 1e-15), v[rows], indptr), shape=(n, n))
        dist = dijkstra(m, directed=True, indices=dst)
        allowed = (v < gs) | (v == dst) | self.ground_relays
        ok = allowed & (dist[v] + w <= dist[u] + TIE_EPSILON_S) & np.isfinite(dist[u])
        nxt = np.full(n, -1, dtype=np.int64)
        uu, vv = u[ok], v[ok]
        first_u, first = np.unique(uu, return_index=True)   # edges are sorted by (u, v): first = lowest v
        nxt[first_u] = vv[first]
        nxt[dst] = dst
        return dist, nxt

    def tree(self, dst: int) -> tuple[np.ndarray, np.ndarray]:
        """(latency to ``dst``, next hop) for every node; cached per destination."""
        hit = self._trees.get(dst)
        if hit is None:
            u, v, w = self._edges()
            hit = self._tree(dst, u, v, w)
            self._trees[dst] = hit
            if len(self._trees) > 256:
                self._trees.popitem(last=False)
        return hit

    def next_hop(self, here: int, dst: int) -> int | None:
        """The neighbour to hand a message for ``dst`` to, or None (unreachable or here)."""
        if here == dst:
            return None
        _, nxt = self.tree(dst)
        h = int(nxt[here])
        return None if h < 0 else h

    def shortest_path(
        self, src: int, dst: int, *, down_nodes: frozenset[int] = frozenset(),
        down_links: frozenset[tuple[int, int]] = frozenset(),
    ) -> tuple[list[int], float] | None:
        """Lowest-latency path, or None if ``dst`` is unreachable.

        Ties break on the lower node index so every agent picks the same
        path, and following :meth:`next_hop` from ``src`` walks exactly it.
        """
        if src == dst:
            return [src], 0.0
        u, v, w = self._edges()
        if down_nodes or down_links:
            keep = np.ones(len(u), dtype=bool)
            dead = np.array(sorted(set(down_nodes) - {src}), dtype=np.int64)
            if len(dead):
                keep &= ~np.isin(u, dead) & ~np.isin(v, dead)
            if down_links:
                n = self.n_nodes
                cut = np.array([min(x, y) * n + max(x, y) for x, y in down_links], dtype=np.int64)
                keep &= ~np.isin(np.minimum(u, v) * n + np.maximum(u, v), cut)
            u, v, w = u[keep], v[keep], w[keep]
            _, nxt = self._tree(dst, u, v, w)
        else:
            _, nxt = self.tree(dst)
        if nxt[src] < 0:
            return None
        path = [src]
        while path[-1] != dst:
            path.append(int(nxt[path[-1]]))
        cost = sum(self._weight(a, b) for a, b in zip(path, path[1:]))
        return path, cost

    def _weight(self, a: int, b: int) -> float:
        _, v, w, indptr = self._csr  # type: ignore[misc]
        lo, hi = indptr[a], indptr[a + 1]
        j = lo + int(np.searchsorted(v[lo:hi], b))
        return float(w[j])


@dataclass(frozen=True)
class Visible:
    """One satellite as a ground station sees it."""

    sat: int
    elevation_deg: float
    azimuth_deg: float
    range_km: float

    @property
    def latency_s(self) -> float:
        return self.range_km / SPEED_OF_LIGHT_KM_S


@dataclass(frozen=True)
class GroundView:
    """What station ``node`` sees at ``t`` and which satellite it is connected to."""

    node: int
    station: GroundStation
    t: float
    visible: tuple[Visible, ...]      # highest elevation first
    serving: int | None               # the handover policy's pick (None: nothing in view)
    policy: str
    slot: tuple[float, float]         # handover slot holding t: serving is fixed within it

    @property
    def linked(self) -> list[int]:
        """Satellites this station has a link to at ``t`` under the policy."""
        if self.policy == "all":
            return sorted(v.sat for v in self.visible)
        return [] if self.serving is None or all(v.sat != self.serving for v in self.visible) else [self.serving]


class Topology:
    """Computes mesh snapshots of one constellation and its ground stations.

    ``handover`` picks which satellites a station links to: ``all`` (every
    one above the mask), or one satellite per ``handover_interval_s`` slot
    under ``highest_elevation``, ``longest_visibility`` or ``sticky``; the
    choice is :class:`mesh.handover.Handover`'s, a pure function of t, so
    every agent agrees without talking.
    """

    def __init__(self, constellation: Constellation, *, max_range_km: float | None = None,
                 grazing_km: float = GRAZING_ALTITUDE_KM, stations: tuple[GroundStation, ...] | list[GroundStation] = (),
                 elevation_mask_deg: float = DEFAULT_ELEVATION_MASK_DEG, handover: str = "all",
                 handover_interval_s: float = DEFAULT_HANDOVER_INTERVAL_S,
                 ground_max_range_km: float | None = None, ground_relays: bool = False, inter_shell_links: int = 0,
                 inter_shell_interval_s: float = DEFAULT_INTER_SHELL_INTERVAL_S):
        if handover not in HANDOVER_POLICIES:
            raise ValueError(f"handover must be one of {HANDOVER_POLICIES}, not {handover!r}")
        if not 0.0 <= elevation_mask_deg < 90.0:
            raise ValueError(f"elevation_mask_deg must be in [0, 90), not {elevation_mask_deg}")
        if not handover_interval_s > 0:
            raise ValueError(f"handover_interval_s must be > 0, not {handover_interval_s}")
        if ground_max_range_km is not None and not ground_max_range_km > 0:
            raise ValueError(f"ground_max_range_km must be > 0, not {ground_max_range_km}")
        if not 0 <= inter_shell_links <= LASER_TERMINALS:
            raise ValueError(f"inter_shell_links must be in [0, {LASER_TERMINALS}], not {inter_shell_links}")
        if not inter_shell_interval_s > 0:
            raise ValueError(f"inter_shell_interval_s must be > 0, not {inter_shell_interval_s}")
        self.constellation = constellation
        self.max_range_km = max_range_km
        self.grazing_km = grazing_km
        self.candidates = grid_pairs(constellation, max_range_km=max_range_km, grazing_km=grazing_km)
        los = [constellation.shells[constellation.shell_of[int(a)]].line_of_sight for a in self.candidates[:, 0]]
        self._check_los = np.array(los, dtype=bool)
        self.n_sats = len(constellation)
        self.stations = StationSet(tuple(stations))
        self.names = NodeNames(self.n_sats, tuple(s.name for s in self.stations.stations))
        self.elevation_mask_deg = elevation_mask_deg
        self.handover = handover
        self.handover_interval_s = handover_interval_s
        self.handover_state = Handover(constellation, self.stations, policy=handover, interval_s=handover_interval_s,
                                       elevation_mask_deg=elevation_mask_deg, max_range_km=ground_max_range_km)
        self._sin_mask = math.sin(math.radians(elevation_mask_deg))
        self._gs_xyz = [(tuple(map(float, p)), tuple(map(float, u))) for p, u in zip(self.stations.pos, self.stations.up)]
        code = self.candidates[:, 0] * self.n_sats + self.candidates[:, 1]
        self._candidate_code = {int(c): j for j, c in enumerate(code.tolist())}
        self.ground_max_range_km = ground_max_range_km
        self.ground_relays = ground_relays
        self.inter_shell_links = inter_shell_links
        self.inter_shell_interval_s = inter_shell_interval_s
        self._adjacent = adjacent_shells(constellation) if inter_shell_links else []
        # slot -> (pairs, their codes a·n + b, each node's partners): the last for contacts_of, which
        # every satellite of a multi-shell fleet asks twice a second (a scan of every pair was O(n) a call)
        self._inter: OrderedDict[int, tuple[np.ndarray, set[int], dict[int, tuple[int, ...]]]] = OrderedDict()
        grid: list[list[int]] = [[] for _ in range(self.n_sats)]
        for a, b in self.candidates.tolist():
            grid[a].append(b)
            grid[b].append(a)
        self._grid = [tuple(sorted(g)) for g in grid]
        # Shared by every node of a process: see mesh.sky (positions per second, the sky's candidates).
        self.sky = SkyBuckets(constellation, self.stations, elevation_mask_deg, ground_max_range_km)

    @property
    def n_nodes(self) -> int:
        return self.n_sats + len(self.stations)

    # -- laser links --------------------------------------------------------------

    def _isl_up(self, pos: np.ndarray, pairs: np.ndarray, check_los: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = pos[pairs[:, 0]], pos[pairs[:, 1]]
        d = a - b
        dist = np.sqrt(np.einsum("ij,ij->i", d, d))
        up = np.ones(len(dist), dtype=bool)
        if check_los.any():
            up &= ~check_los | (segment_clearance_km(a, b) >= self.grazing_km)
        if self.max_range_km is not None:
            up &= dist <= self.max_range_km
        return up, dist

    def inter_shell_at(self, t: float) -> np.ndarray:
        """Inter-shell laser pairs (a < b) chosen for the slot holding ``t``; (0, 2) when off."""
        return self._inter_slot(math.floor(t / self.inter_shell_interval_s))[0]

    def _inter_slot(self, n: int) -> tuple[np.ndarray, set[int], dict[int, tuple[int, ...]]]:
        hit = self._inter.get(n)
        if hit is None:
            if not self._adjacent:
                pairs = np.empty((0, 2), dtype=np.int64)
            else:
                c = self.constellation
                pos = c.positions(n * self.inter_shell_interval_s)
                pairs = inter_shell_pairs(pos, c.shell_offset, [s.size for s in c.shells], self._adjacent,
                                          self.inter_shell_links, max_range_km=self.max_range_km,
                                          grazing_km=self.grazing_km)
            partners: dict[int, list[int]] = {}
            for a, b in pairs.tolist():
                partners.setdefault(a, []).append(b)
                partners.setdefault(b, []).append(a)
            hit = (pairs, set((pairs[:, 0] * self.n_sats + pairs[:, 1]).tolist()),
                   {k: tuple(v) for k, v in partners.items()})
            self._inter[n] = hit
            while len(self._inter) > 8:
                self._inter.popitem(last=False)
        else:
            self._inter.move_to_end(n)
        return hit

    def laser_pairs_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Every laser pair that may be up at ``t`` (+Grid, then inter-shell) and whether each needs the LOS check."""
        inter = self.inter_shell_at(t)
        if not len(inter):
            return self.candidates, self._check_los
        return np.vstack([self.candidates, inter]), np.r_[self._check_los, np.ones(len(inter), dtype=bool)]

    # -- ground links -------------------------------------------------------------

    def _ground_links(self, t: float, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(station k, sat, range km, elevation deg) of the ground links up at ``t``."""
        k, i, sin_e, rng = self._visible(pos)
        if self.handover != "all" and len(k):
            keep = self.serving(t)[k] == i
            k, i, sin_e, rng = k[keep], i[keep], sin_e[keep], rng[keep]
        return k, i, rng, np.degrees(np.arcsin(np.clip(sin_e, -1, 1)))

    def _visible(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.stations.visible(pos, self.elevation_mask_deg, self.ground_max_range_km)

    def slot_of(self, t: float) -> tuple[float, float]:
        """The handover slot [start, end) holding ``t``."""
        return self.handover_state.slot_of(t)

    def serving(self, t: float) -> np.ndarray:
        """Satellite each station is connected to in the slot holding ``t`` (−1: none in view)."""
        return self.handover_state.serving(t)

    def handovers(self, node: int, t0: float, t1: float) -> int:
        """Handovers station ``node`` makes in (t0, t1] under the policy (see :mod:`mesh.handover`)."""
        return self.handover_state.handovers(self.names.station_index(node), t0, t1)

    # -- snapshots ------------------------------------------------------------------

    def snapshot(self, t: float) -> Snapshot:
        """Positions and every link up at ``t`` (laser, then ground under the handover policy)."""
        pos = self.sky.positions(t)
        pairs, los = self.laser_pairs_at(t)
        up, dist = self._isl_up(pos, pairs, los)
        if len(self.stations):
            k, i, rng, el = self._ground_links(t, pos)
            gp = np.stack([k + self.n_sats, i], axis=1).astype(np.int64)
            allpos = np.vstack([pos, self.stations.pos])
            return Snapshot(t, allpos, pairs[up], dist[up], gp, rng, el, self.n_sats, self.ground_relays)
        return Snapshot(t, pos, pairs[up], dist[up], n_sats=self.n_sats)

    def neighbours_of(self, i: int) -> list[int]:
        """Every +Grid laser partner of satellite ``i``, whether or not the link is up now.

        Inter-shell and ground links come and go with the sky: see :meth:`ground_view`,
        :meth:`partners_of` and :meth:`contact_plan`.  Empty for a ground node.
        """
        return list(self._grid[i]) if 0 <= i < self.n_sats else []

    def node_position(self, i: int, t: float) -> np.ndarray:
        """Earth-fixed position (km) of any node at ``t``."""
        if i < self.n_sats:
            return self.constellation.position(i, t)
        return self.stations.pos[self.names.station_index(i)]

    def _xyz(self, i: int, t: float) -> tuple[float, float, float]:
        if i < self.n_sats:
            return self.constellation.position_xyz(i, t)
        return self._gs_xyz[self.names.station_index(i)][0]

    def link_latency(self, a: int, b: int, t: float) -> float:
        """Exact one-way propagation delay a→b at ``t`` (continuous in t); any two nodes.
        Plain floats: asked per frame sent."""
        (ax, ay, az), (bx, by, bz) = self._xyz(a, t), self._xyz(b, t)
        return latency_s(math.sqrt((ax - bx) ** 2 + (ay - by) ** 2 + (az - bz) ** 2))

    def link_up(self, a: int, b: int, t: float) -> bool:
        """Whether the link a–b exists at ``t``, by the same rules as :meth:`snapshot`.

        Plain-float arithmetic (a few µs), so contact-plan root finding can
        call it thousands of times.
        """
        if a > b:
            a, b = b, a
        if b >= self.n_sats:                      # ground link: a must be a satellite
            return a < self.n_sats and self._ground_up(self.names.station_index(b), a, t)
        j = self._candidate_code.get(a * self.n_sats + b)
        if j is None:
            if not self._adjacent or a * self.n_sats + b not in self._inter_slot(
                    math.floor(t / self.inter_shell_interval_s))[1]:
                return False
            check_los = True
        else:
            check_los = bool(self._check_los[j])
        ax, ay, az = self.constellation.position_xyz(a, t)
        bx, by, bz = self.constellation.position_xyz(b, t)
        dx, dy, dz = bx - ax, by - ay, bz - az
        dd = dx * dx + dy * dy + dz * dz
        if self.max_range_km is not None and math.sqrt(dd) > self.max_range_km:
            return False
        if check_los:
            u = min(1.0, max(0.0, -(ax * dx + ay * dy + az * dz) / dd)) if dd > 0 else 0.0
            cx, cy, cz = ax + u * dx, ay + u * dy, az + u * dz
            if math.sqrt(cx * cx + cy * cy + cz * cz) - EARTH_RADIUS_KM < self.grazing_km:
                return False
        return True

    def _ground_up(self, k: int, i: int, t: float) -> bool:
        sx, sy, sz = self.constellation.position_xyz(i, t)
        (gx, gy, gz), (ux, uy, uz) = self._gs_xyz[k]
        dx, dy, dz = sx - gx, sy - gy, sz - gz
        height = ux * dx + uy * dy + uz * dz
        if not (height > 0 and height >= self._sin_mask * math.sqrt(dx * dx + dy * dy + dz * dz)):
            return False
        if self.ground_max_range_km is not None and dx * dx + dy * dy + dz * dz > self.ground_max_range_km ** 2:
            return False
        return self.handover == "all" or int(self.serving(t)[k]) == i

    def ground_view(self, node: int, t: float) -> GroundView:
        """Every satellite station ``node`` sees at ``t`` and the one it is connected to."""
        k = self.names.station_index(node)
        pos = self.constellation.positions(t)
        kk, ii, _, _ = self._visible(pos)
        sats = ii[kk == k]
        el, az, rng = self.stations.look(k, pos[sats]) if len(sats) else (np.empty(0),) * 3
        order = np.lexsort((sats, -el))
        vis = tuple(Visible(int(sats[j]), float(el[j]), float(az[j]), float(rng[j])) for j in order)
        if self.handover == "all":
            serving = vis[0].sat if vis else None
        else:
            s = int(self.serving(t)[k])
            serving = None if s < 0 else s
        return GroundView(node, self.stations.stations[k], t, vis, serving, self.handover, self.slot_of(t))

    def partners_of(self, i: int, t: float) -> list[int]:
        """Nodes ``i`` has a link to at ``t`` (laser and ground), by index."""
        if i >= self.n_sats:
            return self.contacts_of(i, t)
        return sorted([j for j in self.neighbours_of(i) if self.link_up(i, j, t)] + self.contacts_of(i, t))

    def ground_quiet_s(self, i: int, t: float) -> float:
        """Seconds from ``t`` during which satellite ``i`` can gain no contact (``contacts_of``
        stays empty); 0.0 for a station, and where inter-shell links come and go (those
        need a look each time)."""
        if i >= self.n_sats or self._adjacent:
            return 0.0
        return self.stations.quiet_s(self.constellation.position_xyz(i, t), self.elevation_mask_deg)

    def contacts_of(self, i: int, t: float) -> list[int]:
        """The links of ``i`` at ``t`` that come and go with the sky: ground links (under the
        handover policy) and inter-shell laser links, by index; every link of a station.

        Exact at ``t``: only the pairs ``mesh.sky`` finds possible in ``t``'s second are
        checked (plain floats), so a node asks this often without a K×N product each time."""
        if i >= self.n_sats:
            k = self.names.station_index(i)
            return [s for s in self.sky.sats_near(k, t) if self._ground_up(k, s, t)]
        out = []
        if self._adjacent:
            mine = self._inter_slot(math.floor(t / self.inter_shell_interval_s))[2].get(i, ())
            out = [j for j in mine if self.link_up(i, j, t)]
        if len(self.stations):
            out += [k + self.n_sats for k in self.sky.stations_near(i, t) if self._ground_up(k, i, t)]
        return sorted(out)
