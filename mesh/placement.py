"""Where a task runs: the node with the earliest expected completion (pure).

The entry node scores every candidate from what it knows without asking:
the physics path to it (shared), and its gossiped state (queue, load, models,
battery, sunlight, learned compute time per model)::

    expected = 2 × path latency                       (request there, result back)
             + (input + output bytes) × 8 / bandwidth × hops   (serialization per hop)
             + 2 × hops × per-hop processing
             + backlog × compute                      (queue wait: tasks ahead per worker)
             + session load                           (if the model is not loaded there yet)
             + compute                                (learned per model per node)

Targets: a node name (run there, whatever it costs), ``auto`` (earliest
expected completion), ``nearest`` (lowest path latency), ``sunlit`` (like
auto, among sunlit nodes).  Nodes that are dead, cannot get the model
(``has_model``; agents fetch it over the mesh, at a cost in ``load_s``), or are
in eclipse below their battery reserve (for heavy work) are not candidates.  A
deadline removes candidates expected to miss it; if none is left the task is
refused with the best estimate, rather than accepted to fail later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGETS = ("auto", "nearest", "sunlit")
PER_HOP_S = 0.0005           # measured: py-libp2p frame handling per hop (docs/benchmarks.md)


class PlacementError(Exception):
    """No node can take the task; the message says why (for a 503)."""


@dataclass(frozen=True)
class Candidate:
    node: str
    latency_s: float             # one-way path latency from the entry (0 for the entry itself)
    hops: int
    has_model: bool = True
    backlog: float = 0.0         # tasks queued or running per worker (gossiped + this entry's in flight)
    compute_s: float | None = None   # learned compute time of this model at this node
    sunlit: bool | None = None   # None: no battery (a ground station)
    low_battery: bool = False    # in eclipse below its reserve: refuses heavy work
    load_s: float = 0.0          # creating the model's session there first (0 if already loaded)


@dataclass(frozen=True)
class Choice:
    node: str
    expected_s: float
    why: str


def expected_completion(c: Candidate, in_bytes: int, out_bytes: int, bandwidth_bps: float,
                        default_compute_s: float) -> float:
    compute = c.compute_s if c.compute_s is not None else default_compute_s
    transfer = 2 * c.latency_s + (in_bytes + out_bytes) * 8.0 / bandwidth_bps * c.hops
    return transfer + 2 * c.hops * PER_HOP_S + c.load_s + max(c.backlog, 0.0) * compute + compute


def choose(target: str, candidates: list[Candidate], *, in_bytes: int, out_bytes: int, bandwidth_bps: float,
           default_compute_s: float, heavy_s: float, time_left_s: float = math.inf) -> Choice:
    """Pick the executor for ``target`` ('auto', 'nearest' or 'sunlit'); PlacementError if none fits."""
    if target not in TARGETS:
        raise ValueError(f"placement target must be one of {TARGETS}, not {target!r}")
    scored = []
    excluded: dict[str, int] = {"lack the model": 0, "in eclipse below their battery reserve": 0, "in eclipse": 0}
    for c in candidates:
        if not c.has_model:
            excluded["lack the model"] += 1
            continue
        compute = c.compute_s if c.compute_s is not None else default_compute_s
        if c.low_battery and compute > heavy_s:
            excluded["in eclipse below their battery reserve"] += 1
            continue
        if target == "sunlit" and c.sunlit is not True:
            excluded["in eclipse"] += 1
            continue
        exp = expected_completion(c, in_bytes, out_bytes, bandwidth_bps, default_compute_s)
        scored.append((c.latency_s if target == "nearest" else exp, c.latency_s, c.node, exp))
    if not scored:
        reasons = ", ".join(f"{n} {why}" for why, n in excluded.items() if n)
        raise PlacementError(f"no node can run it ({reasons or 'no live node'})")
    fits = [s for s in scored if s[3] <= time_left_s]
    if not fits:
        best = min(scored, key=lambda s: s[3])
        raise PlacementError(f"no node can finish it within {time_left_s:.2f} s "
                             f"(best: {best[2]}, expected {best[3]:.2f} s)")
    key, _, node, exp = min(fits)
    why = {"auto": "earliest expected completion", "nearest": "lowest path latency",
           "sunlit": "earliest expected completion among sunlit nodes"}[target]
    return Choice(node, exp, f"{why} ({exp * 1e3:.1f} ms expected, {len(fits)} candidates)")
