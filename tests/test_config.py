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
