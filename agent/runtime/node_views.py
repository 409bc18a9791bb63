"""What the node shows of itself (``GET /v1/node``, health, storage, membership and link
statistics): read-only views of state the other parts own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable
from agent import wallclock

if TYPE_CHECKING:
    from agent.runtime.edge_cache import EdgeCache
    from agent.runtime.journal import Journal
    from agent.runtime.membership import MembershipService
    from agent.compute.models import ModelStore
    from agent.links.p2p import P2PHost
    from agent.links.peers import NodeIdentity, Peers
    from agent.runtime.placement import ComputeTable
    from agent.runtime.relay import Relay
    from agent.runtime.tasks import DeadlineTimers, TaskTable
    from agent.runtime.timekeeper import Timekeeper
    from agent.links.transport import LinkLayer
    from mesh.delivery import TaskLedger
    from mesh.energy import Battery
    from mesh.orbit import Constellation
    from mesh.routing import Router
    from mesh.topology import Topology


class NodeViews:
    """Mixin of ``agent.runtime.node.Node``; what it reads of the node:"""
    me: NodeIdentity
    peers: Peers
    host: P2PHost
    is_ground: bool
    started: float
    constellation: Constellation
    topology: Topology
    router: Router
    links: LinkLayer
    store: ModelStore
    tasks: TaskTable
    deadlines: DeadlineTimers
    journal: Journal | None
    recovered: int
    membership: MembershipService
    relay: Relay
    ledger: TaskLedger
    timekeeper: Timekeeper
    battery: Battery | None
    compute_table: ComputeTable
    edge_cache: EdgeCache
    executed: int
    upsets: int
    orbit_t: Callable[..., float]                                   # NodePhysics
    position: Callable[[], dict[str, float]]                        # NodePhysics
    count_handovers: Callable[[float], int]                         # Node

    # -- views -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        t = self.orbit_t()
        snap = self.router.snapshot(t)
        up = dict(snap.neighbours(self.me.index))
        neighbours = []
        for name, link in sorted(self.links.links.items(), key=lambda kv: self.peers[kv[0]].index):
            idx = self.peers[name].index
            neighbours.append({
                "node": name, "peer_id": self.peers[name].peer_id, "link_up": link.up,
                "in_sight": idx in up,
                "latency_ms": self.topology.link_latency(self.me.index, idx, t) * 1e3,
            })
        if self.is_ground:
            view = self.topology.ground_view(self.me.index, t)
            orbit: dict[str, Any] = {"ground_station": True, "t_s": t,
                                     "serving": None if view.serving is None or view.serving < 0
                                     else self.topology.names.name(view.serving),
                                     "visible": len(view.visible), "handover": view.policy,
                                     "handovers": None if view.policy == "all" else self.count_handovers(wallclock.now())}
        else:
            shell = self.constellation.shells[self.constellation.shell_of[self.me.index]]
            orbit = {"shell": shell.name, "plane": self.constellation.plane_of[self.me.index],
                     "slot": self.constellation.slot_of[self.me.index], "t_s": t,
                     "altitude_km": shell.altitude_km, "inclination_deg": shell.inclination_deg}
        return {
            "node": self.me.name, "index": self.me.index, "peer_id": self.me.peer_id,
            "kind": "ground" if self.is_ground else "satellite",
            "multiaddrs": self.host.listen_multiaddrs(),
            "orbit": orbit, "clock": self._clock_brief(),
            "position": self.position(), "neighbours": neighbours,
            "models": self.store.names(),
            "tasks": self.tasks.counts(), "uptime_s": wallclock.now() - self.started,
            "incarnation": self.membership.m.incarnation, "members_alive": self.membership.alive_count(),
            "executed": self.executed,
            "energy": self.battery.describe() if self.battery is not None else None,
            "compute_ms": {m: round(s * 1e3, 3) for m, s in self.compute_table.of_node(self.me.name).items()},
            "sessions": self.store.memory(),
            "storage": self.storage(),
            "edge_cache": self.edge_cache.describe(),
            "results_corrupted": self.upsets,
        }

    def _clock_brief(self) -> dict[str, Any]:
        """The fleet clock as this node runs it (GET /v1/time has the whole record)."""
        scale, paused = self.timekeeper.timeline.speed(wallclock.now())
        return {"scale": scale, "paused": paused}

    def storage(self) -> dict[str, Any]:
        """Recovery and integrity: what the journal recovered and quarantined, what the
        deadline backstop had to end, and the model store's retention and damage."""
        journal: dict[str, Any] | None = None
        if self.journal is not None:
            journal = {"recovered": self.recovered, "quarantined": self.journal.quarantined(),
                       "quarantined_since_start": self.journal.quarantined_now,
                       "set_aside": str(self.journal.set_aside) if self.journal.set_aside else None,
                       "quarantine": self.journal.quarantine_listing(10)}
        return {"journal": journal, "deadline_timer_failed": self.deadlines.fired, "models": self.store.storage()}

    def describe_membership(self) -> dict[str, Any]:
        out = self.membership.describe()
        out["delivery"] = {**self.relay.describe(), "tasks_in_flight": len(self.ledger),
                           "end_to_end_retries": self.ledger.retries, "duplicate_results": self.ledger.duplicates}
        return out

    def health(self) -> dict[str, Any]:
        links = self.links.links
        return {"status": "ok", "node": self.me.name, "links_up": sum(l.up for l in links.values()),
                "links_total": len(links), "ready": self.links.all_up(),
                "members_alive": self.membership.alive_count(), "members_total": len(self.peers.by_index)}

    def link_stats(self, samples: bool = False) -> list[dict[str, Any]]:
        out = []
        for n, link in sorted(self.links.links.items()):
            row = {"peer": n, "up": link.up, **link.stats.as_dict()}
            if samples:
                row["probe_errors_s"] = list(link.stats.probe_errors)
            out.append(row)
        return out
