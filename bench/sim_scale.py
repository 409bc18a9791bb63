"""How the production-node simulator scales: start-up and simulated s per CPU s against fleet size.

    python bench/sim_scale.py --preset starlink-s1 --sizes 96 192 384 --seconds 5
    python bench/sim_scale.py --sizes 96 384 --baseline main     # this tree against a commit, same run

Each size is a fresh interpreter running an ``InProcFleet`` (``agent/ops/inproc.py``:
one ``agent.runtime.node.Node`` per satellite, the preset's shells reshaped to n
satellites by ``FleetSpec(n=…)``, plus its ground stations) on a seeded virtual
clock, with no faults and no tasks: the cost of the nodes themselves.  Prints
CPU seconds to start and for the warm-up (``--warmup``, 8 simulated s by default;
starlink-s1's start-up gossip takes longer), simulated seconds per CPU second after it,
peak resident memory, and each size's speed relative to the smallest.  With
``--baseline REF`` each size also runs in ``git archive REF`` (alternating, best
of ``--rounds``) and the ratio this tree / baseline is printed.
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


def worker(tree: str, preset: str, n: int, seconds: float, warmup: float = 8.0) -> None:
    sys.path.insert(0, tree)
    import contextlib
    import resource
    import tempfile
    import time

    import trio
    from trio.testing import MockClock

    from agent import entropy, wallclock
    from agent.ops.inproc import InProcFleet
    from agent.zoo import matmul
    tmp = Path(tempfile.mkdtemp(prefix="sim-scale-"))
    matmul.build(tmp / "m")
    out: dict = {}

    stack = contextlib.ExitStack()

    async def main() -> None:
        fleet = InProcFleet(tmp / "f", tmp / "m", n, models=("matmul",), preset=preset)
        t0 = time.process_time()
        async with trio.open_nursery() as nursery:
            try:            # as `orbitmesh sim` runs it (agent/ops/sim_nodes.py), where the tree has it
                from agent.collector import rarely
            except ImportError:
                rarely = contextlib.nullcontext
            with rarely():
                await fleet.start(nursery)
            try:
                from agent.collector import throughput
                stack.enter_context(throughput())
            except ImportError:
                pass
            out["nodes"], out["start_cpu_s"] = len(fleet.members), time.process_time() - t0
            t_warm = time.process_time()
            await trio.sleep(warmup)
            t1 = time.process_time()
            out["warmup_cpu_s"] = t1 - t_warm
            await trio.sleep(seconds)
            out["sim_per_cpu_s"] = seconds / (time.process_time() - t1)
            nursery.cancel_scope.cancel()
    # The tree's simulator clock (trees before wallclock.JumpClock ran on trio's MockClock).
    clock = wallclock.JumpClock() if hasattr(wallclock, "JumpClock") else MockClock(autojump_threshold=0)
    with stack, entropy.seeded(1), wallclock.virtual(clock, origin=1_767_225_600.0):
        trio.run(main, clock=clock)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(tree: Path, preset: str, n: int, seconds: float, warmup: float = 8.0) -> dict:
    got = subprocess.run([sys.executable, __file__, "--worker", str(tree), preset, str(n), str(seconds), str(warmup)],
                         capture_output=True, text=True, timeout=3600, cwd=tree,
                         env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)})
    if got.returncode != 0:
        return {"error": (got.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(got.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sim-scale-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        print(f"| satellites | nodes | start CPU s ({args.baseline} / this) | simulated s per CPU s "
              f"({args.baseline} / this) | peak RSS MB ({args.baseline} / this) | speed ratio |")
        print("|---|---|---|---|---|---|")
        for n in args.sizes:
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for label, tree in (("base", base), ("this", ROOT)):
                    r = run(tree, args.preset, n, args.seconds, args.warmup)
                    if "error" in r:
                        best.setdefault(label, r)
                    elif "error" in best.get(label, {"error": 1}) or r["sim_per_cpu_s"] > best[label]["sim_per_cpu_s"]:
                        best[label] = r
            b, t = best["base"], best["this"]
            if "error" in b or "error" in t:
                print(f"| {n} | failed: {b.get('error', '')} / {t.get('error', '')} |||||", flush=True)
                continue
            print(f"| {n} | {t['nodes']} | {b['start_cpu_s']:.1f} / {t['start_cpu_s']:.1f} | "
                  f"{b['sim_per_cpu_s']:.3f} / {t['sim_per_cpu_s']:.3f} | {b['max_rss_mb']:.0f} / {t['max_rss_mb']:.0f} "
                  f"| {t['sim_per_cpu_s'] / b['sim_per_cpu_s']:.2f}× |", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]),
               float(sys.argv[6]) if len(sys.argv) > 6 else 8.0)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="starlink-s1")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 192, 384])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=8.0,
                    help="simulated seconds before the measured ones (a large fleet's start-up gossip lasts longer)")
    ap.add_argument("--baseline", help="git ref to compare with (e.g. main)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if args.baseline:
        return compare(args)
    print("| satellites | nodes | start (CPU s) | warm-up (CPU s) | simulated s per CPU s | peak RSS (MB) | speed vs smallest |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for n in args.sizes:
        r = run(ROOT, args.preset, n, args.seconds, args.warmup)
        if "error" in r:
            print(f"| {n} | failed: {r['error']} ||||||")
            continue
        base = base or r["sim_per_cpu_s"]
        print(f"| {n} | {r['nodes']} | {r['start_cpu_s']:.1f} | {r.get('warmup_cpu_s', float('nan')):.1f} | "
              f"{r['sim_per_cpu_s']:.3f} | {r['max_rss_mb']:.0f} | "
              f"{r['sim_per_cpu_s'] / base:.3f}× |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
