"""Time control on a real fleet (6 agents): one node's switch changes every satellite's clock alike.

Speed set at sat-0 reaches every node before it takes effect; a pause freezes
positions everywhere; a resume issued at another node continues from the
frozen orbital time; a node restarted later adopts the fleet's clock from its
neighbours on link-up; bad requests get 400 and unauthenticated ones 401.
"""

import json
import signal
import subprocess
import sys
import time

import httpx
import trio

from agent.ops import fleet
from agent.client import Client
from tests.conftest import AUTH, ROOT, local_fleet

import pytest

N = 6


@pytest.fixture(scope="module")
def tfleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("timefleet"), models_dir, N) as (spec, cfg, peers, procs):
        yield spec, peers, procs


async def clocks(peers, names=None) -> dict:
    out = {}
    for n in names or peers.names():
        async with Client(peers[n].api) as c:
            out[n] = await c.clock()
    return out


def agree(views: dict, tol_s: float = 1e-6) -> dict:
    """Every view names the same record, and reads the same line of orbital time; returns one view."""
    ref = next(iter(views.values()))
    for name, v in views.items():
        assert (v["version"], v["origin"], v["scale"], v["paused"]) == \
            (ref["version"], ref["origin"], ref["scale"], ref["paused"]), (name, v, ref)
        expected = ref["orbit_t"] + ref["rate"] * (v["wall"] - ref["wall"])
        assert abs(v["orbit_t"] - expected) <= tol_s * max(1.0, ref["rate"]), (name, v["orbit_t"], expected)
    return ref


async def until_all(peers, predicate, timeout=15.0, names=None) -> dict:
    with trio.fail_after(timeout):
        while True:
            views = await clocks(peers, names)
            if all(predicate(v) for v in views.values()):
                return views
            await trio.sleep(0.1)


async def first_sight(peers, version: float) -> dict:
    """Each node's first answer that holds the switch ``version`` (pending or in force)."""
    seen: dict = {}

    async def watch(name):
        async with Client(peers[name].api) as c:
            while True:
                v = await c.clock()
                if v["version"] == version or (v["pending"] or {}).get("version") == version:
                    seen[name] = v
                    return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for name in peers.names():
                nursery.start_soon(watch, name)
    return seen


async def digits_task(peers, models_dir, entry="sat-0", target="sat-5") -> dict:
    sample = json.loads((models_dir / "digits.json").read_text())["samples"][0]
    async with Client(peers[entry].api) as c:
        acc = await c.submit("digits", sample["inputs"], target)
        return await c.wait(acc["task_id"], timeout=30)


async def positions(peers) -> dict:
    out = {}
    for n in peers.names():
        async with Client(peers[n].api) as c:
            node = await c.node()
        out[n] = (node["position"], node["orbit"]["t_s"], node["clock"])
    return out


async def test_speed_pause_resume_agree_across_the_fleet_and_a_restarted_node_adopts_it(tfleet, models_dir):
    spec, peers, procs = tfleet
    start = agree(await clocks(peers))
    assert start["version"] is None and not start["paused"]          # the config's clock

    async with Client(peers["sat-0"].api) as c:
        out = await c.set_clock(speed=10)
    assert out["changed"] and out["pending"]["scale"] == 10 and out["switch"]["origin"] == "sat-0"
    # the flood is faster than the settle time: every node holds the switch before it takes effect
    first = await first_sight(peers, out["switch"]["version"])
    assert all(v["pending"] for v in first.values()), first
    fast = agree(await until_all(peers, lambda v: v["scale"] == 10 and v["version"] is not None))
    assert fast["origin"] == "sat-0" and fast["rate"] == 10
    a = (await clocks(peers, ["sat-5"]))["sat-5"]
    await trio.sleep(0.5)
    b = (await clocks(peers, ["sat-5"]))["sat-5"]
    assert (b["orbit_t"] - a["orbit_t"]) / (b["wall"] - a["wall"]) == pytest.approx(10.0)

    async with Client(peers["sat-3"].api) as c:
        paused = await c.set_clock(pause=True)
    frozen_views = await until_all(peers, lambda v: v["paused"] and v["origin"] == "sat-3")
    frozen = agree(frozen_views)["orbit_t"]
    assert {v["orbit_t"] for v in frozen_views.values()} == {frozen} == {paused["switch"]["orbit_t_at"]}
    before = await positions(peers)
    await trio.sleep(2.0)
    after = await positions(peers)
    assert after == before                                  # nothing moves, on any node
    assert all(t == frozen and clock == {"scale": 10.0, "paused": True} for _, t, clock in after.values())

    async with Client(peers["sat-5"].api) as c:
        resumed = await c.set_clock(resume=True)
    assert resumed["switch"]["orbit_t_at"] == frozen       # continues from where it stopped: no jump
    running = agree(await until_all(peers, lambda v: not v["paused"] and v["origin"] == "sat-5"))
    assert running["scale"] == 10
    assert running["orbit_t"] == pytest.approx(frozen + 10 * (running["wall"] - resumed["switch"]["at_wall"]))
    moved = await positions(peers)
    assert all(moved[n][0] != after[n][0] for n in peers.names())

    # a node that restarts comes up on the config's clock and adopts the fleet's from its neighbours
    victim = "sat-4"
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    procs[victim] = fleet.start_agent(spec, victim)
    with trio.fail_after(60):
        while True:
            try:
                view = (await clocks(peers, [victim]))[victim]
                if view["version"] == resumed["switch"]["version"]:
                    break
            except Exception:  # noqa: BLE001 — not answering yet
                pass
            await trio.sleep(0.2)
    agree(await clocks(peers))

    # the top speed: the sky turns fast, the fleet keeps agreeing and tasks still cross it
    async with Client(peers["sat-2"].api) as c:
        await c.set_clock(speed=1000)
    agree(await until_all(peers, lambda v: v["scale"] == 1000 and v["origin"] == "sat-2"), tol_s=1e-3)
    await trio.sleep(1.0)
    rec = await digits_task(peers, models_dir)
    assert rec["status"] == "succeeded", rec

    async with Client(peers["sat-1"].api) as c:           # back to the pace the fleet started at
        await c.set_clock(speed=start["scale"])
    agree(await until_all(peers, lambda v: v["scale"] == start["scale"] and v["origin"] == "sat-1"))
    async with Client(peers["sat-2"].api) as c:
        assert (await c.health())["status"] == "ok"


async def test_bad_time_requests_get_400_and_unauthenticated_ones_401(tfleet):
    _, peers, _ = tfleet
    api = peers["sat-2"].api
    async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=10) as c:
        before = (await c.get("/v1/time")).json()
        for body in ({"speed": 0}, {"speed": -3}, {"speed": 1e6}, {"speed": "fast"}, {"pause": False},
                     {"pause": True, "resume": True}, {}, [], {"warp": 9}):
            r = await c.post("/v1/time", json=body)
            assert r.status_code == 400 and r.json()["error"], (body, r.text)
        r = await c.post("/v1/time", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        r = await c.post("/v1/time", content=b"x" * 5000)
        assert r.status_code == 413
    async with httpx.AsyncClient(base_url=api, timeout=10) as anon:
        r = await anon.post("/v1/time", json={"pause": True})
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert (await anon.get("/v1/time")).status_code == 200      # reading is open
    after = (await clocks(peers, ["sat-2"]))["sat-2"]
    assert (after["version"], after["scale"], after["paused"]) == \
        (before["version"], before["scale"], before["paused"])       # nothing refused changed anything


def test_the_cli_shows_and_sets_the_fleet_clock(tfleet):
    spec, peers, _ = tfleet

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "agent", "--dir", str(spec.directory), "time", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    r = cli("--node", "sat-1", "--speed", "2")
    assert r.returncode == 0 and "switching to running at 2×" in r.stdout, r.stdout + r.stderr
    time.sleep(1.5)
    r = cli("--json")
    assert r.returncode == 0 and json.loads(r.stdout)["scale"] == 2.0, r.stdout + r.stderr
    r = cli()
    assert r.returncode == 0 and "running at 2×" in r.stdout and "set by sat-1" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "agent", "--dir", str(spec.directory), "status"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "orbital clock: 2×" in r.stdout, r.stdout + r.stderr
    r = cli("--speed", "0")
    assert r.returncode == 1 and "speed" in r.stderr
    r = cli("--pause", "--resume")
    assert r.returncode == 2 and "not allowed with" in r.stderr
    r = cli("--speed", "1")
    assert r.returncode == 0, r.stderr
