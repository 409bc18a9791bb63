"""End-to-end task overhead on a local fleet, against physics and raw onnxruntime.

overhead = end-to-end latency − (physics of every link crossed + inference
time), for tasks crossing ≥ 4 link hops in total; the raw onnxruntime time of
the same model and inputs is measured in this process, in the same run.
Also reports per-hop emulation error (measured − physics link delay).

    python bench/task_overhead.py [-n 24] [--tasks 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from agent.client import Client  # noqa: E402
from agent.compute.models import session_options  # noqa: E402
from mesh.orbit import Constellation, iso_to_jd  # noqa: E402
from mesh.topology import Topology  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) if xs else float("nan")


def raw_onnxruntime_ms(models: Path, inputs: dict, repeats: int = 500) -> float:
    sess = ort.InferenceSession(str(models / "digits.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    feed = {"input": np.array(inputs["input"], dtype=np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


async def workload(peers, cfg, samples, tasks: int, concurrency: int):
    topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)))
    names = peers.names()
    records = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one(k: int) -> None:
        async with limiter:
            entry = names[(k * 5) % len(names)]
            snap = topo.snapshot(cfg.clock.orbit_t(time.time()))
            far = [n for n in names if len(snap.shortest_path(peers[entry].index, peers[n].index)[0]) >= 3]
            target = far[k % len(far)]
            sample = samples[k % len(samples)]
            async with Client(peers[entry].api) as c:
                acc = await c.submit("digits", sample["inputs"], target)
                records.append(await c.wait(acc["task_id"], timeout=60))

    async with trio.open_nursery() as n:
        for k in range(tasks):
            n.start_soon(one, k)
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()
    samples = json.loads((args.models / "digits.json").read_text())["samples"]
    raw_ms = raw_onnxruntime_ms(args.models, samples[0]["inputs"])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        with local_fleet(Path(d), args.models, args.n, ready_timeout=180.0) as (_, cfg, peers, _):
            ready_s = time.monotonic() - t0  # from spawning the processes to every link up
            records = trio.run(workload, peers, cfg, samples, args.tasks, args.concurrency)
    ok = [r for r in records if r["status"] == "succeeded"]
    crossings = [r for r in ok if r["latency"]["hops"] >= 4]
    overhead = [r["latency"]["total_ms"] - r["latency"]["physics_ms"] - raw_ms for r in crossings]
    overhead_exec = [r["latency"]["overhead_ms"] for r in crossings]
    hop_err = [h["link_measured_ms"] - h["link_expected_ms"] for r in ok for h in r["trace"][1:]]
    physics = [r["latency"]["physics_ms"] for r in crossings]
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
          f"python {platform.python_version()}  date {time.strftime('%Y-%m-%d')}")
    print(f"fleet: {args.n} agents ready in {ready_s:.1f} s; {len(ok)}/{len(records)} tasks succeeded; "
          f"{len(crossings)} crossed ≥ 4 links (median {statistics.median(r['latency']['hops'] for r in crossings)} hops)")
    print(f"baseline raw onnxruntime (same model, same input, 1 thread): {raw_ms:.3f} ms median")
    print(f"physics (2 × path) per task: median {statistics.median(physics):.2f} ms")
    print(f"overhead = e2e − physics − raw onnxruntime: median {statistics.median(overhead):.2f} ms, "
          f"p99 {pct(overhead, 99):.2f} ms  (goal: median < 5 ms)")
    print(f"overhead vs measured executor compute: median {statistics.median(overhead_exec):.2f} ms, "
          f"p99 {pct(overhead_exec, 99):.2f} ms")
    print(f"e2e / (physics + raw onnxruntime): median ratio "
          f"{statistics.median([r['latency']['total_ms'] / (r['latency']['physics_ms'] + raw_ms) for r in crossings]):.4f}")
    print(f"per-hop emulation error (measured − physics): p50 {pct(hop_err, 50):.3f} ms, p99 {pct(hop_err, 99):.3f} ms, "
          f"max {max(hop_err):.3f} ms over {len(hop_err)} hops")
    half = len(ok) // 2
    for label, part in (("first half", ok[:half]), ("second half", ok[half:])):
        errs = [h["link_measured_ms"] - h["link_expected_ms"] for r in part for h in r["trace"][1:]]
        print(f"  {label}: per-hop error p50 {pct(errs, 50):.3f} ms, p99 {pct(errs, 99):.3f} ms, max {max(errs):.3f} ms")
    return 0 if len(ok) == len(records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
