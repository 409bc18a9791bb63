"""Sunlight: where the Sun is and which satellites sit in Earth's shadow.

The Sun comes from the Astronomical Almanac's low-precision formula (good to
~0.01° from 1950 to 2050): no ephemeris file, so the pure core stays offline
and every agent computes the same answer.  Shadow models:

* ``cylindrical`` — the Sun at infinity, Earth's shadow a cylinder of Earth's
  radius.  Standard for power budgets; errs by a few seconds per eclipse edge.
* ``conical`` — the Sun's true disc: returns the fraction of it a satellite
  sees (umbra 0, penumbra between, full Sun 1).
"""

from __future__ import annotations

import math

import numpy as np

from mesh.orbit import EARTH_RADIUS_KM, Constellation, gmst_rad

AU_KM = 149_597_870.7
SUN_RADIUS_KM = 696_000.0
SHADOW_MODELS = ("cylindrical", "conical")


def sun_position_teme(jd: float) -> np.ndarray:
    """Sun position (km) in the mean equator and equinox of date (≈ TEME to < 0.01°)."""
    return np.array(_sun_teme_xyz(jd))


def _sun_teme_xyz(jd: float) -> tuple[float, float, float]:
    """:func:`sun_position_teme` in plain floats (every satellite's battery asks it each second)."""
    n = jd - 2451545.0
    L = math.radians((280.460 + 0.9856474 * n) % 360.0)
    g = math.radians((357.528 + 0.9856003 * n) % 360.0)
    lam = L + math.radians(1.915) * math.sin(g) + math.radians(0.020) * math.sin(2 * g)
    eps = math.radians(23.439 - 0.0000004 * n)
    r = (1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)) * AU_KM
    return r * math.cos(lam), r * math.cos(eps) * math.sin(lam), r * math.sin(eps) * math.sin(lam)


def sun_position_ecef(jd: float) -> np.ndarray:
    """The Sun in the same Earth-fixed frame as ``Constellation.positions``."""
    return np.array(_sun_ecef_xyz(jd))


def _sun_ecef_xyz(jd: float) -> tuple[float, float, float]:
    x, y, z = _sun_teme_xyz(jd)
    g = gmst_rad(jd)
    c, s = math.cos(g), math.sin(g)
    return c * x + s * y, -s * x + c * y, z


def sunlit_xyz(x: float, y: float, z: float, jd: float) -> bool:
    """:func:`sunlit` (cylindrical) of one Earth-fixed position, in plain floats: every
    satellite asks it every second, and numpy's per-call cost was most of that."""
    sx, sy, sz = _sun_ecef_xyz(jd)
    r = math.sqrt(sx * sx + sy * sy + sz * sz)
    along = (x * sx + y * sy + z * sz) / r
    return not (along < 0 and x * x + y * y + z * z - along * along < EARTH_RADIUS_KM ** 2)


def illumination(positions: np.ndarray, sun: np.ndarray, model: str = "cylindrical") -> np.ndarray:
    """Fraction of the Sun's light reaching each position (0 = umbra, 1 = full Sun).

    ``positions`` (..., 3) and ``sun`` (3,) must be in the same frame (ECEF
    or TEME: the geometry does not care which).
    """
    if model not in SHADOW_MODELS:
        raise ValueError(f"shadow model must be one of {SHADOW_MODELS}, not {model!r}")
    p = np.asarray(positions, dtype=float)
    if model == "cylindrical":
        u = sun / np.linalg.norm(sun)
        along = p @ u
        perp2 = np.einsum("...j,...j->...", p, p) - along**2
        return np.where((along < 0) & (perp2 < EARTH_RADIUS_KM**2), 0.0, 1.0)
    # Conical: overlap of the apparent discs of Sun (radius a) and Earth (b),
    # separated by angle c (Montenbruck & Gill, Satellite Orbits, §3.4.2).
    to_sun = sun - p
    d_sun = np.linalg.norm(to_sun, axis=-1)
    d_earth = np.linalg.norm(p, axis=-1)
    a = np.arcsin(np.clip(SUN_RADIUS_KM / d_sun, -1, 1))
    b = np.arcsin(np.clip(EARTH_RADIUS_KM / d_earth, -1, 1))
    cos_c = -np.einsum("...j,...j->...", p, to_sun) / (d_earth * d_sun)
    c = np.arccos(np.clip(cos_c, -1.0, 1.0))
    out = np.ones_like(c)
    umbra = c <= b - a
    out[umbra] = 0.0
    annular = c <= a - b
    out[annular] = 1.0 - (b[annular] / a[annular]) ** 2
    part = (c < a + b) & ~umbra & ~annular
    if np.any(part):
        aa, bb, cc = a[part], b[part], c[part]
        x = (cc**2 + aa**2 - bb**2) / (2 * cc)
        y = np.sqrt(np.maximum(aa**2 - x**2, 0.0))
        area = aa**2 * np.arccos(np.clip(x / aa, -1, 1)) + bb**2 * np.arccos(np.clip((cc - x) / bb, -1, 1)) - cc * y
        out[part] = 1.0 - area / (math.pi * aa**2)
    return out


def sunlit(positions_ecef: np.ndarray, jd: float, model: str = "cylindrical") -> np.ndarray:
    """True where more than half the Sun's disc is visible (the geometric shadow edge)."""
    return illumination(positions_ecef, sun_position_ecef(jd), model) > 0.5


def constellation_sunlit(constellation: Constellation, t: float, model: str = "cylindrical") -> np.ndarray:
    """Sunlit flag of every satellite at ``t`` s after the epoch."""
    return sunlit(constellation.positions(t), constellation.epoch_jd + t / 86400.0, model)


def eclipse_fractions(constellation: Constellation, t: float, *, samples: int = 360,
                      model: str = "cylindrical", indices: np.ndarray | None = None) -> np.ndarray:
    """Fraction of the orbit starting at ``t`` that each satellite spends in shadow.

    Each satellite is sampled ``samples`` times over its own period.  The Sun
    moves ~0.07° in a LEO orbit; it is recomputed per sample anyway.
    """
    idx = np.arange(len(constellation)) if indices is None else np.asarray(indices)
    periods = constellation.period_s[idx]
    phases = np.arange(samples) / samples
    out = np.empty(len(idx))
    # Satellites of one shell share a period: propagate each distinct period together.
    keys = np.round(periods, 3)
    for key in np.unique(keys):
        where = np.nonzero(keys == key)[0]
        times = t + phases * float(periods[where[0]])
        r = constellation.propagate_teme(times, idx[where])                   # (n, T, 3)
        lit = np.empty(r.shape[:2])
        for k, tt in enumerate(times):
            lit[:, k] = illumination(r[:, k, :], sun_position_teme(constellation.epoch_jd + tt / 86400.0), model)
        out[where] = np.mean(lit <= 0.5, axis=1)
    return out


def beta_angle_deg(normal: np.ndarray, sun: np.ndarray) -> float:
    """Angle between an orbit plane (given by its normal) and the Sun direction."""
    n = normal / np.linalg.norm(normal)
    s = sun / np.linalg.norm(sun)
    return math.degrees(math.asin(max(-1.0, min(1.0, float(n @ s)))))


def eclipse_fraction_circular(altitude_km: float, beta_deg: float) -> float:
    """Analytic eclipse fraction of a circular orbit in a cylindrical shadow.

    The orbit spends 2θ of each revolution in shadow, where
    cos θ = √(h² + 2Rh) / (r cos β); none at all when |β| exceeds asin(R/r).
    """
    r = EARTH_RADIUS_KM + altitude_km
    cb = math.cos(math.radians(beta_deg))
    x = math.sqrt(altitude_km**2 + 2 * EARTH_RADIUS_KM * altitude_km) / (r * cb) if cb > 0 else 2.0
    return math.acos(x) / math.pi if x < 1.0 else 0.0
