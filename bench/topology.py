"""Topology step and path cost, against raw sgp4 propagation measured in the same run.

One topology step = SGP4 positions of every satellite (Earth-fixed), every
+Grid laser link checked (grazing altitude, range), and ground links of 100
stations (the built-in cities plus a Fibonacci lattice) above a 25° mask.
A path = lowest-latency ground-to-ground path on a step's snapshot, computed
cold (no cached tree for that destination).  Baselines measured here, now:
``SatrecArray.sgp4`` for the same satellites at one instant (the floor of any
step) and a plain-Python Dijkstra over the same graph (the floor we replaced).

    python bench/topology.py [--steps 200] [--paths 200] [--json]

Goals (issue): ≤ 10 ms per step for starlink-s1, ≤ 5 ms per path.

BLAS runs one thread (set before numpy loads; override with the usual
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS): an agent host runs many agent
processes, and BLAS worker threads fighting over its cores made the 100×N
visibility product 5–10× slower here.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.ground import BUILTIN_STATIONS, GroundStation  # noqa: E402
from mesh.orbit import Constellation  # noqa: E402
from mesh.presets import preset  # noqa: E402
from mesh.topology import Topology  # noqa: E402


def hundred_stations() -> list[GroundStation]:
    out = list(BUILTIN_STATIONS.values())
    extra = 100 - len(out)
    for j in range(extra):                      # Fibonacci lattice between ±70° latitude
        lat = math.degrees(math.asin(-0.94 + 1.88 * (j + 0.5) / extra))
        lon = (j * 137.50776) % 360.0 - 180.0
        out.append(GroundStation(f"lattice{j}", round(lat, 4), round(lon, 4)))
    return out


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def python_dijkstra(snap, src: int, dst: int) -> float:
    dist = {src: 0.0}
    heap = [(0.0, src)]
    while heap:
        d, u = heapq.heappop(heap)
        if u == dst:
            return d
        if d > dist[u] or (u != src and u >= snap.n_sats):
            continue
        for v, w in snap.neighbours(u):
            if d + w < dist.get(v, math.inf):
                dist[v] = d + w
                heapq.heappush(heap, (d + w, v))
    return math.inf


def bench(name: str, steps: int, paths: int) -> dict:
    cfg = preset(name)
    c = Constellation(list(cfg.all_shells), cfg.epoch_jd)
    stations = hundred_stations()
    topo = Topology(c, max_range_km=cfg.links.max_range_km, grazing_km=cfg.links.grazing_km, stations=stations)
    whole = math.floor(c.epoch_jd)
    jd, fr = np.array([float(whole)]), np.array([c.epoch_jd - whole])
    ts = iter(np.arange(10 * steps + 100) * 1.0)          # every step at a new instant: nothing cached

    raw = timed(lambda: c._array.sgp4(jd, fr), steps)
    pos = timed(lambda: c.positions(next(ts)), steps)
    p = c.positions(0.0)
    laser = timed(lambda: topo._isl_up(p, topo.candidates, topo._check_los), steps)
    ground = timed(lambda: topo.stations.visible(p, topo.elevation_mask_deg), steps)
    step = timed(lambda: topo.snapshot(next(ts)), steps)
    step_graph = timed(lambda: topo.snapshot(next(ts))._edges(), steps)
    # single-satellite handover: one decision per 15 s slot, amortised over 1 s steps
    handover = {}
    for policy in ("highest_elevation", "longest_visibility"):
        ho = Topology(c, max_range_km=cfg.links.max_range_km, grazing_km=cfg.links.grazing_km, stations=stations,
                      handover=policy)
        clock = iter(np.arange(1000.0))
        handover[policy] = statistics.mean(timed(lambda: ho.snapshot(float(next(clock))), min(steps, 300)))

    snap = topo.snapshot(123.0)
    snap._edges()
    rng = np.random.default_rng(1)
    pairs = [tuple(int(x) + topo.n_sats for x in rng.choice(len(stations), 2, replace=False)) for _ in range(paths)]
    it = iter(pairs * 3)

    def one_path():
        a, b = next(it)
        snap._trees.clear()
        snap.shortest_path(a, b)
    path = timed(one_path, paths - 1)
    it_py = iter(pairs * 3)
    py = timed(lambda: python_dijkstra(snap, *next(it_py)), min(paths, 30) - 1)
    # the costs agree with the reference
    for a, b in pairs[:10]:
        found = snap.shortest_path(a, b)
        ref = python_dijkstra(snap, a, b)
        assert (found is None and ref == math.inf) or abs(found[1] - ref) < 1e-12, (a, b, found, ref)

    med = statistics.median
    return {
        "preset": name, "satellites": len(c), "stations": len(stations),
        "laser_links": int(len(topo.candidates)), "ground_links": int(len(snap.ground_pairs)),
        "raw_sgp4_ms": med(raw), "positions_ms": med(pos), "laser_ms": med(laser), "ground_ms": med(ground),
        "step_ms": med(step), "step_p90_ms": float(np.percentile(step, 90)), "step_with_graph_ms": med(step_graph),
        "step_highest_elevation_ms": handover["highest_elevation"],
        "step_longest_visibility_ms": handover["longest_visibility"],
        "path_ms": med(path), "path_p90_ms": float(np.percentile(path, 90)), "python_dijkstra_ms": med(py),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--paths", type=int, default=200)
    ap.add_argument("--presets", nargs="+", default=["starlink-s1", "starlink-gen1"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [bench(name, args.steps, args.paths) for name in args.presets]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"Python {platform.python_version()}, numpy {np.__version__}, "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}")
    for r in results:
        base = r["raw_sgp4_ms"]
        print(f"\n{r['preset']}: {r['satellites']} satellites, {r['laser_links']} laser links, "
              f"{r['stations']} stations ({r['ground_links']} ground links at t=123 s)")
        print(f"  {'':<38} {'median ms':>10} {'× raw sgp4':>11}")
        rows = [("raw SatrecArray.sgp4 (baseline)", base), ("positions (sgp4 + Earth-fixed)", r["positions_ms"]),
                ("laser links (grazing + range)", r["laser_ms"]), ("ground links, 100 stations", r["ground_ms"]),
                ("topology step (all of the above)", r["step_ms"]),
                ("step + routing graph", r["step_with_graph_ms"]),
                ("step, highest_elevation (mean, 1 s)", r["step_highest_elevation_ms"]),
                ("step, longest_visibility (mean, 1 s)", r["step_longest_visibility_ms"])]
        for label, v in rows:
            print(f"  {label:<38} {v:>10.3f} {v / base:>10.1f}×")
        goal = f" (goal ≤ 10 ms: {'✓' if r['step_ms'] <= 10 else '✗'})" if r["preset"] == "starlink-s1" else ""
        print(f"  step p90 {r['step_p90_ms']:.3f} ms{goal}")
        pgoal = "✓" if r["path_ms"] <= 5 else "✗"
        print(f"  ground-to-ground path {r['path_ms']:.3f} ms median, {r['path_p90_ms']:.3f} ms p90 (goal ≤ 5 ms: {pgoal});"
              f" plain-Python Dijkstra {r['python_dijkstra_ms']:.3f} ms = {r['python_dijkstra_ms'] / r['path_ms']:.1f}× slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
