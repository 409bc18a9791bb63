"""SWIM membership with Lifeguard, over laser neighbours, orbit-aware (pure, sans-I/O).

Who is alive, how to reach them, and every node's small state, agreed by
gossip over the emulated links.  The object never touches a socket or a
clock: the driver (``agent/node.py`` or ``mesh/sim``) feeds it time and
messages and sends what it returns.

Integration API::

    m = Membership(me, nodes, neighbours_fn, config, rng,       # nodes: every node index of the fleet
                   incarnation=0, link_down_expected=None)     # config: fleet_config() for agents
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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mesh.dissemination import BroadcastQueue, LinkStateTable, StateTable, per_neighbour_limit
from mesh.trust import Trust
from mesh.gossip_msgs import (ALIVE, DEAD, STATUS_NAMES, SUSPECT, Ack, Alive, Dead, Gossip, HopAck, LinkState, signer_of,
                              Message, Nack, NodeState, Ping, Suspect, SyncReply, SyncRequest, Update, roster_id)

NeighboursFn = Callable[[int, float], "list[tuple[int, float]]"]
LinkDownExpectedFn = Callable[[int, int, float], bool]


# -- configuration ------------------------------------------------------------------

@dataclass(frozen=True)
class MembershipConfig:
    """Every knob of membership and gossip; presets below say why each has its value."""

    probe_interval_s: float = 0.5          # T: one neighbour probed per period
    rtt_mult: float = 2.0                  # ack timeout = rtt_mult × physics RTT + rto_margin_s
    rto_margin_s: float = 0.02             # processing and transport beyond physics
    direct_attempts: int = 3               # direct pings per round before going indirect
    indirect_paths: int = 2                # k of SWIM: indirect routes around the link under test
    indirect_attempts: int = 2             # sends along each indirect route
    link_fail_rounds: int = 3              # rounds in a row with no direct answer → link down
    suspicion_mult: float = 3.0            # α: min suspicion = α · log10(n) · T
    suspicion_max_mult: float = 4.0        # β: max suspicion = β · min
    suspicion_k: int = 3                   # confirmations that bring the timeout down to min
    max_lhm: int = 4                       # Lifeguard local health multiplier ceiling
    dead_probe_every: int = 4              # probe a neighbour believed dead every Nth cycle
    gossip_interval_s: float = 0.2         # re-send pending updates this often
    state_gossip_s: float = 0.5            # repeat copies of state records (placement hints) go this often
    eager_gap_s: float = 0.005             # news is pushed at once, at most this often per node
    gossip_bytes: int = 2048               # update bytes per gossip frame
    piggyback_bytes: int = 512             # update bytes riding on each probe/ack
    retransmit_mult: float = 2.0           # λ of memberlist: λ·log10(n+1) sends per update (≥ 2 per neighbour)
    sync_interval_s: float = 30.0          # push-pull anti-entropy with one neighbour
    sync_max_bytes: int = 256 * 1024       # updates in one sync answer
    start_grace_s: float = 2.0             # no verdicts while the fleet comes up
    queue_items: int = 1024                # broadcast queue bound
    state_max_bytes: int = 512             # one node's state record, encoded
    relay_cap: int = 1024                  # indirect probes one relay tracks for nacks
    lag_tolerance_s: float = 0.1           # own timers later than this: our silence verdicts are unreliable
    lag_hold_mult: float = 4.0             # after a lag L, hold verdicts for max(T, lag_hold_mult · L)
    remote_verdict_mult: float = 4.0       # a node that cannot probe the suspect waits this × its timeout
    join_grace_s: float = 10.0             # no verdict about a neighbour this soon after its link (re)opened
    unjoined_grace_s: float = 120.0        # ... nor, this long after our start, about one whose link never opened
    incarnation_window: int = 1 << 16      # a rumour may raise an incarnation by at most this (no 2^63−1 for ever)
    version_window: int = 1 << 32          # ... a state version or link report sequence by at most this

    def __post_init__(self) -> None:
        for name in ("probe_interval_s", "gossip_interval_s", "sync_interval_s", "rtt_mult", "state_gossip_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"membership {name} must be > 0")
        for name in ("direct_attempts", "indirect_attempts", "link_fail_rounds", "dead_probe_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"membership {name} must be ≥ 1")
        if self.indirect_paths < 0 or self.suspicion_k < 0 or self.max_lhm < 0:
            raise ValueError("membership indirect_paths, suspicion_k and max_lhm must be ≥ 0")
        if self.join_grace_s < 0 or self.unjoined_grace_s < 0:
            raise ValueError("membership join_grace_s and unjoined_grace_s must be ≥ 0")
        if self.remote_verdict_mult < 1:
            raise ValueError("membership remote_verdict_mult must be ≥ 1")
        if self.lag_tolerance_s <= 0 or self.lag_hold_mult < 0:
            raise ValueError("membership lag_tolerance_s must be > 0 and lag_hold_mult ≥ 0")
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise ValueError("membership suspicion_mult must be > 0 and suspicion_max_mult ≥ 1")
        if self.gossip_bytes < 64 or self.piggyback_bytes < 0:
            raise ValueError("membership gossip_bytes must be ≥ 64 and piggyback_bytes ≥ 0")
        if self.incarnation_window < 1 or self.version_window < 1:
            raise ValueError("membership incarnation_window and version_window must be ≥ 1")


def fleet_config() -> MembershipConfig:
    """Real agent processes (24 on a laptop, py-libp2p, wall clock).

    T = 0.5 s: each agent probes one of its 4 neighbours twice a second, so a
    dead node is probed by someone every ~0.5 s.  Each frame costs ~0.3–0.5
    ms of CPU in py-libp2p (plus a yamux window update), and 24 agents share
    2 cores here: at T = 0.25 s the probes alone pushed the fleet's task
    overhead past 5 ms (docs/benchmarks.md).  RTO = 1.5 × physics RTT + 50 ms:
    the margin covers event-loop, Noise and yamux delay on a loaded 2-core VM;
    two direct pings, then two indirect sends around the link.  Suspicion
    min = 2 · log10(24) · 0.5 ≈ 1.4 s, max 2.8 s: a refutation needs ~0.2 s to
    come back over 3-hop detours, and confirmations from the other
    neighbours (who re-probe a suspect at once) bring it to the minimum, so a
    death is known everywhere in ~2.5 s (goal < 3 s).  Two rounds without a
    direct answer mark a link down; the re-check round doubles its direct
    pings, so 10% loss fakes a cut with p ≈ 6e-8 per round.
    """
    return MembershipConfig(probe_interval_s=0.5, rtt_mult=1.5, rto_margin_s=0.05, direct_attempts=2,
                            link_fail_rounds=2, suspicion_mult=2.0, suspicion_max_mult=2.0,
                            gossip_interval_s=0.1, eager_gap_s=0.01, sync_interval_s=20.0, start_grace_s=5.0)


def constellation_config() -> MembershipConfig:
    """Thousands of satellites (starlink-s1 in the simulator).

    T = 0.5 s keeps probe traffic at ~2 rounds/s per node (~230 B/s);
    links are 2–7 ms, so a 20 ms margin keeps RTOs under 50 ms and three
    direct pings fit in 0.15 s.  Suspicion min = 3 · log10(1584) · 0.5 ≈
    4.8 s, max 14 s: Lifeguard's log(n) scaling kept for safety although a
    refutation only travels a few hops here; a death is known everywhere in
    ~5.5 s.  Anti-entropy every 60 s: a 1,584-node digest is ~5 KB.
    """
    return MembershipConfig(probe_interval_s=0.5, rto_margin_s=0.02, link_fail_rounds=2, suspicion_mult=3.0,
                            suspicion_max_mult=3.0, gossip_interval_s=0.2, sync_interval_s=60.0,
                            start_grace_s=2.0)


def small_config() -> MembershipConfig:
    """Small simulated fleets (unit tests): the fleet preset with a short start-up grace."""
    from dataclasses import replace
    return replace(fleet_config(), start_grace_s=0.5)


PRESETS: dict[str, Callable[[], MembershipConfig]] = {
    "fleet": fleet_config,
    "constellation": constellation_config,
    "small": small_config,
}


# -- outputs and events ------------------------------------------------------------------

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


# -- internal records ---------------------------------------------------------------------

class _Suspicion:
    __slots__ = ("start", "incarnation", "confirmers", "k", "deadline", "min_t", "max_t")

    def __init__(self, start: float, incarnation: int, by: int, k: int, min_t: float, max_t: float):
        self.start = start
        self.incarnation = incarnation
        self.confirmers = {by}
        self.k = k
        self.min_t = min_t
        self.max_t = max_t
        self.deadline = start + self.timeout()

    def timeout(self) -> float:
        """Lifeguard: max at no confirmation, falling as log(C+1)/log(K+1) to min at K."""
        c = len(self.confirmers) - 1
        if self.k < 1:
            return self.min_t
        frac = math.log(c + 1) / math.log(self.k + 1)
        return max(self.min_t, self.max_t - (self.max_t - self.min_t) * frac)

    def confirm(self, by: int) -> bool:
        if by in self.confirmers:
            return False
        self.confirmers.add(by)
        self.deadline = self.start + self.timeout()
        return True


class _Probe:
    __slots__ = ("target", "seq", "start", "rto", "attempts", "next_at", "indirect", "paths", "path_rto",
                 "ind_attempts", "ind_start", "nacks", "quiet", "max_direct")

    def __init__(self, target: int, seq: int, start: float, rto: float, quiet: bool):
        self.target = target
        self.seq = seq
        self.start = start
        self.rto = rto
        self.attempts = 1
        self.next_at = start + rto
        self.indirect = False
        self.paths: list[tuple[int, ...]] = []
        self.path_rto = 0.0
        self.ind_attempts = 0
        self.ind_start = 0.0
        self.nacks = 0
        self.quiet = quiet
        self.max_direct = 1


_INF = math.inf


class Membership:
    """One node's view of the fleet, and the protocol that keeps it current."""

    def __init__(self, me: int, nodes: Iterable[int], neighbours_fn: NeighboursFn, config: MembershipConfig,
                 rng: random.Random, *, incarnation: int = 0, link_down_expected: LinkDownExpectedFn | None = None,
                 reports_links: bool = False, trust: Trust | None = None):
        """``reports_links``: the driver calls :meth:`link_opened` whenever its link to a
        neighbour connects, so a neighbour whose link never opened has not joined yet.
        ``trust``: sign our records and apply others' only when their origin signed
        them (see :mod:`mesh.trust`); None (the simulator) believes every member."""
        self.me = me
        self.trust = trust
        self._signed: dict[int, Update] = {}    # with trust: the signed record behind each node's status
        self.reports_links = reports_links
        self.config = config
        self.rng = rng
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
        self.lhm = 0
        self._hold_until = -_INF           # no verdicts before this (start-up, own loop lag)
        self._next_lag_bump = -_INF
        self._resend_alive_at = -_INF
        self._opened: dict[int, float] = {}   # neighbour -> when our link to it last (re)opened
        self.queue = BroadcastQueue(config.queue_items)
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
                      "rejected_window": 0}

    # -- public views -----------------------------------------------------------------

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
        rec = self.states.set_own(values)      # signed by the table (sign=self._own)
        self._sver[self.me] = rec.version
        self.queue.push(rec)
        self._events.append(StateChanged(self.me, rec.version, now))
        out: list[Send] = []
        if self._started is not None:
            self._schedule_flush(now, out)
        return out

    # -- neighbours and physics --------------------------------------------------------------

    def _nbr_lat(self, now: float) -> dict[int, float]:
        """Current neighbours (physics up, not expected down) → one-way latency."""
        exp = self.link_down_expected
        st = self._status
        out = {}
        for n, lat in self.neighbours_fn(self.me, now):
            if n in st and (exp is None or not exp(self.me, n, now)):
                out[n] = lat
        return out

    def _neighbours(self, now: float) -> list[int]:
        return list(self._nbr_lat(now))

    def _lat(self, a: int, b: int, now: float) -> float | None:
        for n, lat in self.neighbours_fn(a, now):
            if n == b:
                return lat
        return None

    def note_lag(self, now: float, lag_s: float) -> None:
        """The driver's measure of how late its own timers ran (Lifeguard's local health).

        Past ``lag_tolerance_s`` the node degrades its health (at most one step
        per period: longer period and timeouts) and holds every verdict for
        ``max(T, lag_hold_mult × lag)``; probes go on, so answers still count.
        """
        c = self.config
        if lag_s <= c.lag_tolerance_s:
            return
        self.stats["lag_events"] += 1
        self._hold_until = max(self._hold_until, now + max(c.probe_interval_s, c.lag_hold_mult * lag_s))
        if now >= self._next_lag_bump:
            self.lhm = min(c.max_lhm, self.lhm + 1)
            self._next_lag_bump = now + c.probe_interval_s

    def link_opened(self, now: float, node: int) -> None:
        """The driver's link to neighbour ``node`` just (re)connected.

        A peer whose link is that fresh is usually starting (a fleet's start-up
        storm, a restart): loading, connecting its other links, warming its
        models, with its event loop busy for seconds on a loaded host.  Its
        silence proves nothing for ``join_grace_s``.
        """
        if node in self._status:
            self._opened[node] = now

    def _joining(self, now: float, node: int) -> bool:
        return now < self._join_hold(node)

    def _join_hold(self, node: int) -> float:
        """Until when verdicts about ``node`` wait for it to join."""
        opened = self._opened.get(node)
        if opened is None:
            # Never connected: it has not joined yet (a fleet starting on a busy
            # host brings its agents up over a minute or more), not died.
            return self._started + self.config.unjoined_grace_s if self.reports_links and self._started is not None else -_INF
        return opened + self.config.join_grace_s

    def holding_verdicts(self, now: float) -> bool:
        """Whether silence is not being judged at ``now`` (start-up, or the loop lagged)."""
        return self._started is None or now < self._hold_until

    def _rto(self, one_way: float) -> float:
        c = self.config
        return (2.0 * one_way * c.rtt_mult + c.rto_margin_s) * (1 + self.lhm)

    # -- probing ---------------------------------------------------------------------------

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

    # -- messages ---------------------------------------------------------------------------

    def _on_ping(self, now: float, frm: int, msg: Ping, out: list[Send]) -> None:
        route = msg.route
        try:
            i = route.index(self.me)
        except ValueError:
            return
        lat = self._nbr_lat(now)
        if i == len(route) - 1:
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

    # -- dissemination -----------------------------------------------------------------------

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
            # Only state records left, each already pushed at once: their
            # further copies (against loss) wait and share frames, so a fleet's
            # steady trickle of battery and load drifts costs fewer frames.
            self._next_gossip = now + self.config.state_gossip_s

    def _absorb(self, now: float, updates: tuple[Update, ...], frm: int | None) -> bool:
        news = False
        for u in updates:
            if not self._admissible(u):
                continue
            k = u.kind
            if k == "n":
                changed = self._apply_state(now, u)
            elif k == "l":
                changed = self._apply_link(now, u)
            else:
                changed = self._apply_member(now, u)
            if changed:
                news = True
                if self.trust is not None and k in ("a", "s", "d"):
                    self._signed[u.node] = u
                self.queue.push(u, () if frm is None else (frm,))
            elif frm is not None:
                self.queue.mark_have(u, frm)
        return news

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

    # -- anti-entropy --------------------------------------------------------------------------

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
