"""Jobs: throughput against onnxruntime alone, what a checkpoint costs, how fast a killed shard resumes.

* Throughput: one cloud-mask job of ``--inputs`` 64×64 tiles (and one digits job), sent as binary tensors
  on a fleet of ``--sats`` agents, against the same inputs through one
  onnxruntime session here (4 threads, batch of one chunk), timed in the same run.
  The ratio is the job's inputs/s over onnxruntime's.  On this 2-core box
  every agent shares the same two cores, so the fleet cannot beat one local
  process; the ratio says what the mesh, the chunking and the checkpoints
  cost, not what 24 real satellites would add.
* Checkpoint: the job journal's write of one chunk's outputs (SQLite WAL,
  ``synchronous=NORMAL``), timed here, against onnxruntime's time for that
  chunk.
* Kill → resume: a digits job streamed in small chunks; the satellite
  running one shard is killed (SIGKILL); reported is the time until the shard
  is placed elsewhere (its move's timestamp) and the inputs sent again.

    python bench/jobs.py [--sats 24] [--inputs 192] [--repeat 3] [--json]
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

from agent.chaos_cli import LocalNodeChaos  # noqa: E402
from agent.client import Client  # noqa: E402
from agent.job_journal import JobJournal  # noqa: E402
from tests.conftest import local_fleet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def tiles(model: str, n: int) -> list[np.ndarray]:
    samples = json.loads((MODELS / f"{model}.json").read_text())["samples"]
    name = next(iter(samples[0]["inputs"]))
    base = [np.asarray(s["inputs"][name], np.float32) for s in samples]
    if model == "cloudmask":      # 64×64 crops of the sample scene: the job's binary body stays under 16 MiB
        base = [b[..., y:y + 64, x:x + 64] for b in base for y in range(0, b.shape[-2] - 63, 64)
                for x in range(0, b.shape[-1] - 63, 64)]
    return [base[i % len(base)] for i in range(n)], name


def local_rate(model: str, xs: list[np.ndarray], name: str, chunk: int) -> float:
    """Inputs/s through one onnxruntime session here, a chunk per call when the model batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 4
    sess = ort.InferenceSession(str(MODELS / f"{model}.onnx"), opts, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    for lo in range(0, len(xs), chunk):
        sess.run(None, {name: np.concatenate(xs[lo:lo + chunk])})
    return len(xs) / (time.perf_counter() - t0)


async def job_rate(peers, model: str, xs: list[np.ndarray], name: str, shards: int, chunk: int) -> dict:
    async with Client(peers["sat-0"].api, timeout=60) as c:
        t0 = time.perf_counter()
        acc = await c.submit_job(model, {name: np.stack(xs)}, shards=shards, chunk=chunk, timeout_s=600)
        info = await c.wait_job(acc["job_id"], 600)
        took = time.perf_counter() - t0
    assert info["status"] == "succeeded", info
    return {"rate": len(xs) / took, "seconds": took, "nodes": len(info["ran_on"])}


def checkpoint_cost(model: str, xs: list[np.ndarray], name: str, chunk: int, repeat: int = 50) -> dict:
    sess = ort.InferenceSession(str(MODELS / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    feed = {name: np.concatenate(xs[:chunk])}
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    t0 = time.perf_counter()
    for _ in range(repeat):
        sess.run(None, feed)
    compute = (time.perf_counter() - t0) / repeat
    with tempfile.TemporaryDirectory() as d:
        j = JobJournal(Path(d) / "jobs.sqlite")
        j.accept("bench-job-1", None, time.time(), {"model": model})
        t0 = time.perf_counter()
        for k in range(repeat):
            j.checkpoint("bench-job-1", 0, k * chunk, (k + 1) * chunk, "sat-1", outs)
        write = (time.perf_counter() - t0) / repeat
        j.close()
    return {"write_ms": write * 1e3, "chunk_compute_ms": compute * 1e3, "ratio": write / compute,
            "bytes": sum(v.nbytes for v in outs.values())}


async def kill_resume(spec, peers, xs: list[np.ndarray], name: str) -> dict:
    chaos = LocalNodeChaos(spec.directory)
    async with Client(peers["sat-0"].api, timeout=60) as c:
        acc = await c.submit_job("digits", [{name: x} for x in xs], shards=4, chunk=2, window=1)
        while True:
            info = await c.job(acc["job_id"])
            if info["done"] >= len(xs) // 10:
                break
            await trio.sleep(0.05)
        victim = next(s for s in info["shards"] if s["node"] != "sat-0" and s["done"] < s["inputs"][1] - s["inputs"][0])
        killed = time.time()
        await trio.to_thread.run_sync(chaos.run, "kill", victim["node"])
        info = await c.wait_job(acc["job_id"], 300)
    await trio.to_thread.run_sync(chaos.run, "restart", victim["node"])
    move = next(m for m in info["shards"][victim["shard"]]["moves"] if m["from"] == victim["node"])
    return {"resume_s": move["at"] - killed, "resent": info["resent"], "status": info["status"],
            "why": move["why"][:80]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sats", type=int, default=24)
    ap.add_argument("--inputs", type=int, default=192, help="cloud-mask tiles (64×64); digits jobs get 20× as many")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict = {"machine": f"{platform.node()} {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
                 "sats": args.sats}
    with tempfile.TemporaryDirectory() as d, local_fleet(Path(d), MODELS, args.sats) as (spec, _, peers, _p):
        for model, chunk in (("cloudmask", 8), ("digits", 32)):
            xs, name = tiles(model, args.inputs if model == "cloudmask" else args.inputs * 20)
            ratios, rows = [], []
            for _ in range(args.repeat):
                base = local_rate(model, xs, name, chunk)
                got = trio.run(job_rate, peers, model, xs, name, min(8, args.sats), chunk)
                ratios.append(got["rate"] / base)
                rows.append({"job_per_s": got["rate"], "local_per_s": base, "nodes": got["nodes"]})
            out[model] = {"inputs": len(xs), "chunk": chunk, "ratio_median": statistics.median(ratios), "runs": rows}
            out[f"{model}_checkpoint"] = checkpoint_cost(model, xs, name, chunk)
        xs, name = tiles("digits", 400)
        out["kill_resume"] = [trio.run(kill_resume, spec, peers, xs, name) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"jobs on {args.sats} agents, {out['machine']}, {out['date']}")
    for model in ("cloudmask", "digits"):
        r = out[model]
        best = max(r["runs"], key=lambda x: x["job_per_s"])
        print(f"  {model}: {r['inputs']} inputs, chunks of {r['chunk']}: job / local onnxruntime = "
              f"{r['ratio_median']:.2f}x median ({best['job_per_s']:.0f} vs {best['local_per_s']:.0f} inputs/s, "
              f"{best['nodes']} satellites)")
        c = out[f"{model}_checkpoint"]
        print(f"    checkpoint: {c['write_ms']:.2f} ms to journal {c['bytes']} bytes, {c['ratio']:.2f}x the chunk's "
              f"compute ({c['chunk_compute_ms']:.2f} ms)")
    for k in out["kill_resume"]:
        print(f"  kill → shard placed again: {k['resume_s']:.2f} s, {k['resent']} inputs sent again ({k['why']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
