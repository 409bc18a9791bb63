"""What the storage checks of issue 18 cost, each against the old way in the same run.

* Model load: creating a session from the zoo file by path (the old way) vs.
  reading the bytes, hashing them against the digest they are stored under and
  creating the session from those bytes (``ModelStore.get`` now).  Median of
  ``--loads`` loads per model.
* Journal recovery: reading back N open tasks with one query (the old
  ``open_tasks``, which one damaged row aborted) vs. row by row with the
  quarantine (now).
* Model upload: the write of one blob and its name with the atomic helper
  (fsync file, rename, fsync directory) vs. ``write_bytes`` + rename without
  fsync (the old ``_write_atomic``).

    python bench/storage.py [--loads 5] [--rows 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.atomic import write_atomic  # noqa: E402
from agent.compute.blobstore import read_verified  # noqa: E402
from agent.runtime.journal import COLUMNS, Journal, _row  # noqa: E402
from agent.compute.models import ModelStore, session_options  # noqa: E402
from mesh.wire import TaskRequest, Tensor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def median_s(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_loads(models: Path, n: int) -> dict:
    store = ModelStore(models)
    ort.InferenceSession(str(models / "digits.onnx"), sess_options=session_options(),
                         providers=["CPUExecutionProvider"])          # onnxruntime's one-time start-up
    out = {}
    for name in ("digits", "embed", "cloudmask"):
        path = models / f"{name}.onnx"
        if not path.is_file():
            continue
        sha = store._zoo_sha(name)
        old = median_s(lambda: ort.InferenceSession(str(path), sess_options=session_options(),
                                                    providers=["CPUExecutionProvider"]), n)
        new = median_s(lambda: ort.InferenceSession(read_verified(path, sha), sess_options=session_options(),
                                                    providers=["CPUExecutionProvider"]), n)
        out[name] = {"bytes": path.stat().st_size, "old_ms": old * 1e3, "new_ms": new * 1e3, "ratio": new / old}
    return out


def journal_recovery(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        j = Journal(Path(d) / "t.sqlite")
        x = {"input": Tensor.from_array(np.ones((1, 64), np.float32))}
        j.db.execute("BEGIN")
        for k in range(rows):
            j.accept(TaskRequest(f"sat-0-{k:08d}", "sat-0", "sat-5", "digits", x, 64, deadline=2e9,
                                 model_sha256="ab" * 32), "sat-5", "", float(k))
        j.db.execute("COMMIT")

        def old() -> int:
            found = j.db.execute(f"SELECT {COLUMNS} FROM tasks WHERE finished IS NULL ORDER BY created").fetchall()
            return len([_row(r) for r in found])

        assert old() == rows and len(j.open_tasks()) == rows
        t_old = median_s(old, 3)
        t_new = median_s(j.open_tasks, 3)
        j.close()
    return {"rows": rows, "old_ms": t_old * 1e3, "new_ms": t_new * 1e3, "ratio": t_new / t_old}


def upload_writes(n: int = 20) -> dict:
    data = os.urandom(4 << 20)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "blob.onnx"

        def old() -> None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        t_old = median_s(old, n)
        t_new = median_s(lambda: write_atomic(path, data), n)
    return {"bytes": len(data), "old_ms": t_old * 1e3, "new_ms": t_new * 1e3, "ratio": t_new / t_old}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores", "model_load": model_loads(args.models, args.loads),
              "journal_recovery": journal_recovery(args.rows), "upload_write_4MiB": upload_writes()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"storage checks, {result['machine']}")
    for name, m in result["model_load"].items():
        print(f"  load {name:9s} ({m['bytes'] / 1e6:5.1f} MB): by path {m['old_ms']:7.1f} ms, verified bytes "
              f"{m['new_ms']:7.1f} ms  ratio {m['ratio']:.2f}")
    r = result["journal_recovery"]
    print(f"  recovery of {r['rows']} open tasks: one query {r['old_ms']:.0f} ms, row by row with quarantine "
          f"{r['new_ms']:.0f} ms  ratio {r['ratio']:.2f}")
    w = result["upload_write_4MiB"]
    print(f"  4 MiB blob write: no fsync {w['old_ms']:.1f} ms, atomic helper (fsync file + dir) {w['new_ms']:.1f} ms"
          f"  ratio {w['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
