"""Fleet configuration: parsed and validated from TOML text, never read from disk here.

Every agent reads the same file, so every agent derives the same constellation,
clock, ground stations and limits.  A bad file fails with a message naming the
field.

A constellation is Walker ``[[shells]]``, a ``[tle]`` set, or both (TLE
satellites are numbered after the shells').  ``[tle] text`` holds the element
sets inline, which keeps the config self-contained: the launcher writes one
file that means the same on every host.  ``[tle] file`` names a file instead;
mesh does no I/O, so ``parse_config`` then needs a ``read_file`` callable from
its caller (the agent and CLI pass one that reads relative to the config's
directory) and inlines the text.  Without an ``epoch``, a TLE config's orbital
t counts from the TLE set's epoch (its newest element set).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable

from mesh.clock import OrbitalClock
from mesh.energy import EnergyConfig
from mesh.ground import (BUILTIN_STATIONS, DEFAULT_ELEVATION_MASK_DEG, GroundStation, builtin_station)
from mesh.orbit import Shell, TleShell, WalkerShell, iso_to_jd, jd_to_iso
from mesh.topology import HANDOVER_POLICIES

# grid: Hypatia's +Grid (slot order and seam from mesh.tle), nearest
# neighbours where a shell is irregular; auto: the same (the older name);
# closest_phase: the older pairing by closest argument of latitude; nearest:
# nearest neighbours everywhere.
TLE_LASER_POLICIES = ("auto", "grid", "closest_phase", "nearest")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending field."""


@dataclass(frozen=True)
class LinkConfig:
    # 10 Gbit/s: the order of today's optical ISL terminals (e.g. Mynaric CONDOR).
    isl_bandwidth_bps: float = 10e9
    # Terminal reach; None = unlimited (the demo's sparse shell needs long links).
    max_range_km: float | None = None
    # The beam must clear this altitude: below ~80 km it crosses the mesosphere.
    grazing_km: float = 80.0
    # Laser terminals per satellite that point at the nearest satellites of the
    # adjacent shells (by altitude); 0 = each shell is its own network.
    inter_shell_links: int = 0
    # How often those terminals re-choose their partners as the shells drift.
    inter_shell_interval_s: float = 10.0


@dataclass(frozen=True)
class Limits:
    # One frame carries at most one task's tensors; 8 MiB bounds memory per link.
    max_frame_bytes: int = 8 * 1024 * 1024
    # HTTP bodies: a JSON tensor is ~3× its binary size.
    max_body_bytes: int = 16 * 1024 * 1024
    # Frames waiting to be sent on one link before new ones are dropped.
    link_queue_frames: int = 1024
    # Hops a routed message may take before it is dropped (loops are impossible
    # with one shared physics, but topology changes mid-flight can bounce once).
    ttl: int = 64
    # Tasks admitted per node before 429.
    max_pending_tasks: int = 256
    # onnxruntime sessions kept loaded per agent (MiB, measured resident size);
    # beyond it the least recently used is dropped and reloaded on demand.
    session_memory_mb: int = 1024
    # Finished tasks (and their results) kept in each entry node's journal.
    result_retention_s: int = 3600
    # Versions of each uploaded model name kept on disk (the current one included);
    # older ones are removed when a new version arrives (docs/models.md).
    model_versions_kept: int = 3


@dataclass(frozen=True)
class GroundConfig:
    # Ground station k is node n_sats + k, named gs-<name>, in this order.
    stations: tuple[GroundStation, ...] = ()
    # 25°: the FCC-filed minimum elevation of Starlink and Kuiper user links.
    elevation_mask_deg: float = DEFAULT_ELEVATION_MASK_DEG
    # all: a station links to every satellite in view (best paths, more links);
    # highest_elevation / longest_visibility: one serving satellite, like a real
    # single-beam terminal.
    handover: str = "all"
    # Starlink re-plans terminal-to-satellite assignments every 15 s.
    handover_interval_s: float = 15.0
    # Optional cap on a ground link's length (km): Hypatia states its 25° mask
    # as a distance (1,089.7 km at 550 km); None = the elevation mask alone.
    max_range_km: float | None = None
    # Whether a path may pass through a station (down and up again): off, as a
    # gateway is an endpoint; on, stations bridge shells or gaps in the mesh.
    relays: bool = False


@dataclass(frozen=True)
class TleConfig:
    # The element sets (2- or 3-line); what every agent builds from.
    text: str
    # Where the text came from (provenance only; not compared, not written back).
    file: str | None = field(default=None, compare=False)
    # Shell name prefix for the grouped satellites.
    name: str = "tle"
    # auto: +Grid where the set groups into regular planes, nearest neighbours
    # elsewhere; nearest: nearest neighbours everywhere.
    laser: str = "auto"
    # Satellites whose RAANs lie within 1° share a plane: real planes are
    # 5–10° apart, and a plane's members drift apart by tenths of a degree.
    plane_gap_deg: float = 1.0
    # +Grid cross-plane shift (Hypatia's isl_shift) for grid shells.
    isl_shift: int = 0


@dataclass(frozen=True)
class FleetConfig:
    name: str
    epoch: str                      # ISO-8601 UTC epoch: orbital t = 0
    shells: tuple[WalkerShell, ...]
    clock: OrbitalClock
    links: LinkConfig = field(default_factory=LinkConfig)
    limits: Limits = field(default_factory=Limits)
    ground: GroundConfig = field(default_factory=GroundConfig)
    tle: TleConfig | None = None
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    @property
    def epoch_jd(self) -> float:
        return iso_to_jd(self.epoch)

    @cached_property
    def tle_shells(self) -> tuple[TleShell, ...]:
        """The TLE satellites grouped into shells and planes (see ``mesh.tle``)."""
        if self.tle is None:
            return ()
        from mesh.tle import group_tles, parse_tles
        laser = self.tle.laser
        return tuple(group_tles(parse_tles(self.tle.text), self.epoch_jd, name=self.tle.name,
                                plane_gap_deg=self.tle.plane_gap_deg, nearest=laser == "nearest",
                                pattern="closest_phase" if laser == "closest_phase" else "grid",
                                isl_shift=self.tle.isl_shift))

    @property
    def all_shells(self) -> tuple[Shell, ...]:
        """Walker shells, then TLE shells: the order satellites are numbered in."""
        return tuple(self.shells) + self.tle_shells

    @property
    def size(self) -> int:
        """Number of satellites (ground stations not included)."""
        return sum(s.size for s in self.shells) + (self._tle_count if self.tle else 0)

    @cached_property
    def _tle_count(self) -> int:
        from mesh.tle import parse_tles
        return len(parse_tles(self.tle.text)) if self.tle else 0

    def with_start(self, start_unix: float) -> "FleetConfig":
        return replace(self, clock=replace(self.clock, start_unix=start_unix))


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing")
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where}.{key}: expected {kind}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}")
    return value


def _num(table: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    v = _take(table, key, (int, float), where, default)
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"{where}.{key}: must be a finite number, not {v}")
    return v


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def parse_config(text: str, *, read_file: Callable[[str], str] | None = None) -> FleetConfig:
    """Parse TOML text into a validated :class:`FleetConfig`.

    ``read_file(path)`` is called for ``[tle] file``; mesh never opens files.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    return config_from_dict(doc, read_file=read_file)


def _parse_shells(shells_doc: list[Any]) -> list[WalkerShell]:
    shells = []
    for i, s in enumerate(shells_doc):
        where = f"shells[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: expected a table")
        _check_keys(s, {"name", "kind", "planes", "sats_per_plane", "phasing", "altitude_km",
                        "inclination_deg", "line_of_sight", "isl_shift"}, where)
        try:
            shells.append(WalkerShell(
                name=_take(s, "name", str, where, f"shell{i}"),
                kind=_take(s, "kind", str, where, "delta"),
                planes=_take(s, "planes", int, where),
                sats_per_plane=_take(s, "sats_per_plane", int, where),
                phasing=_take(s, "phasing", int, where, 1),
                altitude_km=_num(s, "altitude_km", where),
                inclination_deg=_num(s, "inclination_deg", where),
                line_of_sight=_take(s, "line_of_sight", bool, where, True),
                isl_shift=_take(s, "isl_shift", int, where, 0),
            ))
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    names = [s.name for s in shells]
    if len(set(names)) != len(names):
        raise ConfigError(f"shells: shell names must be unique, got {names}")
    return shells


def _parse_ground(doc: dict[str, Any]) -> GroundConfig:
    g = _take(doc, "ground", dict, "config", {})
    _check_keys(g, {"stations", "elevation_mask_deg", "handover", "handover_interval_s", "max_range_km", "relays"},
                "ground")
    stations: list[GroundStation] = []
    for i, s in enumerate(_take(g, "stations", list, "ground", [])):
        where = f"ground.stations[{i}]"
        if isinstance(s, str):
            s = {"name": s}
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: expected a built-in station name or a table")
        _check_keys(s, {"name", "lat_deg", "lon_deg", "alt_km"}, where)
        name = _take(s, "name", str, where)
        try:
            if set(s) == {"name"}:
                stations.append(builtin_station(name))
            else:
                stations.append(GroundStation(name, _num(s, "lat_deg", where), _num(s, "lon_deg", where),
                                              _num(s, "alt_km", where, 0.0)))
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]} (or give lat_deg and lon_deg)") from None
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    names = [s.name for s in stations]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"ground.stations: duplicate names {dup}")
    mask = _num(g, "elevation_mask_deg", "ground", DEFAULT_ELEVATION_MASK_DEG)
    if not 0.0 <= mask < 90.0:
        raise ConfigError(f"ground.elevation_mask_deg: must be in [0, 90), not {mask}")
    handover = _take(g, "handover", str, "ground", "all")
    if handover not in HANDOVER_POLICIES:
        raise ConfigError(f"ground.handover: must be one of {', '.join(HANDOVER_POLICIES)}, not {handover!r}")
    interval = _num(g, "handover_interval_s", "ground", 15.0)
    if not interval > 0:
        raise ConfigError(f"ground.handover_interval_s: must be > 0, not {interval}")
    max_range = _num(g, "max_range_km", "ground", None)
    if max_range is not None and not max_range > 0:
        raise ConfigError(f"ground.max_range_km: must be > 0, not {max_range}")
    return GroundConfig(tuple(stations), mask, handover, interval, max_range,
                        _take(g, "relays", bool, "ground", False))


def _parse_tle(doc: dict[str, Any], read_file: Callable[[str], str] | None) -> TleConfig | None:
    if "tle" not in doc:
        return None
    t = _take(doc, "tle", dict, "config")
    _check_keys(t, {"text", "file", "name", "laser", "plane_gap_deg", "isl_shift"}, "tle")
    text = _take(t, "text", str, "tle", None)
    path = _take(t, "file", str, "tle", None)
    if (text is None) == (path is None):
        raise ConfigError("tle: give exactly one of tle.text (the element sets) or tle.file (a path)")
    if path is not None:
        if read_file is None:
            raise ConfigError(f"tle.file: {path!r} cannot be read here; inline it as tle.text "
                              "or pass read_file to parse_config")
        try:
            text = read_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tle.file: cannot read {path!r}: {exc}") from None
    from mesh.tle import TleError, normalise_tle_text, parse_tles
    text = normalise_tle_text(text)
    try:
        parse_tles(text)
    except TleError as exc:
        raise ConfigError(f"tle.{'file' if path else 'text'}: {exc}") from None
    laser = _take(t, "laser", str, "tle", "auto")
    if laser not in TLE_LASER_POLICIES:
        raise ConfigError(f"tle.laser: must be one of {', '.join(TLE_LASER_POLICIES)}, not {laser!r}")
    gap = _num(t, "plane_gap_deg", "tle", 1.0)
    if not 0.0 < gap < 180.0:
        raise ConfigError(f"tle.plane_gap_deg: must be in (0, 180), not {gap}")
    shift = _take(t, "isl_shift", int, "tle", 0)
    if shift < 0:
        raise ConfigError(f"tle.isl_shift: must be ≥ 0, not {shift}")
    return TleConfig(text=text, file=path, name=_take(t, "name", str, "tle", "tle"), laser=laser, plane_gap_deg=gap,
                     isl_shift=shift)


def config_from_dict(doc: dict[str, Any], *, read_file: Callable[[str], str] | None = None) -> FleetConfig:
    _check_keys(doc, {"name", "epoch", "shells", "clock", "links", "limits", "ground", "tle", "energy"}, "config")
    name = _take(doc, "name", str, "config")
    tle = _parse_tle(doc, read_file)
    if tle is not None and "epoch" not in doc:
        from mesh.tle import parse_tles, tle_epoch_jd
        epoch = jd_to_iso(tle_epoch_jd(parse_tles(tle.text)))
    else:
        epoch = _take(doc, "epoch", str, "config")
    try:
        iso_to_jd(epoch)
    except ValueError:
        raise ConfigError(f"config.epoch: not an ISO-8601 time: {epoch!r}") from None
    shells_doc = _take(doc, "shells", list, "config", [] if tle is not None else ...)
    if not shells_doc and tle is None:
        raise ConfigError("config.shells: at least one shell is needed (or a [tle] set)")
    shells = _parse_shells(shells_doc)
    clock_doc = _take(doc, "clock", dict, "config", {})
    _check_keys(clock_doc, {"start_unix", "time_scale", "offset_s"}, "clock")
    try:
        clock = OrbitalClock(
            start_unix=_num(clock_doc, "start_unix", "clock", 0.0),
            time_scale=_num(clock_doc, "time_scale", "clock", 1.0),
            offset_s=_num(clock_doc, "offset_s", "clock", 0.0),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"clock: {exc}") from None
    links_doc = _take(doc, "links", dict, "config", {})
    _check_keys(links_doc, {"isl_bandwidth_bps", "max_range_km", "grazing_km", "inter_shell_links",
                            "inter_shell_interval_s"}, "links")
    links = LinkConfig(
        isl_bandwidth_bps=_num(links_doc, "isl_bandwidth_bps", "links", LinkConfig.isl_bandwidth_bps),
        max_range_km=_num(links_doc, "max_range_km", "links", None),
        grazing_km=_num(links_doc, "grazing_km", "links", LinkConfig.grazing_km),
        inter_shell_links=_take(links_doc, "inter_shell_links", int, "links", 0),
        inter_shell_interval_s=_num(links_doc, "inter_shell_interval_s", "links", LinkConfig.inter_shell_interval_s),
    )
    if not 0 <= links.inter_shell_links <= 4:
        raise ConfigError(f"links.inter_shell_links: must be in [0, 4], not {links.inter_shell_links}")
    if not links.inter_shell_interval_s > 0:
        raise ConfigError(f"links.inter_shell_interval_s: must be > 0, not {links.inter_shell_interval_s}")
    if links.isl_bandwidth_bps <= 0:
        raise ConfigError("links.isl_bandwidth_bps: must be > 0")
    if links.max_range_km is not None and links.max_range_km <= 0:
        raise ConfigError(f"links.max_range_km: must be > 0, not {links.max_range_km}")
    if not 0.0 <= links.grazing_km < 1000.0:
        raise ConfigError(f"links.grazing_km: must be in [0, 1000), not {links.grazing_km}")
    limits_doc = _take(doc, "limits", dict, "config", {})
    defaults = Limits()
    _check_keys(limits_doc, set(defaults.__dataclass_fields__), "limits")
    limits = Limits(**{k: _take(limits_doc, k, int, "limits", getattr(defaults, k)) for k in defaults.__dataclass_fields__})
    for k, v in limits.__dict__.items():
        if v <= 0:
            raise ConfigError(f"limits.{k}: must be > 0, not {v}")
    return FleetConfig(name=name, epoch=epoch, shells=tuple(shells), clock=clock, links=links, limits=limits,
                       ground=_parse_ground(doc), tle=tle, energy=_parse_energy(doc))


def _parse_energy(doc: dict[str, Any]) -> EnergyConfig:
    table = _take(doc, "energy", dict, "config", {})
    defaults = EnergyConfig()
    _check_keys(table, set(defaults.__dataclass_fields__), "energy")
    try:
        return EnergyConfig(**{k: _num(table, k, "energy", getattr(defaults, k))
                               for k in defaults.__dataclass_fields__})
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out) + '"'
    return repr(v)


def _toml_text(text: str) -> str:
    """A multi-line string; literal (verbatim) unless the text itself contains ``'''``."""
    if "'''" not in text and all(ch in "\t\n" or ord(ch) >= 0x20 for ch in text) and "\x7f" not in text:
        return "'''\n" + text + "'''"
    return _toml_value(text)


def config_to_toml(cfg: FleetConfig) -> str:
    """Serialise a config back to TOML (the launcher writes it for every agent)."""
    val = _toml_value
    lines = [f"name = {val(cfg.name)}", f"epoch = {val(cfg.epoch)}", "", "[clock]"]
    lines += [f"start_unix = {cfg.clock.start_unix!r}", f"time_scale = {cfg.clock.time_scale!r}",
              f"offset_s = {cfg.clock.offset_s!r}", "", "[links]",
              f"isl_bandwidth_bps = {cfg.links.isl_bandwidth_bps!r}", f"grazing_km = {cfg.links.grazing_km!r}",
              f"inter_shell_links = {cfg.links.inter_shell_links!r}",
              f"inter_shell_interval_s = {cfg.links.inter_shell_interval_s!r}"]
    if cfg.links.max_range_km is not None:
        lines.append(f"max_range_km = {cfg.links.max_range_km!r}")
    lines += ["", "[limits]"] + [f"{k} = {v}" for k, v in cfg.limits.__dict__.items()]
    lines += ["", "[energy]"] + [f"{k} = {v!r}" for k, v in cfg.energy.__dict__.items()]
    g = cfg.ground
    lines += ["", "[ground]", f"elevation_mask_deg = {g.elevation_mask_deg!r}", f"handover = {val(g.handover)}",
              f"handover_interval_s = {g.handover_interval_s!r}", f"relays = {val(g.relays)}"]
    if g.max_range_km is not None:
        lines.append(f"max_range_km = {g.max_range_km!r}")
    for s in g.stations:
        lines += ["", "[[ground.stations]]", f"name = {val(s.name)}"]
        if BUILTIN_STATIONS.get(s.name) != s:
            lines += [f"lat_deg = {s.lat_deg!r}", f"lon_deg = {s.lon_deg!r}", f"alt_km = {s.alt_km!r}"]
    if cfg.tle is not None:
        t = cfg.tle
        lines += ["", "[tle]", f"name = {val(t.name)}", f"laser = {val(t.laser)}",
                  f"plane_gap_deg = {t.plane_gap_deg!r}", f"isl_shift = {t.isl_shift!r}",
                  f"text = {_toml_text(t.text)}"]
    for s in cfg.shells:
        lines += ["", "[[shells]]"] + [f"{k} = {val(v)}" for k, v in s.__dict__.items()]
    return "\n".join(lines) + "\n"
