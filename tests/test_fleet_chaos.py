"""Link chaos on a real fleet: faults issued anywhere act on far links.

12 agents (3 planes × 4).  Probes (numbered frames at a fixed rate) measure
what a link carries; tasks show that routing avoids cut links.
"""

import json
import subprocess
import sys
import time

import httpx
import pytest
import trio

from agent.client import Client
from tests.conftest import AUTH, ROOT, local_fleet

N = 12

@pytest.fixture(scope="module")
def chaos_fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("chaosfleet"), models_dir, N) as (spec, _, peers, _):
        yield spec, peers

async def link_stats(peers, node, peer):
    async with Client(peers[node].api) as c:
        links = (await c.links())["links"]
    return next(link for link in links if link["peer"] == peer)

async def wait_for_faults(peers, nodes, predicate, timeout=15.0):
    with trio.fail_after(timeout):
        while True:
            ok = True
            for n in nodes:
                async with Client(peers[n].api) as c:
                    ok &= predicate((await c.faults())["faults"])
            if ok:
                return
            await trio.sleep(0.05)

async def probe_count(peers, src, dst, frames=100, rate=200.0):
    """Send ``frames`` probes src→dst; returns how many dst received."""
    before = (await link_stats(peers, dst, src))["probes_received"]
    async with Client(peers[src].api) as c:
        await c.probe(dst, rate_hz=rate, size=1024, duration_s=frames / rate)
    await trio.sleep(frames / rate + 0.3)  # + a laser hop and release
    return (await link_stats(peers, dst, src))["probes_received"] - before

async def test_cut_issued_far_away_stops_a_link_until_restored(chaos_fleet, models_dir):
    _, peers = chaos_fleet
    async with Client(peers["sat-0"].api) as c:  # sat-0 is not an endpoint of sat-6–sat-10
        res = await c.apply_fault({"kind": "cut", "a": "sat-6", "b": "sat-10"})
        fid = res["fault"]["id"]
        again = await c.apply_fault({"kind": "cut", "a": "sat-6", "b": "sat-10"})
        assert res["created"] and not again["created"] and again["fault"]["id"] == fid  # idempotent
    await wait_for_faults(peers, ["sat-6", "sat-10"], lambda fs: any(f["id"] == fid and f["active"] for f in fs))
    dropped_before = (await link_stats(peers, "sat-6", "sat-10"))["dropped"]["cut"]
    assert await probe_count(peers, "sat-6", "sat-10") == 0
    assert await probe_count(peers, "sat-10", "sat-6") == 0
    assert (await link_stats(peers, "sat-6", "sat-10"))["dropped"]["cut"] >= dropped_before + 100

    # a task whose shortest path used sat-10–sat-6 goes around the cut
    sample = json.loads((models_dir / "digits.json").read_text())["samples"][0]
    async with Client(peers["sat-10"].api) as c:
        acc = await c.submit("digits", sample["inputs"], "sat-6")
        rec = await c.wait(acc["task_id"], timeout=20)
    assert rec["status"] == "succeeded", rec
    hops = [h["node"] for h in rec["trace"]]
    assert all({a, b} != {"sat-6", "sat-10"} for a, b in zip(hops, hops[1:])), hops

    async with Client(peers["sat-3"].api) as c:
        assert (await c.clear_faults(fid))["cleared"] == [fid]
    await wait_for_faults(peers, ["sat-6", "sat-10"], lambda fs: not fs)
    assert await probe_count(peers, "sat-6", "sat-10") == 100

async def test_fault_with_a_duration_reverts_by_itself(chaos_fleet):
    _, peers = chaos_fleet
    async with Client(peers["sat-5"].api) as c:
        res = await c.apply_fault({"kind": "cut", "a": "sat-1", "b": "sat-8", "duration_s": "1s"})
    assert res["fault"]["until"] - res["fault"]["start"] == pytest.approx(1.0)
    await wait_for_faults(peers, ["sat-1", "sat-8"], lambda fs: any(f["active"] for f in fs))
    await trio.sleep(1.2)
    assert await probe_count(peers, "sat-1", "sat-8") == 100

async def test_partition_splits_the_fleet_and_heals(chaos_fleet, models_dir):
    _, peers = chaos_fleet
    sample = json.loads((models_dir / "digits.json").read_text())["samples"][1]
    plane0 = ["sat-0", "sat-1", "sat-2", "sat-3"]
    async with Client(peers["sat-9"].api) as c:
        res = await c.apply_fault({"kind": "partition", "groups": [plane0]})
    await trio.sleep(res["fault"]["start"] - time.time() + 0.2)  # settle, then in force everywhere
    async with Client(peers["sat-0"].api) as c:
        # Across the partition: accepted and held (store-and-forward), not refused.
        held = (await c.submit("digits", sample["inputs"], "sat-8"))["task_id"]
        # One with a short deadline fails with the reason, never silently.
        short = (await c.submit("digits", sample["inputs"], "sat-8", timeout_s=1.5))["task_id"]
        inside = await c.wait((await c.submit("digits", sample["inputs"], "sat-2"))["task_id"], timeout=20)
        assert inside["status"] == "succeeded"  # each side still works
        failed = await c.wait(short, timeout=10)
        assert failed["status"] == "failed" and "sat-8" in failed["error"], failed
        assert (await c.task(held))["status"] not in ("succeeded", "failed")
        assert (await c.membership())["delivery"]["held"] >= 1
    assert await probe_count(peers, "sat-1", "sat-8") == 0
    async with Client(peers["sat-8"].api) as c:  # cleared from the other side of the cut
        await c.clear_faults()
    await wait_for_faults(peers, peers.names(), lambda fs: not fs)
    async with Client(peers["sat-0"].api) as c:
        released = await c.wait(held, timeout=20)   # the held task goes on once a route is back
        rec = await c.wait((await c.submit("digits", sample["inputs"], "sat-8"))["task_id"], timeout=20)
    assert released["status"] == "succeeded", released
    assert rec["status"] == "succeeded", rec

async def test_configured_loss_is_measured_loss(chaos_fleet):
    _, peers = chaos_fleet
    async with Client(peers["sat-0"].api) as c:
        fid = (await c.apply_fault({"kind": "loss", "a": "sat-4", "b": "sat-7", "loss": "10%"}))["fault"]["id"]
    await wait_for_faults(peers, ["sat-4"], lambda fs: any(f["id"] == fid for f in fs))
    n = 1000
    got = await probe_count(peers, "sat-4", "sat-7", frames=n, rate=500.0)
    lost = n - got
    # 99.9% binomial interval around 100 lost of 1000: ±31
    assert 100 - 32 <= lost <= 100 + 32, lost
    async with Client(peers["sat-0"].api) as c:
        await c.clear_faults(fid)
    await wait_for_faults(peers, peers.names(), lambda fs: not fs)  # the clear reached everyone

@pytest.mark.parametrize("spec, words", [
    ({"kind": "cut", "a": "sat-0", "b": "sat-99"}, "unknown node"),
    ({"kind": "cut", "a": "sat-0", "b": "sat-6"}, "no laser link"),
    ({"kind": "loss", "a": "sat-0", "b": "sat-1", "loss": "150%"}, "outside 0–100%"),
    ({"kind": "cut", "a": "sat-0", "b": "sat-1", "duration_s": -3}, "must be > 0"),
    ({"kind": "partition", "groups": [["sat-0"], ["sat-0"]]}, "groups 0 and 1"),
])
async def test_bad_faults_are_refused_and_nothing_is_applied(chaos_fleet, spec, words):
    _, peers = chaos_fleet
    async with httpx.AsyncClient(base_url=peers["sat-2"].api, headers=AUTH) as http:
        before = (await http.get("/v1/chaos")).json()["faults"]
        r = await http.post("/v1/chaos", json=spec)
        assert r.status_code == 400 and words in r.json()["error"], r.text
        assert (await http.get("/v1/chaos")).json()["faults"] == before
        assert (await http.delete("/v1/chaos/doesnotexist")).status_code == 404

async def scrape(peers, node) -> dict[str, dict[tuple, float]]:
    """A node's /metrics, parsed as Prometheus would: {sample name: {sorted labels: value}}."""
    from prometheus_client.parser import text_string_to_metric_families
    async with httpx.AsyncClient(base_url=peers[node].api) as http:
        text = (await http.get("/metrics")).text
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_metrics_expose_links_tasks_inference_relay_membership_energy(chaos_fleet, models_dir):
    _, peers = chaos_fleet
    sample = json.loads((models_dir / "digits.json").read_text())["samples"][1]
    before = (await scrape(peers, "sat-1")).get("orbitmesh_inference_seconds_count", {})
    async with Client(peers["sat-4"].api) as c:
        rec = await c.wait((await c.submit("digits", sample["inputs"], "sat-1"))["task_id"], timeout=20)
    assert rec["status"] == "succeeded", rec
    entry, executor, far = await scrape(peers, "sat-4"), await scrape(peers, "sat-1"), await scrape(peers, "sat-6")
    # the cut earlier in this module: counted where it dropped frames
    assert far["orbitmesh_link_frames_dropped_total"][(("cause", "cut"), ("dst", "sat-10"), ("src", "sat-6"))] > 0
    assert "orbitmesh_link_delay_error_seconds_bucket" in far
    # the task: latency by phase at its entry, onnxruntime time at its executor
    lat = entry["orbitmesh_task_latency_seconds_count"]
    for phase in ("total", "physics", "compute", "overhead"):
        assert lat[(("node", "sat-4"), ("phase", phase), ("status", "succeeded"))] >= 1
    total = entry["orbitmesh_task_latency_seconds_sum"][(("node", "sat-4"), ("phase", "total"), ("status", "succeeded"))]
    assert total >= rec["latency"]["total_ms"] / 1e3 - 1e-6
    key = (("model", "digits"), ("node", "sat-1"))
    assert executor["orbitmesh_inference_seconds_count"][key] == before.get(key, 0) + 1
    # the relay carried it; membership saw every node alive; the battery is a fraction
    assert entry["orbitmesh_relay_events_total"][(("event", "frames_sent"), ("node", "sat-4"))] >= 1
    assert entry["orbitmesh_members"][(("node", "sat-4"), ("status", "alive"))] == N
    assert 0.0 <= executor["orbitmesh_battery_fraction"][(("node", "sat-1"),)] <= 1.0
    assert executor["orbitmesh_compute_busy_seconds_total"][(("node", "sat-1"),)] > 0

def cli(spec, *args):
    return subprocess.run([sys.executable, "-m", "agent", "--dir", str(spec.directory), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

def test_cli_and_scenarios(chaos_fleet, tmp_path):
    spec, peers = chaos_fleet
    r = cli(spec, "chaos", "--node", "sat-4", "delay", "sat-5", "sat-9", "20ms", "--for", "30s")
    assert r.returncode == 0 and "applied" in r.stdout and "+20 ms" in r.stdout, r.stderr
    r = cli(spec, "chaos", "list")
    assert "delay sat-5–sat-9" in r.stdout and "1 faults in force" in r.stdout
    r = cli(spec, "chaos", "loss", "sat-5", "sat-9", "120%")
    assert r.returncode == 1 and "outside 0–100%" in r.stderr
    assert cli(spec, "chaos", "clear").returncode == 0

    good = tmp_path / "good.toml"
    good.write_text('seed = 3\n[[events]]\nat = "0s"\nkind = "cut"\nlink = "random"\nfor = "1s"\n'
                    '[[events]]\nat = "0.5s"\naction = "clear"\n')
    first = cli(spec, "chaos", "run", str(good), "--dry-run")
    second = cli(spec, "chaos", "run", str(good), "--dry-run")
    assert first.returncode == 0 and first.stdout == second.stdout  # same seed, same timeline
    r = cli(spec, "chaos", "run", str(good))
    assert r.returncode == 0 and "cut" in r.stdout and "clear (1 faults)" in r.stdout, r.stdout + r.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\nat = "0s"\nkind = "cut"\na = "sat-0"\nb = "sat-1"\n'
                   '[[events]]\nat = "1s"\nkind = "loss"\na = "sat-0"\nb = "sat-1"\nloss = 2.0\n')
    r = cli(spec, "chaos", "run", str(bad))
    assert r.returncode == 2 and "events[1]" in r.stderr and "outside 0–100%" in r.stderr
    assert "0 faults in force" in cli(spec, "chaos", "list").stdout  # nothing applied half
