"""``orbitmesh chaos``: break links on command, or on a timeline.

Every command talks to one node's API (``--node``, default sat-0); the node
floods the fault over the mesh to the links it names, wherever they are.

A scenario is a TOML timeline::

    seed = 7                     # random choices below are drawn from it
    [[events]]
    at = "2s"                    # offset from the start of the run
    kind = "cut"                 # any fault kind, or action = "clear"
    a = "sat-1"
    b = "sat-2"
    for = "10s"                  # optional duration
    [[events]]
    at = "5s"
    kind = "loss"
    link = "random"              # a link drawn with the seed (instead of a/b)
    loss = "10%"

The whole file is checked against the fleet's topology before anything is
applied, so a bad event halfway down never leaves half a scenario behind.
Same file, same seed: same faults at the same offsets.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.chaos import FaultError, Topo, _seconds, normalise


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Event:
    at: float
    action: str                # "apply" | "clear"
    spec: dict[str, Any]


def fleet_topo(directory: Path) -> Topo:
    """The chaos view of a local fleet, from its config and peers files."""
    from agent.peers import Peers
    from mesh.config import parse_config
    from mesh.orbit import Constellation, iso_to_jd
    from mesh.topology import Topology

    cfg = parse_config((directory / "config.toml").read_text())
    peers = Peers.load(directory / "peers.json")
    constellation = Constellation(list(cfg.shells), iso_to_jd(cfg.epoch))
    topo = Topology(constellation)
    names = {e.index: e.name for e in peers.by_name.values()}
    links = frozenset(frozenset((names[int(a)], names[int(b)])) for a, b in topo.candidates.tolist()
                      if int(a) in names and int(b) in names)
    planes = {n: (constellation.shell_of[i], constellation.plane_of[i]) for i, n in names.items() if i < len(constellation)}
    return Topo(frozenset(names.values()), links, planes)


def parse_scenario(text: str, topo: Topo) -> list[Event]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}") from None
    unknown = set(doc) - {"seed", "events", "name", "description"}
    if unknown:
        raise ScenarioError(f"unknown top-level keys {sorted(unknown)}")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError("seed must be an integer")
    rng = random.Random(seed)
    links = sorted(tuple(sorted(link)) for link in topo.links)
    events = doc.get("events")
    if not isinstance(events, list) or not events:
        raise ScenarioError("a scenario needs at least one [[events]] entry")
    out = []
    for i, raw in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: expected a table")
        raw = dict(raw)
        try:
            at = _seconds(raw.pop("at", None), f"{where}.at")
        except FaultError as exc:
            raise ScenarioError(str(exc)) from None
        action = raw.pop("action", "apply")
        if action == "clear":
            if raw:
                raise ScenarioError(f"{where}: a clear takes no other fields, got {sorted(raw)}")
            out.append(Event(at, "clear", {}))
            continue
        if action != "apply":
            raise ScenarioError(f"{where}: action must be 'apply' or 'clear'")
        if "for" in raw:
            raw["duration_s"] = raw.pop("for")
        if raw.pop("link", None) == "random":
            raw["a"], raw["b"] = rng.choice(links)
        try:
            normalise(raw, topo)
        except FaultError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        out.append(Event(at, "apply", raw))
    return sorted(out, key=lambda e: e.at)


async def run_scenario(events: list[Event], url: str, echo=print) -> list[dict[str, Any]]:
    import trio

    from agent.client import Client
    applied = []
    start = trio.current_time()
    async with Client(url) as c:
        for ev in events:
            await trio.sleep_until(start + ev.at)
            if ev.action == "clear":
                res = await c.clear_faults()
                echo(f"  t+{ev.at:7.2f}s  clear ({len(res['cleared'])} faults)")
            else:
                res = await c.apply_fault(ev.spec)
                echo(f"  t+{ev.at:7.2f}s  {describe(res['fault'])}")
            applied.append({"at": ev.at, "action": ev.action, **res})
    return applied


def describe(f: dict[str, Any]) -> str:
    k = f["kind"]
    where = f"{f['a']}–{f['b']}" if "a" in f else (f"groups {f['groups']}" if k == "partition" else f"plane {f.get('plane')}")
    what = {"loss": lambda: f"{f.get('loss', 0) * 100:g}% ({f['model']})", "delay": lambda: f"+{f['delay'] * 1e3:g} ms",
            "jitter": lambda: f"{f['jitter'] * 1e3:g} ms {f['distribution']}",
            "bandwidth": lambda: f"{f['bandwidth'] / 1e6:g} Mbit/s"}.get(k, lambda: "")()
    dur = f" for {f['duration_s']:g}s" if f.get("duration_s") else ""
    return f"[{f['id']}] {k} {where} {what}{dur}".replace("  ", " ")


# -- command line -----------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="inject link faults (cut, loss, delay, partition, …) or run a scenario")
    p.add_argument("--node", default="sat-0", help="node whose API takes the command (default sat-0)")
    p.add_argument("--url", help="API URL instead of --node")
    cs = p.add_subparsers(dest="chaos_cmd", required=True)

    def link_cmd(name: str, help_: str, value: str | None = None, value_help: str = "") -> argparse.ArgumentParser:
        q = cs.add_parser(name, help=help_)
        q.add_argument("a")
        q.add_argument("b")
        if value:
            q.add_argument(value, help=value_help)
        q.add_argument("--for", dest="duration", help="revert after this long (e.g. 30s)")
        q.add_argument("--one-way", action="store_true", help="only the a→b direction")
        return q

    link_cmd("cut", "cut a laser link")
    q = link_cmd("loss", "drop a share of frames", "rate", "e.g. 10%")
    q.add_argument("--model", choices=["bernoulli", "gilbert"], default="bernoulli")
    q.add_argument("--p-good-to-bad", type=float)
    q.add_argument("--p-bad-to-good", type=float)
    link_cmd("delay", "add delay", "delay", "e.g. 20ms")
    q = link_cmd("jitter", "add jitter", "jitter", "e.g. 5ms")
    q.add_argument("--distribution", default="normal", choices=["uniform", "normal", "pareto"])
    link_cmd("bandwidth", "cap the bandwidth", "bandwidth", "e.g. 10M (bit/s)")
    for kind in ("duplicate", "reorder", "corrupt"):
        link_cmd(kind, f"{kind} a share of frames", "probability", "e.g. 1%")
    q = cs.add_parser("partition", help="split the fleet: each GROUP a comma-separated node list; the rest is one more group")
    q.add_argument("groups", nargs="+")
    q.add_argument("--for", dest="duration")
    q = cs.add_parser("plane", help="take every link of an orbital plane down")
    q.add_argument("plane", type=int)
    q.add_argument("--shell", type=int, default=0)
    q.add_argument("--for", dest="duration")
    cs.add_parser("list", help="faults in force")
    q = cs.add_parser("clear", help="remove one fault (by id) or all")
    q.add_argument("fault_id", nargs="?")
    q = cs.add_parser("run", help="run a scenario file (TOML timeline)")
    q.add_argument("scenario", type=Path)
    q.add_argument("--dry-run", action="store_true", help="check the file and print the timeline only")
    p.set_defaults(func=cmd_chaos)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    kind = args.chaos_cmd
    spec: dict[str, Any] = {"kind": kind}
    if kind == "partition":
        spec["groups"] = [[n.strip() for n in g.split(",") if n.strip()] for g in args.groups]
    elif kind == "plane":
        spec.update(plane=args.plane, shell=args.shell)
    else:
        spec.update(a=args.a, b=args.b)
        if args.one_way:
            spec["direction"] = "a->b"
        if kind == "loss":
            spec.update(model=args.model)
            if args.model == "bernoulli":
                spec["loss"] = args.rate
            else:
                spec.update(loss_bad=args.rate, p_good_to_bad=args.p_good_to_bad, p_bad_to_good=args.p_bad_to_good)
        elif kind in ("delay", "jitter", "bandwidth", "probability"):
            spec[kind] = getattr(args, kind)
        elif kind in ("duplicate", "reorder", "corrupt"):
            spec["probability"] = args.probability
        if kind == "jitter":
            spec["distribution"] = args.distribution
    if getattr(args, "duration", None):
        spec["duration_s"] = args.duration
    return spec


def cmd_chaos(args: argparse.Namespace) -> int:
    import trio

    from agent.client import ApiError, Client
    from agent.fleet import FleetError, load_peers
    try:
        url = args.url or load_peers(args.dir)[args.node].api
    except (FleetError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cmd = args.chaos_cmd
    try:
        if cmd == "run":
            try:
                events = parse_scenario(args.scenario.read_text(), fleet_topo(args.dir))
            except (OSError, ScenarioError) as exc:
                print(f"error: {args.scenario}: {exc}", file=sys.stderr)
                return 2
            print(f"scenario {args.scenario}: {len(events)} events over {events[-1].at:.1f} s")
            if args.dry_run:
                for ev in events:
                    print(f"  t+{ev.at:7.2f}s  {ev.action} {json.dumps(ev.spec) if ev.spec else ''}")
                return 0
            trio.run(run_scenario, events, url)
            return 0

        async def call() -> Any:
            async with Client(url) as c:
                if cmd == "list":
                    return await c.faults()
                if cmd == "clear":
                    return await c.clear_faults(args.fault_id)
                return await c.apply_fault(_spec(args))

        res = trio.run(call)
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if cmd == "list":
        faults = res["faults"]
        for f in faults:
            state = "active" if f["active"] else f"starts in {f['start'] - time.time():.1f}s"
            print(f"{describe(f)}  ({state}, {f['links_affected']} link directions)")
        print(f"{len(faults)} faults in force (as seen by {res['node']})")
    elif cmd == "clear":
        print(f"cleared {len(res['cleared'])} faults")
    else:
        print(("applied " if res["created"] else "already in force: ") + describe(res["fault"]))
    return 0
