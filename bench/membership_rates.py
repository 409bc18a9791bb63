"""Idle cost per satellite with membership rates scaled to the fleet, against today's fixed rates.

    python bench/membership_rates.py                        # 96 and 192 satellites, 2 rounds
    python bench/membership_rates.py --sizes 96 192 384 --seconds 12 --per-process 1

Each run is a fresh interpreter holding an idle ``InProcFleet`` (``agent/ops/inproc.py``:
one production ``Node`` per satellite on the in-memory twin, starlink-s1's shells reshaped
to n satellites plus its ground stations, seeded virtual clock, no faults, no tasks), as in
``bench/sim_scale.py``.  The same fleet runs twice per round, alternating: with
``fleet_config()`` (the fixed rates every agent used) and with
``scaled_config(n, K)`` (``mesh/membership_config.py``), K = ``--per-process`` (default:
all of them, as this one process really holds them).  After an 8 s warm-up it counts, over
``--seconds`` simulated seconds, the control frames (membership, gossip, hop acks) each
node sends per second and the CPU each node costs per simulated second (process time:
what the node would cost a real machine per wall second), and any suspicion or death
(none expected: nothing fails).  Prints both and their ratios (best of ``--rounds`` by CPU),
and the CPU saved per frame saved: the marginal cost of one membership frame.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(n: int, seconds: float, per_process: int | None, scaled: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import tempfile
    import time

    import trio

    from agent import entropy, wallclock
    from agent.ops.inproc import InProcFleet
    from agent.zoo import matmul
    from mesh.membership_config import fleet_config, scaled_config
    tmp = Path(tempfile.mkdtemp(prefix="membership-rates-"))
    matmul.build(tmp / "m")
    out: dict = {}

    def totals(fleet) -> tuple[int, int, int]:
        frames = probes = verdicts = 0
        for m in fleet.members.values():
            ms = m.node.membership
            probes += ms.m.stats["probes"]
            verdicts += sum(sum(c.values()) for c in ms.verdicts.values())
            frames += sum(link.stats.control_frames_sent for link in m.node.links.links.values())
        return frames, probes, verdicts

    async def main() -> None:
        probe = InProcFleet(tmp / "p", tmp / "m", n, models=("matmul",), preset="starlink-s1")
        nodes = len(probe.peers.by_name)
        k = nodes if per_process is None else per_process
        cfg = scaled_config(nodes, k) if scaled else fleet_config()
        fleet = InProcFleet(tmp / "f", tmp / "m", n, models=("matmul",), preset="starlink-s1", membership=cfg)
        async with trio.open_nursery() as nursery:
            await fleet.start(nursery)
            await trio.sleep(8.0)
            f0, p0, _ = totals(fleet)
            t0, c0 = trio.current_time(), time.process_time()
            await trio.sleep(seconds)
            cpu, sim = time.process_time() - c0, trio.current_time() - t0
            f1, p1, verdicts = totals(fleet)
            out.update(nodes=nodes, k=k, t=cfg.probe_interval_s, frames_per_node_s=(f1 - f0) / sim / nodes,
                       probes_per_node_s=(p1 - p0) / sim / nodes, cpu_ms_per_node_s=1000 * cpu / sim / nodes,
                       verdicts=verdicts)
            nursery.cancel_scope.cancel()
    clock = wallclock.JumpClock()
    with entropy.seeded(1), wallclock.virtual(clock, origin=1_767_225_600.0):
        trio.run(main, clock=clock)
    print(json.dumps(out))


def run(n: int, seconds: float, per_process: int | None, scaled: bool) -> dict:
    got = subprocess.run([sys.executable, __file__, "--worker", str(n), str(seconds),
                          str(per_process or 0), "1" if scaled else "0"],
                         capture_output=True, text=True, timeout=3600, cwd=ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)})
    if got.returncode != 0:
        raise SystemExit(f"run failed:\n{got.stderr[-2000:]}")
    return json.loads(got.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) or None, sys.argv[5] == "1")
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 192], help="satellites (default 96 192)")
    ap.add_argument("--seconds", type=float, default=12.0, help="idle simulated seconds measured (default 12)")
    ap.add_argument("--per-process", type=int, default=None,
                    help="K for scaled_config (default: every node, as this process holds them all)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print("| satellites | nodes | K | T fixed / scaled (s) | control frames per node per s (fixed / scaled) "
          "| CPU ms per node per s (fixed / scaled) | frames ratio | CPU ratio | CPU per frame saved (ms) "
          "| suspicions + deaths |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, scaled in (("fixed", False), ("scaled", True)):
                r = run(n, args.seconds, args.per_process, scaled)
                if label not in best or r["cpu_ms_per_node_s"] < best[label]["cpu_ms_per_node_s"]:
                    best[label] = r
        f, s = best["fixed"], best["scaled"]
        fewer = f["frames_per_node_s"] - s["frames_per_node_s"]
        saved = f"{(f['cpu_ms_per_node_s'] - s['cpu_ms_per_node_s']) / fewer:.2f}" if fewer > 0.05 else "—"
        print(f"| {n} | {s['nodes']} | {s['k']} | {f['t']:.2f} / {s['t']:.2f} | "
              f"{f['frames_per_node_s']:.2f} / {s['frames_per_node_s']:.2f} | "
              f"{f['cpu_ms_per_node_s']:.2f} / {s['cpu_ms_per_node_s']:.2f} | "
              f"{f['frames_per_node_s'] / s['frames_per_node_s']:.2f}× fewer | "
              f"{f['cpu_ms_per_node_s'] / s['cpu_ms_per_node_s']:.2f}× less | {saved} | "
              f"{f['verdicts']} / {s['verdicts']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
