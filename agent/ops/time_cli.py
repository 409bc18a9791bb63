"""``orbitmesh time``: show, pause, resume or speed up the fleet's orbital clock.

The command talks to one node's API (``--node``, default sat-0); that node
issues the switch and floods it, so every satellite changes pace at the same
wall instant (about a second later).  See docs/time.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _when(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 10)} UTC"


def _pace(scale: float, paused: bool) -> str:
    return f"paused (at {scale:g}× when resumed)" if paused else f"running at {scale:g}×"


def format_clock(res: dict[str, Any]) -> str:
    lines = [f"fleet clock at {res['node']}: {_pace(res['scale'], res['paused'])}, orbital t = {res['orbit_t']:.3f} s"
             + (f"  (set by {res['origin']})" if res.get("origin") and res["origin"] != "config" else
                "  (the config's clock)")]
    pending = res.get("pending")
    if pending:
        lines.append(f"  switching to {_pace(pending['scale'], pending['paused'])} at {_when(pending['at_wall'])} "
                     f"(in {pending['at_wall'] - res['wall']:.1f} s), orbital t then {pending['orbit_t_at']:.3f} s")
    if "changed" in res and not res["changed"]:
        lines.append("  no change: the clock already runs so")
    return "\n".join(lines)


def cmd_time(args: argparse.Namespace) -> int:
    import trio

    from agent.client import ApiError, Client
    from agent.ops.fleet import FleetError, load_peers
    try:
        url = args.url or load_peers(args.dir)[args.node].api
    except (FleetError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def call() -> dict[str, Any]:
        async with Client(url) as c:
            if args.speed is None and not args.pause and not args.resume:
                return await c.clock()
            return await c.set_clock(speed=args.speed, pause=args.pause, resume=args.resume)

    try:
        res = trio.run(call)
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=1) if args.json else format_clock(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("time", help="show, pause, resume or speed up the whole fleet's orbital clock")
    p.add_argument("--node", default="sat-0", help="node whose API takes the command (default sat-0)")
    p.add_argument("--url", help="API URL instead of --node")
    p.add_argument("--speed", type=float, help="orbital seconds per wall second, in (0, 1000]")
    pr = p.add_mutually_exclusive_group()
    pr.add_argument("--pause", action="store_true", help="freeze orbital time (positions, links, sunlight)")
    pr.add_argument("--resume", action="store_true", help="let orbital time run again, from where it stopped")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_time)
