"""Exact physics checks of mesh.orbit and mesh.topology."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.orbit import EARTH_RADIUS_KM, SPEED_OF_LIGHT_KM_S, Constellation, WalkerShell, gmst_rad, iso_to_jd
from mesh.topology import Topology, grid_pairs, segment_clearance_km

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
STARLINK = WalkerShell(planes=72, sats_per_plane=22, altitude_km=550, inclination_deg=53, phasing=1)


@pytest.fixture(scope="module")
def starlink():
    return Constellation([STARLINK], EPOCH)


def test_iso_to_jd_known_value():
    assert iso_to_jd("2000-01-01T12:00:00Z") == pytest.approx(2451545.0)


def test_gmst_at_j2000():
    # GMST at J2000.0 is 280.46061837°
    assert math.degrees(gmst_rad(2451545.0)) == pytest.approx(280.46061837, abs=1e-6)


def test_altitudes_stay_near_nominal(starlink):
    for t in (0.0, 1234.5, 5700.0):
        r = np.linalg.norm(starlink.positions(t), axis=1) - EARTH_RADIUS_KM
        assert np.all(np.abs(r - 550) < 15), (r.min(), r.max())  # J2 short-period terms: ±~10 km


def test_in_plane_chord_matches_geometry(starlink):
    # 22 satellites per plane → 2 r sin(π/22) ≈ 1,972 km, 6.58 ms at 550 km
    p = starlink.positions(0.0)
    d = np.linalg.norm(p[0] - p[1])
    assert d == pytest.approx(2 * (EARTH_RADIUS_KM + 550) * math.sin(math.pi / 22), rel=0.01)
    assert d / SPEED_OF_LIGHT_KM_S * 1e3 == pytest.approx(6.58, abs=0.05)


def test_cross_plane_distances_in_published_range(starlink):
    topo = Topology(starlink)
    snap = topo.snapshot(0.0)
    cross = [d for (a, b), d in zip(snap.pairs.tolist(), snap.distance_km.tolist())
             if starlink.plane_of[a] != starlink.plane_of[b]]
    # Same-slot neighbours in planes 5° of RAAN apart: never closer than the
    # planes converge near the latitude extremes (~r·ΔΩ·cos i), never farther
    # than the design's 1,434 km (4.8 ms) upper reference.
    r, draan = EARTH_RADIUS_KM + 550, math.radians(360 / 72)
    assert r * draan * math.cos(math.radians(53)) * 0.9 < min(cross)
    assert max(cross) < 1434


def test_single_position_equals_vectorised(starlink):
    np.testing.assert_allclose(starlink.position(77, 321.0), starlink.positions(321.0)[77], atol=1e-9)


def test_earth_rotation_is_applied():
    # A satellite propagated one sidereal-ish day later is NOT at the same
    # Earth-fixed place unless the frame rotates; check the frame rotates ~360°/day.
    shell = WalkerShell(planes=1, sats_per_plane=1, altitude_km=35786, inclination_deg=0, phasing=0)
    geo = Constellation([shell], EPOCH)
    p0, p1 = geo.positions(0.0)[0], geo.positions(3600.0)[0]
    # geostationary altitude: Earth-fixed longitude drifts < 0.5° in an hour
    ang = math.degrees(math.acos(np.dot(p0, p1) / np.linalg.norm(p0) / np.linalg.norm(p1)))
    assert ang < 0.5


def test_determinism():
    a = Constellation([STARLINK], EPOCH).positions(42.0)
    b = Constellation([STARLINK], EPOCH).positions(42.0)
    assert np.array_equal(a, b)


def test_grid_has_four_links_per_satellite(starlink):
    pairs = grid_pairs(starlink)
    degree = np.bincount(pairs.ravel(), minlength=len(starlink))
    assert len(pairs) == 2 * len(starlink)
    assert np.all(degree == 4)


def test_seam_shifts_by_phasing():
    shell = WalkerShell(planes=4, sats_per_plane=6, altitude_km=550, inclination_deg=53, phasing=1, line_of_sight=False)
    c = Constellation([shell], EPOCH)
    topo = Topology(c)
    # last plane slot 0 (index 18) meets plane 0 slot 1 across the seam
    assert 1 in topo.neighbours_of(18)
    assert topo.neighbours_of(0) == [1, 5, 6, 23]


def test_grazing_clearance_of_a_segment():
    r = EARTH_RADIUS_KM + 550
    a, b = np.array([[r, 0.0, 0.0]]), np.array([[0.0, r, 0.0]])
    # chord midpoint is r·cos45° from the centre
    assert segment_clearance_km(a, b)[0] == pytest.approx(r * math.cos(math.pi / 4) - EARTH_RADIUS_KM)
    assert segment_clearance_km(a, a + 1.0)[0] == pytest.approx(np.linalg.norm(a[0]) - EARTH_RADIUS_KM)


def test_sparse_shell_with_line_of_sight_loses_occluded_links():
    sparse = WalkerShell(planes=4, sats_per_plane=6, altitude_km=550, inclination_deg=53, phasing=1)
    snap = Topology(Constellation([sparse], EPOCH)).snapshot(0.0)
    c = snap.positions
    for a, b in snap.pairs.tolist():
        assert segment_clearance_km(c[[a]], c[[b]])[0] >= 80
    # 60° in-plane spacing passes through the Earth: no in-plane links survive
    assert all(a // 6 != b // 6 for a, b in snap.pairs.tolist())


def test_link_latency_is_continuous(starlink):
    topo = Topology(starlink)
    l0 = topo.link_latency(0, 22, 100.0)
    l1 = topo.link_latency(0, 22, 100.001)
    assert l0 != l1 and abs(l0 - l1) < 1e-8


def test_shortest_path_is_symmetric_and_optimal(starlink):
    snap = Topology(starlink).snapshot(0.0)
    path, cost = snap.shortest_path(0, 800)
    back, back_cost = snap.shortest_path(800, 0)
    assert cost == pytest.approx(back_cost)
    assert path[0] == 0 and path[-1] == 800
    assert sum(snap.latency(a, b) for a, b in zip(path, path[1:])) == pytest.approx(cost)


@settings(max_examples=25, deadline=None)
@given(planes=st.integers(3, 12), per_plane=st.integers(3, 16), alt=st.floats(400, 1500),
       inc=st.floats(30, 98), phasing=st.integers(0, 2), t=st.floats(0, 6000))
def test_random_walker_shells(planes, per_plane, alt, inc, phasing, t):
    shell = WalkerShell(planes=planes, sats_per_plane=per_plane, altitude_km=alt, inclination_deg=inc,
                        phasing=phasing % planes)
    c = Constellation([shell], EPOCH)
    pos = c.positions(t)
    assert pos.shape == (planes * per_plane, 3)
    assert np.all(np.abs(np.linalg.norm(pos, axis=1) - EARTH_RADIUS_KM - alt) < 25)
    snap = Topology(c).snapshot(t)
    # every surviving link clears the grazing altitude, and the graph is symmetric
    if len(snap.pairs):
        assert np.all(segment_clearance_km(pos[snap.pairs[:, 0]], pos[snap.pairs[:, 1]]) >= 80 - 1e-9)
    for a, b in snap.pairs.tolist()[:20]:
        assert snap.latency(a, b) == snap.latency(b, a)
    # in-plane neighbours at the same radius are 2 r sin(π/S) apart
    d = np.linalg.norm(pos[0] - pos[1])
    assert d == pytest.approx(2 * (EARTH_RADIUS_KM + alt) * math.sin(math.pi / per_plane), rel=0.02)


def test_bad_shells_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        WalkerShell(planes=2, sats_per_plane=2, altitude_km=550, inclination_deg=53, kind="spiral")
    with pytest.raises(ValueError, match="altitude"):
        WalkerShell(planes=2, sats_per_plane=2, altitude_km=5, inclination_deg=53)
    with pytest.raises(ValueError, match="phasing"):
        WalkerShell(planes=2, sats_per_plane=2, altitude_km=550, inclination_deg=53, phasing=3)


# -- presets, several shells, grazing limit -------------------------------------------------

def test_presets_have_the_filed_geometry():
    from mesh.presets import preset
    expect = {"starlink-s1": (1584, [(72, 22, 550, 53)]), "kuiper-k1": (1156, [(34, 34, 630, 51.9)]),
              "telesat-t1": (351, [(27, 13, 1015, 98.98)])}
    for name, (size, shells) in expect.items():
        cfg = preset(name)
        assert cfg.size == size
        assert [(s.planes, s.sats_per_plane, s.altitude_km, s.inclination_deg) for s in cfg.shells] == shells
    assert preset("telesat-t1").shells[0].kind == "star"
    assert preset("starlink-gen1").size == 4408


def test_several_shells_are_numbered_one_after_another():
    a = WalkerShell(planes=3, sats_per_plane=4, altitude_km=550, inclination_deg=53, name="a", line_of_sight=False)
    b = WalkerShell(planes=2, sats_per_plane=5, altitude_km=1200, inclination_deg=87, name="b", line_of_sight=False)
    c = Constellation([a, b], EPOCH)
    assert len(c) == 22 and c.shell_offset == [0, 12]
    assert c.shell_of[12] == 1 and c.plane_of[12] == 0 and c.slot_of[21] == 4
    alt = np.linalg.norm(c.positions(0.0), axis=1) - EARTH_RADIUS_KM
    assert np.all(np.abs(alt[:12] - 550) < 15) and np.all(np.abs(alt[12:] - 1200) < 15)
    pairs = grid_pairs(c)
    assert not np.any((pairs[:, 0] < 12) & (pairs[:, 1] >= 12)), "no laser links between shells"


def test_positions_at_many_times_match_single_calls(starlink):
    many = starlink.positions_at(np.array([0.0, 60.0, 3600.0]), np.array([3, 500]))
    for j, t in enumerate((0.0, 60.0, 3600.0)):
        np.testing.assert_allclose(many[:, j, :], starlink.positions(t)[[3, 500]], atol=1e-9)
        np.testing.assert_allclose(starlink.position_xyz(500, t), starlink.positions(t)[500], atol=1e-9)


@pytest.mark.parametrize("per_plane, up", [(8, False), (9, True)])
def test_grazing_limit_decides_in_plane_links(per_plane, up):
    # one plane at 550 km: the chord midpoint sits r·cos(π/S) from the centre;
    # S = 8 → 23 km above the Earth (blocked), S = 9 → 132 km (clear of 80 km)
    c = Constellation([WalkerShell(planes=1, sats_per_plane=per_plane, altitude_km=550, inclination_deg=53,
                                   phasing=0)], EPOCH)
    topo = Topology(c)
    for t in (0.0, 1000.0, 4000.0):
        assert len(topo.snapshot(t).pairs) == (per_plane if up else 0)
        assert topo.link_up(0, 1, t) is up


def test_max_grazing_range_matches_geometry():
    # Two satellites at 550 km whose chord just touches 80 km: 2·√(r² − (R+80)²) ≈ 5,016 km.
    r, g = EARTH_RADIUS_KM + 550, EARTH_RADIUS_KM + 80
    half = math.sqrt(r * r - g * g)
    ang = math.atan2(half, g)
    a = np.array([[r * math.cos(ang), r * math.sin(ang), 0.0]])
    b = np.array([[r * math.cos(ang), -r * math.sin(ang), 0.0]])
    assert np.linalg.norm(a - b) == pytest.approx(5016.5, abs=1)
    assert segment_clearance_km(a, b)[0] == pytest.approx(80.0, abs=1e-6)


def test_max_range_cuts_long_links(starlink):
    snap = Topology(starlink, max_range_km=1500).snapshot(0.0)
    assert len(snap.pairs) < 2 * len(starlink)
    assert snap.distance_km.max() <= 1500
    assert all(starlink.plane_of[a] != starlink.plane_of[b] for a, b in snap.pairs.tolist())


def test_star_shell_has_no_seam_links():
    shell = WalkerShell(planes=6, sats_per_plane=10, altitude_km=1015, inclination_deg=98.98, kind="star")
    topo = Topology(Constellation([shell], EPOCH))
    planes = {(topo.constellation.plane_of[a], topo.constellation.plane_of[b]) for a, b in topo.candidates.tolist()}
    assert (0, 5) not in planes and (5, 0) not in planes
    assert (0, 1) in planes and (4, 5) in planes


def test_in_plane_latency_is_the_reference_value(starlink):
    topo = Topology(starlink)
    assert topo.link_latency(0, 1, 0.0) * 1e3 == pytest.approx(6.58, abs=0.05)
    assert topo.link_latency(0, 1, 50.0) == topo.link_latency(1, 0, 50.0)
