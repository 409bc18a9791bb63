"""Membership's dissemination: which records ride on a frame to a neighbour (Lifeguard's
buddy system first, then the transmit-limited queue), eager and periodic flushes, and
the gate every received record passes (windows, signatures) before it is applied."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from mesh.dissemination import per_neighbour_limit
from mesh.gossip_msgs import ALIVE, DEAD, SUSPECT, Alive, Dead, Gossip, Suspect, Update, signer_of
from mesh.membership_events import Send

if TYPE_CHECKING:
    from mesh.dissemination import BroadcastQueue, LinkStateTable, StateTable
    from mesh.gossip_msgs import LinkState, NodeState
    from mesh.membership_config import MembershipConfig
    from mesh.trust import Trust

_INF = math.inf


class Dissemination:
    """Mixin of ``mesh.membership.Membership``; what it uses of it:"""
    me: int
    config: MembershipConfig
    trust: Trust | None
    _signed: dict[int, Update]
    _inc: dict[int, int]
    _status: dict[int, int]
    _sver: dict[int, int]
    _by: dict[int, int]
    _n_live: int
    _known_nbrs: set[int]
    queue: BroadcastQueue
    links: LinkStateTable
    _next_gossip: float
    _last_flush: float
    _limit_key: tuple[int, int]
    _limit_val: int
    records: Callable[[Update], Update]
    state_news: Callable[[dict[str, Any], dict[str, Any]], bool] | None
    _news_queued: set[int]
    states: StateTable
    stats: dict[str, int]
    _nbr_lat: Callable[[float], dict[int, float]]                   # NeighboursAndPhysics
    _apply_state: Callable[[float, NodeState], bool]                # ViewChanges
    _apply_link: Callable[[float, LinkState], bool]                 # ViewChanges
    _apply_member: Callable[[float, Update], bool]                  # ViewChanges

    def _limit(self) -> int:
        key = (self._n_live, len(self._known_nbrs))
        if key != self._limit_key:
            self._limit_key = key
            self._limit_val = per_neighbour_limit(self.config.retransmit_mult, key[0], max(1, key[1]))
        return self._limit_val

    def _record_about(self, node: int) -> Update | None:
        """What we believe about ``node`` as a record (with trust: the signed one we
        hold, or one we sign ourselves; None if we hold no signed copy)."""
        st = self._status[node]
        if st == DEAD:
            u: Update = Dead(node, self._inc[node], self._by.get(node, self.me))
        elif st == SUSPECT:
            u = Suspect(node, self._inc[node], self._by.get(node, self.me))
        else:
            u = Alive(node, self._inc[node])
        if self.trust is None:
            return u
        held = self._signed.get(node)
        if held is not None and held.kind == u.kind and held.incarnation == u.incarnation:
            return held      # any accuser's signed word for this status will do
        if signer_of(u) == self.me:
            return self._own(u)
        return None

    def _own(self, u: Update) -> Update:
        """A record we originate, signed when we have trust (and remembered as ours)."""
        if self.trust is None:
            return u
        u = self.trust.sign(u)
        if u.kind in ("a", "s", "d"):
            self._signed[u.node] = u
        return u

    def _admissible(self, u: Update) -> bool:
        """Bounds every rumour obeys, and with trust its origin's signature.

        A jump beyond a window is refused (an incarnation or version of 2^63−1
        would freeze a node's record for ever).  With trust, an accusation
        (Suspect, Dead) may not raise its subject's incarnation: only the subject
        does that, by a signed Alive.
        """
        k = u.kind
        c = self.config
        if k == "n":
            ok = u.version <= self._sver.get(u.node, 0) + c.version_window
        elif k == "l":
            cur = self.links.get(u.a, u.b)
            ok = u.seq <= (cur.seq if cur else 0) + c.version_window
        else:
            cur_inc = self._inc.get(u.node)
            if cur_inc is None:
                return False
            ok = u.incarnation <= cur_inc + c.incarnation_window
            if ok and k != "a" and self.trust is not None and u.incarnation > cur_inc and u.node != self.me:
                ok = False       # (about us it is our previous life's incarnation: we refute it)
        if not ok:
            self.stats["rejected_window"] += 1
            return False
        if self.trust is not None and self.trust.check(u) is not None:
            self.stats["rejected_unsigned"] += 1
            return False
        return True

    def _piggy(self, to: int, budget: int | None = None, first: int | None = None) -> list[Update]:
        """Updates for a frame to ``to``: what we believe about ``to`` if it is not
        alive (so it can refute), about the probe target if suspect (Lifeguard's
        buddy system), then the queue."""
        budget = self.config.piggyback_bytes if budget is None else budget
        out: list[Update] = []
        st = self._status
        if st.get(to, ALIVE) != ALIVE:
            out.append(self._record_about(to))
        if first is not None and first != to and st.get(first, ALIVE) == SUSPECT:
            out.append(self._record_about(first))
        out = [u for u in out if u is not None]
        if out:
            budget -= sum(u.wire_size for u in out)
        out += self.queue.take(to, budget, self._limit())
        return out

    def _schedule_flush(self, now: float, out: list[Send]) -> None:
        at = self._last_flush + self.config.eager_gap_s
        if now >= at:
            self._flush(now, out)
        elif at < self._next_gossip:
            self._next_gossip = at

    def _flush(self, now: float, out: list[Send]) -> None:
        """Push pending updates to every neighbour that still needs them."""
        self._last_flush = now
        limit = self._limit()
        me, links = self.me, self.links
        nbrs = [n for n in self._nbr_lat(now) if self._status[n] != DEAD and not links.is_down(me, n)]
        if not len(self.queue):
            self._next_gossip = _INF
            return
        budget = self.config.gossip_bytes
        for n in nbrs:
            if self.queue.pending_for(n, limit):
                ups = self._piggy(n, budget)
                if ups:
                    out.append(Send(n, Gossip(tuple(ups))))
                    self.stats["gossip_frames"] += 1
        self.queue.prune(nbrs, limit, 10**9)
        if not len(self.queue):
            self._next_gossip = _INF
        elif self.queue.holds_other_than("n"):
            self._next_gossip = now + self.config.gossip_interval_s
        else:
            # Only state records left: they wait and share frames, so a fleet's
            # steady trickle of battery and load drifts costs fewer frames; a
            # drift waits longest (it rides pings meanwhile).
            if self._news_queued:
                self._news_queued = {n for n in self._news_queued if self.queue.queued(("n", n))}
            wait = self.config.state_gossip_s if self._news_queued else self.config.drift_gossip_s
            self._next_gossip = now + wait

    def _is_drift(self, before: NodeState | None, u: NodeState) -> bool:
        """Whether ``u`` only drifts from ``before`` (the driver's ``state_news`` says it is no
        news); a state its judge cannot read (a peer's odd values) counts as news."""
        if before is None or self.state_news is None:
            return False
        try:
            return not self.state_news(before.as_dict(), u.as_dict())
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            return False

    def _absorb(self, now: float, updates: tuple[Update, ...], frm: int | None) -> bool:
        news = False
        for u in updates:
            if not self._admissible(u):
                continue
            u = self.records(u)           # the instance the process's other nodes hold, if any
            k = u.kind
            if k == "n":
                before = self.states.get(u.node) if self.state_news is not None else None
                changed = self._apply_state(now, u)
            elif k == "l":
                changed = self._apply_link(now, u)
            else:
                changed = self._apply_member(now, u)
            if changed:
                if k != "n" or self.config.eager_state:
                    news = True
                else:
                    # Another node's state is not urgent: it rides the next batched flush, so
                    # a large fleet's steady flood of state records costs frames per period,
                    # not per record (liveness news still goes at once); a drift, later still.
                    wait = self.config.state_gossip_s
                    if self._is_drift(before, u):
                        wait = self.config.drift_gossip_s
                    else:
                        self._news_queued.add(u.node)
                    if self._next_gossip > now + wait:
                        self._next_gossip = now + wait
                if self.trust is not None and k in ("a", "s", "d"):
                    self._signed[u.node] = u
                self.queue.push(u, () if frm is None else (frm,))
            elif frm is not None:
                self.queue.mark_have(u, frm)
        return news
