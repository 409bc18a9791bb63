"""What :class:`mesh.membership.Membership` hands back (``Send``, ``Member``, the events
of ``take_events``) and the signatures of the hooks its driver gives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mesh.gossip_msgs import Message

NeighboursFn = Callable[[int, float], "list[tuple[int, float]]"]
LinkDownExpectedFn = Callable[[int, int, float], bool]


@dataclass(frozen=True)
class Send:
    """Put ``msg`` on the link to neighbour ``to``."""

    to: int
    msg: Message


@dataclass(frozen=True)
class Member:
    node: int
    status: str
    incarnation: int


@dataclass(frozen=True)
class NodeAlive:
    """A node was (re)confirmed alive: first heard, refuted a suspicion, or came back from dead."""

    node: int
    incarnation: int
    t: float
    was: str = "suspect"


@dataclass(frozen=True)
class NodeSuspect:
    node: int
    incarnation: int
    by: int
    t: float


@dataclass(frozen=True)
class NodeDead:
    node: int
    incarnation: int
    by: int
    t: float


@dataclass(frozen=True)
class LinkDown:
    a: int
    b: int
    by: int
    t: float


@dataclass(frozen=True)
class LinkUp:
    a: int
    b: int
    by: int
    t: float


@dataclass(frozen=True)
class StateChanged:
    node: int
    version: int
    t: float


@dataclass(frozen=True)
class SelfRefuted:
    """This node was suspected or declared dead and answered with ``incarnation``."""

    incarnation: int
    t: float


Event = Any
