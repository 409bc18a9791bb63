"""Per-node route warming: a tree towards every destination (before) against the node's
own first-hop table (``HealingRouter.warm_from``), measured in the same run.

    python bench/route_warm.py [--repeats 5] [--json]

For each fleet (demo 24 satellites; a 16×24 Walker shell of 384; starlink-s1's
1,584), plus the preset's ground stations and 20 more on a lattice: one node's
warm for one snapshot, each repetition at a new instant on a fresh router (the
snapshot itself is built outside the timing: every node shares it).  CPU time
(``time.process_time``), and memory as the peak of Python allocations during
the warm (``tracemalloc``: numpy reports to it) and the bytes kept afterwards
(the trees, or the table).  Prints before, after and their ratio.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.ops.fleet import FleetSpec, fleet_config  # noqa: E402
from mesh.ground import GroundStation  # noqa: E402
from mesh.healing import HealingRouter  # noqa: E402
from mesh.world import World  # noqa: E402

FLEETS = (("demo", None), ("starlink-s1", 384), ("starlink-s1", None))


def lattice(k: int) -> tuple[GroundStation, ...]:
    return tuple(GroundStation(f"lattice{j}", round(math.degrees(math.asin(-0.86 + 1.72 * (j + 0.5) / k)), 4),
                               round((j * 137.50776) % 360.0 - 180.0, 4)) for j in range(k))


def one(world: World, t: float, here: int, new: bool) -> tuple[float, int, int]:
    snap = world.router.snapshot(t)
    snap.pair_set()
    hr = HealingRouter(world.router.snapshot)
    others = [i for i in range(snap.n_nodes) if i != here]
    tracemalloc.start()
    t0 = time.process_time()
    if new:
        hr.warm_from(here, t)
    else:
        hr.warm(others, t)
    cpu = time.process_time() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    view = next(iter(hr._views.values()))
    kept = sum(a.nbytes for a in view.trees.values()) + sum(a.nbytes for a in view.hops.values())
    return cpu, peak, kept


def bench(name: str, n: int | None, repeats: int) -> dict:
    world = World.from_config(fleet_config(FleetSpec(preset=name, n=n)), extra_stations=lattice(20))
    snap = world.router.snapshot(0.0)
    here = snap.n_sats // 3
    rows: dict[str, list] = {"before": [], "after": []}
    for k in range(repeats):
        for label in ("before", "after"):                  # alternating: load hits both alike
            rows[label].append(one(world, 10.0 + 7.0 * k + (label == "after") * 3.0, here, label == "after"))
    out = {"fleet": f"{name}" + (f" reshaped to {n}" if n else ""), "satellites": snap.n_sats, "nodes": snap.n_nodes}
    for label, rs in rows.items():
        out[f"{label}_ms"] = statistics.median(r[0] for r in rs) * 1e3
        out[f"{label}_peak_mb"] = max(r[1] for r in rs) / 1e6
        out[f"{label}_kept_mb"] = max(r[2] for r in rs) / 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [bench(name, n, args.repeats) for name, n in FLEETS]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("| fleet | nodes | all destinations (before): CPU ms / peak MB / kept MB | first-hop table (after) "
          "| CPU ratio | peak ratio | kept ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['fleet']} | {r['nodes']:,} | {r['before_ms']:.2f} / {r['before_peak_mb']:.2f} / "
              f"{r['before_kept_mb']:.3f} | {r['after_ms']:.2f} / {r['after_peak_mb']:.3f} / {r['after_kept_mb']:.4f} "
              f"| {r['before_ms'] / r['after_ms']:.0f}× | {r['before_peak_mb'] / r['after_peak_mb']:.0f}× "
              f"| {r['before_kept_mb'] / r['after_kept_mb']:.0f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
