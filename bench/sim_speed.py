"""Simulator speed (simulated seconds per wall second), this tree against a baseline commit,
or the production-node engine against the discrete-event one in this tree (``--engines``).

    python bench/sim_speed.py --baseline main                 # demo 300 s and starlink-s1 45 s, 2 rounds
    python bench/sim_speed.py --baseline HEAD~3 --presets demo:120 --rounds 3
    python bench/sim_speed.py --engines --presets demo:60 starlink-s1:10 --clock cpu
    python bench/sim_speed.py --nodes-baseline main --presets demo:60 --clock cpu   # nodes engine, REF vs here

``--engines``: each preset runs ``orbitmesh sim --engine des`` (``mesh/sim``) and
``--engine nodes`` (``agent/ops/sim_nodes.py``: a production Node per satellite) with
the same plan (seed 1, one kill, one cut, tasks), each in a fresh interpreter,
alternating; the nodes figure includes building and starting the fleet.  A
preset over ``--nodes-max`` nodes is not started on the nodes engine (its
estimate from a smaller fleet of the same shells is printed instead, see
docs/benchmarks.md).  Prints sim s per wall (or CPU) s of each and their ratio.

Each run is ``mesh.sim.scenario.run_scenario`` (what ``orbitmesh sim`` runs:
one kill, one cut, tasks) in a fresh interpreter, alternating baseline and
this tree so load on a shared machine hits both alike; ``--clock cpu``
times each run by its CPU time, which load from other work barely moves. The baseline is
``git archive REF`` unpacked in a temporary directory. Prints the best of
the rounds for each and their ratio (> 1: this tree is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(tree: str, preset: str, seconds: float, tasks: int, clock: str) -> None:
    sys.path.insert(0, tree)
    import time

    from mesh.sim.scenario import ScenarioSpec, run_scenario
    timer = time.process_time if clock == "cpu" else time.perf_counter
    rep = run_scenario(ScenarioSpec(preset=preset, seconds=seconds, seed=1, tasks=tasks, timer=timer))
    print(json.dumps({"events": rep["events"], "wall_s": rep["wall_s"], "seconds": rep["seconds"],
                      "delivered": rep.get("tasks", {}).get("delivered") if isinstance(rep.get("tasks"), dict)
                      else None}))


def nodes_worker(tree: str, preset: str, seconds: float, tasks: int, clock: str) -> None:
    sys.path.insert(0, tree)
    import time

    from agent.ops.sim_nodes import SimSpec, run as run_nodes
    timer = time.process_time if clock == "cpu" else time.perf_counter
    t0 = timer()
    rep = run_nodes(SimSpec(preset=preset, seconds=seconds, seed=1, tasks=tasks, deadline_s=min(30.0, seconds / 3)))
    print(json.dumps({"events": rep["frames"]["frames_sent"], "wall_s": timer() - t0, "seconds": rep["seconds"],
                      "delivered": rep["tasks"]["succeeded"]}))


def des_worker(tree: str, preset: str, seconds: float, tasks: int, clock: str) -> None:
    sys.path.insert(0, str(ROOT))
    import time

    from mesh.sim.scenario import ScenarioSpec, run_scenario
    timer = time.process_time if clock == "cpu" else time.perf_counter
    t0 = timer()
    rep = run_scenario(ScenarioSpec(preset=preset, seconds=seconds, seed=1, tasks=tasks,
                                    task_deadline_s=min(30.0, seconds / 3)))
    print(json.dumps({"events": rep["events"], "wall_s": timer() - t0, "seconds": rep["seconds"],
                      "delivered": rep["tasks"]["delivered"]}))


def run(tree: Path, preset: str, seconds: float, tasks: int, clock: str, mode: str = "--worker") -> dict:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, __file__, mode, str(tree), preset, str(seconds), str(tasks), clock],
                         capture_output=True, text=True, timeout=3600, cwd=tree, env=env)
    if out.returncode != 0:
        raise SystemExit(f"run in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--nodes-worker", "--des-worker"):
        if sys.argv[1] == "--worker":
            worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        else:
            (nodes_worker if sys.argv[1] == "--nodes-worker" else des_worker)(
                sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="main", help="git ref to compare with (default: main)")
    ap.add_argument("--presets", nargs="+", default=["demo:300", "starlink-s1:45"],
                    help="PRESET:SECONDS to simulate (default: demo:300 starlink-s1:45)")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the simulation by wall clock or by the process's CPU time (steadier on a busy host)")
    ap.add_argument("--engines", action="store_true", help="compare the nodes engine with the des engine here")
    ap.add_argument("--nodes-max", type=int, default=400, help="largest fleet started on the nodes engine")
    ap.add_argument("--nodes-baseline", metavar="REF", help="the nodes engine here against the nodes engine at REF")
    args = ap.parse_args()
    if args.engines:
        return compare_engines(args)
    mode = "--nodes-worker" if args.nodes_baseline else "--worker"
    args.baseline = args.nodes_baseline or args.baseline
    with tempfile.TemporaryDirectory(prefix="sim-speed-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        print(f"| preset | simulated s | events (base / this) | base: sim s per {args.clock} s | this tree | ratio |")
        print("|---|---|---|---|---|---|")
        for spec in args.presets:
            preset, _, secs = spec.partition(":")
            seconds = float(secs or 60)
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for label, tree in (("base", base), ("this", ROOT)):
                    r = run(tree, preset, seconds, args.tasks, args.clock, mode)
                    if label not in best or r["wall_s"] < best[label]["wall_s"]:
                        best[label] = r
            b, t = best["base"], best["this"]
            sb, st = b["seconds"] / b["wall_s"], t["seconds"] / t["wall_s"]
            print(f"| {preset} | {seconds:.0f} | {b['events']:,} / {t['events']:,} | {sb:.2f} | {st:.2f} | "
                  f"{st / sb:.2f}× |", flush=True)
    return 0


def compare_engines(args: argparse.Namespace) -> int:
    from mesh.presets import preset as get_preset
    print(f"| preset | nodes | simulated s | des: sim s per {args.clock} s | nodes engine | nodes / des |")
    print("|---|---|---|---|---|---|")
    for spec in args.presets:
        preset, _, secs = spec.partition(":")
        seconds = float(secs or 60)
        size = get_preset(preset).size
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, mode in (("des", "--des-worker"), ("nodes", "--nodes-worker")):
                if label == "nodes" and size > args.nodes_max:
                    continue
                r = run(ROOT, preset, seconds, args.tasks, args.clock, mode)
                if label not in best or r["wall_s"] < best[label]["wall_s"]:
                    best[label] = r
        d = best["des"]["seconds"] / best["des"]["wall_s"]
        if "nodes" in best:
            n = best["nodes"]["seconds"] / best["nodes"]["wall_s"]
            print(f"| {preset} | {size:,} | {seconds:g} | {d:.2f} | {n:.3f} | {n / d:.3f}× |", flush=True)
        else:
            print(f"| {preset} | {size:,} | {seconds:g} | {d:.2f} | not started (> --nodes-max {args.nodes_max}) "
                  f"| — |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
