"""Contact plans: predicted link windows agree with the physics, edges to tolerance."""

import numpy as np
import pytest

from mesh.contacts import contact_plan
from mesh.ground import builtin_station
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.presets import demo
from mesh.topology import Topology

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
STARLINK = WalkerShell(planes=72, sats_per_plane=22, altitude_km=550, inclination_deg=53, phasing=1)
CITIES = [builtin_station(n) for n in ("london", "tokyo", "sao-paulo")]


@pytest.fixture(scope="module")
def starlink():
    return Constellation([STARLINK], EPOCH)


def _check_edges(topo, plan):
    tol = plan.tol_s
    for c in plan.contacts:
        assert c.start <= c.end
        assert topo.link_up(c.a, c.b, c.start) and topo.link_up(c.a, c.b, c.end)
        if c.start > plan.t0:
            assert not topo.link_up(c.a, c.b, c.start - tol), c
        if c.end < plan.t1:
            assert not topo.link_up(c.a, c.b, c.end + tol), c


def test_ground_windows_match_the_sky(starlink):
    topo = Topology(starlink, stations=CITIES)
    plan = contact_plan(topo, 100.0, 600.0, step_s=10.0, tol_s=0.05)
    assert any(c.kind == "ground" for c in plan.contacts)
    # +Grid links at 550 km never break (no range limit): each is one window spanning the plan
    lasers = [c for c in plan.contacts if c.kind == "laser"]
    assert len(lasers) == len(topo.candidates) and all((c.start, c.end) == (100.0, 700.0) for c in lasers)
    _check_edges(topo, plan)
    rng = np.random.default_rng(7)
    for t in rng.uniform(100.0, 700.0, 25):
        snap = topo.snapshot(float(t))
        up = {(int(s), int(g)) for g, s in snap.ground_pairs.tolist()}
        planned = {(c.a, c.b) for c in plan.at(float(t)) if c.kind == "ground"}
        # the plan errs inwards by < tol: only links at an edge may differ
        for a, b in up ^ planned:
            assert any(min(abs(t - c.start), abs(t - c.end)) < plan.tol_s for c in plan.between(a, b)) or \
                not plan.between(a, b) and (abs(t - 100) < 10 or abs(t - 700) < 10)


def test_laser_windows_with_a_range_limit(starlink):
    # same-slot cross-plane links swing between ~r·ΔΩ·cos i ≈ 370 km near the latitude extremes and
    # ~r·ΔΩ ≈ 605 km at the nodes each orbit; a 500 km reach makes them blink twice per orbit
    topo = Topology(starlink, max_range_km=500.0)
    plan = contact_plan(topo, 0.0, 900.0, step_s=20.0, tol_s=0.01)
    changing = [c for c in plan.contacts if c.start > 0 or c.end < 900]
    assert changing and all(starlink.plane_of[c.a] != starlink.plane_of[c.b] for c in changing)
    _check_edges(topo, plan)
    ev = plan.events()
    assert ev == sorted(ev, key=lambda e: (e[0], e[1] == "up", e[2], e[3]))
    a = changing[0].a
    nxt = plan.next_change(a, 0.0)
    assert nxt == min(e[0] for e in plan.events(a))


def test_handover_windows_never_overlap(starlink):
    topo = Topology(starlink, stations=CITIES, handover="highest_elevation")
    plan = contact_plan(topo, 0.0, 300.0, step_s=10.0, tol_s=0.05)
    for k in range(len(CITIES)):
        g = topo.n_sats + k
        windows = sorted(plan.of(g), key=lambda c: c.start)
        assert windows
        for w1, w2 in zip(windows, windows[1:]):
            assert w1.end < w2.start
            # handovers happen at slot boundaries
            assert abs(w2.start / 15.0 - round(w2.start / 15.0)) < 1e-9 or not topo.link_up(w1.a, w1.b, w1.end + 0.1)
        for c in windows:
            assert topo.serving(c.start)[k] == c.a


def test_demo_links_are_always_up_and_plans_are_deterministic():
    cfg = demo()
    c = Constellation(list(cfg.shells), cfg.epoch_jd)
    plan = contact_plan(Topology(c), 0.0, 120.0)
    assert len(plan.contacts) == 48 and all(x.start == 0.0 and x.end == 120.0 for x in plan.contacts)
    assert plan.events() == []
    again = contact_plan(Topology(Constellation(list(cfg.shells), cfg.epoch_jd)), 0.0, 120.0)
    assert again == plan


def test_plan_for_one_node(starlink):
    topo = Topology(starlink, stations=CITIES)
    tokyo = topo.names.index("gs-tokyo")
    mine = contact_plan(topo, 0.0, 300.0, nodes=[tokyo])
    assert mine.contacts and all(tokyo in (c.a, c.b) for c in mine.contacts)
    full = contact_plan(topo, 0.0, 300.0)
    assert mine.contacts == tuple(c for c in full.contacts if tokyo in (c.a, c.b))
    with pytest.raises(ValueError):
        contact_plan(topo, 0.0, 0.0)


def test_a_station_is_next_in_view_when_the_sky_says_so():
    cfg = demo()
    topo = Topology(Constellation(list(cfg.shells), cfg.epoch_jd), stations=[builtin_station("london")])
    gs = topo.names.index("gs-london")
    plan = contact_plan(topo, 0.0, 3 * 3600.0, nodes=[gs], step_s=10.0, tol_s=0.05)
    first = plan.contacts[0]
    assert first.start > 60.0, "the demo's 24 satellites leave London gaps between passes"
    for t in (0.0, first.start - 30.0, first.start + 1.0, first.end + 5.0):
        nxt = plan.next_in_view(gs, t)
        assert nxt is not None and nxt >= t
        assert topo.partners_of(gs, nxt + plan.tol_s), f"nothing in view at {nxt} (asked at {t})"
        gap = np.arange(t, nxt - plan.tol_s, 5.0)
        assert not any(topo.partners_of(gs, x) for x in gap), f"in view before {nxt} (asked at {t})"
    assert plan.next_in_view(gs, first.start + 1.0) == first.start + 1.0
    assert plan.next_in_view(gs, plan.t1 + 1.0) is None
    late = first.end - 10.0                              # 10 s of this pass left: too short to last 60 s
    assert plan.next_in_view(gs, late, lasting_s=60.0) == plan.contacts[1].start
    assert plan.next_in_view(gs, late, lasting_s=5.0) == late
