"""A drift (a state change below placement's thresholds, as the driver's ``state_news`` judges)
waits ``drift_gossip_s`` at each hop and shares frames with the others; news among states
still goes at the ``state_gossip_s`` pace.  On the pure core's in-memory twin."""

from __future__ import annotations

from dataclasses import replace

from mesh.gossip_msgs import Gossip
from tests.test_membership import N, Twin
from tests.test_membership_scaling import twin_config


def news_if_load_moves_by_ten(old: dict, new: dict) -> bool:
    return abs(new["load"] - old["load"]) >= 10


def drift_twin(judge) -> Twin:
    c = twin_config(2.0)
    tw = Twin(replace(c, drift_gossip_s=10 * c.state_gossip_s))
    for m in tw.nodes.values():
        m.state_news = judge
    return tw


def publish(tw: Twin, node: int, load: int) -> int:
    tw.out(node, tw.nodes[node].set_state(tw.now, {"load": load, "me": node}))
    return tw.nodes[node].states.get(node).version


def trickle(judge) -> tuple[int, Twin]:
    """The nodes take turns to publish a small move of their load, four a second for 20 s (each
    node hears a steady trickle of others' drifts, as in a large fleet); returns the Gossip
    frames that forwarded others' records only (not the publisher's own push) and the twin."""
    tw = drift_twin(judge)
    for i in range(N):
        publish(tw, i, 0)
    tw.run(10.0)
    before = len(tw.sent)
    for turn in range(80):
        publish(tw, turn % N, 1 + turn // N)
        tw.run(tw.now + 0.25)
    return sum(isinstance(msg, Gossip) and all(u.node != src for u in msg.updates)
               for src, _, msg in tw.sent[before:]), tw


def test_drifts_share_fewer_frames_and_still_reach_every_node():
    drifts, tw = trickle(news_if_load_moves_by_ten)
    as_news, _ = trickle(None)               # no judge: every state is news, as before
    assert drifts * 2 < as_news, (drifts, as_news)
    tw.run(tw.now + 4 * tw.cfg.drift_gossip_s)    # four hops cross the 4×4 torus
    for i in tw.live():
        for j in range(N):
            assert tw.nodes[i].node_state(j) == {"load": 5, "me": j}, (i, j)


def arrival_s(tw: Twin, node: int, version: int, until: float) -> float:
    """Seconds until every node holds ``node``'s state ``version`` (inf if not by ``until``)."""
    start = tw.now
    while tw.now < until:
        tw.run(tw.now + 0.05)
        if all(tw.nodes[i].states.get(node) is not None and tw.nodes[i].states.get(node).version >= version
               for i in tw.live()):
            return tw.now - start
    return float("inf")


def crossings(judge) -> tuple[float, float, Twin]:
    """Seconds a drift of node 0 (load 0 → 1) takes to reach every node, then a news record of
    node 0 (load → 50) while another node's drift is queued everywhere."""
    tw = drift_twin(judge)
    for i in range(N):
        publish(tw, i, 0)
    tw.run(10.0)
    drift = arrival_s(tw, 0, publish(tw, 0, 1), tw.now + 6 * tw.cfg.drift_gossip_s)
    publish(tw, 5, 1)
    tw.run(tw.now + 0.5)
    news = arrival_s(tw, 0, publish(tw, 0, 50), tw.now + 6 * tw.cfg.drift_gossip_s)
    return drift, news, tw


def test_news_among_drifts_still_goes_at_the_state_pace_and_a_drift_waits():
    drift, news, tw = crossings(news_if_load_moves_by_ten)
    as_news, _, _ = crossings(None)
    pace, hops = tw.cfg.state_gossip_s, 4          # four hops cross the 4×4 torus
    # Held at each hop, the drift crosses later than it would as news (pings carry some of it
    # sooner), but within a drift pace a hop; news waits at most a state pace a hop.
    assert 1.5 * as_news < drift < hops * tw.cfg.drift_gossip_s, (drift, as_news)
    assert news < hops * pace + 1.0, (news, pace)


def test_a_state_the_judge_cannot_read_counts_as_news_and_breaks_nothing():
    tw = drift_twin(news_if_load_moves_by_ten)
    for i in range(N):
        publish(tw, i, 0)
    tw.run(10.0)
    # A peer's odd value: the judge raises on it (a str minus an int), so it goes as news.
    version = publish(tw, 3, "not a number")
    took = arrival_s(tw, 3, version, tw.now + 6 * tw.cfg.drift_gossip_s)
    assert took < 4 * tw.cfg.state_gossip_s + 1.0, took
    assert all(tw.nodes[i].node_state(3)["load"] == "not a number" for i in tw.live())
