"""SWIM membership with Lifeguard, over laser neighbours, orbit-aware (pure, sans-I/O).

Who is alive, how to reach them, and every node's small state, agreed by
gossip over the emulated links.  The object never touches a socket or a
clock: the driver (``agent/runtime/node.py`` or ``mesh/sim``) feeds it time and
messages and sends what it returns.

Integration API::

    m = Membership(me, nodes, neighbours_fn, config, rng,       # nodes: every node index of the fleet
                   incarnation=0, link_down_expected=None)     # config: scaled_config(n, K) for agents
    sends = m.start(now)                      # join: Alive + push-pull sync with one neighbour
    sends = m.tick(now)                       # call when now >= m.next_deadline() (or every ~10 ms)
    sends = m.on_message(now, from_node, msg) # msg: a mesh.gossip_msgs message from neighbour from_node
    sends = m.set_state(now, {"load": 0.3, "queue": 2, "models": ["digits"]})
    ups   = m.piggyback(budget_bytes, to=peer)  # updates to ride on any other frame to peer
    sends = m.absorb(now, ups, from_node=peer)  # updates that rode on another frame
    events = m.take_events()                  # NodeAlive / NodeSuspect / NodeDead / LinkDown / LinkUp / StateChanged / SelfRefuted
    m.status(n) -> "alive" | "suspect" | "dead";  m.members() -> {node: Member}
    m.dead_nodes(), m.down_links()            # what routing must avoid (frozensets); m.view_version bumps on change
    m.node_state(n) -> dict | None

Node ids are the node indices of ``mesh.nodes.NodeNames`` (ints); ``now`` is
any monotonic-enough clock in seconds, the same in every call (agents: wall
time, converted to orbital t inside the hooks).  ``Send(to, msg)``: ``to`` is
always a current laser neighbour; the driver puts ``msg`` on that link.  ``neighbours_fn(node, now) -> [(neighbour, one_way_latency_s)]``
lists the links physics has up at ``now`` for *any* node (shared knowledge:
``lambda i, t: router.snapshot(orbit_t(t)).neighbours(i)``).
``link_down_expected(a, b, now) -> bool`` says a link is down for a reason that
is known, not a failure: the contact plan predicts it closes, or a chaos cut is
in force.  Such links are neither probed nor blamed.

Design (docs/membership.md has the reasons):

* **Probes go to laser neighbours only**, one per protocol period in a
  shuffled round-robin (SWIM), each neighbour at most one round at a time.  A
  round: direct pings with an RTO from the link's physics RTT; then, if no
  ack, *indirect* pings source-routed around the link under test (through a
  neighbour and, on a +Grid square, a neighbour of both), plus one more direct
  ping; then a verdict.
* **A cut link is not a dead node**: if only the indirect probe gets an
  answer, the node is alive and the *link* failed; after ``link_fail_rounds``
  such rounds in a row the link is reported down (a ``LinkState`` flood), and
  up again on the first direct answer.  Only when nothing answers is the node
  suspected.
* **Lifeguard**: the suspicion timeout starts at ``β·min`` and falls
  logarithmically towards ``min = α·log10(n)·T`` as independent suspicions
  arrive (up to the target's neighbour count − 1); a local health multiplier
  (missed acks, missed nacks, refuting suspicions about oneself) stretches
  this node's period and timeouts so a slow node does not accuse healthy ones.
  Relays of indirect probes send a Nack when the target stays silent.
* **A node that lags holds its verdicts**: the driver reports how late its
  own timers ran (``note_lag``).  A node whose event loop was stalled cannot
  tell a silent neighbour from its own stall (acks and refutations may be
  sitting unread), so past ``lag_tolerance_s`` its local health degrades and
  it takes no verdict (no suspicion, no failed link, no expiry) until its loop
  has run on time for a while.  The same hold covers start-up, ours
  (``start_grace_s``) and a neighbour's: no verdict about a neighbour within
  ``join_grace_s`` of its link (re)opening (``link_opened``).
* **Neighbours judge**: a suspicion expires into a death only at the
  suspect's laser neighbours (they probe it, its refutation reaches them in
  one hop); farther nodes wait ``remote_verdict_mult`` × longer.
* **Death only on expiry**: a node is declared dead only when its suspicion
  expires unrefuted; a suspected node refutes with a higher incarnation.
  Deaths, suspicions, refutations and link states are gossiped fleet-wide;
  a restarted node learns its old incarnation from its neighbours' sync and
  rejoins above it.
* **Dissemination**: updates ride on every probe and ack, are flushed eagerly
  to neighbours when news arrives, and are re-sent per the transmit-limited
  queue (:mod:`mesh.dissemination`); a push-pull digest sync on join, with
  newly-up neighbours and periodically repairs anything gossip dropped.

Layout: ``Membership`` (here: the constructor and the driving API) is made of mixins
that share ``self``, one concern per module, each declaring what it uses of the
object: views (``mesh.membership_views``), neighbours and physics
(``mesh.membership_neighbours``), probing (``mesh.membership_probing``),
dissemination (``mesh.membership_gossip``), changes to the view
(``mesh.membership_changes``) and anti-entropy (``mesh.membership_sync``). Its
configuration, outputs and events, and internal records have their own modules
(``mesh.membership_config``, ``mesh.membership_events``, ``mesh.membership_records``);
everything is re-exported here.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterable

from mesh.dissemination import BroadcastQueue, LinkStateTable, StateTable, per_neighbour_limit
from mesh.gossip_msgs import (ALIVE, DEAD, Ack, Alive, Gossip, HopAck, Message, Nack, Ping, SyncReply, SyncRequest,
                              Update, roster_id)
from mesh.membership_changes import ViewChanges
from mesh.membership_config import (PRESETS, MembershipConfig, constellation_config,  # noqa: F401 (re-exported)
                                    fleet_config, small_config)
from mesh.membership_events import (Event, LinkDown, LinkDownExpectedFn, LinkUp, Member,  # noqa: F401 (re-exported)
                                    NeighboursFn, NodeAlive, NodeDead, NodeSuspect, SelfRefuted, Send,
                                    StateChanged)
from mesh.membership_gossip import Dissemination
from mesh.membership_neighbours import NeighboursAndPhysics
from mesh.membership_probing import Probing
from mesh.membership_records import _Probe, _Suspicion  # noqa: F401 (re-exported)
from mesh.membership_sync import AntiEntropy
from mesh.membership_views import MembershipViews
from mesh.trust import Trust

_INF = math.inf


def _own_copy(u: Update) -> Update:
    return u


class Membership(MembershipViews, NeighboursAndPhysics, Probing, Dissemination, ViewChanges, AntiEntropy):
    """One node's view of the fleet, and the protocol that keeps it current."""

    def __init__(self, me: int, nodes: Iterable[int], neighbours_fn: NeighboursFn, config: MembershipConfig,
                 rng: random.Random, *, incarnation: int = 0, link_down_expected: LinkDownExpectedFn | None = None,
                 reports_links: bool = False, trust: Trust | None = None,
                 records: Callable[[Update], Update] | None = None,
                 state_news: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None):
        """``reports_links``: the driver calls :meth:`link_opened` whenever its link to a
        neighbour connects, so a neighbour whose link never opened has not joined yet.
        ``trust``: sign our records and apply others' only when their origin signed
        them (see :mod:`mesh.trust`); None (the simulator) believes every member.
        ``records``: a :class:`mesh.dissemination.RecordPool` shared by the nodes of one process,
        so they hold one copy of each record received (None: this node keeps its own).
        ``state_news(old, new)``: whether a member's new state matters to placement; when it
        does not (a drift), its copies wait ``config.drift_gossip_s`` at each hop (None: all news)."""
        self.me = me
        self.trust = trust
        self._signed: dict[int, Update] = {}    # with trust: the signed record behind each node's status
        self.reports_links = reports_links
        self.config = config
        self.rng = rng
        self.records = records if records is not None else _own_copy
        self.state_news = state_news
        self._news_queued: set[int] = set()    # members whose queued state record is news, not a drift
        self.neighbours_fn = neighbours_fn
        self.link_down_expected = link_down_expected
        # One key order for every per-node dict: digests are their values, in C.
        self._ids = tuple(dict.fromkeys([*nodes, me]))
        self._inc: dict[int, int] = dict.fromkeys(self._ids, 0)
        self._status: dict[int, int] = dict.fromkeys(self._ids, ALIVE)
        self._sver: dict[int, int] = dict.fromkeys(self._ids, 0)   # node-state versions held
        self._inc[me] = incarnation
        self._roster = roster_id(self._ids)
        self._by: dict[int, int] = {}                 # who suspected / declared a node
        self._n_live = len(self._status)
        self._susp: dict[int, _Suspicion] = {}
        self._probes: dict[int, _Probe] = {}
        self._by_seq: dict[int, int] = {}
        self._seq = 0
        self._relays: dict[tuple[int, int], tuple[float, int]] = {}
        self._link_fails: dict[int, int] = {}
        self._recheck: list[int] = []
        self._order: list[int] = []
        self._cycle = 0
        self._known_nbrs: set[int] = set()
        self._heard: dict[int, float] = {}       # neighbour -> when its own direct ping last reached us
        self._rounds_at: dict[int, float] = {}   # neighbour -> when our last round for it began (or was spared)
        self.lhm = 0
        self._hold_until = -_INF           # no verdicts before this (start-up, own loop lag)
        self._next_lag_bump = -_INF
        self._resend_alive_at = -_INF
        self._opened: dict[int, float] = {}   # neighbour -> when our link to it last (re)opened
        self.queue = BroadcastQueue(config.queue_items, caps={"n": config.state_copies})
        self.states = StateTable(me, config.state_max_bytes, sign=self._own)
        self.links = LinkStateTable(sign=self._own)
        self._events: list[Event] = []
        self._dead: frozenset[int] | None = frozenset()
        self.view_version = 0
        self._started: float | None = None
        self._next_probe = _INF
        self._next_gossip = _INF
        self._next_sync = _INF
        self._last_flush = -_INF
        self._limit_key = (-1, -1)
        self._limit_val = 1
        self.stats = {"probes": 0, "pings_sent": 0, "indirect_rounds": 0, "acks_received": 0, "failed_rounds": 0,
                      "suspicions": 0, "deaths_declared": 0, "refutations": 0, "links_reported_down": 0,
                      "links_reported_up": 0, "nacks_sent": 0, "syncs": 0, "gossip_frames": 0,
                      "lag_events": 0, "verdicts_held": 0, "refutations_resent": 0, "rejected_unsigned": 0,
                      "rejected_window": 0, "rounds_spared": 0}

    # -- driving ------------------------------------------------------------------------

    def start(self, now: float) -> list[Send]:
        """Join: announce ourselves and pull the fleet's view from every neighbour."""
        self._started = now
        self._hold_until = max(self._hold_until, now + self.config.start_grace_s)
        self.queue.push(self._own(Alive(self.me, self.incarnation)))
        out: list[Send] = []
        nbrs = self._neighbours(now)
        self._known_nbrs = set(nbrs)
        if nbrs:  # push-pull with one neighbour, as memberlist joins through one member
            out.append(Send(self.rng.choice(nbrs), SyncRequest(*self._digest())))
            self.stats["syncs"] += 1
        self._next_probe = now + self.rng.uniform(0, self.config.probe_interval_s)
        self._next_sync = now + self.config.sync_interval_s * self.rng.uniform(0.5, 1.0)
        self._next_gossip = now
        return out

    def tick(self, now: float) -> list[Send]:
        if self._started is None:
            return self.start(now)
        out: list[Send] = []
        for p in [p for p in self._probes.values() if p.next_at <= now]:
            self._advance_probe(now, p, out)
        if self._relays:
            for key in [k for k, (d, _) in self._relays.items() if d <= now]:
                _, target = self._relays.pop(key)
                origin, seq = key
                if origin in self._nbr_lat(now):
                    out.append(Send(origin, Nack(seq, origin, target, self.me, tuple(self._piggy(origin)))))
                    self.stats["nacks_sent"] += 1
        if self._susp:
            nbrs = self._nbr_lat(now)
            for node in [n for n, s in self._susp.items() if s.deadline <= now]:
                s = self._susp[node]
                # A node whose loop lagged just now waits until it is punctual
                # again (a refutation may be sitting unread).  Only the suspect's
                # laser neighbours probe it, and its refutation reaches them in
                # one hop: they judge.  A node farther away heard the suspicion
                # and would hear the refutation over several hops of gossip, so
                # it waits longer, as a backstop for a suspect whose neighbours
                # are all gone.
                mult = 1.0 if node in nbrs else self.config.remote_verdict_mult
                later = max(s.start + s.timeout() * mult, self._hold_until, self._join_hold(node))
                if now < later:
                    s.deadline = later
                    self.stats["verdicts_held"] += 1
                    continue
                del self._susp[node]
                self._set_dead(now, node, s.incarnation, self.me)
                self.stats["deaths_declared"] += 1
        if now >= self._next_probe:
            self._probe_next(now, out)
        if now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval_s * self.rng.uniform(0.9, 1.1)
            nbrs = [n for n in self._neighbours(now) if self._status[n] != DEAD]
            if nbrs:
                n = self.rng.choice(nbrs)
                out.append(Send(n, SyncRequest(*self._digest())))
                self.stats["syncs"] += 1
        if now >= self._next_gossip:
            self._flush(now, out)
        return out

    def on_message(self, now: float, from_node: int, msg: Message) -> list[Send]:
        """Handle one message from neighbour ``from_node``; returns what to send."""
        if self._started is None:
            out = self.start(now)
        else:
            out = []
        if from_node not in self._status:
            return out
        news = False
        ups = getattr(msg, "updates", ())
        if ups:
            news = self._absorb(now, ups, from_node)
        if isinstance(msg, Ping):
            self._on_ping(now, from_node, msg, out)
        elif isinstance(msg, Ack):
            self._on_ack(now, from_node, msg, out)
        elif isinstance(msg, Nack):
            if msg.origin == self.me:
                target = self._by_seq.get(msg.seq)
                p = self._probes.get(target) if target is not None else None
                if p is not None and p.seq == msg.seq:
                    p.nacks += 1
        elif isinstance(msg, SyncRequest):
            ids = self._columns(msg)
            if ids is None:   # another roster: answer with ours spelled out
                out.append(Send(from_node, SyncReply(*self._full_digest())))
            else:
                news |= self._merge_digest(now, msg, ids, from_node)
                reply_updates = self._newer_than(msg, ids, self.config.sync_max_bytes)
                digest = self._digest() if not msg.nodes else self._full_digest()
                out.append(Send(from_node, SyncReply(*digest, tuple(reply_updates))))
        elif isinstance(msg, SyncReply):
            ids = self._columns(msg)
            if ids is not None:
                news |= self._merge_digest(now, msg, ids, from_node)
                back = self._newer_than(msg, ids, self.config.sync_max_bytes)
                if back:
                    out.append(Send(from_node, Gossip(tuple(back))))
        elif isinstance(msg, HopAck):
            pass  # delivery's business; the driver routes it to mesh.delivery
        if news or self._next_gossip <= now:   # news, or a refutation / verdict of our own
            self._schedule_flush(now, out)
        return out

    def absorb(self, now: float, updates: Iterable[Update], from_node: int | None = None) -> list[Send]:
        """Apply updates that rode on another frame (e.g. a task); may push news on."""
        out: list[Send] = []
        if self._absorb(now, tuple(updates), from_node) or self._next_gossip <= now:
            self._schedule_flush(now, out)
        return out

    def piggyback(self, budget_bytes: int, to: int | None = None) -> list[Update]:
        """Updates to attach to any outbound frame (to neighbour ``to``), within a byte budget."""
        if to is None:
            total = per_neighbour_limit(self.config.retransmit_mult, self._n_live, 1)
            return self.queue.take(None, budget_bytes, total)
        return self._piggy(to, budget_bytes)

    def set_state(self, now: float, values: dict[str, Any]) -> list[Send]:
        """Publish a new version of this node's state (ValueError if too large)."""
        before = self.states.get(self.me)
        rec = self.states.set_own(values)      # signed by the table (sign=self._own)
        if not self._is_drift(before, rec):
            self._news_queued.add(self.me)
        self._sver[self.me] = rec.version
        self.queue.push(rec)
        self._events.append(StateChanged(self.me, rec.version, now))
        out: list[Send] = []
        if self._started is not None:
            self._schedule_flush(now, out)
        return out
