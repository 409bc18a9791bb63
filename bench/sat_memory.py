"""Memory per hosted satellite (issue 14): RSS and Python heap of one satellite host at K and 2K.

One fleet (``--preset``, ``-n`` satellites) is prepared once; then, for each K
of ``--k``, a fresh child process runs the production satellite host
(``agent.sat_host.SatHost``: libp2p host, node, journals, models, HTTP API
and gRPC per satellite) with the first K satellites, the rest of the fleet
down.  After ``--settle`` seconds it reports its RSS and, with ``--trace``,
tracemalloc's heap by file.  The marginal cost of a hosted satellite is the
difference between consecutive K over the difference in K, so the process's
fixed cost (interpreter, imports, libp2p, onnxruntime) cancels out.

With the rest of the fleet down, the host's satellites hold few of the others'
membership records; ``--steady N`` adds what a fleet that is all up holds: an
``InProcFleet`` (``agent/ops/inproc.py``) of N satellites, every one up, on the
virtual clock for ``--steady-seconds``, and the heap it added per node.

``--baseline`` runs everything a second time with the per-process sharing undone
(each satellite builds its own World, healing router and fault topology, keeps its
own copy of every membership record and its own public key per member: what main
did before issue 14's memory work), and prints the ratios.

    python bench/sat_memory.py [--preset starlink-s1] [-n 1584] [--k 16,32] [--trace] [--baseline] [--steady 96]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(directory: Path, models: Path, preset: str, n: int) -> None:
    from agent.ops import fleet
    from tests.conftest import free_port_block
    from mesh.world import World
    nodes = len(World.from_config(fleet.fleet_config(fleet.FleetSpec(preset=preset, n=n))).names)
    base = free_port_block(3 * nodes)
    spec = fleet.FleetSpec(directory=directory, n=n, preset=preset, models=models, auth=False,
                           p2p_base_port=base, api_base_port=base + nodes, grpc_base_port=base + 2 * nodes)
    fleet.prepare(spec)


def unshare() -> None:
    """The baseline: undo the per-process sharing in this (child) process."""
    import agent.links.roster as roster
    import agent.runtime.membership as membership
    import agent.sat_host as sat_host
    sat_host.SatHost.world = property(lambda self: None)     # run_satellite builds one World per satellite
    membership.RECORDS = lambda u: u                            # every node keeps its own copy of each record
    roster.public_key_of = roster.public_key_of.__wrapped__     # one key object per member per satellite


def steady(n: int, seconds: float, unshared: bool) -> dict:
    """Heap added by an all-up in-process fleet of ``n`` satellites, per node."""
    import tracemalloc
    tracemalloc.start(1)
    import shutil

    import trio

    from agent import entropy, wallclock
    from agent.ops.inproc import InProcFleet
    if unshared:
        unshare()
    tmp = Path(tempfile.mkdtemp(prefix="satmem-steady-"))
    (tmp / "m").mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copy(ROOT / "models" / f"matmul{suffix}", tmp / "m" / f"matmul{suffix}")
    out: dict = {}

    async def main() -> None:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        fleet = InProcFleet(tmp / "f", tmp / "m", n, models=("matmul",), preset="starlink-s1",
                            sats_per_process=n, share_world=not unshared)
        async with trio.open_nursery() as nursery:
            await fleet.start(nursery)
            await trio.sleep(seconds)
            gc.collect()
            nodes = len(fleet.members)
            out.update(n=n, nodes=nodes, heap_mb_per_node=(tracemalloc.get_traced_memory()[0] - before) / 2**20 / nodes,
                       state_records_per_node=sum(len(m.node.membership.m.states) for m in fleet.members.values()) / nodes)
            nursery.cancel_scope.cancel()
    clock = wallclock.JumpClock()
    try:
        with entropy.seeded(1), wallclock.virtual(clock, origin=1_767_225_600.0):
            trio.run(main, clock=clock)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def child(directory: Path, models: Path, k: int, settle: float, trace: bool, top: int, unshared: bool) -> dict:
    import tracemalloc
    if trace:
        tracemalloc.start(1)
    import trio
    if unshared:
        unshare()

    from agent.daemon import load_fleet
    from agent.ops.fleet import host_groups
    from agent.sat_host import SatHost
    from agent.serve.auth import AgentAuth

    config, peers, revoked = load_fleet(directory / "config.toml", directory / "peers.json", None)
    names = host_groups(peers.names(), k)["host-0"]
    host = SatHost("host-0", names, config, peers, directory / "data", models, auth=AgentAuth(None),
                   fleet_dir=directory)
    out: dict = {"k": len(names)}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            t0 = time.monotonic()
            await nursery.start(host.run)
            out["start_s"] = time.monotonic() - t0
            await trio.sleep(settle)
            gc.collect()
            out["rss_mb"] = rss_mb()
            if trace:
                snap = tracemalloc.take_snapshot()
                out["traced_mb"] = sum(s.size for s in snap.statistics("filename")) / 2**20
                out["by_file"] = {s.traceback[0].filename.replace(str(ROOT) + "/", ""): s.size
                                  for s in snap.statistics("filename")[:top * 4]}
                out["by_line"] = {f"{s.traceback[0].filename.replace(str(ROOT) + '/', '')}:{s.traceback[0].lineno}":
                                  s.size for s in snap.statistics("lineno")[:top * 4]}
            nursery.cancel_scope.cancel()

    import logging
    logging.basicConfig(level=logging.ERROR)
    trio.run(main)
    return out


def marginal(rows: list[dict], key: str) -> list[float]:
    return [(b[key] - a[key]) / (b["k"] - a["k"]) for a, b in zip(rows, rows[1:])]


def run_child(args: argparse.Namespace, *extra: str) -> dict:
    res = subprocess.run([sys.executable, __file__, *extra, "--models", str(args.models), "--top", str(args.top),
                          "--settle", str(args.settle), "--steady-seconds", str(args.steady_seconds)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-4000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def hosts(args: argparse.Namespace, ks: list[int], unshared: bool) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="satmem-") as d:
        fleet_dir = Path(d) / "f"
        prepare(fleet_dir, args.models, args.preset, args.n)
        for k in ks:
            for sub in (fleet_dir / "data").iterdir():      # fresh journals each run
                for f in sub.glob("*.sqlite*"):
                    f.unlink()
            rows.append(run_child(args, "--child", str(fleet_dir), "--k", str(k),
                                  *(["--trace"] if args.trace else []), *(["--unshared"] if unshared else [])))
    result = {"rows": rows, "marginal_rss_mb": marginal(rows, "rss_mb")}
    if args.trace:
        result["marginal_traced_mb"] = marginal(rows, "traced_mb")
        a, b = rows[0], rows[-1]
        for key in ("by_file", "by_line"):
            keys = set(a[key]) | set(b[key])
            diff = {f: (b[key].get(f, 0) - a[key].get(f, 0)) / (b["k"] - a["k"]) for f in keys}
            result[f"marginal_{key}_kb"] = {f: round(v / 1024, 1) for f, v in
                                            sorted(diff.items(), key=lambda kv: -kv[1])[:args.top]}
    return result


def show(label: str, res: dict, trace: bool) -> None:
    print(label)
    rows = res["rows"]
    for r in rows:
        print(f"  K={r['k']:4d}  RSS {r['rss_mb']:8.1f} MB  start {r['start_s']:6.1f} s"
              + (f"  traced {r['traced_mb']:7.1f} MB" if "traced_mb" in r else ""))
    for (a, b), m in zip(zip(rows, rows[1:]), res["marginal_rss_mb"]):
        print(f"  marginal RSS per hosted satellite, K {a['k']}→{b['k']}: {m:.2f} MB")
    if trace:
        for (a, b), m in zip(zip(rows, rows[1:]), res["marginal_traced_mb"]):
            print(f"  marginal Python heap per hosted satellite, K {a['k']}→{b['k']}: {m:.2f} MB")
        for key in ("by_file", "by_line"):
            print(f"  marginal heap per satellite {key.replace('_', ' ')} (KB):")
            for f, v in res[f"marginal_{key}_kb"].items():
                print(f"    {v:9.1f}  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="starlink-s1")
    ap.add_argument("-n", type=int, default=1584, help="satellites in the fleet")
    ap.add_argument("--k", default="16,32", help="satellites in the measured host, ascending ('' : none)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after start-up before measuring")
    ap.add_argument("--trace", action="store_true", help="tracemalloc by file and line (slower start)")
    ap.add_argument("--baseline", action="store_true", help="also without the per-process sharing; ratios")
    ap.add_argument("--steady", type=int, default=0, help="also an all-up in-process fleet of this many satellites")
    ap.add_argument("--steady-seconds", type=float, default=15.0, help="simulated seconds of the --steady fleet")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--steady-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--unshared", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ks = [int(x) for x in args.k.split(",") if x]
    if args.child:
        print(json.dumps(child(args.child, args.models, ks[0], args.settle, args.trace, args.top, args.unshared)))
        return 0
    if args.steady_child:
        print(json.dumps(steady(args.steady, args.steady_seconds, args.unshared)))
        return 0
    variants = [("shared", False)] + ([("unshared (baseline)", True)] if args.baseline else [])
    result: dict = {"preset": args.preset, "n": args.n}
    for label, unshared in variants:
        if len(ks) > 1:
            result[label] = hosts(args, ks, unshared)
        if args.steady:
            result[label + " steady"] = run_child(args, "--steady-child", "--steady", str(args.steady),
                                                  *(["--unshared"] if unshared else []))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for label, unshared in variants:
        if label in result:
            show(f"{args.preset}, fleet of {args.n}; one satellite host of K, the rest down; {label}",
                 result[label], args.trace)
        st = result.get(label + " steady")
        if st:
            print(f"all-up in-process fleet of {st['n']} ({st['nodes']} nodes, {args.steady_seconds:g} s simulated), "
                  f"{label}: heap {st['heap_mb_per_node']:.3f} MB per node, "
                  f"{st['state_records_per_node']:.0f} state records held per node")
    if args.baseline:
        base = "unshared (baseline)"
        if base in result:
            for i, (m, b) in enumerate(zip(result["shared"]["marginal_rss_mb"], result[base]["marginal_rss_mb"])):
                print(f"ratio, marginal RSS per hosted satellite (step {i + 1}): {m:.2f} / {b:.2f} MB = {m / b:.2f}×")
            if args.trace:
                for m, b in zip(result["shared"]["marginal_traced_mb"], result[base]["marginal_traced_mb"]):
                    print(f"ratio, marginal heap per hosted satellite: {m:.2f} / {b:.2f} MB = {m / b:.2f}×")
        if args.steady:
            m, b = result["shared steady"]["heap_mb_per_node"], result[base + " steady"]["heap_mb_per_node"]
            print(f"ratio, all-up fleet heap per node: {m:.3f} / {b:.3f} MB = {m / b:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
