"""Contact plan: when each link will be up over the next T seconds.

Physics is shared knowledge, so every agent can predict when a laser link
will close behind the Earth's limb or a satellite will set below a station's
mask, and open or tear down streams ahead of time; routing and failure
detection can tell a predicted outage from a fault.

The plan samples the topology every ``step_s`` (plus every handover-slot
and inter-shell-slot boundary), then finds each change between samples by bisection on
``Topology.link_up`` to ``tol_s``.  Window edges err inwards: the link is up
on all of [start, end].  A window shorter than ``step_s`` that opens and
closes between two samples can be missed; at a 25° mask no LEO pass is that
short except ones that graze the mask's edge.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mesh.topology import Topology


@dataclass(frozen=True)
class Contact:
    """Link a–b (a < b; b is the ground node for a ground link) is up on [start, end]."""

    a: int
    b: int
    start: float
    end: float
    kind: str          # "laser" or "ground"

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class ContactPlan:
    t0: float
    t1: float
    contacts: tuple[Contact, ...]       # by (start, a, b)
    tol_s: float

    def __post_init__(self) -> None:
        by: dict[tuple[int, int], list[Contact]] = {}
        for c in self.contacts:
            by.setdefault((c.a, c.b), []).append(c)
        object.__setattr__(self, "_by_link", by)

    def between(self, a: int, b: int) -> list[Contact]:
        return list(self._by_link.get((min(a, b), max(a, b)), []))  # type: ignore[attr-defined]

    def of(self, node: int) -> list[Contact]:
        """Every window of a link touching ``node``, by start."""
        return [c for c in self.contacts if node in (c.a, c.b)]

    def up(self, a: int, b: int, t: float) -> bool:
        """Whether the plan has a–b up at ``t`` (within [t0, t1])."""
        return any(c.start <= t <= c.end for c in self.between(a, b))

    def at(self, t: float) -> list[Contact]:
        return [c for c in self.contacts if c.start <= t <= c.end]

    def events(self, node: int | None = None) -> list[tuple[float, str, int, int]]:
        """(t, "up" | "down", a, b) in time order: what an agent acts on.

        Windows open at t0 or close at t1 only because the plan starts or
        ends there, so those edges are not events.
        """
        out = []
        for c in (self.contacts if node is None else self.of(node)):
            if c.start > self.t0:
                out.append((c.start, "up", c.a, c.b))
            if c.end < self.t1:
                out.append((c.end, "down", c.a, c.b))
        out.sort(key=lambda e: (e[0], e[1] == "up", e[2], e[3]))  # downs first at a shared instant
        return out

    def next_in_view(self, node: int, t: float, lasting_s: float = 0.0) -> float | None:
        """The first instant ≥ ``t`` from which ``node`` has a link up for ``lasting_s`` more (``t`` itself if
        one is), if the plan has one: when a ground station can next hear from the constellation.
        A window the plan's end cuts short counts as lasting."""
        starts = [max(c.start, t) for c in self.of(node)
                  if c.end >= t and (c.end - max(c.start, t) >= lasting_s or c.end >= self.t1 - self.tol_s)]
        return min(starts) if starts else None

    def next_change(self, node: int, t: float) -> float | None:
        """The first predicted link change of ``node`` after ``t``, if any in the plan."""
        times = sorted(e[0] for e in self.events(node))
        j = bisect_right(times, t)
        return times[j] if j < len(times) else None


def _refine(topo: "Topology", a: int, b: int, lo: float, hi: float, lo_up: bool, tol: float) -> tuple[float, float]:
    """Shrink [lo, hi] around the change of a–b (state ``lo_up`` at lo) to ≤ tol."""
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if topo.link_up(a, b, mid) == lo_up:
            lo = mid
        else:
            hi = mid
    return lo, hi


def contact_plan(topo: "Topology", t0: float, duration_s: float, *, step_s: float = 10.0, tol_s: float = 0.1,
                 nodes: list[int] | tuple[int, ...] | None = None) -> ContactPlan:
    """Every window of every link (or those touching ``nodes``) in [t0, t0 + duration_s]."""
    if not duration_s > 0 or not step_s > 0 or not tol_s > 0:
        raise ValueError("duration_s, step_s and tol_s must be > 0")
    t1 = t0 + duration_s
    n_steps = max(1, math.ceil(duration_s / step_s))
    times = [t0 + duration_s * j / n_steps for j in range(n_steps + 1)]
    if topo.handover != "all" and len(topo.stations):
        h = topo.handover_interval_s
        times += [b * h for b in range(math.floor(t0 / h) + 1, math.ceil(t1 / h))]
    inter_slots: list[int] = []
    if topo.inter_shell_links:
        h = topo.inter_shell_interval_s
        inter_slots = list(range(math.floor(t0 / h), math.floor(t1 / h) + 1))
        times += [b * h for b in inter_slots[1:]]
    times = sorted(set(times))
    N = topo.n_sats
    want = None if nodes is None else np.array(sorted(set(nodes)), dtype=np.int64)
    # laser candidates: the fixed +Grid, then every inter-shell pair chosen in some slot of the plan
    inter = [topo.inter_shell_at(n * topo.inter_shell_interval_s) for n in inter_slots]
    n_fixed = len(topo.candidates)
    cand = topo.candidates
    if inter:
        extra = np.unique(np.vstack(inter), axis=0)
        cand = np.vstack([cand, extra])
    los = np.r_[topo._check_los, np.ones(len(cand) - n_fixed, dtype=bool)]
    isl_sel = np.arange(len(cand)) if want is None else np.nonzero(np.isin(cand, want).any(axis=1))[0]
    sel_code = cand[isl_sel, 0] * N + cand[isl_sel, 1]
    isl_states = np.empty((len(times), len(isl_sel)), dtype=bool)
    ground_codes: list[np.ndarray] = []
    for j, t in enumerate(times):
        pos = topo.constellation.positions(t)
        up, _ = topo._isl_up(pos, cand[isl_sel], los[isl_sel])
        if inter:                                      # an inter-shell pair is a link only in its slot
            now = topo.inter_shell_at(t)
            up &= (isl_sel < n_fixed) | np.isin(sel_code, now[:, 0] * N + now[:, 1])
        isl_states[j] = up
        if len(topo.stations):
            k, i, _, _ = topo._ground_links(t, pos)
            code = (k + N) * N + i                    # ground node × N + sat: sorts by (ground, sat)
            if want is not None:
                code = code[np.isin(k + N, want) | np.isin(i, want)]
            ground_codes.append(code)
    links = [(int(cand[s, 0]), int(cand[s, 1]), "laser") for s in isl_sel]
    states = [isl_states]
    if ground_codes:
        allc = np.unique(np.concatenate(ground_codes)) if ground_codes else np.empty(0, dtype=np.int64)
        states.append(np.stack([np.isin(allc, c) for c in ground_codes]) if len(allc) else
                      np.empty((len(times), 0), dtype=bool))
        links += [(int(c % N), int(c // N), "ground") for c in allc]
    state = np.concatenate(states, axis=1)
    contacts: list[Contact] = []
    for col in np.nonzero(state.any(axis=0))[0]:
        a, b, kind = links[col]
        s = state[:, col]
        start = t0 if s[0] else None
        for j in np.nonzero(s[1:] != s[:-1])[0]:
            lo, hi = _refine(topo, a, b, times[j], times[j + 1], bool(s[j]), tol_s)
            if s[j]:                                  # going down: last known up instant
                contacts.append(Contact(a, b, float(start), lo, kind))   # type: ignore[arg-type]
                start = None
            else:
                start = hi
        if start is not None:
            contacts.append(Contact(a, b, float(start), t1, kind))
    contacts.sort(key=lambda c: (c.start, c.a, c.b))
    return ContactPlan(t0, t1, tuple(contacts), tol_s)
