"""Everything a config implies, built once: constellation, stations, topology, router.

Agents, the CLI and the simulator all build through here, so a config means
the same mesh everywhere (same node numbering, same link rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from mesh.config import FleetConfig
from mesh.ground import GroundStation
from mesh.healing import HealingRouter
from mesh.nodes import NodeNames
from mesh.orbit import Constellation
from mesh.routing import Router
from mesh.sun import constellation_sunlit
from mesh.topology import Topology


@dataclass
class World:
    config: FleetConfig
    constellation: Constellation
    topology: Topology
    router: Router
    _sunlit: tuple[int, list[bool]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: FleetConfig, *, extra_stations: tuple[GroundStation, ...] = (),
                    router_step_s: float = 1.0) -> "World":
        """``extra_stations`` (e.g. a CLI's ``lat,lon`` endpoints) are numbered after the config's."""
        constellation = Constellation(list(cfg.all_shells), cfg.epoch_jd)
        have = {s.name for s in cfg.ground.stations}
        stations = tuple(cfg.ground.stations) + tuple(s for s in extra_stations if s.name not in have)
        topology = Topology(
            constellation, max_range_km=cfg.links.max_range_km, grazing_km=cfg.links.grazing_km,
            stations=stations, elevation_mask_deg=cfg.ground.elevation_mask_deg,
            handover=cfg.ground.handover, handover_interval_s=cfg.ground.handover_interval_s,
            ground_max_range_km=cfg.ground.max_range_km, ground_relays=cfg.ground.relays,
            inter_shell_links=cfg.links.inter_shell_links,
            inter_shell_interval_s=cfg.links.inter_shell_interval_s)
        return cls(cfg, constellation, topology, Router(topology, step_s=router_step_s, cache_size=8))

    @cached_property
    def healing(self) -> HealingRouter:
        """Next hops around what is down, for every node of this world (a node's router:
        ``first_hops``).  Its views (a snapshot minus a down-set) and each node's first-hop
        table are functions of their keys alone, so the nodes that share a world (a satellite
        host, a simulation) share them: one view per down-set per process instead of one per
        node (~1 MB per node at starlink-s1's size, bench/sat_memory.py).  Twice a node's view
        cache: while a death or cut floods, the nodes' down-sets differ for a moment, one view each."""
        return HealingRouter(self.router.snapshot, cache_views=64)

    def sunlit(self, t: float) -> list[bool]:
        """Which satellites are in sunlight at orbital time ``t``, by index, to the second (a
        shadow's edge moves ~7 km a second along an orbit).  Physics every node has, so nobody
        needs it gossiped: placement reads it here, for every node of the process at once."""
        second = math.floor(t)
        if self._sunlit is None or self._sunlit[0] != second:
            self._sunlit = (second, constellation_sunlit(self.constellation, float(second)).tolist())
        return self._sunlit[1]

    @property
    def names(self) -> NodeNames:
        return self.topology.names

    def orbit_t(self, wall_unix: float) -> float:
        return self.config.clock.orbit_t(wall_unix)
