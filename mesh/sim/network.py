"""The simulated laser mesh: physics adjacency per step, one LinkEmulator per link direction, faults.

This is the in-memory twin of ``agent/links/transport.py``: a frame handed to a
link direction meets the same :class:`mesh.link.LinkEmulator` (queue, loss,
serialization, jitter, duplication, reordering, corruption) and is released
at ``sent + extra + distance / c``.  Distances come from topology snapshots
taken every ``step_s`` of orbital time (a 550 km satellite moves 7.6 km/s:
< 30 µs of latency per second), and the adjacency is what physics has up in
that step.  Faults the simulator injects act here and are *not* told to the
nodes (unless ``announced``): the nodes must find them.
"""

from __future__ import annotations

import math

from mesh.link import Dropped, LinkEmulator, LinkProfile, LossModel, link_seed
from mesh.routing import Router
from mesh.topology import Snapshot, Topology

# u32 length + u32 CRC + msgpack [1, sent_at, extra_s, message] around the message (mesh.frames.frame_size)
FRAME_OVERHEAD = 28


class SimNetwork:
    def __init__(self, topology: Topology, *, t0: float = 0.0, step_s: float = 1.0,
                 profile: LinkProfile | None = None, seed: int = 0, nodes: int | None = None):
        self.topology = topology
        self.router = Router(topology, step_s=step_s, cache_size=2)
        self.t0 = t0
        self.step_s = step_s
        self.seed = seed
        self.base = profile or LinkProfile()
        self.n = nodes if nodes is not None else topology.n_nodes
        self._emus: dict[tuple[int, int], LinkEmulator] = {}
        self._step = None
        self._adj: list[list[tuple[int, float]]] = []
        self._adj_set: list[dict[int, float]] = []
        self.cut: set[tuple[int, int]] = set()          # directed pairs that carry nothing
        self.announced: set[tuple[int, int]] = set()    # undirected pairs nodes are told about
        self.loss_p = 0.0
        self.dropped = {"cut": 0, "loss": 0, "queue_full": 0, "corrupt": 0, "no_link": 0}

    # -- physics ----------------------------------------------------------------------

    def orbit_t(self, now: float) -> float:
        return self.t0 + now

    def snapshot(self, now: float) -> Snapshot:
        return self.router.snapshot(self.orbit_t(now))

    def _refresh(self, now: float) -> None:
        k = math.floor(self.orbit_t(now) / self.step_s)
        if k == self._step:
            return
        self._step = k
        snap = self.snapshot(now)
        adj = []
        for i in range(self.n):
            adj.append([(j, lat) for j, lat in snap.neighbours(i) if j < self.n])
        self._adj = adj
        self._adj_set = [dict(a) for a in adj]

    def neighbours(self, node: int, now: float) -> list[tuple[int, float]]:
        """(neighbour, one-way latency) of every link physics has up: Membership's neighbours_fn."""
        self._refresh(now)
        return self._adj[node]

    def latency(self, a: int, b: int, now: float) -> float | None:
        self._refresh(now)
        return self._adj_set[a].get(b)

    def link_down_expected(self, a: int, b: int, now: float) -> bool:
        """Announced cuts (a chaos table the nodes share): known, so not failures."""
        return bool(self.announced) and ((a, b) if a < b else (b, a)) in self.announced

    # -- faults -------------------------------------------------------------------------

    def set_loss(self, p: float) -> None:
        self.loss_p = p
        prof = LinkProfile(bandwidth_bps=self.base.bandwidth_bps, queue_frames=self.base.queue_frames,
                           loss=LossModel(p=p))
        self.base = prof
        for emu in self._emus.values():
            emu.set_profile(prof)

    def cut_link(self, a: int, b: int, *, announced: bool = False) -> None:
        self.cut.add((a, b))
        self.cut.add((b, a))
        if announced:
            self.announced.add((min(a, b), max(a, b)))

    def restore_link(self, a: int, b: int) -> None:
        self.cut.discard((a, b))
        self.cut.discard((b, a))
        self.announced.discard((min(a, b), max(a, b)))

    # -- frames -------------------------------------------------------------------------

    def transmit(self, now: float, src: int, dst: int, nbytes: int) -> list[float]:
        """Arrival times of the copies of a frame src → dst handed over at ``now`` (empty: lost)."""
        lat = self.latency(src, dst, now)
        if lat is None:
            self.dropped["no_link"] += 1
            return []
        if (src, dst) in self.cut:
            self.dropped["cut"] += 1
            return []
        emu = self._emus.get((src, dst))
        if emu is None:
            emu = LinkEmulator(self.base, link_seed(self.seed, str(src), str(dst)))
            self._emus[(src, dst)] = emu
        fate = emu.transmit(now, nbytes)
        if isinstance(fate, Dropped):
            self.dropped[fate.cause] += 1
            return []
        out = []
        for e in fate:
            if e.corrupt:
                self.dropped["corrupt"] += 1
                continue
            out.append(e.sent_at + e.extra_s + lat)
        return out

    def diameter_s(self, now: float, sample: int = 0) -> float:
        """Physics lower bound for convergence: the largest shortest-path latency."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra
        import numpy as np
        self._refresh(now)
        rows, cols, ws = [], [], []
        for i, nb in enumerate(self._adj):
            for j, lat in nb:
                rows.append(i)
                cols.append(j)
                ws.append(max(lat, 1e-12))
        m = csr_matrix((ws, (rows, cols)), shape=(self.n, self.n))
        idx = None if not sample or sample >= self.n else np.linspace(0, self.n - 1, sample).astype(int)
        d = dijkstra(m, directed=False, indices=idx)
        d = d[np.isfinite(d)]
        return float(d.max()) if len(d) else 0.0

    def hop_diameter(self, now: float, sample: int = 0) -> int:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import shortest_path
        import numpy as np
        self._refresh(now)
        rows, cols = [], []
        for i, nb in enumerate(self._adj):
            for j, _ in nb:
                rows.append(i)
                cols.append(j)
        m = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(self.n, self.n))
        idx = None if not sample or sample >= self.n else np.linspace(0, self.n - 1, sample).astype(int)
        d = shortest_path(m, directed=False, unweighted=True, indices=idx)
        d = d[np.isfinite(d)]
        return int(d.max()) if len(d) else 0
