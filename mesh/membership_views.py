"""What membership shows of its view (status, incarnations, the dead and the down links,
node states, events) and when it next has work: read-only, over state the rest owns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.gossip_msgs import DEAD, STATUS_NAMES
from mesh.membership_events import Event, Member

if TYPE_CHECKING:
    from mesh.dissemination import LinkStateTable, StateTable
    from mesh.membership_records import _Probe, _Suspicion


class MembershipViews:
    """Mixin of ``mesh.membership.Membership``; what it reads of it:"""
    me: int
    _inc: dict[int, int]
    _status: dict[int, int]
    _dead: frozenset[int] | None
    _susp: dict[int, _Suspicion]
    _probes: dict[int, _Probe]
    _relays: dict[tuple[int, int], tuple[float, int]]
    _events: list[Event]
    _next_probe: float
    _next_gossip: float
    _next_sync: float
    states: StateTable
    links: LinkStateTable

    @property
    def incarnation(self) -> int:
        return self._inc[self.me]

    def status(self, node: int) -> str:
        return STATUS_NAMES[self._status[node]]

    def status_code(self, node: int) -> int:
        return self._status[node]

    def incarnation_of(self, node: int) -> int:
        return self._inc[node]

    def members(self) -> dict[int, Member]:
        return {n: Member(n, STATUS_NAMES[s], self._inc[n]) for n, s in self._status.items()}

    def dead_nodes(self) -> frozenset[int]:
        if self._dead is None:
            self._dead = frozenset(n for n, s in self._status.items() if s == DEAD)
        return self._dead

    def suspects(self) -> frozenset[int]:
        return frozenset(self._susp)

    def down_links(self) -> frozenset[tuple[int, int]]:
        return self.links.down()

    def node_state(self, node: int) -> dict[str, Any] | None:
        rec = self.states.get(node)
        return None if rec is None else rec.as_dict()

    def state_version(self, node: int) -> int:
        return self.states.version(node)

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        """The earliest time ``tick`` has work to do."""
        t = self._next_probe
        if self._next_gossip < t:
            t = self._next_gossip
        if self._next_sync < t:
            t = self._next_sync
        for p in self._probes.values():
            if p.next_at < t:
                t = p.next_at
        if self._susp:
            for s in self._susp.values():
                if s.deadline < t:
                    t = s.deadline
        if self._relays:
            for d, _ in self._relays.values():
                if d < t:
                    t = d
        return t
