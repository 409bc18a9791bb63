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

from agent.chaos_cli import ScenarioError, fleet_topo, parse_scenario
from agent.history import read_jsonl
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


def test_every_shipped_scenario_parses_against_a_24_satellite_fleet(fleet24):
    spec, _, _, _ = fleet24
    topo = fleet_topo(spec.directory)
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
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
