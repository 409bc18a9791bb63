"""Membership and gossip in the simulator: convergence, detection, reroute, delivery, bytes.

Runs the production pure core (mesh.membership, mesh.delivery, mesh.healing)
for every satellite in virtual time (mesh.sim), and compares with baselines
measured in the same run:

* physics: the network diameter (largest shortest-path latency), the floor
  under any convergence time;
* naive flooding of the same state changes over the same emulated links
  (every new record forwarded at once, as its own frame, to every neighbour
  but its sender; no batching, no retransmission): the latency floor of
  hop-by-hop dissemination and the bytes baseline;
* Serf's convergence model (99.99% of 30 nodes in 1.8 s), quoted as a target.

    python bench/sim_convergence.py [--seconds 120] [--seed 1] [--quick] [--json] [--markdown]

Goals (issue): detection < 3 s at 24 agents with zero false positives under
10% loss; delivery 100% under 10% loss; reroute within one detection interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.membership import constellation_config, fleet_config  # noqa: E402
from mesh.sim import FloodNode, Simulator, StateChange  # noqa: E402
from mesh.sim.scenario import (SERF_CONVERGENCE_30_NODES_S, build_topology, collect, format_report,  # noqa: E402
                               run_scenario)


def dissemination(preset: str, *, seed: int, loss: float, changes: int, flood: bool, spacing_s: float = 1.0,
                  processing_s: float = 0.0) -> dict:
    """State changes at random nodes, ``spacing_s`` apart, nothing else happening: time to all, bytes per update."""
    topo, _ = build_topology(preset)
    n = topo.n_sats
    if flood:
        sim = Simulator(topo, seed=seed, node_factory=FloodNode, loss=loss, processing_s=processing_s)
    else:
        sim = Simulator(topo, seed=seed, membership=fleet_config() if n <= 100 else constellation_config(), loss=loss,
                        processing_s=processing_s)
    sim.start_all()
    warm = 8.0 if n <= 100 else 4.0       # past the start-up grace and the join syncs
    sim.call_at(warm, sim.reset_counters)
    rng = random.Random(f"{seed}:dissemination")
    sim.schedule([StateChange(warm + 1.0 + k * spacing_s, rng.randrange(n),
                              {"load": round(0.01 * k, 2), "queue": k, "models": ["digits"]})
                  for k in range(changes)])
    t0 = time.perf_counter()
    sim.run(warm + 1.0 + changes * spacing_s + 3.0)
    wall = time.perf_counter() - t0
    rep = collect(sim)
    conv = rep["convergence"]
    b = sim.bytes
    upd_bytes = (b["gossip"] + b["piggyback"]) if not flood else b["gossip"]
    return {
        "nodes": n, "loss": loss, "changes": len(conv),
        "reached_all": sum(1 for c in conv if c["reached"] == c["of"]),
        "p50_s": statistics.median(c["p50"] for c in conv if c["p50"] is not None),
        "p9999_s": statistics.median(c["p9999"] for c in conv if c["p9999"] is not None),
        "max_s": max(c["max"] for c in conv if c["max"] is not None),
        "update_bytes_per_node": upd_bytes / max(len(conv), 1) / n,
        "frames_per_node": sim.frames / max(len(conv), 1) / n if flood else None,
        "diameter_ms": sim.net.diameter_s(sim.now, sample=64) * 1e3,
        "wall_s": wall,
    }


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def soak(seconds: float, seed: int, loss: float) -> dict:
    """24 agents, loss on every link, nothing else happening: does anyone get declared dead?"""
    topo, _ = build_topology("demo")
    sim = Simulator(topo, seed=seed, membership=fleet_config(), loss=loss)
    sim.start_all()
    t0 = time.perf_counter()
    sim.run(seconds)
    return {"seconds": seconds, "loss": loss, "false_deaths": len(sim.false_dead),
            "false_link_down": sim.false_link_down, "refuted_suspicions": len(sim.false_suspects),
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="simulated seconds of the main runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.1)
    ap.add_argument("--soak", type=float, default=600.0, help="simulated seconds of the false-positive soak")
    ap.add_argument("--quick", action="store_true", help="24 nodes only (skip starlink-s1)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md table rows")
    args = ap.parse_args()

    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                 "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "seed": args.seed}
    presets = ["demo"] if args.quick else ["demo", "starlink-s1"]
    for name in presets:
        big = name != "demo"
        print(f"== {name}: dissemination on a quiet mesh (0% loss), gossip vs flooding", flush=True)
        g0 = dissemination(name, seed=args.seed, loss=0.0, changes=5, flood=False)
        f0 = dissemination(name, seed=args.seed, loss=0.0, changes=5, flood=True)
        print(f"== {name}: the same with 0.5 ms of processing per frame (py-libp2p's measured CPU cost)", flush=True)
        gp = dissemination(name, seed=args.seed, loss=0.0, changes=5, flood=False, processing_s=0.0005)
        fp = dissemination(name, seed=args.seed, loss=0.0, changes=5, flood=True, processing_s=0.0005)
        print(f"== {name}: a burst of 40 state changes in one second", flush=True)
        gb = dissemination(name, seed=args.seed, loss=0.0, changes=40, flood=False, spacing_s=0.025)
        fb = dissemination(name, seed=args.seed, loss=0.0, changes=40, flood=True, spacing_s=0.025)
        print(f"== {name}: dissemination under {args.loss:.0%} loss", flush=True)
        gl = dissemination(name, seed=args.seed, loss=args.loss, changes=5, flood=False)
        fl = dissemination(name, seed=args.seed, loss=args.loss, changes=5, flood=True)
        print(f"== {name}: {args.seconds:.0f} s with kills, restarts, cuts and tasks under {args.loss:.0%} loss",
              flush=True)
        t0 = time.perf_counter()
        rep = run_scenario(preset=name, seconds=args.seconds, seed=args.seed, loss=args.loss,
                           kills=1 if big else 2, cuts=1 if big else 2, restarts=True, changes=3,
                           tasks=100 if big else 300, task_deadline_s=30.0, timer=time.perf_counter)
        rep["bench_wall_s"] = time.perf_counter() - t0
        print(format_report(rep), flush=True)
        out[name] = {"gossip_quiet": g0, "flood_quiet": f0, "gossip_proc": gp, "flood_proc": fp,
                     "gossip_burst": gb, "flood_burst": fb,
                     "gossip_loss": gl, "flood_loss": fl, "scenario": rep}
    print(f"== demo: false-positive soak, {args.soak:.0f} s at {args.loss:.0%} loss", flush=True)
    out["soak"] = soak(args.soak, args.seed, args.loss)

    print()
    print(f"machine: {out['machine']}, load average {out['load_avg']}")
    for name in presets:
        r = out[name]
        g0, f0, gl, fl, sc = r["gossip_quiet"], r["flood_quiet"], r["gossip_loss"], r["flood_loss"], r["scenario"]
        print(f"{name} ({g0['nodes']} nodes; diameter {g0['diameter_ms']:.1f} ms):")
        print(f"  state change to every node, quiet mesh: gossip {g0['max_s'] * 1e3:.0f} ms "
              f"(= {g0['max_s'] * 1e3 / g0['diameter_ms']:.2f}× the physics diameter, "
              f"{g0['max_s'] / f0['max_s']:.2f}× flooding's {f0['max_s'] * 1e3:.0f} ms, "
              f"{g0['max_s'] / SERF_CONVERGENCE_30_NODES_S:.3f}× Serf's 1.8 s model at 30 nodes)")
        gp, fp = r["gossip_proc"], r["flood_proc"]
        print(f"  with 0.5 ms per frame per hop: gossip {gp['max_s'] * 1e3:.0f} ms ({gp['max_s'] * 1e3 / g0['diameter_ms']:.2f}× "
              f"the diameter, {gp['max_s'] / fp['max_s']:.2f}× flooding's {fp['max_s'] * 1e3:.0f} ms, "
              f"{gp['max_s'] / SERF_CONVERGENCE_30_NODES_S:.3f}× Serf's 1.8 s)")
        print(f"  bytes per update per node: gossip {g0['update_bytes_per_node']:.0f} B vs flooding "
              f"{f0['update_bytes_per_node']:.0f} B ({g0['update_bytes_per_node'] / f0['update_bytes_per_node']:.2f}×); "
              f"in a burst of 40/s: {r['gossip_burst']['update_bytes_per_node']:.0f} B vs "
              f"{r['flood_burst']['update_bytes_per_node']:.0f} B "
              f"({r['gossip_burst']['update_bytes_per_node'] / r['flood_burst']['update_bytes_per_node']:.2f}×), "
              f"all nodes within {r['gossip_burst']['max_s'] * 1e3:.0f} ms vs {r['flood_burst']['max_s'] * 1e3:.0f} ms")
        print(f"  under {args.loss:.0%} loss: gossip reached all in {gl['reached_all']}/{gl['changes']} changes, "
              f"max {gl['max_s'] * 1e3:.0f} ms; flooding {fl['reached_all']}/{fl['changes']}, "
              f"max {fl['max_s'] * 1e3:.0f} ms")
        d = sc["deaths"]
        print("  detection (death known everywhere): " + ", ".join(_s(x["all_dead_s"]) for x in d))
        rr = sc["reroutes"]
        print("  reroute after a cut: " + ", ".join(f"{_s(x['rerouted_s'])} (detected {_s(x['detected_s'])})"
                                                    for x in rr))
        t = sc["tasks"]
        print(f"  delivery under loss: {t['delivered']}/{t['submitted']} = {t['ratio'] * 100:.2f}%")
        b = sc["bytes_per_node_s"]
        print(f"  membership bytes/node/s: {b['membership_total']:.0f} (probes {b['probe']:.0f}, gossip "
              f"{b['gossip']:.0f}, sync {b['sync']:.0f})")
        print(f"  wall: {sc['bench_wall_s']:.1f} s for {sc['seconds']:.0f} simulated s ({sc['events']:,} events)")
    s = out["soak"]
    print(f"soak: {s['seconds']:.0f} s × 24 nodes at {s['loss']:.0%} loss: {s['false_deaths']} false deaths, "
          f"{s['false_link_down']} false link-downs, {s['refuted_suspicions']} refuted suspicions "
          f"({s['wall_s']:.1f} s wall)")
    if args.json:
        print(json.dumps(out, default=str))
    if args.markdown:
        print()
        print("| constellation | nodes | diameter | change → all nodes (quiet; +0.5 ms/frame) | × diameter | × flooding | "
              "bytes/update/node gossip / flood | death known everywhere | reroute after cut | "
              "tasks delivered (10% loss) | membership B/node/s | wall |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in presets:
            r = out[name]
            g0, f0, sc = r["gossip_quiet"], r["flood_quiet"], r["scenario"]
            d = [x["all_dead_s"] for x in sc["deaths"] if x["all_dead_s"] is not None]
            rr = [x["rerouted_s"] for x in sc["reroutes"] if x["rerouted_s"] is not None]
            t = sc["tasks"]
            gp = r["gossip_proc"]
            print(f"| {name} | {g0['nodes']} | {g0['diameter_ms']:.0f} ms | {g0['max_s'] * 1e3:.0f} ms; "
                  f"{gp['max_s'] * 1e3:.0f} ms | "
                  f"{g0['max_s'] * 1e3 / g0['diameter_ms']:.2f} | {g0['max_s'] / f0['max_s']:.2f} | "
                  f"{g0['update_bytes_per_node']:.0f} / {f0['update_bytes_per_node']:.0f} | "
                  f"{', '.join(f'{x:.2f} s' for x in d)} | {', '.join(f'{x:.2f} s' for x in rr)} | "
                  f"{t['delivered']}/{t['submitted']} | {sc['bytes_per_node_s']['membership_total']:.0f} | "
                  f"{sc['bench_wall_s']:.0f} s / {sc['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
