"""Every change to membership's view passes here: a node's status (alive, suspect with
Lifeguard's falling timeout, dead) and incarnation, its state record, a link's state,
and our own refutation when the fleet suspects us."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from mesh.gossip_msgs import (ALIVE, DEAD, STATUS_NAMES, SUSPECT, Alive, Dead, LinkState, NodeState, Suspect,
                              Update)
from mesh.membership_events import LinkDown, LinkUp, NodeAlive, NodeDead, NodeSuspect, SelfRefuted, StateChanged
from mesh.membership_records import _Suspicion

if TYPE_CHECKING:
    from mesh.dissemination import BroadcastQueue, LinkStateTable, StateTable
    from mesh.membership_config import MembershipConfig
    from mesh.membership_events import Event, NeighboursFn
    from mesh.membership_records import _Probe


class ViewChanges:
    """Mixin of ``mesh.membership.Membership``; what it uses of it:"""
    me: int
    config: MembershipConfig
    neighbours_fn: NeighboursFn
    _inc: dict[int, int]
    _status: dict[int, int]
    _sver: dict[int, int]
    _by: dict[int, int]
    _n_live: int
    _dead: frozenset[int] | None
    _susp: dict[int, _Suspicion]
    _probes: dict[int, _Probe]
    _link_fails: dict[int, int]
    _recheck: list[int]
    _known_nbrs: set[int]
    lhm: int
    _resend_alive_at: float
    queue: BroadcastQueue
    states: StateTable
    links: LinkStateTable
    _events: list[Event]
    view_version: int
    _next_gossip: float
    stats: dict[str, int]
    _own: Callable[[Update], Update]                                # Dissemination

    def _apply_state(self, now: float, u: NodeState) -> bool:
        if u.node == self.me:
            cur = self.states.get(self.me)
            if cur is None or u.version > cur.version or (u.version == cur.version and u.values != cur.values):
                # The fleet holds a record of ours from before a restart: outbid it.
                self.states.raise_floor(u.version)
                if cur is not None:
                    rec = self.states.set_own(cur.as_dict())     # signed by the table
                    self._sver[self.me] = rec.version
                    self.queue.push(rec)
                    self._events.append(StateChanged(self.me, rec.version, now))
                    self._next_gossip = min(self._next_gossip, now)
            return False
        if u.node not in self._status:
            return False
        if self.states.merge(u):
            self._sver[u.node] = u.version
            self._events.append(StateChanged(u.node, u.version, now))
            return True
        return False

    def _apply_link(self, now: float, u: LinkState) -> bool:
        before = self.links.get(u.a, u.b)
        if not self.links.merge(u):
            return False
        was_up = before is None or before.up
        if was_up != u.up:
            self.view_version += 1
            self._events.append(LinkUp(u.a, u.b, u.origin, now) if u.up else LinkDown(u.a, u.b, u.origin, now))
        if self.me in (u.a, u.b) and not u.up:
            # A report that our own link is down: our next direct answer will restore it.
            other = u.b if u.a == self.me else u.a
            self._link_fails.setdefault(other, 0)
        return True

    def _apply_member(self, now: float, u: Update) -> bool:
        node, inc = u.node, u.incarnation
        if node not in self._status:
            return False
        k = u.kind
        if node == self.me:
            mine = self._inc[node]
            if (k == "a" and inc > mine) or (k != "a" and inc >= mine):
                self._refute(now, inc)
            elif k != "a" and now >= self._resend_alive_at and not self.queue.holds(Alive(self.me, mine)):
                # An accusation below our incarnation: our refutation has not got
                # there (lost, or its transmissions ran out). Send it again, at
                # most once a period: on a slow host stale copies of an old
                # accusation keep arriving, and answering each with a flush of
                # frames to every neighbour delays everything (acks included)
                # further, which breeds new accusations.
                self._resend_alive_at = now + self.config.probe_interval_s
                self.stats["refutations_resent"] += 1
                self.queue.push(self._own(Alive(self.me, mine)))
                self._next_gossip = min(self._next_gossip, now)
            return False
        cur_st, cur_inc = self._status[node], self._inc[node]
        if k == "a":
            if inc <= cur_inc:
                return False
            self._set_alive(now, node, inc)
            return True
        if k == "s":
            if inc < cur_inc or (cur_st == DEAD and inc <= cur_inc):
                return False
            if cur_st == SUSPECT and inc == cur_inc:
                s = self._susp.get(node)
                return s is not None and s.confirm(u.by)
            self._set_suspect(now, node, inc, u.by, push=False)
            return True
        # dead
        if inc < cur_inc or (cur_st == DEAD and inc == cur_inc):
            return False
        self._set_dead(now, node, inc, u.by, push=False)
        return True

    def _refute(self, now: float, seen: int) -> None:
        inc = max(self._inc[self.me], seen) + 1
        self._inc[self.me] = inc
        self.lhm = min(self.config.max_lhm, self.lhm + 1)
        self.queue.push(self._own(Alive(self.me, inc)))
        self.stats["refutations"] += 1
        self._events.append(SelfRefuted(inc, now))
        self._next_gossip = min(self._next_gossip, now)

    def _set_alive(self, now: float, node: int, inc: int) -> None:
        was = self._status[node]
        self._inc[node] = inc
        self._susp.pop(node, None)
        self._by.pop(node, None)
        if was != ALIVE:
            self._status[node] = ALIVE
            self._n_live += 1 if was == DEAD else 0
            if was == DEAD:
                self._dead = None
                self.view_version += 1
            self._events.append(NodeAlive(node, inc, now, STATUS_NAMES[was]))
            if was == DEAD:   # back from the dead (restart, healed partition): judge its link afresh
                self._link_fails.pop(node, None)

    def _set_suspect(self, now: float, node: int, inc: int, by: int, *, push: bool = True) -> None:
        was = self._status[node]
        c = self.config
        self._status[node] = SUSPECT
        self._inc[node] = inc
        self._by[node] = by
        if was == DEAD:
            self._n_live += 1
            self._dead = None
            self.view_version += 1
        n = max(self._n_live, 1)
        min_t = c.suspicion_mult * max(1.0, math.log10(n)) * c.probe_interval_s
        # Only its live neighbours over working links can probe it: expect no more confirmations.
        deg = sum(1 for x, _ in self.neighbours_fn(node, now)
                  if self._status.get(x, DEAD) != DEAD and not self.links.is_down(x, node))
        k = min(c.suspicion_k, max(0, deg - 1))
        self._susp[node] = _Suspicion(now, inc, by, k, min_t, min_t * c.suspicion_max_mult)
        if by != self.me and node in self._known_nbrs and node not in self._probes:
            # Its other neighbours are the only ones who can confirm (or see it
            # answer): check it next period rather than when the round-robin says.
            if node in self._recheck:
                self._recheck.remove(node)
            self._recheck.insert(0, node)
        self._events.append(NodeSuspect(node, inc, by, now))
        self.stats["suspicions"] += 1
        if push:
            self.queue.push(self._own(Suspect(node, inc, by)))
            self._next_gossip = min(self._next_gossip, now)

    def _set_dead(self, now: float, node: int, inc: int, by: int, *, push: bool = True) -> None:
        was = self._status[node]
        self._status[node] = DEAD
        self._inc[node] = inc
        self._by[node] = by
        self._susp.pop(node, None)
        if was != DEAD:
            self._n_live -= 1
            self._dead = None
            self.view_version += 1
            self._events.append(NodeDead(node, inc, by, now))
        if push:
            self.queue.push(self._own(Dead(node, inc, by)))
            self._next_gossip = min(self._next_gossip, now)
