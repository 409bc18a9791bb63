"""Membership, healing routes and delivery on a real fleet of agent processes.

Measures, on N agents (default 24) gossiping over the emulated links:

* state convergence: a node's state change (a model uploaded to it) until every
  node holds that version, from the receive times each node records;
  baseline: the physics diameter (largest shortest-path latency, the floor)
  and Serf's model, 99.99% of 30 nodes in 1.8 s;
* failure detection: kill -9 of a node until every other node declares it
  dead (goal < 3 s);
* reroute: kill -9 of a node on a task stream's path until the first task
  that went around it completes;
* 10% loss on every link for a while: false suspicions and deaths (goal 0),
  task delivery ratio (goal 100%), hop retransmissions;
* gossip bytes per node per second (control frames: probes, gossip, acks).

    python bench/membership_fleet.py [--nodes 24] [--loss-seconds 20] [--tasks 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.client import Client  # noqa: E402
from mesh.orbit import Constellation, iso_to_jd  # noqa: E402
from mesh.topology import Topology  # noqa: E402
from tests.conftest import AUTH, local_fleet, member, membership_views  # noqa: E402
from tests.test_model_store import doubler  # noqa: E402

SERF_30_NODES_S = 1.8
DETECTION_GOAL_S = 3.0




async def control_bytes(peers):
    total = 0
    for n in peers.names():
        async with Client(peers[n].api) as c:
            total += sum(link["control_bytes_sent"] for link in (await c.links())["links"])
    return total


async def state_convergence(peers, node, samples, repeats=5):
    """Seconds from ``node`` publishing a new state to the last node receiving it."""
    out = []
    others = [n for n in peers.names() if n != node]
    for _ in range(repeats):
        before = member((await membership_views(peers, [node]))[node], node)["state_version"]
        # A user uploads a model to the node: its gossiped "models" changes.
        async with httpx.AsyncClient(base_url=peers[node].api, timeout=30, headers=AUTH) as http:
            r = await http.put(f"/v1/models/bench-{uuid.uuid4().hex[:8]}", content=doubler(1.0 + len(out)))
            assert r.status_code == 201, r.text
        with trio.fail_after(30):
            while True:
                own = member((await membership_views(peers, [node]))[node], node)
                if own["state_version"] > before:
                    break
                await trio.sleep(0.05)
        version, t0 = own["state_version"], own["state_received_at"]
        with trio.fail_after(30):
            while True:
                vs = await membership_views(peers, others)
                got = [member(v, node) for v in vs.values()]
                if all(m["state_version"] >= version for m in got):
                    break
                await trio.sleep(0.2)
        # Everyone holds it; when did the last one get *this* version (or a newer one)?
        out.append(max(m["state_received_at"] for m in got) - t0)
        await trio.sleep(1.5)
    return out


async def detection_and_reroute(peers, procs, cfg, samples, entry, target):
    topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)))
    path, _ = topo.snapshot(cfg.clock.orbit_t(time.time())).shortest_path(peers[entry].index, peers[target].index)
    victim = peers.by_index[path[len(path) // 2]].name
    others = [n for n in peers.names() if n != victim]
    rerouted: list[float] = []
    killed_at = 0.0

    async def stream():
        async with Client(peers[entry].api) as c:
            k = 0
            while not rerouted:
                acc = await c.submit("digits", samples[k % len(samples)]["inputs"], target)
                k += 1
                rec = await c.wait(acc["task_id"], timeout=30)
                if killed_at and rec["status"] == "succeeded" and victim not in [h["node"] for h in rec["trace"]]:
                    rerouted.append(time.time() - killed_at)
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await trio.sleep(2.0)
        killed_at = time.time()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        dead_at: dict[str, float] = {}
        with trio.fail_after(60):
            while len(dead_at) < len(others):
                for n, v in (await membership_views(peers, [n for n in others if n not in dead_at])).items():
                    if member(v, victim)["status"] == "dead":
                        ev = [e for e in v["events"] if e["event"] == "NodeDead" and e.get("node") == victim]
                        dead_at[n] = (ev[-1]["t"] if ev else time.time()) - killed_at
                await trio.sleep(0.1)
    return victim, sorted(dead_at.values()), rerouted[0]


async def loss_everywhere(peers, samples, seconds, tasks):
    links = set()
    for n in peers.names():
        async with Client(peers[n].api) as c:
            for nb in (await c.node())["neighbours"]:
                links.add(tuple(sorted((n, nb["node"]))))
    before = await membership_views(peers, peers.names())
    async with Client(peers["sat-0"].api) as c:
        for a, b in sorted(links):
            await c.apply_fault({"kind": "loss", "a": a, "b": b, "loss": 0.1, "duration_s": seconds + 30})
    started = time.time()
    names = peers.names()
    results = []
    limiter = trio.CapacityLimiter(4)

    async def one(i):
        async with limiter, Client(peers[names[(i * 7) % len(names)]].api) as c:
            acc = await c.submit("digits", samples[i % len(samples)]["inputs"], names[(i * 11 + 5) % len(names)])
            results.append(await c.wait(acc["task_id"], timeout=60))

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(one, i)
    await trio.sleep(max(0.0, seconds - (time.time() - started)))
    after = await membership_views(peers, peers.names())
    async with Client(peers["sat-0"].api) as c:
        await c.clear_faults()

    def total(vs, key):
        return sum(v["protocol"][key] for v in vs.values())

    return {
        "seconds": time.time() - started, "links": len(links),
        "suspicions": total(after, "suspicions") - total(before, "suspicions"),
        "deaths_declared": total(after, "deaths_declared") - total(before, "deaths_declared"),
        "links_reported_down": total(after, "links_reported_down") - total(before, "links_reported_down"),
        "tasks": len(results), "succeeded": sum(r["status"] == "succeeded" for r in results),
        "retransmissions": sum(v["delivery"]["counts"].get("retransmissions", 0) for v in after.values())
        - sum(v["delivery"]["counts"].get("retransmissions", 0) for v in before.values()),
    }


async def bench(args, spec, cfg, peers, procs) -> dict:
    samples = json.loads((Path(args.models) / "digits.json").read_text())["samples"]
    topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)))
    snap = topo.snapshot(cfg.clock.orbit_t(time.time()))
    n = len(peers.names())
    diameter = max(snap.shortest_path(a, b)[1] for a in range(n) for b in range(n) if a != b)

    await trio.sleep(3.0)
    b0, t0 = await control_bytes(peers), time.time()
    await trio.sleep(args.idle_seconds)
    gossip_bps = (await control_bytes(peers) - b0) / (time.time() - t0) / n

    conv = await state_convergence(peers, "sat-0", samples)
    loss = await loss_everywhere(peers, samples, args.loss_seconds, args.tasks)
    await trio.sleep(2.0)
    far = max(peers.names(), key=lambda m: snap.shortest_path(peers["sat-1"].index, peers[m].index)[1])
    victim, detect, reroute = await detection_and_reroute(peers, procs, cfg, samples, "sat-1", far)
    return {
        "nodes": n, "diameter_ms": diameter * 1e3,
        "state_convergence_s": conv, "state_convergence_median_s": statistics.median(conv),
        "serf_30_nodes_s": SERF_30_NODES_S,
        "detection_victim": victim, "detection_all_s": detect[-1], "detection_first_s": detect[0],
        "reroute_s": reroute, "loss": loss, "gossip_bytes_per_node_s": gossip_bps,
    }


def report(r: dict) -> str:
    loss = r["loss"]
    lines = [
        f"# membership on {r['nodes']} agent processes — {platform.node()}, {time.strftime('%Y-%m-%d')}",
        f"state change reaches every node: median {r['state_convergence_median_s']:.2f} s "
        f"({', '.join(f'{x:.2f}' for x in r['state_convergence_s'])}); "
        f"{r['state_convergence_median_s'] * 1e3 / r['diameter_ms']:.1f}× the physics diameter "
        f"({r['diameter_ms']:.0f} ms); {r['state_convergence_median_s'] / r['serf_30_nodes_s']:.2f}× Serf's 1.8 s",
        f"kill -9 {r['detection_victim']}: first node knows in {r['detection_first_s']:.2f} s, every node in "
        f"{r['detection_all_s']:.2f} s ({r['detection_all_s'] / DETECTION_GOAL_S:.2f}× the 3 s goal)",
        f"reroute after the kill: first task around it done {r['reroute_s']:.2f} s after the kill",
        f"10% loss on all {loss['links']} links for {loss['seconds']:.0f} s: suspicions {loss['suspicions']}, "
        f"deaths {loss['deaths_declared']}, links reported down {loss['links_reported_down']}; tasks "
        f"{loss['succeeded']}/{loss['tasks']} delivered ({100 * loss['succeeded'] / max(1, loss['tasks']):.1f}%), "
        f"{loss['retransmissions']} hop retransmissions",
        f"gossip (control frames) per node: {r['gossip_bytes_per_node_s']:.0f} B/s",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--loss-seconds", type=float, default=20.0)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--models", default=str(Path(__file__).resolve().parent.parent / "models"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, local_fleet(Path(d), Path(args.models), args.nodes) as running:
        result = trio.run(bench, args, *running)
    print(json.dumps(result, indent=1) if args.json else report(result))


if __name__ == "__main__":
    main()
