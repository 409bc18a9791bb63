"""Faults as data: validation, idempotence, replication and effect."""

import random

import pytest

from mesh.chaos import SETTLE_S, Entry, FaultError, FaultTable, Topo, normalise
from mesh.link import LinkProfile

# a ring of 6 nodes in two planes: 0-1-2 (plane 0), 3-4-5 (plane 1); links 0-1,1-2,2-0,3-4,4-5,5-3,0-3,1-4,2-5
NODES = [f"sat-{i}" for i in range(6)]
EDGES = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (0, 3), (1, 4), (2, 5)]
TOPO = Topo(frozenset(NODES), frozenset(frozenset((f"sat-{a}", f"sat-{b}")) for a, b in EDGES),
            {f"sat-{i}": (0, i // 3) for i in range(6)})
BASE = LinkProfile()


def table():
    return FaultTable(TOPO)


@pytest.mark.parametrize("spec, words", [
    ({"kind": "cut", "a": "sat-0", "b": "sat-9"}, "unknown node 'sat-9'"),
    ({"kind": "cut", "a": "sat-0", "b": "sat-4"}, "no laser link sat-0–sat-4"),
    ({"kind": "loss", "a": "sat-0", "b": "sat-1", "loss": 1.5}, "outside 0–100%"),
    ({"kind": "loss", "a": "sat-0", "b": "sat-1", "loss": "150%"}, "outside 0–100%"),
    ({"kind": "loss", "a": "sat-0", "b": "sat-1", "loss": -0.1}, "outside 0–100%"),
    ({"kind": "cut", "a": "sat-0", "b": "sat-1", "duration_s": -5}, "must be > 0"),
    ({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "20"}, "needs a unit"),
    ({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "-3ms"}, "≥ 0"),
    ({"kind": "jitter", "a": "sat-0", "b": "sat-1", "jitter": "1ms", "distribution": "cauchy"}, "distribution"),
    ({"kind": "bandwidth", "a": "sat-0", "b": "sat-1", "bandwidth": "fast"}, "not a rate"),
    ({"kind": "nuke"}, "kind: must be one of"),
    ({"kind": "cut", "a": "sat-0", "b": "sat-1", "colour": "red"}, "unknown fields"),
    ({"kind": "partition", "groups": [["sat-0"], ["sat-0", "sat-1"]]}, "in groups 0 and 1"),
    ({"kind": "partition", "groups": [NODES]}, "nothing would be cut"),
    ({"kind": "partition", "groups": "sat-0"}, "non-empty list"),
    ({"kind": "plane", "plane": 7}, "no plane 7"),
    ([1, 2], "JSON object"),
])
def test_bad_specs_are_refused_and_nothing_is_applied(spec, words):
    t = table()
    with pytest.raises(FaultError, match=words):
        t.issue(spec, 100.0, "sat-0")
    assert t.entries() == [] and t.profile("sat-0", "sat-1", 100.0, BASE) == BASE


def test_units_and_percentages():
    spec, directed, settle, duration = normalise(
        {"kind": "loss", "a": "sat-0", "b": "sat-1", "loss": "10%", "duration_s": "2m"}, TOPO)
    assert spec["loss"] == pytest.approx(0.1) and duration == 120 and settle == 0
    assert directed == {("sat-0", "sat-1"), ("sat-1", "sat-0")}
    one_way = normalise({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "20ms", "direction": "a->b"}, TOPO)
    assert one_way[0]["delay"] == pytest.approx(0.02) and one_way[1] == {("sat-0", "sat-1")}


def test_cut_and_its_duration():
    t = table()
    entry, changed = t.issue({"kind": "cut", "a": "sat-1", "b": "sat-2", "duration_s": 30}, 100.0, "sat-5")
    assert changed and entry.start == 100.0 and entry.until == 130.0
    assert t.profile("sat-1", "sat-2", 110.0, BASE).cut and t.profile("sat-2", "sat-1", 110.0, BASE).cut
    assert not t.profile("sat-1", "sat-0", 110.0, BASE).cut
    assert not t.profile("sat-1", "sat-2", 130.0, BASE).cut  # reverted by itself
    assert t.cut_now(110.0) == {("sat-1", "sat-2"), ("sat-2", "sat-1")}


def test_issuing_twice_is_idempotent():
    t = table()
    spec = {"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "5ms"}
    e1, c1 = t.issue(spec, 100.0, "sat-0")
    e2, c2 = t.issue(dict(spec), 105.0, "sat-3")
    assert c1 and not c2 and e1 == e2 and len(t.listing(106.0)) == 1
    assert t.profile("sat-0", "sat-1", 106.0, BASE).extra_delay_s == pytest.approx(0.005)


def test_partition_cuts_only_links_between_sides_after_settling():
    t = table()
    entry, _ = t.issue({"kind": "partition", "groups": [["sat-0", "sat-1", "sat-2"]]}, 100.0, "sat-0")
    assert entry.start == 100.0 + SETTLE_S
    assert not t.profile("sat-0", "sat-3", 100.5, BASE).cut  # still settling
    later = 100.0 + SETTLE_S + 0.1
    assert t.cut_now(later) == {(a, b) for a, b in [("sat-0", "sat-3"), ("sat-1", "sat-4"), ("sat-2", "sat-5")]} | {
        (b, a) for a, b in [("sat-0", "sat-3"), ("sat-1", "sat-4"), ("sat-2", "sat-5")]}


def test_plane_down_cuts_every_link_of_the_plane():
    t = table()
    t.issue({"kind": "plane", "plane": 1}, 0.0, "sat-0")
    cut = t.cut_now(SETTLE_S + 1)
    assert ("sat-3", "sat-4") in cut and ("sat-0", "sat-3") in cut and ("sat-0", "sat-1") not in cut


def test_replicas_converge_whatever_the_order():
    origin = table()
    e1, _ = origin.issue({"kind": "cut", "a": "sat-0", "b": "sat-1"}, 10.0, "sat-0")
    e2, _ = origin.issue({"kind": "loss", "a": "sat-1", "b": "sat-2", "loss": 0.1}, 11.0, "sat-0")
    tomb = origin.remove(e1.id, 12.0, "sat-4")
    updates = [e1, e2, tomb, e2, e1]
    for seed in range(5):
        replica = table()
        shuffled = updates[:]
        random.Random(seed).shuffle(shuffled)
        for e in shuffled:
            replica.merge(Entry.from_wire(e.to_wire()))
        assert {x.id: x.removed for x in replica.entries()} == {e1.id: True, e2.id: False}
        assert not replica.profile("sat-0", "sat-1", 20.0, BASE).cut
        assert replica.profile("sat-1", "sat-2", 20.0, BASE).loss.p == pytest.approx(0.1)


def test_reissuing_after_a_delete_applies_again():
    t = table()
    spec = {"kind": "cut", "a": "sat-0", "b": "sat-1"}
    e, _ = t.issue(spec, 10.0, "sat-0")
    t.remove(e.id, 11.0, "sat-0")
    assert not t.profile("sat-0", "sat-1", 12.0, BASE).cut
    _, changed = t.issue(spec, 12.0, "sat-0")
    assert changed and t.profile("sat-0", "sat-1", 12.5, BASE).cut


def test_remove_unknown_and_remove_all():
    t = table()
    with pytest.raises(KeyError):
        t.remove("nope", 1.0, "sat-0")
    t.issue({"kind": "cut", "a": "sat-0", "b": "sat-1"}, 1.0, "sat-0")
    t.issue({"kind": "cut", "a": "sat-1", "b": "sat-2"}, 1.0, "sat-0")
    assert len(t.remove_all(2.0, "sat-0")) == 2 and t.listing(3.0) == []


def test_overlays_combine():
    t = table()
    for spec in ({"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "5ms"},
                 {"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "7ms", "direction": "a->b"},
                 {"kind": "bandwidth", "a": "sat-0", "b": "sat-1", "bandwidth": "10M"},
                 {"kind": "jitter", "a": "sat-0", "b": "sat-1", "jitter": "1ms", "distribution": "uniform"},
                 {"kind": "loss", "a": "sat-0", "b": "sat-1", "model": "gilbert", "p_good_to_bad": 0.1,
                  "p_bad_to_good": 0.5}):
        t.issue(spec, 0.0, "sat-0")
    p = t.profile("sat-0", "sat-1", 1.0, BASE)
    assert p.extra_delay_s == pytest.approx(0.012) and p.bandwidth_bps == 10e6
    assert p.jitter == "uniform" and p.loss.kind == "gilbert" and p.loss.loss_bad == 1.0
    assert t.profile("sat-1", "sat-0", 1.0, BASE).extra_delay_s == pytest.approx(0.005)


def test_malformed_wire_entries():
    with pytest.raises(FaultError):
        Entry.from_wire(["x", 1.0])
    with pytest.raises(FaultError):
        Entry.from_wire(["x", 1.0, "o", "no", "{}", 1.0, None])
    with pytest.raises(FaultError):
        Entry.from_wire(["x", 1.0, "o", False, "{not json", 1.0, None])
