"""Ground-station handover: which satellite each station is connected to, slot by slot.

One implementation for every user: :class:`mesh.topology.Topology` asks it
for ground links, so the live fleet (an agent's ground links and its
handover count), ``orbitmesh topo`` and contact plans all follow the same
choice.

A station decides at the start of each ``interval_s`` slot of orbital time
(Starlink re-assigns terminals on a global 15 s schedule) and keeps the
choice for the whole slot.  Candidates are the satellites that stay above the
mask through the whole slot; a station that has none takes what is there now.
The policies differ in *when* they hand over and *whom* they pick:

======================  ==========================================  =====================================
policy                  hands over                                  picks
======================  ==========================================  =====================================
``highest_elevation``   every slot where another satellite is       the highest satellite
                        higher
``longest_visibility``  only when its satellite would set           the satellite that stays in view the
                        within the slot                             longest (set times to 10 s)
``sticky``              only when its satellite would set           the highest satellite
                        within the slot
======================  ==========================================  =====================================

``all`` links a station to every satellite in view (no handovers).  Every
choice is a pure function of t, so every agent derives the same one without
talking: the two policies that keep a satellite walk a chain of slots that
restarts every ``ANCHOR_SLOTS`` slots, each time after ``ANCHOR_SLOTS`` slots
of warm-up, so a restart continues the uninterrupted chain wherever the
two have met again within the warm-up (they meet at the first handover both
make in the same slot).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from mesh.ground import StationSet
from mesh.orbit import Constellation

HANDOVER_POLICIES = ("all", "highest_elevation", "longest_visibility", "sticky")
# Policies that keep their satellite until it is lost (chained from slot to slot).
KEEPING = ("longest_visibility", "sticky")
# Starlink re-assigns user terminals to satellites on a global 15 s schedule;
# a fixed schedule also lets every agent derive the same assignment from t alone.
DEFAULT_HANDOVER_INTERVAL_S = 15.0
# Keeping chains restart every 40 slots (10 min at 15 s), after as many slots of
# warm-up: longer than any LEO pass above a 25° mask, short enough to compute cold.
ANCHOR_SLOTS = 40


class Handover:
    """The serving satellite of every station, per slot, under one policy."""

    def __init__(self, constellation: Constellation, stations: StationSet, *, policy: str = "all",
                 interval_s: float = DEFAULT_HANDOVER_INTERVAL_S, elevation_mask_deg: float = 25.0,
                 max_range_km: float | None = None):
        if policy not in HANDOVER_POLICIES:
            raise ValueError(f"handover must be one of {HANDOVER_POLICIES}, not {policy!r}")
        if not interval_s > 0:
            raise ValueError(f"handover_interval_s must be > 0, not {interval_s}")
        self.constellation = constellation
        self.stations = stations
        self.policy = policy
        self.interval_s = interval_s
        self.elevation_mask_deg = elevation_mask_deg
        self.max_range_km = max_range_km
        self._slots: OrderedDict[int, np.ndarray] = OrderedDict()     # canonical choice per slot
        self._seeds: OrderedDict[int, np.ndarray] = OrderedDict()     # warm-up result per anchor
        # who is in view at slot boundary n: slot n's end is slot n+1's start, so a chain
        # of slots propagates each boundary once, not twice; an anchor's warm-up walks the
        # ANCHOR_SLOTS boundaries the chain has just passed, so they are kept too
        self._bounds: OrderedDict[int, tuple] = OrderedDict()

    def _visible(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.stations.visible(pos, self.elevation_mask_deg, self.max_range_km)

    def _in_view_at(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The visible pairs at the start of slot ``n`` (cached: a pure function of n)."""
        hit = self._bounds.get(n)
        if hit is None:
            pos = self.constellation.positions_at(np.array([n * self.interval_s]))
            hit = self._visible(pos[:, 0, :])
            self._remember(self._bounds, n, hit, 2 * ANCHOR_SLOTS + 2)
        return hit

    def slot_of(self, t: float) -> tuple[float, float]:
        """The slot [start, end) holding ``t``: the choice is fixed within it."""
        n = math.floor(t / self.interval_s)
        return n * self.interval_s, (n + 1) * self.interval_s

    def serving(self, t: float) -> np.ndarray:
        """Satellite each station is connected to in the slot holding ``t`` (−1: none in view).

        Under ``all`` this is the highest satellite at the slot's start (a
        station links to every satellite in view regardless).
        """
        return self.slot(math.floor(t / self.interval_s))

    def handovers(self, k: int, t0: float, t1: float) -> int:
        """How many times station ``k`` moves from one satellite to another in (t0, t1].

        A change at a slot boundary counts when a satellite served before it
        and a different one after it; a gap with nothing in view is not a
        handover, nor is ``all`` (no single serving satellite).
        """
        if self.policy == "all" or t1 <= t0:
            return 0
        h = self.interval_s
        first, last = math.floor(t0 / h) + 1, math.floor(t1 / h)
        count = 0
        if first <= last:
            prev = int(self.slot(first - 1)[k])
            for n in range(first, last + 1):
                cur = int(self.slot(n)[k])
                count += prev >= 0 and cur >= 0 and cur != prev
                prev = cur
        return count

    # -- the chain --------------------------------------------------------------------

    def slot(self, n: int) -> np.ndarray:
        """The choice for slot ``n`` (cached; a pure function of n)."""
        hit = self._slots.get(n)
        if hit is not None:
            self._slots.move_to_end(n)
            return hit
        if self.policy not in KEEPING:
            hit = self._choose(n, None)
        else:
            anchor = n - n % ANCHOR_SLOTS
            m = n - 1
            while m >= anchor and m not in self._slots:
                m -= 1
            prev = self._slots[m] if m >= anchor else self._seed(anchor)
            for j in range(max(m, anchor - 1) + 1, n + 1):
                prev = self._choose(j, prev)
                self._remember(self._slots, j, prev, 2 * ANCHOR_SLOTS)
            hit = prev
        self._remember(self._slots, n, hit, 2 * ANCHOR_SLOTS)
        return hit

    def _seed(self, anchor: int) -> np.ndarray:
        """Where a chain started cold ``ANCHOR_SLOTS`` slots before ``anchor`` stands at anchor − 1."""
        hit = self._seeds.get(anchor)
        if hit is None:
            hit = None
            for j in range(anchor - ANCHOR_SLOTS, anchor):
                hit = self._choose(j, hit)
            self._remember(self._seeds, anchor, hit, 4)
        return hit

    @staticmethod
    def _remember(cache: OrderedDict, n: int, value: np.ndarray, bound: int) -> None:
        cache[n] = value
        cache.move_to_end(n)
        while len(cache) > bound:
            cache.popitem(last=False)

    def _choose(self, n: int, prev: np.ndarray | None) -> np.ndarray:
        """The pick for slot n, keeping ``prev``'s satellite where it stays in view all slot."""
        te = (n + 1) * self.interval_s
        K, N = len(self.stations), len(self.constellation)
        out = np.full(K, -1, dtype=np.int64)
        if K == 0:
            return out
        k0, i0, s0, _ = self._in_view_at(n)
        k1, i1, _, _ = self._in_view_at(n + 1)
        if not len(k0):
            return out
        stays = np.isin(k0 * N + i0, k1 * N + i1)
        if prev is not None:
            kept = stays & (prev[k0] == i0)
            out[k0[kept]] = i0[kept]
            todo = out[k0] < 0
            k0, i0, s0, stays = k0[todo], i0[todo], s0[todo], stays[todo]
            if not len(k0):
                return out
        # prefer satellites that stay in view all slot; stations with none take what is there now
        has_stayer = np.zeros(K, dtype=bool)
        has_stayer[k0[stays]] = True
        cand = stays | ~has_stayer[k0]
        k, i, s = k0[cand], i0[cand], s0[cand]
        if self.policy == "longest_visibility":
            score = self._set_times(te, k, i) + 1e-6 * s   # latest set time; elevation breaks ties
        else:
            score = s
        order = np.lexsort((i, -score, k))                   # per station: best score, then lowest index
        k, i = k[order], i[order]
        first_k, first = np.unique(k, return_index=True)
        out[first_k] = i[first]
        return out

    def _set_times(self, t_from: float, k: np.ndarray, i: np.ndarray, step_s: float = 10.0,
                   horizon_s: float = 7200.0) -> np.ndarray:
        """When each (station, satellite) pair drops below the mask, to ``step_s`` (capped at the horizon)."""
        out = np.full(len(k), t_from + horizon_s)
        alive = np.ones(len(k), dtype=bool)
        sin_m = math.sin(math.radians(self.elevation_mask_deg))
        chunk = 12
        t = t_from
        while alive.any() and t < t_from + horizon_s:
            times = t + step_s * np.arange(1, chunk + 1)
            live_sats = np.unique(i[alive])
            pos = self.constellation.positions_at(times, live_sats)          # (s, T, 3)
            rows = np.searchsorted(live_sats, i)
            for j, tt in enumerate(times):
                idx = np.nonzero(alive)[0]
                d = pos[rows[idx], j, :] - self.stations.pos[k[idx]]
                h = np.einsum("ij,ij->i", d, self.stations.up[k[idx]])
                rng = np.sqrt(np.einsum("ij,ij->i", d, d))
                gone = h < sin_m * rng
                if self.max_range_km is not None:
                    gone |= rng > self.max_range_km
                out[idx[gone]] = tt
                alive[idx[gone]] = False
            t = float(times[-1])
        return out
