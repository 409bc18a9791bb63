"""The node's share of the fleet clock, in process: floods, link-up sync, refresh, and the node reading it."""

from __future__ import annotations

import time

import pytest
import trio

from agent.runtime.periodic import process_periodic
from agent.serve.console_api import NodeConsoleView
from agent.ops.fleet import FleetSpec, fleet_config
from agent.runtime.metrics import render
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.peers import PeerEntry, Peers
from agent.runtime.timekeeper import REFRESH_EVERY_S, Timekeeper
from mesh.clock import OrbitalClock
from mesh.timeline import ClockError
from mesh.wire import ClockUpdate, decode_message, encode_message
from mesh.world import World

BASE = OrbitalClock(start_unix=1000.0, time_scale=1.0)


class Line:
    """Timekeepers sat-0 — sat-1 — … in a line; frames cross the wire codec and are delivered in order."""

    def __init__(self, n: int):
        self.names = [f"sat-{i}" for i in range(n)]
        self.links = {a: {b for b in self.names if abs(int(a[4:]) - int(b[4:])) == 1} for a in self.names}
        self.queue: list[tuple[str, str, bytes]] = []
        self.sent = 0
        self.keepers = {name: self.keeper(name) for name in self.names}

    def keeper(self, name: str) -> Timekeeper:
        def send(peer, msg, _from=name):
            self.sent += 1
            self.queue.append((_from, peer, encode_message(msg)))
        return Timekeeper(name, BASE, send=send, neighbours=lambda: sorted(self.links[name]))

    def deliver(self, now: float) -> int:
        frames = 0
        while self.queue:
            src, dst, data = self.queue.pop(0)
            msg = decode_message(data)
            assert isinstance(msg, ClockUpdate)
            self.keepers[dst].on_update(msg, src, now)
            frames += 1
        return frames


def test_a_switch_issued_at_one_end_reaches_every_node_before_it_takes_effect():
    line = Line(5)
    now = 2000.0
    out = line.keepers["sat-2"].control({"speed": 25}, now)
    assert out["changed"] and out["switch"]["scale"] == 25 and out["pending"]["scale"] == 25
    frames = line.deliver(now + 0.01)
    assert frames == 4          # each node forwards news once, never back to where it came from
    at = out["switch"]["at_wall"]
    for wall in (now + 0.5, at, at + 3.0):
        assert len({k.orbit_t(wall) for k in line.keepers.values()}) == 1
    assert {k.describe(at + 1)["scale"] for k in line.keepers.values()} == {25.0}
    # asking again for what is already so changes nothing and sends nothing
    assert not line.keepers["sat-4"].control({"speed": 25}, now + 5)["changed"] and not line.queue


def test_bad_requests_and_bad_records_are_refused_with_reasons():
    line = Line(2)
    for body in ({"speed": 0}, {"pause": True, "resume": True}, {"speed": "x"}, "pause", {}):
        with pytest.raises(ClockError):
            line.keepers["sat-0"].control(body, 2000.0)
    assert not line.queue
    k = line.keepers["sat-1"]
    k.on_update(ClockUpdate(([2000.0, "sat-0", 1999.0, 0.0, 2.0, False], ["junk"])), "sat-0", 2000.0)
    assert k.timeline.records() == [] and not line.queue


def test_a_restarted_node_learns_the_fleet_clock_when_its_link_comes_up():
    line = Line(3)
    out = line.keepers["sat-0"].control({"pause": True}, 2000.0)
    line.deliver(2000.01)
    line.keepers["sat-2"] = line.keeper("sat-2")            # restarted: the config's clock only
    assert line.keepers["sat-2"].orbit_t(2100.0) != line.keepers["sat-1"].orbit_t(2100.0)
    line.keepers["sat-1"].sync("sat-2")                     # the link sat-1 — sat-2 comes up
    line.deliver(2050.0)
    assert line.keepers["sat-2"].orbit_t(2100.0) == line.keepers["sat-1"].orbit_t(2100.0) \
        == out["switch"]["orbit_t_at"]
    assert line.keepers["sat-2"].describe(2100.0)["paused"]


async def test_the_newest_record_is_refreshed_to_every_neighbour_now_and_then(virtual_clock):
    """On the process's chore heap, as a node runs it; a virtual clock: no real 45 s wait."""
    line = Line(3)
    k = line.keepers["sat-1"]
    chore = process_periodic().every(REFRESH_EVERY_S, k.refresh)
    await trio.sleep(REFRESH_EVERY_S * 2.5)
    assert line.sent == 0                               # nothing to refresh before any switch
    k.control({"speed": 3})
    line.queue.clear()
    await trio.sleep(REFRESH_EVERY_S * 2)
    chore.cancel()
    assert sorted(dst for _, dst, _ in line.queue) == ["sat-0", "sat-0", "sat-2", "sat-2"]
    await trio.sleep(REFRESH_EVERY_S * 2)
    assert len(line.queue) == 4                         # cancelled: no more


def _host(peer_id: str):
    class Host:
        def __init__(self):
            self.peer_id = peer_id

        def listen_multiaddrs(self):
            return []
    return Host()


def _node(tmp_path) -> Node:
    cfg = fleet_config(FleetSpec(n=6)).with_start(time.time() - 100.0)
    names = World.from_config(cfg).names
    entries = [PeerEntry(names.name(i), i, f"peer-{i}", f"/ip4/127.0.0.1/tcp/{20000 + i}/p2p/peer-{i}",
                         f"http://127.0.0.1:{30000 + i}") for i in range(cfg.size)]
    return Node("sat-0", cfg, Peers(entries), _host("peer-0"), ModelStore(tmp_path))


def test_the_node_reads_positions_and_links_from_the_fleet_clock(tmp_path):
    node = _node(tmp_path)
    base = node.config.clock
    now = time.time()
    assert node.orbit_t(now) == base.orbit_t(now)
    # a pause issued a little in the past (so it is in force now): positions stop
    node.timekeeper.control({"pause": True}, now - 2 * 1.0)
    frozen = node.orbit_t()
    first = node.position()
    time.sleep(0.05)
    assert node.position() == first and node.orbit_t() == frozen
    assert node.describe()["clock"] == {"scale": base.time_scale, "paused": True}
    assert node.describe()["orbit"]["t_s"] == frozen
    assert NodeConsoleView(node).clock(time.time()) == {"scale": base.time_scale, "paused": True}   # the page
    text = render(node).decode()
    assert 'orbitmesh_clock_paused{node="sat-0"} 1.0' in text
    assert f'orbitmesh_clock_scale{{node="sat-0"}} {float(base.time_scale)}' in text
    # link delays follow the clock too: the same at any wall instant while paused
    peer = next(iter(node.links.links))
    assert node._propagation("sat-0", peer, time.time()) == node._propagation("sat-0", peer, time.time() + 30)
    # resumed at 50×: it goes on from where it stopped, 50 orbital seconds per wall second
    out = node.timekeeper.control({"resume": True, "speed": 50})
    at = out["switch"]["at_wall"]
    assert node.orbit_t(at) == pytest.approx(frozen) and node.orbit_t(at + 2.0) == pytest.approx(frozen + 100.0)

