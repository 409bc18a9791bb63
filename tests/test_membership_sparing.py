"""Membership's rounds spared (``spare_heard``): a neighbour whose own direct ping reached us since
our last round for it is not probed again that cycle.  On the pure core's in-memory twin."""

from __future__ import annotations

import pytest

from mesh.gossip_msgs import Ping
from mesh.membership import LinkDown, MembershipConfig, NodeDead, NodeSuspect
from tests.test_membership import Twin, cfg


def spare_cfg() -> MembershipConfig:
    from dataclasses import replace
    return replace(cfg(), spare_heard=True)


def rounds(tw: Twin) -> tuple[int, int]:
    live = [tw.nodes[i] for i in tw.live()]
    return sum(m.stats["probes"] for m in live), sum(m.stats["rounds_spared"] for m in live)


def test_a_round_is_spared_for_a_neighbour_whose_own_ping_came_and_pings_fall_by_about_half():
    plain, spare = Twin(cfg()), Twin(spare_cfg())
    for tw in (plain, spare):
        tw.run(20.0)
    pings = [sum(isinstance(m, Ping) for _, _, m in tw.sent) for tw in (plain, spare)]
    probed, spared = rounds(spare)
    assert rounds(plain)[1] == 0 and 0.3 < spared / (probed + spared) < 0.7, (probed, spared)
    assert probed + spared == pytest.approx(sum(rounds(plain)), rel=0.1)    # one round per period either way
    assert pings[1] < 0.7 * pings[0], pings
    assert not any(isinstance(e, (NodeSuspect, NodeDead, LinkDown)) for _, e in spare.events)


@pytest.mark.parametrize("make", [cfg, spare_cfg], ids=["every-round", "spare-heard"])
def test_sparing_rounds_still_finds_a_death_a_cut_link_and_no_false_death_under_loss(make):
    tw = Twin(make())
    tw.run(3.0)
    tw.kill(5)
    tw.cut |= {(0, 1), (1, 0)}        # one direction would do: the far end's pings still arrive
    tw.run(10.0)
    assert all(tw.nodes[i].status(5) == "dead" for i in tw.live())
    assert all(tw.nodes[i].down_links() == {(0, 1)} for i in tw.live())
    assert {e.node for _, e in tw.events if isinstance(e, NodeDead)} == {5}
    lossy = Twin(make(), loss=0.1, seed=4)
    lossy.run(40.0)
    assert not any(isinstance(e, NodeDead) for _, e in lossy.events)


def test_a_link_that_fails_one_way_is_still_found_with_rounds_spared():
    # 0's pings reach 1 (so 1 would spare its rounds for 0), but 1's acks never reach 0: 0's
    # rounds fail, the link is reported down, and nobody is declared dead.
    tw = Twin(spare_cfg())
    tw.run(2.0)
    tw.cut |= {(1, 0)}
    tw.run(10.0)
    assert all(tw.nodes[i].down_links() == {(0, 1)} for i in tw.live())
    assert not any(isinstance(e, NodeDead) for _, e in tw.events)
