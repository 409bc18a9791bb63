"""``orbitmesh sim`` on the production nodes: an InProcFleet on a virtual clock, seeded, traced.

Every satellite is an ``agent.runtime.node.Node`` (the daemon's class: membership,
relay, delivery, journal, onnxruntime executor) on the in-memory twin host
(``agent/links/memory_host.py``), in one trio run on ``agent.wallclock.JumpClock``
through ``agent.wallclock.virtual``: virtual time passes only when every node
waits, so a run takes as long as its CPU work.  The scenario's faults are fleet
operations: a kill crashes a node (``InProcFleet.kill``), a restart starts it
from its journal, a cut is a chaos cut (``Node.apply_fault``, flooded as in the
daemon) on the first hop of a shortest path, loss is a chaos loss fault on
every link (the link model drops), tasks are ``Node.submit`` of a tiny matmul
model between random live nodes.  Figures come from the nodes' own state:
membership events (via ``MembershipService.on_event``), link statistics and
task records.

Deterministic: ``agent.entropy.seeded`` draws every id and random choice from
the seed and seeds trio's scheduler; the wall origin is fixed; the CLI fixes
``PYTHONHASHSEED``.  Wall-clock durations are kept out of the report (the
CLI adds them only to what it prints to stderr, and to ``--json`` if asked).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import trio

from agent import collector, entropy, wallclock
from agent.ops.inproc import InProcFleet
from agent.ops.sim_trace import Trace
from mesh.link import LossModel
from mesh.membership import LinkDown, LinkUp, NodeAlive, NodeDead, NodeSuspect, SelfRefuted, fleet_config
from mesh.membership_config import detection_s, rate_scale, scaled_config

ORIGIN = 1_767_225_600.0     # 2026-01-01T00:00:00Z: every run's virtual wall clock starts here
KILL_EVERY_S = 4.0
RESTART_AFTER_S = 10.0
MAX_NODES = 5000             # beyond: refused (memory: ~1 MB per production node)
MODEL = "matmul"


class SimRunError(Exception):
    """A scenario this engine cannot run (printed as ``error: …``)."""


@dataclass(frozen=True)
class SimSpec:
    preset: str = "demo"
    seconds: float = 60.0
    seed: int = 1
    loss: float = 0.0
    kills: int = 1
    restarts: bool = False
    cuts: int = 1
    tasks: int = 0
    deadline_s: float = 30.0
    frames_every_s: float = 1.0       # trace: per-link frame counts this often

    def args(self) -> dict[str, Any]:
        return {"engine": "nodes", "preset": self.preset, "seconds": self.seconds, "seed": self.seed,
                "loss": self.loss, "kill": self.kills, "restart": self.restarts, "cut": self.cuts,
                "tasks": self.tasks, "deadline": self.deadline_s}


def warmup_s() -> float:
    return fleet_config().start_grace_s + 3.0


def needed_seconds(spec: SimSpec, members: int | None = None) -> float:
    """``members``: the fleet's size once known; its membership rates (``scaled_config``, what
    ``orbitmesh up`` ships) may need longer than 7 s after the last kill to declare it dead."""
    tail = 7.0
    if members is not None and spec.kills and rate_scale(members) > 1.0:
        tail = max(tail, detection_s(scaled_config(members), members)[1])
    need = warmup_s() + 1.0 + KILL_EVERY_S * max(spec.kills, spec.cuts, 1) + (tail + 7.0 if spec.restarts else tail)
    if spec.tasks:
        need = max(need, warmup_s() + 4.0 + spec.deadline_s)
    return need


def _inputs(k: int) -> dict[str, list]:
    a = ((np.arange(32) * (k % 5 + 1) % 7) - 3).reshape(4, 8) / 2
    b = ((np.arange(24) * (k % 3 + 2) % 5) - 2).reshape(8, 3) / 2
    return {"a": a.astype(np.float32).tolist(), "b": b.astype(np.float32).tolist()}


class Observer:
    """Membership events, crashes and task ends of a run, timed in virtual seconds."""

    def __init__(self, trace: Trace | None):
        self.trace = trace
        self.suspect: dict[int, dict[str, float]] = collections.defaultdict(dict)   # subject -> observer -> t
        self.dead: dict[int, dict[str, float]] = collections.defaultdict(dict)
        self.alive: dict[int, dict[str, float]] = collections.defaultdict(dict)
        self.link_down: dict[tuple[int, int], dict[str, float]] = collections.defaultdict(dict)
        self.false_suspects: list[tuple[float, str, int]] = []
        self.false_dead: list[tuple[float, str, int]] = []
        self.false_link_down = 0
        self.down: set[int] = set()          # subjects crashed and not restarted
        self.ever_killed: set[int] = set()
        self.cut_links: set[tuple[int, int]] = set()
        self.refuted = 0

    def attach(self, node: Any) -> None:
        name = node.me.name
        node.membership.on_event = lambda ev: self.on_event(name, ev)

    def on_event(self, observer: str, ev: Any) -> None:
        t = trio.current_time()
        if isinstance(ev, NodeSuspect):
            self.suspect[ev.node].setdefault(observer, t)
            if ev.node not in self.ever_killed:
                self.false_suspects.append((t, observer, ev.node))
            self._trace(t, "suspect", observer, node=ev.node, inc=ev.incarnation)
        elif isinstance(ev, NodeDead):
            self.dead[ev.node].setdefault(observer, t)
            if ev.node not in self.ever_killed:
                self.false_dead.append((t, observer, ev.node))
            self._trace(t, "dead", observer, node=ev.node, inc=ev.incarnation)
        elif isinstance(ev, NodeAlive):
            self.alive[ev.node][observer] = t
            self._trace(t, "alive", observer, node=ev.node, inc=ev.incarnation)
        elif isinstance(ev, LinkDown):
            key = (min(ev.a, ev.b), max(ev.a, ev.b))
            self.link_down[key].setdefault(observer, t)
            if key not in self.cut_links and ev.a not in self.down and ev.b not in self.down \
                    and not ({ev.a, ev.b} & self.ever_killed):
                self.false_link_down += 1
            self._trace(t, "link_down", observer, link=list(key))
        elif isinstance(ev, LinkUp):
            self._trace(t, "link_up", observer, link=[min(ev.a, ev.b), max(ev.a, ev.b)])
        elif isinstance(ev, SelfRefuted):
            self.refuted += 1
            self._trace(t, "refuted", observer, inc=ev.incarnation)

    def _trace(self, t: float, kind: str, observer: str, **kw: Any) -> None:
        if self.trace is not None:
            self.trace.event(t, "verdict", kind=kind, by=observer, **kw)


class Run:
    """One scenario on one fleet; ``report()`` after ``main()``."""

    def __init__(self, spec: SimSpec, directory: Path, models_dir: Path, trace: Trace | None):
        self.spec = spec
        self.trace = trace
        self.obs = Observer(trace)
        self.rng = random.Random(f"{spec.seed}:plan")
        try:
            self.fleet = InProcFleet(directory, models_dir, None, models=(MODEL,), preset=spec.preset,
                                     start=wallclock.now(), on_node=self._on_node)
        except Exception as exc:          # FleetError for an unknown preset: its message is the reason
            raise SimRunError(str(exc.args[0]) if exc.args else str(exc)) from None
        self.names = list(self.fleet.members)
        self.index = {n: self.fleet.peers[n].index for n in self.names}
        if len(self.names) > MAX_NODES:
            raise SimRunError(f"{len(self.names)} nodes: this engine runs at most {MAX_NODES}")
        need = needed_seconds(spec, len(self.names))
        if spec.seconds < need:
            raise SimRunError(f"{spec.seconds:g} simulated seconds are too few for this plan on {len(self.names)} "
                              f"nodes: their membership rates (docs/membership.md) need at least {math.ceil(need):g}")
        self.kills: list[dict[str, Any]] = []
        self.cuts: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []
        self.retired_stats: collections.Counter[str] = collections.Counter()   # link stats of crashed runs
        self.executions_retired = 0
        self._frames_seen: dict[tuple[str, str, int], tuple[int, int, int]] = {}

    def _on_node(self, node: Any) -> None:
        """Each Node as it is built (first start and restarts): the observer's hook, and the run's loss
        in its links' base profile (the link model draws it per frame, from the link's own seed)."""
        self.obs.attach(node)
        if self.spec.loss:
            node.base_profile = replace(node.base_profile, loss=LossModel("bernoulli", self.spec.loss))

    # -- the plan -------------------------------------------------------------------------------

    def _victims(self) -> list[str]:
        sats = [n for n in self.names if not self.fleet.world.names.is_ground(self.index[n])]
        k = min(self.spec.kills, max(0, len(sats) - 2))
        return self.rng.sample(sats, k)

    async def main(self) -> None:
        spec = self.spec
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            with collector.rarely():                      # virtual time: no one waits on a collection's pause
                await self.fleet.start(nursery)
            stack.enter_context(collector.throughput())
            if self.trace is not None:
                nursery.start_soon(self._frames_loop)
            warm = warmup_s()
            victims = self._victims()
            live = [n for n in self.names if n not in victims]
            await trio.sleep_until(warm)
            if spec.tasks:
                nursery.start_soon(self._task_load, live)
            t0 = warm + 1.0
            plan: list[tuple[float, int, str, Any]] = []
            for k, v in enumerate(victims):
                plan.append((t0 + 2.0 + KILL_EVERY_S * k, 0, "kill", v))
                if spec.restarts:
                    plan.append((t0 + 2.0 + KILL_EVERY_S * k + RESTART_AFTER_S, 1, "restart", v))
            for k in range(spec.cuts):
                src, dst = self.rng.sample(live, 2)
                plan.append((t0 + 4.0 + KILL_EVERY_S * k, 2, "cut", (src, dst)))
            for at, _, op, arg in sorted(plan, key=lambda p: (p[0], p[1])):
                await trio.sleep_until(at)
                if op == "kill":
                    await self._kill(arg)
                elif op == "restart":
                    await self._restart(arg)
                else:
                    cut = self._cut(*arg)
                    if cut is not None:
                        nursery.start_soon(self._spread, cut)
            await trio.sleep_until(spec.seconds)
            self._frames_tick(final=True)
            nursery.cancel_scope.cancel()

    async def _kill(self, name: str) -> None:
        t = trio.current_time()
        node = self.fleet[name]
        self._retire(node)
        idx = self.index[name]
        self.obs.down.add(idx)
        self.obs.ever_killed.add(idx)
        await self.fleet.kill(name)
        self.kills.append({"node": name, "index": idx, "t": t, "restart_t": None})
        if self.trace is not None:
            self.trace.event(t, "crash", node=name)

    async def _restart(self, name: str) -> None:
        t = trio.current_time()
        node = await self.fleet.start_node(name)
        self.obs.down.discard(self.index[name])
        for k in self.kills:
            if k["node"] == name:
                k["restart_t"] = t
        if self.trace is not None:
            self.trace.event(t, "restart", node=name, incarnation=node.membership.m.incarnation)

    def _cut(self, src: str, dst: str) -> dict[str, Any] | None:
        t = trio.current_time()
        node = self.fleet[src]
        hop = node.relay.next_hop(dst)
        if hop is None:
            self.cuts.append({"src": src, "dst": dst, "t": t, "link": None})
            return None
        fault, _ = node.apply_fault({"kind": "cut", "a": src, "b": hop})
        key = tuple(sorted((self.index[src], self.index[hop])))
        self.obs.cut_links.add(key)
        cut = {"src": src, "dst": dst, "t": t, "link": [src, hop], "key": key, "fault": fault["id"], "everywhere": None}
        self.cuts.append(cut)
        if self.trace is not None:
            self.trace.event(t, "fault", kind="cut", a=src, b=hop)
        return cut

    async def _spread(self, cut: dict[str, Any], step: float = 0.02, limit: float = 10.0) -> None:
        """When every running node holds the cut (it is flooded): polled every ``step`` for ``limit`` s."""
        fid = cut["fault"]
        while trio.current_time() - cut["t"] < limit:
            now = wallclock.now()
            if all(any(f["id"] == fid for f in m.node.chaos.listing(now))
                   for m in self.fleet.members.values() if m.node is not None and m.scope is not None):
                cut["everywhere"] = trio.current_time() - cut["t"]
                return
            await trio.sleep(step)

    async def _task_load(self, live: list[str]) -> None:
        spec = self.spec
        start = warmup_s() + 2.0
        stop = max(start, spec.seconds - spec.deadline_s - 2.0)
        gap = (stop - start) / max(spec.tasks, 1)
        async with trio.open_nursery() as n:
            for k in range(spec.tasks):
                await trio.sleep_until(start + k * gap)
                up = [x for x in live if self.fleet.members[x].scope is not None]
                entry, target = self.rng.sample(up, 2)
                row = {"k": k, "entry": entry, "target": target, "t": trio.current_time(), "status": "in_flight",
                       "error": None, "end": None}
                self.tasks.append(row)
                try:
                    rec, _ = await self.fleet[entry].submit(MODEL, _inputs(k), target, timeout_s=spec.deadline_s)
                except Exception as exc:        # SubmitError: refused at entry (e.g. overloaded)
                    row.update(status="failed", error=f"refused: {exc}", end=trio.current_time())
                    continue
                n.start_soon(self._watch, rec, row)

    async def _watch(self, rec: Any, row: dict[str, Any]) -> None:
        await rec.done.wait()
        row.update(status=rec.status, error=rec.error, end=trio.current_time(), executor=rec.executor)
        if self.trace is not None:
            self.trace.event(row["end"], "task", k=row["k"], entry=row["entry"], target=row["target"],
                             status=rec.status, error=(rec.error or "")[:120] or None)

    # -- frames ---------------------------------------------------------------------------------

    def _retire(self, node: Any) -> None:
        for link in node.links.links.values():
            self.retired_stats.update(_link_counts(link.stats))
        self.executions_retired += node.executed

    async def _frames_loop(self) -> None:
        while True:
            await trio.sleep(self.spec.frames_every_s)
            self._frames_tick()

    def _frames_tick(self, final: bool = False) -> None:
        if self.trace is None:
            return
        t = trio.current_time()
        for name, m in self.fleet.members.items():
            if m.node is None or m.scope is None:
                continue
            for peer, link in m.node.links.links.items():
                s = link.stats
                dropped = sum(s.dropped.values())
                key = (name, peer, m.incarnation)
                now = (s.frames_sent, s.frames_received, dropped)
                before = self._frames_seen.get(key, (0, 0, 0))
                if now != before:
                    self._frames_seen[key] = now
                    self.trace.event(t, "frames", a=name, b=peer, sent=now[0] - before[0],
                                     received=now[1] - before[1], dropped=now[2] - before[2])

    # -- figures --------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        obs, spec = self.obs, self.spec
        live_names = [n for n in self.names if self.index[n] not in obs.ever_killed]
        deaths, rejoins = [], []
        for k in self.kills:
            idx, t = k["index"], k["t"]
            others = [n for n in live_names if n != k["node"]]
            sus = [v - t for v in obs.suspect.get(idx, {}).values() if v >= t]
            dead = {o: v - t for o, v in obs.dead.get(idx, {}).items() if v >= t}
            seen = [dead[o] for o in others if o in dead]
            deaths.append({"node": k["node"], "t": _r(t), "first_suspect_s": _r(min(sus)) if sus else None,
                           "first_dead_s": _r(min(dead.values())) if dead else None,
                           "all_dead_s": _r(max(seen)) if seen and len(seen) == len(others) else None,
                           "reached": len(seen), "of": len(others)})
            if k["restart_t"] is not None:
                rt = k["restart_t"]
                back = {o: v - rt for o, v in obs.alive.get(idx, {}).items() if v >= rt}
                seen = [back[o] for o in others if o in back]
                node = self.fleet.members[k["node"]].node
                rejoins.append({"node": k["node"], "t": _r(rt), "incarnation": node.membership.m.incarnation
                                if node is not None else None,
                                "all_alive_s": _r(max(seen)) if seen and len(seen) == len(others) else None,
                                "reached": len(seen), "of": len(others)})
        cuts = []
        for c in self.cuts:
            if c["link"] is None:
                cuts.append({"src": c["src"], "dst": c["dst"], "link": None})
                continue
            downs = [v - c["t"] for v in obs.link_down.get(c["key"], {}).values() if v >= c["t"]]
            node = self.fleet.members[c["src"]].node
            hop = node.relay.next_hop(c["dst"]) if node is not None else None
            cuts.append({"link": c["link"], "src": c["src"], "dst": c["dst"], "t": _r(c["t"]),
                         "link_down_reported_s": _r(min(downs)) if downs else None,
                         "known_everywhere_s": _r(c["everywhere"]),
                         "route_avoids_cut": hop is not None and hop != c["link"][1]})
        done = [r for r in self.tasks if r["status"] == "succeeded"]
        lat = [r["end"] - r["t"] for r in done]
        reasons = collections.Counter((r["error"] or "?").split(":")[0][:80] for r in self.tasks
                                      if r["status"] not in ("succeeded", "in_flight"))
        executions = self.executions_retired + sum(m.node.executed for m in self.fleet.members.values()
                                                   if m.node is not None and m.scope is not None)
        frames = collections.Counter(self.retired_stats)
        for m in self.fleet.members.values():
            if m.node is not None and m.scope is not None:
                for link in m.node.links.links.values():
                    frames.update(_link_counts(link.stats))
        window = max(spec.seconds, 1e-9)
        n = len(self.names)
        return {
            "engine": "nodes", "label": spec.preset, "nodes": n, "seconds": spec.seconds, "seed": spec.seed,
            "loss": spec.loss, "deaths": deaths, "rejoins": rejoins, "cuts": cuts,
            "tasks": {"submitted": len(self.tasks), "succeeded": len(done),
                      "failed": sum(1 for r in self.tasks if r["status"] not in ("succeeded", "in_flight")),
                      "in_flight": sum(1 for r in self.tasks if r["status"] == "in_flight"),
                      "ratio": _r(len(done) / len(self.tasks)) if self.tasks else None,
                      "latency_p50_s": _r(statistics.median(lat)) if lat else None,
                      "latency_max_s": _r(max(lat)) if lat else None,
                      "executions": executions, "failure_reasons": dict(sorted(reasons.items()))},
            "false_positives": {"suspicions": len(obs.false_suspects), "dead_declarations": len(obs.false_dead),
                                "nodes_wrongly_dead": len({x[2] for x in obs.false_dead}),
                                "link_down_reports_false": obs.false_link_down, "refutations": obs.refuted},
            "frames": dict(sorted(frames.items())),
            "bytes_per_node_s": {"all": _r(frames["bytes_sent"] / n / window, 1),
                                 "control": _r(frames["control_bytes_sent"] / n / window, 1)},
        }


def _link_counts(s: Any) -> dict[str, int]:
    out = {"frames_sent": s.frames_sent, "bytes_sent": s.bytes_sent, "control_frames_sent": s.control_frames_sent,
           "control_bytes_sent": s.control_bytes_sent, "frames_received": s.frames_received}
    for cause, k in s.dropped.items():
        out[f"dropped_{cause}"] = k
    return out


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def check(spec: SimSpec) -> None:
    """SimRunError with the reason if the plan does not fit the run."""
    if spec.seconds < needed_seconds(spec):
        why = f"; tasks need their {spec.deadline_s:g} s deadline to end inside the run" if spec.tasks else ""
        raise SimRunError(f"{spec.seconds:g} simulated seconds are too few for this plan (warm-up {warmup_s():g} s, "
                          f"then a kill or cut every {KILL_EVERY_S:g} s{why}): give at least "
                          f"{math.ceil(needed_seconds(spec)):g}")


class Progress(trio.abc.Instrument):
    """Calls ``say(simulated seconds so far)`` at most every ``every_s`` wall seconds, from the
    event loop's idle turns: an instrument adds no task and no wake-up, so the run is the same
    with it or without (a starlink-gen1 run's start-up alone takes tens of minutes here)."""

    def __init__(self, say, every_s: float = 15.0):
        self.say, self.every_s = say, every_s
        self._next = time.monotonic() + every_s

    def before_io_wait(self, timeout: float) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            self.say(trio.current_time())


def run(spec: SimSpec, trace: Trace | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run one scenario (seeded, virtual clock) and return its figures: the same for the same spec
    (``progress`` only reports; the CLI passes one that writes to stderr)."""
    check(spec)
    from agent.zoo import matmul
    quiet = logging.getLogger("agent")
    level = quiet.level
    quiet.setLevel(logging.ERROR)          # a node logs each verdict: the report and trace say it once
    try:
        with tempfile.TemporaryDirectory(prefix="orbitmesh-sim-") as tmp, entropy.seeded(spec.seed):
            models = Path(tmp) / "models-src"
            matmul.build(models)
            clock = wallclock.JumpClock()
            with wallclock.virtual(clock, origin=ORIGIN):
                box: dict[str, Run] = {}

                async def main() -> None:
                    box["run"] = r = Run(spec, Path(tmp) / "fleet", models, trace)
                    await r.main()
                trio.run(main, clock=clock, instruments=[progress] if progress is not None else [])
                return box["run"].report()
    finally:
        quiet.setLevel(level)
