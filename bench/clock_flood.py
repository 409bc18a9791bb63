"""How fast a fleet-clock switch reaches every agent, against a fault's flood in the same run.

A switch (``POST /v1/time``) is issued for 1 s after it is taken
(``mesh.timeline.SETTLE_S``): every agent must hold it before then, or it
changes pace late.  This starts N agents (default 24), issues switches at one
node and polls every node's ``GET /v1/time`` concurrently until each holds
the switch; the same poller times a link fault (``POST /v1/chaos``, the same
flood mechanism) as the baseline, and the physics floor is the light time of
the longest shortest path from the issuing node.  Polling makes both times an
upper bound (a poll costs a few ms on a busy machine); the ratio compares like
with like.

    python bench/clock_flood.py [--nodes 24] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.timeline import SETTLE_S  # noqa: E402
from mesh.world import World  # noqa: E402
from tests.conftest import AUTH, local_fleet  # noqa: E402


async def until_everyone(clients: dict, path: str, holds, t0: float) -> float:
    """Seconds from ``t0`` (perf_counter) until every node's ``GET path`` satisfies ``holds``."""
    seen: dict[str, float] = {}

    async def watch(name, c):
        while True:
            if holds((await c.get(path)).json()):
                seen[name] = time.perf_counter() - t0
                return
            await trio.sleep(0.002)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for name, c in clients.items():
                nursery.start_soon(watch, name, c)
    return max(seen.values())


async def run(peers, issuer: str, repeats: int) -> dict:
    clients = {n: httpx.AsyncClient(base_url=peers[n].api, headers=AUTH, timeout=10) for n in peers.names()}
    clock, fault = [], []
    try:
        c = clients[issuer]
        neighbour = (await c.get("/v1/links")).json()["links"][0]["peer"]
        for k in range(repeats):
            speed = 2.0 if k % 2 == 0 else 1.0
            t0 = time.perf_counter()
            sw = (await c.post("/v1/time", json={"speed": speed})).json()["switch"]
            clock.append(await until_everyone(clients, "/v1/time",
                                              lambda v, ver=sw["version"]: v["version"] == ver or
                                              (v["pending"] or {}).get("version") == ver, t0))
            await trio.sleep(SETTLE_S + 0.2)
            t0 = time.perf_counter()
            r = await c.post("/v1/chaos", json={"kind": "delay", "a": issuer, "b": neighbour, "delay": f"{k + 1}us"})
            fid = r.json()["fault"]["id"]
            fault.append(await until_everyone(clients, "/v1/chaos",
                                              lambda v, fid=fid: any(f["id"] == fid for f in v["faults"]), t0))
            await c.delete(f"/v1/chaos/{fid}")
        await c.post("/v1/time", json={"speed": 1.0, "resume": True})
    finally:
        for cl in clients.values():
            await cl.aclose()
    return {"clock_s": clock, "fault_s": fault}


def physics_floor_s(cfg, peers, issuer: str) -> float:
    """Light time of the longest shortest path from ``issuer`` now (the flood cannot beat it)."""
    world = World.from_config(cfg)
    snap = world.topology.snapshot(cfg.clock.orbit_t(time.time()))
    src = peers[issuer].index
    return max((snap.shortest_path(src, peers[n].index) or ([], 0.0))[1] for n in peers.names() if n != issuer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = Path(__file__).resolve().parent.parent / "models"
    with tempfile.TemporaryDirectory() as d, local_fleet(Path(d), models, args.nodes) as (spec, cfg, peers, _):
        floor = physics_floor_s(cfg, peers, "sat-0")
        res = trio.run(run, peers, "sat-0", args.repeats)
    clock, fault = statistics.median(res["clock_s"]), statistics.median(res["fault_s"])
    out = {"nodes": args.nodes, "repeats": args.repeats, "clock_median_ms": clock * 1e3,
           "clock_max_ms": max(res["clock_s"]) * 1e3, "fault_median_ms": fault * 1e3,
           "physics_floor_ms": floor * 1e3, "settle_ms": SETTLE_S * 1e3,
           "clock_over_fault": clock / fault, "clock_over_settle": max(res["clock_s"]) / SETTLE_S,
           "machine": f"{platform.machine()}, {platform.python_version()}", "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.nodes} agents, {args.repeats} switches issued at sat-0, every node polled until it holds it:")
        print(f"  clock switch reaches every node: median {out['clock_median_ms']:.0f} ms, max "
              f"{out['clock_max_ms']:.0f} ms  (settle {out['settle_ms']:.0f} ms: max/settle "
              f"{out['clock_over_settle']:.2f})")
        print(f"  baseline, a link fault's flood:  median {out['fault_median_ms']:.0f} ms  "
              f"(clock/fault {out['clock_over_fault']:.2f})")
        print(f"  physics floor (longest shortest path from sat-0): {out['physics_floor_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
