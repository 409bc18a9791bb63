"""``orbitmesh topo show | path | contacts`` through its own small parser."""

import argparse
import json

import pytest

from agent.ops.cli import main
from agent.ops.topo_cli import register
from mesh.config import config_to_toml
from mesh.orbit import WalkerShell, iso_to_jd
from mesh.presets import preset
from mesh.tle import walker_tles


def run(capsys, *argv):
    rc = main(["topo", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_register_adds_topo_to_any_parser():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(["topo", "path", "--preset", "kuiper-k1", "--src", "london", "--dst", "10,20",
                          "--from", "5", "--to", "60", "--step", "5", "--json"])
    assert args.func.__name__ == "cmd_path" and args.t_from == "5" and args.json
    with pytest.raises(SystemExit):
        ap.parse_args(["topo", "show", "--preset", "demo", "--tle", "x.tle"])   # one source only


def test_show_summary_and_satellite(capsys):
    rc, out, _ = run(capsys, "show", "--preset", "starlink-s1", "--at", "60")
    assert rc == 0 and "1584 satellites" in out and "laser links up 3168/3168" in out
    rc, out, _ = run(capsys, "show", "--preset", "starlink-s1", "--node", "sat-17", "--json")
    d = json.loads(out)
    assert rc == 0 and d["node"] == "sat-17" and d["plane"] == 0 and d["slot"] == 17
    lasers = [ln for ln in d["links"] if ln["kind"] == "laser"]
    assert len(lasers) == 4 and all(ln["up"] for ln in lasers)
    assert 0.3 < d["eclipse_fraction"] < 0.4 or d["eclipse_fraction"] == 0.0
    in_plane = [ln for ln in lasers if ln["node"] in ("sat-16", "sat-18")]
    assert all(ln["latency_ms"] == pytest.approx(6.58, abs=0.05) for ln in in_plane)


def test_show_ground_station(capsys):
    rc, out, _ = run(capsys, "show", "--preset", "starlink-s1", "--node", "tokyo", "--at", "2026-01-01T00:10:00Z",
                     "--handover", "highest_elevation", "--json")
    d = json.loads(out)
    assert rc == 0 and d["node"] == "gs-tokyo" and d["t"] == pytest.approx(600.0, abs=1e-3)
    assert d["visible"] and all(v["elevation_deg"] >= 25 for v in d["visible"])
    assert sum(v["linked"] for v in d["visible"]) == 1 and d["serving"] in {v["node"] for v in d["visible"]}
    rc, out, _ = run(capsys, "show", "--preset", "starlink-s1", "--node=-33.9,18.4")   # '=' keeps argparse from reading it as an option
    assert rc == 0 and "gs-33.9000S,18.4000E" in out and "elev" in out


def test_path_text_and_json(capsys):
    rc, out, _ = run(capsys, "path", "--preset", "starlink-s1", "--src", "london", "--dst", "tokyo",
                     "--from", "0", "--to", "120", "--step", "30")
    lines = out.strip().splitlines()
    assert rc == 0 and "gs-london → gs-tokyo" in lines[0]
    steps = lines[2:-1]
    assert len(steps) == 5 and all("gs-london" in s and s.rstrip().endswith("gs-tokyo") for s in steps)
    assert "path change(s)" in lines[-1]
    rc, out, _ = run(capsys, "path", "--preset", "starlink-s1", "--src", "london", "--dst", "40.71,-74.01",
                     "--to", "20", "--step", "10", "--json")
    rows = [json.loads(x) for x in out.strip().splitlines()]
    assert rc == 0 and [r["t"] for r in rows] == [0.0, 10.0, 20.0]
    for r in rows:
        assert r["path"][0] == "gs-london" and r["path"][-1] == "gs-40.7100N,74.0100W"
        assert r["hops"] == len(r["path"]) - 1 and r["rtt_ms"] == pytest.approx(2 * r["one_way_ms"])
        # London–New York is ~5,570 km: RTT through LEO is above 2·5,570 km / c
        assert 37.1 < r["rtt_ms"] < 80
    assert rows[0]["changed"] is False


def test_contacts(capsys):
    rc, out, _ = run(capsys, "contacts", "--preset", "starlink-s1", "--node", "sydney", "--duration", "300", "--json")
    rows = [json.loads(x) for x in out.strip().splitlines()]
    assert rc == 0 and rows and all(r["b"] == "gs-sydney" and r["kind"] == "ground" for r in rows)
    assert all(0.0 <= r["start"] <= r["end"] <= 300.0 for r in rows)
    rc, out, _ = run(capsys, "contacts", "--preset", "telesat-t1", "--duration", "60", "--kind", "laser")
    assert rc == 0 and out.strip().endswith("689 window(s)")


def test_tle_file_and_config_file(capsys, tmp_path):
    shell = WalkerShell(planes=8, sats_per_plane=12, altitude_km=700, inclination_deg=60, phasing=1, name="w")
    tle = tmp_path / "walker.tle"
    tle.write_text(walker_tles([shell], iso_to_jd("2026-05-01T00:00:00Z")))
    rc, out, _ = run(capsys, "show", "--tle", str(tle))
    assert rc == 0 and "96 satellites" in out and "2026-05-01T00:00:00.000Z" in out
    assert "delta       8 planes" in out
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('name = "x"\n[tle]\nfile = "walker.tle"\n[ground]\nstations = ["paris"]\n')
    rc, out, _ = run(capsys, "show", "--config", str(cfg), "--node", "gs-paris", "--json")
    assert rc == 0 and json.loads(out)["station"]["name"] == "paris"
    cfg.write_text(config_to_toml(preset("demo")))
    rc, out, _ = run(capsys, "show", "--config", str(cfg), "--node", "sat-3")
    assert rc == 0 and "sat-3" in out


@pytest.mark.parametrize("argv, msg", [
    (["show", "--node", "atlantis"], "unknown ground station"),
    (["show", "--node", "sat-99"], "unknown node 'sat-99'"),
    (["show", "--preset", "nope"], "unknown preset"),
    (["show", "--tle", "/nonexistent.tle"], "cannot read"),
    (["show", "--at", "tomorrow"], "time 'tomorrow'"),
    (["path", "--src", "sat-0", "--dst", "sat-1", "--step", "0"], "--step"),
    (["show", "--mask", "95"], "--mask"),
])
def test_errors_are_clear(capsys, argv, msg):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and msg in err and "Traceback" not in err


def test_contacts_count_a_stations_handovers_by_policy(capsys):
    counts = {}
    for policy in ("highest_elevation", "longest_visibility", "sticky"):
        rc, out, _ = run(capsys, "contacts", "--preset", "starlink-s1", "--node", "london", "--duration", "900",
                         "--handover", policy, "--json")
        rows = [json.loads(x) for x in out.strip().splitlines()]
        assert rc == 0 and rows[-1]["handover"] == policy and rows[-1]["node"] == "gs-london"
        windows = [r for r in rows[:-1] if r["kind"] == "ground"]
        # London always sees a Starlink satellite: every window after the first begins with a handover
        assert rows[-1]["handovers"] == len(windows) - 1 > 0
        counts[policy] = rows[-1]["handovers"]
    assert counts["longest_visibility"] <= counts["sticky"] < counts["highest_elevation"]
    rc, out, _ = run(capsys, "contacts", "--preset", "starlink-s1", "--node", "london", "--duration", "900",
                     "--handover", "sticky")
    assert rc == 0 and "gs-london: " in out and " handover(s) under sticky" in out


def test_path_defaults_to_first_and_last_satellite_across_shells(capsys):
    rc, out, _ = run(capsys, "path", "--preset", "starlink-gen1", "--to", "0", "--json")
    (row,) = [json.loads(x) for x in out.strip().splitlines()]
    assert rc == 0 and row["path"][0] == "sat-0" and row["path"][-1] == "sat-4407"    # shell 1 → shell 5
