"""Epidemic dissemination: the broadcast queue, node-state records and link-state records.

Pure data structures that :class:`mesh.membership.Membership` composes; the
agent reaches them through it (``set_state``, ``node_state``, ``down_links``,
``piggyback``, ``absorb``).

**Broadcast queue** (memberlist's transmit-limited queue, adapted to a mesh).
memberlist sends each update λ·log(n) times to random members of a full
mesh: that is what an epidemic needs to reach everyone w.h.p.  Satellites only
talk to their ≤ 4 laser neighbours, so the same total budget is spread over
neighbours: each update goes to each neighbour at most
``ceil(λ·log10(n+1) / degree)`` times (a kind may be capped lower: state
records go once, ``MembershipConfig.state_copies``), never to a neighbour it came from or
that already sent it to us (it has it).  Within a frame's byte budget, updates
never sent to that neighbour go first, newest first, as in memberlist; then
re-sends, fewest copies first and of those the one sent longest ago first (each
neighbour keeps an index of what it may still be sent, so a frame costs what it
carries, not a scan of the queue).  A newer update about the same subject (a node's liveness, a
node's state, a link) replaces the queued one.  The queue is bounded: when
full, the oldest update is dropped (anti-entropy sync repairs what gossip
dropped).

**Node state**: a small dict (load, queue depth, models, battery, low, ...)
per node with a version only its owner increments; last writer wins by
version.  Bounded: at most 16 keys and ``max_bytes`` encoded.

**Link state**: per undirected link, the newest report (``seq``) of whether it
is up, flooded like OSPF link-state advertisements.  Down wins a tie, so
concurrent reports err on the side of routing around a link.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import fields
from typing import Any, Callable, Iterable
from weakref import WeakValueDictionary

from mesh.gossip_msgs import SIG_OVERHEAD, GossipWireError, LinkState, NodeState, Update, check_state_values


class RecordPool:
    """One instance of each record for every membership that holds it.

    The nodes of one process (a satellite host's K satellites) each decode their own copy of
    every record that reaches them, and each holds one state record and, with trust, one signed
    liveness record per member: O(n) per node, O(K·n) per process, ~1–2 KB a record.  Records
    are immutable, so the copies equal to one already held (same fields, same signature) are
    swapped for it; held weakly, a record no one holds any more leaves the pool.

    A record that is itself the pooled instance (the process's decoder hands out the instance it
    decoded before: ``mesh.gossip_msgs``) is recognised by identity, without building its key:
    at starlink-s1's start-up every node absorbs every node's state record, and the key was
    ~a fifth of that."""

    __slots__ = ("_held", "_fields", "_ids", "__weakref__")

    def __init__(self) -> None:
        self._held: WeakValueDictionary[tuple, Update] = WeakValueDictionary()
        self._fields: dict[type, tuple[str, ...]] = {}
        self._ids: dict[int, weakref.ref] = {}       # id(pooled record) -> a reference to it

    def __call__(self, u: Update) -> Update:
        ref = self._ids.get(id(u))
        if ref is not None and ref() is u:
            return u
        # The key is the record's class and fields, signature included, never the record
        # itself: a key that held it would keep it in the pool for ever.
        names = self._fields.get(type(u))
        if names is None:
            names = self._fields[type(u)] = tuple(f.name for f in fields(u))
        key = (type(u), *[getattr(u, n) for n in names])
        if isinstance(u, NodeState):
            # Equal is not the same here: True == 1 == 1.0 and 0.0 == -0.0 would swap one
            # value for another (list items are ints or strings, which cannot be confused).
            key += (tuple(repr(v) if isinstance(v, float) else type(v) for _, v in u.values),)
        held = self._held.get(key)
        if held is None:
            self._held[key] = u
            ident = id(u)
            ids = self._ids
            self._ids[ident] = weakref.ref(u, lambda _r, ident=ident: ids.pop(ident, None))
            return u
        return held

    def __len__(self) -> int:
        return len(self._held)


def per_neighbour_limit(retransmit_mult: float, n_nodes: int, degree: int, floor: int = 2) -> int:
    """memberlist's λ·log10(n+1) total transmissions, spread over ``degree`` neighbours.

    At least ``floor`` (2) per neighbour: one copy lost to 10% link loss is
    then re-sent, and the other neighbours' copies make a miss ~1e-6.
    """
    total = retransmit_mult * math.log10(max(n_nodes, 1) + 1)
    return max(floor, math.ceil(total / max(degree, 1)))


class _Item:
    __slots__ = ("update", "size", "cap", "sent", "last", "have")

    def __init__(self, update: Update, size: int, have: Iterable[int], cap: int):
        self.update = update
        self.size = size
        self.cap = cap                       # copies at most to one neighbour (its kind's)
        self.sent: dict[int, int] = {}       # target -> copies sent to it (-1: in total)
        self.last: dict[int, int] = {}       # target -> the queue's send count at its last copy to it
        self.have: set[int] = set(have)     # neighbours that sent it to us


ALL = -1              # the target that counts transmissions in total (``take(None, ...)``)
MAX_MISFITS = 8       # records passed over for want of room before a take gives up
MAX_TARGETS = 16      # targets whose index is kept (a satellite's 4–6 neighbours and ground contacts)


class _Target:
    """What one target (a neighbour) may still be sent: keys never sent to it, newest last, and
    keys sent to it n times (``again[n]``), longest ago first."""

    __slots__ = ("fresh", "again")

    def __init__(self) -> None:
        self.fresh: dict[tuple, None] = {}
        self.again: list[dict[tuple, None]] = [{}]      # again[0] unused

    def bucket(self, n: int) -> dict[tuple, None]:
        while len(self.again) <= n:
            self.again.append({})
        return self.again[n]

    def drop(self, key: tuple, n: int) -> None:
        if n == 0:
            self.fresh.pop(key, None)
        elif n < len(self.again):
            self.again[n].pop(key, None)


class BroadcastQueue:
    """Updates waiting to be gossiped, with per-neighbour transmit counts.

    Each target keeps an index of what it may still be sent (``_Target``), so a take costs the
    records it takes, not a scan of the queue: at a large fleet's start-up the queue holds a
    thousand state records and a frame a few, and scanning (and sorting) the queue per frame
    was a fifth of a starlink-s1 simulation."""

    def __init__(self, max_items: int = 1024, caps: dict[str, int] | None = None):
        """``caps``: copies at most to one neighbour, by kind of update (e.g. ``{"n": 1}``: state
        records once per neighbour); below the ``limit`` a take is given, never above it."""
        if max_items < 1:
            raise ValueError("a broadcast queue holds at least one item")
        if caps and any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in caps.values()):
            raise ValueError(f"a broadcast queue's copy caps must be whole numbers ≥ 1, not {caps!r}")
        self.max_items = max_items
        self.caps = dict(caps or {})
        self._items: dict[tuple, _Item] = {}   # insertion order = age; newest last
        self._targets: dict[int, _Target] = {}  # least recently used first
        self._kinds: dict[str, int] = {}
        self._sends = itertools.count(1)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def _target(self, t: int) -> _Target:
        """``t``'s index, built from the queue the first time (or again after it was evicted)."""
        tg = self._targets.pop(t, None)
        if tg is None:
            tg = _Target()
            sent = []
            for key, item in self._items.items():
                if t != ALL and t in item.have:
                    continue
                n = item.sent.get(t, 0)
                if n == 0:
                    tg.fresh[key] = None
                elif t == ALL or n < item.cap:
                    sent.append((item.last[t], n, key))
            for _, n, key in sorted(sent):
                tg.bucket(n)[key] = None
            if len(self._targets) >= MAX_TARGETS:      # the least recently used, never the total
                old = next(x for x in self._targets if x != ALL)
                del self._targets[old]
        self._targets[t] = tg
        return tg

    def _remove(self, key: tuple) -> None:
        item = self._items.pop(key)
        for t, tg in self._targets.items():
            tg.drop(key, item.sent.get(t, 0))
        self._kinds[item.update.kind] -= 1

    def push(self, update: Update, have: Iterable[int] = ()) -> None:
        """Queue ``update``, replacing any queued update about the same subject."""
        key = update.key
        if key in self._items:
            self._remove(key)
        item = self._items[key] = _Item(update, update.wire_size, have, self.caps.get(update.kind, 1 << 30))
        for t, tg in self._targets.items():
            if t == ALL or t not in item.have:
                tg.fresh[key] = None
        kind = update.kind
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        if len(self._items) > self.max_items:
            self._remove(next(iter(self._items)))
            self.dropped += 1

    def mark_have(self, update: Update, neighbour: int) -> None:
        """``neighbour`` sent us ``update``: if that is what we hold queued, it needs no copy."""
        item = self._items.get(update.key)
        if item is not None and item.update == update and neighbour not in item.have:
            item.have.add(neighbour)
            tg = self._targets.get(neighbour)
            if tg is not None:
                tg.drop(update.key, item.sent.get(neighbour, 0))

    def pending_for(self, to: int, limit: int) -> bool:
        if limit <= 0:
            return False
        tg = self._target(to)
        return bool(tg.fresh) or any(tg.again[n] for n in range(1, min(limit, len(tg.again))))

    def take(self, to: int | None, budget: int, limit: int) -> list[Update]:
        """Updates for neighbour ``to`` within ``budget`` bytes; counts them as sent.

        Never-sent first, newest first; then those sent fewer than ``limit`` times, fewest
        first, and of those the one sent longest ago first.  A record that does not fit what
        is left is passed over; after ``MAX_MISFITS`` of them the take ends.  ``to=None``
        counts transmissions in total, as memberlist does (``limit`` is then the total).
        """
        if budget <= 0 or limit <= 0 or not self._items:
            return []
        t = ALL if to is None else to
        tg = self._target(t)
        items = self._items
        out: list[Update] = []
        left = budget
        misfits = 0
        moved: list[tuple[tuple, int]] = []
        for n in range(limit):
            keys = tg.fresh if n == 0 else (tg.again[n] if n < len(tg.again) else None)
            if not keys:
                continue
            taken = []
            for key in (reversed(keys) if n == 0 else keys):
                item = items[key]
                if item.size > left:
                    misfits += 1
                    if misfits > MAX_MISFITS:
                        break
                    continue
                out.append(item.update)
                taken.append(key)
                left -= item.size
                if left < 8:
                    break
            for key in taken:
                del keys[key]
                moved.append((key, n + 1))
            if left < 8 or misfits > MAX_MISFITS:
                break
        for key, n in moved:        # after the scan: a copy taken now is not taken twice
            item = items[key]
            item.sent[t] = n
            item.last[t] = next(self._sends)
            if t == ALL or n < item.cap:      # else: done for this neighbour
                tg.bucket(n)[key] = None
        return out

    def prune(self, neighbours: Iterable[int], limit: int, total_limit: int) -> None:
        """Drop items every current neighbour has, or has been sent ``limit`` times, and items
        sent ``total_limit`` times in all."""
        live: set[tuple] = set()
        for nb in neighbours:
            tg = self._target(nb)
            live.update(tg.fresh)
            for n in range(1, min(limit, len(tg.again))):
                live.update(tg.again[n])
        done = self._items.keys() - live
        if total_limit <= 0:
            done = set(self._items)
        elif ALL in self._targets:
            again = self._targets[ALL].again
            for n in range(total_limit, len(again)):
                done.update(again[n])
        for key in done:
            self._remove(key)

    def updates(self) -> list[Update]:
        return [i.update for i in self._items.values()]

    def holds(self, update: Update) -> bool:
        """Whether ``update`` itself is queued (transmissions still pending)."""
        item = self._items.get(update.key)
        return item is not None and item.update == update

    def queued(self, key: tuple) -> bool:
        """Whether an update about ``key``'s subject (``Update.key``) waits in the queue."""
        return key in self._items

    def holds_other_than(self, kind: str) -> bool:
        """Whether any queued update is of another kind than ``kind`` (e.g. membership news among states)."""
        return any(c for k, c in self._kinds.items() if k != kind)


class StateTable:
    """Every node's latest state record; this node's own record is authored here."""

    def __init__(self, me: int, max_bytes: int = 512, sign: Callable[[NodeState], NodeState] | None = None):
        """``sign``: applied to each of our own records (``mesh.trust``; None: unsigned)."""
        self.me = me
        self.max_bytes = max_bytes
        self.sign = sign
        self._records: dict[int, NodeState] = {}
        self._floor = 0

    def raise_floor(self, version: int) -> None:
        """Our next own version must exceed ``version`` (a record from before a restart)."""
        self._floor = max(self._floor, version)

    def set_own(self, values: dict[str, Any], *, at_least: int = 0) -> NodeState:
        """A new version of this node's state; ValueError if too big or malformed."""
        try:
            pairs = check_state_values(values)
        except GossipWireError as exc:
            raise ValueError(str(exc)) from None
        cur = self._records.get(self.me)
        version = max(cur.version if cur else 0, at_least, self._floor) + 1
        rec = NodeState(self.me, version, pairs)
        if rec.wire_size > self.max_bytes:
            raise ValueError(f"node state of {rec.wire_size} bytes exceeds the {self.max_bytes}-byte limit")
        if self.sign is not None:
            rec = self.sign(rec)
        self._records[self.me] = rec
        return rec

    def merge(self, rec: NodeState) -> bool:
        """Apply a record; True if it is newer than what we hold (and should spread)."""
        if rec.wire_size - (SIG_OVERHEAD if rec.sig else 0) > self.max_bytes:
            return False
        cur = self._records.get(rec.node)
        if cur is not None and cur.version >= rec.version:
            return False
        self._records[rec.node] = rec
        return True

    def get(self, node: int) -> NodeState | None:
        return self._records.get(node)

    def version(self, node: int) -> int:
        rec = self._records.get(node)
        return rec.version if rec else 0

    def records(self) -> list[NodeState]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)


class LinkStateTable:
    """The newest report about each link; the set of links reported down."""

    def __init__(self, sign: Callable[[LinkState], LinkState] | None = None) -> None:
        self.sign = sign          # applied to each report we originate (None: unsigned)
        self._records: dict[tuple[int, int], LinkState] = {}
        self._down: frozenset[tuple[int, int]] | None = frozenset()

    def merge(self, rec: LinkState) -> bool:
        cur = self._records.get((rec.a, rec.b))
        if cur is not None and cur.order() >= rec.order():
            return False
        self._records[(rec.a, rec.b)] = rec
        if cur is None or cur.up != rec.up:
            self._down = None
        return True

    def report(self, a: int, b: int, up: bool, origin: int) -> LinkState:
        """A new report by ``origin`` (an endpoint) that supersedes the current one."""
        a, b = min(a, b), max(a, b)
        cur = self._records.get((a, b))
        rec = LinkState(a, b, up, (cur.seq + 1) if cur else 1, origin)
        if self.sign is not None:
            rec = self.sign(rec)
        self.merge(rec)
        return rec

    def get(self, a: int, b: int) -> LinkState | None:
        return self._records.get((min(a, b), max(a, b)))

    def is_down(self, a: int, b: int) -> bool:
        rec = self._records.get((min(a, b), max(a, b)))
        return rec is not None and not rec.up

    def down(self) -> frozenset[tuple[int, int]]:
        if self._down is None:
            self._down = frozenset(k for k, r in self._records.items() if not r.up)
        return self._down

    def records(self) -> list[LinkState]:
        return list(self._records.values())
