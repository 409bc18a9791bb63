"""The discrete-event simulator: deterministic runs of membership, routing and delivery under faults."""

from __future__ import annotations

import json

import pytest

from mesh.membership import fleet_config
from mesh.sim import Cut, Kill, Partition, Restart, Simulator, Tasks
from mesh.sim.scenario import build_topology, run_flood_baseline, run_scenario

SEED = 7


@pytest.fixture(scope="module")
def demo_topo():
    return build_topology("demo")[0]


def sim_of(topo, **kw) -> Simulator:
    sim = Simulator(topo, seed=kw.pop("seed", SEED), membership=kw.pop("membership", fleet_config()), **kw)
    sim.start_all()
    return sim


def strip(rep):
    return {k: v for k, v in rep.items() if k not in ("wall_s", "total_wall_s")}


def test_same_seed_same_results():
    a = run_scenario(preset="demo", seconds=40, seed=3, loss=0.1, kills=1, cuts=1, tasks=30, task_deadline_s=20)
    b = run_scenario(preset="demo", seconds=40, seed=3, loss=0.1, kills=1, cuts=1, tasks=30, task_deadline_s=20)
    c = run_scenario(preset="demo", seconds=40, seed=4, loss=0.1, kills=1, cuts=1, tasks=30, task_deadline_s=20)
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_a_death_is_detected_everywhere_within_three_seconds_under_loss():
    rep = run_scenario(preset="demo", seconds=30, seed=SEED, loss=0.1, kills=2, cuts=0)
    assert len(rep["deaths"]) == 2                    # both kills measured, or the loop proves nothing
    for d in rep["deaths"]:
        assert d["reached"] == d["of"] == 22
        assert d["first_suspect_s"] < d["first_dead_s"] <= d["all_dead_s"] < 3.0


def test_no_false_positive_under_ten_percent_loss_for_three_minutes(demo_topo):
    """24 nodes, 10% loss on every link direction, 180 simulated seconds: nobody is declared dead."""
    sim = sim_of(demo_topo, loss=0.1)
    sim.run(180.0)
    assert sim.false_dead == []
    assert sim.false_link_down == 0
    assert all(sim.nodes[i].m.dead_nodes() == frozenset() for i in sim.live())
    # Suspicions happen (a probe and its detours can all lose frames) and are refuted.
    assert len(sim.false_suspects) < 20


def test_a_partition_heals(demo_topo):
    sim = sim_of(demo_topo)
    west = frozenset(range(12))                   # planes 0–1 against planes 2–3
    sim.schedule([Partition(10.0, west, until=30.0)])
    sim.run(29.0)
    # SWIM's verdict across a partition: each side cannot reach the other.
    assert all(sim.nodes[i].m.dead_nodes() == frozenset(range(12, 24)) for i in west)
    sim.run(40.0)
    for i in sim.live():
        m = sim.nodes[i].m
        assert m.dead_nodes() == frozenset(), i
        assert m.down_links() == frozenset(), i
    assert sim.nodes[0].m.incarnation >= 1       # it refuted its death across the healed links


def test_rejoin_after_restart_with_a_higher_incarnation(demo_topo):
    sim = sim_of(demo_topo, loss=0.1)
    sim.schedule([Kill(10.0, 9), Restart(20.0, 9, incarnation=0)])
    sim.run(19.9)
    assert all(sim.nodes[i].m.status(9) == "dead" for i in sim.live())
    sim.run(25.0)
    inc = sim.nodes[9].m.incarnation
    assert inc >= 1
    for i in sim.live():
        assert sim.nodes[i].m.status(9) == "alive", i
        assert sim.nodes[i].m.incarnation_of(9) == inc
    assert max(sim.restarts[9]["alive_seen"].values()) - 20.0 < 2.0


def test_a_cut_link_is_not_a_dead_node_and_traffic_reroutes():
    rep = run_scenario(preset="demo", seconds=30, seed=SEED, loss=0.1, kills=0, cuts=2)
    assert rep["false_positives"]["nodes_wrongly_dead"] == 0
    assert len(rep["reroutes"]) == 2
    for r in rep["reroutes"]:
        assert r["detected_s"] is not None and r["detected_s"] < 3.0
        assert r["rerouted_s"] is not None and r["rerouted_s"] < 3.0
        assert r["known_everywhere_s"] is not None


def test_an_announced_cut_is_neither_probed_nor_reported(demo_topo):
    sim = sim_of(demo_topo)
    sim.schedule([Cut(5.0, 0, 1, announced=True)])
    sim.run(20.0)
    assert sim.link_down_reports == 0 and sim.false_suspects == set()
    assert sim.nodes[0].route(20.0, 1) != 1           # routing still avoids it


def test_every_task_completes_under_ten_percent_loss_with_a_kill_and_a_cut():
    rep = run_scenario(preset="demo", seconds=60, seed=SEED, loss=0.1, kills=1, cuts=1, tasks=150,
                       task_deadline_s=25)
    t = rep["tasks"]
    assert t["submitted"] == 150
    assert t["delivered"] == 150, t["failure_reasons"]
    assert t["ratio"] == 1.0 and t["in_flight"] == 0
    assert t["executed_twice"] == 0                   # end-to-end retries are deduplicated


def isolate(sim: Simulator, node: int, t: float, until: float | None) -> list:
    """Cut every link of ``node`` as a chaos command would: announced, so nobody calls it dead."""
    return [Cut(t, node, n, until=until, announced=True) for n, _ in sim.net.neighbours(node, 0.0)]


def test_store_and_forward_releases_when_a_route_reappears(demo_topo):
    sim = sim_of(demo_topo, loss=0.1)
    sim.schedule(isolate(sim, 14, 5.0, until=20.0) + [Tasks(8.0, 5, 2.0, deadline_s=40.0, entries=(3, 14))])
    sim.run(9.0)
    assert sum(len(sim.nodes[i].store) for i in sim.live()) > 0      # held while 14 is cut off
    sim.run(50.0)
    tasks = sim.tasks.values()
    assert len(tasks) == 5
    assert all(t["state"] == "delivered" for t in tasks), [t["reason"] for t in tasks]
    assert all(t["held"] > 0 for t in tasks)
    assert all(t["latency"] > 20.0 - 10.0 for t in tasks)


def test_an_undeliverable_task_fails_at_its_deadline_with_a_reason(demo_topo):
    sim = sim_of(demo_topo)
    sim.schedule(isolate(sim, 14, 5.0, until=None) + [Tasks(8.0, 2, 0.0, deadline_s=10.0, entries=(3, 14))])
    sim.run(30.0)
    assert len(sim.tasks) == 2
    for t in sim.tasks.values():
        assert t["state"] == "failed"
        assert "no result within 10.0 s" in t["reason"]
        assert "no route to node" in t["reason"] or "no route before the deadline" in t["reason"]


def test_a_task_for_a_dead_node_fails_and_says_so(demo_topo):
    sim = sim_of(demo_topo)
    sim.schedule([Kill(5.0, 14), Tasks(12.0, 1, 0.0, deadline_s=8.0, entries=(3, 14))])
    sim.run(30.0)
    (t,) = sim.tasks.values()
    assert t["state"] == "failed" and "node 14 is dead" in t["reason"]


def test_the_wire_forms_carry_the_whole_protocol(demo_topo):
    """Every gossip message through msgpack and back: the same run, frame for frame."""
    plain = sim_of(demo_topo, loss=0.1)
    wired = sim_of(demo_topo, loss=0.1, wire_check=True)
    for s in (plain, wired):
        s.schedule([Kill(8.0, 5), Cut(9.0, 0, 1)])
        s.run(20.0)
    assert plain.frames == wired.frames and plain.bytes == wired.bytes
    assert plain.kills[5]["dead_seen"] == wired.kills[5]["dead_seen"]


def test_suspicion_news_reaches_the_whole_larger_shell():
    """144 satellites (12×12 with real line-of-sight checks): convergence everywhere, at the physics pace."""
    rep = run_scenario(planes=12, per_plane=12, seconds=25, seed=SEED, loss=0.1, kills=1, cuts=1,
                       membership="constellation")
    (c,) = rep["convergence"]
    assert c["reached"] == c["of"]
    assert c["max"] < 1.0
    (d,) = rep["deaths"]
    assert d["reached"] == d["of"]
    assert rep["false_positives"]["nodes_wrongly_dead"] == 0


def test_flooding_baseline_reaches_everyone_with_more_frames():
    flood = run_flood_baseline("demo", seed=SEED, changes=3)
    assert all(c["reached"] == c["of"] for c in flood["convergence"])
    assert flood["bytes_per_update_per_node"] > 0


def test_scenario_rejects_a_plan_that_does_not_fit():
    with pytest.raises(ValueError, match="too few"):
        run_scenario(preset="demo", seconds=5)
    with pytest.raises(KeyError):
        run_scenario(preset="no-such-preset", seconds=60)


def test_cli_prints_figures_and_json(capsys):
    from agent.ops.cli import main as cli_main
    assert cli_main(["sim", "--engine", "des", "--preset", "demo", "--seconds", "25", "--loss", "0.1", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "kill node" in text and "cut link" in text and "bytes/node/s" in text
    assert cli_main(["sim", "--planes", "4", "--per-plane", "6", "--seconds", "25", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["nodes"] == 24 and rep["deaths"][0]["reached"] == 23
    assert cli_main(["sim", "--seconds", "3"]) == 2
    assert cli_main(["sim", "--loss", "2"]) == 2
    assert cli_main(["sim", "--planes", "4"]) == 2
    assert "error:" in capsys.readouterr().err


def test_starlink_s1_has_a_fallback_shell_when_the_preset_is_missing(monkeypatch):
    import mesh.presets
    monkeypatch.delitem(mesh.presets.PRESETS, "starlink-s1")
    topo, label = build_topology("starlink-s1")
    assert topo.n_sats == 72 * 22 and label == "starlink-s1"
