"""TLE sets: parsing, Walker export, grouping into planes, and the mesh they fly."""

import math

import numpy as np
import pytest

from mesh.config import ConfigError, config_to_toml, parse_config
from mesh.orbit import Constellation, WalkerShell, iso_to_jd, jd_to_iso
from mesh.presets import from_tle, preset
from mesh.tle import (TleError, format_tles, group_tles, normalise_tle_text, parse_tles, tle_checksum,
                      tle_epoch_jd, walker_tles)
from mesh.topology import Topology, grid_pairs

EPOCH = iso_to_jd("2026-01-01T00:00:00Z")
DELTA = WalkerShell(planes=12, sats_per_plane=10, altitude_km=600, inclination_deg=53, phasing=3, name="d")
STAR = WalkerShell(planes=7, sats_per_plane=9, altitude_km=1015, inclination_deg=98.98, phasing=1, kind="star", name="p")

# A real-format element set (ISS, 2008, the classic example of the format)
ISS = """ISS (ZARYA)
1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927
2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537
"""


def _matched_pairs(walker: Constellation, tle: Constellation) -> set[tuple[int, int]]:
    """The TLE constellation's laser pairs renamed to the Walker satellites they coincide with."""
    d = np.linalg.norm(walker.positions(0.0)[:, None, :] - tle.positions(0.0)[None, :, :], axis=2)
    m = d.argmin(axis=0)
    assert d.min(axis=0).max() < 0.05, "every TLE satellite sits on a Walker satellite"
    assert len(set(m.tolist())) == len(tle)
    return {tuple(sorted((int(m[a]), int(m[b])))) for a, b in grid_pairs(tle).tolist()}


def test_parse_real_tle():
    (rec,) = parse_tles(ISS)
    assert rec.name == "ISS (ZARYA)" and rec.catalog == "25544"
    assert jd_to_iso(tle_epoch_jd([rec])) == "2008-09-20T12:25:40.104Z"
    assert parse_tles(ISS.split("\n", 1)[1]) [0].name == ""      # 2-line form
    assert parse_tles("0 ISS\r\n" + ISS.split("\n", 1)[1].replace("\n", "\r\n"))[0].name == "ISS"
    assert format_tles(parse_tles(ISS)) == ISS


@pytest.mark.parametrize("text, msg", [
    ("", "no element sets"),
    (ISS.replace("2927\n", "2928\n"), "line 2: checksum"),
    (ISS.replace("2 25544", "2 25545", 1), "line 3: checksum"),
    ("\n".join(ISS.split("\n")[:2]), "without a line 2"),
    ("ISS\n", "not followed"),
    (ISS.replace("1 25544U", "3 25544U"), "line"),
])
def test_bad_tles_name_the_line(text, msg):
    with pytest.raises(TleError, match=msg):
        parse_tles(text)


def test_checksum_counts_minus_signs():
    line = "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  292"
    assert tle_checksum(line) == 7


@pytest.mark.parametrize("shell", [DELTA, STAR], ids=["delta", "star"])
def test_walker_export_round_trips_positions_and_grid(shell):
    text = walker_tles([shell], EPOCH)
    records = parse_tles(text)
    assert len(records) == shell.size
    assert tle_epoch_jd(records) == pytest.approx(EPOCH, abs=1e-8)
    (grouped,) = group_tles(records, EPOCH)
    assert (grouped.kind, grouped.planes, grouped.sats_per_plane) == (shell.kind, shell.planes, shell.sats_per_plane)
    assert grouped.altitude_km == pytest.approx(shell.altitude_km, abs=0.01)
    assert grouped.inclination_deg == pytest.approx(shell.inclination_deg, abs=0.01)
    walker = Constellation([shell], EPOCH)
    tle = Constellation([grouped], EPOCH)
    # positions agree to the TLE format's rounding, now and an orbit later
    for t in (0.0, 5800.0):
        assert np.abs(np.sort(np.linalg.norm(tle.positions(t), axis=1)) -
                      np.sort(np.linalg.norm(walker.positions(t), axis=1))).max() < 0.05
    # and the grouping rebuilds exactly the Walker +Grid
    assert _matched_pairs(walker, tle) == {tuple(p) for p in grid_pairs(walker).tolist()}


def test_several_shells_in_one_file_are_separated():
    low = WalkerShell(planes=6, sats_per_plane=8, altitude_km=540, inclination_deg=53.2, name="low")
    high = WalkerShell(planes=6, sats_per_plane=8, altitude_km=560, inclination_deg=53.0, name="high")
    text = walker_tles([low, STAR, high], EPOCH)
    shells = group_tles(parse_tles(text), EPOCH, name="x")
    got = sorted((s.kind, s.planes, s.sats_per_plane, round(s.altitude_km)) for s in shells)
    assert got == [("delta", 6, 8, 540), ("delta", 6, 8, 560), ("star", 7, 9, 1015)]
    assert [s.name for s in shells] == ["x0", "x1", "x2"]


def test_irregular_sets_get_nearest_neighbour_links():
    # drop some satellites so planes are unequal: no grid, up to 4 nearest partners each
    records = parse_tles(walker_tles([DELTA], EPOCH))
    kept = [r for j, r in enumerate(records) if j % 7 != 3]
    (shell,) = group_tles(kept, EPOCH)
    assert shell.kind == "irregular"
    c = Constellation([shell], EPOCH)
    topo = Topology(c, max_range_km=3000)
    degree = np.bincount(topo.candidates.ravel(), minlength=len(c))
    assert degree.max() <= 4 and degree.mean() > 3
    snap = topo.snapshot(0.0)
    assert len(snap.pairs) == len(topo.candidates)          # chosen at t = 0, so all up then
    assert snap.distance_km.max() <= 3000
    # deterministic: the same set gives the same links
    assert np.array_equal(Topology(Constellation(group_tles(kept, EPOCH), EPOCH), max_range_km=3000).candidates,
                          topo.candidates)
    (forced,) = group_tles(records, EPOCH, nearest=True)
    assert forced.kind == "irregular"


def test_tle_config_round_trips_and_takes_its_epoch():
    text = walker_tles([DELTA], iso_to_jd("2026-02-03T04:05:06Z"))
    cfg = from_tle(text, name="mine")
    assert cfg.epoch.startswith("2026-02-03T04:05:06") and cfg.size == DELTA.size
    assert parse_config(config_to_toml(cfg)) == cfg
    assert [s.kind for s in cfg.all_shells] == ["delta"]
    # an explicit epoch wins
    doc = f'name = "x"\nepoch = "2026-02-03T05:00:00Z"\n[tle]\ntext = """\n{text}"""\n'
    assert parse_config(doc).epoch == "2026-02-03T05:00:00Z"
    # a file is read through the caller's read_file; mesh never opens it
    doc = 'name = "x"\n[tle]\nfile = "sats.tle"\n'
    with pytest.raises(ConfigError, match="tle.file"):
        parse_config(doc)
    seen = []
    cfg2 = parse_config(doc, read_file=lambda p: seen.append(p) or text)
    assert seen == ["sats.tle"] and cfg2.tle.text == normalise_tle_text(text) and cfg2.size == DELTA.size
    assert parse_config(config_to_toml(cfg2)) == cfg2
    with pytest.raises(ConfigError, match="tle.text: line 2: checksum"):
        parse_config(f"name = 'x'\n[tle]\ntext = '''\n{text.replace(' 999', ' 998', 1)}'''\n")
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config("name = 'x'\n[tle]\nlaser = 'auto'\n")


def test_shells_and_tle_together_number_tle_last():
    base = preset("demo")
    text = walker_tles([STAR], EPOCH)
    doc = config_to_toml(base) + f"\n[tle]\ntext = '''\n{text}'''\n"
    cfg = parse_config(doc)
    assert cfg.size == 24 + STAR.size
    c = Constellation(list(cfg.all_shells), cfg.epoch_jd)
    assert c.shell_offset == [0, 24] and c.labels[24].startswith("P-P0-S")
    assert math.isclose(np.linalg.norm(c.position(24, 0.0)), 6378.135 + 1015, abs_tol=15)
