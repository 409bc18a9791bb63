"""The entry satellite's cache of answers: identical requests are not sent twice.

An answer is reusable when the request is the same computation: the same
model *version* (its SHA-256, so a re-upload under the same name is a miss)
and the same input bytes (name, dtype, shape and data of every input).  The
key is a SHA-256 over exactly that.  Models here are deterministic (ONNX
inference with fixed weights), so a cached answer is the answer.

Only tasks whose placement is left to the fleet are answered from the cache:
a request that names a node (``target: "sat-7"``) asks for execution there,
which chaos experiments and benchmarks rely on.  A request can opt out
(``"cache": false`` in /v1/tasks, ``parameters.cache = false`` in /v2).

Bounded by entries and bytes (least recently used goes first); a hit is
answered at once and not journaled (there is no work to lose).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

MAX_ENTRIES = 4096
MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Answer:
    outputs: dict[str, np.ndarray]
    executor: str            # the node that computed it
    computed_at: float       # wall time of the computation's result
    nbytes: int


def cache_key(model_sha256: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(model_sha256.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class EdgeCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self.bytes = 0
        self.counts: Counter[str] = Counter()    # hit, miss, stored, evicted, too_big

    def get(self, key: str) -> Answer | None:
        ans = self._answers.get(key)
        if ans is None:
            self.counts["miss"] += 1
            return None
        self._answers.move_to_end(key)
        self.counts["hit"] += 1
        return ans

    def put(self, key: str, outputs: dict[str, np.ndarray], executor: str, when: float) -> None:
        nbytes = sum(int(a.nbytes) for a in outputs.values())
        if nbytes > self.max_bytes // 8:          # one answer never crowds out the rest
            self.counts["too_big"] += 1
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        frozen = {k: np.array(v, copy=True) for k, v in outputs.items()}
        for a in frozen.values():
            a.flags.writeable = False                # shared by every later hit
        self._answers[key] = Answer(frozen, executor, when, nbytes)
        self.bytes += nbytes
        self.counts["stored"] += 1
        while len(self._answers) > self.max_entries or self.bytes > self.max_bytes:
            _, gone = self._answers.popitem(last=False)
            self.bytes -= gone.nbytes
            self.counts["evicted"] += 1

    def __len__(self) -> int:
        return len(self._answers)

    def describe(self) -> dict[str, object]:
        asked = self.counts["hit"] + self.counts["miss"]
        return {"entries": len(self), "bytes": self.bytes, **dict(self.counts),
                "hit_rate": round(self.counts["hit"] / asked, 4) if asked else None}
