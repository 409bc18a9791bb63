"""Laser-link patterns between shells: nearest satellites of adjacent shells, re-chosen as they drift."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mesh.config import ConfigError, config_to_toml, parse_config
from mesh.delivery import fleet_delivery
from mesh.isl import adjacent_shells, inter_shell_pairs, segment_clearance_km
from mesh.membership import fleet_config
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.presets import preset
from mesh.sim import Simulator
from mesh.sim.scenario import ScenarioSpec, build_topology, collect, plan
from mesh.topology import Topology
from mesh.world import World

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
LOW = WalkerShell(planes=7, sats_per_plane=8, altitude_km=550, inclination_deg=53, name="low", line_of_sight=False)
HIGH = WalkerShell(planes=6, sats_per_plane=7, altitude_km=600, inclination_deg=70, name="high", line_of_sight=False)


def _components(snap, n_sats: int) -> int:
    p = snap.pairs
    m = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n_sats, n_sats))
    return connected_components(m, directed=False)[0]


def test_adjacent_shells_by_altitude_rank():
    c = Constellation(list(preset("starlink-gen1").shells), EPOCH)
    # s1 550, s2 540, s3 570, s4 560, s5 560: 540–550–560(s4, s5)–570
    assert adjacent_shells(c) == [(0, 1), (0, 3), (0, 4), (2, 3), (2, 4), (3, 4)]
    k = Constellation(list(preset("kuiper").shells), EPOCH)
    assert adjacent_shells(k) == [(0, 1), (1, 2)]                # 630–610–590


@pytest.mark.parametrize("per_sat", [1, 2, 3])
def test_inter_shell_pairs_respect_terminals_range_and_line_of_sight(per_sat):
    c = Constellation([LOW, HIGH, replace(HIGH, altitude_km=650, name="top")], EPOCH)
    pos = c.positions(0.0)
    sizes = [s.size for s in c.shells]
    adj = adjacent_shells(c)
    pairs = inter_shell_pairs(pos, c.shell_offset, sizes, adj, per_sat, max_range_km=3000.0, grazing_km=80.0)
    assert len(pairs) > 0
    shell = np.array(c.shell_of)
    degree = np.bincount(pairs.ravel(), minlength=len(c))
    assert degree.max() <= per_sat
    assert all((min(a, b), max(a, b)) in adj for a, b in zip(shell[pairs[:, 0]], shell[pairs[:, 1]]))
    # at most one terminal per satellite towards each other shell
    towards = pairs[:, 0] * 3 + shell[pairs[:, 1]]
    back = pairs[:, 1] * 3 + shell[pairs[:, 0]]
    assert len(np.unique(np.r_[towards, back])) == 2 * len(pairs)
    d = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
    assert d.max() <= 3000.0
    assert segment_clearance_km(pos[pairs[:, 0]], pos[pairs[:, 1]]).min() >= 80.0
    # deterministic, sorted, a < b
    again = inter_shell_pairs(pos, c.shell_offset, sizes, adj, per_sat, max_range_km=3000.0, grazing_km=80.0)
    assert np.array_equal(pairs, again)
    assert np.all(pairs[:, 0] < pairs[:, 1])
    # each satellite's first choice is among its nearest: the shortest pair of all is taken
    assert d.min() == pytest.approx(_shortest_cross(pos, shell, adj), rel=1e-9)


def _shortest_cross(pos, shell, adj):
    best = np.inf
    for si, sj in adj:
        a, b = pos[shell == si], pos[shell == sj]
        best = min(best, float(np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2))))
    return best


def test_inter_shell_links_are_rechosen_and_agree_everywhere():
    c = Constellation([LOW, HIGH], EPOCH)
    topo = Topology(c, max_range_km=5000.0, inter_shell_links=2, inter_shell_interval_s=10.0)
    first, later = topo.inter_shell_at(0.0), topo.inter_shell_at(600.0)
    assert np.array_equal(first, topo.inter_shell_at(9.99))       # fixed within a slot
    assert not np.array_equal(first, later)                       # re-chosen as the shells drift
    snap = topo.snapshot(600.0)
    up = {tuple(p) for p in snap.pairs.tolist()}
    for a, b in later.tolist():
        assert topo.link_up(a, b, 600.0) == ((a, b) in up)
        if (a, b) in up:
            assert b in topo.partners_of(a, 600.0) and a in topo.partners_of(b, 600.0)
    a, b = (int(x) for x in first[0])
    if not any((a, b) == tuple(p) for p in later.tolist()):
        assert not topo.link_up(a, b, 600.0)                      # a pair of another slot is not a link


@pytest.mark.parametrize("name, n_sats", [("starlink-gen1", 4408), ("kuiper", 3236)])
def test_multi_shell_presets_form_one_network(name, n_sats):
    world = World.from_config(preset(name))
    topo = world.topology
    assert topo.n_sats == n_sats and topo.inter_shell_links == 2
    for t in (0.0, 25.0, 60.0, 600.0):
        assert _components(topo.snapshot(t), n_sats) == 1, t
    # without inter-shell links every shell is an island
    cfg = preset(name)
    alone = World.from_config(replace(cfg, links=replace(cfg.links, inter_shell_links=0))).topology
    assert _components(alone.snapshot(0.0), n_sats) == len(cfg.shells)


@pytest.mark.parametrize("name", ["starlink-gen1", "kuiper"])
def test_the_simulator_flies_multi_shell_presets_as_one_network(name):
    # what `orbitmesh sim --preset NAME` builds: its gossip and tasks can reach every shell
    topo, label = build_topology(name)
    assert label == name and topo.inter_shell_links == preset(name).links.inter_shell_links == 2
    for t in (0.0, 15.0, 45.0):
        snap = topo.snapshot(t)
        assert _components(snap, topo.n_sats) == 1, t
        assert snap.shortest_path(0, topo.n_sats - 1) is not None        # first shell to last


def test_ground_relays_bridge_shells_only_when_enabled():
    cfg = preset("starlink-gen1")
    cfg = replace(cfg, links=replace(cfg.links, inter_shell_links=0))
    src, dst = 10, 4300                       # shell s1 and shell s5
    closed = World.from_config(cfg).topology.snapshot(0.0)
    assert closed.shortest_path(src, dst) is None
    opened = World.from_config(replace(cfg, ground=replace(cfg.ground, relays=True))).topology
    path, _ = opened.snapshot(0.0).shortest_path(src, dst)
    assert any(x >= opened.n_sats for x in path[1:-1])           # it goes down to a station and up again


def test_inter_shell_config_is_checked_and_round_trips():
    cfg = preset("kuiper")
    back = parse_config(config_to_toml(cfg))
    assert back.links == cfg.links and back.links.inter_shell_links == 2
    base = config_to_toml(preset("demo"))
    for good, bad in (("inter_shell_links = 0", "inter_shell_links = 5"),
                      ("inter_shell_links = 0", "inter_shell_links = -1"),
                      ("inter_shell_links = 0", "inter_shell_links = true"),
                      ("inter_shell_interval_s = 10.0", "inter_shell_interval_s = 0")):
        assert good in base
        with pytest.raises(ConfigError, match=bad.split()[0]):
            parse_config(base.replace(good, bad))
    with pytest.raises(ConfigError, match="max_range_km"):
        parse_config(base.replace("[ground]\n", "[ground]\nmax_range_km = -3\n"))
    with pytest.raises(ValueError, match="inter_shell_links"):
        Topology(Constellation([LOW], EPOCH), inter_shell_links=9)


def _simulate(inter: int) -> dict:
    topo = Topology(Constellation([LOW, HIGH], EPOCH), max_range_km=None, inter_shell_links=inter)
    sim = Simulator(topo, seed=5, membership=fleet_config(), delivery=fleet_delivery())
    spec = ScenarioSpec(seconds=40.0, seed=5, kills=0, cuts=0, tasks=40, task_deadline_s=20.0)
    warmup = fleet_config().start_grace_s + 3.0
    sim.start_all()
    sim.schedule(plan(spec, sim, warmup))
    sim.run(spec.seconds)
    return collect(sim)


def test_two_shells_simulate_as_one_network():
    rep = _simulate(2)
    assert rep["nodes"] == 98
    (conv,) = rep["convergence"]
    assert conv["reached"] == conv["of"] == 97
    assert rep["tasks"]["delivered"] == rep["tasks"]["submitted"] == 40
    # the same shells without inter-shell links: state stays in its shell, cross-shell tasks fail
    apart = _simulate(0)
    (conv,) = apart["convergence"]
    assert conv["reached"] < 97
    assert apart["tasks"]["delivered"] < 40
