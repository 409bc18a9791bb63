"""``orbitmesh sim`` on the production nodes (``agent/ops/sim_nodes.py``): scenario figures, determinism, trace, replay.

In-process runs share one result per spec (``_run``): each is a whole fleet of
24 production nodes on a virtual clock, a few seconds of CPU.  The CLI's
byte-for-byte check across processes (hash seed fixed by its re-exec) is slow-marked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import entropy
from agent.ops.cli import main
from agent.ops.sim_nodes import SimRunError, SimSpec, run
from agent.ops.sim_trace import Trace, first_divergence

ROOT = Path(__file__).resolve().parent.parent
SPEC = SimSpec(preset="demo", seconds=28.0, seed=3, tasks=6, deadline_s=10.0, restarts=True)
_cache: dict = {}


def _run(spec: SimSpec) -> tuple[dict, list[str]]:
    """(report, trace lines) of ``spec``; the first call per spec runs it."""
    if spec not in _cache:
        trace = Trace(None, spec.args())
        _cache[spec] = (run(spec, trace), trace.lines)
    return _cache[spec]


def test_a_kill_is_detected_everywhere_with_no_false_suspicion_and_tasks_succeed():
    rep, lines = _run(SPEC)
    assert rep["engine"] == "nodes" and rep["nodes"] == 24
    [death] = rep["deaths"]
    assert death["reached"] == death["of"] == 23 and 0 < death["first_suspect_s"] <= death["all_dead_s"] < 6, death
    [back] = rep["rejoins"]
    assert back["incarnation"] == 1 and back["reached"] == 23 and back["all_alive_s"] < 5, back
    fp = rep["false_positives"]
    assert fp["suspicions"] == fp["dead_declarations"] == fp["link_down_reports_false"] == 0, fp
    assert rep["tasks"]["submitted"] == rep["tasks"]["succeeded"] == 6, rep["tasks"]
    [cut] = rep["cuts"]
    assert cut["route_avoids_cut"] and cut["known_everywhere_s"] < 2, cut
    assert rep["frames"]["frames_sent"] > 1000 and rep["frames"]["dropped_cut"] >= 0
    events = [json.loads(x)["ev"] for x in lines[1:]]
    assert {"crash", "restart", "fault", "verdict", "task", "frames"} <= set(events)


def test_the_same_seed_gives_the_same_report_and_trace():
    """In one process (one hash seed); across processes and with another seed: the slow CLI test below."""
    rep, lines = _run(SPEC)
    trace = Trace(None, SPEC.args())
    again = run(SPEC, trace)
    assert json.dumps(again, sort_keys=True) == json.dumps(rep, sort_keys=True)
    assert trace.lines == lines and len(lines) > 1000
    assert not entropy.is_seeded()        # the process is unseeded again after a run


def test_the_schedule_does_not_depend_on_the_speed_of_the_machine(monkeypatch):
    """A loaded machine (CI) made chores yield at other points, and a seeded run's bytes differed."""
    import types

    from agent.runtime import periodic
    rep, lines = _run(SPEC)
    ticks = iter(range(10**9))
    slow = types.SimpleNamespace(perf_counter=lambda: next(ticks) * 0.01)     # every chore looks slow
    monkeypatch.setattr(periodic, "time", slow)
    trace = Trace(None, SPEC.args())
    again = run(SPEC, trace)
    assert next(ticks) > 0, "the chore heap no longer reads a CPU clock: drop this test"
    assert json.dumps(again, sort_keys=True) == json.dumps(rep, sort_keys=True)
    assert trace.lines == lines


def test_a_replay_finds_the_first_divergence(tmp_path):
    _, lines = _run(SPEC)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert first_divergence(path, lines) is None
    changed = lines[:5] + [lines[5].replace('"t":', '"t":1')] + lines[6:]
    assert first_divergence(path, changed) == {"line": 6, "recorded": lines[5], "replayed": changed[5]}
    assert first_divergence(path, lines[:-1])["replayed"] is None


def test_the_trace_is_bounded():
    trace = Trace(None, {}, max_lines=3)
    for k in range(10):
        trace.event(float(k), "x", k=k)
    assert len(trace.lines) == 1 + 3 + 1 and json.loads(trace.lines[-1]) == {"t": 3.0, "ev": "truncated",
                                                                             "after_lines": 3}


def test_entropy_ids_follow_the_seed():
    with entropy.seeded(7):
        a = [entropy.hex_id(), entropy.hex_id(16), entropy.rng("x").random()]
    with entropy.seeded(7):
        b = [entropy.hex_id(), entropy.hex_id(16), entropy.rng("x").random()]
    assert a == b and len(a[0]) == 32 and len(a[1]) == 16
    assert entropy.hex_id() != entropy.hex_id()
    with pytest.raises(ValueError):
        entropy.hex_id(33)


@pytest.mark.parametrize("argv, why", [
    (["sim", "--seconds", "10"], "too few"),
    (["sim", "--engine", "nodes", "--planes", "4", "--per-plane", "4"], "--engine des"),
    (["sim", "--engine", "nodes", "--membership", "small"], "--engine des"),
    (["sim", "--engine", "des", "--trace", "x.jsonl"], "--trace needs --engine nodes"),
    (["sim", "--preset", "nowhere"], "nowhere"),
    (["sim", "--trace-max-lines", "0"], "≥ 1"),
])
def test_bad_sim_flags_are_refused_with_a_reason(argv, why, capsys):
    assert main(argv) == 2
    assert why in capsys.readouterr().err


def test_a_replay_of_something_else_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["sim", "--replay", str(bad)]) == 2
    assert "not a simulator trace" in capsys.readouterr().err
    assert main(["sim", "--replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_spec_errors_are_clear():
    with pytest.raises(SimRunError, match="too few"):
        run(SimSpec(seconds=5.0))


@pytest.mark.slow
def test_the_cli_is_byte_identical_across_processes_and_its_trace_replays(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}     # the CLI fixes it itself
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "agent", "sim", "--seconds", "28", "--tasks", "6", "--deadline", "10",
            "--restart", "--loss", "0.05", "--json"]
    outs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        trace = tmp_path / f"{name}.jsonl"
        got = subprocess.run(argv + ["--seed", str(seed), "--trace", str(trace)], capture_output=True, env=env,
                             timeout=600, cwd=tmp_path)
        assert got.returncode == 0, got.stderr.decode()[-2000:]
        outs.append((got.stdout, trace.read_bytes()))
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[2][0] and outs[0][1] != outs[2][1]
    assert json.loads(outs[0][0])["tasks"]["succeeded"] == 6
    got = subprocess.run([sys.executable, "-m", "agent", "sim", "--replay", str(tmp_path / "a.jsonl")],
                         capture_output=True, env=env, timeout=600, cwd=tmp_path, text=True)
    assert got.returncode == 0 and "identical" in got.stdout, got.stdout + got.stderr


def test_progress_reports_simulated_time_without_changing_the_run():
    """The CLI's progress lines come from an instrument on the loop's idle turns: a run with it is
    the run without it, line for line."""
    from agent.ops.sim_nodes import Progress, SimSpec, run
    seen = []
    spec = SimSpec(preset="demo", seconds=20.0, seed=3, kills=1, cuts=1)
    with_it = run(spec, progress=Progress(seen.append, every_s=0.0))
    assert run(spec) == with_it
    assert seen and seen == sorted(seen) and 0 <= seen[0] and seen[-1] <= 20.0 + 1e-9
