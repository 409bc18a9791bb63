"""An independent reference for Hypatia's Starlink-550 scenario (not the project's code).

Written from Hypatia's published definitions (snkas/hypatia, satgenpy and
``paper/satellite_networks_state/main_starlink_550.py``), with none of the
project's modules:

* TLEs: 72 orbits × 22 satellites, RAAN = orbit · 360°/72, mean anomaly =
  slot · 360°/22, plus half a slot on odd orbits ("phase diff"); inclination
  53°, eccentricity 1e-7, argument of perigee 0, 15.19 rev/day, epoch
  2000-01-01 00:00 (TLE epoch field ``00001.00000000``).  Satellite id =
  orbit · 22 + slot, the order the TLEs are generated in.
* +Grid ISLs: id ↔ next slot of its orbit, and id ↔ the same slot
  (+ ``isl_shift``) of the next orbit, the last orbit wrapping to orbit 0.
  An ISL counts while it is at most ``MAX_ISL_LENGTH_M`` long.
* Ground-satellite links (GSLs): every satellite within ``MAX_GSL_LENGTH_M``
  of a station (Hypatia's distance form of the 25° minimum elevation).
* Positions from pyephem, as Hypatia computes them: ISL length from two
  satellites' ranges and angular separation seen by an observer at (0°, 0°);
  GSL length is ephem's range from an observer at the station.
* RTT: shortest path whose intermediate nodes are satellites only, there and
  back, at the speed of light.  Shortest paths by networkx's Dijkstra.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ephem
import networkx as nx

NUM_ORBITS = 72
SATS_PER_ORBIT = 22
INCLINATION_DEG = 53.0
MEAN_MOTION_REV_PER_DAY = 15.19
ECCENTRICITY = 0.0000001
ALTITUDE_M = 550_000.0
EARTH_RADIUS_M = 6_378_135.0                 # WGS-72
SATELLITE_CONE_RADIUS_M = 940_700.0          # from the FCC filing, as Hypatia takes it
MAX_GSL_LENGTH_M = math.sqrt(SATELLITE_CONE_RADIUS_M ** 2 + ALTITUDE_M ** 2)
MAX_ISL_LENGTH_M = 2 * math.sqrt((EARTH_RADIUS_M + ALTITUDE_M) ** 2 - (EARTH_RADIUS_M + 80_000.0) ** 2)
SPEED_OF_LIGHT_M_S = 299_792_458.0
EPOCH = "2000/1/1 00:00:00"
EPOCH_ISO = "2000-01-01T00:00:00Z"

# Hypatia's ground-station list (top-100 cities by 2025 population): gid, lat, lon, elevation m.
RIO_DE_JANEIRO = ("Rio-de-Janeiro", -22.90278, -43.2075, 0.0)
SAINT_PETERSBURG = ("Sankt-Peterburg", 59.929858, 30.326228, 0.0)


def _checksum(line: str) -> int:
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line) % 10


def tle_text(num_orbits: int = NUM_ORBITS, sats_per_orbit: int = SATS_PER_ORBIT) -> str:
    """The scenario's element sets, 3-line form, in generation (id) order."""
    out = []
    for orbit in range(num_orbits):
        raan = orbit * 360.0 / num_orbits
        shift = 360.0 / (sats_per_orbit * 2.0) if orbit % 2 == 1 else 0.0
        for slot in range(sats_per_orbit):
            sid = orbit * sats_per_orbit + slot
            mean_anomaly = shift + slot * 360.0 / sats_per_orbit
            l1 = f"1 {sid + 1:05d}U 00000ABC 00001.00000000  .00000000  00000-0  00000+0 0    0"
            l2 = (f"2 {sid + 1:05d} {INCLINATION_DEG:8.4f} {raan:8.4f} {f'{ECCENTRICITY:.7f}'[2:]} "
                  f"{0.0:8.4f} {mean_anomaly:8.4f} {MEAN_MOTION_REV_PER_DAY:11.8f}    0")
            out += [f"Starlink-550 {sid}", l1 + str(_checksum(l1)), l2 + str(_checksum(l2))]
    return "\n".join(out) + "\n"


def plus_grid(num_orbits: int = NUM_ORBITS, sats_per_orbit: int = SATS_PER_ORBIT,
              isl_shift: int = 0) -> set[tuple[int, int]]:
    """Hypatia's +Grid as (low id, high id) pairs."""
    isls = set()
    for orbit in range(num_orbits):
        for slot in range(sats_per_orbit):
            sid = orbit * sats_per_orbit + slot
            same = orbit * sats_per_orbit + (slot + 1) % sats_per_orbit
            adjacent = ((orbit + 1) % num_orbits) * sats_per_orbit + (slot + isl_shift) % sats_per_orbit
            isls.add((min(sid, same), max(sid, same)))
            isls.add((min(sid, adjacent), max(sid, adjacent)))
    return isls


class Reference:
    """The scenario's graph and ground-to-ground RTT at any instant."""

    def __init__(self, stations=(RIO_DE_JANEIRO, SAINT_PETERSBURG), isl_shift: int = 0):
        text = tle_text().strip().split("\n")
        self.sats = [ephem.readtle(*text[i:i + 3]) for i in range(0, len(text), 3)]
        self.isls = sorted(plus_grid(isl_shift=isl_shift))
        self.stations = stations

    def _observer(self, lat: float, lon: float, elev_m: float, t: float) -> ephem.Observer:
        obs = ephem.Observer()
        obs.epoch = EPOCH
        obs.date = ephem.Date(ephem.Date(EPOCH) + t * ephem.second)
        obs.lat, obs.lon, obs.elevation = str(lat), str(lon), elev_m    # strings: degrees
        return obs

    def graph(self, t: float) -> nx.Graph:
        n = len(self.sats)
        g = nx.Graph()
        centre = self._observer(0.0, 0.0, 0.0, t)
        seen = []
        for s in self.sats:
            s.compute(centre)
            seen.append((float(s.range), float(s.ra), float(s.dec)))
        for a, b in self.isls:
            ra_a, ra_b = seen[a], seen[b]
            sep = float(ephem.separation((ra_a[1], ra_a[2]), (ra_b[1], ra_b[2])))
            d = math.sqrt(ra_a[0] ** 2 + ra_b[0] ** 2 - 2 * ra_a[0] * ra_b[0] * math.cos(sep))
            if d <= MAX_ISL_LENGTH_M:
                g.add_edge(a, b, weight=d)
        for k, (_, lat, lon, elev) in enumerate(self.stations):
            obs = self._observer(lat, lon, elev, t)
            for i, s in enumerate(self.sats):
                s.compute(obs)
                if s.range <= MAX_GSL_LENGTH_M:
                    g.add_edge(n + k, i, weight=float(s.range))
        return g

    def rtt_s(self, t: float, src: int = 0, dst: int = 1) -> float | None:
        """Round trip between stations ``src`` and ``dst`` (indices into ``stations``); None if unreachable."""
        n = len(self.sats)
        g = self.graph(t)
        a, b = n + src, n + dst
        # stations never relay: drop every other station's node
        g.remove_nodes_from([n + k for k in range(len(self.stations)) if k not in (src, dst)])
        # a path through a station is impossible with two stations, as each is an end
        try:
            d = nx.dijkstra_path_length(g, a, b, weight="weight")
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return None
        return 2.0 * d / SPEED_OF_LIGHT_M_S


# rtt_s(t) for t = 0, 1, … 199 s between the two stations, as this reference computes it
# (~30 ms of pyephem per instant): tests compare against the table, and check it against a
# live computation (every instant in the slow suite, a sample in the fast one).
# Rewrite it with `python tests/hypatia_reference.py` after changing this file.
RTT_TABLE = Path(__file__).with_name("hypatia_rtt_table.json")
RTT_TABLE_SECONDS = 200


def rtt_table() -> list[float | None]:
    """The stored RTTs (s), indexed by whole second."""
    return json.loads(RTT_TABLE.read_text())


def compute_rtt_table() -> list[float | None]:
    ref = Reference()
    return [ref.rtt_s(float(t)) for t in range(RTT_TABLE_SECONDS)]


if __name__ == "__main__":
    RTT_TABLE.write_text(json.dumps(compute_rtt_table()) + "\n")
