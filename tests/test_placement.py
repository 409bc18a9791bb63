"""Placement by expected completion, and the battery that constrains it (pure)."""

import pytest

from mesh.energy import Battery, EnergyConfig
from mesh.placement import Candidate, PlacementError, choose, expected_completion

KW = dict(in_bytes=256, out_bytes=64, bandwidth_bps=10e9, default_compute_s=0.010, heavy_s=0.020)


def test_expected_completion_adds_transfer_queue_wait_and_compute():
    c = Candidate("sat-3", latency_s=0.030, hops=1, backlog=2.0, compute_s=0.005)
    exp = expected_completion(c, 1000, 1000, 8e6, 0.010)           # 2000 B at 8 Mbit/s: 2 ms per hop
    assert exp == pytest.approx(0.060 + 0.002 + 0.001 + 2 * 0.005 + 0.005)


def test_an_idle_sunlit_node_beats_a_busy_one_and_a_dark_one_on_heavy_work():
    me = Candidate("sat-0", 0.0, 0, backlog=20.0, compute_s=0.09, sunlit=True)
    dark = Candidate("sat-1", 0.030, 1, backlog=0.0, compute_s=0.09, sunlit=False, low_battery=True)
    idle = Candidate("sat-2", 0.035, 1, backlog=0.0, compute_s=0.09, sunlit=True)
    assert choose("auto", [me, dark, idle], **KW).node == "sat-2"
    # A light task may still run on the dark node: it costs the battery nothing.
    light = [Candidate(c.node, c.latency_s, c.hops, backlog=c.backlog, compute_s=0.001, sunlit=c.sunlit,
                       low_battery=c.low_battery) for c in (me, dark, idle)]
    assert choose("auto", light, **KW).node == "sat-0"       # local, no transfer at all
    assert choose("nearest", [me, dark, idle], **KW).node == "sat-0"
    assert choose("sunlit", [dark, idle], **KW).node == "sat-2"


def test_nodes_without_the_model_are_not_candidates_and_the_error_says_why():
    with pytest.raises(PlacementError, match="1 lack the model, 1 in eclipse below their battery reserve"):
        choose("auto", [Candidate("a", 0.0, 0, has_model=False),
                        Candidate("b", 0.01, 1, compute_s=0.5, low_battery=True)], **KW)
    with pytest.raises(PlacementError, match="1 in eclipse"):
        choose("sunlit", [Candidate("a", 0.0, 0, sunlit=False)], **KW)


def test_a_deadline_nobody_can_meet_is_refused_with_the_best_estimate():
    far = Candidate("sat-9", 0.100, 3, compute_s=0.010)
    assert choose("auto", [far], time_left_s=1.0, **KW).node == "sat-9"
    with pytest.raises(PlacementError, match=r"within 0.10 s \(best: sat-9, expected 0.2"):
        choose("auto", [far], time_left_s=0.1, **KW)


def test_unknown_targets_are_a_programming_error():
    with pytest.raises(ValueError):
        choose("fastest", [Candidate("a", 0.0, 0)], **KW)


def test_battery_charges_in_sunlight_and_drains_in_eclipse_by_load():
    cfg = EnergyConfig(capacity_wh=1000.0, solar_w=3000.0, bus_w=500.0, compute_w=1500.0, initial=0.5)
    b = Battery(cfg)
    b.step(3600.0, sunlit=True, busy=0.0)
    assert b.wh == pytest.approx(1000.0)                     # +2.5 kW for an hour, clamped full
    b.step(1800.0, sunlit=False, busy=1.0)
    assert b.wh == pytest.approx(0.0)                        # −2 kW for half an hour
    b = Battery(cfg)
    b.step(1800.0, sunlit=False, busy=0.0)
    assert b.fraction == pytest.approx(0.25)                 # the bus alone: −0.5 kW
    assert b.used_wh == 0.0


def test_in_eclipse_below_reserve_heavy_work_is_refused_light_work_is_not():
    b = Battery(EnergyConfig(reserve=0.3, heavy_ms=20.0), fraction=0.2)
    b.step(0.0, sunlit=False, busy=0.0)
    assert b.low() and not b.accepts(0.090) and b.accepts(0.001)
    b.step(0.0, sunlit=True, busy=0.0)
    assert not b.low() and b.accepts(0.090)


@pytest.mark.parametrize("kw", [dict(capacity_wh=0), dict(reserve=1.0), dict(initial=1.5), dict(bus_w=-1)])
def test_bad_energy_config_is_refused(kw):
    with pytest.raises(ValueError):
        EnergyConfig(**kw)
