"""Agreement among replicas (mesh/voting.py) and the bitflip fault's spec (mesh/chaos.py)."""

import pytest

from mesh.chaos import FaultError, FaultTable, Topo, normalise
from mesh.voting import Vote


def test_majority_decides_as_soon_as_more_than_half_agree_and_names_the_dissenter():
    v = Vote(3, "majority")
    assert v.add("sat-1", True, "good") is None
    assert v.add("sat-5", True, "flipped") is None            # 1–1: undecided
    d = v.add("sat-9", True, "good")
    assert d.ok and d.digest == "good" and d.node == "sat-1" and d.reason == "2 of 3 replicas agree"
    assert v.dissenters() == ["sat-5"] and v.failed() == []
    assert v.add("sat-9", True, "good") is None                # a repeat changes nothing


def test_majority_fails_once_no_answer_can_win():
    v = Vote(3, "majority")
    v.add("a", True, "x")
    assert v.add("b", False, None) is None                     # x could still win with c
    d = v.add("c", True, "y")
    assert not d.ok and "no majority" in d.reason and v.failed() == ["b"]
    v5 = Vote(5, "majority")
    for node, dig in (("a", "x"), ("b", "y"), ("c", "z")):
        decided = v5.add(node, True, dig)
    assert decided is None                                     # 3 left... 2 left: x could reach 3
    assert not v5.add("d", True, "w").ok                       # no answer can reach 3 of 5 now


def test_first_takes_the_first_success_and_later_answers_still_show_dissent():
    v = Vote(3, "first")
    assert v.add("a", False, None) is None
    d = v.add("b", True, "x")
    assert d.ok and d.node == "b"
    assert v.add("c", True, "y") is None and v.dissenters() == ["c"] and v.failed() == ["a"]
    everyone_failed = Vote(2, "first")
    everyone_failed.add("a", False, None)
    assert not everyone_failed.add("b", False, None).ok


@pytest.mark.parametrize("kwargs", [{"replicas": 0}, {"replicas": 8}, {"replicas": 3, "mode": "best"}])
def test_bad_votes_are_refused(kwargs):
    with pytest.raises(ValueError):
        Vote(**kwargs)


TOPO = Topo(frozenset({"sat-0", "sat-1"}), frozenset({frozenset({"sat-0", "sat-1"})}), {"sat-0": (0, 0), "sat-1": (0, 1)})


def test_a_bitflip_fault_names_one_node_and_a_rate():
    spec, directed, settle, duration = normalise({"kind": "bitflip", "node": "sat-1", "rate": "10%",
                                                  "duration_s": 5}, TOPO)
    assert spec == {"kind": "bitflip", "node": "sat-1", "rate": 0.1, "duration_s": 5.0} and not directed
    for bad, why in (({"kind": "bitflip", "node": "sat-9", "rate": 0.1}, "sat-9"),
                     ({"kind": "bitflip", "node": "sat-1", "rate": 1.5}, "outside"),
                     ({"kind": "bitflip", "node": "sat-1"}, "rate"),
                     ({"kind": "bitflip", "node": "sat-1", "rate": 0.1, "direction": "a->b"}, "unknown fields")):
        with pytest.raises(FaultError, match=why):
            normalise(bad, TOPO)
    table = FaultTable(TOPO)
    table.issue({"kind": "bitflip", "node": "sat-1", "rate": 0.25, "duration_s": 10}, 100.0, "sat-0")
    assert table.result_corruption("sat-1", 101.0) == 0.25
    assert table.result_corruption("sat-0", 101.0) == 0.0 and table.result_corruption("sat-1", 111.0) == 0.0
    assert table.cut_now(101.0) == frozenset() and table.degraded_now(101.0) == frozenset()
