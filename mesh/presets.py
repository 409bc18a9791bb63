"""Named constellation presets; each field says why it has its value."""

from __future__ import annotations

from mesh.clock import OrbitalClock
from mesh.config import FleetConfig, LinkConfig
from mesh.orbit import WalkerShell

# A fixed epoch makes every run of a preset fly the same sky.
DEFAULT_EPOCH = "2026-01-01T00:00:00Z"


def demo() -> FleetConfig:
    """24 satellites (4 planes × 6): small enough to run as processes on a laptop.

    Six satellites per plane sit 60° apart, so their laser lines of sight pass
    through the Earth; the demo ignores occlusion (``line_of_sight = False``)
    so that its mesh stays connected.  Real shells keep the grazing check.
    """
    return FleetConfig(
        name="demo",
        epoch=DEFAULT_EPOCH,
        shells=(WalkerShell(planes=4, sats_per_plane=6, altitude_km=550.0, inclination_deg=53.0,
                            phasing=1, kind="delta", name="demo", line_of_sight=False),),
        clock=OrbitalClock(start_unix=0.0, time_scale=1.0),
        links=LinkConfig(),
    )


PRESETS = {"demo": demo}


def preset(name: str) -> FleetConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
