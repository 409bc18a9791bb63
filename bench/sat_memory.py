"""Memory per hosted satellite (issue 14): RSS and Python heap of one satellite host at K and 2K.

One fleet (``--preset``, ``-n`` satellites) is prepared once; then, for each K
of ``--k``, a fresh child process runs the production satellite host
(``agent.sat_host.SatHost``: libp2p host, node, journals, models, HTTP API
and gRPC per satellite) with the first K satellites, the rest of the fleet
down.  After ``--settle`` seconds it reports its RSS and, with ``--trace``,
tracemalloc's heap by file.  The marginal cost of a hosted satellite is the
difference between consecutive K over the difference in K, so the process's
fixed cost (interpreter, imports, libp2p, onnxruntime) cancels out.

    python bench/sat_memory.py [--preset starlink-s1] [-n 96] [--k 24,48] [--trace]
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


def child(directory: Path, models: Path, k: int, settle: float, trace: bool, top: int) -> dict:
    import tracemalloc
    if trace:
        tracemalloc.start(1)
    import trio

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="starlink-s1")
    ap.add_argument("-n", type=int, default=96, help="satellites in the fleet")
    ap.add_argument("--k", default="24,48", help="satellites in the measured host, ascending")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after start-up before measuring")
    ap.add_argument("--trace", action="store_true", help="tracemalloc by file and line (slower start)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ks = [int(x) for x in args.k.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.models, ks[0], args.settle, args.trace, args.top)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="satmem-") as d:
        fleet_dir = Path(d) / "f"
        prepare(fleet_dir, args.models, args.preset, args.n)
        for k in ks:
            for sub in (fleet_dir / "data").iterdir():      # fresh journals each run
                for f in sub.glob("*.sqlite*"):
                    f.unlink()
            res = subprocess.run([sys.executable, __file__, "--child", str(fleet_dir), "--k", str(k),
                                  "--settle", str(args.settle), "--models", str(args.models), "--top", str(args.top),
                                  *(["--trace"] if args.trace else [])],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(res.stderr[-4000:], file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    result = {"preset": args.preset, "n": args.n, "rows": rows, "marginal_rss_mb": marginal(rows, "rss_mb")}
    if args.trace:
        result["marginal_traced_mb"] = marginal(rows, "traced_mb")
        a, b = rows[0], rows[-1]
        for key in ("by_file", "by_line"):
            keys = set(a[key]) | set(b[key])
            diff = {f: (b[key].get(f, 0) - a[key].get(f, 0)) / (b["k"] - a["k"]) for f in keys}
            result[f"marginal_{key}_kb"] = {f: round(v / 1024, 1) for f, v in
                                            sorted(diff.items(), key=lambda kv: -kv[1])[:args.top]}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.preset}, fleet of {args.n}; one satellite host of K, the rest down")
    for r in rows:
        print(f"  K={r['k']:4d}  RSS {r['rss_mb']:8.1f} MB  start {r['start_s']:6.1f} s"
              + (f"  traced {r['traced_mb']:7.1f} MB" if "traced_mb" in r else ""))
    for (a, b), m in zip(zip(rows, rows[1:]), result["marginal_rss_mb"]):
        print(f"  marginal RSS per hosted satellite, K {a['k']}→{b['k']}: {m:.2f} MB")
    if args.trace:
        for (a, b), m in zip(zip(rows, rows[1:]), result["marginal_traced_mb"]):
            print(f"  marginal Python heap per hosted satellite, K {a['k']}→{b['k']}: {m:.2f} MB")
        for key in ("by_file", "by_line"):
            print(f"  marginal heap per satellite {key.replace('_', ' ')} (KB):")
            for f, v in result[f"marginal_{key}_kb"].items():
                print(f"    {v:9.1f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
