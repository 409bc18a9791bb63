"""Config parsing: presets round-trip; bad files name the bad field."""

import pytest

from mesh.clock import OrbitalClock
from mesh.config import ConfigError, config_to_toml, parse_config
from mesh.presets import demo, preset

GOOD = """
name = "x"
epoch = "2026-01-01T00:00:00Z"
[[shells]]
planes = 3
sats_per_plane = 4
altitude_km = 550
inclination_deg = 53
"""


def test_demo_preset_round_trips():
    cfg = demo()
    assert cfg.size == 24
    assert parse_config(config_to_toml(cfg)) == cfg


def test_defaults_fill_in():
    cfg = parse_config(GOOD)
    assert cfg.size == 12 and cfg.clock.time_scale == 1.0 and cfg.shells[0].phasing == 1
    assert cfg.energy.capacity_wh == 1200.0 and cfg.energy.reserve == 0.25


def test_energy_section_is_read_and_round_trips():
    cfg = parse_config(GOOD + "[energy]\ncapacity_wh = 500\nreserve = 0.4\n")
    assert cfg.energy.capacity_wh == 500.0 and cfg.energy.reserve == 0.4
    assert parse_config(config_to_toml(cfg)) == cfg


@pytest.mark.parametrize("text, field", [
    ("name = ", "TOML"),
    (GOOD.replace('name = "x"', "name = 3"), "config.name"),
    (GOOD.replace("planes = 3", 'planes = "3"'), "shells[0].planes"),
    (GOOD.replace("altitude_km = 550", "altitude_km = 5"), "altitude"),
    (GOOD + "bogus = 1\n", "unknown keys"),
    (GOOD.replace('epoch = "2026-01-01T00:00:00Z"', 'epoch = "soon"'), "config.epoch"),
    (GOOD + "[clock]\ntime_scale = 0\n", "time_scale"),
    (GOOD + "[limits]\nttl = -1\n", "limits.ttl"),
    (GOOD + "[links]\nisl_bandwidth_bps = 0\n", "isl_bandwidth_bps"),
    (GOOD + "[energy]\nreserve = 1.5\n", "energy.reserve"),
    (GOOD + "[energy]\ncapacity_wh = \"big\"\n", "energy.capacity_wh"),
    (GOOD + "[energy]\nsolar_kw = 3\n", "unknown keys"),
    ('name = "x"\nepoch = "2026-01-01T00:00:00Z"\nshells = []\n', "at least one shell"),
])
def test_bad_config_names_the_field(text, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown preset"):
        preset("nope")


def test_orbital_clock():
    clock = OrbitalClock(start_unix=1000.0, time_scale=60.0, offset_s=5.0)
    assert clock.orbit_t(1001.0) == 65.0
    assert clock.wall_at(65.0) == 1001.0
    with pytest.raises(ValueError):
        OrbitalClock(start_unix=0, time_scale=-1)


# -- presets, ground stations, links ------------------------------------------------------------

from mesh.config import GroundConfig  # noqa: E402
from mesh.ground import BUILTIN_STATIONS, GroundStation  # noqa: E402
from mesh.presets import PRESETS  # noqa: E402


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name):
    cfg = preset(name)
    assert parse_config(config_to_toml(cfg)) == cfg


def test_ground_stations_builtin_and_custom_keep_their_order():
    text = GOOD + """
[ground]
elevation_mask_deg = 30
handover = "longest_visibility"
stations = ["tokyo", {name = "base", lat_deg = 10.5, lon_deg = -20, alt_km = 0.2}, "London"]
"""
    cfg = parse_config(text)
    assert [s.name for s in cfg.ground.stations] == ["tokyo", "base", "london"]
    assert cfg.ground.stations[1] == GroundStation("base", 10.5, -20.0, 0.2)
    assert cfg.ground.elevation_mask_deg == 30.0 and cfg.ground.handover == "longest_visibility"
    again = parse_config(config_to_toml(cfg))
    assert again == cfg
    assert 'name = "tokyo"\n\n' in config_to_toml(cfg)         # built-ins are written by name only


def test_ground_defaults():
    assert parse_config(GOOD).ground == GroundConfig()
    assert GroundConfig().elevation_mask_deg == 25.0 and GroundConfig().handover == "all"


@pytest.mark.parametrize("ground, field", [
    ('stations = ["atlantis"]', r"ground.stations\[0\]: unknown ground station 'atlantis'"),
    ('stations = ["lndon"]', "did you mean london"),
    ('stations = [{name = "x", lat_deg = 95, lon_deg = 0}]', r"ground.stations\[0\].*lat_deg"),
    ('stations = [{name = "x", lon_deg = 0, alt_km = 0}]', r"ground.stations\[0\].lat_deg: missing"),
    ('stations = [{name = "x y", lat_deg = 1, lon_deg = 0}]', "station name"),
    ('stations = ["tokyo", "tokyo"]', "duplicate names"),
    ('stations = [3]', r"ground.stations\[0\]: expected"),
    ("elevation_mask_deg = 90", "ground.elevation_mask_deg"),
    ('handover = "random"', "ground.handover"),
    ("handover_interval_s = 0", "ground.handover_interval_s"),
    ("bogus = 1", "ground: unknown keys"),
])
def test_bad_ground_config_names_the_field(ground, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(GOOD + "[ground]\n" + ground + "\n")


@pytest.mark.parametrize("links, field", [
    ("max_range_km = -5", "links.max_range_km"),
    ("grazing_km = -1", "links.grazing_km"),
    ('grazing_km = "high"', "links.grazing_km"),
])
def test_bad_links_name_the_field(links, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(GOOD + "[links]\n" + links + "\n")


def test_several_shells():
    text = GOOD + """
[[shells]]
name = "polar"
kind = "star"
planes = 4
sats_per_plane = 5
altitude_km = 1015
inclination_deg = 98.98
"""
    cfg = parse_config(text)
    assert cfg.size == 32 and [s.kind for s in cfg.shells] == ["delta", "star"]
    assert parse_config(config_to_toml(cfg)) == cfg
    with pytest.raises(ConfigError, match="unique"):
        parse_config(text.replace('name = "polar"', 'name = "shell0"'))


def test_builtin_list_is_large_enough_for_a_hundred_links():
    assert len(BUILTIN_STATIONS) >= 60
