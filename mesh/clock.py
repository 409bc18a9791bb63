"""The orbital clock every agent shares.

t (seconds after the constellation epoch) = time_scale × (wall − start).
Wall time is passed in; agents on one host (or NTP-synced hosts) therefore
agree on t without talking to each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OrbitalClock:
    start_unix: float
    time_scale: float = 1.0
    offset_s: float = 0.0  # orbital t at ``start_unix`` (lets a fleet start mid-pass)

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, not {self.time_scale}")

    def orbit_t(self, wall_unix: float) -> float:
        return self.offset_s + self.time_scale * (wall_unix - self.start_unix)

    def wall_at(self, orbit_t: float) -> float:
        return self.start_unix + (orbit_t - self.offset_s) / self.time_scale
