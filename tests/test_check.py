"""``orbitmesh check`` on 24 real agents: ≥ 200 tasks through cuts, kills and 10% loss, nothing lost.

The scenario (scenarios/ci-mix.toml) puts 10% loss on every laser link, cuts
two links in turn, and kills -9 an entry node (sat-6) and an executing node
(sat-13), both restarted.  The checker submits through four entry nodes,
then verifies every accepted task against onnxruntime run here.
"""

import json
import subprocess
import sys

import pytest

from agent.ops.chaos_cli import ScenarioError, fleet_topo, parse_scenario
from agent.ops.history import read_jsonl
from tests.conftest import ROOT, local_fleet
from tests.test_history import check_history


@pytest.fixture(scope="module")
def fleet24(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("f24"), models_dir, 24) as running:
        yield running


def orbitmesh(spec, *args, timeout=400):
    return subprocess.run([sys.executable, "-m", "agent", "--dir", str(spec.directory), "--models",
                           str(spec.models), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_check_passes_200_tasks_through_cuts_kills_and_loss(fleet24, tmp_path):
    spec, _, _, _ = fleet24
    r = orbitmesh(spec, "check", "--scenario", str(ROOT / "scenarios" / "ci-mix.toml"), "--tasks", "200", "--json",
                  "--history", str(tmp_path / "h"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("{"):])
    c = report["counts"]
    assert report["ok"] and c["accepted"] >= 200 and c["submitted"] == 200, c
    assert c["lost"] == c["duplicated"] == c["wrong"] == c["unexplained"] == 0, report["violations"]
    assert c["succeeded"] + c["failed"] == c["accepted"]
    kinds = [f["action"] for f in report["faults"]]
    assert kinds.count("kill") == 2 and kinds.count("restart") == 2 and kinds.count("apply") >= 48 + 2
    assert any(f.get("node") == "sat-6" for f in report["faults"])        # one of the entry nodes
    # The same run as a Jepsen-style history: well formed, and saying what the report says.
    rows = read_jsonl(tmp_path / "h.jsonl")
    counts = check_history(rows)
    assert len((tmp_path / "h.edn").read_text().splitlines()) == len(rows) == sum(counts.values())
    accepted = {r["value"]["key"]: r["value"]["task_id"] for r in rows if r["f"] == "submit" and r["type"] == "ok"}
    assert len(accepted) == c["accepted"] and len(set(accepted.values())) == c["accepted"]
    finals = {r["value"]["task_id"] for r in rows if r["f"] == "read" and r["type"] == "ok"
              and r["value"]["status"] in ("succeeded", "failed")}
    assert finals == set(accepted.values())
    nemesis = [r for r in rows if r["process"] == "nemesis" and r["type"] != "invoke"]
    assert len(nemesis) == len(report["faults"]) + len(report["restarted_at_end"])
    assert sorted(r["f"] for r in nemesis if r["f"] in ("kill", "restart")) == ["kill", "kill", "restart", "restart"]


@pytest.mark.timeout(600)     # the scenario alone runs ~90 s; the 24-agent fleet may start here
def test_recovered_tasks_end_by_their_deadline_while_their_target_is_paused(fleet24):
    """Issue 18: sat-9 paused, entry sat-12 restarted while it holds a task for sat-9; every
    task ends by its deadline (the checker's `late` verdict), none lost."""
    spec, _, _, _ = fleet24
    r = orbitmesh(spec, "check", "--scenario", str(ROOT / "scenarios" / "pause-target-restart-entry.toml"),
                  "--task-timeout", "20", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("{"):])
    c = report["counts"]
    assert report["ok"] and c["late"] == c["lost"] == c["unexplained"] == c["wrong"] == 0, report["violations"]
    # refused, not lost: submissions to sat-12 while it restarts, and for sat-9 while it is declared dead
    assert c["succeeded"] + c["failed"] == c["accepted"] >= 150
    assert [f["action"] for f in report["faults"]] == ["pause", "kill", "restart", "resume"]


def test_every_shipped_scenario_parses_against_a_24_satellite_fleet(fleet24):
    spec, _, _, _ = fleet24
    topo = fleet_topo(spec.directory)
    paths = sorted((ROOT / "scenarios").glob("*.toml"))
    assert paths, "no shipped scenario found: the loop below would check nothing"
    for path in paths:
        assert parse_scenario(path.read_text(), topo), path


@pytest.mark.parametrize("text, words", [
    ('[[events]]\nat = "1s"\naction = "kill"\nnode = "sat-99"\n', "needs 'node'"),
    ('[[events]]\nat = "1s"\naction = "kill"\n', "needs 'node'"),
    ('[[events]]\nat = "1s"\naction = "explode"\nnode = "sat-1"\n', "action must be"),
    ('[[events]]\nat = "1s"\naction = "pause"\nnode = "sat-1"\nfor = "2s"\n', "takes only 'node'"),
    ('[[events]]\nat = "1s"\nkind = "loss"\nlink = "some"\nloss = 0.1\n', 'must be "random" or "all"'),
    ("[[events]]\nat = \n", "not valid TOML"),
])
def test_bad_scenarios_are_refused_with_the_reason(fleet24, text, words):
    spec, _, _, _ = fleet24
    with pytest.raises(ScenarioError, match=words):
        parse_scenario(text, fleet_topo(spec.directory))


def test_check_refuses_bad_input_before_running_anything(fleet24, tmp_path):
    spec, _, _, _ = fleet24
    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\nat = "1s"\naction = "kill"\nnode = "sat-99"\n')
    r = orbitmesh(spec, "check", "--scenario", str(bad), "--tasks", "5", timeout=60)
    assert r.returncode == 2 and "sat-99" in r.stderr
    r = orbitmesh(spec, "check", "--entries", "sat-0,sat-77", "--tasks", "5", timeout=60)
    assert r.returncode == 2 and "unknown entry nodes ['sat-77']" in r.stderr
    r = orbitmesh(spec, "chaos", "restart", "sat-3", timeout=60)   # a node chaos round trip first
    assert r.returncode == 0, r.stderr
    r = orbitmesh(spec, "chaos", "kill", "sat-3", timeout=60)
    assert r.returncode == 0, r.stderr
    r = orbitmesh(spec, "chaos", "kill", "sat-3", timeout=60)
    assert r.returncode == 1 and "sat-3 is already down" in r.stderr
    assert orbitmesh(spec, "chaos", "restart", "sat-3", timeout=60).returncode == 0


def test_a_task_that_ends_after_its_deadline_is_a_violation_unless_its_entry_was_down():
    """The checker's "late" verdict (issue 18: recovered tasks stayed `accepted` past their deadline)."""
    import inspect

    from agent.ops.check import DOWN_AT_DEADLINE, LATE_GRACE_S, Job, Report, _late
    from agent.runtime.node import Node
    on_time = {"status": "failed", "created": 100.0, "finished": 120.0 + LATE_GRACE_S, "error": "no route"}
    late = {"status": "succeeded", "created": 100.0, "finished": 200.0, "error": None}
    entry_down = {"status": "failed", "created": 100.0, "finished": 200.0,
                  "error": f"sat-12 {DOWN_AT_DEADLINE}"}
    assert _late(on_time, 20.0) == "" and _late(entry_down, 20.0) == ""
    assert _late(late, 20.0) == "late: succeeded 80.0 s after its 20 s deadline"
    assert DOWN_AT_DEADLINE in inspect.getsource(Node._recover_row)      # the entry's own words
    job = Job(0, "sat-12", "k", 0, task_id="sat-12-x", final=late, violations=[_late(late, 20.0)])
    report = Report([job], [], [], 1.0)
    assert report.counts()["late"] == 1 and not report.ok and "1 ended after their deadline" in report.text()


# -- jobs (issue 19): `orbitmesh check --jobs` -------------------------------------------------

@pytest.mark.timeout(600)
def test_check_jobs_through_kills_of_executing_satellites_and_homes_and_cuts(fleet24):
    """Issue 19: 20 jobs of 50 inputs while the scenario cuts links and kills two satellites, and the
    checker kills two satellites that run a shard and one home of a running job: every output equal
    to onnxruntime here, no job lost or duplicated, no shard re-sent more than it had in flight, and
    shards moved off killed satellites (the verdicts themselves are unit-tested below)."""
    spec, _, _, _ = fleet24
    r = orbitmesh(spec, "check", "--jobs", "20", "--job-inputs", "50", "--scenario",
                  str(ROOT / "scenarios" / "jobs-kill-and-cut.toml"), "--kill-executing", "2", "--kill-homes", "1",
                  "--json", timeout=560)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    c = report["counts"]
    assert report["ok"] and c["submitted"] == c["accepted"] == c["succeeded"] == 20, (c, report["violations"])
    assert c["lost"] == c["duplicated"] == c["wrong"] == c["unexplained"] == c["overworked"] == 0
    assert report["inputs"] == 20 * 50 and report["shards"] == 20 * 4
    assert report["resent"] <= report["resent_bound"]
    kills = report["kills"]
    # the scenario's two kills, and the checker's (one may find nothing running on a starved host)
    assert len(kills) >= 2 + 2 and {k["node"] for k in kills} >= {"sat-9", "sat-15"}, report["kills_missed"]
    moved = [m for k in kills for m in k["moved"]]
    assert moved and report["moved_by_kill"] == len(moved), kills     # a shard moved off a killed satellite
    assert all(m["seconds"] > 0 for m in moved)
    assert report["moves"] >= len(moved) and sum(report["moves_by_reason"].values()) == report["moves"]
    kinds = [f["action"] for f in report["faults"]]
    assert kinds.count("kill") == len(kills) and kinds.count("restart") + len(report["restarted_at_end"]) >= len(kills)
    print(f"jobs {c['succeeded']}/{c['submitted']}, inputs {report['inputs']}, moves {report['moves']} "
          f"{report['moves_by_reason']}, resent {report['resent']} (bound {report['resent_bound']}), job s "
          f"{report['job_s']}, kill → next placement s {report['kill_to_placement_s']}, home resumes s "
          f"{[k['resumed_s'] for k in kills if k['resumed_s']]}, missed {report['kills_missed']}")


def test_check_jobs_refuses_bad_input_before_running_anything(fleet24):
    spec, _, _, _ = fleet24
    for args, words in ((["--jobs", "0"], "--jobs must be at least 1"),
                        (["--jobs", "2", "--job-inputs", "0"], "--job-inputs must be in 1–10000"),
                        (["--jobs", "2", "--chunk", "999"], "--chunk must be in 1–256"),
                        (["--jobs", "2", "--target", "sat-3"], "--target for jobs is a placement policy"),
                        (["--jobs", "2", "--kill-homes", "5"], "--kill-homes must be in 0–4"),
                        (["--jobs", "2", "--kill-executing", "20"], "--kill-executing must be in 0–19"),
                        (["--jobs", "2", "--history", "h"], "--history records task workloads only")):
        r = orbitmesh(spec, "check", *args, timeout=60)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)


def _job_status(n=10, window=2, chunk=5):
    """A finished job of ``n`` inputs in two shards, shard 1 moved once (its satellite died)."""
    half = n // 2
    return {"job_id": "sat-0-job-1", "status": "succeeded", "error": None, "inputs": n, "done": n,
            "window": window, "chunk": chunk, "created": 100.0, "finished": 120.0, "moves": 1, "resent": 3,
            "ran_on": {"sat-1": half, "sat-3": n - half},
            "shards": [
                {"shard": 0, "inputs": [0, half], "node": "sat-1", "checkpoint": half, "resent": 0,
                 "moves": [{"at": 101.0, "from": None, "to": "sat-1", "why": "placed (auto)", "resume_at": 0}]},
                {"shard": 1, "inputs": [half, n], "node": "sat-3", "checkpoint": n, "resent": 3,
                 "moves": [{"at": 101.0, "from": None, "to": "sat-2", "why": "placed (auto)", "resume_at": half},
                           {"at": 107.5, "from": "sat-2", "to": "sat-3",
                            "why": "moved: sat-2 declared dead by the fleet's membership (auto)",
                            "resume_at": half + 2}]}]}


def test_job_verdicts_catch_every_kind_of_violation():
    """The checker's job verdicts on crafted statuses: a correct job passes, each broken rule is named."""
    import copy

    import numpy as np

    from agent.ops.check_jobs import JobReport, JobRun, judge
    n = 10
    expected = [{"label": np.array([k % 10], dtype=np.int64), "probabilities": np.full((1, 3), k / 10, np.float32)}
                for k in range(n)]

    def tensor(a):
        return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tolist()}
    outputs = [{name: tensor(a) for name, a in e.items()} for e in expected]
    good = _job_status(n)
    assert judge(good, outputs, expected) == []
    near = copy.deepcopy(outputs)
    near[3]["probabilities"]["data"][0][0] += 1e-7                 # within rtol/atol: still right
    assert judge(good, near, expected) == []

    def verdicts(status=None, outs=outputs):
        return [v.split(":")[0] for v in judge(status or good, outs, expected)]

    wrong = copy.deepcopy(outputs)
    wrong[4]["label"]["data"] = [7]                                 # a label is exact
    assert verdicts(outs=wrong) == ["wrong"]
    assert "first input 4" in judge(good, wrong, expected)[0]
    assert verdicts(outs=outputs + outputs[:1]) == ["duplicated"]    # one output too many
    assert verdicts(outs=outputs[:-1]) == ["duplicated"]
    broken = {"failed": {"status": "failed", "error": None}, "lost": {"status": "failed", "error": "deadline passed"},
              "running": {"status": "running", "error": None}}
    assert verdicts(dict(good, **broken["failed"]), None) == ["unexplained"]
    assert verdicts(dict(good, **broken["lost"]), None) == ["lost"]
    assert verdicts(dict(good, **broken["running"]), None) == ["lost"]
    assert verdicts(outs=None) == ["lost"]                           # succeeded, result unreadable

    def mutated(change):
        st = copy.deepcopy(good)
        change(st)
        return verdicts(st)
    # shard 1 [5, 10) moved once, resuming at 7: at most inputs 7–9 were in flight past its checkpoint
    assert mutated(lambda st: st["shards"][1].update(resent=4)) == ["overworked"]
    assert mutated(lambda st: st["shards"][1].update(resent=3)) == []                 # exactly the bound
    big = _job_status(40)                                     # shard 1 [20, 40), resuming at 22: 2 chunks of 5
    assert [v.split(":")[0] for v in judge(dict(big, shards=[big["shards"][0], dict(big["shards"][1], resent=11)]),
                                           [outputs[0]] * 40, [expected[0]] * 40)] == ["overworked"]
    assert [v.split(":")[0] for v in judge(dict(big, shards=[big["shards"][0], dict(big["shards"][1], resent=10)]),
                                           [outputs[0]] * 40, [expected[0]] * 40)] == []
    assert mutated(lambda st: st["shards"][0].update(resent=1)) == ["overworked"]     # re-sent, never moved
    assert mutated(lambda st: st["shards"][1]["moves"][1].update(resume_at=n // 2 - 1)) == ["overworked"]
    assert mutated(lambda st: st["ran_on"].update({"sat-9": 2})) == ["duplicated"]   # 12 inputs checkpointed
    assert mutated(lambda st: st["shards"][1].update(inputs=[4, n])) == ["duplicated"]   # shards overlap
    assert mutated(lambda st: st["shards"][1].update(checkpoint=n - 1)) == ["lost"]
    # The report counts each verdict and fails on any.
    runs = [JobRun(0, "sat-0", "k0", [], job_id="sat-0-job-1", status=good),
            JobRun(1, "sat-0", "k1", [], job_id="sat-0-job-2", status=good,
                   violations=judge(dict(good, shards=[good["shards"][0], dict(good["shards"][1], resent=4)]),
                                    outputs, expected))]
    report = JobReport(runs, [], [], [], 1.0)
    assert report.counts()["overworked"] == 1 and not report.ok and "1 overworked" in report.text()
    assert JobReport(runs[:1], [], [], [], 1.0).ok


def test_job_kill_effects_name_the_shards_a_killed_node_held_and_when_they_moved():
    from agent.ops.check_jobs import NodeEvent, kill_effects
    st = _job_status()
    home = dict(_job_status(), job_id="sat-0-job-2")
    home["shards"][0]["moves"].append({"at": 112.0, "from": "sat-1", "to": "sat-4",
                                       "why": "resumed: the home restarted (auto)", "resume_at": 3})
    events = [NodeEvent(105.0, 5.0, "kill", "sat-2", ""), NodeEvent(106.0, 6.0, "kill", "sat-0", ""),
              NodeEvent(109.0, 9.0, "restart", "sat-2", ""), NodeEvent(111.0, 11.0, "restart", "sat-0", ""),
              NodeEvent(130.0, 30.0, "kill", "sat-3", "")]              # after every job had finished
    sat2, sat0, sat3 = kill_effects([st, home], events)
    assert sat2["held"] == 2 and [m["seconds"] for m in sat2["moved"]] == [2.5, 2.5]
    assert sat2["moved"][0]["to"] == "sat-3" and "declared dead" in sat2["moved"][0]["why"]
    assert sat0["held"] == 0 and sat0["resumed_s"] == [6.0]     # a home: its shard resumed 6 s after
    assert sat3["held"] == 0 and sat3["moved"] == []
    placed = dict(_job_status(), job_id="sat-0-job-3")
    placed["shards"][1]["moves"][0]["at"] = 105.5                     # placed on sat-2 after its kill
    assert kill_effects([placed], events[:1] + events[2:3])[0]["placed_while_down"] == 1
