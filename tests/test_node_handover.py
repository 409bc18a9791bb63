"""The live fleet's ground station follows the configured handover policy (in-process, no sockets)."""

import time

import pytest

from agent.ops.fleet import FleetError, FleetSpec, fleet_config
from agent.runtime.metrics import render
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.peers import PeerEntry, Peers
from mesh.handover import Handover
from mesh.world import World


class _Host:
    """Just enough of a libp2p host to build a Node: nothing here opens a socket."""

    def __init__(self, peer_id: str):
        self.peer_id = peer_id

    def listen_multiaddrs(self) -> list[str]:
        return []


def _station(tmp_path, handover: str) -> Node:
    cfg = fleet_config(FleetSpec(preset="starlink-s1", ground=("london",), handover=handover, time_scale=60.0))
    cfg = cfg.with_start(time.time())
    names = World.from_config(cfg).names
    gs = names.index("gs-london")
    entries = [PeerEntry(names.name(i), i, f"peer-{i}", f"/ip4/127.0.0.1/tcp/{20000 + i}/p2p/peer-{i}",
                         f"http://127.0.0.1:{30000 + i}") for i in list(range(cfg.size)) + [gs]]
    return Node("gs-london", cfg, Peers(entries), _Host(f"peer-{gs}"), ModelStore(tmp_path))


@pytest.mark.parametrize("policy", ["sticky", "highest_elevation"])
def test_the_station_agent_links_and_counts_by_the_configured_policy(tmp_path, policy):
    node = _station(tmp_path, policy)
    topo, me = node.topology, node.me.index
    assert topo.handover == policy and node.is_ground
    start = node.started
    for dt in (0.0, 7.0, 31.0):                       # wall seconds: × 60 in orbital time
        t = node.orbit_t(start + dt)
        serving = int(topo.serving(t)[topo.names.station_index(me)])
        assert node._wanted_partners(start + dt) == ({serving} if serving >= 0 else set())
    # the count the agent keeps, ticking as its rewiring loop does, is mesh.handover's
    for tick in range(1, 121):                        # one wall minute: an hour of orbit
        node.count_handovers(start + 0.5 * tick)
    t0, t1 = node.orbit_t(start), node.orbit_t(start + 60.0)
    g = topo.names.station_index(me)
    same = Handover(topo.constellation, topo.stations, policy=policy, interval_s=topo.handover_interval_s,
                    elevation_mask_deg=topo.elevation_mask_deg)
    assert node.handovers == same.handovers(g, t0, t1) > 0
    other = "highest_elevation" if policy == "sticky" else "sticky"
    assert node.handovers != Handover(topo.constellation, topo.stations, policy=other,
                                      interval_s=topo.handover_interval_s).handovers(g, t0, t1)
    # ... and it is what /v1/node and the metrics report
    view = node.describe()["orbit"]
    assert view["handover"] == policy and view["handovers"] >= node.handovers > 0
    assert f'orbitmesh_ground_handovers_total{{node="gs-london",policy="{policy}"}}' in render(node).decode()


def test_all_counts_no_handovers_and_a_bad_policy_is_refused(tmp_path):
    node = _station(tmp_path, "all")
    assert node.describe()["orbit"]["handovers"] is None
    assert "orbitmesh_ground_handovers" not in render(node).decode()
    with pytest.raises(FleetError, match="--handover: must be one of all, highest_elevation"):
        fleet_config(FleetSpec(handover="nearest"))
