"""Ground-station handover policies (mesh/handover.py): pure, one slot at a time."""

import numpy as np
import pytest

from mesh.config import ConfigError, config_to_toml, parse_config
from mesh.ground import StationSet, builtin_station
from mesh.handover import ANCHOR_SLOTS, HANDOVER_POLICIES, Handover
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.presets import preset

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
STARLINK = WalkerShell(planes=72, sats_per_plane=22, altitude_km=550, inclination_deg=53, phasing=1)
STATIONS = StationSet([builtin_station(n) for n in ("london", "tokyo", "new-york", "sydney", "nairobi", "svalbard")])
H = 15.0
SLOTS = 60                                     # 15 min: several passes per station


@pytest.fixture(scope="module")
def starlink():
    return Constellation([STARLINK], EPOCH)


@pytest.fixture(scope="module")
def chains(starlink):
    """Each policy's choice for slots 0 … SLOTS-1, and the sky (in view at the slot's start and end)."""
    out = {}
    for policy in HANDOVER_POLICIES:
        h = Handover(starlink, STATIONS, policy=policy, interval_s=H)
        out[policy] = (h, np.array([h.slot(n) for n in range(SLOTS)]))
    return out


def _sky(h: Handover, n: int) -> tuple[dict, dict]:
    """Per station: {sat: sin elevation} at the slot's start, and the set still in view at its end."""
    c = h.constellation
    k0, i0, s0, _ = h._visible(c.positions(n * H))
    k1, i1, _, _ = h._visible(c.positions((n + 1) * H))
    start = {k: {int(i): float(s) for kk, i, s in zip(k0, i0, s0) if kk == k} for k in range(len(STATIONS))}
    end = {k: {int(i) for kk, i in zip(k1, i1) if kk == k} for k in range(len(STATIONS))}
    return start, end


def _changes(col: np.ndarray) -> int:
    return int(((col[1:] != col[:-1]) & (col[1:] >= 0) & (col[:-1] >= 0)).sum())


def test_every_policy_serves_a_satellite_in_view(chains):
    for policy, (h, chosen) in chains.items():
        for n in (0, 7, 33):
            start, _ = _sky(h, n)
            for k in range(len(STATIONS)):
                s = int(chosen[n, k])
                assert (s >= 0) == bool(start[k]), (policy, n, k)
                if s >= 0:
                    assert s in start[k]


def test_highest_elevation_takes_the_highest_stayer_every_slot(chains):
    h, chosen = chains["highest_elevation"]
    for n in range(0, SLOTS, 6):
        start, end = _sky(h, n)
        for k, sky in start.items():
            stayers = {i: s for i, s in sky.items() if i in end[k]} or sky
            if stayers:
                assert int(chosen[n, k]) == max(stayers, key=lambda i: (stayers[i], -i))


def test_sticky_keeps_its_satellite_until_lost_then_takes_the_highest(chains):
    h, chosen = chains["sticky"]
    kept = switched = 0
    for n in range(1, SLOTS):
        start, end = _sky(h, n)
        for k in range(len(STATIONS)):
            prev, cur = int(chosen[n - 1, k]), int(chosen[n, k])
            if n % ANCHOR_SLOTS == 0:
                prev = int(h._seed(n)[k])                 # a chain restarts from its warm-up here
            if prev >= 0 and prev in start[k] and prev in end[k]:
                assert cur == prev
                kept += 1
            elif cur >= 0:
                stayers = {i: s for i, s in start[k].items() if i in end[k]} or start[k]
                assert cur == max(stayers, key=lambda i: (stayers[i], -i))
                switched += 1
    assert kept > 5 * switched > 0


def test_longest_visibility_keeps_until_lost_then_takes_the_one_that_stays_longest(chains):
    h, chosen = chains["longest_visibility"]
    switched = 0
    for n in range(1, SLOTS):
        start, end = _sky(h, n)
        for k in range(len(STATIONS)):
            prev, cur = int(chosen[n - 1, k]), int(chosen[n, k])
            if n % ANCHOR_SLOTS == 0:
                prev = int(h._seed(n)[k])                 # a chain restarts from its warm-up here
            if prev >= 0 and prev in start[k] and prev in end[k]:
                assert cur == prev
            elif cur >= 0:
                stayers = [i for i in start[k] if i in end[k]]
                if len(stayers) > 1:
                    ks = np.full(len(stayers), k)
                    sets = h._set_times((n + 1) * H, ks, np.array(stayers))
                    assert sets[stayers.index(cur)] == sets.max()
                    switched += 1
    assert switched > 0


def test_keeping_policies_hand_over_less_than_highest_elevation(chains):
    count = {p: sum(_changes(chains[p][1][:, k]) for k in range(len(STATIONS))) for p in HANDOVER_POLICIES}
    assert count["sticky"] < count["highest_elevation"]
    assert count["longest_visibility"] <= count["sticky"]
    assert chains["all"][0].handovers(0, 0.0, SLOTS * H) == 0     # "all" has no single satellite


def test_handovers_counts_changes_between_satellites(chains):
    for policy in ("highest_elevation", "sticky", "longest_visibility"):
        h, chosen = chains[policy]
        for k in range(len(STATIONS)):
            col = chosen[:, k]
            assert h.handovers(k, 0.0, (SLOTS - 1) * H) == _changes(col)
            # split anywhere: the parts add up; a window inside one slot has none
            assert h.handovers(k, 0.0, 300.0) + h.handovers(k, 300.0, (SLOTS - 1) * H) == _changes(col)
            assert h.handovers(k, 301.0, 314.0) == 0
            assert h.handovers(k, 500.0, 400.0) == 0


def test_gaps_are_not_handovers():
    # two satellites in one plane: a station sees one, then nothing, then the other
    lone = Constellation([WalkerShell(planes=1, sats_per_plane=2, altitude_km=550, inclination_deg=53, phasing=0)], EPOCH)
    h = Handover(lone, STATIONS, policy="sticky", interval_s=H)
    chosen = np.array([h.slot(n) for n in range(400)])
    gapped = 0
    for k in range(len(STATIONS)):
        col = chosen[:, k]
        runs = [int(x) for j, x in enumerate(col) if x >= 0 and (j == 0 or col[j - 1] != x)]
        gapped += sum(a != b for a, b in zip(runs, runs[1:]))
        assert h.handovers(k, 0.0, 399 * H) == _changes(col)
    assert gapped > 0 and sum(_changes(chosen[:, k]) for k in range(len(STATIONS))) == 0


@pytest.mark.parametrize("policy", ["sticky", "longest_visibility"])
def test_keeping_choices_are_pure_functions_of_t(starlink, chains, policy):
    _, walked = chains[policy]
    cold = Handover(starlink, STATIONS, policy=policy, interval_s=H)
    for n in reversed(range(SLOTS)):                     # any order, same answers
        assert np.array_equal(cold.serving(n * H + 3.0), walked[n])
    # a chain restarts at each anchor from a cold warm-up ANCHOR_SLOTS slots before it
    seed = None
    for n in range(0, ANCHOR_SLOTS):
        seed = cold._choose(n, seed)
    assert np.array_equal(cold._seed(ANCHOR_SLOTS), seed)


@pytest.mark.parametrize("policy, first", [("highest_elevation", 0), ("sticky", -ANCHOR_SLOTS)])
def test_a_walk_of_slots_propagates_each_boundary_once(starlink, chains, monkeypatch, policy, first):
    """Slot n's end is slot n+1's start: a chain computes the sky there once, and gets the same choices.

    A keeping policy warms up ANCHOR_SLOTS slots before each anchor: before slot 0 that is new sky,
    before slot ANCHOR_SLOTS it is the sky the walk has just passed."""
    calls = []
    real = starlink.positions_at
    monkeypatch.setattr(starlink, "positions_at", lambda times, *a: calls.append(np.atleast_1d(times).copy()) or
                        real(times, *a))
    h = Handover(starlink, STATIONS, policy=policy, interval_s=H)
    assert SLOTS > ANCHOR_SLOTS
    walked = np.array([h.slot(n) for n in range(SLOTS)])
    assert np.array_equal(walked, chains[policy][1])
    instants = [float(t) for ts in calls for t in ts]
    assert sorted(instants) == [n * H for n in range(first, SLOTS + 1)]


def test_bad_policy_and_interval_are_clear_errors(starlink):
    with pytest.raises(ValueError, match="handover must be one of"):
        Handover(starlink, STATIONS, policy="nearest")
    with pytest.raises(ValueError, match="handover_interval_s"):
        Handover(starlink, STATIONS, policy="sticky", interval_s=0)
    base = config_to_toml(preset("demo"))
    assert parse_config(base.replace('handover = "all"', 'handover = "sticky"')).ground.handover == "sticky"
    with pytest.raises(ConfigError, match="ground.handover: must be one of all, highest_elevation, "
                                          "longest_visibility, sticky"):
        parse_config(base.replace('handover = "all"', 'handover = "nearest"'))
