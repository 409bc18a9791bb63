"""The project's +Grid and routing against an independent reference of Hypatia's Starlink scenario.

``tests/hypatia_reference.py`` rebuilds Hypatia's Starlink-550 scenario from
its published definitions with pyephem and networkx (none of the project's
code); here the project flies the same TLE text through its own config,
grouping, topology and Dijkstra.
"""

from dataclasses import replace

import numpy as np
import pytest

import hypatia_reference as H
from mesh.config import GroundConfig, config_to_toml, parse_config
from mesh.ground import GroundStation
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.presets import from_tle
from mesh.tle import group_tles, parse_tles
from mesh.topology import grid_pairs
from mesh.world import World

EPOCH = iso_to_jd(H.EPOCH_ISO)


def _pairs_by_id(shells, ids_of=lambda rec: int(rec.name.split()[1])) -> set[tuple[int, int]]:
    """The grid's pairs renamed to the ids in the TLE title lines."""
    c = Constellation(shells, EPOCH)
    ids = [ids_of(rec) for s in shells for rec in s.records]
    return {tuple(sorted((ids[a], ids[b]))) for a, b in grid_pairs(c).tolist()}


def _hypatia_config():
    cfg = from_tle(H.tle_text(), name="hypatia-starlink-550")
    stations = tuple(GroundStation(n.lower(), lat, lon, elev / 1000.0)
                     for n, lat, lon, elev in (H.RIO_DE_JANEIRO, H.SAINT_PETERSBURG))
    # Hypatia's 25° mask is a distance (cone radius 940.7 km at 550 km): no elevation test.
    return replace(cfg, ground=GroundConfig(stations=stations, elevation_mask_deg=0.0, handover="all",
                                            max_range_km=H.MAX_GSL_LENGTH_M / 1000.0))


def test_grouped_hypatia_tles_give_hypatias_plus_grid():
    shells = group_tles(parse_tles(H.tle_text()), EPOCH)
    assert [(s.kind, s.planes, s.sats_per_plane) for s in shells] == [("delta", 72, 22)]
    assert _pairs_by_id(shells) == H.plus_grid()


@pytest.mark.parametrize("shift", [1, 5])
def test_isl_shift_follows_hypatia(shift):
    shells = group_tles(parse_tles(H.tle_text()), EPOCH, isl_shift=shift)
    assert _pairs_by_id(shells) == H.plus_grid(isl_shift=shift)


def test_half_slot_offset_pairs_same_index_not_zig_zag():
    # 8 planes × 10, odd planes half a slot ahead: "closest" is a tie for every satellite.
    text = H.tle_text(num_orbits=8, sats_per_orbit=10)
    shells = group_tles(parse_tles(text), EPOCH)
    got = _pairs_by_id(shells)
    assert got == H.plus_grid(8, 10)
    # every cross-plane partner has the same slot: orbit o slot s ↔ orbit o+1 slot s
    cross = {(a, b) for a, b in got if a // 10 != b // 10}
    assert all(a % 10 == b % 10 for a, b in cross) and len(cross) == 80
    # the closest-phase alternative still exists, by name, and is a full 4-regular grid
    (alt,) = group_tles(parse_tles(text), EPOCH, pattern="closest_phase")
    degree = np.bincount(grid_pairs(Constellation([alt], EPOCH)).ravel())
    assert degree.min() == degree.max() == 4
    with pytest.raises(ValueError, match="pattern"):
        group_tles(parse_tles(text), EPOCH, pattern="zig-zag")


def test_catalogue_order_falls_back_to_slots_from_the_ascending_node():
    # the same satellites listed in a scrambled order: slot 0 is the one at the node
    recs = list(parse_tles(H.tle_text(num_orbits=8, sats_per_orbit=10)))
    rng = np.random.default_rng(3)
    scrambled = [recs[int(j)] for j in rng.permutation(len(recs))]
    assert _pairs_by_id(group_tles(scrambled, EPOCH)) == H.plus_grid(8, 10)


def test_walker_isl_shift():
    shell = WalkerShell(planes=6, sats_per_plane=8, altitude_km=600, inclination_deg=53, phasing=0, isl_shift=2)
    pairs = {tuple(p) for p in grid_pairs(Constellation([shell], EPOCH)).tolist()}
    for p in range(6):
        for s in range(8):
            a, b = p * 8 + s, ((p + 1) % 6) * 8 + (s + 2) % 8
            assert (min(a, b), max(a, b)) in pairs
    with pytest.raises(ValueError, match="isl_shift"):
        WalkerShell(planes=6, sats_per_plane=8, altitude_km=600, inclination_deg=53, isl_shift=8)


def test_hypatia_scenario_config_round_trips():
    cfg = _hypatia_config()
    back = parse_config(config_to_toml(cfg))
    assert back.ground == cfg.ground and back.tle.isl_shift == 0
    assert back.tle_shells[0].cross_shift == cfg.tle_shells[0].cross_shift


def test_rtt_matches_reference_every_second_for_200_s():
    world = World.from_config(_hypatia_config())
    topo = world.topology
    n = topo.n_sats
    table = H.rtt_table()                  # the reference's RTT each second (checked against it below)
    assert len(table) == H.RTT_TABLE_SECONDS == 200
    worst = 0.0
    for t in range(0, 200):
        path = topo.snapshot(float(t)).shortest_path(n, n + 1)
        want = table[t]
        assert (path is None) == (want is None), t
        got = 2.0 * path[1]
        worst = max(worst, abs(got - want))
        assert abs(got - want) < 0.05e-3, (t, got, want)
        assert path[0][0] == n and path[0][-1] == n + 1 and all(x < n for x in path[0][1:-1])
    assert worst < 0.05e-3


def test_the_stored_reference_rtts_are_the_references_own():
    """A sample of instants here (the reference takes ~30 ms each); every one in the slow suite."""
    ref, table = H.Reference(), H.rtt_table()
    for t in (0, 1, 37, 64, 99, 100, 128, 151, 176, 199):
        live = ref.rtt_s(float(t))
        assert (table[t] is None) == (live is None) and table[t] == pytest.approx(live, rel=1e-12), t


@pytest.mark.slow
def test_the_stored_reference_rtts_are_the_references_own_every_second():
    table, live = H.rtt_table(), H.compute_rtt_table()
    assert [x is None for x in table] == [x is None for x in live]
    assert [x for x in table if x is not None] == pytest.approx([x for x in live if x is not None], rel=1e-12)
