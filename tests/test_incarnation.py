"""An agent's incarnation across its lives (``agent.daemon.next_incarnation``)."""

from __future__ import annotations

from agent.daemon import next_incarnation


def test_a_first_life_is_0_and_each_restart_outranks_the_last(tmp_path):
    assert [next_incarnation(tmp_path) for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / "incarnation").read_text() == "2\n"


def test_an_unreadable_or_negative_record_counts_as_no_earlier_life(tmp_path):
    path = tmp_path / "incarnation"
    path.write_text("not a number\n")
    assert next_incarnation(tmp_path) == 0
    path.write_text("-7\n")
    assert next_incarnation(tmp_path) == 0
    assert next_incarnation(tmp_path) == 1
