"""``orbitmesh sim``: a whole constellation of production nodes in virtual time, seeded and traced.

    orbitmesh sim --seconds 60 --tasks 20 --restart --trace run.jsonl
    orbitmesh sim --replay run.jsonl                  # rerun its seed and flags; check the trace is the same
    orbitmesh sim --engine des --preset starlink-gen1 --seconds 60 --tasks 100

Engine ``nodes`` (the default for presets up to AUTO_NODES_MAX nodes) runs the
daemon's ``agent.runtime.node.Node`` for every satellite on the in-memory twin host and
a virtual clock (``agent/ops/sim_nodes.py``): no second node implementation.  The
same ``--seed`` gives byte-identical output and trace.  Engine ``des`` is the
older discrete-event simulator (``mesh/sim``: its own SimNode over the pure
membership and delivery cores), kept for custom shells (``--planes``), other
membership presets and constellations the production engine cannot run fast
enough in one process (see docs/membership.md).  This module is the I/O
shell: it parses arguments and prints; wall-clock times go to stderr only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

AUTO_NODES_MAX = 100        # --engine auto: production nodes up to this size (measured: docs/benchmarks.md)


class SimError(Exception):
    """A user error: printed as ``error: …`` with exit status 2."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sim`` to an ``add_subparsers()`` object."""
    p = subparsers.add_parser("sim", help="simulate membership, gossip and delivery of a constellation in virtual time",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="constellation preset (default: demo); starlink-s1 is 72×22")
    src.add_argument("--planes", type=int, help="a custom Walker shell: number of planes (with --per-plane)")
    p.add_argument("--per-plane", type=int, help="satellites per plane of the custom shell")
    p.add_argument("--seconds", type=float, default=60.0, help="simulated seconds (default 60)")
    p.add_argument("--seed", type=int, default=1, help="seed of the whole run (default 1)")
    p.add_argument("--loss", type=float, default=0.0, help="Bernoulli loss on every link, 0–1 (e.g. 0.1)")
    p.add_argument("--kill", type=int, default=1, help="nodes killed, one every 4 s after warm-up (default 1)")
    p.add_argument("--restart", action="store_true", help="restart each killed node 10 s later")
    p.add_argument("--cut", type=int, default=1, help="links cut on shortest paths (default 1)")
    p.add_argument("--tasks", type=int, default=0, help="tasks sent between random live nodes")
    p.add_argument("--deadline", type=float, default=30.0, help="task deadline in seconds (default 30)")
    p.add_argument("--membership", choices=("auto", "fleet", "constellation", "small"), default="auto",
                   help="membership preset (default: fleet up to 100 nodes, else constellation)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--engine", choices=("auto", "nodes", "des"), default="auto",
                   help=f"nodes: the production Node per satellite; des: the older discrete-event simulator "
                        f"(default auto: nodes for presets up to {AUTO_NODES_MAX} nodes, des otherwise)")
    p.add_argument("--trace", metavar="FILE", help="write a JSON-lines event trace in virtual time (engine nodes)")
    p.add_argument("--trace-max-lines", type=int, default=None,
                   help="bound of the trace's event lines (default 1,000,000; then one 'truncated' line)")
    p.add_argument("--replay", metavar="FILE", help="rerun the seed and flags of a trace and check the new trace "
                                                   "equals it; prints the first divergence (exit 1)")
    p.set_defaults(func=cmd_sim)
    return p


def _check(args: argparse.Namespace) -> None:
    if (args.planes is None) != (args.per_plane is None):
        raise SimError("give both --planes and --per-plane")
    if args.planes is not None and not (1 <= args.planes <= 200 and 1 <= args.per_plane <= 200):
        raise SimError("--planes and --per-plane must be within 1–200")
    if not 0.0 <= args.loss <= 1.0:
        raise SimError(f"--loss must be within 0–1, not {args.loss}")
    if not 0 < args.seconds <= 24 * 3600:
        raise SimError("--seconds must be within (0, 86400]")
    if args.kill < 0 or args.cut < 0 or args.tasks < 0:
        raise SimError("--kill, --cut and --tasks must be ≥ 0")
    if args.deadline <= 0:
        raise SimError("--deadline must be > 0")


def _engine(args: argparse.Namespace) -> str:
    if args.engine != "auto":
        if args.engine == "nodes" and args.planes is not None:
            raise SimError("--engine nodes runs named presets (the daemon's config); --planes needs --engine des")
        if args.engine == "nodes" and args.membership not in ("auto", "fleet"):
            raise SimError("--engine nodes runs the daemon's membership (fleet); other presets need --engine des")
        return args.engine
    if args.planes is not None or args.membership not in ("auto", "fleet"):
        return "des"
    from agent.ops.fleet import FleetError, FleetSpec, fleet_config
    from mesh.world import World
    try:
        n = len(World.from_config(fleet_config(FleetSpec(preset=args.preset or "demo"))).names)
    except (FleetError, KeyError) as exc:
        raise SimError(str(exc.args[0]) if exc.args else str(exc)) from None
    return "nodes" if n <= AUTO_NODES_MAX else "des"


def _fixed_hash_seed() -> None:
    """Set iteration order of str sets depends on PYTHONHASHSEED: re-exec the CLI with it fixed.
    Only the CLI re-executes (``orbitmesh sim …`` / ``python -m agent sim …``); a caller in-process
    gets a note on stderr instead."""
    if os.environ.get("PYTHONHASHSEED") == "0":
        return
    if sys.argv[1:2] == ["sim"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    print("note: PYTHONHASHSEED is not 0 in this process: runs of one seed may differ in order", file=sys.stderr)


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        if args.replay:
            return _replay(Path(args.replay))
        _check(args)
        engine = _engine(args)
        if args.trace and engine != "nodes":
            raise SimError("--trace needs --engine nodes")
    except SimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if engine == "nodes":
        return _run_nodes(args)
    return _run_des(args)


def _spec(a: dict[str, Any]):
    from agent.ops.sim_nodes import SimSpec
    return SimSpec(preset=a["preset"], seconds=float(a["seconds"]), seed=int(a["seed"]), loss=float(a["loss"]),
                   kills=int(a["kill"]), restarts=bool(a["restart"]), cuts=int(a["cut"]), tasks=int(a["tasks"]),
                   deadline_s=float(a["deadline"]))


def _run_nodes(args: argparse.Namespace) -> int:
    from agent.ops.sim_nodes import SimRunError, check, run
    from agent.ops.sim_trace import DEFAULT_MAX_LINES, Trace
    spec = _spec({"preset": args.preset or "demo", "seconds": args.seconds, "seed": args.seed, "loss": args.loss,
                  "kill": args.kill, "restart": args.restart, "cut": args.cut, "tasks": args.tasks,
                  "deadline": args.deadline})
    max_lines = DEFAULT_MAX_LINES if args.trace_max_lines is None else args.trace_max_lines
    try:
        if max_lines < 1:
            raise SimError("--trace-max-lines must be ≥ 1")
        check(spec)
    except (SimError, SimRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _fixed_hash_seed()
    t0 = time.perf_counter()
    progress = _progress(spec.seconds)
    try:
        if args.trace:
            try:
                out = open(args.trace, "w", encoding="utf-8")
            except OSError as exc:
                raise SimError(f"cannot write {args.trace}: {exc.strerror or exc}") from None
            with out:
                rep = run(spec, Trace(out, spec.args(), max_lines), progress)
        else:
            rep = run(spec, progress=progress)
    except (SimError, SimRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    print(json.dumps(rep, sort_keys=True) if args.json else format_nodes_report(rep))
    print(f"{rep['seconds']:g} simulated s in {wall:.1f} wall s ({rep['seconds'] / wall:.2f}× real time)",
          file=sys.stderr)
    return 0


def _progress(seconds: float):
    """A line on stderr every 15 wall seconds of a run (wall times go there only)."""
    from agent.ops.sim_nodes import Progress
    t0 = time.perf_counter()

    def say(simulated: float) -> None:
        print(f"… {simulated:.0f} of {seconds:g} simulated s after {time.perf_counter() - t0:.0f} wall s",
              file=sys.stderr, flush=True)
    return Progress(say)


def _replay(path: Path) -> int:
    from agent.ops.sim_nodes import SimRunError, run
    from agent.ops.sim_trace import Trace, TraceError, first_divergence, read_header
    try:
        head = read_header(path)
        a = head["args"]
        if a.get("engine") != "nodes":
            raise SimError(f"{path}: a trace of engine {a.get('engine')!r}, not 'nodes'")
        try:
            spec = _spec(a)
        except (KeyError, TypeError, ValueError) as exc:
            raise SimError(f"{path}: its header's args are incomplete or wrong ({exc})") from None
        _fixed_hash_seed()
        trace = Trace(None, spec.args(), int(head.get("max_lines") or 1))
        run(spec, trace, _progress(spec.seconds))
        diff = first_divergence(path, trace.lines)
    except (SimError, SimRunError, TraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if diff is None:
        print(f"replay of {path}: identical ({len(trace.lines):,} lines, seed {spec.seed})")
        return 0
    print(f"replay of {path}: diverges at line {diff['line']}\n  recorded: {diff['recorded']}\n"
          f"  replayed: {diff['replayed']}")
    return 1


def _run_des(args: argparse.Namespace) -> int:
    from mesh.sim.scenario import ScenarioSpec, format_report, run_scenario
    try:
        spec = ScenarioSpec(preset=None if args.planes else (args.preset or "demo"), planes=args.planes,
                            per_plane=args.per_plane, seconds=args.seconds, seed=args.seed, loss=args.loss,
                            kills=args.kill, cuts=args.cut, restarts=args.restart, tasks=args.tasks,
                            task_deadline_s=args.deadline, membership=args.membership, timer=time.perf_counter)
        rep = run_scenario(spec)
    except SimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, default=str))
    else:
        print(format_report(rep))
    return 0


def format_nodes_report(rep: dict[str, Any]) -> str:
    """A human summary of ``agent.ops.sim_nodes`` figures (no wall-clock numbers: it is deterministic)."""
    s = lambda x: "—" if x is None else f"{x:.2f} s"  # noqa: E731
    lines = [f"{rep['label']}: {rep['nodes']} production nodes, {rep['seconds']:g} s simulated, "
             f"loss {rep['loss'] * 100:g}%, seed {rep['seed']}"]
    for d in rep["deaths"]:
        lines.append(f"  kill {d['node']} at {d['t']:.1f} s: first suspicion {s(d['first_suspect_s'])}, declared dead "
                     f"{s(d['first_dead_s'])}, known dead everywhere {s(d['all_dead_s'])} ({d['reached']}/{d['of']})")
    for r in rep["rejoins"]:
        lines.append(f"  restart {r['node']} from its journal: incarnation {r['incarnation']}, alive everywhere "
                     f"again {s(r['all_alive_s'])} ({r['reached']}/{r['of']})")
    for c in rep["cuts"]:
        if c["link"] is None:
            lines.append(f"  cut: no route {c['src']}→{c['dst']} to cut")
            continue
        lines.append(f"  cut {c['link'][0]}–{c['link'][1]} (first hop {c['src']}→{c['dst']}): known everywhere "
                     f"{s(c['known_everywhere_s'])}, route now avoids it: {'yes' if c['route_avoids_cut'] else 'NO'}")
    t = rep["tasks"]
    if t["submitted"]:
        lines.append(f"  tasks: {t['succeeded']}/{t['submitted']} succeeded ({t['ratio'] * 100:.2f}%), {t['failed']} "
                     f"failed, {t['in_flight']} in flight; median {s(t['latency_p50_s'])}, max "
                     f"{s(t['latency_max_s'])}; {t['executions']} executions")
        for why, k in t["failure_reasons"].items():
            lines.append(f"    {k} × {why}")
    fp = rep["false_positives"]
    lines.append(f"  false positives: {fp['nodes_wrongly_dead']} live nodes declared dead ({fp['dead_declarations']} "
                 f"declarations), {fp['suspicions']} suspicions of live nodes, {fp['link_down_reports_false']} links "
                 f"wrongly reported down")
    f = rep["frames"]
    dropped = {k[len("dropped_"):]: v for k, v in f.items() if k.startswith("dropped_") and v}
    lines.append(f"  frames: {f['frames_sent']:,} sent, {f['frames_received']:,} received, dropped "
                 f"{', '.join(f'{v:,} {k}' for k, v in dropped.items()) or 'none'}; bytes/node/s "
                 f"{rep['bytes_per_node_s']['all']:.0f} (control {rep['bytes_per_node_s']['control']:.0f})")
    return "\n".join(lines)
