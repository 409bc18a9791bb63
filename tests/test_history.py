"""Jepsen-style histories (agent.ops.history): pairing rules, crashed processes, JSONL and EDN alike."""

import json

import edn_format
import pytest
from edn_format import Keyword

from agent.ops.history import NEMESIS, History, read_jsonl


def test_every_completion_pairs_with_its_process_open_invoke():
    h = History()
    a = h.invoke(0, "submit", {"key": "k0"})
    with pytest.raises(ValueError, match="already has operation 0 open"):
        h.invoke(0, "read", {"task_id": "t"})
    b = h.invoke(1, "submit", {"key": "k1"})
    h.complete(b, "fail", error="HTTP 400")
    ok = h.complete(a, "ok", {"key": "k0", "task_id": "sat-1-ab"})
    with pytest.raises(ValueError, match="is not open"):
        h.complete(a, "ok")
    with pytest.raises(ValueError, match="one of"):
        h.complete(h.invoke(2, "read"), "invoke")
    assert [(o.type, o.process) for o in h.ops] == [("invoke", 0), ("invoke", 1), ("fail", 1), ("ok", 0),
                                                    ("invoke", 2)]
    assert ok.value == {"key": "k0", "task_id": "sat-1-ab"} and h.ops[2].value == {"key": "k1"}
    assert [o.index for o in h.ops] == list(range(5))
    assert all(x.time <= y.time for x, y in zip(h.ops, h.ops[1:]))


def test_both_files_hold_the_same_operations(tmp_path):
    h = History()
    op = h.invoke(NEMESIS, "kill", {"node": "sat-3"})
    h.complete(op, "ok", {"node": "sat-3", "result": "killed sat-3"})
    op = h.invoke(7, "submit", {"key": "k", "note": 'quote " and newline \n'})
    h.complete(op, "info", error="connection refused")
    written = h.write(tmp_path / "run.edn")
    assert written == [tmp_path / "run.jsonl", tmp_path / "run.edn"]
    rows = read_jsonl(written[0])
    edn_rows = [edn_format.loads(line) for line in written[1].read_text().splitlines()]
    assert len(rows) == len(edn_rows) == 4
    for row, e in zip(rows, edn_rows):
        assert e[Keyword("type")] == Keyword(row["type"]) and e[Keyword("f")] == Keyword(row["f"])
        assert e[Keyword("index")] == row["index"] and e[Keyword("time")] == row["time"]
    assert edn_rows[0][Keyword("process")] == Keyword("nemesis") and edn_rows[3][Keyword("process")] == 7
    assert edn_rows[2][Keyword("value")][Keyword("note")] == 'quote " and newline \n'
    assert rows[3] == {"index": 3, "type": "info", "process": 7, "f": "submit",
                       "value": {"key": "k", "note": 'quote " and newline \n'}, "time": rows[3]["time"],
                       "error": "connection refused"}
    assert json.loads(written[0].read_text().splitlines()[0])["process"] == "nemesis"


def check_history(rows: list[dict]) -> dict[str, int]:
    """Well-formed: each process alternates invoke/completion, a completion repeats its
    invoke's f, and a process that saw info never runs again.  Returns the type counts."""
    open_op, crashed, counts = {}, set(), {}
    for r in rows:
        p = r["process"]
        counts[r["type"]] = counts.get(r["type"], 0) + 1
        assert p not in crashed, f"process {p} ran after an info: {r}"
        if r["type"] == "invoke":
            assert p not in open_op, f"two open operations on process {p}: {r}"
            open_op[p] = r
        else:
            inv = open_op.pop(p)
            assert inv["f"] == r["f"] and r["time"] >= inv["time"], (inv, r)
            if r["type"] == "info" and p != "nemesis":
                crashed.add(p)
    assert not open_op, f"operations never completed: {list(open_op.values())[:3]}"
    return counts
