"""Satellite hosts (issue 14): K satellites per process against one per process, same run.

For each K (default 1, 6, 24) a real local fleet of N satellites (default: the
demo preset's 24) is started with ``--sats-per-process K`` and measured:

* start-up: ``fleet.start`` until every agent is ready (all links up, all
  members alive), the time ``orbitmesh up`` reports;
* idle CPU: the fleet's processes' user+system time over ``--idle-seconds``
  after a settling pause, in cores; the ground stations' share (a process
  each) apart; per satellite (mcore/sat) without the stations;
* memory: RSS summed over the processes (counts shared pages once per
  process) and PSS (shares them out), per satellite;
* link fidelity: probes on every laser link (1 KB, ``--rate`` Hz, for
  ``--probe-seconds``), release time minus due time, p50/p99, in-process
  (memory twin) and cross-process (libp2p) links reported apart.

Ratios are against K = 1 measured in the same run.

    python bench/sat_hosts.py [-n 24] [--k 1,6,24] [--idle-seconds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.client import ApiError, Client  # noqa: E402
from agent.ops.fleet import host_groups  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402

CLK_TCK = 100


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])          # utime, stime (fields 14, 15)
    return total / CLK_TCK


def memory_mb(pids: set[int]) -> tuple[float, float]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


async def probe_errors(peers, rate: float, seconds: float) -> dict[tuple[str, str], list[float]]:
    """Every link direction probed at once; each receiver's release errors, by (sender, receiver)."""
    links = []
    for name in peers.names():
        async with Client(peers[name].api) as c:
            links += [(name, link["peer"]) for link in (await c.links())["links"]]

    async def one(src, dst):
        async with Client(peers[src].api) as c:
            try:
                await c.probe(dst, rate_hz=rate, size=1024, duration_s=seconds)
            except ApiError as exc:
                if exc.status != 404:      # a ground link that closed since it was listed: skipped
                    raise
    async with trio.open_nursery() as n:
        for src, dst in links:
            n.start_soon(one, src, dst)
    await trio.sleep(seconds + 1.0)
    out: dict[tuple[str, str], list[float]] = {}
    for name in peers.names():
        async with Client(peers[name].api) as c:
            for link in (await c.links(samples=True))["links"]:
                out[(link["peer"], name)] = link["probe_errors_s"]
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1e3, q)) if xs else math.nan


def measure(models: Path, n: int, k: int, idle_s: float, rate: float, probe_s: float, preset: str = "demo") -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sathosts-k{k}-") as d:
        t0 = time.monotonic()
        with local_fleet(Path(d) / "f", models, n, sats_per_process=k, ready_timeout=600.0,
                         preset=preset) as (spec, cfg, peers, procs):
            ready_s = time.monotonic() - t0
            pids = {p.pid for p in procs.values()}
            stations = {p.pid for name, p in procs.items() if name.startswith("gs-")}   # a process each
            time.sleep(5.0)                       # let start-up work (warm-ups, first gossip rounds) settle
            c0, s0, w0 = cpu_seconds(pids), cpu_seconds(stations), time.monotonic()
            time.sleep(idle_s)
            cores = (cpu_seconds(pids) - c0) / (time.monotonic() - w0)
            station_cores = (cpu_seconds(stations) - s0) / (time.monotonic() - w0)
            rss, pss = memory_mb(pids)
            errors = trio.run(probe_errors, peers, rate, probe_s)
    group = {name: h for h, names in host_groups(peers.names(), k).items() for name in names}
    inner = [e for (a, b), xs in errors.items() if group[a] == group[b] for e in xs]
    outer = [e for (a, b), xs in errors.items() if group[a] != group[b] for e in xs]
    return {"k": k, "processes": len(pids), "ready_s": ready_s, "idle_cores": cores,
            "idle_cores_stations": station_cores, "rss_mb": rss, "pss_mb": pss,
            "in_process": {"frames": len(inner), "p50_ms": pct(inner, 50), "p99_ms": pct(inner, 99)},
            "cross_process": {"frames": len(outer), "p50_ms": pct(outer, 50), "p99_ms": pct(outer, 99)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--preset", default="demo", help="constellation preset (-n reshapes its first shell)")
    ap.add_argument("--k", default="1,6,24", help="satellites per process to compare; the first is the baseline")
    ap.add_argument("--idle-seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=10.0, help="probe frames per second per link direction")
    ap.add_argument("--probe-seconds", type=float, default=4.0)
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ks = [int(x) for x in args.k.split(",")]
    print(f"satellite hosts: {args.n} satellites, K = {ks}; {platform.node()}, {platform.python_version()}",
          flush=True)
    rows = []
    for k in ks:
        rows.append(measure(args.models, args.n, k, args.idle_seconds, args.rate, args.probe_seconds, args.preset))
        print(f"  K={k}: {json.dumps(rows[-1])}", flush=True)
    base = rows[0]
    print(f"\n{'K':>3} {'procs':>5} {'ready s':>8} {'idle cores':>10} {'stations':>8} {'mcore/sat':>9} {'RSS MB/sat':>10} "
          f"{'PSS MB/sat':>10} {'in-proc p50/p99 ms':>19} {'cross p50/p99 ms':>17}   ratios vs K={base['k']} "
          f"(ready, CPU, RSS, PSS)")
    for r in rows:
        n = args.n
        print(f"{r['k']:>3} {r['processes']:>5} {r['ready_s']:>8.1f} {r['idle_cores']:>10.3f} "
              f"{r['idle_cores_stations']:>8.3f} {1e3 * (r['idle_cores'] - r['idle_cores_stations']) / n:>9.1f} {r['rss_mb'] / n:>10.1f} {r['pss_mb'] / n:>10.1f} "
              f"{r['in_process']['p50_ms']:>8.3f}/{r['in_process']['p99_ms']:<8.3f} "
              f"{r['cross_process']['p50_ms']:>7.3f}/{r['cross_process']['p99_ms']:<8.3f}  "
              f"{r['ready_s'] / base['ready_s']:.2f} {r['idle_cores'] / base['idle_cores']:.2f} "
              f"{r['rss_mb'] / base['rss_mb']:.2f} {r['pss_mb'] / base['pss_mb']:.2f}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
