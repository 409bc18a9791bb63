"""Routed frames (task requests and results, model pieces) carried hop by hop, reliably.

The policies are ``mesh.delivery``'s (per-hop acks with retransmission from
the link's physics RTT, a dedup window, store-and-forward with deadlines);
this module applies them to real frames on the agent's links:

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
import time
from dataclasses import replace
from typing import Callable, Union

from agent.peers import Peers
from agent.transport import LinkLayer
from mesh.delivery import DedupWindow, DeliveryConfig, HopFailed, HopSender, StoreAndForward, Transmit
from mesh.wire import Hop, ModelChunk, ModelFetch, TaskQuery, TaskRequest, TaskResult, TaskStatus

log = logging.getLogger(__name__)

Routed = Union[TaskRequest, TaskResult, ModelFetch, ModelChunk, TaskQuery, TaskStatus]
RouteFn = Callable[[str, "str | None", frozenset], "str | None"]   # (dst, came_from, links to avoid) -> next hop
ExpiredFn = Callable[[Routed, str], None]

DEFAULT_HOLD_S = 30.0          # a frame without a deadline is held at most this long
AVOID_S = 5.0                  # a hop that never acknowledged is routed around this long
FRAME_OVERHEAD_BYTES = 256


def frame_bytes(msg: Routed) -> int:
    """Approximate wire size, for the serialization term of the RTO (no re-encoding)."""
    if isinstance(msg, (ModelFetch, ModelChunk, TaskQuery, TaskStatus)):
        return FRAME_OVERHEAD_BYTES + len(getattr(msg, "data", b"")) + len(getattr(msg, "record", b""))
    tensors = msg.inputs if isinstance(msg, TaskRequest) else msg.outputs
    return FRAME_OVERHEAD_BYTES + sum(t.nbytes for t in tensors.values()) + 64 * len(msg.trace)


class Relay:
    """One node's outstanding hops, held frames and recently seen frame ids."""

    def __init__(self, me: str, peers: Peers, links: LinkLayer, route: RouteFn,
                 rtt: Callable[[str, float], float], send_ack: Callable[[str, str], bool],
                 on_expired: ExpiredFn, config: DeliveryConfig):
        self.me = me
        self.peers = peers
        self.links = links
        self.route = route
        self.send_ack = send_ack
        self.on_expired = on_expired
        self.config = config
        self.names = {i: e.name for i, e in peers.by_index.items()}
        self.hops = HopSender(config, lambda to, now: rtt(self.names[to], now))
        self.dedup = DedupWindow(config.dedup_capacity, config.dedup_ttl_s)
        self.store = StoreAndForward(config.store_capacity, config.store_recheck_s)
        self.avoid: dict[tuple[str, str], float] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    # -- receiving ------------------------------------------------------------------------

    def received(self, msg: Routed, from_node: str) -> bool:
        """Acknowledge a routed frame; True the first time it is seen here."""
        self.send_ack(from_node, msg.hop_id)
        if self.dedup.first(time.time(), msg.hop_id):
            return True
        self.counts["duplicates_dropped"] += 1
        return False

    def seen(self, msg: Routed) -> None:
        """A frame this node originates: a copy bounced back to it is a repeat."""
        self.dedup.first(time.time(), msg.hop_id)

    def on_ack(self, hop_id: str, from_node: str) -> None:
        if from_node in self.peers and self.hops.on_ack(time.time(), hop_id, self.peers[from_node].index) is not None:
            self.counts["acked"] += 1

    # -- sending ------------------------------------------------------------------------------

    def _avoided(self, now: float) -> frozenset:
        if self.avoid:
            for k in [k for k, until in self.avoid.items() if until <= now]:
                del self.avoid[k]
        return frozenset(self.avoid)

    def next_hop(self, dst: str, came_from: str | None = None) -> str | None:
        nh = self.route(dst, came_from, self._avoided(time.time()))
        return nh if nh is not None and nh in self.links.links and not self.links.links[nh].retiring else None

    def send(self, msg: Routed, dst: str, came_from: str | None = None, hop: Hop | None = None) -> str:
        """Start ``msg`` towards ``dst``: "" once it is on its way or held, else why it cannot go.

        ``hop`` is this node's trace entry; its departure is stamped at the
        hand-off to the link, after routing (and after any time held), so
        that time shows as dwell at this node, not as link time.
        """
        if msg.ttl <= 1:
            return f"TTL expired at {self.me}"
        now = time.time()
        nh = self.next_hop(dst, came_from)
        if nh is None:
            self._hold(now, msg, dst, came_from, hop, f"no route from {self.me} to {dst}")
            return ""
        out = replace(msg, ttl=msg.ttl - 1,
                      trace=msg.trace + (replace(hop, departed=time.time()),) if hop is not None else msg.trace)
        self._transmit(nh, out)    # first: the RTO's physics below is not link time
        self.hops.cancel(msg.hop_id)
        self.hops.send(now, msg.hop_id, self.peers[nh].index, (msg, dst, came_from, hop, out), frame_bytes(msg))
        return ""

    def _transmit(self, nh: str, out: Routed) -> None:
        self.counts["frames_sent"] += 1
        if not self.links.send(nh, out):
            self.counts["dropped_at_send"] += 1   # the emulated link lost it; the hop timer resends

    def _hold(self, now: float, msg: Routed, dst: str, came_from: str | None, hop: Hop | None, why: str) -> None:
        deadline = msg.deadline if msg.deadline > 0 else now + DEFAULT_HOLD_S
        expired = self.store.hold(now, msg.hop_id, (msg, came_from, hop), self.peers[dst].index, deadline, why=why)
        if expired is not None:
            self.counts["expired"] += 1
            self.on_expired(msg, f"{self.me}: {expired.reason.replace(f'node {expired.dst}', dst)}")
        else:
            self.counts["held"] += 1

    # -- timers -----------------------------------------------------------------------------------

    def tick(self) -> None:
        self._handle(self.hops.tick(time.time()))
        now = time.time()
        for e in self.store.expire(now):
            msg, _, _ = e.item
            self.counts["expired"] += 1
            self.on_expired(msg, f"{self.me}: {e.reason.replace(f'node {e.dst}', self.names.get(e.dst, '?'))}")
        if len(self.store) and self.store.next_deadline() <= now:
            self.release()

    def _handle(self, actions: list) -> None:
        now = time.time()
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
                self.avoid[(self.me, to)] = now + AVOID_S
                self.send(msg, dst, came_from, hop)

    def view_changed(self, gone: Callable[[str], bool]) -> None:
        """Membership's view changed: take back transfers to next hops now known dead
        or cut off (``gone``) and route them again; release held frames that have a route."""
        self._handle(self.hops.abandon(time.time(), lambda to: gone(self.names[to])))
        self.release()

    def release(self) -> None:
        """Forward held frames whose destination is reachable again."""
        if not len(self.store):
            return
        now = time.time()
        for h in self.store.release_ready(now, lambda dst: self.next_hop(self.names[dst]) is not None):
            msg, came_from, hop = h.item
            self.counts["released"] += 1
            self.send(msg, self.names[h.dst], came_from, hop)

    def next_deadline(self) -> float:
        t = self.hops.next_deadline()
        if len(self.store):
            t = min(t, self.store.next_deadline())
        return t if self.hops or len(self.store) else math.inf

    def describe(self) -> dict[str, object]:
        return {"outstanding_hops": len(self.hops), "held": len(self.store),
                "held_frames": [{"id": h.item_id, "dst": self.names.get(h.dst), "since": h.since,
                                 "deadline": h.deadline, "why": h.why} for h in self.store.items()[:50]],
                "avoiding": sorted(f"{a}→{b}" for a, b in self.avoid), "counts": dict(self.counts)}
