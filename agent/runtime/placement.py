"""What the entry node knows about every possible executor, for ``mesh.placement``.

The decision is pure (``mesh.placement.choose``); this module gathers its
inputs: path latency and hop count from the healing router (physics minus
what is known down), each node's gossiped state (backlog, models, battery,
learned compute times), sunlight from physics, and what this entry node itself has
learned from results and has in flight (gossip lags by up to a second, so a
burst of submissions would otherwise all pick the same idle node).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

from mesh.membership_config import BATTERY_NEWS_STEP
from mesh.placement import Candidate

EWMA = 0.2


class ComputeTable:
    """Compute time per (node, model), learned from results (exponentially weighted)."""

    def __init__(self, capacity: int = 4096):
        self._s: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self.capacity = capacity

    def observe(self, node: str, model: str, seconds: float) -> None:
        key = (node, model)
        old = self._s.get(key)
        self._s[key] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds
        self._s.move_to_end(key)
        if len(self._s) > self.capacity:
            self._s.popitem(last=False)

    def get(self, node: str, model: str) -> float | None:
        return self._s.get((node, model))

    def of_node(self, node: str) -> dict[str, float]:
        return {m: s for (n, m), s in self._s.items() if n == node}


def compute_from_state(state: dict[str, Any] | None, model: str) -> float | None:
    """A node's own learned compute time for ``model``, from its gossiped ``cm`` list
    (``[model, microseconds, model, microseconds, ...]``)."""
    if not state:
        return None
    cm = state.get("cm") or ()
    for i in range(0, len(cm) - 1, 2):
        if cm[i] == model and isinstance(cm[i + 1], int):
            return cm[i + 1] / 1e6
    return None


def compute_to_state(times: dict[str, float], limit: int = 8) -> list:
    """The ``cm`` list for this node's state: its models' compute times in µs."""
    out: list = []
    for model, s in sorted(times.items())[:limit]:
        out += [model, max(1, int(s * 1e6))]
    return out


def candidates(me: str, model: str, names: Iterable[str], path_of: Callable[[str], tuple[float, int] | None],
               state_of: Callable[[str], dict[str, Any] | None], learned: ComputeTable,
               in_flight: collections.Counter, own: dict[str, Any], load_s: float, model_bytes: int,
               bandwidth_bps: float, sunlit_of: Callable[[str], bool | None]) -> list[Candidate]:
    """Every live node with a route, as ``mesh.placement`` sees it; ``own`` is this node's
    current state (fresher than what it gossiped); ``load_s`` is what creating the
    model's session costs where it is not loaded yet.  A node without the model
    fetches it from the entry node over the mesh: its transfer is added too.
    ``sunlit_of(name)``: sunlight now, from physics (None: a station), not from gossip."""
    out = []
    for name in names:
        if name == me:
            state, latency, hops = own, 0.0, 0
        else:
            path = path_of(name)
            if path is None:
                continue
            latency, hops = path
            state = state_of(name)
            if state is None:
                continue          # not heard of yet: nothing to base an estimate on
        models = state.get("models") or ()
        workers = max(1, int(state.get("workers") or 1))
        backlog = float(state.get("backlog") or 0.0) + in_flight.get(name, 0) / workers
        compute = learned.get(name, model)
        if compute is None:
            compute = compute_from_state(state, model)
        battery = state.get("battery")
        out.append(Candidate(
            node=name, latency_s=latency, hops=hops, backlog=backlog,
            compute_s=compute, sunlit=sunlit_of(name) if battery is not None else None,
            low_battery=bool(state.get("low")),
            load_s=(0.0 if model in (state.get("loaded") or ()) else load_s)
            + (0.0 if model in models else 2 * latency + model_bytes * 8.0 / bandwidth_bps * hops)))
    return out


def state_changed_enough(old: dict[str, Any] | None, new: dict[str, Any],
                         battery_step: float = BATTERY_NEWS_STEP) -> bool:
    """Whether a node's new state is news for placement elsewhere.

    Each published change costs a fleet-wide dissemination, so small drifts
    wait: the backlog must move by half a task per worker, the battery by
    ``battery_step`` (``mesh.membership_config.battery_news_step``: 5% in a small
    fleet), a compute time by a quarter; a model, a session, sunlight or the
    low-battery flag changing is always news.  Sunlight is not gossiped: every node computes
    it from physics (``mesh.world.World.sunlit``), so an eclipse's edge floods nothing.
    """
    if old is None:
        return True
    for key in ("models", "loaded", "low", "workers"):
        if old.get(key) != new.get(key):
            return True
    if abs(float(new.get("backlog") or 0) - float(old.get("backlog") or 0)) >= 0.5:
        return True
    if abs(float(new.get("battery") or 0) - float(old.get("battery") or 0)) >= battery_step - 1e-9:
        return True
    before, after = _cm_dict(old.get("cm")), _cm_dict(new.get("cm"))
    if before.keys() != after.keys():
        return True
    return any(abs(after[m] - before[m]) > 0.25 * max(before[m], 1) for m in after)


def _cm_dict(cm: Any) -> dict[str, int]:
    cm = cm or ()
    return {cm[i]: cm[i + 1] for i in range(0, len(cm) - 1, 2)}
