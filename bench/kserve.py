"""The Open Inference Protocol against raw onnxruntime, measured in the same run.

1. Throughput: cloud-mask, batch 1 (its 1×4×128×128 sample tile), 4 concurrent
   clients (tritonclient, one client object per thread), every request executed
   on the entry satellite (``parameters.target`` = the entry) of a 2-satellite
   fleet.  Baseline: raw onnxruntime in this process, the agents' session
   options, 4 threads calling ``session.run`` in a loop, measured while the fleet
   is up and idle.  The agents get as many inference workers as the baseline has
   threads (``--workers 4``; ``--workers 0`` keeps their default of one per
   core: with 2 workers for 4 closed-loop clients a core idles whenever the
   next request is still on its way).  Modes: binary HTTP, gRPC, JSON HTTP.
2. Per-request overhead, digits, one client, on the entry satellite: the node's
   own split (``overhead_ms`` = task total − compute, from the response
   parameters) and the client's view (round trip − raw onnxruntime median).

    python bench/kserve.py [--seconds 3] [--rounds 8] [--workers N] [--json] [--digits 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tritonclient.grpc as tg  # noqa: E402
import tritonclient.http as th  # noqa: E402

from agent.compute.models import session_options  # noqa: E402
from tests.conftest import local_fleet, with_token  # noqa: E402

CLIENTS = 4


def sample(models: Path, name: str, key: str) -> np.ndarray:
    raw = json.loads((models / f"{name}.json").read_text())["samples"][0]["inputs"][key]
    return np.asarray(raw, dtype=np.float32)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of this process and of ``pids`` (Linux /proc)."""
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def in_threads(n: int, seconds: float, make_call, pids: list[int] = ()) -> tuple[float, int, str, float]:
    """Calls per second of ``n`` threads each running its own ``make_call()`` callable in a loop,
    errors, the first error, and CPU seconds per call (this process and ``pids``).

    Each thread makes its own client (tritonclient's HTTP client is gevent-based
    and must stay on the thread that made it) and warms it before the clock starts."""
    counts, errors, first = [0] * n, [0] * n, []
    ready, go = threading.Barrier(n + 1), threading.Event()
    window: list[float] = []

    def loop(i: int) -> None:
        call = make_call()
        call()   # warm: connections, first-run allocations
        ready.wait()
        go.wait()
        while time.perf_counter() < window[0]:
            try:
                call()
                counts[i] += 1
            except Exception as exc:  # counted and shown: a failed call is not throughput
                errors[i] += 1
                first.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    cpu0 = cpu_seconds(pids)
    start = time.perf_counter()
    window.append(start + seconds)
    go.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu0
    return sum(counts) / elapsed, sum(errors), (first or [""])[0], cpu / max(1, sum(counts))


def raw_call(sess: ort.InferenceSession, feed: dict):
    return lambda: (lambda: sess.run(None, feed))


def http_call(url: str, x: np.ndarray, target: str, binary: bool):
    def make():
        client = with_token(th.InferenceServerClient(url, network_timeout=60.0))
        inp = th.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [th.InferRequestedOutput("mask", binary_data=binary)]
        return lambda: client.infer("cloudmask", [inp], outputs=out, parameters={"target": target}).as_numpy("mask")
    return make


def grpc_call(url: str, x: np.ndarray, target: str):
    def make():
        client = with_token(tg.InferenceServerClient(url))
        inp = tg.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return lambda: client.infer("cloudmask", [inp], parameters={"target": target}).as_numpy("mask")
    return make


def digits_overhead(peers, models: Path, n: int) -> dict[str, tuple[float, float, float]]:
    """Per protocol: (median node overhead_ms, median client round trip − raw, raw median) in ms."""
    x = sample(models, "digits", "input")[:1]
    sess = ort.InferenceSession(str(models / "digits.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    raw = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        raw.append((time.perf_counter() - t0) * 1e3)
    raw_ms = statistics.median(raw)
    e = peers["sat-0"]
    out = {}
    h = with_token(th.InferenceServerClient(e.api.split("//", 1)[1]))
    hin = th.InferInput("input", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    hout = [th.InferRequestedOutput(k, binary_data=True) for k in ("label", "probabilities")]
    g = with_token(tg.InferenceServerClient(e.grpc))
    gin = tg.InferInput("input", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)

    def run_http():
        r = h.infer("digits", [hin], outputs=hout, parameters={"target": "sat-0"})
        return r.get_response()["parameters"]["overhead_ms"]

    def run_grpc():
        r = g.infer("digits", [gin], parameters={"target": "sat-0"})
        return r.get_response().parameters["overhead_ms"].double_param

    for label, fn in (("binary HTTP", run_http), ("gRPC", run_grpc)):
        for _ in range(20):
            fn()
        node, rtt = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            node.append(fn())
            rtt.append((time.perf_counter() - t0) * 1e3)
        out[label] = (statistics.median(node), statistics.median(rtt) - raw_ms, raw_ms)
    return out


def throughput(peers, pids: list[int], x: np.ndarray, sess: ort.InferenceSession, seconds: float, rounds: int,
               json_too: bool) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Rounds of raw → modes → raw; each mode's ratio against the mean of its round's two raw runs.

    Also CPU per inference, clients and agents together, against raw's: on a
    shared machine the rates swing with other load, the CPU cost much less."""
    e = peers["sat-0"]
    url = e.api.split("//", 1)[1]
    modes = [("binary HTTP", http_call(url, x, "sat-0", True)), ("gRPC", grpc_call(e.grpc, x, "sat-0"))]
    if json_too:
        modes.append(("JSON HTTP", http_call(url, x, "sat-0", False)))
    raw = raw_call(sess, {"image": x})
    ratios: dict[str, list[float]] = {label: [] for label, _ in modes}
    cpu_ratios: dict[str, list[float]] = {label: [] for label, _ in modes}
    for r in range(rounds):
        before, _, _, raw_cpu0 = in_threads(CLIENTS, seconds, raw)
        rates, cpus = {}, {}
        for label, make in modes:
            rates[label], errors, first, cpus[label] = in_threads(CLIENTS, seconds, make, pids)
            if errors:
                print(f"    {label}: {errors} errors, first: {first}")
        after, _, _, raw_cpu1 = in_threads(CLIENTS, seconds, raw)
        base, base_cpu = (before + after) / 2, (raw_cpu0 + raw_cpu1) / 2
        print(f"  round {r + 1}: raw {before:.1f} → {after:.1f}/s, {base_cpu * 1e3:.1f} ms CPU each; " + "; ".join(
            f"{label} {rate:.1f}/s = {rate / base:.2f}×, {cpus[label] * 1e3:.1f} ms CPU"
            for label, rate in rates.items()), flush=True)
        for label, rate in rates.items():
            ratios[label].append(rate / base)
            cpu_ratios[label].append(base_cpu / cpus[label])
    return ratios, cpu_ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per mode and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--digits", type=int, default=400)
    ap.add_argument("--workers", type=int, default=CLIENTS,
                    help=f"the agents' inference workers (default {CLIENTS}: as many threads as the raw baseline "
                         f"has; 0 = the agent's own default, one per core)")
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--json", action="store_true", help="also the (slow) JSON HTTP mode")
    args = ap.parse_args()
    x = sample(args.models, "cloudmask", "image")
    sess = ort.InferenceSession(str(args.models / "cloudmask.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()} "
          f"date {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f}; "
          f"agents' workers: {args.workers or os.cpu_count()}")
    with tempfile.TemporaryDirectory() as d, \
            local_fleet(Path(d), args.models, 2, workers=args.workers or None) as (_, _, peers, procs):
        print(f"cloud-mask {list(x.shape)} ({x.nbytes} bytes), batch 1, {CLIENTS} clients, executed on the entry "
              f"satellite; raw onnxruntime with {CLIENTS} threads measured before and after each round:")
        ratios, cpu_ratios = throughput(peers, [p.pid for p in procs.values()], x, sess, args.seconds,
                                        args.rounds, args.json)
        for label, rs in ratios.items():
            goal = "" if label.startswith("JSON") else " (goal ≥ 0.9)"
            print(f"  {label:12s} rate: median {statistics.median(rs):.2f}× raw{goal}, rounds "
                  + ", ".join(f"{r:.2f}" for r in rs))
            print(f"  {'':12s} CPU per inference (clients + agents): raw's is {statistics.median(cpu_ratios[label]):.2f}× "
                  f"of it, rounds " + ", ".join(f"{r:.2f}" for r in cpu_ratios[label]))
        print("digits, one client, on the entry satellite (ms, medians):")
        for label, (node, client, raw_ms) in digits_overhead(peers, args.models, args.digits).items():
            print(f"  {label:12s} node overhead (total − compute) {node:.3f} ms (goal < 1 ms); "
                  f"client round trip − raw onnxruntime ({raw_ms:.3f}) {client:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
