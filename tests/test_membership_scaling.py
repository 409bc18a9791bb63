"""Membership rates scaled with the fleet (``mesh.membership_config.scaled_config``, issue 14).

The rule is pure: the demo keeps exactly ``fleet_config()``, rates only slow as the fleet
or a process grows, stay within their bounds and budgets, and bad inputs are refused with
a clear error.  On the in-process twin (production nodes, virtual clock) a fleet whose
budget forces T to several seconds still finds a crash everywhere within the documented
bound, with no false suspicion or death.
"""

from __future__ import annotations

import math

import pytest
import trio

from agent import wallclock
from agent.ops.inproc import InProcFleet
from mesh.membership_config import (MACHINE_FRAMES_S, MAX_PROBE_INTERVAL_S, MAX_SYNC_INTERVAL_S,
                                    MIN_SUSPICION_PERIODS, PROCESS_FRAMES_S, detection_s, fleet_config,
                                    probe_frames_s, rate_scale, scaled_config, suspicion_bounds)

SIZES = (1, 2, 24, 30, 96, 192, 250, 251, 384, 800, 1584, 4408, 10_000)


@pytest.mark.parametrize("n,k", [(24, 1), (24, 6), (24, 24), (30, 30), (44, 1), (120, 1), (250, 1), (62, 62)])
def test_small_fleets_keep_exactly_todays_config(n, k):
    assert scaled_config(n, k) == fleet_config()
    assert rate_scale(n, k) == 1.0


def test_the_demo_deployments_keep_todays_rates_and_detection():
    c = scaled_config(24)
    assert (c.probe_interval_s, c.gossip_interval_s, c.state_gossip_s, c.sync_interval_s) == (0.5, 0.1, 0.5, 20.0)
    expected, bound = detection_s(c, 24)
    assert 2.0 < expected < 3.0            # fleet_config's docstring: a death known everywhere in ~2.5 s
    assert expected < bound


@pytest.mark.parametrize("k", [1, 22, 66])
def test_rates_only_slow_as_the_fleet_grows(k):
    prev = None
    for n in SIZES:
        if n < k:
            continue
        c = scaled_config(n, k)
        lo, hi = suspicion_bounds(c, n)
        row = (c.probe_interval_s, c.gossip_interval_s, c.state_gossip_s, c.eager_gap_s, c.sync_interval_s,
               lo, detection_s(c, n)[1])
        if prev is not None:
            assert all(b >= a - 1e-12 for a, b in zip(prev, row)), (n, prev, row)
            assert c.dead_probe_every <= prev_dead
        prev, prev_dead = row, c.dead_probe_every


def test_rates_only_slow_as_more_satellites_share_a_process():
    n = 1000
    ts = [scaled_config(n, k).probe_interval_s for k in (1, 10, 100, 200, 400, 800, 1000)]
    assert ts == sorted(ts)
    assert ts[-1] > ts[0]       # a process of 1,000 is over its own budget, not just the machine's


@pytest.mark.parametrize("n", SIZES)
def test_every_rate_stays_within_its_bounds_and_budget(n):
    for k in sorted({1, min(n, 22), min(n, 66), n}):
        c = scaled_config(n, k)
        t = c.probe_interval_s
        assert 0.5 <= t <= MAX_PROBE_INTERVAL_S
        s = t / 0.5
        assert c.gossip_interval_s == pytest.approx(0.1 * s) and c.state_gossip_s == pytest.approx(0.5 * s)
        # Fewer gossip frames, each as much larger: the fleet's records still flow as fast.
        assert c.gossip_bytes == round(2048 * s)
        assert c.gossip_bytes / c.state_gossip_s == pytest.approx(2048 / 0.5, rel=1e-3)
        assert c.eager_gap_s == pytest.approx(0.01 * s)
        assert 20.0 <= c.sync_interval_s <= MAX_SYNC_INTERVAL_S
        if t < MAX_PROBE_INTERVAL_S:          # not capped: the budgets hold
            assert probe_frames_s(c, n) <= MACHINE_FRAMES_S * (1 + 1e-9)
            assert probe_frames_s(c, k) <= PROCESS_FRAMES_S * (1 + 1e-9)
        lo, hi = suspicion_bounds(c, n)
        base_lo, _ = suspicion_bounds(fleet_config(), n)
        assert lo >= base_lo - 1e-9                       # never less time to refute than at T0
        assert lo >= MIN_SUSPICION_PERIODS * t - 1e-9 or s == 1.0
        assert c.join_grace_s >= 3 * t - 1e-9 or s == 1.0
        # The rounds that make a link cut robust to loss are counted in rounds, not seconds: unchanged.
        assert (c.direct_attempts, c.link_fail_rounds, c.indirect_paths, c.indirect_attempts) == (2, 2, 2, 2)
        # Detection stays bounded even where the budget gives way (T capped).
        assert detection_s(c, n)[1] < 90.0


def test_starlink_s1_numbers_are_the_documented_ones():
    c = scaled_config(1584, 22)
    assert c.probe_interval_s == pytest.approx(3.168)
    assert probe_frames_s(c, 1584) == pytest.approx(1000.0)
    expected, bound = detection_s(c, 1584)
    assert 14 < expected < 17 and 30 < bound < 35      # rounds spared (spare_heard): ~T/2 later, at most T
    assert c.drift_gossip_s == pytest.approx(1584 ** 2 / 1000 / 100)   # a drift waits ~25 s a hop
    assert c.state_gossip_s == pytest.approx(3.168)      # news among states: as before
    # One process of all of them is capped: over budget, but detection is still bounded.
    c = scaled_config(1584, 1584)
    assert c.probe_interval_s == MAX_PROBE_INTERVAL_S


@pytest.mark.parametrize("args,kw,needle", [
    ((0,), {}, "fleet size n must be ≥ 1"),
    ((-5,), {}, "fleet size n must be ≥ 1"),
    ((24.0,), {}, "fleet size n must be a whole number"),
    ((True,), {}, "fleet size n must be a whole number"),
    (("24",), {}, "fleet size n must be a whole number"),
    ((24, 0), {}, "satellites per process must be ≥ 1"),
    ((24, 2.5), {}, "satellites per process must be a whole number"),
    ((24, 25), {}, "25 satellites per process but the fleet has only 24"),
    ((24, 1), {"machine_frames_s": 0}, "machine_frames_s must be a finite number > 0"),
    ((24, 1), {"process_frames_s": -1.0}, "process_frames_s must be a finite number > 0"),
    ((24, 1), {"machine_frames_s": math.nan}, "machine_frames_s must be a finite number > 0"),
    ((24, 1), {"machine_frames_s": math.inf}, "machine_frames_s must be a finite number > 0"),
    ((24, 1), {"process_frames_s": "many"}, "process_frames_s must be a finite number > 0"),
])
def test_bad_inputs_are_refused_with_a_clear_error(args, kw, needle):
    with pytest.raises(ValueError, match=needle):
        scaled_config(*args, **kw)


async def test_a_node_takes_its_rates_from_the_peers_file_and_its_process(tmp_path, tiny_models, virtual_clock):
    """Every Node is built as the daemon and a satellite host build it: n from the peers file,
    K from the process (InProcFleet passes the K it stands for)."""
    fleet = InProcFleet(tmp_path / "a", tiny_models, 6, models=("matmul",), sats_per_process=6)
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        assert all(fleet[m].membership.m.config == scaled_config(6, 6) == fleet_config() for m in fleet.members)
        assert fleet["sat-0"].membership.describe()["rates"]["probe_interval_s"] == 0.5
        nursery.cancel_scope.cancel()
    over = InProcFleet(tmp_path / "b", tiny_models, 6, models=("matmul",), sats_per_process=7)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match="7 satellites per process but the fleet has only 6"):
            await over.start(nursery)


SATS = 48
BUDGET = 30.0          # probe frames/s for the whole fleet: forces T to several seconds at 54 nodes


async def test_scaled_rates_still_find_a_crash_everywhere_within_the_bound_and_no_false_death(
        tmp_path, tiny_models, virtual_clock):
    assert wallclock.is_virtual()
    probe = InProcFleet(tmp_path / "probe", tiny_models, SATS, models=("matmul",), preset="demo")
    n = len(probe.peers.by_name)
    cfg = scaled_config(n, 1, machine_frames_s=BUDGET)
    assert cfg.probe_interval_s > 6 * fleet_config().probe_interval_s    # really slowed down
    expected, bound = detection_s(cfg, n)
    fleet = InProcFleet(tmp_path / "fleet", tiny_models, SATS, models=("matmul",), preset="demo",
                        membership=cfg)
    victim = "sat-20"
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        await fleet.ready()
        assert all(fleet[m].membership.m.config is cfg for m in fleet.members)
        shown = fleet[victim].membership.describe()["rates"]     # GET /v1/membership
        assert shown["probe_interval_s"] == cfg.probe_interval_s and shown["sync_interval_s"] == cfg.sync_interval_s
        # Past start-up and the join grace of every link: the steady state the bound is about.
        await trio.sleep(cfg.join_grace_s + cfg.start_grace_s)
        def counts():
            return [sum(fleet[m].membership.m.stats[k] for m in fleet.members) for k in ("probes", "rounds_spared")]
        before = counts()
        t0 = trio.current_time()
        await trio.sleep(4 * cfg.probe_interval_s)
        probed, spared = (now - was for now, was in zip(counts(), before))
        rate = (probed + spared) / (trio.current_time() - t0) / n
        others = [m for m in fleet.members if m != victim]
        vi = fleet.peers[victim].index
        killed = trio.current_time()
        await fleet.kill(victim)
        with trio.fail_after(bound + 30):
            while not all(vi in fleet[m].membership.dead_nodes() for m in others):
                await trio.sleep(0.1)
        out["took"] = trio.current_time() - killed
        await trio.sleep(2 * cfg.probe_interval_s + 5)      # and nobody else falls afterwards
        out["verdicts"] = {m: {k: dict(v) for k, v in fleet[m].membership.verdicts.items()} for m in others}
        nursery.cancel_scope.cancel()
    assert rate == pytest.approx(1 / cfg.probe_interval_s, rel=0.25)   # one round per period per node
    # ... of which about half are spared: the neighbour's own ping came since our last round for it
    assert cfg.spare_heard and 0.3 < spared / (probed + spared) < 0.7, (probed, spared)
    assert out["took"] <= bound, (out["took"], expected, bound)
    wrong = {m: v for m, v in out["verdicts"].items() if set(v["dead"]) - {victim} or set(v["suspect"]) - {victim}}
    assert not wrong


# -- the protocol at scaled rates, on the pure twin of tests/test_membership.py ----------------------

def twin_config(period_s: float):
    """The rule's config for the twin's 16 nodes with a budget that gives ``period_s``."""
    from tests.test_membership import N, cfg
    c = scaled_config(N, 1, base=cfg(), machine_frames_s=2 * N / period_s)
    assert c.probe_interval_s == pytest.approx(period_s)
    return c


@pytest.mark.parametrize("period_s", [2.0, MAX_PROBE_INTERVAL_S])
def test_at_scaled_rates_a_death_is_known_everywhere_within_the_bound(period_s):
    from mesh.membership import NodeDead
    from tests.test_membership import N, Twin
    c = twin_config(period_s)
    tw = Twin(c)
    tw.run(c.join_grace_s + 2 * period_s)
    killed = tw.now
    tw.kill(5)
    _, bound = detection_s(c, N)
    while not all(tw.nodes[i].status(5) == "dead" for i in tw.live()):
        assert tw.now - killed <= bound, (tw.now - killed, bound)
        tw.run(tw.now + 0.1)
    assert {e.node for _, e in tw.events if isinstance(e, NodeDead)} == {5}


@pytest.mark.parametrize("period_s", [2.0, MAX_PROBE_INTERVAL_S])
def test_at_scaled_rates_no_false_death_under_ten_percent_loss(period_s):
    from mesh.membership import NodeDead
    from tests.test_membership import Twin
    c = twin_config(period_s)
    tw = Twin(c, loss=0.1, seed=4)
    tw.run(80 * period_s)          # as many periods as test_membership's 40 s at 0.5 s
    assert not any(isinstance(e, NodeDead) for _, e in tw.events)
    assert all(tw.nodes[i].dead_nodes() == frozenset() for i in tw.live())


@pytest.mark.parametrize("period_s", [2.0, MAX_PROBE_INTERVAL_S])
def test_at_scaled_rates_a_busy_host_that_reports_its_lag_declares_no_false_death(period_s):
    import random

    from mesh.membership import NodeDead
    from tests.test_membership import N, Twin
    tw = Twin(twin_config(period_s))
    tw.run(3.0)
    rng = random.Random(1)
    t = 3.0
    while t < 60.0:                # loops stall with p = 0.3 every 0.2 s, for up to 3 s
        for i in range(N):
            if i not in tw.stalled and rng.random() < 0.3:
                tw.stall(i, rng.uniform(0.1, 3.0))
        t += 0.2
        tw.run(t)
    tw.run(90.0)
    assert not any(isinstance(e, NodeDead) for _, e in tw.events)
    assert sum(m.stats["verdicts_held"] for m in tw.nodes.values()) > 0     # the hold was needed


@pytest.mark.parametrize("period_s", [2.0, MAX_PROBE_INTERVAL_S])
def test_at_scaled_rates_a_cut_link_is_reported_down_and_no_node_dies(period_s):
    from mesh.membership import NodeDead
    from tests.test_membership import Twin
    c = twin_config(period_s)
    tw = Twin(c)
    tw.run(c.join_grace_s)
    tw.cut |= {(0, 1), (1, 0)}
    tw.run(tw.now + 20 * period_s)
    assert not any(isinstance(e, NodeDead) for _, e in tw.events)
    assert all(tw.nodes[i].down_links() == {(0, 1)} for i in tw.live())


def test_the_simulator_plans_time_for_the_detection_its_rates_allow():
    from agent.ops.sim_nodes import SimSpec, needed_seconds
    assert needed_seconds(SimSpec(), 24) == needed_seconds(SimSpec(), 198) == needed_seconds(SimSpec()) == 20.0
    _, bound = detection_s(scaled_config(1590), 1590)
    assert needed_seconds(SimSpec(), 1590) == pytest.approx(8.0 + 1.0 + 4.0 + bound)
    assert needed_seconds(SimSpec(kills=0), 1590) == 20.0          # no kill: nothing to wait for


async def test_a_satellite_host_runs_each_satellite_with_its_k(tmp_path, monkeypatch):
    """``orbitmesh sat-host`` passes K (its satellites) to each satellite's daemon code, which
    builds its Node with it; the daemon alone runs K = 1 (run_satellite's default)."""
    import inspect

    import agent.sat_host as sat_host
    from agent.daemon import run_satellite
    from agent.serve.auth import AgentAuth
    from tests.test_sat_host import _Peers
    assert inspect.signature(run_satellite).parameters["sats_per_process"].default == 1
    seen: dict[str, int] = {}

    async def fake_run_satellite(name, *args, sats_per_process, task_status, **kw):
        seen[name] = sats_per_process
        task_status.started()
        await trio.sleep_forever()
    monkeypatch.setattr(sat_host, "run_satellite", fake_run_satellite)
    names = ["sat-0", "sat-1", "sat-2"]
    from mesh.presets import preset      # the host builds its satellites' one World from it
    host = sat_host.SatHost("host-0", names, preset("demo"), _Peers(names), tmp_path, tmp_path, auth=AgentAuth(None))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        nursery.cancel_scope.cancel()
    assert seen == {n: 3 for n in names}


def state_flood(c) -> tuple[int, object]:
    """Every node of the twin publishes a new state each second for 20 s (a large fleet's steady
    trickle of records, compressed); returns the Gossip frames sent and the twin after 5 periods more."""
    from mesh.gossip_msgs import Gossip
    from tests.test_membership import N, Twin
    tw = Twin(c)
    tw.run(3.0)
    for step in range(20):
        for i in range(N):
            tw.out(i, tw.nodes[i].set_state(tw.now, {"load": step, "me": i}))
        tw.run(tw.now + 1.0)
    tw.run(tw.now + 5 * c.state_gossip_s)
    return sum(isinstance(msg, Gossip) for _, _, msg in tw.sent), tw


def test_at_scaled_rates_state_records_share_batched_frames_and_still_reach_everyone():
    from dataclasses import replace

    from tests.test_membership import N
    c = twin_config(2.0)
    assert c.eager_state is False and fleet_config().eager_state is True
    batched, tw = state_flood(c)
    eager, _ = state_flood(replace(c, eager_state=True))
    assert batched * 2 < eager, (batched, eager)
    for i in tw.live():
        for j in range(N):
            assert tw.nodes[i].node_state(j) == {"load": 19, "me": j}, (i, j)
