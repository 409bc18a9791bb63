"""The forwarding decision: one rule for every driver of a node.

The agent's relay (``agent/runtime/relay.py``, real links) and the simulator's node
(``mesh/sim/node.py``, virtual time) both ask ``Forwarder.decide`` what to do
with a routed frame that is not for this node, and do what it says:

* ``Forward(to, ttl)``: hand it to neighbour ``to``; it leaves with hop limit
  ``ttl`` (one less than it came with);
* ``Hold(until, why)``: no route now: store it (``mesh.delivery.StoreAndForward``)
  until a route appears or ``until`` passes;
* ``Drop(reason)``: it will not go on (hop limit spent, or its deadline has
  passed with no route); the reason is reported, never swallowed.

Rules, and why these variants (the two drivers used to differ):

* **Hop limit.** ``ttl`` counts the links a frame may still cross: a node
  forwards a frame only if ``ttl >= 1`` and sends it on with ``ttl - 1``; a frame
  arriving with ``ttl == 0`` is still delivered if it is for this node (that
  check is the caller's, before asking). This is IPv6's Hop Limit: a limit of 1
  reaches a neighbour. The relay's old rule (refuse when ``ttl <= 1``) made a
  limit of T cover only T-1 links, so the simulator and the agents disagreed by
  one hop on the longest path a frame could take.
* **Avoid set.** A next hop that never acknowledged a frame (``HopFailed``) is
  avoided for ``avoid_s``. The key is the *undirected* link
  ``(min(a, b), max(a, b))`` of node indices: the frame goes one way and its
  ack comes back the other, so a failed hop says the link failed, and the
  router's down-links (``mesh.healing``) are undirected pairs of indices too.
  The relay's old key (the directed pair of node names) had to be normalised
  on every route call and was shown one-way in ``/v1/node``.
* **Hold or drop.** A frame without a deadline (``deadline <= 0``) is held at
  most ``default_hold_s``; one whose deadline has passed is dropped at once
  with the reason a held frame would get on expiry.

Sans-I/O: the router, the link state (dead nodes, down links, which links are
usable) and time come in as arguments; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Union

from mesh.healing import HealingRouter

AVOID_S = 5.0            # a hop that never acknowledged is routed around this long
DEFAULT_HOLD_S = 30.0    # a frame without a deadline is held at most this long


@dataclass(frozen=True, slots=True)
class Forward:
    to: int              # the neighbour to hand the frame to
    ttl: int             # the hop limit the frame leaves with


@dataclass(frozen=True, slots=True)
class Hold:
    until: float         # hold it until then (its deadline) unless a route appears
    why: str


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str
    cause: str           # HOP_LIMIT or DEADLINE


HOP_LIMIT = "hop limit"
DEADLINE = "deadline"


Decision = Union[Forward, Hold, Drop]


def link_key(a: int, b: int) -> tuple[int, int]:
    """The undirected link between nodes ``a`` and ``b``, as routing names it."""
    return (a, b) if a < b else (b, a)


class Forwarder:
    """One node's forwarding decision and the links it avoids after failed hops."""

    __slots__ = ("me", "router", "avoid_s", "default_hold_s", "avoid", "decided_at")

    def __init__(self, me: int, router: HealingRouter, *, avoid_s: float = AVOID_S,
                 default_hold_s: float = DEFAULT_HOLD_S):
        if avoid_s < 0 or default_hold_s <= 0:
            raise ValueError(f"avoid_s must be >= 0 and default_hold_s > 0, not {avoid_s}, {default_hold_s}")
        self.me = me
        self.router = router
        self.avoid_s = avoid_s
        self.default_hold_s = default_hold_s
        self.avoid: dict[tuple[int, int], float] = {}    # link -> avoided until
        # When this node last routed a frame: a node that routes nothing needs no routes warmed
        # ahead for it (the agent's warming reads this: half of an idle starlink-s1 host's busy samples).
        self.decided_at = float("-inf")

    # -- the avoid set ---------------------------------------------------------------

    def hop_failed(self, now: float, to: int) -> None:
        """Neighbour ``to`` never acknowledged a frame: route around that link for ``avoid_s``."""
        self.avoid[link_key(self.me, to)] = now + self.avoid_s

    def avoided(self, now: float) -> frozenset[tuple[int, int]]:
        """The links avoided at ``now``."""
        if not self.avoid:
            return frozenset()
        return frozenset(k for k, until in self.avoid.items() if until > now)

    def expire(self, now: float) -> bool:
        """Forget avoided links whose time is up; True if any went (routes may have come back)."""
        gone = [k for k, until in self.avoid.items() if until <= now] if self.avoid else ()
        for k in gone:
            del self.avoid[k]
        return bool(gone)

    def next_expiry(self) -> float:
        """When an avoided link next comes back (inf if none)."""
        return min(self.avoid.values()) if self.avoid else float("inf")

    # -- the decision ------------------------------------------------------------------

    def next_hop(self, now: float, orbit_t: float, dst: int, *, dead_nodes: frozenset[int] = frozenset(),
                 down_links: Iterable[tuple[int, int]] = frozenset(), came_from: int | None = None,
                 usable: Callable[[int], bool] | None = None) -> int | None:
        """The neighbour towards ``dst`` over the physics at ``orbit_t`` minus dead nodes,
        down links and avoided links, or None. ``usable(n)`` (optional) says whether the
        link to neighbour ``n`` can carry a frame now (e.g. it is open); if not, no route."""
        if self.avoid:
            down_links = frozenset(down_links) | self.avoided(now)
        nh = self.router.next_hop(self.me, dst, orbit_t, down_nodes=dead_nodes, down_links=down_links,
                                  came_from=came_from)
        if nh is not None and usable is not None and not usable(nh):
            return None
        return nh

    def decide(self, now: float, orbit_t: float, dst: int, ttl: int, deadline: float, *,
               dead_nodes: frozenset[int] = frozenset(), down_links: Iterable[tuple[int, int]] = frozenset(),
               came_from: int | None = None, usable: Callable[[int], bool] | None = None) -> Decision:
        """What to do with a frame for ``dst`` (not this node) carrying hop limit ``ttl``
        and ``deadline`` (absolute; <= 0: none), arrived from ``came_from`` (None: ours)."""
        if dst == self.me:
            raise ValueError(f"node {dst}: a frame for this node is delivered, not forwarded")
        self.decided_at = now
        if ttl <= 0:
            return Drop(f"hop limit reached at node {self.me} on the way to node {dst}", HOP_LIMIT)
        nh = self.next_hop(now, orbit_t, dst, dead_nodes=dead_nodes, down_links=down_links, came_from=came_from,
                           usable=usable)
        if nh is not None:
            return Forward(nh, ttl - 1)
        why = f"node {dst} is dead" if dst in dead_nodes else f"no route to node {dst}"
        until = deadline if deadline > 0 else now + self.default_hold_s
        if until <= now:
            return Drop(f"deadline passed before a route to node {dst} appeared ({why})", DEADLINE)
        return Hold(until, why)
