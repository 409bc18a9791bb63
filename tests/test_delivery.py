"""Per-hop reliability, dedup, store-and-forward, end-to-end retry, and routing that heals."""

from __future__ import annotations

import itertools
import math

import pytest

from mesh.delivery import (Attempt, DedupWindow, DeliveryConfig, ExecutionCache, Expired, HopFailed, HopSender,
                           StoreAndForward, TaskFailed, TaskLedger, Transmit, fleet_delivery)
from mesh.healing import HealingRouter
from mesh.orbit import Constellation, iso_to_jd
from mesh.presets import demo
from mesh.routing import Router
from mesh.topology import Topology

# -- per hop ---------------------------------------------------------------------------------------


def sender(**kw) -> HopSender:
    cfg = DeliveryConfig(hop_rtt_mult=2.0, hop_rto_margin_s=0.01, hop_backoff=2.0, hop_rto_max_s=10.0,
                         hop_max_attempts=4, **kw)
    return HopSender(cfg, lambda to, now: 0.010)          # 10 ms physics round trip


def test_hop_rto_comes_from_the_physics_rtt_and_backs_off():
    hs = sender()
    tx = hs.send(0.0, "req:t1:0", 7, "item", size=0)
    assert tx == Transmit("req:t1:0", 7, "item", 1)
    assert hs.next_deadline() == pytest.approx(0.03)       # 2 × 10 ms + 10 ms
    assert hs.tick(0.029) == []
    again = hs.tick(0.03)
    assert again == [Transmit("req:t1:0", 7, "item", 2)]
    assert hs.next_deadline() == pytest.approx(0.09)       # backoff ×2
    assert hs.retransmissions == 1


def test_serialization_time_is_part_of_the_rto():
    hs = sender(bandwidth_bps=1e6)
    hs.send(0.0, "x", 1, None, size=125_000)               # 1 s on a 1 Mbit/s link
    assert hs.next_deadline() == pytest.approx(1.03)


def test_an_ack_ends_a_transfer_and_only_from_the_right_neighbour():
    hs = sender()
    hs.send(0.0, "a", 3, "A")
    assert hs.on_ack(0.01, "a", 4) is None                  # not who we sent it to
    assert hs.on_ack(0.01, "a", 3) == "A"
    assert hs.on_ack(0.02, "a", 3) is None                  # a duplicate ack
    assert hs.tick(10.0) == [] and len(hs) == 0
    with pytest.raises(ValueError):
        hs.send(0.0, "b", 3, None)
        hs.send(0.0, "b", 3, None)



def slow_link(hs: HopSender, msg: str, to: int, now: float, ack_after: float) -> tuple[list, float]:
    """Send ``msg`` at ``now`` over a link whose acks come ``ack_after`` s after each copy; returns
    (what the sender did: Transmit/HopFailed per tick, and "acked"), the time it ended."""
    did: list = [hs.send(now, msg, to, msg)]
    copies = [now]
    t = now
    while True:
        ack_at = copies[0] + ack_after                 # the first copy's ack comes first
        nxt = hs.next_deadline()
        if ack_at <= nxt:
            t = ack_at
            did.append("acked" if hs.on_ack(t, msg, to) is not None else "late ack")
            return did, t
        t = nxt
        for x in hs.tick(t):
            did.append(x)
            if isinstance(x, Transmit):
                copies.append(t)
            else:
                t = ack_at                              # the ack still arrives, after the give-up
                did.append("acked" if hs.on_ack(t, msg, to) is not None else "late ack")
                return did, t


def test_a_fast_hop_keeps_the_physics_rto():
    hs = sender()
    for k in range(20):
        did, _ = slow_link(hs, f"m{k}", 5, float(k), ack_after=0.004)
        assert did[-1] == "acked" and len(did) == 2     # sent once
    hs.send(30.0, "x", 5, None)
    assert hs.next_deadline() == pytest.approx(30.03)   # 2 × 10 ms + 10 ms, as physics says


def test_a_slow_hop_raises_its_rto_from_late_acks_and_then_sends_once():
    """A loaded emulator: acks take 3 s where physics says 10 ms.  The first frames give up (as
    before), but their late acks teach the sender; soon each frame goes once and is acked."""
    hs = sender()                                   # 4 attempts, 30 ms doubling: gives up after ~0.45 s
    first, t = slow_link(hs, "m0", 5, 0.0, ack_after=3.0)
    assert isinstance(first[-2], HopFailed) and first[-1] == "late ack" and hs.late_acks == 1
    assert hs.learned_rto(5) > 0.2
    outcomes = []
    for k in range(1, 12):
        did, t = slow_link(hs, f"m{k}", 5, t + 1.0, ack_after=3.0)
        outcomes.append(did)
    assert not any(isinstance(x, HopFailed) for did in outcomes[3:] for x in did), outcomes
    assert all(len(did) == 2 and did[-1] == "acked" for did in outcomes[-4:]), outcomes[-4:]
    assert 3.0 < hs.learned_rto(5) <= hs.config.hop_rto_learned_max_s
    assert hs.learned_rto(6) == 0.0                  # another neighbour keeps physics


def test_a_learned_rto_shrinks_back_once_the_hop_is_fast_again_and_never_passes_its_cap():
    hs = sender(hop_rto_learned_max_s=2.0)
    t = 0.0
    for k in range(12):
        _, t = slow_link(hs, f"s{k}", 5, t + 1.0, ack_after=6.0)
    assert hs.learned_rto(5) == pytest.approx(2.0)       # capped: slower still is a failure
    for k in range(40):
        _, t = slow_link(hs, f"f{k}", 5, t + 1.0, ack_after=0.004)
    hs.send(t + 1.0, "x", 5, None)
    assert hs.learned_rto(5) < 0.03 and hs.next_deadline() == pytest.approx(t + 1.03)


def test_a_hop_gives_up_after_bounded_attempts_with_a_reason():
    hs = sender()
    hs.send(0.0, "m", 5, "M")
    out, t = [], 0.0
    while not any(isinstance(x, HopFailed) for x in out):
        t = hs.next_deadline()
        out += hs.tick(t)
    sends = [x for x in out if isinstance(x, Transmit)]
    fail = out[-1]
    assert len(sends) == 3 and fail.attempts == 4
    assert fail.item == "M" and "no hop ack from node 5 after 4 attempts" in fail.reason
    assert hs.next_deadline() == math.inf and hs.failures == 1


def test_dedup_window_acts_once_and_forgets_by_age_and_count():
    d = DedupWindow(capacity=3, ttl_s=10.0)
    assert d.first(0.0, "a") and not d.first(1.0, "a")
    assert d.first(11.0, "a")                                # aged out
    for k in "bcd":
        d.first(12.0, k)
    assert len(d) == 3 and "a" not in d                      # bounded: oldest dropped


# -- store and forward ----------------------------------------------------------------------------------

def test_held_items_are_released_when_their_destination_becomes_reachable():
    sf = StoreAndForward(capacity=10, recheck_s=1.0)
    assert sf.hold(0.0, "i1", "ONE", 9, deadline=30.0, why="no route to node 9") is None
    assert sf.hold(0.0, "i2", "TWO", 8, deadline=30.0) is None
    assert sf.hold(0.5, "i1", "ONE", 9, deadline=30.0) is None    # held once
    assert len(sf) == 2 and sf.next_deadline() == pytest.approx(1.0)
    assert sf.release_ready(1.0, lambda dst: False) == []
    out = sf.release_ready(2.0, lambda dst: dst == 9)
    assert [h.item for h in out] == ["ONE"] and len(sf) == 1


def test_held_items_expire_at_their_deadline_with_a_reason():
    sf = StoreAndForward()
    sf.hold(0.0, "i1", "X", 4, deadline=5.0, why="node 4 is dead")
    assert sf.expire(4.9) == []
    (e,) = sf.expire(5.0)
    assert isinstance(e, Expired) and e.item == "X"
    assert "held 5.0 s for node 4 (node 4 is dead)" in e.reason and "deadline" in e.reason
    assert len(sf) == 0


def test_the_hold_buffer_is_bounded_and_says_so():
    sf = StoreAndForward(capacity=2)
    sf.hold(0.0, "a", 1, 1, 10.0)
    sf.hold(0.0, "b", 2, 1, 10.0)
    e = sf.hold(0.0, "c", 3, 1, 10.0, why="no route")
    assert isinstance(e, Expired) and "buffer full (2 items)" in e.reason
    late = sf.hold(11.0, "d", 4, 1, 10.0)
    assert isinstance(late, Expired) and "deadline passed" in late.reason


def test_contact_plan_prediction_sets_when_to_look_again():
    sf = StoreAndForward(recheck_s=100.0)
    sf.hold(0.0, "a", "A", 3, deadline=60.0, retry_at=12.5)
    assert sf.next_deadline() == pytest.approx(12.5)
    assert sf.release_ready(12.5, lambda dst: False) == []      # the contact did not come after all
    assert sf.next_deadline() == pytest.approx(60.0)           # no busy loop on a past prediction
    assert [h.item for h in sf.release_ready(20.0, lambda dst: True)] == ["A"]


# -- end to end -------------------------------------------------------------------------------------------

def test_the_ledger_retries_with_backoff_under_the_same_task_id():
    led = TaskLedger(DeliveryConfig(e2e_retry_s=2.0, e2e_backoff=2.0))
    assert led.submit(0.0, "t", 9, deadline=20.0) == Attempt("t", 9, 0)
    assert led.tick(1.9) == []
    assert led.tick(2.0) == [Attempt("t", 9, 1)]
    assert led.next_deadline() == pytest.approx(6.0)
    assert led.tick(6.0) == [Attempt("t", 9, 2)]
    assert led.retries == 2
    with pytest.raises(ValueError):
        led.submit(7.0, "t", 9, deadline=20.0)


def test_the_first_result_wins_and_repeats_are_duplicates():
    led = TaskLedger(DeliveryConfig())
    led.submit(0.0, "t", 1, deadline=10.0)
    assert led.on_result(1.0, "t") is True
    assert led.on_result(1.5, "t") is False and led.duplicates == 1
    assert led.tick(100.0) == [] and len(led) == 0


def test_a_task_without_a_result_fails_at_its_deadline_with_the_last_problem():
    led = TaskLedger(DeliveryConfig(e2e_retry_s=100.0))
    led.submit(0.0, "t", 4, deadline=10.0)
    led.note("t", "undeliverable: held 9.0 s for node 4 (node 4 is dead)")
    (f,) = led.tick(10.0)
    assert isinstance(f, TaskFailed)
    assert "no result within 10.0 s after 1 attempt(s) to reach node 4" in f.reason
    assert "node 4 is dead" in f.reason
    assert led.on_result(11.0, "t") is False                  # a late result changes nothing


def test_a_deadline_failure_names_the_node_as_the_agent_does():
    led = TaskLedger(DeliveryConfig(), name_of=lambda i: f"sat-{i}")
    led.submit(0.0, "t", 8, deadline=1.5)
    (f,) = led.tick(2.0)
    assert "no result within 1.5 s after 1 attempt(s) to reach sat-8" in f.reason


def test_an_explicit_failure_is_final():
    led = TaskLedger(DeliveryConfig())
    led.submit(0.0, "t", 4, deadline=10.0)
    f = led.fail(1.0, "t", "unknown model 'x'")
    assert f == TaskFailed("t", "unknown model 'x'", 1)
    assert led.fail(1.0, "t", "again") is None and led.tick(20.0) == []


def test_the_executor_runs_a_task_id_once():
    ex = ExecutionCache(capacity=2)
    assert ex.begin("t") == ("new", None)
    assert ex.begin("t") == ("running", None)
    ex.finish("t", {"label": 3})
    assert ex.begin("t") == ("done", {"label": 3})


def test_delivery_presets():
    assert fleet_delivery().hop_rto_margin_s > DeliveryConfig().hop_rto_margin_s
    with pytest.raises(ValueError):
        DeliveryConfig(hop_max_attempts=0)


# -- routing that heals --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_router():
    cfg = demo()
    topo = Topology(Constellation(list(cfg.shells), iso_to_jd(cfg.epoch)))
    return Router(topo)


def walk(hr: HealingRouter, src: int, dst: int, t: float, **view) -> list[int] | None:
    path, here, prev = [src], src, None
    while here != dst:
        nh = hr.next_hop(here, dst, t, came_from=prev, **view)
        if nh is None:
            return None
        prev, here = here, nh
        path.append(here)
        assert len(path) <= 25, "routing loop"
    return path


def test_without_failures_it_is_the_physics_shortest_path(demo_router):
    hr = HealingRouter(demo_router.snapshot)
    for src, dst in [(0, 13), (5, 22), (17, 2)]:
        assert hr.path(src, dst, 10.0) == demo_router.path(src, dst, 10.0)[0]
        assert walk(hr, src, dst, 10.0) == demo_router.path(src, dst, 10.0)[0]


def test_it_routes_around_down_links_and_dead_nodes_without_loops(demo_router):
    hr = HealingRouter(demo_router.snapshot)
    base = demo_router.path(0, 15, 10.0)[0]
    mid = (min(base[1], base[2]), max(base[1], base[2]))
    dead = frozenset({base[-2]}) if len(base) > 2 else frozenset()
    view = {"down_nodes": dead, "down_links": frozenset({mid})}
    p = walk(hr, 0, 15, 10.0, **view)
    assert p is not None and p[-1] == 15
    assert not any({a, b} == set(mid) for a, b in zip(p, p[1:]))
    assert not (set(p[1:-1]) & dead)
    snap = demo_router.snapshot(10.0)
    assert p == snap.shortest_path(0, 15, down_nodes=dead, down_links=frozenset({mid}))[0]
    for src, dst in itertools.product(range(0, 24, 5), range(1, 24, 6)):     # loop-free everywhere
        if src != dst and src not in dead and dst not in dead:
            walk(hr, src, dst, 10.0, **view)


def test_unreachable_destinations_have_no_next_hop(demo_router):
    hr = HealingRouter(demo_router.snapshot)
    snap = demo_router.snapshot(10.0)
    cut = frozenset((min(7, n), max(7, n)) for n, _ in snap.neighbours(7))
    assert hr.next_hop(0, 7, 10.0, down_links=cut) is None
    assert not hr.reachable(0, 7, 10.0, down_links=cut)
    assert hr.next_hop(0, 7, 10.0, down_nodes=frozenset({7})) is None
    assert hr.path(3, 3, 10.0) == [3]


def test_views_are_cached_and_recomputed_on_change(demo_router):
    hr = HealingRouter(demo_router.snapshot)              # a node's router: its own first-hop table
    hr.next_hop(0, 15, 10.0)
    n = hr.computations
    for dst in range(1, 24):
        hr.next_hop(0, dst, 10.0)
    assert hr.computations == n                       # one table serves every destination
    hr.next_hop(0, 15, 10.0, down_links=frozenset({(0, 1)}))
    assert hr.computations == n + 1


def test_shared_router_trees_are_cached_and_recomputed_on_change(demo_router):
    hr = HealingRouter(demo_router.snapshot, first_hops=False)     # every node of a simulation asks it
    hr.next_hop(0, 15, 10.0)
    n = hr.computations
    for here in range(24):
        hr.next_hop(here, 15, 10.0)
    assert hr.computations == n                       # one tree serves every node
    hr.next_hop(0, 15, 10.0, down_links=frozenset({(0, 1)}))
    assert hr.computations == n + 1


def test_split_horizon_never_hands_a_frame_straight_back_when_there_is_another_way(demo_router):
    hr = HealingRouter(demo_router.snapshot)
    path = demo_router.path(0, 15, 10.0)[0]
    b, onward = path[1], path[2]
    assert hr.next_hop(b, 15, 10.0) == onward
    # The frame came from `onward` (its view differed): b must not bounce it straight back.
    alt = hr.next_hop(b, 15, 10.0, came_from=onward)
    assert alt is not None and alt != onward


def test_warmed_trees_equal_trees_computed_on_demand(demo_router):
    cold, warm = HealingRouter(demo_router.snapshot), HealingRouter(demo_router.snapshot)
    view = {"down_nodes": frozenset({7}), "down_links": frozenset({(0, 1)})}
    assert warm.warm(list(range(24)), 10.0, **view) == 24
    computed = warm.computations
    for src in [s for s in range(24) if s != 7]:     # the dead node routes in a view without itself
        for dst in range(24):
            assert warm.next_hop(src, dst, 10.0, **view) == cold.next_hop(src, dst, 10.0, **view)
    assert warm.computations == computed, "every tree was already there"


def test_transfers_to_a_neighbour_declared_gone_are_given_back_at_once():
    hs = sender()
    hs.send(0.0, "req:t1:0", 7, "one")
    hs.send(0.0, "req:t2:0", 8, "two")
    failed = hs.abandon(0.05, lambda to: to == 7)
    assert [(f.msg_id, f.to, f.item) for f in failed] == [("req:t1:0", 7, "one")]
    assert "declared unreachable" in failed[0].reason
    assert len(hs) == 1 and hs.on_ack(0.06, "req:t2:0", 8) == "two"
    assert hs.abandon(0.1, lambda to: True) == []


def test_an_immediate_first_retry_is_followed_by_the_usual_spacing():
    led = TaskLedger(DeliveryConfig(e2e_retry_s=5.0, e2e_backoff=2.0))
    led.submit(0.0, "t", 3, deadline=100.0, retry_after=0.0)     # a restarted entry resends at once
    assert led.tick(0.0) == [Attempt("t", 3, 1)]
    assert led.tick(0.1) == [] and led.next_deadline() == pytest.approx(5.0)
