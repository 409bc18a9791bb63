"""Inference throughput through the agent, dynamic batching, and placement.

Baselines are measured in the same run:

* throughput: raw onnxruntime in one process, the same session options and the
  same number of threads as the executor's workers, each thread calling
  ``session.run`` in a loop; against it, the agent's executor (queue, worker
  pool, signature checks) and the whole agent over HTTP (JSON in and out);
* batching: the same executor with batching off (``max_batch=1``);
* placement: on a 12-agent fleet, one mixed workload (cloud masks entering at
  two hot nodes, digits everywhere) run three ways: ``auto`` placement,
  always on the entry node, and on a random node.

    python bench/inference.py [--seconds 5] [--model cloudmask] [--placement-tasks 48] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.client import Client  # noqa: E402
from agent.compute.executor import Executor  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sample_inputs(models: Path, name: str) -> dict[str, np.ndarray]:
    store = ModelStore(models)
    m = store.get(name)
    raw = json.loads((models / f"{name}.json").read_text())["samples"][0]["inputs"]
    return {s.name: np.asarray(raw[s.name], dtype=s.dtype) for s in m.inputs}


def raw_throughput(models: Path, name: str, inputs: dict[str, np.ndarray], threads: int, seconds: float) -> float:
    sess = ort.InferenceSession(str(models / f"{name}.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    sess.run(None, inputs)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            sess.run(None, inputs)
            counts[i] += 1

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


async def executor_throughput(models: Path, name: str, inputs: dict[str, np.ndarray], workers: int,
                              seconds: float, max_batch: int, concurrency: int) -> tuple[float, float]:
    ex = Executor(ModelStore(models), workers=workers, max_batch=max_batch, queue_limit=4 * concurrency)
    done = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(ex.serve)
        await ex.warm_up(name)
        stop = trio.current_time() + seconds

        async def client() -> None:
            nonlocal done
            while trio.current_time() < stop:
                await ex.run(name, inputs)
                done += 1

        t0 = trio.current_time()
        async with trio.open_nursery() as clients:
            for _ in range(concurrency):
                clients.start_soon(client)
        elapsed = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    return done / elapsed, (ex.batched_tasks / max(1, ex.batches))


async def http_throughput(peers, name: str, raw_inputs: dict, seconds: float, concurrency: int) -> float:
    node = peers.names()[0]
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        async with Client(peers[node].api, timeout=60) as c:
            while time.monotonic() < stop:
                acc = await c.submit(name, raw_inputs, node)
                rec = await c.wait(acc["task_id"], timeout=60)
                assert rec["status"] == "succeeded", rec
                done += 1

    t0 = time.monotonic()
    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(client)
    return done / (time.monotonic() - t0)


async def placement_run(peers, models: Path, policy: str, tasks: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    names = peers.names()
    hot = names[:2]
    image = json.loads((models / "cloudmask.json").read_text())["samples"][0]["inputs"]
    digit = json.loads((models / "digits.json").read_text())["samples"][0]["inputs"]
    jobs = []
    for i in range(tasks):
        if i % 3 == 2:
            entry, model, inputs = rng.choice(names), "digits", digit
        else:
            entry, model, inputs = hot[i % 2], "cloudmask", image
        target = {"auto": "auto", "local": entry, "random": rng.choice(names)}[policy]
        jobs.append((entry, model, inputs, target))
    times: list[float] = []
    limiter = trio.CapacityLimiter(12)

    async def one(entry, model, inputs, target):
        async with limiter, Client(peers[entry].api, timeout=120) as c:
            t0 = time.monotonic()
            acc = await c.submit(model, inputs, target, cache=False)   # execution, not the edge cache
            rec = await c.wait(acc["task_id"], timeout=120)
            assert rec["status"] == "succeeded", rec
            times.append(time.monotonic() - t0)

    async with trio.open_nursery() as n:
        for job in jobs:
            n.start_soon(one, *job)
            await trio.sleep(0.02)
    return times


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--model", default="cloudmask")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--placement-tasks", type=int, default=48)
    ap.add_argument("--skip-placement", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = Path(args.models)
    workers = max(1, os.cpu_count() or 1)
    inputs = sample_inputs(models, args.model)
    raw_json = json.loads((models / f"{args.model}.json").read_text())["samples"][0]["inputs"]
    out: dict = {"model": args.model, "workers": workers, "machine": platform.node(), "date": time.strftime("%Y-%m-%d")}
    out["raw_per_s"] = raw_throughput(models, args.model, inputs, workers, args.seconds)
    out["executor_per_s"], _ = trio.run(executor_throughput, models, args.model, inputs, workers, args.seconds, 1,
                                        2 * workers)
    out["unbatched_per_s"], _ = trio.run(executor_throughput, models, args.model, inputs, workers, args.seconds, 1,
                                         8 * workers)
    out["batched_per_s"], out["mean_batch"] = trio.run(executor_throughput, models, args.model, inputs, workers,
                                                       args.seconds, 16, 8 * workers)
    with tempfile.TemporaryDirectory() as d:
        with local_fleet(Path(d) / "one", models, 2) as (_, _, peers, _):
            out["http_per_s"] = trio.run(http_throughput, peers, args.model, raw_json, args.seconds, 2 * workers)
        if not args.skip_placement:
            with local_fleet(Path(d) / "twelve", models, 12) as (_, _, peers, _):
                # Untimed: every node loads and warms the models once, so no
                # policy pays the cold start that the one before it left warm.
                trio.run(placement_run, peers, models, "random", 36, 1)
                out["placement"] = {}
                for policy in ("auto", "local", "random"):
                    ts = trio.run(placement_run, peers, models, policy, args.placement_tasks, 7)
                    out["placement"][policy] = {"mean_s": statistics.fmean(ts), "p99_s": pct(ts, 99),
                                                "p50_s": pct(ts, 50), "tasks": len(ts)}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    raw = out["raw_per_s"]
    print(f"# inference, {args.model}, {workers} workers — {out['machine']}, {out['date']}")
    print(f"raw onnxruntime ({workers} threads):   {raw:8.1f}/s  1.00×")
    print(f"agent executor:                {out['executor_per_s']:8.1f}/s  {out['executor_per_s'] / raw:.2f}×")
    print(f"agent over HTTP (JSON):        {out['http_per_s']:8.1f}/s  {out['http_per_s'] / raw:.2f}×")
    print(f"batching off (8×{workers} clients):   {out['unbatched_per_s']:8.1f}/s  "
          f"{out['unbatched_per_s'] / raw:.2f}×")
    print(f"batching on  (8×{workers} clients):   {out['batched_per_s']:8.1f}/s  "
          f"{out['batched_per_s'] / raw:.2f}×  (gain {out['batched_per_s'] / out['unbatched_per_s']:.2f}×, "
          f"mean batch {out['mean_batch']:.1f})")
    if "placement" in out:
        base = out["placement"]["local"]
        for policy, r in out["placement"].items():
            print(f"placement {policy:6s}: mean {r['mean_s'] * 1e3:7.0f} ms ({r['mean_s'] / base['mean_s']:.2f}× local)"
                  f"  p50 {r['p50_s'] * 1e3:6.0f} ms  p99 {r['p99_s'] * 1e3:7.0f} ms "
                  f"({r['p99_s'] / base['p99_s']:.2f}× local), {r['tasks']} tasks")


if __name__ == "__main__":
    main()
