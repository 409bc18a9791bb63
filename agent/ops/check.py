"""``orbitmesh check``: run a workload while a chaos scenario runs, then prove nothing was lost.

The checker is a client like any other: it submits tasks to several entry
nodes (each with an idempotency key, re-sent if an answer was lost or the
entry was down), runs the scenario's link and node faults at the same time,
restarts any node the scenario left down (its journal is on disk), and then
asks every entry node for every task it accepted.  It verifies:

* **lost**: every accepted task reached a final state;
* **duplicated**: one idempotency key is one task id, and a task's final
  state never changes once seen;
* **wrong**: every success equals the reference computed here, with
  onnxruntime, on the same input;
* **unexplained**: every failure carries a reason;
* **late**: every task ended (result or failure) by its deadline, within
  ``LATE_GRACE_S``, unless its entry node was down at that deadline (then it
  ends when the entry is back, with that reason).

It prints a report (counts, latency percentiles, faults applied) and exits
non-zero on any violation.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from agent.ops.chaos_cli import NODE_ACTIONS, Event, LocalNodeChaos, NodeChaosError, run_scenario
from agent.ops.check_common import Reference, bring_back
from agent.ops.check_common import pct as _pct
from agent.client import ApiError, Client
from agent.ops.history import History

QUERY_ATTEMPTS = 3      # a final check whose connection drops (no answer at all) is asked again
LATE_GRACE_S = 5.0      # a loaded 2-core host may delay the entry's deadline timer this much
DOWN_AT_DEADLINE = "was down until after the deadline"     # the entry's own reason (Node._recover_row)


@dataclass
class Job:
    index: int
    entry: str
    key: str
    sample: int
    task_id: str | None = None
    accepted_at: float | None = None
    refused: str = ""
    final: dict[str, Any] | None = None
    seen_at: float | None = None
    violations: list[str] = field(default_factory=list)
    process: int = 0          # its client's process in the history; a new one after an indeterminate answer


@dataclass
class Report:
    jobs: list[Job]
    faults: list[dict[str, Any]]
    restarted: list[str]
    seconds: float

    def counts(self) -> dict[str, int]:
        accepted = [j for j in self.jobs if j.task_id]
        return {
            "submitted": len(self.jobs), "accepted": len(accepted),
            "refused": sum(1 for j in self.jobs if not j.task_id),
            "succeeded": sum(1 for j in accepted if j.final and j.final["status"] == "succeeded"),
            "failed": sum(1 for j in accepted if j.final and j.final["status"] == "failed"),
            "lost": sum(1 for j in accepted if any(v.startswith("lost") for v in j.violations)),
            "duplicated": sum(1 for j in accepted if any(v.startswith("duplicated") for v in j.violations)),
            "wrong": sum(1 for j in accepted if any(v.startswith("wrong") for v in j.violations)),
            "unexplained": sum(1 for j in accepted if any(v.startswith("unexplained") for v in j.violations)),
            "late": sum(1 for j in accepted if any(v.startswith("late") for v in j.violations)),
        }

    @property
    def ok(self) -> bool:
        c = self.counts()
        return c["accepted"] > 0 and not (c["lost"] or c["duplicated"] or c["wrong"] or c["unexplained"]
                                          or c["late"])

    def latencies(self) -> list[float]:
        """Accepted → final at the entry node, from the task records (seconds)."""
        return sorted(j.final["latency"]["total_ms"] / 1e3 for j in self.jobs
                      if j.final and j.final["status"] == "succeeded" and j.final.get("latency"))

    def as_dict(self) -> dict[str, Any]:
        lat = self.latencies()
        return {"ok": self.ok, "counts": self.counts(), "seconds": self.seconds, "restarted_at_end": self.restarted,
                "latency_s": {p: _pct(lat, p) for p in (50, 90, 99, 100)} if lat else {},
                "failures": sorted({j.final["error"] for j in self.jobs if j.final and j.final["status"] == "failed"}),
                "violations": [f"task {j.index} ({j.task_id}): {v}" for j in self.jobs for v in j.violations],
                "faults": self.faults}

    def text(self) -> str:
        d = self.as_dict()
        c = d["counts"]
        lines = [f"check: {'PASS' if self.ok else 'FAIL'} after {self.seconds:.1f} s",
                 f"  tasks: {c['submitted']} submitted, {c['accepted']} accepted, {c['refused']} never accepted",
                 f"  final: {c['succeeded']} succeeded, {c['failed']} failed with a reason",
                 f"  violations: {c['lost']} lost, {c['duplicated']} duplicated, {c['wrong']} wrong, "
                 f"{c['unexplained']} failed without a reason, {c['late']} ended after their deadline"]
        if d["latency_s"]:
            lat = d["latency_s"]
            lines.append(f"  latency (accepted → final): p50 {lat[50] * 1e3:.0f} ms, p90 {lat[90] * 1e3:.0f} ms, "
                         f"p99 {lat[99] * 1e3:.0f} ms, max {lat[100] * 1e3:.0f} ms")
        node_faults = [f for f in self.faults if f["action"] in NODE_ACTIONS]
        lines.append(f"  faults applied: {len(self.faults) - len(node_faults)} link events, "
                     f"{len(node_faults)} node events" + (f"; restarted at the end: {', '.join(self.restarted)}"
                                                          if self.restarted else ""))
        for f in node_faults:
            lines.append(f"    t+{f['at']:.1f}s {f['result']}")
        for reason in d["failures"][:10]:
            lines.append(f"  failure reason: {reason}")
        for v in d["violations"][:20]:
            lines.append(f"  VIOLATION {v}")
        return "\n".join(lines)


def _late(rec: dict[str, Any], timeout_s: float) -> str:
    """A "late" violation if the task ended more than LATE_GRACE_S after its deadline
    (its entry's clock: created + timeout), except where its entry was down then."""
    if rec.get("finished") is None or rec.get("created") is None:
        return ""
    over = rec["finished"] - (rec["created"] + timeout_s)
    if over <= LATE_GRACE_S or DOWN_AT_DEADLINE in (rec.get("error") or ""):
        return ""
    return f"late: {rec['status']} {over:.1f} s after its {timeout_s:g} s deadline"


async def check(peers, events: list[Event], nodes: LocalNodeChaos | None, models: Path, *, tasks: int,
                entries: list[str], concurrency: int = 8, spread_s: float | None = None, task_timeout_s: float = 60.0,
                target: str = "spread", echo=print, history: History | None = None) -> Report:
    """``target``: "spread" sends task i to node i mod N (so every node executes, and a
    killed node is an executing one), or any placement target ("auto", "nearest", …).
    ``history``: every submission, read and fault is recorded there (see agent.ops.history)."""
    ref = Reference(models)
    run = uuid.uuid4().hex[:8]
    jobs = [Job(i, entries[i % len(entries)], f"check-{run}-{i}", i % len(ref.samples), process=i)
            for i in range(tasks)]
    names = peers.names()
    hist = history if history is not None else History()

    def invoke(job: Job, f: str, value: dict[str, Any]):
        return hist.invoke(job.process, f, value)

    def answered(op, value: dict[str, Any]) -> None:
        hist.complete(op, "ok", {**op.value, **value})

    def unanswered(job: Job, op, exc: ApiError) -> None:
        """A refusal (the node answered) did not happen; no answer may have: the process crashed."""
        hist.complete(op, "fail" if exc.status else "info", error=exc.message)
        if not exc.status:
            job.process += tasks

    def target_of(job: Job) -> str:
        return names[(job.index * 7 + 3) % len(names)] if target == "spread" else target
    urls = [peers[n].api for n in peers.names()]
    started = time.monotonic()
    span = spread_s if spread_s is not None else (events[-1].at if events else 0.0) + 2.0
    faults: list[dict[str, Any]] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def submit(job: Job) -> None:
        await trio.sleep(span * job.index / max(1, tasks))
        deadline = time.monotonic() + task_timeout_s
        last = ""
        while time.monotonic() < deadline:
            op = invoke(job, "submit", {"key": job.key, "entry": job.entry, "target": target_of(job),
                                        "sample": job.sample})
            try:
                async with limiter, Client(peers[job.entry].api, timeout=10) as c:
                    acc = await c.submit("digits", ref.samples[job.sample]["inputs"], target_of(job),
                                         timeout_s=task_timeout_s, idempotency_key=job.key)
                answered(op, {"task_id": acc["task_id"]})
                if job.task_id is not None and acc["task_id"] != job.task_id:
                    job.violations.append(f"duplicated: key {job.key} gave {job.task_id} and {acc['task_id']}")
                job.task_id = job.task_id or acc["task_id"]
                job.accepted_at = job.accepted_at or time.monotonic()
                return
            except ApiError as exc:
                unanswered(job, op, exc)
                last = exc.message
                if exc.status not in (0, 429, 503):
                    break          # refused for good (a bad request is the checker's bug)
            await trio.sleep(0.5)  # entry down or busy: the same key again, without holding a slot
        job.refused = last or "no answer"

    async def scenario() -> None:
        if events:
            faults.extend(await run_scenario(events, urls, echo=echo, nodes=nodes, history=hist))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scenario)
        for job in jobs:
            nursery.start_soon(submit, job)

    echo(f"  workload and scenario done after {time.monotonic() - started:.1f} s")
    restarted = await bring_back(peers, nodes, hist, echo)

    async def settle(job: Job) -> None:
        if not job.task_id:
            return
        deadline = time.monotonic() + task_timeout_s + 60.0
        rec = None
        while time.monotonic() < deadline:
            op = invoke(job, "read", {"task_id": job.task_id, "entry": job.entry})
            try:
                async with limiter, Client(peers[job.entry].api, timeout=30) as c:
                    rec = await c.task(job.task_id, wait=1.0)
                answered(op, observed(rec))
            except ApiError as exc:
                if exc.status == 404:   # a definite answer: the entry does not know the task
                    hist.complete(op, "ok", {**op.value, "status": None}, error=exc.message)
                    job.violations.append(f"lost: {job.entry} no longer knows it ({exc.message})")
                    return
                unanswered(job, op, exc)
                await trio.sleep(0.5)
                continue
            if rec["status"] in ("succeeded", "failed"):
                break
        if rec is None or rec["status"] not in ("succeeded", "failed"):
            job.violations.append(f"lost: still {rec['status'] if rec else 'unanswered'} at {job.entry} "
                                  f"{task_timeout_s + 60:.0f} s after the workload")
            return
        job.final, job.seen_at = rec, time.monotonic()
        if rec["status"] == "succeeded":
            why = ref.differs(job.sample, rec.get("outputs"))
            if why:
                job.violations.append(f"wrong: {why}")
        elif not rec.get("error"):
            job.violations.append("unexplained: failed without a reason")
        late = _late(rec, task_timeout_s)
        if late:
            job.violations.append(late)
        # The same key again must be the same task, and its state must not change.  Asked
        # with the same bound on concurrency as above; a dropped connection (status 0: a
        # busy host let the keep-alive lapse) is asked again, an answer never is.
        for attempt in range(QUERY_ATTEMPTS):
            try:
                async with limiter, Client(peers[job.entry].api, timeout=30) as c:
                    op = invoke(job, "submit", {"key": job.key, "entry": job.entry, "target": target_of(job),
                                                "sample": job.sample})
                    again = await c.submit("digits", ref.samples[job.sample]["inputs"], target_of(job),
                                           timeout_s=task_timeout_s, idempotency_key=job.key)
                    answered(op, {"task_id": again["task_id"]})
                    op = invoke(job, "read", {"task_id": job.task_id, "entry": job.entry})
                    later = await c.task(job.task_id)
                    answered(op, observed(later))
                break
            except ApiError as exc:
                unanswered(job, op, exc)
                if exc.status != 0 or attempt == QUERY_ATTEMPTS - 1:
                    job.violations.append(f"lost: {job.entry} stopped answering about it ({exc.message})")
                    return
                await trio.sleep(0.5)
        if again["task_id"] != job.task_id:
            job.violations.append(f"duplicated: key {job.key} now names {again['task_id']}")
        if later["status"] != rec["status"] or later.get("outputs") != rec.get("outputs"):
            job.violations.append(f"duplicated: final state changed from {rec['status']} to {later['status']}")

    settle_from = time.monotonic()
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(settle, job)
    echo(f"  every task settled after {time.monotonic() - settle_from:.1f} s more")
    return Report(jobs, faults, restarted, time.monotonic() - started)


def observed(rec: dict[str, Any]) -> dict[str, Any]:
    """What a read saw, for the history: the state, and the outputs as a digest (compact, comparable)."""
    out = rec.get("outputs")
    digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16] if out is not None else None
    return {"status": rec.get("status"), "error": rec.get("error"), "outputs_sha256": digest}


# -- command line -----------------------------------------------------------------

def cmd_check(args) -> int:
    import sys

    from agent.ops.chaos_cli import ScenarioError, fleet_topo, parse_scenario
    from agent.ops.fleet import FleetError, load_peers
    try:
        peers = load_peers(args.dir)
        events = parse_scenario(args.scenario.read_text(), fleet_topo(args.dir)) if args.scenario else []
        nodes = LocalNodeChaos(args.dir)
    except (OSError, FleetError, ScenarioError, NodeChaosError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    entries = args.entries.split(",") if args.entries else \
        [peers.names()[i * len(peers.names()) // 4] for i in range(min(4, len(peers.names())))]
    unknown = [e for e in entries if e not in peers]
    if unknown:
        print(f"error: unknown entry nodes {unknown}; this fleet has {peers.names()[0]} … {peers.names()[-1]}",
              file=sys.stderr)
        return 2
    if args.tasks < 1:
        print("error: --tasks must be at least 1", file=sys.stderr)
        return 2
    if args.jobs is not None:
        from agent.ops.check_jobs import cmd_check_jobs
        return cmd_check_jobs(args, peers, events, nodes, entries)
    if args.history and not args.history.resolve().parent.is_dir():
        print(f"error: --history: no directory {args.history.resolve().parent} to write into", file=sys.stderr)
        return 2
    print(f"check: {args.tasks} tasks into {', '.join(entries)}"
          + (f" while {args.scenario} runs ({len(events)} events over {events[-1].at:.1f} s)" if events else ""))
    history = History()
    report = trio.run(lambda: check(peers, events, nodes, args.models, tasks=args.tasks, entries=entries,
                                    concurrency=args.concurrency, task_timeout_s=args.task_timeout,
                                    target=args.target, history=history))
    if args.history:
        try:
            written = history.write(args.history)
        except OSError as exc:
            print(f"error: cannot write the history: {exc}", file=sys.stderr)
            return 2
        counts = ", ".join(f"{n} {t}" for t, n in history.counts().items())
        print(f"history: {len(history.ops)} operations ({counts}) in {' and '.join(map(str, written))}",
              file=sys.stderr if args.json else sys.stdout)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return 0 if report.ok else 1


def register(sub) -> None:
    p = sub.add_parser("check", help="run tasks while a chaos scenario runs; verify none was lost, duplicated "
                                     "or wrong")
    p.add_argument("--scenario", type=Path, help="chaos scenario (TOML; link and node faults)")
    p.add_argument("--tasks", type=int, default=200, help="tasks to submit (default: 200)")
    p.add_argument("--entries", help="entry nodes, comma-separated (default: 4 spread over the fleet)")
    p.add_argument("--concurrency", type=int, default=8, help="submissions in flight (default: 8)")
    p.add_argument("--task-timeout", type=float, default=60.0, help="each task's deadline in seconds (default: 60)")
    p.add_argument("--target", default="spread",
                   help="spread (task i runs on node i×7+3 mod N: every node executes; the default), or a placement "
                        "target for every task: auto, nearest, sunlit")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="a job workload instead of tasks: N jobs of digits samples, sharded across the fleet; "
                        "verify none lost, duplicated, wrong or overworked (re-sent more than was in flight past a "
                        "checkpoint)")
    p.add_argument("--job-inputs", type=int, default=50, help="inputs per job (default: 50)")
    p.add_argument("--shards", type=int, default=4, help="shards per job (default: 4)")
    p.add_argument("--chunk", type=int, default=5, help="inputs per chunk task (default: 5)")
    p.add_argument("--job-timeout", type=float, default=180.0, help="each job's deadline in seconds (default: 180)")
    p.add_argument("--kill-executing", type=int, default=0, metavar="N",
                   help="with --jobs: also kill -9 N satellites that run a shard at that moment (spread over the "
                        "run), each restarted --kill-for seconds later")
    p.add_argument("--kill-homes", type=int, default=0, metavar="N",
                   help="with --jobs: also kill -9 N entries while they are home to a running job (they resume "
                        "it from their journal once restarted, --kill-for seconds later)")
    p.add_argument("--kill-for", type=float, default=5.0, help="seconds a node killed by --kill-executing or "
                                                               "--kill-homes stays down (default: 5)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--history", type=Path, metavar="FILE",
                   help="write every operation (invoke/ok/fail/info, process, time, value) as a Jepsen-style "
                        "history: FILE.jsonl and FILE.edn")
    p.set_defaults(func=cmd_check)
