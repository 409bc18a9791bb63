"""What durability costs, and how fast a fleet recovers from kill -9.

* Journal cost: the same workload (digits tasks entering at 4 nodes and run
  on far nodes, 16 in flight) on a 12-agent fleet with the SQLite journal
  and on one started with ``--no-journal``: throughput and p50/p99
  completion time, as ratios (the baseline is the run without the journal).
* Recovery after kill -9 of an executing node: a stream of tasks to one
  executor; the executor is killed and restarted at once.  Reported: the
  agent's restart until it answers, and the kill until every task that was
  in flight at the kill has completed (none may be lost).

    python bench/durability.py [--tasks 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.ops import fleet# noqa: E402
from agent.client import ApiError, Client  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def workload(peers, samples, tasks: int, concurrency: int = 16) -> dict:
    names = peers.names()
    entries = [names[0], names[3], names[6], names[9]]
    times: list[float] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        entry = entries[i % 4]
        target = names[(names.index(entry) + 5) % len(names)]
        async with limiter, Client(peers[entry].api) as c:
            t0 = time.monotonic()
            acc = await c.submit("digits", samples[i % len(samples)]["inputs"], target)
            rec = await c.wait(acc["task_id"], timeout=60)
            assert rec["status"] == "succeeded", rec
            times.append(time.monotonic() - t0)

    t0 = time.monotonic()
    async with trio.open_nursery() as n:
        for i in range(tasks):
            n.start_soon(one, i)
    wall = time.monotonic() - t0
    return {"per_s": tasks / wall, "p50_s": pct(times, 50), "p99_s": pct(times, 99), "mean_s": statistics.fmean(times)}


async def recovery(spec, peers, procs, samples) -> dict:
    entry, victim = "sat-0", "sat-6"
    in_flight: dict[str, float] = {}
    done: dict[str, float] = {}
    killed_at = 0.0
    stop = trio.Event()

    async def stream() -> None:
        async with Client(peers[entry].api) as c:
            k = 0
            while not stop.is_set():
                acc = await c.submit("digits", samples[k % len(samples)]["inputs"], victim, timeout_s=60)
                in_flight[acc["task_id"]] = time.monotonic()
                k += 1
                await trio.sleep(0.02)

    async def settle(task_id: str) -> None:
        async with Client(peers[entry].api) as c:
            rec = await c.wait(task_id, timeout=90)
            assert rec["status"] == "succeeded", rec
            done[task_id] = time.monotonic()

    async with trio.open_nursery() as n:
        n.start_soon(stream)
        await trio.sleep(2.0)
        killed_at = time.monotonic()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        pending_at_kill = list(in_flight)
        procs[victim] = fleet.start_agent(spec, victim)
        while True:
            try:
                async with Client(peers[victim].api, timeout=1.0) as c:
                    await c.health()
                break
            except ApiError:
                await trio.sleep(0.05)
        answers_at = time.monotonic()
        await trio.sleep(1.0)
        stop.set()
        async with trio.open_nursery() as s:
            for tid in pending_at_kill:
                s.start_soon(settle, tid)
    late = [done[t] - killed_at for t in pending_at_kill if in_flight[t] > killed_at - 5.0]
    return {"restart_to_answer_s": answers_at - killed_at, "tasks_in_flight_at_kill": len(pending_at_kill),
            "all_done_after_kill_s": max(late) if late else 0.0}


def journal_write_us(directory: Path, n: int = 2000) -> float:
    """Mean cost of one task's two journal commits (accept, finish), in µs, on this disk."""
    import numpy as np

    from agent.runtime.journal import Journal
    from mesh.wire import TaskRequest, TaskResult, Tensor
    j = Journal(directory / "bench.sqlite")
    x = {"input": Tensor.from_array(np.ones((1, 64), np.float32))}
    t0 = time.perf_counter()
    for i in range(n):
        j.accept(TaskRequest(f"sat-0-{i}", "sat-0", "sat-5", "digits", x, 64, deadline=2e9), "sat-5", "", 0.0)
        j.finish(f"sat-0-{i}", True, 1.0, TaskResult(f"sat-0-{i}", "sat-0", "sat-5", True))
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = Path(args.models)
    samples = json.loads((models / "digits.json").read_text())["samples"]
    out: dict = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "tasks": args.tasks}
    with tempfile.TemporaryDirectory() as d:
        out["journal_write_us"] = journal_write_us(Path(d))
        for journaled in (False, True):
            key = "journal" if journaled else "no_journal"
            with local_fleet(Path(d) / key, models, 12, journal=journaled) as (spec, _, peers, procs):
                trio.run(workload, peers, samples, 40)            # warm-up
                out[key] = trio.run(workload, peers, samples, args.tasks)
                if journaled:
                    out["recovery"] = trio.run(recovery, spec, peers, procs, samples)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    base, j = out["no_journal"], out["journal"]
    print(f"# durability, 12 agents — {out['machine']}, {out['date']}")
    for name, r in (("no journal", base), ("journal", j)):
        print(f"{name:10s}: {r['per_s']:6.1f} tasks/s ({r['per_s'] / base['per_s']:.2f}×)  "
              f"p50 {r['p50_s'] * 1e3:6.1f} ms ({r['p50_s'] / base['p50_s']:.2f}×)  "
              f"p99 {r['p99_s'] * 1e3:6.1f} ms ({r['p99_s'] / base['p99_s']:.2f}×)")
    print(f"journal commits per task (accept + finish, WAL, synchronous=NORMAL): {out['journal_write_us']:.0f} µs")
    r = out["recovery"]
    print(f"kill -9 of an executing node: it answers again {r['restart_to_answer_s']:.2f} s after the kill; "
          f"all {r['tasks_in_flight_at_kill']} tasks accepted before the kill done "
          f"{r['all_done_after_kill_s']:.2f} s after it, none lost")


if __name__ == "__main__":
    main()
