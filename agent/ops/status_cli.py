"""``orbitmesh status``: what every node of the running fleet says of itself, as a table or a summary.

A fleet of 24 reads well as one line per node; one of 1,584 (Starlink's first
shell) does not, so above ``SUMMARY_ABOVE`` nodes the command prints totals,
the nodes that do not answer and the planes with a link down, and ``--all``
brings the table back.  Nodes are asked ``FETCH_AT_ONCE`` at a time: 1,584
concurrent connections would exhaust file descriptors and starve the agents
that share the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from typing import Any

SUMMARY_ABOVE = 48          # nodes; more than this and the default is the summary
FETCH_AT_ONCE = 64          # concurrent requests to the fleet's APIs
NAMES_SHOWN = 12            # nodes or planes named in one line of the summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="nodes, links and latencies of the running fleet "
                                      f"(a summary above {SUMMARY_ABOVE} nodes)")
    p.add_argument("--json", action="store_true", help="every node's own report, as JSON")
    p.add_argument("--all", action="store_true", help="one line per node, however large the fleet")
    p.add_argument("--nodes", nargs="+", metavar="NODE", help="only these nodes (one line each)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    import trio

    from agent.serve.auth import client_token
    from agent.client import ApiError, Client
    from agent.ops.fleet import FleetError, load_peers
    try:
        peers = load_peers(args.dir)
        token = client_token(args.dir)
    except (FleetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    names = list(peers.names())
    if args.nodes:
        unknown = [n for n in args.nodes if n not in peers]
        if unknown:
            print(f"error: not in the fleet: {', '.join(unknown)}", file=sys.stderr)
            return 1
        names = list(dict.fromkeys(args.nodes))
    results: dict[str, Any] = {}
    limit = trio.CapacityLimiter(FETCH_AT_ONCE)

    async def one(name: str) -> None:
        async with limit, Client(peers[name].api, timeout=3.0, token=token) as c:
            try:
                results[name] = await c.node()
            except ApiError as exc:
                results[name] = {"error": exc.message}

    async def main() -> None:
        async with trio.open_nursery() as n:
            for name in names:
                n.start_soon(one, name)

    trio.run(main)
    if args.json:
        print(json.dumps({n: results[n] for n in names}, indent=1))
        return 0
    table = args.all or args.nodes or len(names) <= SUMMARY_ABOVE
    print(format_table(names, results) if table else format_summary(names, results))
    return 1 if any("error" in results[n] for n in names) else 0


def format_table(names: list[str], results: dict[str, Any]) -> str:
    lines = [f"{'node':<8} {'plane/slot':<10} {'lat':>7} {'lon':>8} {'tasks':<18} links (latency ms, * = stream up)"]
    for name in names:
        r = results[name]
        if "error" in r:
            lines.append(f"{name:<8} DOWN  {r['error']}")
            continue
        pos = r["position"]
        links = "  ".join(f"{n['node']}{'*' if n['link_up'] else ' '}{n['latency_ms']:.1f}" for n in r["neighbours"])
        tasks = ",".join(f"{k}={v}" for k, v in sorted(r["tasks"].items())) or "-"
        lines.append(f"{name:<8} {_where(r):<10} {pos['lat_deg']:>7.2f} {pos['lon_deg']:>8.2f} {tasks:<18} {links}")
    down = sum("error" in results[n] for n in names)
    lines.append(f"{len(names) - down}/{len(names)} nodes answering")
    return "\n".join(lines + _clock_lines(results))


def format_summary(names: list[str], results: dict[str, Any]) -> str:
    """Totals for a large fleet: who is down, which planes have a link down, tasks, latencies."""
    down = [n for n in names if "error" in results[n]]
    up = [results[n] for n in names if "error" not in results[n]]
    lines = [f"{len(names)} nodes: {len(up)} answering"
             + (f", {len(down)} DOWN: {_some(down)}" if down else "")]
    links = [(r, nb) for r in up for nb in r["neighbours"]]
    if links:
        streams = sum(nb["link_up"] for _, nb in links)
        lat = sorted(nb["latency_ms"] for _, nb in links)
        lines.append(f"laser and ground links, seen from both ends: {streams}/{len(links)} streams up; latency "
                     f"min {lat[0]:.1f}, median {statistics.median(lat):.1f}, max {lat[-1]:.1f} ms")
        troubled: dict[Any, list[str]] = defaultdict(list)
        for r, nb in links:
            if not nb["link_up"]:
                troubled[r["orbit"].get("plane", "ground")].append(f"{r['node']}–{nb['node']}")
        if troubled:
            planes = sorted(troubled, key=str)
            lines.append(f"planes with a link down: {len(planes)}: " + _some(
                [f"{p} ({', '.join(troubled[p][:3])}{', …' if len(troubled[p]) > 3 else ''})" for p in planes]))
    tasks: Counter[str] = Counter()
    for r in up:
        tasks.update(r.get("tasks", {}))
    if tasks:
        lines.append("tasks: " + ", ".join(f"{k}={v}" for k, v in sorted(tasks.items())))
    lines.append(f"(a summary above {SUMMARY_ABOVE} nodes: --all for a line per node, --nodes NAME… for some)")
    return "\n".join(lines + _clock_lines(results))


def _where(r: dict[str, Any]) -> str:
    orbit = r["orbit"]
    return "ground" if orbit.get("ground_station") else f"{orbit['plane']}/{orbit['slot']}"


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:NAMES_SHOWN])
    return shown + (f" and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else "")


def _clock_lines(results: dict[str, Any]) -> list[str]:
    clocks = {(r["clock"]["scale"], r["clock"]["paused"]) for r in results.values() if "clock" in r}
    if len(clocks) > 1:
        return [f"orbital clock: the nodes disagree ({sorted(clocks)}); a switch in flight, or a node that "
                f"missed one: it is re-sent every 10 s (orbitmesh time)"]
    if clocks:
        scale, paused = clocks.pop()
        return [f"orbital clock: {f'paused (at {scale:g}× when resumed)' if paused else f'{scale:g}×'} "
                f"(orbitmesh time)"]
    return []
