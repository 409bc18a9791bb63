"""Routing and link timing from shared physics."""

import pytest

from mesh.orbit import Constellation, iso_to_jd
from mesh.presets import demo
from mesh.routing import Router
from mesh.topology import Topology


@pytest.fixture(scope="module")
def router():
    cfg = demo()
    return Router(Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch))))


def test_next_hops_follow_the_shortest_path(router):
    for dst in range(1, 24):
        path, _ = router.path(0, dst, 10.0)
        here = 0
        walked = [0]
        while here != dst:
            here = router.next_hop(here, dst, 10.0)
            walked.append(here)
            assert len(walked) <= 24, "routing loop"
        assert walked == path


def test_no_next_hop_to_self(router):
    assert router.next_hop(3, 3, 0.0) is None


def test_snapshots_are_cached_per_step(router):
    assert router.snapshot(5.2) is router.snapshot(5.9)
    assert router.snapshot(5.2) is not router.snapshot(6.1)


# -- shortest paths: optimal, deterministic, hop-by-hop consistent -----------------------------

import heapq  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mesh.ground import GroundStation  # noqa: E402
from mesh.orbit import WalkerShell  # noqa: E402
from mesh.topology import Snapshot  # noqa: E402


def reference_costs(snap, src):
    """Plain Dijkstra over snap.neighbours with stations as leaves (except src)."""
    dist = {src: 0.0}
    heap = [(0.0, src)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u] or (u != src and u >= snap.n_sats):
            continue
        for v, w in snap.neighbours(u):
            if d + w < dist.get(v, float("inf")):
                dist[v] = d + w
                heapq.heappush(heap, (d + w, v))
    return dist


@settings(max_examples=20, deadline=None)
@given(planes=st.integers(3, 14), per_plane=st.integers(9, 20), alt=st.floats(450, 1300),
       inc=st.floats(40, 99), phasing=st.integers(0, 3), kind=st.sampled_from(["delta", "star"]),
       t=st.floats(0, 6000), seed=st.integers(0, 2**31 - 1))
def test_paths_are_optimal_on_random_walker_shells(planes, per_plane, alt, inc, phasing, kind, t, seed):
    shell = WalkerShell(planes=planes, sats_per_plane=per_plane, altitude_km=alt, inclination_deg=inc,
                        phasing=phasing % planes, kind=kind)
    rng = np.random.default_rng(seed)
    stations = [GroundStation(f"g{k}", float(rng.uniform(-60, 60)), float(rng.uniform(-180, 180))) for k in range(3)]
    topo = Topology(Constellation([shell], iso_to_jd("2026-01-01T00:00:00Z")), stations=stations,
                    elevation_mask_deg=10.0)
    snap = topo.snapshot(t)
    n = snap.n_nodes
    for src in (0, n - 1, n - 3):
        ref = reference_costs(snap, src)
        for dst in {1, n // 2, n - 2, topo.n_sats - 1}:
            found = snap.shortest_path(src, dst)
            if dst not in ref:
                assert found is None
                continue
            path, cost = found
            assert cost == pytest.approx(ref[dst], rel=1e-9, abs=1e-12)
            assert all(i < snap.n_sats for i in path[1:-1]), "stations never relay"
            here, walked = src, [src]
            while here != dst:
                here = snap.next_hop(here, dst)
                walked.append(here)
            assert walked == path


def test_ties_break_on_the_lower_index():
    # a square 0-1-3, 0-2-3 with equal sides: two equal paths; the lower index wins
    pos = np.zeros((4, 3))
    pairs = np.array([[0, 1], [0, 2], [1, 3], [2, 3]])
    snap = Snapshot(0.0, pos, pairs, np.full(4, 1000.0))
    assert snap.shortest_path(0, 3)[0] == [0, 1, 3]
    assert snap.shortest_path(3, 0)[0] == [3, 1, 0]
    assert snap.next_hop(2, 0) == 0 and snap.next_hop(0, 3) == 1
    assert snap.shortest_path(0, 3, down_nodes=frozenset({1}))[0] == [0, 2, 3]
    assert snap.shortest_path(0, 3, down_links=frozenset({(1, 3)}))[0] == [0, 2, 3]
    assert snap.neighbours(0) == [(1, 1000.0 / 299792.458), (2, 1000.0 / 299792.458)]


def test_unreachable_is_none():
    snap = Snapshot(0.0, np.zeros((3, 3)), np.array([[0, 1]]), np.array([500.0]))
    assert snap.shortest_path(0, 2) is None and snap.next_hop(0, 2) is None
    assert snap.shortest_path(2, 2) == ([2], 0.0)


def test_router_with_ground_stations():
    from mesh.presets import preset
    from mesh.world import World
    world = World.from_config(preset("starlink-s1"))
    names, router = world.names, world.router
    src, dst = names.index("gs-london"), names.index("gs-sydney")
    path, cost = router.path(src, dst, 1234.5)
    here, walked = src, [src]
    while here != dst:
        here = router.next_hop(here, dst, 1234.5)
        walked.append(here)
    assert walked == path and 0.05 < cost < 0.12
    assert router.snapshot(1234.5) is router.snapshot(1234.9)
