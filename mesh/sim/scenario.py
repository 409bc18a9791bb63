"""Standard scenarios and the figures they produce (what ``orbitmesh sim`` and the bench run).

A scenario is a constellation, a duration, a seed, link loss, and a fault
plan drawn from the seed: a state change whose spread is timed, kills
(detection), cuts on shortest paths (reroute), optional restarts (rejoin),
and a task load (delivery ratio).  :func:`run_scenario` returns a plain dict
of figures; :func:`format_report` renders it for people.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from mesh.delivery import DeliveryConfig, constellation_delivery, fleet_delivery
from mesh.membership import PRESETS as MEMBERSHIP_PRESETS
from mesh.membership import MembershipConfig
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.sim import faults as F
from mesh.sim.engine import Simulator
from mesh.sim.node import FloodNode
from mesh.topology import Topology

DEFAULT_EPOCH = "2026-01-01T00:00:00Z"
# Serf's convergence simulator: with the LAN defaults, 99.99% of a 30-node
# cluster hears a broadcast within 1.8 s.  A published model figure, quoted
# as a comparison target (it assumes a full mesh, we have 4 laser links each).
SERF_CONVERGENCE_30_NODES_S = 1.8


def build_topology(preset: str | None = "demo", *, planes: int | None = None, per_plane: int | None = None,
                   altitude_km: float = 550.0, inclination_deg: float = 53.0, phasing: int = 1) -> tuple[Topology, str]:
    """Satellites only (ground stations do not gossip here); returns (topology, label)."""
    if planes is not None or per_plane is not None:
        if not planes or not per_plane:
            raise ValueError("give both --planes and --per-plane")
        # In-plane neighbours closer than ~42° keep their line of sight above 80 km.
        los = planes >= 9 and per_plane >= 9
        shell = WalkerShell(planes, per_plane, altitude_km, inclination_deg, phasing % max(planes, 1),
                            name="custom", line_of_sight=los)
        c = Constellation([shell], iso_to_jd(DEFAULT_EPOCH))
        return Topology(c, max_range_km=None if not los else 5000.0), f"{planes}×{per_plane} at {altitude_km:.0f} km"
    name = preset or "demo"
    try:
        from mesh.presets import preset as get_preset
        cfg = get_preset(name)
        shells, epoch = list(cfg.all_shells) if hasattr(cfg, "all_shells") else list(cfg.shells), cfg.epoch
        max_range, grazing = cfg.links.max_range_km, cfg.links.grazing_km
        inter = (cfg.links.inter_shell_links, cfg.links.inter_shell_interval_s)
    except KeyError:
        if name != "starlink-s1":
            raise
        # Fallback while the preset is elsewhere: Starlink Gen1 shell 1 as filed.
        shells = [WalkerShell(72, 22, 550.0, 53.0, 1, name="s1")]
        epoch, max_range, grazing, inter = DEFAULT_EPOCH, 5000.0, 80.0, (0, 10.0)
    c = Constellation(shells, iso_to_jd(epoch))
    return Topology(c, max_range_km=max_range, grazing_km=grazing, inter_shell_links=inter[0],
                    inter_shell_interval_s=inter[1]), name


@dataclass
class ScenarioSpec:
    preset: str | None = "demo"
    planes: int | None = None
    per_plane: int | None = None
    seconds: float = 60.0
    seed: int = 1
    loss: float = 0.0
    kills: int = 1
    cuts: int = 1
    restarts: bool = False
    changes: int = 1                 # state changes timed to every node, one a second
    tasks: int = 0
    task_deadline_s: float = 30.0
    membership: str | MembershipConfig = "auto"
    timer: Any = None                # e.g. time.perf_counter, to report wall time (mesh reads no clock)
    delivery: DeliveryConfig | None = None
    warmup_s: float | None = None
    extra: list[Any] = field(default_factory=list)


def _membership(spec: ScenarioSpec, n: int) -> MembershipConfig:
    m = spec.membership
    if isinstance(m, MembershipConfig):
        return m
    if m == "auto":
        m = "fleet" if n <= 100 else "constellation"
    return MEMBERSHIP_PRESETS[m]()


def plan(spec: ScenarioSpec, sim: Simulator, warmup: float) -> list[Any]:
    """The fault schedule, drawn from the seed: far-apart victims, cuts between far nodes."""
    rng = random.Random(f"{spec.seed}:plan")
    n = sim.n
    items: list[Any] = []
    if spec.loss:
        items.append(F.Loss(0.0, spec.loss))
    for k in range(spec.changes):
        items.append(F.StateChange(warmup + 1.0 + k, rng.randrange(n), {"load": round(0.05 * (k % 20), 2),
                                                                        "queue": k, "models": ["digits"]}))
    t0 = warmup + spec.changes
    victims: list[int] = []
    for k in range(spec.kills):
        v = rng.randrange(n)
        while v in victims:
            v = rng.randrange(n)
        victims.append(v)
        tk = t0 + 2.0 + 4.0 * k
        items.append(F.Kill(tk, v))
        if spec.restarts:
            items.append(F.Restart(tk + 10.0, v))
    for k in range(spec.cuts):
        src = rng.randrange(n)
        dst = (src + n // 2 + rng.randrange(max(1, n // 4))) % n
        while src in victims or dst in victims:
            src = rng.randrange(n)
            dst = (src + n // 2) % n
        items.append(F.CutOnPath(t0 + 4.0 + 4.0 * k, src, dst))
    if spec.tasks:
        start = warmup + 2.0
        stop = max(start, spec.seconds - spec.task_deadline_s - 2.0)
        items.append(F.Tasks(start, spec.tasks, stop - start, deadline_s=spec.task_deadline_s,
                             entries=tuple(i for i in range(n) if i not in victims)))
    return items + list(spec.extra)


def _pcts(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(math.ceil(p * len(xs))) - 1)]  # noqa: E731
    return {"p50": q(0.5), "p99": q(0.99), "p9999": q(0.9999), "max": xs[-1]}


def collect(sim: Simulator) -> dict[str, Any]:
    """Figures of a finished run."""
    live = [i for i in sim.live() if i not in sim.ever_killed]
    out: dict[str, Any] = {"nodes": sim.n, "seconds": sim.now, "events": sim.events_processed,
                           "wall_s": round(sim.wall_s, 2)}
    conv = []
    for (node, version), rec in sim.convergence.items():
        obs = [o for o in live if o != node]
        times = [rec["seen"][o] - rec["t"] for o in obs if o in rec["seen"]]
        conv.append({"node": node, "version": version, "t": rec["t"], "reached": len(times), "of": len(obs),
                     **_pcts(times)})
    out["convergence"] = conv
    deaths = []
    for node, k in sim.kills.items():
        obs = [o for o in live if o != node]
        seen = [k["dead_seen"][o] - k["t"] for o in obs if o in k["dead_seen"]]
        deaths.append({"node": node, "t": k["t"],
                       "first_suspect_s": None if k["first_suspect"] is None else k["first_suspect"] - k["t"],
                       "first_dead_s": None if k["first_dead"] is None else k["first_dead"] - k["t"],
                       "all_dead_s": max(seen) if len(seen) == len(obs) and seen else None,
                       "reached": len(seen), "of": len(obs)})
    out["deaths"] = deaths
    rejoins = []
    for node, r in sim.restarts.items():
        obs = [o for o in live if o != node]
        seen = [r["alive_seen"][o] - r["t"] for o in obs if o in r["alive_seen"]]
        m = sim.nodes[node].m if sim.nodes[node] is not None and hasattr(sim.nodes[node], "m") else None
        rejoins.append({"node": node, "t": r["t"], "incarnation": None if m is None else m.incarnation,
                        "all_alive_s": max(seen) if len(seen) == len(obs) and seen else None,
                        "reached": len(seen), "of": len(obs)})
    out["rejoins"] = rejoins
    rr = []
    for rec in sim.reroutes:
        a, b = rec["link"]
        c = sim.cuts.get((min(a, b), max(a, b)), {"down_seen": {}})
        ends = [c["down_seen"][x] - rec["t"] for x in (a, b) if x in c["down_seen"]]
        everyone = [c["down_seen"][o] - rec["t"] for o in live if o in c["down_seen"]]
        rr.append({"link": [a, b], "src": rec["src"], "dst": rec["dst"], "path_hops": len(rec["path"]) - 1,
                   "detected_s": min(ends) if ends else None, "rerouted_s": rec["rerouted"],
                   "known_everywhere_s": max(everyone) if len(everyone) == len(live) else None,
                   "new_path_hops": rec.get("new_path_hops")})
    out["reroutes"] = rr
    tasks = list(sim.tasks.values())
    states = Counter(t["state"] for t in tasks)
    lat = [t["latency"] for t in tasks if t["state"] == "delivered"]
    reasons = Counter(t["reason"].split(";")[0] for t in tasks if t["state"] == "failed")
    out["tasks"] = {"submitted": len(tasks), "delivered": states.get("delivered", 0),
                    "failed": states.get("failed", 0), "in_flight": states.get("in_flight", 0),
                    "ratio": (states.get("delivered", 0) / len(tasks)) if tasks else None,
                    "latency_p50_s": statistics.median(lat) if lat else None,
                    "latency_max_s": max(lat) if lat else None,
                    "executed_twice": sum(1 for t in tasks if t["executions"] > 1),
                    "held": sum(1 for t in tasks if t["held"]),
                    "failure_reasons": dict(reasons)}
    window = max(sim.now - sim.window_start, 1e-9)
    per = {k: v / sim.n / window for k, v in sim.bytes.items()}
    per["membership_total"] = per["probe"] + per["gossip"] + per["sync"]
    out["bytes_per_node_s"] = {k: round(v, 1) for k, v in per.items()}
    out["false_positives"] = {"dead_declarations": len(sim.false_dead),
                              "nodes_wrongly_dead": len({x[2] for x in sim.false_dead}),
                              "suspicions": len(sim.false_suspects),
                              "link_down_reports_false": sim.false_link_down,
                              "partition_deaths": sim.partition_dead}
    out["dropped"] = dict(sim.net.dropped)
    return out


def run_scenario(spec: ScenarioSpec | None = None, **kw: Any) -> dict[str, Any]:
    """Build, run and measure one scenario; keyword arguments override ``spec`` fields."""
    spec = replace(spec or ScenarioSpec(), **kw)
    t_build = spec.timer() if spec.timer else 0.0
    topo, label = build_topology(spec.preset, planes=spec.planes, per_plane=spec.per_plane)
    n = topo.n_sats
    mcfg = _membership(spec, n)
    dcfg = spec.delivery or (fleet_delivery() if n <= 100 else constellation_delivery())
    sim = Simulator(topo, seed=spec.seed, membership=mcfg, delivery=dcfg, timer=spec.timer)
    warmup = spec.warmup_s if spec.warmup_s is not None else mcfg.start_grace_s + 3.0
    need = warmup + spec.changes + 4.0 * max(spec.kills, spec.cuts, 1) + (14.0 if spec.restarts else 7.0)
    if spec.tasks:
        need = max(need, warmup + 4.0 + spec.task_deadline_s)
    if spec.seconds < need:
        why = f"; tasks need their {spec.task_deadline_s:g} s deadline to end inside the run" if spec.tasks else ""
        raise ValueError(f"{spec.seconds:g} simulated seconds are too few for this plan (warm-up {warmup:g} s, "
                         f"then a kill or cut every 4 s{why}): give at least {math.ceil(need):g}")
    if not 0.0 <= spec.loss <= 1.0:
        raise ValueError(f"loss must be within 0–1, not {spec.loss}")
    sim.start_all()
    sim.schedule(plan(spec, sim, warmup))
    sim.call_at(warmup, sim.reset_counters)
    sim.run(spec.seconds)
    rep = collect(sim)
    rep["label"] = label
    rep["seed"] = spec.seed
    rep["loss"] = spec.loss
    rep["membership_config"] = {k: getattr(mcfg, k) for k in ("probe_interval_s", "suspicion_mult",
                                                            "suspicion_max_mult", "link_fail_rounds",
                                                            "gossip_interval_s", "sync_interval_s")}
    rep["diameter_ms"] = round(sim.net.diameter_s(sim.now, sample=64) * 1e3, 2)
    rep["hop_diameter"] = sim.net.hop_diameter(sim.now, sample=64)
    rep["total_wall_s"] = round(spec.timer() - t_build, 2) if spec.timer else None
    return rep


def run_flood_baseline(preset: str | None = "demo", *, planes: int | None = None, per_plane: int | None = None,
                       seed: int = 1, loss: float = 0.0, changes: int = 5, spacing_s: float = 2.0) -> dict[str, Any]:
    """Naive flooding of the same state changes over the same links: the bytes/latency baseline."""
    topo, label = build_topology(preset, planes=planes, per_plane=per_plane)
    sim = Simulator(topo, seed=seed, node_factory=FloodNode, loss=loss)
    sim.start_all()
    rng = random.Random(f"{seed}:flood")
    items = [F.StateChange(1.0 + spacing_s * k, rng.randrange(sim.n), {"load": 0.75, "queue": 3,
                                                                      "models": ["digits"]})
             for k in range(changes)]
    sim.schedule(items)
    sim.run(1.0 + spacing_s * changes + 5.0)
    rep = collect(sim)
    total = sum(sim.bytes.values())
    rep["bytes_per_update_per_node"] = total / max(changes, 1) / sim.n
    rep["label"] = label
    return rep


def format_report(rep: dict[str, Any]) -> str:
    """A human summary of :func:`collect`'s figures."""
    wall = f" in {rep['wall_s']:.1f} s wall" if rep.get("total_wall_s") is not None else ""
    lines = [f"{rep.get('label', '')}: {rep['nodes']} nodes, {rep['seconds']:.0f} s simulated, "
             f"loss {rep.get('loss', 0) * 100:.0f}%, seed {rep.get('seed')}, {rep['events']:,} events{wall}"]
    if "diameter_ms" in rep:
        lines.append(f"  physics: network diameter {rep['diameter_ms']:.1f} ms, {rep['hop_diameter']} hops "
                     f"(the lower bound for any convergence)")
    for c in rep["convergence"]:
        lines.append(f"  state change at node {c['node']}: reached {c['reached']}/{c['of']} nodes; "
                     f"p50 {_ms(c['p50'])}, p99 {_ms(c['p99'])}, all {_ms(c['max'])}")
    for d in rep["deaths"]:
        lines.append(f"  kill node {d['node']}: first suspicion {_s(d['first_suspect_s'])}, declared dead "
                     f"{_s(d['first_dead_s'])}, known dead everywhere {_s(d['all_dead_s'])} "
                     f"({d['reached']}/{d['of']})")
    for r in rep["rejoins"]:
        lines.append(f"  restart node {r['node']}: incarnation {r['incarnation']}, alive everywhere again "
                     f"{_s(r['all_alive_s'])} ({r['reached']}/{r['of']})")
    for r in rep["reroutes"]:
        lines.append(f"  cut link {r['link'][0]}–{r['link'][1]} on a {r['path_hops']}-hop path: detected "
                     f"{_s(r['detected_s'])}, traffic rerouted {_s(r['rerouted_s'])}, known everywhere "
                     f"{_s(r['known_everywhere_s'])}")
    t = rep["tasks"]
    if t["submitted"]:
        lines.append(f"  tasks: {t['delivered']}/{t['submitted']} delivered ({t['ratio'] * 100:.2f}%), "
                     f"{t['failed']} failed, {t['in_flight']} in flight; median {_s(t['latency_p50_s'])}; "
                     f"executed twice {t['executed_twice']}")
        for why, k in t["failure_reasons"].items():
            lines.append(f"    {k} × {why}")
    fp = rep["false_positives"]
    lines.append(f"  false positives: {fp['nodes_wrongly_dead']} live nodes declared dead "
                 f"({fp['dead_declarations']} declarations), {fp['suspicions']} refuted suspicions, "
                 f"{fp['link_down_reports_false']} links wrongly reported down")
    b = rep["bytes_per_node_s"]
    lines.append(f"  bytes/node/s: membership {b['membership_total']:.0f} (probes {b['probe']:.0f} incl. "
                 f"piggyback {b['piggyback']:.0f}, gossip {b['gossip']:.0f}, sync {b['sync']:.0f}); "
                 f"tasks {b['task']:.0f}")
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.0f} ms"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"
