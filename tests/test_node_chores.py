"""An idle node's periodic chores read shared or cached answers, and the answers stay right:
the model list (cached until the directory changes), links expected down (sets looked up once
per instant), the links a node wants (exact at its instant)."""

import os
import time

import pytest

from agent.compute.models import ModelStore
from agent.links.peers import PeerEntry, Peers
from agent.ops.fleet import FleetSpec, fleet_config
from agent.runtime.node import Node
from agent.runtime.node_physics import CLOSING_LOOKAHEAD_S, OPENING_SETTLE_S
from mesh.world import World


START = 1_767_225_600.0          # fixed: the sky in these tests is the same every run


class _Host:
    def __init__(self, peer_id: str):
        self.peer_id = peer_id

    def listen_multiaddrs(self) -> list[str]:
        return []


def _node(tmp_path, name="sat-0", models=None) -> Node:
    cfg = fleet_config(FleetSpec(preset="starlink-s1", n=96, ground=("london", "tokyo"), time_scale=60.0))
    cfg = cfg.with_start(START)
    names = World.from_config(cfg).names
    entries = [PeerEntry(names.name(i), i, f"peer-{i}", f"/ip4/127.0.0.1/tcp/{20000 + i}/p2p/peer-{i}",
                         f"http://127.0.0.1:{30000 + i}") for i in range(len(names))]
    me = names.index(name)
    return Node(name, cfg, Peers(entries), _Host(f"peer-{me}"), models or ModelStore(tmp_path / "zoo"))


def _age(path, seconds=10.0):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_the_model_list_is_listed_again_only_when_the_directory_changes(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "a.onnx").write_bytes(b"x")
    store = ModelStore(zoo, uploads=tmp_path / "up")
    (tmp_path / "up" / "names").mkdir(parents=True, exist_ok=True)
    _age(zoo)
    assert store.names() == ["a"] and store.names() == ["a"] and store._zoo.listed == 1   # the second from the cache
    (zoo / "b.onnx").write_bytes(b"x")                   # the directory's mtime moves
    assert store.names() == ["a", "b"] and store.names() == ["a", "b"]
    _age(zoo)
    listed = store._zoo.listed
    assert store.names() == ["a", "b"] and store.names() == ["a", "b"] and store._zoo.listed == listed + 1
    (zoo / "a.onnx").unlink()
    _age(zoo, 5.0)                                       # removed, and settled
    assert store.names() == ["b"] and store.names() == ["b"]
    # an upload's name appears at once (the names directory moved)
    (tmp_path / "up" / "names" / "mine.json").write_text("{}")
    assert store.names() == ["b", "mine"] and store.uploaded_names() == ["mine"]
    assert ModelStore(tmp_path / "nowhere").names() == []


def _reference_down_expected(node, a, b, now):
    pair = (min(a, b), max(a, b))
    if pair in node._cut_links(now):
        return True
    if pair not in node.router.snapshot(node.orbit_t(now + CLOSING_LOOKAHEAD_S)).pair_set():
        return True
    if node.topology.names.is_ground(a) or node.topology.names.is_ground(b):
        return pair not in node.router.snapshot(node.orbit_t(now - OPENING_SETTLE_S)).pair_set()
    return False


def test_links_expected_down_follow_the_instant_and_a_clock_switch_at_it(tmp_path):
    node = _node(tmp_path, "sat-0")
    topo = node.topology
    pairs = [(a, b) for a in range(topo.n_nodes) for b in [*topo.neighbours_of(a), *range(topo.n_sats, topo.n_nodes)]
             if a < b]
    now = START + 100.0
    seen = set()
    for dt in (0.0, 0.0, 0.5, 7.0, 31.0):
        for a, b in pairs:
            got = node._link_down_expected(a, b, now + dt)
            assert got == _reference_down_expected(node, a, b, now + dt), (dt, a, b)
            seen.add(got)
    assert seen == {True, False}
    # the fleet's clock speeds up at this very instant: the next answers at it follow
    before = [node._link_down_expected(a, b, now + 40.0) for a, b in pairs]
    node.timekeeper.control({"speed": 1000}, now + 38.0)     # issued earlier, in force from now + 39 s
    after = [node._link_down_expected(a, b, now + 40.0) for a, b in pairs]
    assert after == [_reference_down_expected(node, a, b, now + 40.0) for a, b in pairs]
    assert after != before


@pytest.mark.parametrize("name", ["sat-5", "gs-tokyo"])
def test_the_links_a_node_wants_are_physics_at_its_instant(tmp_path, name):
    node = _node(tmp_path, name)
    topo, me = node.topology, node.me.index
    start = node.started
    for dt in [k * 0.37 for k in range(60)]:
        t = node.orbit_t(start + dt)
        want = set(topo.partners_of(me, t)) | set(topo.neighbours_of(me))
        assert node._wanted_partners(start + dt) == want


def test_one_satellites_sunlight_in_plain_floats_is_the_vectorised_answer():
    from mesh.orbit import Constellation, WalkerShell
    from mesh.sun import constellation_sunlit, sunlit_xyz
    c = Constellation([WalkerShell(planes=24, sats_per_plane=16, altitude_km=550, inclination_deg=53, phasing=1)],
                      2461041.5)
    lit = dark = 0
    for t in (0.0, 1234.5, 40000.0, 3e6):
        want = constellation_sunlit(c, t).tolist()
        got = [sunlit_xyz(*c.position_xyz(i, t), c.epoch_jd + t / 86400.0) for i in range(len(c))]
        assert got == want
        lit, dark = lit + sum(got), dark + got.count(False)
    assert lit > 100 and dark > 100


def test_state_drifts_go_out_less_often_in_a_large_fleet_and_not_in_one_wave(tmp_path, monkeypatch):
    """News (the low-battery flag here) goes at once; drifts below placement's thresholds go once a refresh
    period on average (0.5–1.5 of it, drawn), which grows with the fleet (98 members: 49 s, not
    30 s as before; starlink-s1: ~42 min)."""
    from agent import entropy, wallclock
    from mesh.membership_config import state_refresh_s
    assert state_refresh_s(24) == 30.0 and state_refresh_s(98) == 49.0 and state_refresh_s(500) == 250.0
    # beyond 500 the machine's budget of drift deliveries (n² / R) rules: s1 ~42 min, 0.63 records/s per node
    assert state_refresh_s(1590) == pytest.approx(1590 ** 2 / 1000) and 1590 / state_refresh_s(1590) < 0.65
    with pytest.raises(ValueError):
        state_refresh_s(0)
    clock = [START]
    monkeypatch.setattr(wallclock, "now", lambda: clock[0])
    gaps: list[float] = []
    firsts: set[float] = set()
    with entropy.seeded(5):
        for name in ("sat-0", "sat-1", "sat-2", "sat-3"):
            node = _node(tmp_path / name, name)
            published: list[tuple[float, dict]] = []
            monkeypatch.setattr(node.membership, "set_state", lambda st, out=published: out.append((clock[0], st)))
            state = {"battery": 0.80, "low": False}
            monkeypatch.setattr(node, "_own_state", lambda: dict(state))
            for step in range(0, 400):                 # a 2% drift each second
                clock[0] = START + step
                state["battery"] = 0.80 - 0.02 * (step % 2)
                node._publish_state()
            clock[0], state["low"] = START + 400.5, True      # below the reserve in eclipse: news, at once
            node._publish_state()
            times = [t - START for t, _ in published]
            assert times[0] == 0 and times[-1] == 400.5 and published[-1][1]["low"] is True
            drifts = times[:-1]
            steps = [b - a for a, b in zip(drifts, drifts[1:])]
            assert all(49 * 0.5 <= g <= 49 * 1.5 + 2 for g in steps), drifts   # + a step equal to the last
            gaps += steps
            firsts.add(drifts[1])
    assert 40 <= sum(gaps) / len(gaps) <= 60 and len(gaps) >= 16    # ~49 s on average (30 s before)
    assert len(firsts) == 4                              # drawn: four nodes, four moments


def test_a_battery_step_is_news_in_a_small_fleet_and_a_drift_in_a_large_one(tmp_path, monkeypatch):
    """Placement reads the low flag (and sunlight from physics), not the charge: a charge move floods the fleet at
    once only if it is large for the fleet's size (5% up to 60 members, > 100% at starlink-s1)."""
    from agent import wallclock
    from agent.runtime.placement import state_changed_enough
    from mesh.membership_config import battery_news_step
    assert battery_news_step(24) == 0.05 and battery_news_step(98) == pytest.approx(0.05 * 49 / 30)
    assert battery_news_step(1590) > 1.0
    old = {"battery": 0.60, "sunlit": True, "low": False}
    assert state_changed_enough(old, {**old, "battery": 0.65})                      # 5% at the default
    assert not state_changed_enough(old, {**old, "battery": 0.66}, battery_step=0.082)
    assert state_changed_enough(old, {**old, "battery": 0.70}, battery_step=0.082)
    assert state_changed_enough(old, {**old, "low": True}, battery_step=2.0)         # the low flag: always
    assert not state_changed_enough(old, {**old, "sunlit": False}, battery_step=2.0)  # sunlight: physics, not news
    node = _node(tmp_path, "sat-0")                      # 96 satellites and 2 stations: a step of ~8.2%
    monkeypatch.setattr(wallclock, "now", lambda: START)
    published: list[dict] = []
    monkeypatch.setattr(node.membership, "set_state", published.append)
    state = {"battery": 0.60, "sunlit": True, "low": False}
    monkeypatch.setattr(node, "_own_state", lambda: dict(state))
    for charge in (0.60, 0.66, 0.68, 0.70):
        state["battery"] = charge
        node._publish_state()
    assert [p["battery"] for p in published] == [0.60, 0.70]
