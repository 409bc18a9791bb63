"""CLI for the model zoo.

``python -m agent.zoo build --out DIR [--only NAME ...] [--force]``
    build models into DIR, skipping those already up to date;
``python -m agent.zoo list``
    list known models;
``python -m agent.zoo bench --out DIR [--only NAME ...] [--repeat N]``
    raw onnxruntime latency (one intra-op thread, as agents run it) of each
    built model on a typical input.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from . import BUILDERS, build, is_current


def _summary(manifest: dict) -> str:
    """One line of the figures a manifest has (they differ per model)."""
    parts = []
    if "accuracy" in manifest:
        parts.append(f"held-out accuracy {manifest['accuracy']:.4f}")
    quality = manifest.get("quality") or {}
    if "min_cosine_int8_vs_float32" in quality:
        parts.append(f"cosine to float32 >= {quality['min_cosine_int8_vs_float32']}")
    parts.append(f"{manifest.get('size_bytes', 0) / 1e6:.1f} MB")
    parts.append(f"sha256 {manifest['sha256'][:16]}")
    return "  ".join(parts)


def _typical_inputs(name: str, manifest: dict) -> tuple[str, dict]:
    """A representative task input for ``name`` (described, as arrays)."""
    import numpy as np

    sample = (manifest.get("samples") or [{}])[0].get("inputs", {})
    if name == "cloudmask":
        # One full 256x256 training-size tile: the sample tile, mirrored to fill it.
        tile = np.asarray(sample["image"], dtype=np.float32)
        full = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
        full = np.concatenate([full, full[:, :, :, ::-1]], axis=3)[:, :, :256, :256]
        return "1 tile 4x256x256", {"image": np.ascontiguousarray(full)}
    if name == "matmul":
        rng = np.random.default_rng(0)
        a = rng.standard_normal((256, 256), dtype=np.float32)
        return "256x256 @ 256x256 (33.6 MFLOP)", {"a": a, "b": a.T.copy()}
    arrays = {}
    for spec in manifest["inputs"]:
        arrays[spec["name"]] = np.asarray(sample[spec["name"]], dtype=spec["dtype"])
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items())
    return f"first sample ({shapes})", arrays


def bench(out: Path, names: list[str], repeat: int) -> None:
    import statistics

    import onnxruntime as ort

    for name in names:
        manifest = is_current(out, name)
        if manifest is None:
            print(f"{name}: not built (or stale) in {out}; run build first")
            continue
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(out / manifest["file"]), opts, providers=["CPUExecutionProvider"])
        load = time.perf_counter() - t0
        what, feed = _typical_inputs(name, manifest)
        sess.run(None, feed)  # first run allocates
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        times.sort()
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        # min is the cost without interference; median/p90 show the machine's noise.
        print(f"{name}: {what}: min {times[0] * 1e3:.2f} ms, median {statistics.median(times) * 1e3:.2f} ms, "
              f"p90 {p90 * 1e3:.2f} ms over {repeat} runs; session load {load:.2f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    known = ", ".join(sorted(BUILDERS))
    b = sub.add_parser("build", help="build zoo models into DIR (skips up-to-date ones)")
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--only", action="append", metavar="NAME",
                   help=f"build only this model (repeatable, or comma-separated); known: {known}")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sub.add_parser("list", help="list known models")
    r = sub.add_parser("bench", help="onnxruntime latency of built models (1 thread)")
    r.add_argument("--out", required=True, type=Path, help="directory the models were built into")
    r.add_argument("--only", action="append", metavar="NAME", help=f"model (repeatable); known: {known}")
    r.add_argument("--repeat", type=int, default=50, help="timed runs per model (default 50)")
    args = p.parse_args(argv)

    if args.cmd == "list":
        print("\n".join(sorted(BUILDERS)))
        return 0

    only = [n for item in args.only or [] for n in item.split(",") if n]
    unknown = [n for n in only if n not in BUILDERS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {sorted(BUILDERS)}")
    names = only or list(BUILDERS)
    if args.cmd == "bench":
        if args.repeat < 1:
            p.error("--repeat must be at least 1")
        bench(args.out, names, args.repeat)
        return 0
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            manifest, rebuilt = build(args.out, only=[name], force=args.force)[name]
        except Exception as exc:  # one model's failure must not hide the others' results
            traceback.print_exc()
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        dt = time.perf_counter() - t0
        state = f"built in {dt:.2f}s" if rebuilt else "up to date"
        print(f"{name}: {state}  {_summary(manifest)}  -> {args.out / manifest['file']}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
