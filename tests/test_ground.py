"""Ground stations: geometry, visibility above the mask, handover, ground nodes in paths."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.ground import (BUILTIN_STATIONS, WGS84_A_KM, GroundStation, StationSet, builtin_station,
                         ecef_to_latlon, geodetic_to_ecef, parse_station, slant_range_km)
from mesh.nodes import NodeNames, ground_name, sat_name
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.topology import Topology

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
STARLINK = WalkerShell(planes=72, sats_per_plane=22, altitude_km=550, inclination_deg=53, phasing=1)
CITIES = [builtin_station(n) for n in ("london", "tokyo", "new-york", "sydney", "nairobi")]


@pytest.fixture(scope="module")
def starlink():
    return Constellation([STARLINK], EPOCH)


@pytest.fixture(scope="module")
def topo(starlink):
    return Topology(starlink, stations=CITIES)


def test_slant_range_at_25_degrees_is_the_reference():
    # design reference: a 550 km satellite at 25° elevation is ~1,123 km away (~3.75 ms)
    d = slant_range_km(550, 25)
    assert d == pytest.approx(1123, abs=2)
    assert d / 299792.458 * 1e3 == pytest.approx(3.75, abs=0.01)
    assert slant_range_km(550, 90) == pytest.approx(550)


def test_elevation_and_range_of_a_placed_satellite():
    # Station on the equator at 0°E; satellite at 550 km over the equator at the
    # central angle where it appears at exactly 25° elevation.
    r, e = WGS84_A_KM + 550, math.radians(25)
    lam = math.pi / 2 - e - math.asin(WGS84_A_KM * math.cos(e) / r)
    gs = StationSet([GroundStation("eq", 0.0, 0.0)])
    sats = np.array([[r * math.cos(lam * f), r * math.sin(lam * f), 0.0] for f in (0.0, 0.999, 1.0, 1.001)])
    el, az, rng = gs.look(0, sats)
    assert el[0] == pytest.approx(90.0)
    assert el[2] == pytest.approx(25.0, abs=1e-9)
    assert az[2] == pytest.approx(90.0)                     # due east
    assert rng[2] == pytest.approx(slant_range_km(550, 25), abs=1e-6)
    k, i, _, _ = gs.visible(sats, 25.0)
    assert i.tolist() == [0, 1]                             # 25.0° exactly sits on the float edge: excluded


def test_geodetic_round_trip():
    for name in ("london", "sydney", "svalbard", "mcmurdo", "bogota"):
        s = BUILTIN_STATIONS[name]
        lat, lon, alt = ecef_to_latlon(s.ecef())
        assert (lat, lon, alt) == pytest.approx((s.lat_deg, s.lon_deg, s.alt_km), abs=1e-7)
    # the poles are a (WGS-84) semi-minor axis from the centre
    assert np.linalg.norm(geodetic_to_ecef(90, 0, 0)) == pytest.approx(6356.752, abs=1e-3)


def test_station_parsing_and_names():
    assert parse_station("London") == BUILTIN_STATIONS["london"]
    assert parse_station("New York") == BUILTIN_STATIONS["new-york"]
    adhoc = parse_station("48.85, 2.35")
    assert (adhoc.lat_deg, adhoc.lon_deg, adhoc.name) == (48.85, 2.35, "48.8500N,2.3500E")
    assert parse_station("-33.9,-18.4,0.1").name == "33.9000S,18.4000W"
    with pytest.raises(KeyError, match="did you mean london"):
        parse_station("londn")
    with pytest.raises(ValueError, match="lat_deg"):
        GroundStation("x", 91, 0)
    with pytest.raises(ValueError, match="duplicate"):
        StationSet([BUILTIN_STATIONS["london"], BUILTIN_STATIONS["london"]])
    assert len(BUILTIN_STATIONS) >= 60


def test_node_names():
    names = NodeNames(10, ("london", "tokyo"))
    assert names.name(3) == sat_name(3) == "sat-3"
    assert names.name(11) == ground_name("tokyo") == "gs-tokyo"
    assert names.index("gs-london") == 10 and names.index("sat-9") == 9
    assert names.is_ground(10) and not names.is_ground(9)
    for bad in ("sat-10", "sat-01", "gs-paris", "tokyo", "sat-"):
        with pytest.raises(KeyError):
            names.index(bad)
    assert names.names()[-1] == "gs-tokyo" and len(names) == 12


def test_ground_links_respect_the_mask(topo):
    for t in (0.0, 777.0, 3000.0):
        snap = topo.snapshot(t)
        assert len(snap.ground_pairs) > 0
        assert np.all(snap.ground_elevation_deg >= 25.0)
        assert snap.ground_distance_km.max() < slant_range_km(570, 25)
        for (g, s), d in zip(snap.ground_pairs.tolist(), snap.ground_distance_km.tolist()):
            assert g == topo.n_sats + topo.names.station_index(g)
            assert topo.link_latency(g, s, t) == pytest.approx(d / 299792.458, rel=1e-12)
            assert topo.link_up(s, g, t) and topo.link_up(g, s, t)
        # every satellite not linked to london is below its mask
        london = topo.n_sats
        linked = {s for g, s in snap.ground_pairs.tolist() if g == london}
        el, _, _ = topo.stations.look(0, snap.positions[:topo.n_sats])
        assert linked == set(np.nonzero(el >= 25.0)[0].tolist())


def test_ground_to_ground_path(topo):
    snap = topo.snapshot(100.0)
    london, tokyo = topo.names.index("gs-london"), topo.names.index("gs-tokyo")
    path, cost = snap.shortest_path(london, tokyo)
    assert path[0] == london and path[-1] == tokyo
    assert all(not topo.names.is_ground(i) for i in path[1:-1]), "stations never relay"
    assert sum(snap.latency(a, b) for a, b in zip(path, path[1:])) == pytest.approx(cost)
    back, back_cost = snap.shortest_path(tokyo, london)
    assert back_cost == pytest.approx(cost, rel=1e-12)
    # London–Tokyo is ~9,560 km on the ground; through space it is longer, but not absurdly
    assert 9560 / 299792.458 < cost < 2.0 * 9560 / 299792.458
    # hop by hop from either end follows the same path
    here, walked = london, [london]
    while here != tokyo:
        here = snap.next_hop(here, tokyo)
        walked.append(here)
    assert walked == path


def test_path_avoids_down_nodes_and_links(topo):
    snap = topo.snapshot(100.0)
    london, tokyo = topo.names.index("gs-london"), topo.names.index("gs-tokyo")
    path, cost = snap.shortest_path(london, tokyo)
    alt, alt_cost = snap.shortest_path(london, tokyo, down_nodes=frozenset({path[1]}))
    assert path[1] not in alt and alt_cost >= cost
    cut = (min(path[2], path[3]), max(path[2], path[3]))
    alt2, _ = snap.shortest_path(london, tokyo, down_links=frozenset({cut}))
    assert all((min(a, b), max(a, b)) != cut for a, b in zip(alt2, alt2[1:]))
    assert snap.shortest_path(london, tokyo, down_nodes=frozenset({tokyo})) is None


@pytest.mark.parametrize("policy", ["highest_elevation", "longest_visibility", "sticky"])
def test_handover_policies_pick_one_satellite(starlink, policy):
    topo = Topology(starlink, stations=CITIES, handover=policy)
    allsky = Topology(starlink, stations=CITIES)
    for t in (0.0, 7.0, 16.0, 500.0):
        snap = topo.snapshot(t)
        per_station = np.bincount(snap.ground_pairs[:, 0] - topo.n_sats, minlength=len(CITIES))
        assert per_station.max() <= 1
        for k in range(len(CITIES)):
            view = topo.ground_view(topo.n_sats + k, t)
            assert view.slot[0] <= t < view.slot[1]
            seen = {v.sat for v in view.visible}
            if seen:
                assert view.serving in seen
                assert view.linked == [view.serving]
            if policy == "highest_elevation" and seen:
                start = allsky.ground_view(topo.n_sats + k, view.slot[0])
                assert view.serving == start.visible[0].sat or not topo.link_up(start.visible[0].sat,
                                                                                topo.n_sats + k, view.slot[1])
    # constant within a slot, deterministic across instances
    again = Topology(starlink, stations=CITIES, handover=policy)
    assert np.array_equal(topo.serving(31.0), topo.serving(44.9))
    assert np.array_equal(topo.serving(300.0), again.serving(300.0))


@pytest.mark.parametrize("city", range(len(CITIES)))
def test_longest_visibility_keeps_a_satellite_longer(starlink, city):
    hi = Topology(starlink, stations=CITIES[city:city + 1], handover="highest_elevation")
    lv = Topology(starlink, stations=CITIES[city:city + 1], handover="longest_visibility")
    changes = {name: sum(int(t.serving(s * 15.0)[0] != t.serving((s + 1) * 15.0)[0]) for s in range(40))
               for name, t in (("hi", hi), ("lv", lv))}
    # 10 minutes of 15 s slots: highest elevation hands over every minute or two
    # (8–13 times here); keeping the longest-visible satellite needs under half as many.
    # (Was `lv <= hi`, which two policies that never hand over would also pass.)
    assert changes["hi"] >= 5, changes
    assert 0 < changes["lv"] * 2 <= changes["hi"], changes
    assert all(lv.serving(s * 15.0)[0] >= 0 for s in range(41))     # someone serves the station throughout


def test_partners_of_ground_and_satellites(topo):
    t = 250.0
    snap = topo.snapshot(t)
    london = topo.names.index("gs-london")
    assert topo.partners_of(london, t) == sorted(j for j, _ in snap.neighbours(london))
    sat = snap.neighbours(london)[0][0]
    assert london in topo.partners_of(sat, t)
    assert topo.partners_of(sat, t) == sorted(j for j, _ in snap.neighbours(sat))
    assert topo.neighbours_of(london) == []


@settings(max_examples=20, deadline=None)
@given(lat=st.floats(-80, 80), lon=st.floats(-180, 180), mask=st.floats(0, 60), t=st.floats(0, 6000),
       planes=st.integers(4, 24), per_plane=st.integers(8, 24), alt=st.floats(400, 1500))
def test_visibility_property(lat, lon, mask, t, planes, per_plane, alt):
    c = Constellation([WalkerShell(planes=planes, sats_per_plane=per_plane, altitude_km=alt,
                                   inclination_deg=53, phasing=1)], EPOCH)
    topo = Topology(c, stations=[GroundStation("p", lat, lon)], elevation_mask_deg=mask)
    snap = topo.snapshot(t)
    el, _, rng = topo.stations.look(0, snap.positions[:len(c)])
    linked = set(snap.ground_pairs[:, 1].tolist())
    clear = np.abs(el - mask) > 1e-6
    assert linked & set(np.nonzero(clear)[0].tolist()) == set(np.nonzero(clear & (el >= mask))[0].tolist())
    if len(snap.ground_pairs):
        assert snap.ground_distance_km.max() <= slant_range_km(alt + 30, mask, WGS84_A_KM - 25)


def test_longest_visibility_is_sticky_and_pure(starlink):
    H = 15.0
    walk = Topology(starlink, stations=CITIES, handover="longest_visibility")
    chain = [walk.serving(j * H).copy() for j in range(40)]              # one anchor window, in order
    cold = Topology(starlink, stations=CITIES, handover="longest_visibility")
    for j in reversed(range(40)):                                         # any order, same answers
        assert np.array_equal(cold.serving(j * H + 1.0), chain[j])
    for j in range(1, 40):
        for k in range(len(CITIES)):
            prev = int(chain[j - 1][k])
            if prev >= 0 and walk.link_up(prev, walk.n_sats + k, j * H) and \
                    walk.stations.look(k, starlink.position(prev, (j + 1) * H))[0][0] >= 25.0:
                assert chain[j][k] == prev, "a satellite that stays in view is kept"


def test_two_agents_compute_the_same_mesh():
    # every agent builds its own world from the same config: same links, same paths, same handovers
    from mesh.presets import preset
    from mesh.world import World
    cfg = preset("starlink-s1")
    a, b = World.from_config(cfg), World.from_config(cfg)
    sa, sb = a.topology.snapshot(4321.0), b.topology.snapshot(4321.0)
    assert np.array_equal(sa.pairs, sb.pairs) and np.array_equal(sa.ground_pairs, sb.ground_pairs)
    assert np.array_equal(sa.distance_km, sb.distance_km)
    src, dst = a.names.index("gs-london"), a.names.index("gs-sydney")
    assert sa.shortest_path(src, dst) == sb.shortest_path(src, dst)
    assert a.topology.link_latency(src, sa.shortest_path(src, dst)[0][1], 4321.0) == \
        b.topology.link_latency(src, sb.shortest_path(src, dst)[0][1], 4321.0)


def test_a_satellite_is_out_of_every_stations_view_for_as_long_as_its_quiet_bound_says():
    # Topology.ground_quiet_s is what lets a satellite skip its look at the sky: within the
    # bound no station may see it; one in view now has a bound of 0.
    import statistics

    from mesh.presets import preset
    from mesh.world import World
    topo = World.from_config(preset("starlink-s1")).topology
    quiet = []
    for i in range(0, topo.n_sats, 53):
        q = topo.ground_quiet_s(i, 1234.5)
        quiet.append(q)
        if q > 0.0:       # the first contact, searched every 2 s, comes after the bound
            first = next((s for s in range(0, int(q) + 2, 2) if topo.contacts_of(i, 1234.5 + s)), None)
            assert first is None or first > q, (i, q, first)
    assert statistics.median(quiet) > 60.0, quiet       # minutes of most orbits: worth skipping
    in_view = [i for i in range(topo.n_sats) if topo.contacts_of(i, 0.0)]
    assert in_view and all(topo.ground_quiet_s(i, 0.0) == 0.0 for i in in_view)
    assert topo.ground_quiet_s(topo.n_sats, 0.0) == 0.0    # a station always looks
