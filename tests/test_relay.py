"""agent.runtime.relay in one process: real Relay, fake links, the forwarding decision of mesh.forwarding.

No sockets, no agents: the link layer is a dict of open links and a list of
what was sent, so each rule (hop limit, avoid set, hold or drop) is checked
where the agent applies it.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from agent.links.peers import PeerEntry, Peers
from agent.runtime.relay import LinkState, Relay
from mesh.delivery import fleet_delivery
from mesh.forwarding import Forwarder
from mesh.healing import HealingRouter
from mesh.topology import Snapshot
from mesh.wire import ModelFetch

# sat-0 -- sat-1 -- sat-2 -- sat-3, and sat-0 -- sat-4 -- sat-3 the long way round
PAIRS = np.array([[0, 1], [1, 2], [2, 3], [0, 4], [3, 4]])
KM = np.array([100.0, 100.0, 100.0, 400.0, 400.0])


@dataclass
class FakeLink:
    retiring: bool = False


@dataclass
class FakeLinks:
    links: dict = field(default_factory=dict)
    sent: list = field(default_factory=list)

    def send(self, to: str, msg) -> bool:
        self.sent.append((to, msg))
        return True


@dataclass
class Harness:
    relay: Relay
    links: FakeLinks
    expired: list
    state: dict


def make(me: int = 0, open_to=(1, 4)) -> Harness:
    snap = Snapshot(t=0.0, positions=np.zeros((5, 3)), pairs=PAIRS, distance_km=KM)
    peers = Peers([PeerEntry(f"sat-{i}", i, f"peer{i}", f"/ip4/127.0.0.1/tcp/{4100 + i}", "http://x")
                   for i in range(5)])
    links = FakeLinks({f"sat-{i}": FakeLink() for i in open_to})
    expired: list = []
    state = {"dead": frozenset(), "down": frozenset()}
    relay = Relay(f"sat-{me}", peers, links, Forwarder(me, HealingRouter(lambda t: snap)),
                  lambda now: LinkState(0.0, state["dead"], state["down"]),
                  rtt=lambda peer, now: 0.001, send_ack=lambda to, hop_id: True,
                  on_expired=lambda msg, why: expired.append((msg.hop_id, why)), config=fleet_delivery())
    return Harness(relay, links, expired, state)


def fetch(hop_id: str = "f1", ttl: int = 64, deadline: float | None = None) -> ModelFetch:
    return ModelFetch(hop_id, "sat-0", "sat-3", "digits", "0" * 64, 0, 1024, ttl,
                      time.time() + 30 if deadline is None else deadline)


def test_a_frame_goes_to_the_next_hop_with_one_hop_less():
    h = make()
    assert h.relay.send(fetch(ttl=5), "sat-3") == ""
    (to, out), = h.links.sent
    assert to == "sat-1" and out.ttl == 4


def test_a_hop_limit_of_one_reaches_a_neighbour_and_zero_is_refused():
    h = make()
    assert h.relay.send(fetch("a", ttl=1), "sat-1") == ""
    assert h.links.sent[-1][1].ttl == 0
    why = h.relay.send(fetch("b", ttl=0), "sat-3")
    assert "hop limit reached at sat-0 on the way to sat-3" in why
    assert len(h.links.sent) == 1 and h.relay.counts["hop_limit"] == 1


def test_no_open_link_holds_the_frame_and_a_new_link_releases_it():
    h = make(open_to=())
    assert h.relay.send(fetch(), "sat-3") == ""
    assert len(h.relay.store) == 1 and not h.links.sent
    assert h.relay.describe()["held_frames"][0]["why"] == "no route to node 3"
    h.links.links["sat-1"] = FakeLink()
    h.relay.release()
    assert len(h.relay.store) == 0 and h.links.sent[0][0] == "sat-1"


def test_a_passed_deadline_with_no_route_is_reported_not_held():
    h = make()
    h.state["dead"] = frozenset({3})
    assert h.relay.send(fetch(deadline=time.time() - 1), "sat-3") == ""
    assert not len(h.relay.store)
    (hop_id, why), = h.expired
    assert hop_id == fetch().hop_id and why == "sat-0: deadline passed before a route to sat-3 appeared (sat-3 is dead)"


def test_a_hop_that_never_acknowledges_is_avoided_as_an_undirected_link():
    h = make()
    h.relay.send(fetch(), "sat-3")
    assert h.links.sent[0][0] == "sat-1"
    h.relay._handle(h.relay.hops.abandon(time.time(), lambda to: to == 1))     # as after HopFailed
    assert h.relay.fwd.avoid.keys() == {(0, 1)}
    assert h.relay.describe()["avoiding"] == ["sat-0–sat-1"]
    assert h.links.sent[-1][0] == "sat-4"       # routed again, around the failed link
    assert h.links.sent[-1][1].ttl == 63        # the re-send spends the hop once, not twice


def test_unknown_or_own_destinations_get_a_reason():
    h = make()
    assert "unknown destination" in h.relay.send(fetch(), "sat-99")
    assert "not forwarded" in h.relay.send(fetch(), "sat-0")
    assert h.relay.next_hop("sat-0") is None and h.relay.next_hop("sat-3") == "sat-1"


@pytest.mark.parametrize("retiring", [True, False])
def test_a_retiring_link_is_not_used(retiring):
    h = make(open_to=(1,))
    h.links.links["sat-1"].retiring = retiring
    h.relay.send(fetch(), "sat-3")
    assert (len(h.links.sent), len(h.relay.store)) == ((0, 1) if retiring else (1, 0))


def test_an_ack_after_the_hop_was_given_up_is_counted_and_the_next_frame_waits_longer():
    """A hop whose ack comes after the sender gave up was slow, not dead (loaded processes):
    it counts as a late ack, and the next frame to that neighbour gets the longer timeout."""
    from trio.testing import MockClock

    from agent import wallclock
    clock = MockClock()
    with wallclock.virtual(clock, origin=1_800_000_000.0):
        h = make()
        msg = fetch("slow", deadline=wallclock.now() + 300)
        h.relay.send(msg, "sat-3")
        assert h.links.sent[0][0] == "sat-1"
        while not h.relay.fwd.avoid:                      # retransmit until the hop is given up
            clock.jump(max(0.0, h.relay.hops.next_deadline() - wallclock.now()))
            h.relay.tick()
        assert h.relay.counts["hops_failed"] == 1 and h.links.sent[-1][0] == "sat-4"   # around it
        physics_rto = h.relay.hops.next_at(msg.hop_id) - wallclock.now()
        h.relay.on_ack(msg.hop_id, "sat-1")                # the first copy's ack, at last
        assert h.relay.counts["late_acks"] == 1 and h.relay.counts["acked"] == 0
        learned = h.relay.hops.learned_rto(1)
        assert learned > 20 * physics_rto                  # the backed-off wait, kept for sat-1
        clock.jump(10.0)                                   # sat-1 is no longer avoided
        h.relay.tick()
        nxt = fetch("next", deadline=wallclock.now() + 300)
        h.relay.send(nxt, "sat-3")
        assert h.links.sent[-1][0] == "sat-1"
        assert h.relay.hops.next_at(nxt.hop_id) - wallclock.now() == pytest.approx(learned)
