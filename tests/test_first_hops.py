"""First-hop tables (``HealingRouter`` for one node) against the per-destination trees.

Every node must pick exactly the hop today's tree rule picks, or hop-by-hop
forwarding loses its loop freedom; placement's one-Dijkstra routes must match
``path``.  Real snapshots: demo, a Walker shell with exact symmetric ties,
starlink-s1 at several instants, each with ground stations, and random down
nodes and links.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesh.config import WalkerShell
from mesh.ground import GroundStation
from mesh.healing import HealingRouter
from mesh.orbit import Constellation
from mesh.presets import preset
from mesh.topology import Topology
from mesh.world import World


def _stations(k: int) -> tuple[GroundStation, ...]:
    out = []
    for j in range(k):                      # Fibonacci lattice between ±60° latitude
        lat = math.degrees(math.asin(-0.86 + 1.72 * (j + 0.5) / k))
        out.append(GroundStation(f"lat{j}", round(lat, 4), round((j * 137.50776) % 360.0 - 180.0, 4)))
    return tuple(out)


def _world(name: str, stations: int):
    return World.from_config(preset(name), extra_stations=_stations(stations))


def _walker_topology() -> Topology:
    """A 24×16 delta shell: every plane alike, so many paths tie exactly."""
    shell = WalkerShell(planes=24, sats_per_plane=16, altitude_km=550.0, inclination_deg=53.0, phasing=1,
                        kind="delta", name="w384")
    cfg = preset("starlink-s1")
    c = Constellation([shell], cfg.epoch_jd)
    return Topology(c, max_range_km=cfg.links.max_range_km, grazing_km=cfg.links.grazing_km, stations=_stations(20))


def _down(rng: np.random.Generator, snap, n_nodes: int, n_links: int):
    nodes = frozenset(int(x) for x in rng.choice(snap.n_nodes, n_nodes, replace=False))
    pairs = sorted(snap.pair_set())
    links = frozenset(pairs[int(i)] for i in rng.choice(len(pairs), n_links, replace=False))
    return nodes, links


def _compare(snap_fn, t: float, heres, dsts, down_nodes=frozenset(), down_links=frozenset()) -> int:
    """Asserts first-hop answers equal tree answers for heres × dsts; returns pairs checked
    and how many of them had a route."""
    fh = HealingRouter(snap_fn, first_hops=True)
    tree = HealingRouter(snap_fn, first_hops=False)
    checked = routed = 0
    for here in heres:
        for dst in dsts:
            a = fh.next_hop(here, dst, t, down_nodes=down_nodes, down_links=down_links)
            b = tree.next_hop(here, dst, t, down_nodes=down_nodes, down_links=down_links)
            assert a == b, (t, here, dst, a, b)
            checked += 1
            routed += a is not None
    assert fh.computations <= len(heres) and tree.computations >= 1
    return checked, routed


def _all_pairs(snap_fn, t, down_nodes=frozenset(), down_links=frozenset()):
    """Faster whole-table comparison: a node's first-hop table against every tree's entry for it."""
    snap = snap_fn(t)
    fh = HealingRouter(snap_fn)
    tree = HealingRouter(snap_fn, first_hops=False)
    n = snap.n_nodes
    dl = frozenset(down_links)
    ref_view = tree._view(snap, frozenset(down_nodes), dl)
    ref_view.warm(list(range(snap.n_sats)))
    routed = 0
    for here in range(n):
        if here in down_nodes:
            continue
        view = fh._view(snap, frozenset(down_nodes), dl)
        tab = view.first_hops(here)
        ref = np.array([ref_view.tree(d)[here] for d in range(n)])
        live = np.array([d not in down_nodes for d in range(n)])
        assert np.array_equal(tab[live], ref[live]), (t, here, np.nonzero((tab != ref) & live)[0][:5])
        routed += int((tab[live] >= 0).sum())
    return routed


@pytest.mark.parametrize("t", [0.0, 37.0, 1234.5])
def test_demo_all_pairs_with_ground_and_faults(t):
    w = _world("demo", 6)
    snap = w.router.snapshot(t)
    assert snap.n_nodes > snap.n_sats                  # ground stations are in the graph
    assert _all_pairs(w.router.snapshot, t) > snap.n_nodes * 10
    rng = np.random.default_rng(int(t) + 1)
    for _ in range(4):
        dn, dl = _down(rng, snap, 2, 6)
        assert _all_pairs(w.router.snapshot, t, dn, dl) > 0


def test_walker_shell_exact_ties_all_pairs():
    topo = _walker_topology()
    snap_fn = topo.snapshot
    snap = snap_fn(0.0)
    assert snap.n_nodes == 384 + 20
    # the shell has exact symmetric ties: equal-latency intra-plane links everywhere
    lat = sorted({round(w, 15) for i in range(24) for _, w in snap.neighbours(i) if _ < 384})
    assert len(lat) < 24 * 4
    assert _all_pairs(snap_fn, 0.0) > 384 * 300
    rng = np.random.default_rng(7)
    dn, dl = _down(rng, snap, 8, 30)
    assert _all_pairs(snap_fn, 0.0, dn, dl) > 384 * 200


@pytest.mark.parametrize("t", [0.0, 600.0, 3001.0])
def test_starlink_s1_sampled_pairs(t):
    w = _world("starlink-s1", 40)
    snap = w.router.snapshot(t)
    rng = np.random.default_rng(int(t) + 3)
    heres = [int(x) for x in rng.choice(snap.n_nodes, 6, replace=False)] + [snap.n_nodes - 1, snap.n_sats]
    dsts = [int(x) for x in rng.choice(snap.n_nodes, 250, replace=False)] + list(range(snap.n_sats, snap.n_nodes))
    checked, routed = _compare(w.router.snapshot, t, heres, dsts)
    assert checked >= 2000 and routed > checked // 2
    dn, dl = _down(rng, snap, 25, 120)
    checked, routed = _compare(w.router.snapshot, t, heres, dsts, dn, dl)
    assert checked >= 2000 and routed > checked // 2


def test_split_horizon_and_down_here_agree():
    w = _world("demo", 6)
    fh, tree = HealingRouter(w.router.snapshot), HealingRouter(w.router.snapshot, first_hops=False)
    snap = w.router.snapshot(5.0)
    for here in range(snap.n_nodes):
        for dst in range(snap.n_nodes):
            for came in [None] + [v for v, _ in snap.neighbours(here)]:
                kw = dict(down_nodes={here, (here + 7) % snap.n_nodes}, came_from=came)   # others think here is dead
                assert fh.next_hop(here, dst, 5.0, **kw) == tree.next_hop(here, dst, 5.0, **kw)


def test_warm_from_is_what_next_hop_reads():
    w = _world("starlink-s1", 10)
    hr = HealingRouter(w.router.snapshot)
    dead, down = frozenset({3, 4}), frozenset({(10, 11)})
    assert hr.warm_from(100, 42.0, down_nodes=dead | {100}, down_links=down) == 1
    assert hr.warm_from(100, 42.0, down_nodes=dead, down_links=down) == 0     # same view: here is never down to itself
    before = hr.computations
    for dst in range(0, w.router.snapshot(42.0).n_nodes, 7):
        hr.next_hop(100, dst, 42.0, down_nodes=dead, down_links=down)
    assert hr.computations == before
    assert hr.warm_from(10**6, 42.0) == 0


@pytest.mark.parametrize("name,t", [("demo", 10.0), ("starlink-s1", 77.0)])
def test_routes_from_match_path(name, t):
    w = _world(name, 12)
    snap = w.router.snapshot(t)
    rng = np.random.default_rng(5)
    hr = HealingRouter(w.router.snapshot)
    srcs = [0, snap.n_sats, int(rng.integers(snap.n_sats))]          # a satellite and a ground entry
    for dn, dl in [(frozenset(), frozenset()), _down(rng, snap, 5, 20)]:
        for src in srcs:
            dn = dn - {src}
            lat, hops = hr.routes_from(src, t, down_nodes=dn, down_links=dl)
            dsts = range(snap.n_nodes) if snap.n_nodes < 200 else rng.choice(snap.n_nodes, 150, replace=False)
            for dst in dsts:
                dst = int(dst)
                path = hr.path(src, dst, t, down_nodes=dn, down_links=dl)
                if path is None:
                    assert hops[dst] == -1 and math.isinf(lat[dst]), (src, dst)
                    continue
                assert hops[dst] == len(path) - 1, (src, dst, path)
                assert lat[dst] == sum(snap.latency(a, b) for a, b in zip(path, path[1:])), (src, dst)
    with pytest.raises(ValueError, match="not in the snapshot"):
        hr.routes_from(snap.n_nodes, t)


def test_tables_warmed_together_are_each_nodes_own():
    """A node of a process warms its neighbours' tables with its own (one Dijkstra call over their
    sources): each must be exactly the table that node computes alone, the call must stay within its
    source bound, and a node others think down (another view) is left to itself."""
    w = _world("starlink-s1", 10)
    snap = w.router.snapshot(42.0)
    rng = np.random.default_rng(11)
    dn, dl = _down(rng, snap, 6, 20)
    here = next(i for i in range(200, 300) if i not in dn)
    dead_nb = next(v for v, _ in snap.neighbours(here) if v not in dn)
    dn = dn | {dead_nb}                                       # a neighbour others think down
    also = set(range(snap.n_nodes)) - {here}                  # every node is in this process
    together = HealingRouter(w.router.snapshot)
    done = together.warm_from(here, 42.0, down_nodes=dn, down_links=dl, also=also, max_sources=40)
    view = together._view(snap, dn - {here}, frozenset(dl))
    computed = list(view.hops)
    assert computed[0] == here and done == len(computed) > 10 and dead_nb not in view.hops
    sources = {v for x in computed for v, _ in view_neighbours(view, x) if v < snap.n_sats}
    assert len(sources) <= 40 and len(sources) < 2.5 * len(computed)      # shared: far fewer than 4 each
    alone = HealingRouter(w.router.snapshot)
    for x in computed:
        tab = alone._view(snap, dn - {x}, frozenset(dl)).first_hops(x)
        assert np.array_equal(view.hops[x], tab), x
    assert together.warm_from(computed[3], 42.0, down_nodes=dn, down_links=dl) == 0   # already there
    assert together.warm_from(here, 42.0, also=also) == 1                  # no bound given: here alone
    assert together.warm_from(here, 42.0, down_nodes={here, 5}, also=also, max_sources=40) == 1   # here thought down


def view_neighbours(view, x):
    lo, hi = np.searchsorted(view.u, [x, x + 1])
    return list(zip(view.v[lo:hi].tolist(), view.w[lo:hi].tolist()))


def test_pair_set_is_every_link_up_once_lower_index_first():
    """What membership's "expected down" check reads: laser and ground links of the snapshot,
    each as (lower, higher) node index, whichever way round the snapshot holds it."""
    snap = _walker_topology().snapshot(600.0)
    want = {(int(a), int(b)) for a, b in snap.pairs.tolist()}
    want |= {(min(int(g), int(s)), max(int(g), int(s))) for g, s in snap.ground_pairs.tolist()}
    assert len(snap.ground_pairs) > 0 and snap.ground_pairs[0, 0] > snap.ground_pairs[0, 1]   # (ground, sat)
    got = snap.pair_set()
    assert got == want and all(type(a) is int and a < b for a, b in got)
    assert snap.pair_set() is got                  # built once per snapshot
