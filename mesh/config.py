"""Fleet configuration: parsed and validated from TOML text, never read from disk here.

Every agent reads the same file, so every agent derives the same constellation,
clock and limits.  A bad file fails with a message naming the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from mesh.clock import OrbitalClock
from mesh.orbit import WalkerShell


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending field."""


@dataclass(frozen=True)
class LinkConfig:
    # 10 Gbit/s: the order of today's optical ISL terminals (e.g. Mynaric CONDOR).
    isl_bandwidth_bps: float = 10e9
    # Terminal reach; None = unlimited (the demo's sparse shell needs long links).
    max_range_km: float | None = None


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


@dataclass(frozen=True)
class FleetConfig:
    name: str
    epoch: str                      # ISO-8601 UTC epoch of the element sets
    shells: tuple[WalkerShell, ...]
    clock: OrbitalClock
    links: LinkConfig = field(default_factory=LinkConfig)
    limits: Limits = field(default_factory=Limits)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shells)

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


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def parse_config(text: str) -> FleetConfig:
    """Parse TOML text into a validated :class:`FleetConfig`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    return config_from_dict(doc)


def config_from_dict(doc: dict[str, Any]) -> FleetConfig:
    _check_keys(doc, {"name", "epoch", "shells", "clock", "links", "limits"}, "config")
    name = _take(doc, "name", str, "config")
    epoch = _take(doc, "epoch", str, "config")
    try:
        from mesh.orbit import iso_to_jd
        iso_to_jd(epoch)
    except ValueError:
        raise ConfigError(f"config.epoch: not an ISO-8601 time: {epoch!r}") from None
    shells_doc = _take(doc, "shells", list, "config")
    if not shells_doc:
        raise ConfigError("config.shells: at least one shell is needed")
    shells = []
    for i, s in enumerate(shells_doc):
        where = f"shells[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: expected a table")
        _check_keys(s, {"name", "kind", "planes", "sats_per_plane", "phasing", "altitude_km",
                        "inclination_deg", "line_of_sight"}, where)
        try:
            shells.append(WalkerShell(
                name=_take(s, "name", str, where, f"shell{i}"),
                kind=_take(s, "kind", str, where, "delta"),
                planes=_take(s, "planes", int, where),
                sats_per_plane=_take(s, "sats_per_plane", int, where),
                phasing=_take(s, "phasing", int, where, 1),
                altitude_km=float(_take(s, "altitude_km", (int, float), where)),
                inclination_deg=float(_take(s, "inclination_deg", (int, float), where)),
                line_of_sight=_take(s, "line_of_sight", bool, where, True),
            ))
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    clock_doc = _take(doc, "clock", dict, "config", {})
    _check_keys(clock_doc, {"start_unix", "time_scale", "offset_s"}, "clock")
    try:
        clock = OrbitalClock(
            start_unix=float(_take(clock_doc, "start_unix", (int, float), "clock", 0.0)),
            time_scale=float(_take(clock_doc, "time_scale", (int, float), "clock", 1.0)),
            offset_s=float(_take(clock_doc, "offset_s", (int, float), "clock", 0.0)),
        )
    except ValueError as exc:
        raise ConfigError(f"clock: {exc}") from None
    links_doc = _take(doc, "links", dict, "config", {})
    _check_keys(links_doc, {"isl_bandwidth_bps", "max_range_km"}, "links")
    links = LinkConfig(
        isl_bandwidth_bps=float(_take(links_doc, "isl_bandwidth_bps", (int, float), "links", LinkConfig.isl_bandwidth_bps)),
        max_range_km=_take(links_doc, "max_range_km", (int, float), "links", None),
    )
    if links.isl_bandwidth_bps <= 0:
        raise ConfigError("links.isl_bandwidth_bps: must be > 0")
    limits_doc = _take(doc, "limits", dict, "config", {})
    defaults = Limits()
    _check_keys(limits_doc, set(defaults.__dataclass_fields__), "limits")
    limits = Limits(**{k: _take(limits_doc, k, int, "limits", getattr(defaults, k)) for k in defaults.__dataclass_fields__})
    for k, v in limits.__dict__.items():
        if v <= 0:
            raise ConfigError(f"limits.{k}: must be > 0, not {v}")
    return FleetConfig(name=name, epoch=epoch, shells=tuple(shells), clock=clock, links=links, limits=limits)


def config_to_toml(cfg: FleetConfig) -> str:
    """Serialise a config back to TOML (the launcher writes it for every agent)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = [f"name = {val(cfg.name)}", f"epoch = {val(cfg.epoch)}", "", "[clock]"]
    lines += [f"start_unix = {cfg.clock.start_unix!r}", f"time_scale = {cfg.clock.time_scale!r}",
              f"offset_s = {cfg.clock.offset_s!r}", "", "[links]",
              f"isl_bandwidth_bps = {cfg.links.isl_bandwidth_bps!r}"]
    if cfg.links.max_range_km is not None:
        lines.append(f"max_range_km = {cfg.links.max_range_km!r}")
    lines += ["", "[limits]"] + [f"{k} = {v}" for k, v in cfg.limits.__dict__.items()]
    for s in cfg.shells:
        lines += ["", "[[shells]]"] + [f"{k} = {val(v)}" for k, v in s.__dict__.items()]
    return "\n".join(lines) + "\n"
