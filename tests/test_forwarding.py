"""mesh.forwarding: every branch of the one forwarding decision (next hop, hop limit, avoid set, hold or drop)."""

import numpy as np
import pytest

from mesh.forwarding import DEADLINE, HOP_LIMIT, Drop, Forward, Forwarder, Hold, link_key
from mesh.healing import HealingRouter
from mesh.topology import Snapshot

# 0 -1- 1 -1- 2 -1- 3   (the short way, 3 × 100 km)
#  \________4________/  (the long way round, 2 × 400 km)
PAIRS = np.array([[0, 1], [1, 2], [2, 3], [0, 4], [3, 4]])
KM = np.array([100.0, 100.0, 100.0, 400.0, 400.0])


@pytest.fixture
def router() -> HealingRouter:
    snap = Snapshot(t=0.0, positions=np.zeros((5, 3)), pairs=PAIRS, distance_km=KM)
    return HealingRouter(lambda t: snap)


def test_forwards_along_the_lowest_latency_path_with_one_hop_less(router):
    assert Forwarder(0, router).decide(0.0, 0.0, 3, ttl=64, deadline=10.0) == Forward(1, 63)


def test_a_hop_limit_of_one_still_reaches_a_neighbour(router):
    # ttl counts the links a frame may still cross (IPv6's Hop Limit): 1 is one more link
    assert Forwarder(0, router).decide(0.0, 0.0, 1, ttl=1, deadline=10.0) == Forward(1, 0)
    assert Forwarder(0, router).decide(0.0, 0.0, 3, ttl=1, deadline=10.0) == Forward(1, 0)


def test_a_spent_hop_limit_is_dropped_with_the_reason(router):
    d = Forwarder(1, router).decide(0.0, 0.0, 3, ttl=0, deadline=10.0)
    assert isinstance(d, Drop) and d.cause == HOP_LIMIT
    assert "hop limit" in d.reason and "node 1" in d.reason and "node 3" in d.reason


def test_a_frame_for_this_node_is_not_forwarded(router):
    with pytest.raises(ValueError, match="delivered, not forwarded"):
        Forwarder(3, router).decide(0.0, 0.0, 3, ttl=5, deadline=10.0)


def test_split_horizon_does_not_hand_a_frame_straight_back(router):
    # at 1 the way to 0 is straight back to 0; a frame that came from 0 goes around
    f = Forwarder(1, router)
    assert f.decide(0.0, 0.0, 0, ttl=5, deadline=10.0) == Forward(0, 4)
    assert f.decide(0.0, 0.0, 0, ttl=5, deadline=10.0, came_from=0) == Forward(2, 4)


def test_down_links_and_dead_nodes_are_routed_around(router):
    f = Forwarder(0, router)
    assert f.decide(0.0, 0.0, 3, ttl=5, deadline=10.0, down_links={(1, 2)}) == Forward(4, 4)
    assert f.decide(0.0, 0.0, 3, ttl=5, deadline=10.0, dead_nodes=frozenset({2})) == Forward(4, 4)


def test_no_route_holds_until_the_deadline(router):
    d = Forwarder(0, router).decide(1.0, 0.0, 3, ttl=5, deadline=20.0, down_links={(0, 1), (0, 4)})
    assert d == Hold(20.0, "no route to node 3")


def test_a_dead_destination_is_held_and_says_so(router):
    d = Forwarder(0, router).decide(1.0, 0.0, 3, ttl=5, deadline=20.0, dead_nodes=frozenset({3}))
    assert d == Hold(20.0, "node 3 is dead")


def test_a_frame_without_a_deadline_is_held_for_the_default_time(router):
    f = Forwarder(0, router, default_hold_s=7.0)
    assert f.decide(100.0, 0.0, 3, ttl=5, deadline=0.0, dead_nodes=frozenset({3})) == Hold(107.0, "node 3 is dead")


def test_no_route_after_the_deadline_is_dropped_not_held(router):
    d = Forwarder(0, router).decide(30.0, 0.0, 3, ttl=5, deadline=20.0, dead_nodes=frozenset({3}))
    assert isinstance(d, Drop) and d.cause == DEADLINE
    assert d.reason == "deadline passed before a route to node 3 appeared (node 3 is dead)"


def test_an_unusable_link_is_no_route(router):
    f = Forwarder(0, router)
    assert isinstance(f.decide(0.0, 0.0, 3, ttl=5, deadline=10.0, usable=lambda n: n != 1), Hold)
    assert f.next_hop(0.0, 0.0, 3, usable=lambda n: True) == 1
    assert f.next_hop(0.0, 0.0, 3, usable=lambda n: False) is None


def test_a_failed_hop_avoids_the_undirected_link_for_a_while(router):
    f = Forwarder(2, router, avoid_s=5.0)
    f.hop_failed(10.0, 1)
    assert f.avoid == {(1, 2): 15.0}                  # one key per link, whichever end failed
    assert link_key(2, 1) == link_key(1, 2) == (1, 2)
    assert f.avoided(12.0) == {(1, 2)} and f.next_expiry() == 15.0
    assert f.decide(12.0, 0.0, 0, ttl=5, deadline=30.0) == Forward(3, 4)     # around by 3–4–0
    assert f.avoided(15.0) == frozenset()             # time is up even before expire() runs
    assert f.decide(15.0, 0.0, 0, ttl=5, deadline=30.0) == Forward(1, 4)
    assert f.expire(12.0) is False and f.avoid
    assert f.expire(15.0) is True and not f.avoid and f.next_expiry() == float("inf")


def test_bad_settings_are_refused(router):
    with pytest.raises(ValueError):
        Forwarder(0, router, avoid_s=-1.0)
    with pytest.raises(ValueError):
        Forwarder(0, router, default_hold_s=0.0)


def test_the_relay_and_the_simulator_decide_nowhere_else():
    """One module owns the decision: neither driver calls the router's next_hop itself
    nor tests a hop limit or keeps an avoid set of its own."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    for rel in ("agent/runtime/relay.py", "mesh/sim/node.py"):
        src = (root / rel).read_text()
        assert "router.next_hop" not in src and "healing.next_hop" not in src, rel
        assert ".ttl <=" not in src and ".ttl - 1" not in src, rel
        assert "self.avoid" not in src, rel
        assert "Forwarder(" in src or "fwd.decide" in src, rel
