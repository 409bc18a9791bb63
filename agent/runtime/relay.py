"""Routed frames (task requests and results, model pieces) carried hop by hop, reliably.

The policies are ``mesh.delivery``'s (per-hop acks with retransmission from
the link's physics RTT, a dedup window, store-and-forward with deadlines) and
``mesh.forwarding``'s (next hop, hop limit, avoided links, hold or drop: the
same decision the simulator's nodes take); this module applies them to real
frames on the agent's links:

* every routed frame is acknowledged by the next hop (a ``HopAck`` control
  frame) and retransmitted until it is, a bounded number of times; a hop
  that never answers is avoided for a while and the frame is routed again;
* a frame that arrives twice (its ack was lost) is acknowledged again and
  otherwise ignored;
* a frame with no route (destination dead, cut off, or behind a link not
  open yet) is held until a route appears or its deadline passes; an
  expired frame is reported to the node, which turns it into a failure with
  the reason, so nothing is dropped silently.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from dataclasses import replace
from typing import Callable, NamedTuple, Union

from agent import wallclock
from agent.links.peers import Peers
from agent.links.transport import LinkLayer
from mesh.delivery import DedupWindow, DeliveryConfig, HopFailed, HopSender, StoreAndForward, Transmit
from mesh.forwarding import DEADLINE, Decision, Forward, Forwarder, Hold
from mesh.wire import Hop, JobCopy, ModelChunk, ModelFetch, TaskQuery, TaskRequest, TaskResult, TaskStatus

log = logging.getLogger(__name__)

Routed = Union[TaskRequest, TaskResult, ModelFetch, ModelChunk, TaskQuery, TaskStatus, JobCopy]
ExpiredFn = Callable[[Routed, str], None]
FRAME_OVERHEAD_BYTES = 256
_NODE = re.compile(r"node (\d+)")


class LinkState(NamedTuple):
    """What routing reads at one instant: orbital time, and what this node knows is down."""

    orbit_t: float
    dead_nodes: frozenset[int]
    down_links: frozenset[tuple[int, int]]     # reported down or cut by chaos (undirected index pairs)


LinkStateFn = Callable[[float], LinkState]     # wall time -> link state


def frame_bytes(msg: Routed) -> int:
    """Approximate wire size, for the serialization term of the RTO (no re-encoding)."""
    if isinstance(msg, (ModelFetch, ModelChunk, TaskQuery, TaskStatus, JobCopy)):
        return FRAME_OVERHEAD_BYTES + len(getattr(msg, "data", b"")) + len(getattr(msg, "record", b"")) + \
            len(getattr(msg, "body", b""))
    tensors = msg.inputs if isinstance(msg, TaskRequest) else msg.outputs
    return FRAME_OVERHEAD_BYTES + sum(t.nbytes for t in tensors.values()) + 64 * len(msg.trace)


class Relay:
    """One node's outstanding hops, held frames and recently seen frame ids."""

    def __init__(self, me: str, peers: Peers, links: LinkLayer, forwarder: Forwarder, link_state: LinkStateFn,
                 rtt: Callable[[str, float], float], send_ack: Callable[[str, str], bool],
                 on_expired: ExpiredFn, config: DeliveryConfig):
        self.me = me
        self.peers = peers
        self.links = links
        self.fwd = forwarder
        self.link_state = link_state
        self.send_ack = send_ack
        self.on_expired = on_expired
        self.config = config
        self.names = peers.name_of                   # shared, read only
        self.hops = HopSender(config, lambda to, now: rtt(self.names[to], now))
        self.dedup = DedupWindow(config.dedup_capacity, config.dedup_ttl_s)
        self.store = StoreAndForward(config.store_capacity, config.store_recheck_s)
        self.counts: collections.Counter[str] = collections.Counter()
        # Told the deadline of each hop timer it starts and frame it holds (what that adds to
        # next_deadline(), without recomputing it), so that the node's delivery loop can sleep
        # until its deadlines instead of polling them.
        self.on_deadline: Callable[[float], None] = lambda t: None

    # -- receiving ------------------------------------------------------------------------

    def received(self, msg: Routed, from_node: str) -> bool:
        """Acknowledge a routed frame; True the first time it is seen here."""
        self.send_ack(from_node, msg.hop_id)
        if self.dedup.first(wallclock.now(), msg.hop_id):
            return True
        self.counts["duplicates_dropped"] += 1
        return False

    def seen(self, msg: Routed) -> None:
        """A frame this node originates: a copy bounced back to it is a repeat."""
        self.dedup.first(wallclock.now(), msg.hop_id)

    def on_ack(self, hop_id: str, from_node: str) -> None:
        if from_node not in self.peers:
            return
        late = self.hops.late_acks
        if self.hops.on_ack(wallclock.now(), hop_id, self.peers[from_node].index) is not None:
            self.counts["acked"] += 1
        elif self.hops.late_acks > late:    # after the hop was given up: it was slow, not dead
            self.counts["late_acks"] += 1

    # -- sending ------------------------------------------------------------------------------

    def _named(self, text: str) -> str:
        """A reason from ``mesh`` ("node 7") in the fleet's names ("sat-7")."""
        return _NODE.sub(lambda m: self.names.get(int(m.group(1)), m.group(0)), text)

    def _usable(self, index: int) -> bool:
        """The link to neighbour ``index`` is open and not being retired."""
        link = self.links.links.get(self.names.get(index, ""))
        return link is not None and not link.retiring

    def _decide(self, now: float, msg: Routed, dst: str, came_from: str | None) -> Decision:
        s = self.link_state(now)
        prev = self.peers[came_from].index if came_from in self.peers else None
        return self.fwd.decide(now, s.orbit_t, self.peers[dst].index, msg.ttl, msg.deadline,
                               dead_nodes=s.dead_nodes, down_links=s.down_links, came_from=prev, usable=self._usable)

    def next_hop(self, dst: str, came_from: str | None = None) -> str | None:
        """The neighbour a frame for ``dst`` would go to now, or None (no usable route)."""
        if dst not in self.peers or dst == self.me:
            return None
        now = wallclock.now()
        s = self.link_state(now)
        prev = self.peers[came_from].index if came_from in self.peers else None
        nh = self.fwd.next_hop(now, s.orbit_t, self.peers[dst].index, dead_nodes=s.dead_nodes,
                               down_links=s.down_links, came_from=prev, usable=self._usable)
        return None if nh is None else self.names.get(nh)

    def send(self, msg: Routed, dst: str, came_from: str | None = None, hop: Hop | None = None) -> str:
        """Start ``msg`` towards ``dst``: "" once it is on its way, held, or reported
        expired (``on_expired``), else why it cannot go.

        ``hop`` is this node's trace entry; its departure is stamped at the
        hand-off to the link, after routing (and after any time held), so
        that time shows as dwell at this node, not as link time.
        """
        if dst not in self.peers:
            return f"{self.me}: unknown destination {dst!r}"
        if dst == self.me:
            return f"{self.me}: a frame for this node is delivered here, not forwarded"
        now = wallclock.now()
        d = self._decide(now, msg, dst, came_from)
        if type(d) is Forward:
            nh = self.names[d.to]
            out = replace(msg, ttl=d.ttl,
                          trace=msg.trace + (replace(hop, departed=wallclock.now()),) if hop is not None else msg.trace)
            self._transmit(nh, out)    # first: the RTO's physics below is not link time
            self.hops.cancel(msg.hop_id)
            self.hops.send(now, msg.hop_id, d.to, (msg, dst, came_from, hop, out), frame_bytes(msg))
            self.on_deadline(self.hops.next_at(msg.hop_id))
            return ""
        if type(d) is Hold:
            self._hold(now, msg, dst, came_from, hop, d)
            return ""
        reason = f"{self.me}: {self._named(d.reason)}"
        if d.cause == DEADLINE:
            self.counts["expired"] += 1
            self.on_expired(msg, reason)
            return ""
        self.counts["hop_limit"] += 1
        return reason

    def _transmit(self, nh: str, out: Routed) -> None:
        self.counts["frames_sent"] += 1
        if not self.links.send(nh, out):
            self.counts["dropped_at_send"] += 1   # the emulated link lost it; the hop timer resends

    def _hold(self, now: float, msg: Routed, dst: str, came_from: str | None, hop: Hop | None, d: Hold) -> None:
        expired = self.store.hold(now, msg.hop_id, (msg, came_from, hop), self.peers[dst].index, d.until, why=d.why)
        if expired is not None:
            self.counts["expired"] += 1
            self.on_expired(msg, f"{self.me}: {self._named(expired.reason)}")
        else:
            self.counts["held"] += 1
            self.on_deadline(min(d.until, now + self.store.recheck_s))   # its deadline, or the store's next look

    # -- timers -----------------------------------------------------------------------------------

    def tick(self) -> None:
        self._handle(self.hops.tick(wallclock.now()))
        now = wallclock.now()
        for e in self.store.expire(now):
            msg, _, _ = e.item
            self.counts["expired"] += 1
            self.on_expired(msg, f"{self.me}: {self._named(e.reason)}")
        back = self.fwd.expire(now) if self.fwd.avoid else False     # an avoided link is usable again
        if len(self.store) and (back or self.store.next_deadline() <= now):
            self.release()

    def _handle(self, actions: list) -> None:
        now = wallclock.now()
        for x in actions:
            msg, dst, came_from, hop, out = x.item
            to = self.names[x.to]
            if isinstance(x, Transmit):
                self.counts["retransmissions"] += 1
                if to in self.links.links:
                    self._transmit(to, out)
            elif isinstance(x, HopFailed):
                self.counts["hops_failed"] += 1
                log.warning("%s: %s never acknowledged %s (%s); routing around it", self.me, to, msg.hop_id,
                            x.reason)
                self.fwd.hop_failed(now, x.to)
                problem = self.send(msg, dst, came_from, hop)
                if problem:
                    self.on_expired(msg, problem)      # reported, never dropped silently

    def view_changed(self, gone: Callable[[str], bool]) -> None:
        """Membership's view changed: take back transfers to next hops now known dead
        or cut off (``gone``) and route them again; release held frames that have a route."""
        self._handle(self.hops.abandon(wallclock.now(), lambda to: gone(self.names[to])))
        self.release()

    def release(self) -> None:
        """Forward held frames whose destination is reachable again."""
        if not len(self.store):
            return
        now = wallclock.now()
        for h in self.store.release_ready(now, lambda dst: self.next_hop(self.names[dst]) is not None):
            msg, came_from, hop = h.item
            self.counts["released"] += 1
            self.send(msg, self.names[h.dst], came_from, hop)

    def next_deadline(self) -> float:
        t = self.hops.next_deadline() if self.hops else math.inf
        if len(self.store):
            t = min(t, self.store.next_deadline(), self.fwd.next_expiry())
        return t

    def describe(self) -> dict[str, object]:
        return {"outstanding_hops": len(self.hops), "held": len(self.store),
                "held_frames": [{"id": h.item_id, "dst": self.names.get(h.dst), "since": h.since,
                                 "deadline": h.deadline, "why": h.why} for h in self.store.items()[:50]],
                "avoiding": sorted(f"{self.names.get(a, a)}–{self.names.get(b, b)}" for a, b in self.fwd.avoid),
                "counts": dict(self.counts)}
