"""Satellite hosts (issue 14): K satellites per process, memory inside, another carrier outside.

In one process on the virtual clock: twelve production nodes in two "host
processes" A and B.  Each node's host is ``agent.links.hybrid_host.HybridHost``: its
twin on its process's own ``MemoryNetwork`` for siblings, and, standing in for
libp2p between processes, a second twin on a shared network (libp2p cannot run
on a virtual clock; the real-process test in ``tests/test_fleet_sat_hosts.py``
runs the real carrier).  Then: which carrier each link took, a task across the
process boundary, a kill of one satellite of a host, a kill of a whole host.
The control socket's request handling is checked here too (no process needed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trio

from agent.serve.auth import AgentAuth
from agent.ops import fleet as fleet_mod
from agent.ops.fleet import FleetError, host_groups
from agent.links.hybrid_host import HybridHost
from agent.ops.inproc import InProcFleet
from agent.links.memory_host import MemoryNetwork
from agent.links.p2p import P2PError
from agent.sat_host import SatHost
from agent.ops.sat_host_control import ControlError
from tests.test_inproc_node import far_from, matmul_inputs, onnxruntime_product

N = 12
A = [f"sat-{i}" for i in range(6)]
B = [f"sat-{i}" for i in range(6, 12)]


class TwoCarriers(HybridHost):
    """A hybrid host whose outer carrier is a twin too; ``serve`` runs both (InProcFleet runs it)."""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.p2p.serve)
            await nursery.start(self.twin.serve)
            task_status.started()


def two_hosts(fleet: InProcFleet) -> dict[str, MemoryNetwork]:
    """Split the fleet into processes A and B; ``fleet.net`` becomes the wire between them."""
    nets = {"A": MemoryNetwork(), "B": MemoryNetwork()}
    for group, names in (("A", A), ("B", B)):
        for name in names:
            m = fleet.members[name]
            m.host = TwoCarriers(m.host, nets[group].host(m.host.peer_id))
    return nets


async def hosted(tmp_path, models_dir, body):
    fleet = InProcFleet(tmp_path, models_dir, N, models=("matmul",))
    nets = two_hosts(fleet)
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        await fleet.ready()
        try:
            return await body(fleet, nets)
        finally:
            nursery.cancel_scope.cancel()


def pid(fleet, name):
    return fleet.peers[name].peer_id


async def until_dead(fleet, victims, watchers, timeout=30.0):
    """Until every watcher holds every victim dead; no one else is ever suspected on the way."""
    idx = {fleet.peers[v].index for v in victims}
    with trio.fail_after(timeout):
        while not all(idx <= fleet[w].membership.dead_nodes() for w in watchers):
            wrong = {w: (fleet[w].membership.suspects() | fleet[w].membership.dead_nodes()) - idx for w in watchers}
            assert not any(wrong.values()), wrong
            await trio.sleep(0.1)


async def test_links_inside_a_host_go_over_memory_and_between_hosts_over_the_outer_carrier(
        tmp_path, tiny_models, virtual_clock):
    async def body(fleet, nets):
        inner, outer = set(), set()
        for group in (A, B):
            for name in group:
                host = fleet.members[name].host
                mine = {pid(fleet, n) for n in group}
                inner |= {(name, s.remote_peer_id) for s in host.twin.streams}
                outer |= {(name, s.remote_peer_id) for s in host.p2p.streams}
                assert {s.remote_peer_id for s in host.twin.streams} <= mine
                assert not {s.remote_peer_id for s in host.p2p.streams} & mine
        inputs = matmul_inputs(3)
        target = next(n for n in B if n not in fleet["sat-0"].links.links)      # in the other host, and relayed
        rec, _ = await fleet["sat-0"].submit("matmul", {k: v.tolist() for k, v in inputs.items()}, target)
        with trio.fail_after(20):
            await rec.done.wait()
        return inner, outer, rec, target, inputs
    inner, outer, rec, target, inputs = await hosted(tmp_path, tiny_models, body)
    assert inner and outer          # both carriers carry links: intra-host and cross-host
    assert rec.status == "succeeded" and rec.executor == target, rec.error
    assert np.array_equal(rec.outputs["c"], onnxruntime_product(tiny_models, inputs))


async def test_killing_one_satellite_of_a_host_fails_it_alone_and_it_rejoins_from_its_journal(
        tmp_path, tiny_models, virtual_clock):
    async def body(fleet, nets):
        inputs = {k: v.tolist() for k, v in matmul_inputs(5).items()}
        target = far_from(fleet, "sat-2")
        rec, _ = await fleet["sat-2"].submit("matmul", inputs, target, idem_key="host-kill-1")
        await fleet.kill("sat-2")
        siblings = [n for n in A if n != "sat-2"]
        # its siblings still reach each other over memory and serve
        with pytest.raises(P2PError, match="connection refused"):
            await fleet.members["sat-1"].host.open_stream(fleet.peers["sat-2"].multiaddr, "/isl/1")
        await until_dead(fleet, ["sat-2"], [n for n in fleet.peers.names() if n != "sat-2"])
        sibling_rec, _ = await fleet[siblings[0]].submit("matmul", inputs, siblings[-1])
        with trio.fail_after(20):
            await sibling_rec.done.wait()
        node = await fleet.start_node("sat-2")
        again, new = await node.submit("matmul", inputs, target, idem_key="host-kill-1")
        with trio.fail_after(30):
            await again.done.wait()
        idx = fleet.peers["sat-2"].index
        await fleet.until(lambda: all(idx not in fleet[n].membership.dead_nodes() for n in fleet.peers.names()), 30)
        await fleet.until(node.links.all_up, 30)      # over both carriers again
        return rec, again, new, sibling_rec, node
    rec, again, new, sibling_rec, node = await hosted(tmp_path, tiny_models, body)
    assert sibling_rec.status == "succeeded", sibling_rec.error
    assert not new and again.task_id == rec.task_id and again.status == "succeeded", again.error
    assert node.recovered == 1           # the task it had accepted came back from its journal


async def test_killing_a_host_is_a_correlated_failure_of_all_its_satellites(tmp_path, tiny_models, virtual_clock):
    async def body(fleet, nets):
        for name in A:
            await fleet.kill(name)
        await until_dead(fleet, A, B)
        inputs = {k: v.tolist() for k, v in matmul_inputs(6).items()}
        target = next(n for n in reversed(B) if n not in fleet["sat-6"].links.links)
        rec, _ = await fleet["sat-6"].submit("matmul", inputs, target)
        with trio.fail_after(20):
            await rec.done.wait()
        return rec
    rec = await hosted(tmp_path, tiny_models, body)
    assert rec.status == "succeeded", rec.error


async def test_a_paused_satellite_falls_silent_alone_and_comes_back_on_resume(tmp_path, tiny_models, virtual_clock):
    async def body(fleet, nets):
        gate = fleet.members["sat-8"].host.gate
        gate.close()
        await until_dead(fleet, ["sat-8"], [n for n in fleet.peers.names() if n != "sat-8"])
        assert fleet["sat-8"].links.links          # still running: its links are open, only silent
        gate.open()
        await fleet.until(lambda: all(not fleet[n].membership.dead_nodes() and not fleet[n].membership.suspects()
                                      for n in fleet.peers.names()), 60)
        await trio.sleep(10)         # what the paused satellite thought meanwhile has reached everyone
        # Stopped like a process under SIGSTOP, it judged no one: it could not hear its neighbours,
        # and after the resume it holds its verdicts as after any stall.
        assert not fleet["sat-8"].membership.verdicts["dead"], fleet["sat-8"].membership.verdicts
        assert all(set(fleet[n].membership.verdicts["dead"]) <= {"sat-8"} for n in fleet.peers.names())
        return fleet["sat-8"].links.all_up()
    assert await hosted(tmp_path, tiny_models, body)


def test_host_groups_are_consecutive_runs_of_k_and_ground_stations_stay_alone():
    names = [f"sat-{i}" for i in range(10)] + ["gs-london"]
    groups = host_groups(names, 4)
    assert groups == {"host-0": names[0:4], "host-1": names[4:8], "host-2": names[8:10], "gs-london": ["gs-london"]}
    assert list(host_groups(names, 1))[:2] == ["host-0", "host-1"] and len(host_groups(names, 1)) == 11
    with pytest.raises(FleetError, match="at least 1"):
        host_groups(names, 0)
    with pytest.raises(FleetError, match="at least 1"):
        fleet_mod.start(fleet_mod.FleetSpec(sats_per_process=0))


class _Peers:
    def __init__(self, names):
        self.by_name = {n: type("E", (), {"peer_id": f"p-{n}"})() for n in names}

    def __contains__(self, name):
        return name in self.by_name

    def __getitem__(self, name):
        return self.by_name[name]


async def test_the_control_socket_needs_the_token_and_refuses_bad_requests(tmp_path):
    host = SatHost("host-0", ["sat-0", "sat-1"], None, _Peers(["sat-0", "sat-1"]), tmp_path, tmp_path,
                   auth=AgentAuth("t" * 32))

    async def ask(req) -> dict:
        try:
            return await host.handle(req if isinstance(req, bytes) else json.dumps(req).encode())
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
    assert "token" in (await ask({"action": "status", "node": "sat-0"}))["error"]
    assert "token" in (await ask({"action": "status", "node": "sat-0", "token": "x" * 32}))["error"]
    assert "JSON" in (await ask(b"{not json"))["error"]
    assert "object" in (await ask(b"[1]"))["error"]
    ok = {"token": "t" * 32}
    assert "not hosted here" in (await ask({**ok, "action": "kill", "node": "sat-9"}))["error"]
    assert "unknown action" in (await ask({**ok, "action": "explode", "node": "sat-0"}))["error"]
    assert (await ask({**ok, "action": "status", "node": "sat-1"})) == {"ok": True, "state": "down", "crashed": None}
    assert "already down" in (await ask({**ok, "action": "kill", "node": "sat-1"}))["error"]
    assert "cannot pause" in (await ask({**ok, "action": "pause", "node": "sat-1"}))["error"]
    with pytest.raises(ValueError, match="not in the peers file"):
        SatHost("h", ["sat-7"], None, _Peers(["sat-0"]), tmp_path, tmp_path, auth=AgentAuth(None))
    with pytest.raises(ValueError, match="twice"):
        SatHost("h", ["sat-0", "sat-0"], None, _Peers(["sat-0"]), tmp_path, tmp_path, auth=AgentAuth(None))


async def test_the_satellites_of_a_host_share_one_world(tmp_path, monkeypatch):
    """One constellation, topology and router (and their caches) per process, not one per satellite
    (bench/sat_memory.py: ~14 MB of heap per satellite at starlink-s1's size)."""
    from agent import sat_host
    from mesh.presets import preset
    worlds = {}

    async def fake_run_satellite(name, config, *args, world=None, task_status=trio.TASK_STATUS_IGNORED, **kw):
        worlds[name] = world
        task_status.started()
        await trio.sleep_forever()

    monkeypatch.setattr(sat_host, "run_satellite", fake_run_satellite)
    names = ["sat-0", "sat-1", "sat-2"]
    host = SatHost("host-0", names, preset("demo"), _Peers(names), tmp_path, tmp_path, auth=AgentAuth(None))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await host.restart("sat-1")
        nursery.cancel_scope.cancel()
    assert set(worlds) == set(names)
    assert all(w is host.world for w in worlds.values())
    assert host.world.config is host.config
