"""The fault schedule of a simulation: what happens to which node or link, and when.

Faults are data (like ``mesh.chaos`` specs) so a scenario is a list anyone
can read, print and replay.  Times are virtual seconds from the start.
Unless ``announced``, the nodes are not told: they must detect it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kill:
    """The agent process dies (kill -9): it stops answering and sending."""

    t: float
    node: int


@dataclass(frozen=True)
class Restart:
    """A killed node starts again with an empty view; its old incarnation is
    learnt from its neighbours and outbid (``incarnation`` is what it boots with)."""

    t: float
    node: int
    incarnation: int = 0


@dataclass(frozen=True)
class Cut:
    """Link a–b carries nothing from ``t`` (until ``until``, if given)."""

    t: float
    a: int
    b: int
    until: float | None = None
    announced: bool = False


@dataclass(frozen=True)
class Partition:
    """Every link between ``group`` and the rest is cut from ``t`` until ``until``."""

    t: float
    group: frozenset[int]
    until: float | None = None


@dataclass(frozen=True)
class Loss:
    """Bernoulli loss ``p`` on every link direction from ``t``."""

    t: float
    p: float


@dataclass(frozen=True)
class StateChange:
    """``node`` publishes new state at ``t``; the simulator times its spread to every node."""

    t: float
    node: int
    values: dict[str, Any] = field(default_factory=lambda: {"load": 0.5})


@dataclass(frozen=True)
class CutOnPath:
    """Cut the middle link of the current shortest path src → dst and time the reroute."""

    t: float
    src: int
    dst: int
    until: float | None = None


@dataclass(frozen=True)
class Tasks:
    """``count`` tasks submitted evenly over [t, t + over_s] between random live nodes."""

    t: float
    count: int
    over_s: float
    deadline_s: float = 30.0
    size: int = 1024
    entries: tuple[int, ...] = ()     # empty: any node not killed in the schedule


Fault = Kill | Restart | Cut | Partition | Loss | StateChange | CutOnPath | Tasks
