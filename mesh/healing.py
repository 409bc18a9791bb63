"""Routing that heals: next hops over the physics topology minus what is known down.

Integration API::

    hr = HealingRouter(router.snapshot)           # any t -> Snapshot (mesh.routing.Router caches per step)
    hop = hr.next_hop(here, dst, t, down_nodes=m.dead_nodes(), down_links=m.down_links() | chaos_cuts,
                      came_from=prev)             # None: unreachable now (hold it: store-and-forward)
    path = hr.path(src, dst, t, down_nodes=..., down_links=...)
    hr.reachable(src, dst, t, ...)
    hr.warm_from(here, t, down_nodes=..., down_links=...)   # here's next hops to everyone, ahead of need
    latency_s, hops = hr.routes_from(src, t, ...)          # to every node index at once (placement)

Every node computes the same lowest-latency tree towards ``dst`` from the same
snapshot and the same down-set, breaking ties on the lower neighbour index,
so forwarding is loop-free whenever views agree: each hop strictly lowers the
remaining latency.  Views disagree only while a link-state or death flood is
in flight (milliseconds): a frame may then bounce, which ``came_from`` (split
horizon: never hand a frame straight back unless there is no other way) and
the frame's TTL bound.

Cost: the graph is the snapshot's own edge arrays (``Snapshot.edges``);
each (snapshot, down-set) masks it once (a change to the down-set is a new
view, so routes are recomputed on change).  A node needs only its own next
hops: its first-hop table (``warm_from``) is one Dijkstra from each of its
4–6 neighbours (~2 ms and 6 kB kept at 1,610 nodes, against ~440 ms and 20 MB
for a tree towards every destination: bench/route_warm.py), and picks exactly the hop the
per-destination tree would (same tie rule), so every node still agrees.
Trees (one Dijkstra from ``dst``, ~1 ms) serve ``path``, which walks other
nodes' hops, and routers shared by every node of a simulation
(``first_hops=False``).  ``routes_from`` gives latency and hop count to every
destination from one Dijkstra, for placement.  Ground stations never relay,
as in ``mesh.topology``.
"""

from __future__ import annotations

import collections
from collections import OrderedDict
from typing import Callable, Container, Iterable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from mesh.topology import Snapshot

SnapshotFn = Callable[[float], Snapshot]
TIE_EPSILON_S = 1e-12


class _Except:
    """``inner`` minus ``out``, for ``in`` only (no copy of a process's node set per warm)."""

    __slots__ = ("inner", "out")

    def __init__(self, inner: Container[int], out: Container[int]):
        self.inner, self.out = inner, out

    def __contains__(self, x: object) -> bool:
        return x in self.inner and x not in self.out


def _norm_links(links: Iterable[tuple[int, int]]) -> frozenset[tuple[int, int]]:
    return frozenset((a, b) if a < b else (b, a) for a, b in links)


class _View:
    """One snapshot with some nodes and links removed; next-hop trees per destination.

    Paths may not pass through ground stations, so the graph towards a
    satellite is the same for every satellite destination: it is built once
    per view, and trees for many destinations come from one Dijkstra call
    (``warm``).  A ground destination gets its own graph (its in-edges).
    """

    __slots__ = ("u", "v", "w", "n", "gs", "trees", "hops", "_sat_graph", "_out_graph")

    def __init__(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, n: int, gs: int):
        self.u, self.v, self.w, self.n, self.gs = u, v, w, n, gs
        self.trees: dict[int, np.ndarray] = {}
        self.hops: dict[int, np.ndarray] = {}      # here -> first-hop table (next hop per destination)
        self._sat_graph: tuple | None = None
        self._out_graph: csr_matrix | None = None

    def _graph_to(self, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, csr_matrix]:
        if dst < self.gs and self._sat_graph is not None:
            return self._sat_graph
        u, v, w, n = self.u, self.v, self.w, self.n
        if self.gs < n:
            keep = (v < self.gs) | (v == dst)
            u, v, w = u[keep], v[keep], w[keep]
        m = csr_matrix((np.maximum(w, 1e-15), (v, u)), shape=(n, n))   # reversed: row = to
        graph = (u, v, w, m)
        if dst < self.gs:
            self._sat_graph = graph
        return graph

    def _tree_from(self, dst: int, dist: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        ok = np.isfinite(dist[u]) & (dist[v] + w <= dist[u] + TIE_EPSILON_S)
        nxt = np.full(self.n, -1, dtype=np.int64)
        uu, vv = u[ok], v[ok]
        first_u, first = np.unique(uu, return_index=True)     # edges sorted by (u, v): first = lowest v
        nxt[first_u] = vv[first]
        nxt[dst] = dst
        self.trees[dst] = nxt
        return nxt

    def tree(self, dst: int) -> np.ndarray:
        nxt = self.trees.get(dst)
        if nxt is not None:
            return nxt
        u, v, w, m = self._graph_to(dst)
        return self._tree_from(dst, dijkstra(m, directed=True, indices=dst), u, v, w)

    def warm(self, dsts: list[int]) -> int:
        """Trees for many satellite destinations in one Dijkstra call; returns how many were new."""
        todo = [d for d in dsts if d < self.gs and d not in self.trees]
        if not todo:
            return 0
        u, v, w, m = self._graph_to(todo[0])
        dist = dijkstra(m, directed=True, indices=todo)
        for d, row in zip(todo, np.atleast_2d(dist)):
            self._tree_from(d, row, u, v, w)
        return len(todo)


    def out_graph(self, src: int | None = None) -> csr_matrix:
        """Forward graph in which only satellites (and ``src``) have out-edges: a path
        from a satellite may end at a ground station but never leave one."""
        if src is None or src < self.gs:
            if self._out_graph is None:
                keep = self.u < self.gs
                self._out_graph = csr_matrix((np.maximum(self.w[keep], 1e-15), (self.u[keep], self.v[keep])),
                                             shape=(self.n, self.n))
            return self._out_graph
        keep = (self.u < self.gs) | (self.u == src)
        return csr_matrix((np.maximum(self.w[keep], 1e-15), (self.u[keep], self.v[keep])), shape=(self.n, self.n))

    def first_hops(self, here: int) -> np.ndarray:
        """``here``'s next hop towards every node (-1: unreachable), from one Dijkstra per
        neighbour: the tree rule (lowest neighbour v with w + d(v, dst) within
        ``TIE_EPSILON_S`` of the best) applied to distances from the neighbours."""
        tab = self.hops.get(here)
        if tab is None:
            self.first_hops_many(here)
            tab = self.hops[here]
        return tab

    def first_hops_many(self, here: int, others: Container[int] = (), max_sources: int = 0,
                        max_tables: int = 32, max_visits: int = 256) -> list[int]:
        """``here``'s first-hop table and, from the same Dijkstra call, those of ``others``
        nearest ``here`` in the graph (breadth first) that have none yet, while their distinct
        sources stay within ``max_sources`` and the tables within ``max_tables`` (how long one
        call may hold the event loop).
        Neighbouring nodes share most sources: a block of a +Grid shell needs ~1.5 Dijkstras
        per node instead of 4.  Each table is the one its node computes alone.  Returns the
        nodes computed (``here`` first, if it had none)."""
        todo: list[tuple[int, np.ndarray, np.ndarray]] = []
        sources: set[int] = set()
        seen, queue, visits = {here}, collections.deque([here]), 0
        while queue and visits < max_visits and len(todo) < max_tables:
            x = queue.popleft()
            visits += 1
            lo, hi = np.searchsorted(self.u, [x, x + 1])
            nb, wn = self.v[lo:hi], self.w[lo:hi]            # sorted by neighbour index
            if x not in self.hops:
                new = set(nb[nb < self.gs].tolist()) - sources
                if not todo or len(sources) + len(new) <= max_sources:
                    todo.append((x, nb, wn))
                    sources |= new
            for y in nb.tolist():
                if y not in seen and y in others:
                    seen.add(y)
                    queue.append(y)
        order = sorted(sources)
        rows = dijkstra(self.out_graph(), directed=True, indices=order) if order else None
        row_of = {s: j for j, s in enumerate(order)}
        for here, nb, wn in todo:
            dist = np.full((len(nb), self.n), np.inf)
            sat = nb < self.gs
            if sat.any():
                dist[sat] = rows[[row_of[x] for x in nb[sat].tolist()]]
            dist[np.arange(len(nb)), nb] = 0.0              # a ground neighbour is a destination only
            best = (dist + np.maximum(wn, 1e-15)[:, None]).min(axis=0) if len(nb) else np.full(self.n, np.inf)
            ok = (dist + wn[:, None] <= best + TIE_EPSILON_S) & np.isfinite(best)
            tab = np.where(ok.any(axis=0), nb[ok.argmax(axis=0)] if len(nb) else -1, -1).astype(np.int32)
            tab[here] = here
            self.hops[here] = tab
        return [here for here, _, _ in todo]

    def routes_from(self, src: int) -> tuple[np.ndarray, np.ndarray]:
        """Latency and hop count of a lowest-latency path from ``src`` to every node
        (inf and -1 where unreachable): one Dijkstra instead of a tree per destination."""
        dist, pred = dijkstra(self.out_graph(src), directed=True, indices=src, return_predecessors=True)
        hops = np.where(np.isfinite(dist), 0, -1)
        cur = pred.copy()
        while True:
            live = cur >= 0
            if not live.any():
                break
            hops[live] += 1
            cur[live] = pred[cur[live]]
        return dist, hops


class HealingRouter:
    """Next hops that avoid dead nodes and down links; memoised per view."""

    def __init__(self, snapshot_fn: SnapshotFn, *, cache_views: int = 32, cache_trees: int = 512,
                 first_hops: bool = True):
        """``first_hops``: answer ``next_hop`` from the asking node's own table (a node's
        router); False for a router that every node of a simulation shares, where one
        tree per destination serves every node."""
        self.snapshot_fn = snapshot_fn
        self.first_hops = first_hops
        self.cache_views = cache_views
        self.cache_trees = cache_trees
        self._graphs: OrderedDict[int, tuple[Snapshot, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._views: OrderedDict[tuple, _View] = OrderedDict()
        self.computations = 0

    def _graph(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self._graphs.get(id(snap))
        if hit is not None and hit[0] is snap:
            return hit[1], hit[2], hit[3]
        if hasattr(snap, "edges"):          # mesh.topology.Snapshot: its own arrays, shared by every node
            u, v, w = snap.edges()
        else:                               # anything else with neighbours() (tests' stand-ins)
            us, vs, ws = [], [], []
            for i in range(snap.n_nodes):
                for j, lat in snap.neighbours(i):
                    us.append(i)
                    vs.append(j)
                    ws.append(lat)
            u, v, w = np.array(us, dtype=np.int64), np.array(vs, dtype=np.int64), np.array(ws, dtype=float)
            order = np.lexsort((v, u))
            u, v, w = u[order], v[order], w[order]
        self._graphs[id(snap)] = (snap, u, v, w)
        if len(self._graphs) > 4:
            self._graphs.popitem(last=False)
        return u, v, w

    def _view(self, snap: Snapshot, down_nodes: frozenset[int], down_links: frozenset[tuple[int, int]]) -> _View:
        key = (id(snap), snap.t, down_nodes, down_links)
        view = self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
            return view
        u, v, w = self._graph(snap)
        n = snap.n_nodes
        if down_nodes or down_links:
            keep = np.ones(len(u), dtype=bool)
            if down_nodes:
                dead = np.zeros(n + 1, dtype=bool)
                for x in down_nodes:
                    if 0 <= x < n:
                        dead[x] = True
                keep &= ~dead[u] & ~dead[v]
            if down_links:
                codes = np.array(sorted(a * n + b for a, b in down_links if 0 <= a < n and 0 <= b < n),
                                 dtype=np.int64)
                keep &= ~np.isin(np.minimum(u, v) * n + np.maximum(u, v), codes)
            u, v, w = u[keep], v[keep], w[keep]
        gs = snap.n_sats if getattr(snap, "n_sats", None) is not None else n
        view = _View(u, v, w, n, gs)
        self._views[key] = view
        if len(self._views) > self.cache_views:
            self._views.popitem(last=False)
        return view

    def _next(self, here: int, dst: int, t: float, down_nodes: Iterable[int], down_links: Iterable[tuple[int, int]],
              extra_link: tuple[int, int] | None = None) -> int:
        dn = frozenset(down_nodes)
        if here in dn:            # others think we are dead: we still route, around the rest
            dn = dn - {here}
        dl = _norm_links(down_links)
        if extra_link is not None:
            dl = dl | {extra_link}
        snap = self.snapshot_fn(t)
        if not (0 <= dst < snap.n_nodes and 0 <= here < snap.n_nodes):
            return -1
        view = self._view(snap, dn, dl)
        if dst not in view.trees and extra_link is None and (self.first_hops or here in view.hops):
            if here not in view.hops:
                self.computations += 1
                if len(view.hops) >= self.cache_trees:
                    view.hops.pop(next(iter(view.hops)))
            return int(view.first_hops(here)[dst])
        if dst not in view.trees:
            self.computations += 1
            if len(view.trees) >= self.cache_trees:
                view.trees.pop(next(iter(view.trees)))
        return int(view.tree(dst)[here])

    def warm(self, dsts: list[int], t: float, *, down_nodes: Iterable[int] = frozenset(),
             down_links: Iterable[tuple[int, int]] = frozenset()) -> int:
        """Compute the trees towards ``dsts`` at ``t`` ahead of need (one Dijkstra call
        for all satellite destinations); returns how many were computed."""
        view = self._view(self.snapshot_fn(t), frozenset(down_nodes), _norm_links(down_links))
        done = view.warm(dsts)
        self.computations += done
        return done

    def warm_from(self, here: int, t: float, *, down_nodes: Iterable[int] = frozenset(),
                  down_links: Iterable[tuple[int, int]] = frozenset(), also: Container[int] = (),
                  max_sources: int = 0) -> int:
        """Compute ``here``'s first-hop table at ``t`` ahead of need (what ``next_hop``
        from ``here`` reads), and with it those of the nodes of ``also`` (others sharing this
        router: a process's nodes) nearest it, as far as ``max_sources`` allows
        (``_View.first_hops_many``).  Returns how many tables were new."""
        snap = self.snapshot_fn(t)
        if not 0 <= here < snap.n_nodes:
            return 0
        dn = frozenset(down_nodes)
        view = self._view(snap, dn - {here}, _norm_links(down_links))
        if here in view.hops:
            return 0
        # Another node's view is this one only if neither it nor here is thought down.
        others = _Except(also, dn) if here not in dn and max_sources > 0 else ()
        done = len(view.first_hops_many(here, others, max_sources))
        self.computations += done
        return done

    def routes_from(self, src: int, t: float, *, down_nodes: Iterable[int] = frozenset(),
                    down_links: Iterable[tuple[int, int]] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """One-way latency (s) and hop count from ``src`` to every node index, as ``path``
        would find them (inf and -1: unreachable); one Dijkstra for all destinations."""
        snap = self.snapshot_fn(t)
        if not 0 <= src < snap.n_nodes:
            raise ValueError(f"node index {src} is not in the snapshot ({snap.n_nodes} nodes)")
        dn = frozenset(down_nodes)
        dist, hops = self._view(snap, dn - {src}, _norm_links(down_links)).routes_from(src)
        for x in dn - {src}:
            if 0 <= x < snap.n_nodes:
                dist[x], hops[x] = np.inf, -1
        return dist, hops

    def next_hop(self, here: int, dst: int, t: float, *, down_nodes: Iterable[int] = frozenset(),
                 down_links: Iterable[tuple[int, int]] = frozenset(), came_from: int | None = None) -> int | None:
        """The neighbour to hand a frame for ``dst`` to, or None if ``dst`` is unreachable."""
        down_nodes = frozenset(down_nodes)
        if here == dst or dst in down_nodes:
            return None
        hop = self._next(here, dst, t, down_nodes, down_links)
        if hop < 0:
            return None
        if came_from is not None and hop == came_from:
            # Split horizon: the sender's view and ours disagree; go around it if we can.
            alt = self._next(here, dst, t, down_nodes, down_links, (min(here, came_from), max(here, came_from)))
            if alt >= 0:
                return alt
        return hop

    def path(self, src: int, dst: int, t: float, *, down_nodes: Iterable[int] = frozenset(),
             down_links: Iterable[tuple[int, int]] = frozenset()) -> list[int] | None:
        """Lowest-latency path src → dst avoiding what is down (as ``src`` sees it), or None."""
        if src == dst:
            return [src]
        dn = frozenset(down_nodes)
        if dst in dn:
            return None
        path = [src]
        while path[-1] != dst:
            hop = self._next(path[-1], dst, t, dn - {src}, down_links)
            if hop < 0 or hop in path:
                return None
            path.append(hop)
        return path

    def reachable(self, src: int, dst: int, t: float, *, down_nodes: Iterable[int] = frozenset(),
                  down_links: Iterable[tuple[int, int]] = frozenset()) -> bool:
        return src == dst or self.next_hop(src, dst, t, down_nodes=down_nodes, down_links=down_links) is not None
