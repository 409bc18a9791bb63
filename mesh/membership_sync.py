"""Membership's anti-entropy: the push-pull digest of the whole view (one column per
node, in the roster's order), merging a peer's digest, and the records it lacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from mesh.gossip_msgs import ALIVE, SUSPECT, Alive, Dead, LinkState, Suspect, Update

if TYPE_CHECKING:
    from mesh.dissemination import BroadcastQueue, LinkStateTable, StateTable
    from mesh.trust import Trust


class AntiEntropy:
    """Mixin of ``mesh.membership.Membership``; what it uses of it:"""
    me: int
    trust: Trust | None
    _ids: tuple[int, ...]
    _roster: int
    _inc: dict[int, int]
    _status: dict[int, int]
    _sver: dict[int, int]
    queue: BroadcastQueue
    states: StateTable
    links: LinkStateTable
    _apply_member: Callable[[float, Update], bool]                  # ViewChanges
    _apply_link: Callable[[float, LinkState], bool]                 # ViewChanges
    _record_about: Callable[[int], Update | None]                   # Dissemination

    def _digest(self) -> tuple:
        links: list[int] = []
        for r in self.links.records():
            links += (r.a, r.b, r.seq, 1 if r.up else 0)
        return (self._roster, (), tuple(self._inc.values()), bytes(self._status.values()),
                tuple(self._sver.values()), tuple(links))

    def _full_digest(self) -> tuple:
        d = self._digest()
        return (d[0], self._ids) + d[2:]

    def _columns(self, msg: Any) -> tuple[int, ...] | None:
        """The node ids a digest's columns are about, or None if we cannot tell."""
        if msg.nodes:
            return msg.nodes
        return self._ids if msg.roster == self._roster and len(msg.incarnations) == len(self._ids) else None

    def _merge_digest(self, now: float, msg: Any, ids: tuple[int, ...], frm: int) -> bool:
        if self.trust is not None:
            # A digest is a peer's unsigned claim: believe none of it.  What it
            # shows we lack, the peer sends as signed records (_newer_than).
            return False
        news = False
        st, incs = self._status, self._inc
        if ids is self._ids and msg.incarnations == tuple(incs.values()) and msg.statuses == bytes(st.values()):
            pass  # same membership view: the common case, decided in C
        else:
            for node, inc, s in zip(ids, msg.incarnations, msg.statuses):
                cur = st.get(node)
                if cur is None or (node != self.me and inc == incs[node] and s == cur):
                    continue
                if s == ALIVE:
                    u: Update = Alive(node, inc)
                elif s == SUSPECT:
                    u = Suspect(node, inc, frm)
                else:
                    u = Dead(node, inc, frm)
                if self._apply_member(now, u):
                    news = True
                    self.queue.push(u, (frm,))
        links = msg.links
        for j in range(0, len(links), 4):
            a, b, seq, up = links[j], links[j + 1], links[j + 2], bool(links[j + 3])
            cur_l = self.links.get(a, b)
            if cur_l is not None and (cur_l.seq, not cur_l.up) >= (seq, not up):
                continue
            rec = LinkState(a, b, up, seq, frm)
            if self._apply_link(now, rec):
                news = True
                self.queue.push(rec, (frm,))
        return news

    def _newer_than(self, msg: Any, ids: tuple[int, ...], budget: int) -> list[Update]:
        """Records we hold that a peer's digest shows it lacks (node states and links;
        with trust also membership records, since digests are not believed)."""
        out: list[Update] = []
        if self.trust is not None:
            budget = self._newer_members(msg, ids, budget, out)
        mine = self._sver
        if ids is self._ids or ids == self._ids:
            newer = [n for n, a, b in zip(self._ids, mine.values(), msg.versions) if a > b]
        else:
            theirs = dict(zip(ids, msg.versions))
            newer = [n for n, a in mine.items() if a > theirs.get(n, 0)]
        for n in newer:
            rec = self.states.get(n)
            if rec is None:
                continue
            if rec.wire_size > budget:
                break
            out.append(rec)
            budget -= rec.wire_size
        links = msg.links
        their_links = {(links[j], links[j + 1]): (links[j + 2], not links[j + 3]) for j in range(0, len(links), 4)}
        for rec in self.links.records():
            have = their_links.get((rec.a, rec.b))
            if have is None or have < (rec.seq, not rec.up):
                if rec.wire_size > budget:
                    break
                out.append(rec)
                budget -= rec.wire_size
        return out

    def _newer_members(self, msg: Any, ids: tuple[int, ...], budget: int, out: list[Update]) -> int:
        """Append our signed records about nodes whose (incarnation, status) the
        digest shows behind ours; the budget left."""
        incs, st = self._inc, self._status
        if ids is self._ids and msg.incarnations == tuple(incs.values()) and msg.statuses == bytes(st.values()):
            return budget
        for node, inc, s in zip(ids, msg.incarnations, msg.statuses):
            cur = st.get(node)
            if cur is None or (incs[node], cur) <= (inc, s):
                continue
            rec = self._record_about(node)
            if rec is None:
                continue
            if rec.wire_size > budget:
                break
            out.append(rec)
            budget -= rec.wire_size
        return budget
