"""Ground stations: where they are, and which satellites they can see.

Stations are fixed in the Earth-fixed frame the constellation is propagated
in, so a ground link's length is just the distance between two ECEF points.
Visibility uses the *true* (geometric) elevation above the station's
ellipsoidal horizon: no refraction, which adds < 0.04° at a 25° mask.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# WGS-84: station coordinates are given on it (GPS, maps); the 2 m difference
# from SGP4's WGS-72 sphere radius is far below anything a link delay resolves.
WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
_E2 = WGS84_F * (2.0 - WGS84_F)

# 25°: the minimum elevation Starlink and Kuiper filed with the FCC; below it the
# beam crosses too much atmosphere and terrain for a reliable Ka/Ku link.
DEFAULT_ELEVATION_MASK_DEG = 25.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,-]{0,63}$")


@dataclass(frozen=True)
class GroundStation:
    """A named point on the WGS-84 ellipsoid (degrees, km above the ellipsoid)."""

    name: str
    lat_deg: float
    lon_deg: float
    alt_km: float = 0.0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"station name {self.name!r}: use 1–64 letters, digits, '.', '_', '-' or ','")
        if not -90.0 <= self.lat_deg <= 90.0:
            raise ValueError(f"station {self.name!r}: lat_deg {self.lat_deg} outside −90…90")
        if not -180.0 <= self.lon_deg <= 180.0:
            raise ValueError(f"station {self.name!r}: lon_deg {self.lon_deg} outside −180…180")
        if not -0.5 <= self.alt_km <= 10.0:
            raise ValueError(f"station {self.name!r}: alt_km {self.alt_km} outside −0.5…10 km")

    @classmethod
    def at(cls, lat_deg: float, lon_deg: float, alt_km: float = 0.0) -> "GroundStation":
        """An ad-hoc station named after its coordinates (``lat,lon`` on the CLI)."""
        ns, ew = "N" if lat_deg >= 0 else "S", "E" if lon_deg >= 0 else "W"
        return cls(f"{abs(lat_deg):.4f}{ns},{abs(lon_deg):.4f}{ew}", lat_deg, lon_deg, alt_km)

    def ecef(self) -> np.ndarray:
        return geodetic_to_ecef(self.lat_deg, self.lon_deg, self.alt_km)

    def up(self) -> np.ndarray:
        """Unit normal of the ellipsoid here: the zenith elevation is measured from."""
        la, lo = math.radians(self.lat_deg), math.radians(self.lon_deg)
        return np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])


def geodetic_to_ecef(lat_deg: float, lon_deg: float, alt_km: float = 0.0) -> np.ndarray:
    la, lo = math.radians(lat_deg), math.radians(lon_deg)
    n = WGS84_A_KM / math.sqrt(1.0 - _E2 * math.sin(la) ** 2)
    return np.array([(n + alt_km) * math.cos(la) * math.cos(lo),
                     (n + alt_km) * math.cos(la) * math.sin(lo),
                     (n * (1.0 - _E2) + alt_km) * math.sin(la)])


def ecef_to_latlon(p: np.ndarray) -> tuple[float, float, float]:
    """Geodetic latitude, longitude (degrees) and height (km) of an ECEF point (Bowring, < 1 mm)."""
    x, y, z = (float(v) for v in p)
    lon = math.atan2(y, x)
    rho = math.hypot(x, y)
    b = WGS84_A_KM * (1.0 - WGS84_F)
    ep2 = (WGS84_A_KM**2 - b**2) / b**2
    th = math.atan2(z * WGS84_A_KM, rho * b)
    lat = math.atan2(z + ep2 * b * math.sin(th) ** 3, rho - _E2 * WGS84_A_KM * math.cos(th) ** 3)
    n = WGS84_A_KM / math.sqrt(1.0 - _E2 * math.sin(lat) ** 2)
    h = rho / math.cos(lat) - n if abs(lat) < math.radians(89.0) else abs(z) / math.sin(abs(lat)) - n * (1 - _E2)
    return math.degrees(lat), math.degrees(lon), h


# No satellite moves faster than this in the Earth-fixed frame: escape speed at the surface is
# 11.2 km/s, and the frame's rotation adds 0.47 km/s per Earth radius out (LEO ~8.3 km/s, GEO ~6.1).
MAX_SAT_SPEED_KM_S = 12.0


class StationSet:
    """Stations as arrays, for vectorised visibility against a whole constellation."""

    def __init__(self, stations: tuple[GroundStation, ...] | list[GroundStation]):
        self.stations = tuple(stations)
        names = [s.name for s in self.stations]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate ground station names: {dup}")
        k = len(self.stations)
        self.pos = np.array([s.ecef() for s in self.stations]).reshape(k, 3)
        self.up = np.array([s.up() for s in self.stations]).reshape(k, 3)
        lo = np.radians([s.lon_deg for s in self.stations])
        la = np.radians([s.lat_deg for s in self.stations])
        self.east = np.stack([-np.sin(lo), np.cos(lo), np.zeros(k)], axis=1).reshape(k, 3)
        self.north = np.stack([-np.sin(la) * np.cos(lo), -np.sin(la) * np.sin(lo), np.cos(la)], axis=1).reshape(k, 3)
        self._pos_up = np.einsum("ij,ij->i", self.pos, self.up)
        self._pos_sq = np.einsum("ij,ij->i", self.pos, self.pos)
        self._pos_norm = np.sqrt(self._pos_sq)

    def __len__(self) -> int:
        return len(self.stations)

    def quiet_s(self, sat_xyz: tuple[float, float, float], mask_deg: float,
                speed_km_s: float = MAX_SAT_SPEED_KM_S) -> float:
        """Seconds from now during which no station can have the satellite at ``sat_xyz``
        (Earth-fixed, km) above its mask; 0.0 if one may now.

        In view needs height − sin(mask)·range ≥ 0 (as :meth:`visible`); that margin grows by
        at most (1 + sin(mask)) per km the satellite moves, and it moves at most
        ``speed_km_s``, so a satellite far below every station's mask stays there a while: a
        satellite's look at the sky can wait that long (minutes, for most of an orbit)."""
        if len(self) == 0:
            return math.inf
        sin_m = max(math.sin(math.radians(mask_deg)), 0.0)
        sat = np.asarray(sat_xyz, dtype=float)
        d = sat - self.pos
        margin = self.up @ sat - self._pos_up - sin_m * np.sqrt(np.einsum("ij,ij->i", d, d))
        best = float(margin.max())
        return 0.0 if best >= 0.0 else -best / ((1.0 + sin_m) * speed_km_s)

    def visible(self, sat_pos: np.ndarray, mask_deg: float,
                max_range_km: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every (station, satellite) pair above the mask (and within ``max_range_km``, if given).

        Returns (station k, satellite i, sin elevation, range km), ordered by
        (k, i).  One K×3 @ 3×N product gives every satellite's height along
        each zenith; a necessary bound, height ≥ sin(mask)·(min |sat| − |station|),
        leaves only the few pairs near each station's sky for exact ranges.
        """
        if len(self) == 0 or len(sat_pos) == 0:
            e = np.empty(0, dtype=np.int64)
            return e, e, np.empty(0), np.empty(0)
        sin_m = math.sin(math.radians(mask_deg))
        n = len(sat_pos)
        raw = self.up @ sat_pos.T                                        # (K, N): up · sat
        r_min = math.sqrt(float(np.min(np.einsum("ij,ij->i", sat_pos, sat_pos))))
        thr = self._pos_up + max(sin_m, 0.0) * np.maximum(r_min - self._pos_norm, 0.0)
        flat = np.flatnonzero(raw > thr[:, None])                       # flatnonzero: 10× faster than 2-D nonzero
        k, i = np.divmod(flat, n)
        d = sat_pos[i] - self.pos[k]
        rng = np.sqrt(np.einsum("ij,ij->i", d, d))
        height = raw.ravel()[flat] - self._pos_up[k]
        keep = (height > 0) & (height >= sin_m * rng)
        if max_range_km is not None:
            keep &= rng <= max_range_km
        return k[keep], i[keep], height[keep] / rng[keep], rng[keep]

    def near(self, sat_pos: np.ndarray, slack_km: np.ndarray, mask_deg: float,
             max_range_km: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every (station k, satellite i) pair that could be above the mask (and within
        ``max_range_km``) with satellite i anywhere within ``slack_km[i]`` of ``sat_pos[i]``:
        a superset of :meth:`visible` for those positions, ordered by (k, i).

        ``height − sin(mask)·range`` changes by at most (1 + sin(mask)) per km the
        satellite moves (heights by 1, ranges by 1), so a pair whose margin is below
        −(1 + sin(mask))·slack cannot be in view anywhere in that ball."""
        if len(self) == 0 or len(sat_pos) == 0:
            e = np.empty(0, dtype=np.int64)
            return e, e
        sin_m = max(math.sin(math.radians(mask_deg)), 0.0)
        d = sat_pos[None, :, :] - self.pos[:, None, :]                  # (K, N, 3)
        rng = np.sqrt(np.einsum("knj,knj->kn", d, d))
        height = self.up @ sat_pos.T - self._pos_up[:, None]
        ok = height - sin_m * rng >= -(1.0 + sin_m) * slack_km[None, :]
        if max_range_km is not None:
            ok &= rng <= max_range_km + slack_km[None, :]
        k, i = np.nonzero(ok)
        return k, i

    def look(self, k: int, sat_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Elevation (deg), azimuth (deg from north, clockwise) and range (km) from station k."""
        d = np.atleast_2d(sat_pos) - self.pos[k]
        rng = np.linalg.norm(d, axis=1)
        el = np.degrees(np.arcsin(np.clip(d @ self.up[k] / rng, -1.0, 1.0)))
        az = np.degrees(np.arctan2(d @ self.east[k], d @ self.north[k])) % 360.0
        return el, az, rng


def slant_range_km(altitude_km: float, elevation_deg: float, earth_radius_km: float = WGS84_A_KM) -> float:
    """Range to a satellite at ``altitude_km`` seen at ``elevation_deg`` (spherical Earth)."""
    r = earth_radius_km + altitude_km
    e = math.radians(elevation_deg)
    return math.sqrt(r * r - (earth_radius_km * math.cos(e)) ** 2) - earth_radius_km * math.sin(e)


# Major cities (WGS-84, rounded to ~100 m; altitude of the city centre) and two
# polar ground-station sites.  Enough to spread a hundred-odd links over every
# continent; add your own in the config's [[ground.stations]].
_CITIES = {
    "london": (51.5074, -0.1278, 0.011), "paris": (48.8566, 2.3522, 0.035),
    "berlin": (52.5200, 13.4050, 0.034), "madrid": (40.4168, -3.7038, 0.667),
    "rome": (41.9028, 12.4964, 0.021), "moscow": (55.7558, 37.6173, 0.156),
    "istanbul": (41.0082, 28.9784, 0.039), "stockholm": (59.3293, 18.0686, 0.028),
    "warsaw": (52.2297, 21.0122, 0.100), "kyiv": (50.4501, 30.5234, 0.179),
    "reykjavik": (64.1466, -21.9426, 0.010), "cairo": (30.0444, 31.2357, 0.023),
    "casablanca": (33.5731, -7.5898, 0.027), "lagos": (6.5244, 3.3792, 0.041),
    "accra": (5.6037, -0.1870, 0.061), "kinshasa": (-4.4419, 15.2663, 0.240),
    "nairobi": (-1.2921, 36.8219, 1.795), "addis-ababa": (9.0300, 38.7400, 2.355),
    "johannesburg": (-26.2041, 28.0473, 1.753), "cape-town": (-33.9249, 18.4241, 0.015),
    "riyadh": (24.7136, 46.6753, 0.612), "dubai": (25.2048, 55.2708, 0.005),
    "tehran": (35.6892, 51.3890, 1.189), "karachi": (24.8607, 67.0011, 0.008),
    "delhi": (28.6139, 77.2090, 0.216), "mumbai": (19.0760, 72.8777, 0.014),
    "bangalore": (12.9716, 77.5946, 0.920), "dhaka": (23.8103, 90.4125, 0.004),
    "bangkok": (13.7563, 100.5018, 0.002), "singapore": (1.3521, 103.8198, 0.015),
    "jakarta": (-6.2088, 106.8456, 0.008), "manila": (14.5995, 120.9842, 0.005),
    "hong-kong": (22.3193, 114.1694, 0.010), "taipei": (25.0330, 121.5654, 0.009),
    "shanghai": (31.2304, 121.4737, 0.004), "beijing": (39.9042, 116.4074, 0.044),
    "seoul": (37.5665, 126.9780, 0.038), "tokyo": (35.6762, 139.6503, 0.040),
    "osaka": (34.6937, 135.5023, 0.012), "sydney": (-33.8688, 151.2093, 0.058),
    "melbourne": (-37.8136, 144.9631, 0.031), "perth": (-31.9505, 115.8605, 0.031),
    "auckland": (-36.8485, 174.7633, 0.020), "honolulu": (21.3069, -157.8583, 0.006),
    "anchorage": (61.2181, -149.9003, 0.031), "vancouver": (49.2827, -123.1207, 0.070),
    "seattle": (47.6062, -122.3321, 0.056), "san-francisco": (37.7749, -122.4194, 0.016),
    "los-angeles": (34.0522, -118.2437, 0.089), "denver": (39.7392, -104.9903, 1.609),
    "dallas": (32.7767, -96.7970, 0.131), "chicago": (41.8781, -87.6298, 0.181),
    "toronto": (43.6532, -79.3832, 0.076), "new-york": (40.7128, -74.0060, 0.010),
    "washington": (38.9072, -77.0369, 0.022), "miami": (25.7617, -80.1918, 0.002),
    "mexico-city": (19.4326, -99.1332, 2.240), "bogota": (4.7110, -74.0721, 2.640),
    "lima": (-12.0464, -77.0428, 0.154), "santiago": (-33.4489, -70.6693, 0.570),
    "buenos-aires": (-34.6037, -58.3816, 0.025), "sao-paulo": (-23.5505, -46.6333, 0.760),
    "rio-de-janeiro": (-22.9068, -43.1729, 0.005),
    # polar sites where operators put gateways that see every polar pass
    "svalbard": (78.2232, 15.6267, 0.010), "mcmurdo": (-77.8419, 166.6863, 0.010),
}

BUILTIN_STATIONS: dict[str, GroundStation] = {
    name: GroundStation(name, lat, lon, alt) for name, (lat, lon, alt) in _CITIES.items()
}


def builtin_station(name: str) -> GroundStation:
    """A built-in station by (case-insensitive) name; KeyError lists close names."""
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    try:
        return BUILTIN_STATIONS[key]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(key, BUILTIN_STATIONS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(BUILTIN_STATIONS))}"
        raise KeyError(f"unknown ground station {name!r}{hint}") from None


def parse_station(spec: str) -> GroundStation:
    """``NAME`` of a built-in station, or ``lat,lon[,alt_km]`` for an ad-hoc one."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) in (2, 3):
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            pass
        else:
            return GroundStation.at(*nums)
    return builtin_station(spec)
