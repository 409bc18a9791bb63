"""Named constellation presets; each field says why it has its value.

Shell geometry follows the operators' public filings (FCC/ITU): Starlink
Gen1 shell 1, Amazon Kuiper's first shell, Telesat Lightspeed's polar shell.
Filings fix planes, satellites per plane, altitude and inclination but not
the Walker phasing F; we use F = 1, which keeps same-slot satellites of
neighbouring planes nearly abreast so +Grid cross-plane links stay short.
"""

from __future__ import annotations

from mesh.clock import OrbitalClock
from mesh.config import FleetConfig, GroundConfig, LinkConfig
from mesh.ground import builtin_station
from mesh.orbit import WalkerShell

# A fixed epoch makes every run of a preset fly the same sky.
DEFAULT_EPOCH = "2026-01-01T00:00:00Z"

# Six gateways on six continents: enough for `orbitmesh topo contacts` and
# intercontinental paths to mean something; add stations in your own config.
GATEWAYS = ("london", "new-york", "sao-paulo", "johannesburg", "tokyo", "sydney")

# LEO optical terminals are specified for a few thousand km; 5,000 km keeps
# every +Grid link of these shells (the longest, Telesat's in-plane 3,550 km)
# while still bounding nearest-neighbour links of irregular TLE sets.
TERMINAL_RANGE_KM = 5_000.0


# Multi-shell presets: two inter-shell terminals per satellite, at most one
# per adjacent shell, so a shell between two others reaches both (with one,
# Starlink's 550 km shell spends it on the 540 km shell just below and the
# 53° pair stays apart from the polar shells).
INTER_SHELL_TERMINALS = 2


def _real(name: str, shells: tuple[WalkerShell, ...], inter_shell_links: int = 0) -> FleetConfig:
    return FleetConfig(
        name=name,
        epoch=DEFAULT_EPOCH,
        shells=shells,
        # Real time by default; `--time-scale` flies faster for demos.
        clock=OrbitalClock(start_unix=0.0, time_scale=1.0),
        links=LinkConfig(
            isl_bandwidth_bps=10e9,           # optical ISL terminals of this generation
            max_range_km=TERMINAL_RANGE_KM,   # see TERMINAL_RANGE_KM
            grazing_km=80.0,                  # beam must stay above the mesosphere
            inter_shell_links=inter_shell_links,  # see INTER_SHELL_TERMINALS
            inter_shell_interval_s=10.0,      # re-point as the shells drift (seconds to acquire)
        ),
        ground=GroundConfig(
            stations=tuple(builtin_station(n) for n in GATEWAYS),
            elevation_mask_deg=25.0,          # FCC-filed minimum elevation (Starlink, Kuiper)
            handover="all",                   # routing may use any satellite in view
            handover_interval_s=15.0,         # Starlink's global re-assignment period
        ),
    )


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


def starlink_s1() -> FleetConfig:
    """Starlink Gen1 shell 1: 72 planes × 22 at 550 km, 53° (1,584 satellites)."""
    return _real("starlink-s1", (
        WalkerShell(planes=72, sats_per_plane=22, altitude_km=550.0, inclination_deg=53.0, phasing=1,
                    kind="delta", name="s1"),))


def starlink_gen1() -> FleetConfig:
    """All five Starlink Gen1 shells as filed in 2021: 4,408 satellites.

    The two 97.6° shells are flown as delta shells (planes over 360°) as filed.
    Inter-shell laser links join the shells into one network.
    """
    return _real("starlink-gen1", (
        WalkerShell(planes=72, sats_per_plane=22, altitude_km=550.0, inclination_deg=53.0, phasing=1, name="s1"),
        WalkerShell(planes=72, sats_per_plane=22, altitude_km=540.0, inclination_deg=53.2, phasing=1, name="s2"),
        WalkerShell(planes=36, sats_per_plane=20, altitude_km=570.0, inclination_deg=70.0, phasing=1, name="s3"),
        WalkerShell(planes=6, sats_per_plane=58, altitude_km=560.0, inclination_deg=97.6, phasing=1, name="s4"),
        WalkerShell(planes=4, sats_per_plane=43, altitude_km=560.0, inclination_deg=97.6, phasing=1, name="s5"),
    ), inter_shell_links=INTER_SHELL_TERMINALS)


def kuiper_k1() -> FleetConfig:
    """Amazon Kuiper's first shell: 34 planes × 34 at 630 km, 51.9° (1,156 satellites)."""
    return _real("kuiper-k1", (
        WalkerShell(planes=34, sats_per_plane=34, altitude_km=630.0, inclination_deg=51.9, phasing=1,
                    kind="delta", name="k1"),))


def kuiper() -> FleetConfig:
    """Amazon Kuiper's three filed shells: 3,236 satellites, joined by inter-shell laser links.

    630 km 34×34 at 51.9°, 610 km 36×36 at 42°, 590 km 28×28 at 33°
    (FCC authorisation of 2020, IBFS SAT-LOA-20190704-00057).
    """
    return _real("kuiper", (
        WalkerShell(planes=34, sats_per_plane=34, altitude_km=630.0, inclination_deg=51.9, phasing=1, name="k1"),
        WalkerShell(planes=36, sats_per_plane=36, altitude_km=610.0, inclination_deg=42.0, phasing=1, name="k2"),
        WalkerShell(planes=28, sats_per_plane=28, altitude_km=590.0, inclination_deg=33.0, phasing=1, name="k3"),
    ), inter_shell_links=INTER_SHELL_TERMINALS)


def telesat_t1() -> FleetConfig:
    """Telesat's polar shell: 27 planes × 13 at 1,015 km, 98.98° (351 satellites).

    Near-polar planes spread over 180° of RAAN: a Walker *star*, whose
    counter-rotating seam gets no cross-plane links.
    """
    return _real("telesat-t1", (
        WalkerShell(planes=27, sats_per_plane=13, altitude_km=1015.0, inclination_deg=98.98, phasing=1,
                    kind="star", name="t1"),))


PRESETS = {
    "demo": demo,
    "starlink-s1": starlink_s1,
    "starlink-gen1": starlink_gen1,
    "kuiper-k1": kuiper_k1,
    "kuiper": kuiper,
    "telesat-t1": telesat_t1,
}


def preset(name: str) -> FleetConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def from_tle(text: str, *, name: str = "tle", file: str | None = None, epoch: str | None = None,
             laser: str = "auto") -> FleetConfig:
    """A config flying a TLE set with the real presets' link and ground settings.

    Orbital t counts from the TLE set's epoch unless ``epoch`` is given.
    """
    from mesh.config import TleConfig
    from mesh.orbit import jd_to_iso
    from mesh.tle import normalise_tle_text, parse_tles, tle_epoch_jd
    text = normalise_tle_text(text)
    records = parse_tles(text)
    base = _real(name, ())
    from dataclasses import replace
    return replace(base, epoch=epoch or jd_to_iso(tle_epoch_jd(records)),
                   tle=TleConfig(text=text, file=file, name="tle", laser=laser))
