"""``orbitmesh topo`` across shells, and Hypatia's scenario reproduced from the command line."""

import json

import numpy as np
import pytest

import hypatia_reference as H
from agent.ops.cli import main
from mesh.contacts import contact_plan
from mesh.orbit import Constellation, WalkerShell, iso_to_jd
from mesh.presets import preset
from mesh.topology import Topology


def run(capsys, *argv):
    rc = main(["topo", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_path_crosses_shells_of_starlink_gen1(capsys):
    rc, out, _ = run(capsys, "path", "--preset", "starlink-gen1", "--src", "sat-10", "--dst", "sat-4300",
                     "--from", "0", "--to", "40", "--step", "20", "--json")
    assert rc == 0
    shell_of = Constellation(list(preset("starlink-gen1").shells), iso_to_jd(preset("starlink-gen1").epoch)).shell_of
    rows = [json.loads(ln) for ln in out.splitlines()]
    steps = [r for r in rows if "path" in r]
    assert len(steps) == 3
    for r in steps:
        sats = [int(x.split("-")[1]) for x in r["path"]]
        assert shell_of[sats[0]] == 0 and shell_of[sats[-1]] == 4
        assert len({shell_of[s] for s in sats}) >= 2


def test_show_lists_inter_shell_links(capsys):
    rc, out, _ = run(capsys, "show", "--preset", "kuiper", "--node", "sat-1200", "--json")
    d = json.loads(out)
    assert rc == 0 and d["shell"] == "k2"
    kinds = [ln["kind"] for ln in d["links"]]
    assert kinds.count("laser") == 4 and 1 <= kinds.count("inter-shell") <= 2
    rc, out, _ = run(capsys, "show", "--preset", "kuiper")
    assert rc == 0 and "3236 satellites" in out and "inter-shell chosen" in out
    rc, out, _ = run(capsys, "show", "--preset", "kuiper", "--inter-shell", "0", "--json")
    assert json.loads(out)["inter_shell_links"] == 0


def test_contacts_include_inter_shell_windows():
    low = WalkerShell(planes=7, sats_per_plane=8, altitude_km=550, inclination_deg=53, name="low", line_of_sight=False)
    high = WalkerShell(planes=6, sats_per_plane=7, altitude_km=600, inclination_deg=70, name="high",
                       line_of_sight=False)
    topo = Topology(Constellation([low, high], iso_to_jd("2026-01-01T00:00:00Z")), inter_shell_links=2,
                    inter_shell_interval_s=10.0)
    plan = contact_plan(topo, 0.0, 60.0, step_s=5.0, tol_s=0.05)
    cross = [c for c in plan.contacts if (c.a < 56) != (c.b < 56)]
    assert cross
    for t in np.arange(0.25, 60.0, 2.5):
        now = {tuple(p) for p in topo.inter_shell_at(float(t)).tolist()}
        for a, b in now:
            assert plan.up(a, b, float(t)) == topo.link_up(a, b, float(t)), (a, b, t)
    # a window never outlives the slot its pair was chosen in, unless re-chosen in the next
    for c in cross:
        assert topo.link_up(c.a, c.b, 0.5 * (c.start + c.end))


def test_hypatia_scenario_from_the_command_line(capsys, tmp_path):
    tles = tmp_path / "tles.txt"
    tles.write_text(f"{H.NUM_ORBITS} {H.SATS_PER_ORBIT}\n" + H.tle_text())    # Hypatia's file, header and all
    rio, spb = H.RIO_DE_JANEIRO, H.SAINT_PETERSBURG
    rc, out, err = run(capsys, "path", "--tle", str(tles), f"--src={rio[1]},{rio[2]}", f"--dst={spb[1]},{spb[2]}",
                       "--mask", "0", "--ground-range", f"{H.MAX_GSL_LENGTH_M / 1000.0}",
                       "--from", "0", "--to", "100", "--step", "50", "--json")
    assert rc == 0, err
    steps = [json.loads(ln) for ln in out.splitlines() if '"rtt_ms"' in ln]
    ref = H.rtt_table()                    # the reference's RTT each whole second (tests/test_hypatia.py checks it)
    assert [r["t"] for r in steps] == [0, 50, 100]
    for r in steps:
        assert r["rtt_ms"] == pytest.approx(ref[int(r["t"])] * 1e3, abs=0.05)


@pytest.mark.parametrize("argv, msg", [
    (["--inter-shell", "7"], "--inter-shell"),
    (["--ground-range", "-1"], "--ground-range"),
])
def test_new_flags_reject_bad_values(capsys, argv, msg):
    rc, _, err = run(capsys, "show", "--preset", "kuiper", *argv)
    assert rc == 2 and msg in err


def test_a_satellites_inter_shell_contacts_are_exactly_its_pairs_of_the_slot_that_are_up():
    """contacts_of reads each node's partners from the slot's index (a scan of every pair per call
    was O(n), asked twice a second by every satellite of gen1): the same set as the scan."""
    low = WalkerShell(planes=7, sats_per_plane=8, altitude_km=550, inclination_deg=53, name="low")
    high = WalkerShell(planes=6, sats_per_plane=7, altitude_km=600, inclination_deg=70, name="high")
    topo = Topology(Constellation([low, high], iso_to_jd("2026-01-01T00:00:00Z")), inter_shell_links=2,
                    inter_shell_interval_s=10.0)
    seen = 0
    for t in np.arange(0.3, 60.0, 3.7):
        pairs = topo.inter_shell_at(float(t))
        for i in range(topo.n_sats):
            mine = pairs[(pairs[:, 0] == i) | (pairs[:, 1] == i)].ravel().tolist()
            want = sorted(j for j in mine if j != i and topo.link_up(i, j, float(t)))
            assert topo.contacts_of(i, float(t)) == want, (i, t)
            seen += len(want)
    assert seen > 0
