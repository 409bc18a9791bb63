"""Hypatia agreement, multi-shell topology cost and multi-shell simulation speed, with same-run baselines.

Three measurements:

1. ``hypatia``: the ground-to-ground RTT (Rio de Janeiro ↔ St. Petersburg) of
   Hypatia's Starlink-550 scenario, flown by the project from Hypatia's TLEs,
   against the independent pyephem/networkx reference in
   ``tests/hypatia_reference.py`` at every step of 200 s (Hypatia's own
   granularity is 100 ms).  Baseline: the reference's own time per step.
2. ``topology``: one snapshot (positions, +Grid and inter-shell laser links,
   100 stations' ground links) per step of starlink-s1 and starlink-gen1,
   and the inter-shell re-choice (once per 10 s slot), against raw
   ``SatrecArray.sgp4`` propagation of the same satellites at one instant.
3. ``sim``: ``orbitmesh sim --preset starlink-gen1 --seconds S --tasks N``
   with inter-shell links, against the same run with them off (islands) as
   the baseline: simulated seconds per wall second and events per second.
4. ``handover``: handovers per station-hour of each policy (65 built-in
   stations, starlink-s1, one hour), against ``highest_elevation`` as the
   baseline; for the keeping policies also against a chain carried through
   every slot without restarts (what the bounded chain's restarts add), and
   the cost per slot of a station set's choice.

    python bench/shells.py [--only hypatia,topology,sim,handover] [--hypatia-step 0.1] [--sim-seconds 60] [--json]
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
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.topology import hundred_stations  # noqa: E402
from mesh.config import GroundConfig  # noqa: E402
from mesh.ground import GroundStation  # noqa: E402
from mesh.presets import from_tle, preset  # noqa: E402
from mesh.world import World  # noqa: E402


def bench_hypatia(step_s: float) -> dict:
    import hypatia_reference as H
    cfg = from_tle(H.tle_text(), name="hypatia-starlink-550")
    stations = tuple(GroundStation(n.lower(), lat, lon, e / 1000.0)
                     for n, lat, lon, e in (H.RIO_DE_JANEIRO, H.SAINT_PETERSBURG))
    cfg = replace(cfg, ground=GroundConfig(stations=stations, elevation_mask_deg=0.0, handover="all",
                                           max_range_km=H.MAX_GSL_LENGTH_M / 1000.0))
    topo = World.from_config(cfg).topology
    n = topo.n_sats
    ref = H.Reference()
    diffs, ours, theirs, rtts = [], [], [], []
    for j in range(int(round(200.0 / step_s))):
        t = j * step_s
        t0 = time.perf_counter()
        path = topo.snapshot(t).shortest_path(n, n + 1)
        t1 = time.perf_counter()
        want = ref.rtt_s(t)
        t2 = time.perf_counter()
        ours.append(t1 - t0)
        theirs.append(t2 - t1)
        got = 2.0 * path[1]
        rtts.append(got)
        diffs.append(abs(got - want) * 1e3)
    return {"steps": len(diffs), "step_s": step_s, "max_abs_diff_ms": max(diffs),
            "median_abs_diff_ms": statistics.median(diffs), "rtt_min_ms": min(rtts) * 1e3,
            "rtt_max_ms": max(rtts) * 1e3, "project_step_ms": statistics.median(ours) * 1e3,
            "reference_step_ms": statistics.median(theirs) * 1e3,
            "project_vs_reference": statistics.median(ours) / statistics.median(theirs)}


def bench_topology(name: str, steps: int) -> dict:
    cfg = replace(preset(name), ground=replace(preset(name).ground, stations=tuple(hundred_stations())))
    topo = World.from_config(cfg).topology
    c = topo.constellation
    whole = math.floor(c.epoch_jd)
    jd, fr = np.array([float(whole)]), np.array([c.epoch_jd - whole])

    def timed(fn, repeats):
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(out)

    raw = timed(lambda: c._array.sgp4(jd, fr), steps)
    clock = iter(np.arange(5.0, 9.0, 4.0 / (steps + 2)))            # inside one inter-shell slot
    step = timed(lambda: topo.snapshot(float(next(clock))), steps)
    slots = iter(range(1, 10 * steps))
    rechoose = timed(lambda: topo._inter_slot(next(slots) + 1000), max(5, steps // 10)) if topo.inter_shell_links else 0.0
    per_1s = step + rechoose / topo.inter_shell_interval_s
    return {"preset": name, "satellites": topo.n_sats, "inter_shell_links_per_sat": topo.inter_shell_links,
            "inter_shell_pairs": int(len(topo.inter_shell_at(0.0))), "raw_sgp4_ms": raw, "step_ms": step,
            "rechoose_ms": rechoose, "step_at_1s_amortised_ms": per_1s, "step_vs_sgp4": per_1s / raw}


def bench_sim(seconds: float, tasks: int) -> dict:
    from mesh.sim import scenario
    out = {}
    for label, inter in (("inter_shell", None), ("islands", 0)):
        original = scenario.build_topology

        def build(*a, _inter=inter, **kw):
            topo, name = original(*a, **kw)
            if _inter is not None:
                topo.inter_shell_links, topo._adjacent = 0, []
                topo._inter.clear()
            return topo, name
        scenario.build_topology = build
        try:
            rep = scenario.run_scenario(preset="starlink-gen1", seconds=seconds, tasks=tasks, seed=1,
                                        timer=time.perf_counter)
        finally:
            scenario.build_topology = original
        conv = rep["convergence"][0]
        out[label] = {"wall_s": rep["wall_s"], "events": rep["events"],
                      "sim_s_per_wall_s": seconds / rep["wall_s"], "events_per_s": rep["events"] / rep["wall_s"],
                      "state_reached": f"{conv['reached']}/{conv['of']}",
                      "tasks": f"{rep['tasks']['delivered']}/{rep['tasks']['submitted']}"}
    out["speed_vs_islands"] = out["inter_shell"]["sim_s_per_wall_s"] / out["islands"]["sim_s_per_wall_s"]
    return out


def bench_handover(hours: float) -> dict:
    from mesh.ground import BUILTIN_STATIONS, StationSet
    from mesh.handover import HANDOVER_POLICIES, Handover
    c = World.from_config(preset("starlink-s1")).topology.constellation
    st = StationSet(list(BUILTIN_STATIONS.values()))
    slots = int(round(hours * 3600 / 15.0))
    out: dict = {"stations": len(st), "hours": hours}

    def changes(a: np.ndarray) -> int:
        return int(((a[1:] != a[:-1]) & (a[1:] >= 0) & (a[:-1] >= 0)).sum())

    Handover(c, st, policy="highest_elevation").slot(10**6)     # warm the propagator before timing
    for policy in HANDOVER_POLICIES[1:]:
        h = Handover(c, st, policy=policy, interval_s=15.0)
        t0 = time.perf_counter()
        chosen = np.array([h.slot(n) for n in range(slots)])
        cost = (time.perf_counter() - t0) / slots * 1e3
        row = {"per_station_hour": changes(chosen) / len(st) / hours, "ms_per_slot": cost}
        if policy != "highest_elevation":
            prev, free = None, []
            for n in range(-40, slots):                   # the same warm-up, then never restarted
                prev = h._choose(n, prev)
                if n >= 0:
                    free.append(prev)
            row["uninterrupted_per_station_hour"] = changes(np.array(free)) / len(st) / hours
            row["restart_excess"] = row["per_station_hour"] / row["uninterrupted_per_station_hour"]
        out[policy] = row
    base = out["highest_elevation"]["per_station_hour"]
    for policy in HANDOVER_POLICIES[1:]:
        out[policy]["vs_highest_elevation"] = out[policy]["per_station_hour"] / base
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="hypatia,topology,sim,handover")
    ap.add_argument("--handover-hours", type=float, default=1.0)
    ap.add_argument("--hypatia-step", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sim-seconds", type=float, default=60.0)
    ap.add_argument("--sim-tasks", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    res: dict = {}
    if "hypatia" in parts:
        res["hypatia"] = h = bench_hypatia(args.hypatia_step)
        if not args.json:
            print(f"hypatia: {h['steps']} steps of {h['step_s']} s: |ΔRTT| max {h['max_abs_diff_ms']:.4f} ms, "
                  f"median {h['median_abs_diff_ms']:.4f} ms (RTT {h['rtt_min_ms']:.1f}–{h['rtt_max_ms']:.1f} ms); "
                  f"step {h['project_step_ms']:.1f} ms vs reference {h['reference_step_ms']:.1f} ms "
                  f"({h['project_vs_reference']:.3f}×)")
    if "topology" in parts:
        res["topology"] = [bench_topology(n, args.steps) for n in ("starlink-s1", "starlink-gen1", "kuiper")]
        if not args.json:
            for r in res["topology"]:
                print(f"topology {r['preset']}: sgp4 {r['raw_sgp4_ms']:.2f} ms; step {r['step_ms']:.2f} ms; "
                      f"inter-shell re-choice {r['rechoose_ms']:.1f} ms per slot; at 1 s steps "
                      f"{r['step_at_1s_amortised_ms']:.2f} ms ({r['step_vs_sgp4']:.1f}× sgp4)")
    if "sim" in parts:
        res["sim"] = s = bench_sim(args.sim_seconds, args.sim_tasks)
        if not args.json:
            for k in ("inter_shell", "islands"):
                r = s[k]
                print(f"sim gen1 {k}: {r['wall_s']:.1f} s wall, {r['sim_s_per_wall_s']:.3f} sim-s/s, "
                      f"{r['events_per_s']:.0f} events/s, state {r['state_reached']}, tasks {r['tasks']}")
            print(f"sim gen1: inter-shell speed {s['speed_vs_islands']:.2f}× the islands baseline")
    if "handover" in parts:
        res["handover"] = ho = bench_handover(args.handover_hours)
        if not args.json:
            for policy in ("highest_elevation", "longest_visibility", "sticky"):
                r = ho[policy]
                extra = (f"; without chain restarts {r['uninterrupted_per_station_hour']:.1f} "
                         f"(restarts ×{r['restart_excess']:.2f})" if "restart_excess" in r else "")
                print(f"handover {policy}: {r['per_station_hour']:.1f} per station-hour "
                      f"({r['vs_highest_elevation']:.2f}× highest_elevation){extra}; "
                      f"{r['ms_per_slot']:.1f} ms per slot for {ho['stations']} stations")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
