"""``orbitmesh check --jobs N``: run jobs while satellites that execute their shards are killed, then judge them.

The job workload of the checker (issue 19).  Each job is the zoo's digits
samples (cycled, with a different offset and stride per job), submitted with
an idempotency key to an entry node (the job's home), re-sent on no answer,
429 or 503 while that entry is down or busy.  The scenario's link and node
faults run meanwhile.  ``kill_executing`` more kills go to satellites that have
chunks of a running job in flight at that moment, and ``kill_homes`` to entries
that are home to a running job, each restarted ``kill_for_s`` later: only the
checker, reading the entries' job lists, can know which nodes those are (a
scenario file names its nodes before anything is placed, and a job of 50 digits
inputs lasts about a second).  Then every node left down is restarted (a home
resumes its jobs from its journal) and every job is waited for.

Verdicts per job (:func:`judge`): **lost** (not succeeded, or its home forgot
it), **duplicated** (one key, two job ids; outputs or checkpointed inputs that
are more or fewer than the inputs; shards that overlap), **wrong** (an output
that differs from onnxruntime run here), **unexplained** (failed without a
reason), **overworked** (a shard re-sent more inputs than its moves can
explain: per move, what can have been in flight past the checkpoint it resumed
at, ``window × chunk`` and no further than the shard's end; or a move that
resumed before a checkpoint the shard had).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from agent.ops.chaos_cli import NODE_ACTIONS, Event, LocalNodeChaos, NodeChaosError, run_scenario
from agent.ops.check_common import Reference, bring_back
from agent.ops.check_common import pct as _pct
from agent.client import ApiError, Client
from agent.ops.history import History

SHARDS, CHUNK, WINDOW = 4, 5, 2
KILL_FOR_S = 5.0          # a node killed by --kill-executing/--kill-homes is restarted this long after
FIND_EXECUTING_S = 20.0   # how long a --kill-* kill, at its turn, looks for something running to kill
TERMINAL = ("succeeded", "failed", "cancelled")     # handed_over is followed to the node that took it over
VERDICTS = ("lost", "duplicated", "wrong", "unexplained", "overworked")


@dataclass
class JobRun:
    index: int
    entry: str
    key: str
    samples: list[int]
    job_id: str | None = None
    refused: str = ""
    status: dict[str, Any] | None = None
    violations: list[str] = field(default_factory=list)


@dataclass
class NodeEvent:
    """A node fault as it happened: wall-clock time (the homes stamp moves with theirs), action, node."""

    at: float
    offset: float
    action: str
    node: str
    result: str


class Recorder:
    """A node chaos runner that notes when each action took effect (for kill → move times)."""

    def __init__(self, inner: LocalNodeChaos, started: float):
        self.inner, self.started, self.events = inner, started, []

    def status(self, node: str) -> str:
        return self.inner.status(node)

    def run(self, action: str, node: str) -> str:
        ordered = time.time()          # SIGKILL lands at once; waiting for the process to go may not
        what = self.inner.run(action, node)
        self.events.append(NodeEvent(ordered, ordered - self.started, action, node, what))
        return what


# -- verdicts -----------------------------------------------------------------------

def differs(got: dict[str, Any] | None, want: dict[str, np.ndarray]) -> str:
    """Why one input's outputs (JSON tensors) are not onnxruntime's here: labels exact, floats allclose."""
    if not isinstance(got, dict):
        return "no outputs"
    for name, w in want.items():
        g = got.get(name)
        if not isinstance(g, dict) or "data" not in g:
            return f"output {name!r} missing"
        arr = np.asarray(g["data"], dtype=w.dtype)
        same = arr.shape == w.shape and (np.allclose(arr, w, rtol=1e-5, atol=1e-6) if w.dtype.kind == "f"
                                         else np.array_equal(arr, w))
        if not same:
            return f"output {name!r} is {arr.tolist()}, onnxruntime here gives {w.tolist()}"
    return ""


def resend_bound(shard: dict[str, Any], window: int, chunk: int) -> int:
    """The most inputs a shard can have re-sent: at each move, what was in flight past the checkpoint
    it resumed at, so at most ``window`` chunks of ``chunk`` and never past the shard's end."""
    hi = shard["inputs"][1]
    return sum(min(window * chunk, max(0, hi - m["resume_at"])) for m in (shard.get("moves") or [])[1:])


def judge(status: dict[str, Any], outputs: list[Any] | None, expected: list[dict[str, np.ndarray]]) -> list[str]:
    """Every violation in one final job status and its result's outputs (None: no result)."""
    out: list[str] = []
    n = len(expected)
    if status.get("status") != "succeeded":
        if status.get("status") == "failed" and not status.get("error"):
            out.append("unexplained: failed without a reason")
        else:
            out.append(f"lost: {status.get('status')}: {status.get('error') or 'not finished'}")
    elif outputs is None:
        out.append("lost: succeeded but its result cannot be read")
    elif len(outputs) != n:
        out.append(f"duplicated: {len(outputs)} outputs for {n} inputs")
    else:
        bad = [(k, why) for k in range(n) if (why := differs(outputs[k], expected[k]))]
        if bad:
            out.append(f"wrong: {len(bad)} of {n} inputs, first input {bad[0][0]}: {bad[0][1]}")
    if status.get("status") != "succeeded":
        return out
    ran = sum((status.get("ran_on") or {}).values())
    if status.get("done") != n or ran != n:
        word = "duplicated" if max(status.get("done") or 0, ran) > n else "lost"
        out.append(f"{word}: {status.get('done')} inputs done and {ran} checkpointed for {n} inputs")
    window, chunk = status.get("window", 0), status.get("chunk", 0)
    covered = sorted(tuple(s["inputs"]) for s in status.get("shards", []))
    if [lo for lo, _ in covered] != [0] + [hi for _, hi in covered[:-1]] or (covered and covered[-1][1] != n):
        out.append(f"duplicated: shards {covered} do not split inputs 0–{n - 1} exactly once")
    for s in status.get("shards", []):
        lo, hi = s["inputs"]
        moves = s.get("moves") or []
        bound = resend_bound(s, window, chunk)
        if s.get("resent", 0) > bound:
            out.append(f"overworked: shard {s['shard']} re-sent {s['resent']} inputs after {len(moves) - 1} moves; "
                       f"at most {bound} were in flight past its checkpoints ({window} chunks of {chunk}, "
                       f"before input {hi})")
        at = [m["resume_at"] for m in moves]
        if any(not lo <= a <= hi for a in at) or at != sorted(at):
            out.append(f"overworked: shard {s['shard']} [{lo}, {hi}) resumed at {at}: before a checkpoint it had")
        if s.get("checkpoint") != hi:
            out.append(f"lost: shard {s['shard']} checkpoint at {s.get('checkpoint')}, its inputs end at {hi}")
    return out


def move_kind(why: str) -> str:
    for words, kind in (("declared dead", "dead"), ("cut off", "cut off"), ("failed on", "chunk failed"),
                        ("eclipse", "eclipse"), ("home restarted", "home restarted")):
        if words in why:
            return kind
    return "other"


def kill_effects(statuses: list[dict[str, Any]], events: list[NodeEvent]) -> list[dict[str, Any]]:
    """Per kill: the shards its node held then (placed there before, their job not finished; a shard
    whose chunks had all come home by then counts too, and does not move) and, of those that moved
    off it afterwards (it was executing them), the seconds from the kill to their next placement; and the
    shards placed on it while it was down (before the fleet knew); if it was a home, the seconds
    from the kill to each of its shards' placement after the restart (resumed from the journal)."""
    out = []
    for k in (e for e in events if e.action == "kill"):
        back = min((e.at for e in events if e.node == k.node and e.action == "restart" and e.at > k.at),
                   default=float("inf"))
        held, moved, onto, resumed = 0, [], 0, []
        for st in statuses:
            for s in st.get("shards", []):
                moves = s.get("moves") or []
                if st["job_id"].startswith(f"{k.node}-job-"):      # its home: shards resumed after the restart
                    resumed += [m["at"] - k.at for m in moves if "home restarted" in m["why"] and m["at"] > k.at]
                for a, b in zip(moves, moves[1:] + [None]):
                    if a["to"] != k.node:
                        continue
                    if k.at < a["at"] < back:
                        onto += 1
                    if a["at"] <= k.at and (b is None or b["at"] > k.at):
                        if b is None and (st.get("finished") or 0) < k.at:
                            continue        # its job had finished before the kill
                        held += 1
                        if b is not None:
                            moved.append({"job": st["job_id"], "shard": s["shard"], "seconds": b["at"] - k.at,
                                          "why": b["why"], "to": b["to"]})
        out.append({"node": k.node, "at": round(k.offset, 2), "held": held, "moved": moved,
                    "placed_while_down": onto, "resumed_s": sorted(round(x, 2) for x in resumed)})
    return out


# -- the run ----------------------------------------------------------------------------

@dataclass
class JobReport:
    jobs: list[JobRun]
    faults: list[dict[str, Any]]
    restarted: list[str]
    kills: list[dict[str, Any]]
    seconds: float
    missed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        accepted = [j for j in self.jobs if j.job_id]
        c = {"submitted": len(self.jobs), "accepted": len(accepted), "refused": len(self.jobs) - len(accepted),
             "succeeded": sum(1 for j in accepted if j.status and j.status["status"] == "succeeded")}
        for v in VERDICTS:
            c[v] = sum(1 for j in accepted if any(x.startswith(v) for x in j.violations))
        return c

    @property
    def ok(self) -> bool:
        c = self.counts()
        return c["accepted"] == c["submitted"] > 0 and not any(c[v] for v in VERDICTS)

    def as_dict(self) -> dict[str, Any]:
        st = [j.status for j in self.jobs if j.status]
        shards = [s for x in st for s in x["shards"]]
        kinds: dict[str, int] = {}
        for s in shards:
            for m in (s.get("moves") or [])[1:]:
                kinds[move_kind(m["why"])] = kinds.get(move_kind(m["why"]), 0) + 1
        secs = sorted(m["seconds"] for k in self.kills for m in k["moved"])
        took = sorted(x["finished"] - x["created"] for x in st if x.get("finished"))
        return {"ok": self.ok, "counts": self.counts(), "seconds": self.seconds, "restarted_at_end": self.restarted,
                "inputs": sum(x["inputs"] for x in st), "shards": len(shards),
                "moves": sum(x["moves"] for x in st), "moves_by_reason": kinds,
                "resent": sum(x["resent"] for x in st),
                "resent_bound": sum(resend_bound(s, x["window"], x["chunk"]) for x in st for s in x["shards"]),
                "job_s": {p: round(_pct(took, p), 2) for p in (50, 90, 100)} if took else {},
                "kills": self.kills, "kills_missed": self.missed, "moved_by_kill": len(secs),
                "kill_to_placement_s": {p: round(_pct(secs, p), 2) for p in (50, 90, 100)} if secs else {},
                "violations": [f"job {j.index} ({j.job_id or j.key}): {v}" for j in self.jobs for v in j.violations]
                + [f"job {j.index} ({j.key}) never accepted: {j.refused}" for j in self.jobs if not j.job_id],
                "faults": self.faults}

    def text(self) -> str:
        d = self.as_dict()
        c = d["counts"]
        why = ", ".join(f"{n} {k}" for k, n in sorted(d["moves_by_reason"].items()))
        lines = [f"check (jobs): {'PASS' if self.ok else 'FAIL'} after {self.seconds:.1f} s",
                 f"  jobs: {c['submitted']} submitted, {c['accepted']} accepted, {c['refused']} never accepted; "
                 f"{c['succeeded']} succeeded; {d['inputs']} inputs in {d['shards']} shards"
                 + (f"; each took p50 {d['job_s'][50]:.1f} s, max {d['job_s'][100]:.1f} s" if d["job_s"] else ""),
                 f"  violations: {c['lost']} lost, {c['duplicated']} duplicated, {c['wrong']} wrong, "
                 f"{c['unexplained']} failed without a reason, {c['overworked']} overworked",
                 f"  moves: {d['moves']}" + (f" ({why})" if why else "") + f"; {d['moved_by_kill']} off a killed "
                 f"satellite; re-sent {d['resent']} inputs (at most {d['resent_bound']} were in flight)"]
        for k in d["kills"]:
            times = ", ".join(f"{m['seconds']:.1f}" for m in k["moved"])
            lines.append(f"  kill {k['node']} at t+{k['at']:.1f}s: {k['held']} shards on it, "
                         f"{len(k['moved'])} moved" + (f" (kill → next placement: {times} s)" if times else "")
                         + (f"; {k['placed_while_down']} placed on it while down" if k["placed_while_down"] else "")
                         + (f"; as a home, {len(k['resumed_s'])} shards resumed {k['resumed_s'][0]:.1f}–"
                            f"{k['resumed_s'][-1]:.1f} s after the kill" if k["resumed_s"] else ""))
        node_faults = [f for f in self.faults if f["action"] in NODE_ACTIONS]
        lines.append(f"  faults applied: {len(self.faults) - len(node_faults)} link events, {len(node_faults)} "
                     f"node events" + (f"; restarted at the end: {', '.join(self.restarted)}" if self.restarted
                                       else ""))
        for f in node_faults:
            lines.append(f"    t+{f['at']:.1f}s {f['result']}")
        for m in self.missed:
            lines.append(f"  kill not done: {m}")
        for v in d["violations"][:20]:
            lines.append(f"  VIOLATION {v}")
        return "\n".join(lines)


async def check_jobs(peers, events: list[Event], nodes: LocalNodeChaos | None, models, *, jobs: int, inputs: int,
                     entries: list[str], shards: int = SHARDS, chunk: int = CHUNK, window: int = WINDOW,
                     target: str = "auto", job_timeout_s: float = 180.0, kill_executing: int = 0, kill_homes: int = 0,
                     kill_for_s: float = KILL_FOR_S, concurrency: int = 8, seed: int = 0, echo=print) -> JobReport:
    ref = Reference(models)
    S = len(ref.samples)
    run = uuid.uuid4().hex[:8]
    runs = [JobRun(i, entries[i % len(entries)], f"check-job-{run}-{i}",
                   [(i + k * (2 * (i // S) + 1)) % S for k in range(inputs)]) for i in range(jobs)]
    started_wall, started = time.time(), time.monotonic()
    recorder = Recorder(nodes, started_wall) if nodes is not None else None
    span = (events[-1].at if events else 0.0) + 2.0
    limiter = trio.CapacityLimiter(concurrency)
    hist = History()
    faults: list[dict[str, Any]] = []
    touched = {e.spec["node"] for e in events if e.action in NODE_ACTIONS}
    missed: list[str] = []       # --kill-executing/--kill-homes kills that found nothing to kill
    seen: dict[str, str] = {}    # each entry's last answer while looking for nodes to kill
    since = time.time()          # jobs created at an entry since then are (most likely) this run's

    def body(job: JobRun) -> list[dict[str, Any]]:
        return [ref.samples[k]["inputs"] for k in job.samples]

    async def submit(job: JobRun) -> str:
        """Its job id (the same key every time), or "" if refused for good or never answered."""
        deadline = time.monotonic() + job_timeout_s
        while time.monotonic() < deadline:
            try:
                async with limiter, Client(peers[job.entry].api, timeout=30) as c:
                    acc = await c.submit_job("digits", body(job), shards=shards, chunk=chunk, window=window,
                                             target=target, timeout_s=job_timeout_s, idempotency_key=job.key)
                return acc["job_id"]
            except ApiError as exc:
                job.refused = exc.message
                if exc.status not in (0, 429, 503):
                    return ""      # refused for good (a bad request is the checker's bug)
            await trio.sleep(0.5)
        return ""

    async def first_submit(job: JobRun) -> None:
        await trio.sleep(span * job.index / max(1, jobs))
        job.job_id = await submit(job) or None

    async def running(clients: dict[str, Client], homes: bool) -> dict[str, int]:
        """Nodes to kill now, from every entry's job list (it shows a job before its submitter hears
        back): satellites running a shard with chunks in flight (never an entry), or (``homes``)
        entries that are home to a running job; each with the inputs its shards or jobs have left."""
        found: dict[str, int] = {}

        async def look(entry: str) -> None:
            try:
                listing = await clients[entry].jobs()
            except ApiError as exc:
                seen[entry] = str(exc)
                return
            mine = [st for st in listing["jobs"] if st["status"] == "running" and st["created"] >= since]
            seen[entry] = f"{len(mine)} of our jobs running" + "".join(
                f"; {st['job_id']}: " + ", ".join(f"{x['node']} {x['in_flight']}" for x in st["shards"])
                for st in mine[:2])
            for st in mine:
                if homes:
                    found[entry] = found.get(entry, 0) + st["inputs"] - st["done"]
                for s in st["shards"] if not homes else ():
                    # a chunk in flight and more still to send: killed now, the shard must move (with nothing
                    # left to send, the answer already on its way can finish it)
                    unsent = s["inputs"][1] - max((hi for _, hi in s["in_flight"]), default=s["inputs"][1])
                    if s["node"] and s["in_flight"] and unsent > 0 and s["node"] not in entries:
                        found[s["node"]] = found.get(s["node"], 0) + s["inputs"][1] - s["checkpoint"]
        async with trio.open_nursery() as n:
            for entry in entries:
                n.start_soon(look, entry)
        return {x: left for x, left in found.items() if x not in touched and recorder.status(x) == "running"}

    async def killer(nursery: trio.Nursery) -> None:
        """The extra kills, spread over the run: satellites that run a shard, and homes of running
        jobs (which must resume them from their journal after the restart)."""
        rng = random.Random(seed)
        kinds = ["executing"] * kill_executing + ["home"] * kill_homes
        kinds = kinds[::2] + kinds[1::2]
        clients = {e: Client(peers[e].api, timeout=10) for e in entries}
        try:
            for k, kind in enumerate(kinds):
                await trio.sleep(max(0.0, started + span * (k + 1) / (len(kinds) + 1) - time.monotonic()))
                give_up = time.monotonic() + FIND_EXECUTING_S
                while time.monotonic() < give_up:
                    up = await running(clients, kind == "home")
                    if up:
                        break
                    await trio.sleep(0.02)
                else:
                    missed.append(f"{kind} kill {k + 1}: nothing to kill for {FIND_EXECUTING_S:g} s; last seen: "
                                  + " | ".join(f"{e}: {what}" for e, what in sorted(seen.items())))
                    echo(f"  nothing to kill: {missed[-1]}")
                    continue
                most = max(up.values())        # the most work left: the likeliest to be cut short
                node = rng.choice(sorted(x for x, left in up.items() if left == most))
                try:
                    what = await trio.to_thread.run_sync(recorder.run, "kill", node)
                except NodeChaosError as exc:
                    missed.append(f"{kind} kill of {node}: {exc}")
                    echo(f"  could not kill {node}: {exc}")
                    continue
                faults.append({"at": time.monotonic() - started, "action": "kill", "node": node, "result": what})
                echo(f"  t+{time.monotonic() - started:7.2f}s  {what} (" +
                     ("it was executing a shard)" if kind == "executing" else "home of a running job)"))
                nursery.start_soon(restart_later, node)
        finally:
            for c in clients.values():
                await c.aclose()

    async def restart_later(node: str) -> None:
        await trio.sleep(kill_for_s)
        try:
            what = await trio.to_thread.run_sync(recorder.run, "restart", node)
        except NodeChaosError as exc:
            echo(f"  could not restart {node}: {exc}")
            return
        faults.append({"at": time.monotonic() - started, "action": "restart", "node": node, "result": what})
        echo(f"  t+{time.monotonic() - started:7.2f}s  {what}")

    urls = [peers[n].api for n in peers.names()]
    setting = [e for e in events if e.at == 0 and e.action == "apply"]
    if setting:     # the link faults at 0 s set the stage: in place before the clock starts (one call each)
        faults.extend(await run_scenario(setting, urls, echo=lambda _: None, history=hist))
        echo(f"  {len(setting)} link faults at 0 s in place after {time.monotonic() - started:.1f} s")
        started_wall, started = time.time(), time.monotonic()
        recorder = Recorder(nodes, started_wall) if nodes is not None else None
    timeline = [e for e in events if e not in setting]

    async def scenario() -> None:
        if timeline:
            faults.extend(await run_scenario(timeline, urls, echo=echo, nodes=recorder, history=hist))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scenario)
        if (kill_executing or kill_homes) and recorder is not None:
            nursery.start_soon(killer, nursery)
        for job in runs:
            nursery.start_soon(first_submit, job)
    faults.sort(key=lambda f: f["at"])
    echo(f"  submissions and faults done after {time.monotonic() - started:.1f} s")
    restarted = await bring_back(peers, recorder, hist, echo)

    async def settle(job: JobRun) -> None:
        if not job.job_id:
            return
        deadline = time.monotonic() + job_timeout_s + 60.0
        st, at = None, job.entry
        while time.monotonic() < deadline:
            try:
                async with limiter, Client(peers[at].api, timeout=30) as c:
                    st = await c.job(job.job_id, wait=5.0)
            except ApiError as exc:
                if exc.status == 404:
                    job.violations.append(f"lost: {at} no longer knows it ({exc.message})")
                    return
                await trio.sleep(0.5)
                continue
            if st["status"] == "handed_over" and st.get("handed_to") in peers:
                at = st["handed_to"]        # its keeper took it over while the home was down
                continue
            if st["status"] in TERMINAL:
                break
        if st is None or st["status"] not in TERMINAL:
            job.violations.append(f"lost: still {st['status'] if st else 'unanswered'} at {job.entry} "
                                  f"{job_timeout_s + 60:.0f} s after the workload")
            return
        job.status = st
        outputs = None
        if st["status"] == "succeeded":
            try:
                async with limiter, Client(peers[at].api, timeout=60) as c:
                    outputs = (await c.job_result(job.job_id, arrays=False))["outputs"]
            except ApiError as exc:
                job.violations.append(f"lost: its result cannot be read ({exc.message})")
                return
        job.violations += judge(st, outputs, [ref.outputs[k] for k in job.samples])
        again = await submit(job)          # the same key again: the same job
        if again != job.job_id:
            job.violations.append(f"duplicated: key {job.key} now names {again or 'nothing: ' + job.refused}")

    settle_from = time.monotonic()
    async with trio.open_nursery() as nursery:
        for job in runs:
            nursery.start_soon(settle, job)
    echo(f"  every job settled after {time.monotonic() - settle_from:.1f} s more")
    return JobReport(runs, faults, restarted,
                     kill_effects([j.status for j in runs if j.status], recorder.events if recorder else []),
                     time.monotonic() - started, missed)


# -- command line (``orbitmesh check --jobs``; the parser is agent/ops/check.py's) ---------------

def cmd_check_jobs(args, peers, events: list[Event], nodes: LocalNodeChaos, entries: list[str]) -> int:
    import json
    import sys

    from mesh.jobs import MAX_CHUNK, MAX_JOB_INPUTS, MAX_SHARDS
    from mesh.placement import TARGETS
    target = "auto" if args.target == "spread" else args.target
    free = len(peers.names()) - len(entries) - len({e.spec["node"] for e in events if e.action in NODE_ACTIONS})
    problems = [msg for bad, msg in (
        (args.jobs < 1, "--jobs must be at least 1"),
        (not 1 <= args.job_inputs <= MAX_JOB_INPUTS, f"--job-inputs must be in 1–{MAX_JOB_INPUTS}"),
        (not 1 <= args.shards <= MAX_SHARDS, f"--shards must be in 1–{MAX_SHARDS}"),
        (not 1 <= args.chunk <= MAX_CHUNK, f"--chunk must be in 1–{MAX_CHUNK}"),
        (not 1 <= args.job_timeout <= 6 * 3600, "--job-timeout must be in 1–21600 seconds"),
        (target not in TARGETS, f"--target for jobs is a placement policy: one of {', '.join(TARGETS)}"),
        (not 0 <= args.kill_executing <= max(0, free - 1),
         f"--kill-executing must be in 0–{max(0, free - 1)}: the fleet's satellites that are neither entries nor "
         "named by the scenario, less one to run shards"),
        (not 0 <= args.kill_homes <= len(entries), f"--kill-homes must be in 0–{len(entries)} (the entries)"),
        (not 0 < args.kill_for <= 600, "--kill-for must be in (0, 600] seconds"),
        (args.history is not None, "--history records task workloads only, not --jobs")) if bad]
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    seed = 0
    if args.scenario:
        import tomllib
        seed = tomllib.loads(args.scenario.read_text()).get("seed", 0)
    print(f"check: {args.jobs} jobs of {args.job_inputs} inputs ({args.shards} shards, chunks of {args.chunk}) into "
          f"{', '.join(entries)}" + (f" while {args.scenario} runs ({len(events)} events over {events[-1].at:.1f} s)"
                                      if events else "")
          + (f"; killing {args.kill_executing} executing satellites and {args.kill_homes} homes"
             if args.kill_executing or args.kill_homes else ""))
    report = trio.run(lambda: check_jobs(peers, events, nodes, args.models, jobs=args.jobs, inputs=args.job_inputs,
                                         entries=entries, shards=args.shards, chunk=args.chunk, target=target,
                                         job_timeout_s=args.job_timeout, kill_executing=args.kill_executing,
                                         kill_homes=args.kill_homes,
                                         kill_for_s=args.kill_for, concurrency=args.concurrency, seed=seed))
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return 0 if report.ok else 1
