"""Satellite positions from orbital mechanics.

Walker shells are turned into SGP4 element sets (TLE shells arrive as element
sets already, see ``mesh.tle``) and propagated with sgp4's vectorised
``SatrecArray``; positions are rotated from TEME into an Earth-fixed frame
(GMST rotation) so that ground links computed later are right.  Time is
always passed in as seconds since the constellation epoch: this module never
reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Union

import numpy as np
from sgp4.api import WGS72, Satrec, SatrecArray

# WGS-72 constants, the ones SGP4 itself uses, so nominal altitudes match.
EARTH_RADIUS_KM = 6378.135
MU_KM3_S2 = 398600.8
SPEED_OF_LIGHT_M_S = 299_792_458.0
SPEED_OF_LIGHT_KM_S = SPEED_OF_LIGHT_M_S / 1000.0

_SGP4_EPOCH_JD = 2433281.5  # 1949-12-31 00:00 UT, the zero of sgp4init's epoch


@dataclass(frozen=True)
class WalkerShell:
    """One Walker shell: ``planes`` × ``sats_per_plane`` at one altitude.

    ``kind`` is ``"delta"`` (planes spread over 360° of RAAN) or ``"star"``
    (over 180°, polar-like, with a counter-rotating seam).
    """

    planes: int
    sats_per_plane: int
    altitude_km: float
    inclination_deg: float
    phasing: int = 1
    kind: str = "delta"
    name: str = "shell"
    # Whether laser links must clear the Earth (grazing altitude).  Tiny
    # didactic shells (4×6) have in-plane neighbours 60° apart whose line of
    # sight passes through the Earth; they opt out so the demo mesh exists.
    line_of_sight: bool = True
    # +Grid cross-plane shift (Hypatia's ``isl_shift``): slot s links to slot
    # s + isl_shift of the next plane.  0 pairs same-index satellites.
    isl_shift: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("delta", "star"):
            raise ValueError(f"shell {self.name!r}: kind must be 'delta' or 'star', not {self.kind!r}")
        if self.planes < 1 or self.sats_per_plane < 1:
            raise ValueError(f"shell {self.name!r}: planes and sats_per_plane must be ≥ 1")
        if not 0 <= self.phasing < max(self.planes, 1):
            raise ValueError(f"shell {self.name!r}: phasing F must be in [0, planes)")
        if not 100.0 <= self.altitude_km <= 50_000.0:
            raise ValueError(f"shell {self.name!r}: altitude_km {self.altitude_km} outside 100–50,000 km")
        if not 0.0 <= self.inclination_deg <= 180.0:
            raise ValueError(f"shell {self.name!r}: inclination_deg outside 0–180°")
        if not 0 <= self.isl_shift < self.sats_per_plane:
            raise ValueError(f"shell {self.name!r}: isl_shift must be in [0, sats_per_plane)")

    @property
    def size(self) -> int:
        return self.planes * self.sats_per_plane

    @property
    def radius_km(self) -> float:
        return EARTH_RADIUS_KM + self.altitude_km


@dataclass(frozen=True)
class TleRecord:
    """One two-line element set (``name`` is the optional title line)."""

    name: str
    line1: str
    line2: str

    @property
    def catalog(self) -> str:
        return self.line1[2:7].strip()


@dataclass(frozen=True)
class TleShell:
    """Satellites from a TLE file, grouped into planes by ``mesh.tle.group_tles``.

    ``records`` are plane-major: plane 0's satellites in order of argument of
    latitude, then plane 1's, ...  ``cross_shift[p]`` says which slot of plane
    p+1 (plane 0 across the seam) sits beside slot 0 of plane p.  ``kind`` is
    ``delta`` or ``star`` for a regular grid (every plane the same size), or
    ``irregular``: those satellites get nearest-neighbour laser links.
    """

    name: str
    records: tuple[TleRecord, ...]
    plane_sizes: tuple[int, ...]
    cross_shift: tuple[int, ...]
    kind: str
    altitude_km: float
    inclination_deg: float
    line_of_sight: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("delta", "star", "irregular"):
            raise ValueError(f"TLE shell {self.name!r}: kind must be delta, star or irregular")
        if sum(self.plane_sizes) != len(self.records):
            raise ValueError(f"TLE shell {self.name!r}: plane sizes do not add up to the satellites")
        if self.kind != "irregular" and (len(set(self.plane_sizes)) != 1 or len(self.cross_shift) != len(self.plane_sizes)):
            raise ValueError(f"TLE shell {self.name!r}: a {self.kind} grid needs equal planes and one shift per plane")

    @property
    def size(self) -> int:
        return len(self.records)

    @property
    def planes(self) -> int:
        return len(self.plane_sizes)

    @property
    def sats_per_plane(self) -> int | None:
        return self.plane_sizes[0] if self.kind != "irregular" else None

    @property
    def radius_km(self) -> float:
        return EARTH_RADIUS_KM + self.altitude_km


Shell = Union[WalkerShell, TleShell]


def iso_to_jd(iso: str) -> float:
    """Julian date (UTC treated as UT1) of an ISO-8601 timestamp."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    unix = dt.timestamp()
    return unix / 86400.0 + 2440587.5


def jd_to_iso(jd: float) -> str:
    """ISO-8601 UTC timestamp of a Julian date, to the millisecond; inverse of :func:`iso_to_jd`.

    A JD double resolves ~20 µs and a TLE epoch ~0.9 ms, so finer digits are noise.
    """
    base = datetime(1970, 1, 1, tzinfo=timezone.utc)
    dt = base + timedelta(milliseconds=round((jd - 2440587.5) * 86400e3))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def gmst_rad(jd_ut1: float) -> float:
    """Greenwich mean sidereal time (IAU-82, as Vallado pairs with SGP4)."""
    t = (jd_ut1 - 2451545.0) / 36525.0
    sec = 67310.54841 + (876600.0 * 3600 + 8640184.812866) * t + 0.093104 * t * t - 6.2e-6 * t**3
    return math.radians((sec % 86400.0) / 240.0)


def _walker_elements(shell: WalkerShell) -> list[tuple[float, float]]:
    """(RAAN, mean anomaly) in radians for each satellite, plane-major order."""
    spread = 2 * math.pi if shell.kind == "delta" else math.pi
    total = shell.size
    out = []
    for p in range(shell.planes):
        raan = spread * p / shell.planes
        for s in range(shell.sats_per_plane):
            m = 2 * math.pi * s / shell.sats_per_plane + 2 * math.pi * shell.phasing * p / total
            out.append((raan, m % (2 * math.pi)))
    return out


class Constellation:
    """Every satellite of one or more shells, propagated together.

    Satellite ``i`` is global index ``i``; shells are laid out one after the
    other, each plane-major (plane 0 slots 0..S-1, then plane 1, ...).
    Shells are :class:`WalkerShell` (built from parameters) or
    :class:`TleShell` (element sets from a file, each at its own epoch).
    """

    def __init__(self, shells: list[Shell] | tuple[Shell, ...], epoch_jd: float):
        if not shells:
            raise ValueError("a constellation needs at least one shell")
        self.shells = list(shells)
        self.epoch_jd = epoch_jd
        self._sats: list[Satrec] = []
        self.shell_of: list[int] = []
        self.plane_of: list[int] = []
        self.slot_of: list[int] = []
        self.shell_offset: list[int] = []
        self.labels: list[str] = []      # human names: TLE title lines, or shell/plane/slot
        for si, shell in enumerate(self.shells):
            self.shell_offset.append(len(self._sats))
            if isinstance(shell, TleShell):
                self._add_tle_shell(si, shell)
                continue
            n_rad_min = math.sqrt(MU_KM3_S2 / shell.radius_km**3) * 60.0
            for k, (raan, m) in enumerate(_walker_elements(shell)):
                sat = Satrec()
                sat.sgp4init(
                    WGS72, "i", len(self._sats) + 1, epoch_jd - _SGP4_EPOCH_JD,
                    0.0, 0.0, 0.0, 0.0, 0.0,  # bstar, ndot, nddot, ecc, argp: circular, drag-free
                    math.radians(shell.inclination_deg), m, n_rad_min, raan,
                )
                self._sats.append(sat)
                self.shell_of.append(si)
                self.plane_of.append(k // shell.sats_per_plane)
                self.slot_of.append(k % shell.sats_per_plane)
                self.labels.append(f"{shell.name}-p{k // shell.sats_per_plane}-s{k % shell.sats_per_plane}")
        self._array = SatrecArray(self._sats)
        # Orbital period from the Kozai mean motion (rad/min): what eclipse
        # fractions and contact-plan horizons are measured in.
        self.period_s = np.array([2 * math.pi / s.no_kozai * 60.0 for s in self._sats])

    def _add_tle_shell(self, si: int, shell: TleShell) -> None:
        k = 0
        for p, size in enumerate(shell.plane_sizes):
            for slot in range(size):
                rec = shell.records[k]
                sat = Satrec.twoline2rv(rec.line1, rec.line2, WGS72)
                if sat.error:
                    raise ValueError(f"TLE {rec.name or rec.catalog}: sgp4 rejected the element set (error {sat.error})")
                self._sats.append(sat)
                self.shell_of.append(si)
                self.plane_of.append(p)
                self.slot_of.append(slot)
                self.labels.append(rec.name or rec.catalog)
                k += 1

    def __len__(self) -> int:
        return len(self._sats)

    def _jd(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        whole = math.floor(self.epoch_jd)
        frac = (self.epoch_jd - whole) + t / 86400.0
        return np.array([float(whole)]), np.array([frac])

    def positions(self, t: float) -> np.ndarray:
        """Earth-fixed positions (km), shape (N, 3), at ``t`` s after the epoch."""
        jd, fr = self._jd(t)
        err, r, _ = self._array.sgp4(jd, fr)
        if np.any(err):
            bad = int(np.flatnonzero(err[:, 0])[0])
            raise ValueError(f"SGP4 failed for satellite {bad} at t={t} (error {int(err[bad, 0])})")
        return teme_to_ecef(r[:, 0, :], float(jd[0] + fr[0]))

    def position(self, i: int, t: float) -> np.ndarray:
        """Earth-fixed position (km) of one satellite; cheap enough per frame."""
        return np.array(self.position_xyz(i, t))

    def position_xyz(self, i: int, t: float) -> tuple[float, float, float]:
        """Like :meth:`position` as plain floats (~3 µs): for root finding in loops."""
        whole = math.floor(self.epoch_jd)
        fr = (self.epoch_jd - whole) + t / 86400.0
        err, r, _ = self._sats[i].sgp4(float(whole), fr)
        if err:
            raise ValueError(f"SGP4 failed for satellite {i} at t={t} (error {err})")
        g = gmst_rad(float(whole) + fr)
        c, s = math.cos(g), math.sin(g)
        return (c * r[0] + s * r[1], -s * r[0] + c * r[1], r[2])

    def propagate_teme(self, times: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """TEME positions (km), shape (n, T, 3), of some satellites at several times."""
        times = np.atleast_1d(np.asarray(times, dtype=float))
        whole = math.floor(self.epoch_jd)
        jd = np.full(len(times), float(whole))
        fr = (self.epoch_jd - whole) + times / 86400.0
        arr = self._array if indices is None else SatrecArray([self._sats[int(i)] for i in indices])
        err, r, _ = arr.sgp4(jd, fr)
        if np.any(err):
            bad, when = (int(x[0]) for x in np.nonzero(err))
            who = bad if indices is None else int(indices[bad])
            raise ValueError(f"SGP4 failed for satellite {who} at t={times[when]} (error {int(err[bad, when])})")
        return r

    def positions_at(self, times: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Earth-fixed positions (km), shape (n, T, 3): one sgp4 call for many instants."""
        times = np.atleast_1d(np.asarray(times, dtype=float))
        r = self.propagate_teme(times, indices)
        whole = math.floor(self.epoch_jd)
        g = np.array([gmst_rad(float(whole) + ((self.epoch_jd - whole) + t / 86400.0)) for t in times])
        c, s = np.cos(g)[None, :], np.sin(g)[None, :]
        x, y = r[..., 0], r[..., 1]
        return np.stack([c * x + s * y, -s * x + c * y, r[..., 2]], axis=-1)


def teme_to_ecef(r_teme: np.ndarray, jd_ut1: float) -> np.ndarray:
    """Rotate TEME vectors into the Earth-fixed frame (polar motion ignored: < 15 m)."""
    g = gmst_rad(jd_ut1)
    c, s = math.cos(g), math.sin(g)
    x, y, z = r_teme[:, 0], r_teme[:, 1], r_teme[:, 2]
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=1)
