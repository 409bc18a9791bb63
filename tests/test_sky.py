"""mesh.sky: the ground contacts a node asks for, from candidates shared per second, stay exact."""

import random

import numpy as np
import pytest

from mesh.ground import BUILTIN_STATIONS, StationSet
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.topology import Topology

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
SHELL = WalkerShell(planes=24, sats_per_plane=16, altitude_km=550, inclination_deg=53, phasing=1)
STATIONS = [BUILTIN_STATIONS[n] for n in ("london", "tokyo", "new-york", "sydney", "nairobi", "svalbard")]


@pytest.fixture(scope="module")
def constellation():
    return Constellation([SHELL], EPOCH)


@pytest.mark.parametrize("handover,ground_range", [("all", None), ("sticky", None), ("highest_elevation", 1100.0)])
def test_partners_are_the_snapshot_at_that_instant(constellation, handover, ground_range):
    topo = Topology(constellation, stations=STATIONS, handover=handover, ground_max_range_km=ground_range)
    rnd = random.Random(5)
    for _ in range(25):
        t = rnd.uniform(0, 6000) if rnd.random() < 0.6 else float(rnd.randrange(6000)) - rnd.choice((0.0, 1e-9))
        snap = topo.snapshot(t)
        for i in range(topo.n_nodes):
            assert topo.partners_of(i, t) == sorted(j for j, _ in snap.neighbours(i)), (t, i)


def test_a_rise_is_seen_at_its_instant_not_at_the_next_second(constellation):
    """Not rounded to the shared second: just before a satellite rises there is no
    link, just after there is, both inside one bucket."""
    topo = Topology(constellation, stations=STATIONS)
    gs = topo.n_sats                      # london
    found = 0
    for s in range(0, 3000):
        t0, t1 = float(s), float(s) + 0.999
        before, after = set(topo.contacts_of(gs, t0)), set(topo.contacts_of(gs, t1))
        for sat in after - before:
            lo, hi = t0, t1                   # bisect the rise within the second
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if not topo.link_up(gs, sat, mid) else (lo, mid)
            assert sat not in topo.contacts_of(gs, lo) and gs not in topo.contacts_of(sat, lo)
            assert sat in topo.contacts_of(gs, hi) and gs in topo.contacts_of(sat, hi)
            found += 1
        if found >= 3:
            break
    assert found >= 3


def test_every_node_of_a_process_shares_one_look_at_the_sky_per_second(constellation):
    topo = Topology(constellation, stations=STATIONS, handover="sticky")
    for i in range(topo.n_nodes):                 # every node asks at its own instant of one second
        topo.contacts_of(i, 700.0 + i / topo.n_nodes)
    assert topo.sky.computed == 1
    topo.contacts_of(0, 701.2)
    assert topo.sky.computed == 2
    # the whole-second positions are the snapshot's, shared and read-only
    snap = topo.snapshot(701.0)
    assert np.array_equal(snap.positions[:topo.n_sats], topo.sky.positions(701.0))
    with pytest.raises(ValueError):
        topo.sky.positions(701.0)[0, 0] = 0.0


def test_near_is_a_superset_of_visible_anywhere_within_the_slack():
    stations = StationSet(STATIONS)
    rnd = np.random.default_rng(3)
    pos = rnd.normal(size=(4000, 3))
    pos *= (6378.0 + rnd.uniform(300, 1200, size=(4000, 1))) / np.linalg.norm(pos, axis=1, keepdims=True)
    slack = np.full(len(pos), 50.0)
    step = rnd.normal(size=pos.shape)
    moved = pos + step / np.linalg.norm(step, axis=1, keepdims=True) * rnd.uniform(0, 49.9, size=(len(pos), 1))
    k, i, _, _ = stations.visible(moved, 25.0, 1500.0)
    nk, ni = stations.near(pos, slack, 25.0, 1500.0)
    assert len(k) > 10 and set(zip(k.tolist(), i.tolist())) <= set(zip(nk.tolist(), ni.tolist()))
    assert len(nk) < 4 * len(k) + 50                      # and not much more
