"""The laser mesh at an instant: which +Grid links exist and what they cost.

+Grid gives each satellite four laser terminals: fore and aft in its own
plane, and one to each adjacent plane (same slot; across the seam of a delta
shell the slot shifts by the phasing F so the neighbour is still beside it).
A link exists only while its line of sight clears the grazing altitude and its
range is within the terminal's reach.  Latency is distance / c.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from mesh.orbit import EARTH_RADIUS_KM, SPEED_OF_LIGHT_KM_S, Constellation

GRAZING_ALTITUDE_KM = 80.0  # below this the beam crosses too much atmosphere


def grid_pairs(constellation: Constellation) -> np.ndarray:
    """Every candidate +Grid link as sorted index pairs, shape (M, 2)."""
    pairs: set[tuple[int, int]] = set()
    for si, shell in enumerate(constellation.shells):
        base = constellation.shell_offset[si]
        P, S = shell.planes, shell.sats_per_plane

        def idx(p: int, s: int) -> int:
            return base + p * S + (s % S)

        for p in range(P):
            for s in range(S):
                if S >= 2:
                    pairs.add(tuple(sorted((idx(p, s), idx(p, s + 1)))))
                if p + 1 < P:
                    pairs.add(tuple(sorted((idx(p, s), idx(p + 1, s)))))
                elif shell.kind == "delta" and P > 2:
                    # Across the seam plane P-1 meets plane 0 shifted by F slots.
                    pairs.add(tuple(sorted((idx(p, s), idx(0, s + shell.phasing)))))
        # P == 2 delta: the seam neighbour is the other plane again; the
        # in-plane-sequence link already covers it, so no seam pairs.
    pairs.discard(tuple())  # type: ignore[arg-type]
    arr = np.array(sorted(p for p in pairs if p[0] != p[1]), dtype=np.int64)
    return arr.reshape(-1, 2)


def segment_clearance_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lowest altitude above a spherical Earth along each segment a→b."""
    d = b - a
    dd = np.einsum("ij,ij->i", d, d)
    u = np.clip(-np.einsum("ij,ij->i", a, d) / np.where(dd == 0, 1.0, dd), 0.0, 1.0)
    closest = a + u[:, None] * d
    return np.linalg.norm(closest, axis=1) - EARTH_RADIUS_KM


def latency_s(distance_km: float) -> float:
    return distance_km / SPEED_OF_LIGHT_KM_S


@dataclass
class Snapshot:
    """The mesh at time ``t``: positions and the links that are up."""

    t: float
    positions: np.ndarray
    pairs: np.ndarray          # links that are up, (M, 2)
    distance_km: np.ndarray    # per link in ``pairs``
    _adj: list[list[tuple[int, float]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._adj = [[] for _ in range(len(self.positions))]
        for (a, b), d in zip(self.pairs.tolist(), self.distance_km.tolist()):
            lat = latency_s(d)
            self._adj[a].append((b, lat))
            self._adj[b].append((a, lat))

    def neighbours(self, i: int) -> list[tuple[int, float]]:
        """(neighbour, latency in s) of every link of ``i`` that is up."""
        return list(self._adj[i])

    def latency(self, a: int, b: int) -> float:
        for n, lat in self._adj[a]:
            if n == b:
                return lat
        raise KeyError(f"no link {a}–{b} at t={self.t}")

    def shortest_path(
        self, src: int, dst: int, *, down_nodes: frozenset[int] = frozenset(),
        down_links: frozenset[tuple[int, int]] = frozenset(),
    ) -> tuple[list[int], float] | None:
        """Lowest-latency path (Dijkstra), or None if ``dst`` is unreachable.

        Ties break on the lower node index so every agent picks the same path.
        """
        if src == dst:
            return [src], 0.0
        dist = {src: 0.0}
        prev: dict[int, int] = {}
        heap = [(0.0, src)]
        while heap:
            d, u = heapq.heappop(heap)
            if u == dst:
                break
            if d > dist.get(u, float("inf")):
                continue
            for v, lat in self._adj[u]:
                if v in down_nodes or (min(u, v), max(u, v)) in down_links:
                    continue
                nd = d + lat
                if nd < dist.get(v, float("inf")) or (nd == dist.get(v) and u < prev.get(v, u + 1)):
                    dist[v] = nd
                    prev[v] = u
                    heapq.heappush(heap, (nd, v))
        if dst not in dist:
            return None
        path = [dst]
        while path[-1] != src:
            path.append(prev[path[-1]])
        return path[::-1], dist[dst]


class Topology:
    """Computes mesh snapshots of one constellation; candidate pairs are cached."""

    def __init__(self, constellation: Constellation, *, max_range_km: float | None = None,
                 grazing_km: float = GRAZING_ALTITUDE_KM):
        self.constellation = constellation
        self.candidates = grid_pairs(constellation)
        self.max_range_km = max_range_km
        self.grazing_km = grazing_km
        los = [constellation.shells[constellation.shell_of[int(a)]].line_of_sight for a in self.candidates[:, 0]]
        self._check_los = np.array(los, dtype=bool)

    def snapshot(self, t: float) -> Snapshot:
        pos = self.constellation.positions(t)
        a, b = pos[self.candidates[:, 0]], pos[self.candidates[:, 1]]
        dist = np.linalg.norm(a - b, axis=1)
        up = np.ones(len(dist), dtype=bool)
        if self._check_los.any():
            up &= ~self._check_los | (segment_clearance_km(a, b) >= self.grazing_km)
        if self.max_range_km is not None:
            up &= dist <= self.max_range_km
        return Snapshot(t, pos, self.candidates[up], dist[up])

    def neighbours_of(self, i: int) -> list[int]:
        """Every +Grid partner of ``i``, whether or not the link is up now."""
        mask = (self.candidates[:, 0] == i) | (self.candidates[:, 1] == i)
        return sorted(int(x) for x in self.candidates[mask].ravel() if x != i)

    def link_latency(self, a: int, b: int, t: float) -> float:
        """Exact one-way propagation delay a→b at ``t`` (continuous in t)."""
        c = self.constellation
        return latency_s(float(np.linalg.norm(c.position(a, t) - c.position(b, t))))
