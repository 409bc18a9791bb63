"""Membership's probing (SWIM over laser neighbours): pick the next neighbour, run its
round (direct pings, then indirect ones around the link, then a verdict: a failed link
or a suspect), and answer and relay the pings and acks of others' rounds."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

from mesh.gossip_msgs import ALIVE, DEAD, SUSPECT, Ack, Ping, Suspect, SyncRequest
from mesh.membership_events import LinkDown, LinkUp, Send
from mesh.membership_records import _Probe

if TYPE_CHECKING:
    from mesh.dissemination import BroadcastQueue, LinkStateTable
    from mesh.gossip_msgs import Update
    from mesh.membership_config import MembershipConfig
    from mesh.membership_events import Event, LinkDownExpectedFn, NeighboursFn
    from mesh.membership_records import _Suspicion


class Probing:
    """Mixin of ``mesh.membership.Membership``; what it uses of it:"""
    me: int
    config: MembershipConfig
    rng: random.Random
    neighbours_fn: NeighboursFn
    link_down_expected: LinkDownExpectedFn | None
    _inc: dict[int, int]
    _status: dict[int, int]
    _susp: dict[int, _Suspicion]
    _probes: dict[int, _Probe]
    _by_seq: dict[int, int]
    _seq: int
    _relays: dict[tuple[int, int], tuple[float, int]]
    _link_fails: dict[int, int]
    _recheck: list[int]
    _order: list[int]
    _cycle: int
    _known_nbrs: set[int]
    _heard: dict[int, float]
    _rounds_at: dict[int, float]
    lhm: int
    _hold_until: float
    queue: BroadcastQueue
    links: LinkStateTable
    _events: list[Event]
    view_version: int
    _next_probe: float
    _next_gossip: float
    stats: dict[str, int]
    _nbr_lat: Callable[[float], dict[int, float]]                   # NeighboursAndPhysics
    _neighbours: Callable[[float], list[int]]                       # NeighboursAndPhysics
    _lat: Callable[[int, int, float], float | None]                 # NeighboursAndPhysics
    _joining: Callable[[float, int], bool]                          # NeighboursAndPhysics
    _rto: Callable[[float], float]                                  # NeighboursAndPhysics
    _own: Callable[[Update], Update]                                # Dissemination
    _piggy: Callable[..., list[Update]]                             # Dissemination
    _set_suspect: Callable[..., None]                               # ViewChanges
    _digest: Callable[[], tuple]                                    # AntiEntropy

    def _probe_next(self, now: float, out: list[Send]) -> None:
        c = self.config
        self._next_probe = now + c.probe_interval_s * (1 + self.lhm)
        nbrs = self._nbr_lat(now)
        new = [n for n in nbrs if n not in self._known_nbrs]
        if new:  # a link came up (a contact opened, a neighbour appeared): sync with it
            for n in new:
                out.append(Send(n, SyncRequest(*self._digest())))
            self.stats["syncs"] += len(new)
        self._known_nbrs = set(nbrs)
        target = None
        while self._recheck:
            t = self._recheck.pop(0)
            if t in nbrs and t not in self._probes:
                target = t
                break
        rechecking = target is not None
        tries = 0
        while target is None and nbrs and tries < 2 * len(nbrs) + 2:
            tries += 1
            if not self._order:
                self._order = sorted(nbrs)
                self.rng.shuffle(self._order)
                self._cycle += 1
            t = self._order.pop()
            if t not in nbrs or t in self._probes:
                continue
            if self._status[t] == DEAD and self._cycle % c.dead_probe_every:
                continue
            target = t
        if target is None:
            return
        if not rechecking and self._spare(now, target, len(nbrs)):
            self._rounds_at[target] = now
            self.stats["rounds_spared"] += 1
            return
        self._rounds_at[target] = now
        # Quiet rounds (direct pings only, no verdict on silence): a neighbour we hold
        # dead (does it answer again?) or whose link is known down (has it healed?).
        # Its liveness is for its neighbours with working links to judge.
        quiet = self._status[target] == DEAD or self.links.is_down(self.me, target)
        p = _Probe(target, self._next_seq(), now, self._rto(nbrs[target]), quiet)
        # After a round without a direct answer, the re-check tries twice as hard
        # before counting a second strike: 10% loss must not fake a cut link.
        p.max_direct = c.direct_attempts * (2 if self._link_fails.get(target, 0) and not quiet else 1)
        self._probes[target] = p
        self._by_seq[p.seq] = target
        self.stats["probes"] += 1
        self._send_ping(now, p, (self.me, target), out)

    def _spare(self, now: float, target: int, n_nbrs: int) -> bool:
        """Whether this round may be spared (``spare_heard``): ``target``'s own direct ping reached
        us since our last round for it, within one cycle of our neighbours, so it was alive and its
        link to us worked as recently as our round would show.  Only for a neighbour with nothing
        against it (alive, no failed round, link not down; never a re-check): any doubt is probed.

        Each link carried a round from each end per cycle; one now does, at most a cycle later
        for a neighbour that dies (detection: docs/membership.md)."""
        if not self.config.spare_heard:
            return False
        heard = self._heard.get(target)
        if heard is None or heard <= self._rounds_at.get(target, -1e300):
            return False
        if now - heard > n_nbrs * self.config.probe_interval_s * (1 + self.lhm):
            return False
        return self._status[target] == ALIVE and not self._link_fails.get(target) \
            and not self.links.is_down(self.me, target)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_ping(self, now: float, p: _Probe, route: tuple[int, ...], out: list[Send]) -> None:
        to = route[1]
        out.append(Send(to, Ping(p.seq, self.me, p.target, route, tuple(self._piggy(to, first=p.target)))))
        self.stats["pings_sent"] += 1

    def _advance_probe(self, now: float, p: _Probe, out: list[Send]) -> None:
        c = self.config
        direct = (self.me, p.target)
        if p.target not in self._nbr_lat(now):
            self._probes.pop(p.target, None)   # the link closed mid-round: no verdict
            self._by_seq.pop(p.seq, None)
            return
        if not p.indirect:
            if p.attempts < p.max_direct:
                p.attempts += 1
                p.next_at = now + p.rto
                self._send_ping(now, p, direct, out)
                return
            if p.quiet:
                self._finish(now, p, acked=False, direct=False)
                return
            p.indirect = True
            p.ind_start = now
            p.paths = self._indirect_paths(p.target, now)
            self.stats["indirect_rounds"] += 1
            p.path_rto = max([self._path_rto(path, now) for path in p.paths] + [p.rto])
        if p.ind_attempts < c.indirect_attempts:
            # Repeats go out every half RTO; the last one still gets a whole RTO.
            p.ind_attempts += 1
            if p.ind_attempts < c.indirect_attempts:
                p.next_at = p.ind_start + 0.5 * p.path_rto * p.ind_attempts
            else:
                p.next_at = now + p.path_rto
            for path in p.paths:
                self._send_ping(now, p, path, out)
            self._send_ping(now, p, direct, out)   # memberlist's fallback: the link may have healed
            return
        self._finish(now, p, acked=False, direct=False)

    def _path_rto(self, path: tuple[int, ...], now: float) -> float:
        one_way = 0.0
        for a, b in zip(path, path[1:]):
            lat = self._lat(a, b, now)
            one_way += lat if lat is not None else 0.02
        c = self.config
        return (2.0 * one_way * c.rtt_mult + c.rto_margin_s * (len(path) - 1)) * (1 + self.lhm)

    def _usable(self, a: int, b: int, now: float) -> bool:
        exp = self.link_down_expected
        return not self.links.is_down(a, b) and (exp is None or not exp(a, b, now))

    def _indirect_paths(self, target: int, now: float) -> list[tuple[int, ...]]:
        """Up to k routes me → h (→ x) → target that avoid the link me–target.

        Only through live nodes and links not known or expected down; distinct
        first relays so the routes fail independently; 2-hop routes first.
        """
        me = self.me
        st = self._status
        t_nbrs = {n for n, _ in self.neighbours_fn(target, now)}
        mine = [h for h in self._neighbours(now) if h != target and st[h] == ALIVE and self._usable(me, h, now)]
        self.rng.shuffle(mine)
        two, three = [], []
        for h in mine:
            if h in t_nbrs and self._usable(h, target, now):
                two.append((me, h, target))
                continue
            xs = [x for x, _ in self.neighbours_fn(h, now)
                  if x in t_nbrs and x != me and x != target and st.get(x) == ALIVE
                  and self._usable(h, x, now) and self._usable(x, target, now)]
            if xs:
                three.append((me, h, min(xs)))
        paths = two + [(p[0], p[1], p[2], target) for p in three]
        return paths[: self.config.indirect_paths]

    def _finish(self, now: float, p: _Probe, *, acked: bool, direct: bool) -> None:
        c = self.config
        t = p.target
        self._probes.pop(t, None)
        self._by_seq.pop(p.seq, None)
        if p.quiet and self._status[t] == DEAD:
            # If it answered although we hold it dead (partition healed, restart),
            # it has already read our Dead record on the ping (see _piggy) and will
            # refute with a higher incarnation; nothing else to do here.
            return
        if p.quiet and not acked:
            self._link_fails[t] = self._link_fails.get(t, 0) + 1   # still down
            return
        if acked:
            if not p.quiet:
                self.lhm = max(0, self.lhm - 1)
            if direct:
                self._link_fails[t] = 0
                if self.links.is_down(self.me, t):
                    self._report_link(now, t, up=True)
            else:
                self._link_failed(now, t)
            return
        if now < self._hold_until or self._joining(now, t):
            self.stats["verdicts_held"] += 1
            return   # we are starting or lagged, or it is: this silence proves nothing
        if t not in self._nbr_lat(now):
            return  # the link closed (physics or plan) during the round: no verdict
        self.stats["failed_rounds"] += 1
        self.lhm = min(c.max_lhm, self.lhm + 1)
        if p.paths and p.nacks == 0:
            self.lhm = min(c.max_lhm, self.lhm + 1)  # Lifeguard: relays silent too, suspect ourselves
        node_evidence = bool(p.paths) or not self.links.is_down(self.me, t)
        self._link_failed(now, t)
        if node_evidence:
            st = self._status[t]
            if st == ALIVE:
                self._set_suspect(now, t, self._inc[t], self.me)
            elif st == SUSPECT:
                s = self._susp.get(t)
                if s is not None and s.confirm(self.me):
                    self.queue.push(self._own(Suspect(t, s.incarnation, self.me)))

    def _link_failed(self, now: float, t: int) -> None:
        n = self._link_fails.get(t, 0) + 1
        self._link_fails[t] = n
        if t not in self._recheck:
            self._recheck.append(t)
        if n >= self.config.link_fail_rounds and self._status[t] == ALIVE and not self.links.is_down(self.me, t):
            self._report_link(now, t, up=False)

    def _report_link(self, now: float, t: int, *, up: bool) -> None:
        rec = self.links.report(self.me, t, up, self.me)
        self.queue.push(rec)
        self.view_version += 1
        a, b = rec.a, rec.b
        self._events.append(LinkUp(a, b, self.me, now) if up else LinkDown(a, b, self.me, now))
        self.stats["links_reported_up" if up else "links_reported_down"] += 1
        self._next_gossip = min(self._next_gossip, now)

    def _on_ping(self, now: float, frm: int, msg: Ping, out: list[Send]) -> None:
        route = msg.route
        try:
            i = route.index(self.me)
        except ValueError:
            return
        lat = self._nbr_lat(now)
        if i == len(route) - 1:
            if len(route) == 2 and msg.origin == frm and msg.target == self.me:
                self._heard[frm] = now      # its own round for us, straight over the link
            back = tuple(reversed(route))
            if back[1] in lat:
                out.append(Send(back[1], Ack(msg.seq, msg.origin, self.me, back, tuple(self._piggy(back[1])))))
            return
        nxt = route[i + 1]
        if nxt not in lat:
            return
        if i == 1 and len(route) > 2 and len(self._relays) < self.config.relay_cap:
            rest = 0.0
            for a, b in zip(route[1:], route[2:]):
                x = self._lat(a, b, now)
                rest += x if x is not None else 0.02
            c = self.config
            deadline = now + (2.0 * rest * c.rtt_mult + c.rto_margin_s * (len(route) - 2)) * (1 + self.lhm)
            self._relays[(msg.origin, msg.seq)] = (deadline, msg.target)
        out.append(Send(nxt, Ping(msg.seq, msg.origin, msg.target, route, tuple(self._piggy(nxt)))))

    def _on_ack(self, now: float, frm: int, msg: Ack, out: list[Send]) -> None:
        route = msg.route
        if msg.origin == self.me:
            if route[-1] != self.me:
                return
            self.stats["acks_received"] += 1
            target = self._by_seq.get(msg.seq)
            if target is None or target != msg.target:
                return
            p = self._probes.get(target)
            if p is not None and p.seq == msg.seq:
                self._finish(now, p, acked=True, direct=len(route) == 2)
            return
        try:
            i = route.index(self.me)
        except ValueError:
            return
        if i == len(route) - 1:
            return
        self._relays.pop((msg.origin, msg.seq), None)
        nxt = route[i + 1]
        if nxt in self._nbr_lat(now):
            out.append(Send(nxt, Ack(msg.seq, msg.origin, msg.target, route, tuple(self._piggy(nxt)))))
