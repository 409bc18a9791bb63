"""A satellite's power budget: a battery charged in sunlight, drained by the bus and by compute (pure).

Orbital compute is power-limited: a satellite spends roughly a third of each
orbit in Earth's shadow, running on its battery.  The model is an energy
balance per step of *orbital* time (so a sped-up clock charges and drains
faster too)::

    net W = solar W (if sunlit) − bus W − compute W × busy fraction

clamped to [0, capacity].  A node in eclipse whose charge is below the
reserve refuses heavy work (it keeps the reserve for the bus and its lasers),
and placement avoids it.  Light tasks still run: a millisecond classifier
costs microwatt-hours.

Defaults are for a compute satellite of the class the issue describes (a
few kW): 3 kW of arrays, 0.5 kW for the bus and the laser terminals, 1.5 kW
more when every worker computes, and a 1.2 kWh battery.  A full-load eclipse
of 35 minutes then drains ~97% of the battery, an idle one ~24%, and a
sunlit pass recharges at 1–2.5 kW: the fleet must move heavy work towards
the sunlit side, which is the point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyConfig:
    capacity_wh: float = 1200.0
    solar_w: float = 3000.0
    bus_w: float = 500.0
    compute_w: float = 1500.0     # extra draw with every worker busy
    reserve: float = 0.25         # in eclipse, below this fraction: heavy work refused
    initial: float = 0.6          # charge fraction at agent start
    heavy_ms: float = 20.0        # a task expected to compute longer than this is heavy

    def __post_init__(self) -> None:
        for name in ("capacity_wh", "heavy_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"energy.{name} must be > 0")
        for name in ("solar_w", "bus_w", "compute_w"):
            if getattr(self, name) < 0:
                raise ValueError(f"energy.{name} must be ≥ 0")
        if not 0.0 <= self.reserve < 1.0:
            raise ValueError("energy.reserve must be in [0, 1)")
        if not 0.0 <= self.initial <= 1.0:
            raise ValueError("energy.initial must be in [0, 1]")


class Battery:
    """One satellite's charge, stepped with orbital time."""

    def __init__(self, config: EnergyConfig, fraction: float | None = None):
        self.config = config
        self.wh = config.capacity_wh * (config.initial if fraction is None else fraction)
        self.sunlit = True
        self.used_wh = 0.0        # energy spent on compute so far

    @property
    def fraction(self) -> float:
        return self.wh / self.config.capacity_wh

    def net_w(self, sunlit: bool, busy: float) -> float:
        c = self.config
        return (c.solar_w if sunlit else 0.0) - c.bus_w - c.compute_w * min(max(busy, 0.0), 1.0)

    def step(self, dt_s: float, sunlit: bool, busy: float) -> None:
        """Advance ``dt_s`` orbital seconds in which the workers were ``busy`` (0–1) on average."""
        if dt_s <= 0:
            self.sunlit = sunlit
            return
        c = self.config
        self.sunlit = sunlit
        self.used_wh += c.compute_w * min(max(busy, 0.0), 1.0) * dt_s / 3600.0
        self.wh = min(c.capacity_wh, max(0.0, self.wh + self.net_w(sunlit, busy) * dt_s / 3600.0))

    def low(self) -> bool:
        """In eclipse and below the reserve: heavy work would eat the bus's reserve."""
        return not self.sunlit and self.fraction < self.config.reserve

    def accepts(self, expected_compute_s: float) -> bool:
        return not (self.low() and expected_compute_s * 1e3 > self.config.heavy_ms)

    def describe(self) -> dict[str, float | bool]:
        c = self.config
        return {"battery": round(self.fraction, 4), "charge_wh": round(self.wh, 2), "sunlit": self.sunlit,
                "reserve": c.reserve, "capacity_wh": c.capacity_wh, "low": self.low(),
                "compute_wh_used": round(self.used_wh, 3)}
