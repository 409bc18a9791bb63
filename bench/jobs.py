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
* Checkpoint copy: what the same chunk costs to copy to the home's keeper,
  timed here: the home's record (msgpack of the outputs) and the keeper's
  write of it (``agent/runtime/job_copy_store.py``), against the same compute.
* Kill → resume: a digits job streamed in small chunks; the satellite
  running one shard is killed (SIGKILL); reported is the time until the shard
  is placed elsewhere (its move's timestamp) and the inputs sent again.
* Home kill → take-over: a digits job whose home is killed (SIGKILL) once its
  keeper holds every input; reported is the time until the keeper answers for
  the job and until its first shard is placed again.

    python bench/jobs.py [--sats 24] [--inputs 192] [--repeat 3] [--parts throughput,checkpoint,kill,takeover] [--json]
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

import msgpack
import numpy as np
import onnxruntime as ort
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.ops.chaos_cli import LocalNodeChaos  # noqa: E402
from agent.client import Client  # noqa: E402
from agent.client import ApiError  # noqa: E402
from agent.runtime.job_copy_store import CopyStore  # noqa: E402
from agent.runtime.job_journal import JobJournal, arrays_to_wire  # noqa: E402
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
        k = JobJournal(Path(d) / "keeper.sqlite")
        store = CopyStore(k)
        store.store("bench-job-1", "sat-0", "accept", {"idem_key": None, "created": time.time(),
                                                       "spec": {"model": model, "n": repeat * chunk, "timeout_s": 600}})
        t0 = time.perf_counter()
        for n in range(repeat):
            body = msgpack.packb({"key": f"chunk:{n * chunk}", "shard": 0, "lo": n * chunk, "hi": (n + 1) * chunk,
                                  "node": "sat-1", "outputs": arrays_to_wire(outs)})
            store.store("bench-job-1", "sat-0", "chunk", msgpack.unpackb(body))
        copy = (time.perf_counter() - t0) / repeat
        k.close()
    return {"write_ms": write * 1e3, "chunk_compute_ms": compute * 1e3, "ratio": write / compute,
            "bytes": sum(v.nbytes for v in outs.values()), "copy_ms": copy * 1e3, "copy_ratio": copy / compute,
            "record_bytes": len(body)}


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


async def takeover(spec, peers, xs: list[np.ndarray], name: str, home: str) -> dict:
    chaos = LocalNodeChaos(spec.directory)
    async with Client(peers[home].api, timeout=60) as c:
        acc = await c.submit_job("digits", [{name: x} for x in xs], shards=4, chunk=2, window=1)
        job_id = acc["job_id"]
        while True:
            info = await c.job(job_id)
            keeper = (info["copy"] or {}).get("keeper")
            if keeper:
                async with Client(peers[keeper].api) as k:
                    kept = {j["job_id"]: j for j in (await k.jobs())["kept"]}
                if kept.get(job_id, {}).get("inputs_held") == len(xs) and info["done"] >= len(xs) // 10:
                    break
            await trio.sleep(0.05)
    killed = time.time()
    await trio.to_thread.run_sync(chaos.run, "kill", home)
    try:
        async with Client(peers[keeper].api, timeout=60) as k:
            while True:
                try:
                    await k.job(job_id)
                    break
                except ApiError:
                    await trio.sleep(0.05)
            answered = time.time() - killed
            info = await k.wait_job(job_id, 300)
    finally:
        await trio.to_thread.run_sync(chaos.run, "restart", home)
    placed = min(m["at"] for s in info["shards"] for m in s["moves"] if "taken over" in m["why"])
    return {"keeper": keeper, "answers_s": answered, "placed_s": placed - killed, "resent": info["resent"],
            "status": info["status"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sats", type=int, default=24)
    ap.add_argument("--inputs", type=int, default=192, help="cloud-mask tiles (64×64); digits jobs get 20× as many")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--parts", default="throughput,checkpoint,kill,takeover",
                    help="what to measure (comma-separated): throughput, checkpoint, kill, takeover")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    out: dict = {"machine": f"{platform.node()} {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
                 "sats": args.sats}
    with tempfile.TemporaryDirectory() as d, local_fleet(Path(d), MODELS, args.sats) as (spec, _, peers, _p):
        for model, chunk in (("cloudmask", 8), ("digits", 32)):
            xs, name = tiles(model, args.inputs if model == "cloudmask" else args.inputs * 20)
            ratios, rows = [], []
            for _ in range(args.repeat if "throughput" in parts else 0):
                base = local_rate(model, xs, name, chunk)
                got = trio.run(job_rate, peers, model, xs, name, min(8, args.sats), chunk)
                ratios.append(got["rate"] / base)
                rows.append({"job_per_s": got["rate"], "local_per_s": base, "nodes": got["nodes"]})
            if rows:
                out[model] = {"inputs": len(xs), "chunk": chunk, "ratio_median": statistics.median(ratios),
                              "runs": rows}
            if "checkpoint" in parts:
                out[f"{model}_checkpoint"] = checkpoint_cost(model, xs, name, chunk)
        xs, name = tiles("digits", 400)
        if "kill" in parts:
            out["kill_resume"] = [trio.run(kill_resume, spec, peers, xs, name) for _ in range(args.repeat)]
        if "takeover" in parts:
            out["takeover"] = [trio.run(takeover, spec, peers, xs, name, f"sat-{1 + k % (args.sats - 1)}")
                               for k in range(args.repeat)]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"jobs on {args.sats} agents, {out['machine']}, {out['date']}")
    for model in ("cloudmask", "digits"):
        r = out.get(model)
        if r:
            best = max(r["runs"], key=lambda x: x["job_per_s"])
            print(f"  {model}: {r['inputs']} inputs, chunks of {r['chunk']}: job / local onnxruntime = "
                  f"{r['ratio_median']:.2f}x median ({best['job_per_s']:.0f} vs {best['local_per_s']:.0f} inputs/s, "
                  f"{best['nodes']} satellites)")
        c = out.get(f"{model}_checkpoint")
        if c:
            print(f"  {model} checkpoint: {c['write_ms']:.2f} ms to journal {c['bytes']} bytes, {c['ratio']:.3f}x the "
                  f"chunk's compute ({c['chunk_compute_ms']:.2f} ms); its copy {c['copy_ms']:.2f} ms "
                  f"({c['record_bytes']} bytes), {c['copy_ratio']:.3f}x")
    for k in out.get("kill_resume", []):
        print(f"  kill → shard placed again: {k['resume_s']:.2f} s, {k['resent']} inputs sent again ({k['why']})")
    for k in out.get("takeover", []):
        print(f"  home kill → its keeper {k['keeper']} answers for the job after {k['answers_s']:.1f} s, first shard "
              f"placed again at {k['placed_s']:.1f} s; {k['resent']} inputs sent again; {k['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
