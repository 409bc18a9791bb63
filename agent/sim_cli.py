"""``orbitmesh sim``: membership, gossip, routing and delivery of a whole constellation in virtual time.

    orbitmesh sim --preset starlink-s1 --seconds 120 --seed 1 --loss 0.1 --kill 1 --cut 1 --tasks 200
    orbitmesh sim --planes 12 --per-plane 12 --seconds 60 --json

Runs ``mesh.sim`` (the same membership, gossip, routing and delivery code the
agents run, one instance per satellite) over the constellation's laser mesh
with the link model and a fault plan drawn from the seed, then prints
convergence, detection, reroute and delivery figures.  Same seed, same
figures.  This module is the I/O shell: it parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


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


def cmd_sim(args: argparse.Namespace) -> int:
    from mesh.sim.scenario import ScenarioSpec, format_report, run_scenario
    try:
        _check(args)
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
