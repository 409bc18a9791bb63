"""Next hop towards a node, from the physics every agent shares.

All agents compute the same snapshot for the same orbital time, so hop-by-hop
forwarding follows one shortest-latency path: every node reads its next hop
from the same shortest-path tree rooted at the destination
(``Snapshot.next_hop``), so the hops walk exactly ``path(src, dst)``.  Snapshots are cached per
``step_s`` of orbital time: a 550 km satellite moves ~7.6 km in a second,
changing a link's latency by < 30 µs, well below what routing must resolve.
"""

from __future__ import annotations

import math

from mesh.topology import Snapshot, Topology


class Router:
    def __init__(self, topology: Topology, *, step_s: float = 1.0, cache_size: int = 4):
        self.topology = topology
        self.step_s = step_s
        self._cache: dict[float, Snapshot] = {}
        self._cache_size = cache_size

    def snapshot(self, t: float) -> Snapshot:
        key = math.floor(t / self.step_s) * self.step_s
        snap = self._cache.get(key)
        if snap is None:
            snap = self.topology.snapshot(key)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = snap
        return snap

    def path(self, src: int, dst: int, t: float) -> tuple[list[int], float] | None:
        return self.snapshot(t).shortest_path(src, dst)

    def next_hop(self, here: int, dst: int, t: float) -> int | None:
        """The neighbour to hand a message for ``dst`` to, or None if unreachable."""
        return self.snapshot(t).next_hop(here, dst)
