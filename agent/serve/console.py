"""The operator's console: a live globe at ``/`` of every agent's API port.

The page (agent/serve/web/) draws what the serving agent knows, pushed to it as
Server-Sent Events, one frame per second for every viewer together:

* positions of every satellite from the shared physics (the same
  ``Router.snapshot`` the node routes with), at the fleet's orbital clock, so
  a paused or sped-up clock shows as such;
* every link with its state: ``up``, ``lossy`` (a fault that degrades but does
  not cut), ``cut`` (a fault), ``down`` (membership's verdict from failed
  probes), ``rewiring`` (physics drops it within ``REWIRE_AHEAD_S`` of
  orbital time: a ground station's handover, an inter-shell link's re-pairing;
  +Grid laser links of one shell are permanent in every preset);
* membership (alive, suspect, dead) as this node sees it;
* tasks that entered or ran here, with their routes (planned while in flight,
  measured hops once done).

Why SSE and one shared frame: a frame of 1,584 satellites is ~60 kB of JSON and
costs a few ms to build; building it once per tick for all viewers (not per
viewer, not per node polled) keeps the agent's cost flat in the number of open
pages.  Viewers are capped (``MAX_VIEWERS``): the next one gets a 503 that says
so, not an unbounded list of streams.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
import trio

from agent import wallclock
from mesh.sun import illumination, sun_position_ecef
from mesh.world import World

FRAME_PERIOD_S = 1.0
REWIRE_AHEAD_S = 15.0         # orbital seconds ahead in which a link that will break shows as re-wiring
MAX_VIEWERS = 16
MAX_STREAM_FRAMES = 3600      # a stream ends after an hour (the browser's EventSource reconnects)
RECENT_TASKS = 40             # tasks per frame, newest first
TASK_SHOWN_S = 60.0           # a finished task stays on the globe this long (wall seconds)
STATUS_CODE = {"alive": 0, "suspect": 1, "dead": 2}
LINK_STATES = ("up", "lossy", "cut", "down", "rewiring")
WEB_DIR = Path(__file__).parent / "web"

Pair = tuple[int, int]


@dataclass
class FleetFacts:
    """What changes only with the fleet's config: sent once per page load."""

    world: World
    me: str

    def describe(self) -> dict[str, Any]:
        names = self.world.names
        c = self.world.constellation
        cfg = self.world.config
        stations = [{"name": s.name, "lat": s.lat_deg, "lon": s.lon_deg}
                    for s in self.world.topology.stations.stations] if len(self.world.topology.stations) else []
        return {
            "me": self.me, "fleet": cfg.name, "n_sats": names.n_sats,
            "names": [names.name(i) for i in range(len(names))],
            "plane": [int(c.plane_of[i]) for i in range(names.n_sats)],
            "shell": [int(c.shell_of[i]) for i in range(names.n_sats)],
            "shells": [s.name for s in c.shells], "stations": stations,
            "link_states": list(LINK_STATES), "frame_period_s": FRAME_PERIOD_S,
        }


class FrameBuilder:
    """One frame of the globe from the physics and a node's view of the fleet.

    ``view`` supplies what the node knows (``statuses``, ``cut_pairs``,
    ``lossy_pairs``, ``down_pairs``, ``tasks``, ``clock``); the bench feeds a
    quiet fleet through the same builder, so it measures the page on real
    physics at full size.
    """

    def __init__(self, world: World, view: "ConsoleView"):
        self.world = world
        self.view = view
        self._cache: tuple[float, bytes] | None = None

    def frame(self, wall: float) -> dict[str, Any]:
        t = self.view.orbit_t(wall)
        router = self.world.router
        snap = router.snapshot(t)
        n_sats = self.world.names.n_sats
        pos = snap.positions[:n_sats]
        ahead = router.snapshot(t + REWIRE_AHEAD_S)
        later = {tuple(p) for p in ahead.pairs.tolist()}
        later_ground = {tuple(p) for p in ahead.ground_pairs.tolist()}
        cut, lossy, down = self.view.cut_pairs(wall), self.view.lossy_pairs(wall), self.view.down_pairs()
        links = []
        for a, b in snap.pairs.tolist():
            key = (a, b)
            state = ("cut" if key in cut else "down" if key in down else "lossy" if key in lossy
                     else "rewiring" if key not in later else "up")
            links.append([a, b, LINK_STATES.index(state)])
        # a cut link that physics still has stays drawn (as cut); one physics dropped is gone
        rewire = LINK_STATES.index("rewiring")
        ground = [[k, i, 0 if (k, i) in later_ground else rewire] for k, i in snap.ground_pairs.tolist()]
        jd = self.world.constellation.epoch_jd + t / 86400.0
        sun = sun_position_ecef(jd)
        sunlit = illumination(pos, sun) > 0.5 if n_sats else np.zeros(0, bool)
        return {
            "wall": wall, "t": t, "clock": self.view.clock(wall),
            "sun": (sun / np.linalg.norm(sun)).round(5).tolist(),
            "pos": np.round(pos, 1).ravel().tolist(),
            "sunlit": "".join("1" if s else "0" for s in sunlit),
            "status": [STATUS_CODE.get(s, 0) for s in self.view.statuses()],
            "links": links, "ground": ground, "tasks": self.view.tasks(wall),
        }

    def encoded(self, wall: float) -> bytes:
        """The frame as an SSE event, built once per period for every viewer."""
        if self._cache is not None and wall - self._cache[0] < FRAME_PERIOD_S / 2:
            return self._cache[1]
        data = json.dumps(self.frame(wall), separators=(",", ":"), allow_nan=False)
        out = f"event: frame\ndata: {data}\n\n".encode()
        self._cache = (wall, out)
        return out


class ConsoleView:
    """A quiet fleet: everyone alive, no faults, no tasks, the config's clock (bench, tests)."""

    def __init__(self, world: World):
        self.world = world

    def orbit_t(self, wall: float) -> float:
        return self.world.orbit_t(wall)

    def clock(self, wall: float) -> dict[str, Any]:
        return {"scale": self.world.config.clock.time_scale, "paused": False}

    def statuses(self) -> list[str]:
        return ["alive"] * len(self.world.names)

    def cut_pairs(self, wall: float) -> frozenset[Pair]:
        return frozenset()

    def lossy_pairs(self, wall: float) -> frozenset[Pair]:
        return frozenset()

    def down_pairs(self) -> frozenset[Pair]:
        return frozenset()

    def tasks(self, wall: float) -> list[dict[str, Any]]:
        return []


class Viewers:
    """A bounded set of open streams."""

    def __init__(self, limit: int = MAX_VIEWERS):
        self.limit = limit
        self.open = 0

    def admit(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


async def frames(builder: FrameBuilder, facts: FleetFacts, viewers: Viewers,
                 now: Callable[[], float] = wallclock.now, period_s: float = FRAME_PERIOD_S,
                 count: int = MAX_STREAM_FRAMES) -> AsyncIterator[bytes]:
    """The SSE stream of one viewer: the fleet facts, then a frame per period, ``count`` frames at most."""
    try:
        yield f"retry: 2000\nevent: fleet\ndata: {json.dumps(facts.describe(), separators=(',', ':'))}\n\n".encode()
        for k in range(count):
            if k:
                await trio.sleep(period_s)
            yield builder.encoded(now())
    finally:
        viewers.leave()


def ecef_to_geodetic(x: float, y: float, z: float) -> tuple[float, float, float]:
    """Latitude, longitude (degrees) and height (km) on the WGS-84 ellipsoid (Bowring, < 1 m here)."""
    a, f = 6378.137, 1 / 298.257223563
    e2 = f * (2 - f)
    b = a * (1 - f)
    ep2 = (a * a - b * b) / (b * b)
    p = math.hypot(x, y)
    th = math.atan2(z * a, p * b)
    lat = math.atan2(z + ep2 * b * math.sin(th) ** 3, p - e2 * a * math.cos(th) ** 3)
    n = a / math.sqrt(1 - e2 * math.sin(lat) ** 2)
    h = p / math.cos(lat) - n if abs(lat) < math.radians(89.9) else abs(z) / math.sin(abs(lat)) - n * (1 - e2)
    return math.degrees(lat), math.degrees(math.atan2(y, x)), h
