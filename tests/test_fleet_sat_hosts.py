"""A real fleet with ``--sats-per-process 4``: 8 satellites in 2 host processes.

Links inside a process go over memory, between the two over libp2p.  A task
relayed across the process boundary equals onnxruntime's local output; one
satellite killed through its host's control socket (``orbitmesh chaos kill``)
goes down alone, another paused falls silent alone: their siblings keep
serving, the fleet declares both dead, and a restart (from its journal, with a
new incarnation) and a resume bring them back.
"""

import json

import numpy as np
import pytest
import trio

from agent.ops.chaos_cli import LocalNodeChaos, NodeChaosError
from agent.client import ApiError, Client
from tests.conftest import local_fleet, member, membership_views
from tests.test_fleet import local_reference, samples

N, K = 8, 4


@pytest.fixture(scope="module")
def hosted_fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("hosts"), models_dir, N, sats_per_process=K) as running:
        yield running


async def until(predicate, timeout, step=0.3):
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(step)


async def test_k_satellites_share_a_process_and_a_task_crosses_between_processes(hosted_fleet, models_dir):
    spec, cfg, peers, procs = hosted_fleet
    state = json.loads((spec.directory / "fleet.json").read_text())
    assert state["hosts"] == {"host-0": [f"sat-{i}" for i in range(4)], "host-1": [f"sat-{i}" for i in range(4, 8)]}
    assert len({p.pid for p in procs.values()}) == 2
    assert len({peers[n].peer_id for n in peers.names()}) == N and len({peers[n].api for n in peers.names()}) == N
    sample = samples(models_dir)[3]
    async with Client(peers["sat-1"].api) as c:
        acc = await c.submit("digits", sample["inputs"], "sat-6")
        rec = await c.wait(acc["task_id"], timeout=30)
    assert rec["status"] == "succeeded", rec
    for name, want in local_reference(models_dir, sample["inputs"]).items():
        assert np.array_equal(np.array(rec["outputs"][name]["data"], dtype=want.dtype), want), name
    hosts = {n: 0 if peers[n].index < 4 else 1 for n in peers.names()}
    nodes = [h["node"] for h in rec["trace"]]
    assert len({hosts[n] for n in nodes}) == 2 and len(set(nodes)) >= 3, nodes     # relayed, across processes


async def test_one_satellite_of_a_host_killed_another_paused_spare_their_siblings_and_rejoin(
        hosted_fleet, models_dir):
    spec, cfg, peers, procs = hosted_fleet
    chaos = LocalNodeChaos(spec.directory)
    assert "alone in host-0" in chaos.run("kill", "sat-2")
    assert "alone in host-1" in chaos.run("pause", "sat-5")
    assert chaos.status("sat-2") == "down" and procs["sat-2"].poll() is None      # the process lives on
    assert chaos.status("sat-5") == "paused" and procs["sat-5"].poll() is None
    with pytest.raises(NodeChaosError, match="already paused"):
        chaos.run("pause", "sat-5")
    with pytest.raises(ApiError):
        async with Client(peers["sat-2"].api, timeout=2.0) as c:
            await c.health()
    victims = ("sat-2", "sat-5")
    others = [n for n in peers.names() if n not in victims]

    async def all_hold_them_dead() -> bool:
        views = await membership_views(peers, others)
        return all(member(v, x)["status"] == "dead" for v in views.values() for x in victims)
    await until(all_hold_them_dead, 30)
    views = await membership_views(peers, others)
    assert all(member(v, n)["status"] == "alive" for v in views.values() for n in others)   # no one else
    sample = samples(models_dir)[1]
    async with Client(peers["sat-1"].api) as c:          # a sibling of the dead one still serves
        rec = await c.wait((await c.submit("digits", sample["inputs"], "sat-3"))["task_id"], timeout=30)
    assert rec["status"] == "succeeded", rec

    assert "restarted sat-2 alone" in chaos.run("restart", "sat-2")
    assert "resumed sat-5 alone" in chaos.run("resume", "sat-5")

    async def all_alive_again() -> bool:
        views = await membership_views(peers, peers.names())
        return all(member(v, n)["status"] == "alive" for v in views.values() for n in peers.names()) \
            and all(member(v, "sat-2")["incarnation"] >= 1 for v in views.values())   # its second life
    await until(all_alive_again, 30)
    async with Client(peers["sat-2"].api) as c:
        rec = await c.wait((await c.submit("digits", sample["inputs"], "sat-5"))["task_id"], timeout=30)
    assert rec["status"] == "succeeded", rec
