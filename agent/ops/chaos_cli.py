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
    link = "random"              # a link drawn with the seed (instead of a/b); "all": every link
    loss = "10%"
    [[events]]
    at = "8s"
    action = "kill"              # kill | pause | resume | restart: the node's process
    node = "sat-4"               # or "random"

The whole file is checked against the fleet's topology before anything is
applied, so a bad event halfway down never leaves half a scenario behind.
Same file, same seed: same faults at the same offsets.

Node faults (``kill``, ``pause``, ``resume``, ``restart``) act on the node's
process, not on its links: on a compose constellation through the Docker
engine (``--compose PROJECT``, or ``$COMPOSE_PROJECT_NAME`` where ``--dir``
holds no fleet), otherwise on the local fleet in ``--dir`` (signals to the
pids in its ``fleet.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ops.history import NEMESIS
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
    from agent.links.peers import Peers
    from mesh.config import parse_config
    from mesh.world import World

    cfg = parse_config((directory / "config.toml").read_text())
    peers = Peers.load(directory / "peers.json")
    world = World.from_config(cfg)      # every shell, TLE sets included, as the agents build it
    return world_topo(world, {e.index: e.name for e in peers.by_name.values()})


def world_topo(world, names: dict[int, str]) -> Topo:
    """The chaos view of a world whose nodes have these names (a fleet's, or a running agent's)."""
    constellation, topo = world.constellation, world.topology
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
        if action in NODE_ACTIONS:
            node = raw.pop("node", None)
            if raw:
                raise ScenarioError(f"{where}: a {action} takes only 'node', got {sorted(raw)}")
            if node == "random":
                node = rng.choice(sorted(topo.nodes))
            if not isinstance(node, str) or node not in topo.nodes:
                raise ScenarioError(f"{where}: {action} needs 'node', one of the fleet's nodes or \"random\"; "
                                    f"got {node!r}")
            out.append(Event(at, action, {"node": node}))
            continue
        if action == "clear":
            if raw:
                raise ScenarioError(f"{where}: a clear takes no other fields, got {sorted(raw)}")
            out.append(Event(at, "clear", {}))
            continue
        if action != "apply":
            raise ScenarioError(f"{where}: action must be 'apply', 'clear' or one of {', '.join(NODE_ACTIONS)}")
        if "for" in raw:
            raw["duration_s"] = raw.pop("for")
        link = raw.pop("link", None)
        if link == "all":                 # one fault per laser link: e.g. loss everywhere
            for a, b in links:
                one = dict(raw, a=a, b=b)
                try:
                    normalise(one, topo)
                except FaultError as exc:
                    raise ScenarioError(f"{where}: {exc}") from None
                out.append(Event(at, "apply", one))
            continue
        if link == "random":
            raw["a"], raw["b"] = rng.choice(links)
        elif link is not None:
            raise ScenarioError(f"{where}: link must be \"random\" or \"all\" (or give a and b), not {link!r}")
        try:
            normalise(raw, topo)
        except FaultError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        out.append(Event(at, "apply", raw))
    return sorted(out, key=lambda e: e.at)


async def run_scenario(events: list[Event], urls: str | list[str], echo=print, nodes=None,
                       history=None, token: str | None = None) -> list[dict[str, Any]]:
    """Apply the timeline; link faults go to the first node in ``urls`` that answers
    (a scenario may kill the one you named), node faults to ``nodes`` (a
    :class:`LocalNodeChaos` or :class:`ComposeNodeChaos`).  With ``history`` (an
    :class:`agent.ops.history.History`), each event is a ``nemesis`` operation there.
    ``token``: the API token to send (None: the client finds it)."""
    import trio

    from agent.client import ApiError, Client
    urls = [urls] if isinstance(urls, str) else list(urls)
    if nodes is None and any(ev.action in NODE_ACTIONS for ev in events):
        raise ScenarioError("this scenario kills, pauses or restarts nodes: it needs a fleet (--dir) or a compose "
                            "project (--compose)")

    async def call(fn):
        last: ApiError | None = None
        for url in urls:
            try:
                async with Client(url, token=token) as c:
                    return await fn(c)
            except ApiError as exc:
                if exc.status:          # the node answered: a real refusal
                    raise
                last = exc
        raise last or ApiError(0, "no node to talk to")

    applied = []
    start = trio.current_time()
    for ev in events:
        await trio.sleep_until(start + ev.at)
        op = history.invoke(NEMESIS, ev.action, dict(ev.spec)) if history is not None else None
        if ev.action in NODE_ACTIONS:
            try:
                what = await trio.to_thread.run_sync(nodes.run, ev.action, ev.spec["node"])
            except NodeChaosError as exc:
                what = f"{ev.action} {ev.spec['node']} refused: {exc}"
                if op is not None:
                    history.complete(op, "fail", error=str(exc))
            else:
                if op is not None:
                    history.complete(op, "ok", {**ev.spec, "result": what})
            echo(f"  t+{ev.at:7.2f}s  {what}")
            applied.append({"at": ev.at, "action": ev.action, "node": ev.spec["node"], "result": what})
            continue
        try:
            if ev.action == "clear":
                res = await call(lambda c: c.clear_faults())
                echo(f"  t+{ev.at:7.2f}s  clear ({len(res['cleared'])} faults)")
            else:
                res = await call(lambda c: c.apply_fault(ev.spec))
                echo(f"  t+{ev.at:7.2f}s  {describe(res['fault'])}")
        except ApiError as exc:
            if op is not None:   # refused: it did not happen; no answer: nobody knows
                history.complete(op, "fail" if exc.status else "info", error=exc.message)
            raise
        if op is not None:
            history.complete(op, "ok", res)
        applied.append({"at": ev.at, "action": ev.action, **res})
    return applied


def describe(f: dict[str, Any]) -> str:
    k = f["kind"]
    if k == "bitflip":
        dur = f" for {f['duration_s']:g}s" if f.get("duration_s") else ""
        return f"[{f['id']}] bitflip {f['node']}: one bit flipped in {f['rate'] * 100:g}% of its results{dur}"
    where = f"{f['a']}–{f['b']}" if "a" in f else (f"groups {f['groups']}" if k == "partition" else f"plane {f.get('plane')}")
    what = {"loss": lambda: f"{f.get('loss', 0) * 100:g}% ({f['model']})", "delay": lambda: f"+{f['delay'] * 1e3:g} ms",
            "jitter": lambda: f"{f['jitter'] * 1e3:g} ms {f['distribution']}",
            "bandwidth": lambda: f"{f['bandwidth'] / 1e6:g} Mbit/s"}.get(k, lambda: "")()
    dur = f" for {f['duration_s']:g}s" if f.get("duration_s") else ""
    return f"[{f['id']}] {k} {where} {what}{dur}".replace("  ", " ")


# -- node faults: processes of the local fleet, or containers through the engine -------

NODE_ACTIONS = ("kill", "pause", "resume", "restart")


class NodeChaosError(RuntimeError):
    """A node fault could not be done; the message says why."""


def _proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T, Z, …); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


class LocalNodeChaos:
    """Kill, pause, resume and restart agents of a local fleet (``orbitmesh up``) by signal.

    kill = SIGKILL (no shutdown, no goodbye on its links); pause = SIGSTOP
    (links stay open but silent); resume = SIGCONT; restart = SIGKILL, then
    the same agent command again (same data dir, so the same peer id).
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        path = self.directory / "fleet.json"
        try:
            self.state = json.loads(path.read_text())
        except FileNotFoundError:
            raise NodeChaosError(f"no local fleet at {self.directory}/ (no fleet.json): start one with "
                                 f"`orbitmesh up`, or name a compose project with --compose") from None
        except ValueError as exc:
            raise NodeChaosError(f"{path}: {exc}") from None
        from agent.ops.fleet import FleetError, load_peers
        try:
            self.nodes = load_peers(self.directory).names()
        except FleetError as exc:
            raise NodeChaosError(str(exc)) from None

    def _host_of(self, node: str) -> str | None:
        """The satellite host process ``node`` shares (``--sats-per-process``), if it shares one."""
        return next((h for h, names in self.state.get("hosts", {}).items() if node in names), None)

    def _control(self, host: str, action: str, node: str) -> dict:
        from agent.serve.auth import client_token
        from agent.ops.sat_host_control import ControlError, request, socket_path
        try:
            token = client_token(self.directory) if self.state.get("spec", {}).get("auth", True) else None
            return request(socket_path(self.directory, host), action, node, token)
        except (ControlError, ValueError) as exc:
            raise NodeChaosError(f"{node} (in {host}): {exc}") from None

    def _hosted(self, action: str, node: str, host: str) -> str:
        """One satellite of a host, through its control socket: the host and its other satellites live on."""
        pid = self._pid(node)
        if pid is None:
            if action != "restart":
                raise NodeChaosError(f"{node} is down (its host process {host} is not running)")
            from agent.ops.fleet import start_host
            names = self.state["hosts"][host]
            proc = start_host(self._spec(), host, names)
            return f"restarted {host} ({', '.join(names)}; it was down), new pid {proc.pid}"
        reply = self._control(host, action, node)
        past = {"kill": "killed", "restart": "restarted", "pause": "paused", "resume": "resumed"}[action]
        return f"{past} {node} alone in {host} (pid {pid} keeps running): {reply.get('state')}"

    def _spec(self):
        from agent.ops.fleet import FleetSpec
        spec = self.state.get("spec", {})
        models = Path(spec.get("models", "models"))
        if not models.is_absolute() and not models.is_dir() and (self.directory.parent / models).is_dir():
            models = self.directory.parent / models      # relative to where `up` ran
        return FleetSpec(directory=self.directory, models=models, auth=spec.get("auth", True),
                         sats_per_process=spec.get("sats_per_process", 1))

    def _pid(self, node: str) -> int | None:
        if node not in self.nodes:
            raise NodeChaosError(f"unknown node {node!r}: this fleet has {self.nodes[0]} … {self.nodes[-1]}")
        from agent.ops.fleet import _alive, _pids
        pid = _pids(self.directory).get(node)          # current: a restart records its new pid
        return pid if pid and _alive(pid) and _proc_state(pid) not in (None, "Z", "X") else None

    def status(self, node: str) -> str:
        pid = self._pid(node)
        host = self._host_of(node)
        if host is not None and pid is not None and _proc_state(pid) != "T":
            return self._control(host, "status", node)["state"]
        return "down" if pid is None else "paused" if _proc_state(pid) == "T" else "running"

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, node: str) -> str:
        pid = self._pid(node)
        if pid is None:
            raise NodeChaosError(f"{node} is already down")
        self._signal(pid, signal.SIGKILL)
        self._wait_gone(node, pid)
        return f"killed {node} (pid {pid}, SIGKILL)"

    def pause(self, node: str) -> str:
        pid = self._pid(node)
        if pid is None:
            raise NodeChaosError(f"{node} is down; cannot pause it")
        if _proc_state(pid) == "T":
            raise NodeChaosError(f"{node} is already paused (`orbitmesh chaos resume {node}`)")
        self._signal(pid, signal.SIGSTOP)
        return f"paused {node} (pid {pid}, SIGSTOP)"

    def resume(self, node: str) -> str:
        pid = self._pid(node)
        if pid is None:
            raise NodeChaosError(f"{node} is down; `orbitmesh chaos restart {node}` starts it again")
        if _proc_state(pid) != "T":
            raise NodeChaosError(f"{node} is not paused")
        self._signal(pid, signal.SIGCONT)
        return f"resumed {node} (pid {pid}, SIGCONT)"

    def restart(self, node: str) -> str:
        from agent.ops.fleet import start_agent
        pid = self._pid(node)
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(node, pid)
        proc = start_agent(self._spec(), node)
        what = f"killed pid {pid}, " if pid is not None else "was down, "
        return f"restarted {node} ({what}new pid {proc.pid})"

    def _wait_gone(self, node: str, pid: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while _proc_state(pid) not in (None, "Z", "X"):
            if time.monotonic() > deadline:
                raise NodeChaosError(f"{node} (pid {pid}) did not die within {timeout:.0f} s of SIGKILL")
            time.sleep(0.02)

    def run(self, action: str, node: str) -> str:
        if action not in NODE_ACTIONS:
            raise NodeChaosError(f"unknown action {action!r}; one of {', '.join(NODE_ACTIONS)}")
        host = self._host_of(node)
        if host is not None:
            return self._hosted(action, node, host)
        return getattr(self, action)(node)


class ComposeNodeChaos:
    """The same four faults on a compose constellation, through :class:`agent.ops.engine_chaos.EngineChaos`."""

    def __init__(self, project: str | None, engine=None):
        from agent.ops.engine_chaos import ChaosError, EngineChaos
        try:
            self.engine = engine or EngineChaos(project or None)
        except ChaosError as exc:
            raise NodeChaosError(str(exc)) from None
        self.project = project

    def _state(self, node: str) -> str:
        from agent.ops.engine_chaos import ChaosError
        try:
            return self.engine.state(node)
        except ChaosError as exc:
            raise NodeChaosError(str(exc)) from None

    def run(self, action: str, node: str) -> str:
        from agent.ops.engine_chaos import ChaosError
        state = self._state(node)
        up = state in ("running", "paused", "restarting")
        if action == "kill" and not up:
            raise NodeChaosError(f"{node} is already down (container {state})")
        if action == "pause" and state == "paused":
            raise NodeChaosError(f"{node} is already paused (`orbitmesh chaos resume {node}`)")
        if action == "pause" and not up:
            raise NodeChaosError(f"{node} is down (container {state}); cannot pause it")
        if action == "resume" and state != "paused":
            raise NodeChaosError(f"{node} is not paused (container {state})")
        try:
            if action == "kill" and state == "paused":
                self.engine.resume(node)      # the engine refuses to kill a frozen container
            if action == "restart" and state == "paused":
                self.engine.resume(node)
            if action == "restart":
                # kill then start: a crash and a cold start, like the local fleet's restart
                if state in ("running", "restarting", "paused"):
                    self.engine.kill(node)
                new = self.engine.start(node)
            else:
                new = self.engine.run(action, node)
        except ChaosError as exc:
            raise NodeChaosError(str(exc)) from None
        where = f" (compose project {self.project})" if self.project else ""
        past = {"kill": "killed", "pause": "paused", "resume": "resumed", "restart": "restarted"}[action]
        return f"{past} {node}{where}: container {new}"


def node_chaos(args: argparse.Namespace):
    """The backend for a node fault: compose when named or configured, else the local fleet."""
    if args.compose is not None:                       # --compose [PROJECT]
        return ComposeNodeChaos(args.compose)
    env = os.environ.get("COMPOSE_PROJECT_NAME")
    if env and not (Path(args.dir) / "fleet.json").exists():
        return ComposeNodeChaos(env)                     # configured, and no local fleet here
    return LocalNodeChaos(args.dir)


def cmd_node_chaos(args: argparse.Namespace) -> int:
    try:
        print(node_chaos(args).run(args.chaos_cmd, args.target))
    except NodeChaosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


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
    for kind in ("duplicate", "reorder"):
        link_cmd(kind, f"{kind} a share of frames", "probability", "e.g. 1%")
    q = cs.add_parser("corrupt", help="corrupt a share of a link's frames (A B PROBABILITY), or flip bits in a "
                                      "node's results (NODE --rate R: radiation upsets, caught by replicas in majority)")
    q.add_argument("a", metavar="A|NODE")
    q.add_argument("b", nargs="?", metavar="B")
    q.add_argument("probability", nargs="?", help="a link's frames: e.g. 1%%")
    q.add_argument("--rate", help="a node's results: the share with one bit flipped, e.g. 10%% or 0.1")
    q.add_argument("--for", dest="duration", help="revert after this long (e.g. 30s)")
    q.add_argument("--one-way", action="store_true", help="only the a→b direction")
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
    node_help = {"kill": "crash a node (SIGKILL / docker kill)", "pause": "freeze a node (SIGSTOP / docker pause)",
                 "resume": "thaw a paused node (SIGCONT / docker unpause)",
                 "restart": "kill a node and start it again (same identity)"}
    for action in NODE_ACTIONS:
        q = cs.add_parser(action, help=node_help[action])
        q.add_argument("target", metavar="NODE", help="e.g. sat-9 or gs-london")
        q.add_argument("--compose", nargs="?", const="", metavar="PROJECT",
                       help="act on the container in this compose project through the Docker engine "
                            "(no PROJECT: any project).  Without it: the local fleet in --dir, or, "
                            "where there is none, the project $COMPOSE_PROJECT_NAME")
    p.set_defaults(func=cmd_chaos)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    kind = args.chaos_cmd
    spec: dict[str, Any] = {"kind": kind}
    if kind == "partition":
        spec["groups"] = [[n.strip() for n in g.split(",") if n.strip()] for g in args.groups]
    elif kind == "plane":
        spec.update(plane=args.plane, shell=args.shell)
    elif kind == "corrupt" and (args.rate is not None or args.b is None):
        if args.rate is None or args.b is not None:
            raise ScenarioError("corrupt takes either A B PROBABILITY (a link's frames) or NODE --rate R "
                                "(a node's results)")
        spec = {"kind": "bitflip", "node": args.a, "rate": args.rate}
    else:
        if kind == "corrupt" and args.probability is None:
            raise ScenarioError("corrupt A B PROBABILITY: the share of the link's frames to corrupt is missing")
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
    from agent.ops.fleet import FleetError, load_peers
    if args.chaos_cmd in NODE_ACTIONS:
        return cmd_node_chaos(args)
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
            backend = node_chaos(args) if any(ev.action in NODE_ACTIONS for ev in events) else None
            others = [p.api for p in load_peers(args.dir).by_name.values()] if not args.url else []
            trio.run(run_scenario, events, [url] + [u for u in others if u != url], print, backend)
            return 0

        async def call() -> Any:
            async with Client(url) as c:
                if cmd == "list":
                    return await c.faults()
                if cmd == "clear":
                    return await c.clear_faults(args.fault_id)
                return await c.apply_fault(_spec(args))

        res = trio.run(call)
    except (ApiError, NodeChaosError, ScenarioError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
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
