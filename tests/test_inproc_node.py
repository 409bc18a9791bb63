"""Node behaviour in one process: production nodes over the in-memory twin host (``tests/inproc.py``).

What needs no sockets is tested here, in seconds, instead of on a fleet of
processes: routing a task over relays to a far satellite, detecting a crash
(and no false suspicion of anyone else), a restarted node rejoining, and
exactly-once across a crash of a task's entry.  On a virtual clock (the
``virtual_clock`` fixture): timeouts and orbits pass as fast as the CPU work
allows.  The model is ``matmul`` (``tiny_models``: built by the session with
the onnx helper API), so ``make test-fast`` runs these without the zoo.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import trio

from agent import wallclock
from agent.links.memory_host import MemoryNetwork
from agent.links.p2p import P2PError
from agent.ops.inproc import InProcFleet

N = 6


def matmul_inputs(k=0):
    """``a`` [4, 8] @ ``b`` [8, 3], small integers and halves (exact in float32), varied by ``k``."""
    a = ((np.arange(32) * (k + 1) % 7) - 3).reshape(4, 8) / 2
    b = ((np.arange(24) * (k + 2) % 5) - 2).reshape(8, 3) / 2
    return {"a": a.astype(np.float32), "b": b.astype(np.float32)}


def onnxruntime_product(models_dir, inputs):
    return ort.InferenceSession(str(models_dir / "matmul.onnx")).run(None, inputs)[0]


async def fleet_of(tmp_path, models_dir, body, n=N, **kw):
    assert wallclock.is_virtual(), "take the virtual_clock fixture"
    fleet = InProcFleet(tmp_path, models_dir, n, models=("matmul",), **kw)
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        if "time_scale" not in kw:
            await fleet.ready()
        try:
            return await body(fleet)
        finally:
            nursery.cancel_scope.cancel()


def far_from(fleet, name):
    """A satellite that is not a laser neighbour of ``name``."""
    near = set(fleet[name].links.links)
    return next(n for n in fleet.peers.names() if n != name and n not in near)


async def test_a_task_crosses_relays_to_a_far_satellite_and_equals_onnxruntime(tmp_path, tiny_models, virtual_clock):
    inputs = matmul_inputs(2)

    async def body(fleet):
        target = far_from(fleet, "sat-0")
        rec, new = await fleet["sat-0"].submit("matmul", {k: v.tolist() for k, v in inputs.items()}, target)
        with trio.fail_after(20):
            await rec.done.wait()
        return rec, target
    rec, target = await fleet_of(tmp_path, tiny_models, body)
    assert rec.status == "succeeded" and rec.executor == target, rec.error
    assert np.array_equal(rec.outputs["c"], onnxruntime_product(tiny_models, inputs))
    nodes = [h.node for h in rec.trace]
    assert nodes[0] == "sat-0" and target in nodes and len(set(nodes)) >= 3, nodes     # at least one relay


async def test_a_cut_on_the_route_is_flooded_and_the_task_goes_around_it(tmp_path, tiny_models, virtual_clock):
    inputs = {k: v.tolist() for k, v in matmul_inputs(1).items()}

    async def body(fleet):
        target = far_from(fleet, "sat-0")
        first_hop = fleet["sat-0"].relay.next_hop(target)
        fault, _ = fleet["sat-0"].apply_fault({"kind": "cut", "a": "sat-0", "b": first_hop})
        # flooded: every node holds the fault before the task leaves
        await fleet.until(lambda: all(any(f["id"] == fault["id"] for f in fleet[n].chaos.listing(wallclock.now()))
                                      for n in fleet.peers.names()), 10)
        rec, _ = await fleet["sat-0"].submit("matmul", inputs, target)
        with trio.fail_after(20):
            await rec.done.wait()
        return rec, first_hop, target
    rec, cut_hop, target = await fleet_of(tmp_path, tiny_models, body)
    assert rec.status == "succeeded" and rec.executor == target, rec.error
    nodes = [h.node for h in rec.trace]
    assert nodes[1] != cut_hop, nodes          # the cut link was not used
    assert ["sat-0", cut_hop] not in [nodes[i:i + 2] for i in range(len(nodes) - 1)]


async def test_a_crashed_node_is_declared_dead_by_all_others_and_no_one_else_is_suspected(tmp_path, tiny_models, virtual_clock):
    async def body(fleet):
        victim = fleet.peers["sat-4"].index
        await fleet.kill("sat-4")
        others = [n for n in fleet.peers.names() if n != "sat-4"]
        with trio.fail_after(30):
            while not all(victim in fleet[n].membership.dead_nodes() for n in others):
                wrong = {n: fleet[n].membership.suspects() | fleet[n].membership.dead_nodes() for n in others}
                assert all(s <= {victim} for s in wrong.values()), wrong
                await trio.sleep(0.1)
        back = await fleet.start_node("sat-4")
        await fleet.until(lambda: all(victim not in fleet[n].membership.dead_nodes() for n in others), 30)
        return back
    back = await fleet_of(tmp_path, tiny_models, body)
    assert back.links.links


async def test_a_first_life_floods_no_alive_and_a_second_life_reaches_everyone(
        tmp_path, tiny_models, virtual_clock, monkeypatch):
    """Every member holds every first life (incarnation 0) from the start, so a fleet's start-up
    floods no ``Alive`` (at starlink-s1 that flood was n² records); a restart's does reach all."""
    from mesh.membership_changes import ViewChanges
    news: list[tuple[int, int, int]] = []      # (receiver, node, incarnation) of each Alive applied as news
    apply_member = ViewChanges._apply_member

    def counting(self, now, u):
        changed = apply_member(self, now, u)
        if changed and u.kind == "a":
            news.append((self.me, u.node, u.incarnation))
        return changed
    monkeypatch.setattr(ViewChanges, "_apply_member", counting)

    async def body(fleet):
        await trio.sleep(10)
        at_start = list(news)
        victim = fleet.peers["sat-4"].index
        await fleet.kill("sat-4")
        others = [n for n in fleet.peers.names() if n != "sat-4"]
        await fleet.until(lambda: all(victim in fleet[n].membership.dead_nodes() for n in others), 30)
        back = await fleet.start_node("sat-4")
        await fleet.until(lambda: all(victim not in fleet[n].membership.dead_nodes() for n in others), 30)
        return at_start, back, others
    at_start, back, others = await fleet_of(tmp_path, tiny_models, body)
    assert at_start == [], at_start
    assert back.membership.m.incarnation == 1
    assert sorted(r for r, node, inc in news if (node, inc) == (back.me.index, 1)) == \
        sorted(back.peers[n].index for n in others)


async def test_sunlight_comes_from_physics_and_a_satellite_publishes_its_state_once(
        tmp_path, tiny_models, virtual_clock, monkeypatch):
    """An eclipse's edge floods nothing: a state record carries no sunlight, because every node
    reads it from the ephemeris they share (``sunlit_of``, what placement and jobs read), so
    each satellite publishes its state once at start.  (A first record that said "sunlit" in
    eclipse used to be corrected by a second fleet-wide flood; at starlink-s1 eclipse edges were
    ~0.56 state records a second per node.)"""
    import math
    from agent.runtime.membership import MembershipService
    from mesh.sun import sunlit_xyz
    published: dict[str, list[dict]] = {}
    set_state = MembershipService.set_state

    def recording(self, values):
        published.setdefault(self.names[self.me], []).append(dict(values))
        return set_state(self, values)
    monkeypatch.setattr(MembershipService, "set_state", recording)
    fleet_nodes: dict = {}
    fleet = InProcFleet(tmp_path, tiny_models, 24, models=("matmul",), on_node=lambda n: fleet_nodes.update({n.me.name: n}))
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        await trio.sleep(5)
        entry = fleet_nodes["sat-3"]
        t = math.floor(entry.orbit_t())        # World.sunlit is exact to the second
        said = {name: entry.sunlit_of(name) for name in fleet.peers.names()}
        physics = {name: sunlit_xyz(*node.constellation.position_xyz(node.me.index, t), node.config.epoch_jd + t / 86400.0)
                   if node.battery is not None else None for name, node in fleet_nodes.items()}
        nursery.cancel_scope.cancel()
    sats = {n for n, node in fleet_nodes.items() if node.battery is not None}
    assert set(published) == sats and all(len(v) == 1 and "sunlit" not in v[0] for v in published.values()), published
    assert said == physics and True in said.values() and False in said.values(), said
    assert all(said[n] is None for n in fleet_nodes if n not in sats)


async def test_a_task_outlives_a_crash_of_its_entry_and_its_key_names_it_after(tmp_path, tiny_models, virtual_clock):
    inputs = {k: v.tolist() for k, v in matmul_inputs(4).items()}

    async def body(fleet):
        target = far_from(fleet, "sat-1")
        rec, _ = await fleet["sat-1"].submit("matmul", inputs, target, idem_key="inproc-crash-1")
        await fleet.kill("sat-1")           # at once: its result has not come back
        node = await fleet.start_node("sat-1")
        again, new = await node.submit("matmul", inputs, target, idem_key="inproc-crash-1")
        with trio.fail_after(30):
            await again.done.wait()
        return rec, again, new
    rec, again, new = await fleet_of(tmp_path, tiny_models, body)
    assert not new and again.task_id == rec.task_id
    assert again.status == "succeeded", again.error


async def test_the_twin_host_refuses_what_libp2p_would(tmp_path):
    net = MemoryNetwork()
    a, b = net.host("a"), net.host("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        with pytest.raises(P2PError, match="connection refused"):
            await a.open_stream("/memory/b/p2p/b", "/isl/1")
        await nursery.start(b.serve)
        with pytest.raises(P2PError, match="not supported"):
            await a.open_stream("/memory/b/p2p/b", "/isl/1")
        got = []

        async def echo(stream):
            got.append(await stream.receive_some(3))
            await stream.send_all(b"pong")
            await stream.aclose()
        b.set_stream_handler("/isl/1", echo)
        s = await a.open_stream("/memory/b/p2p/b", "/isl/1")
        await s.send_all(b"ping")
        assert await s.receive_some(2) == b"po" and await s.receive_some() == b"ng"
        assert await s.receive_some() == b"" and got == [b"pin"] and s.remote_peer_id == "b"
        with pytest.raises(ValueError):
            net.host("a")
        nursery.cancel_scope.cancel()


async def test_hop_by_hop_retransmission_carries_tasks_over_a_lossy_link(tmp_path, tiny_models, virtual_clock):
    inputs = {k: v.tolist() for k, v in matmul_inputs(6).items()}

    async def body(fleet):
        target = far_from(fleet, "sat-0")
        hop = fleet["sat-0"].relay.next_hop(target)
        fleet["sat-0"].apply_fault({"kind": "loss", "a": "sat-0", "b": hop, "loss": "40%"})
        recs = []
        for _ in range(8):
            rec, _ = await fleet["sat-0"].submit("matmul", inputs, target, cache=False)
            recs.append(rec)
        with trio.fail_after(60):
            for rec in recs:
                await rec.done.wait()
        return recs, fleet["sat-0"].links.links[hop].stats.dropped["loss"], fleet["sat-0"].relay.counts
    recs, lost, counts = await fleet_of(tmp_path, tiny_models, body)
    assert [r.status for r in recs] == ["succeeded"] * 8, [r.error for r in recs]
    assert lost > 0 and counts["retransmissions"] > 0, (lost, dict(counts))


async def test_links_lost_to_the_earth_are_not_taken_for_dead_nodes(tmp_path, tiny_models, virtual_clock):
    """Telesat's polar shell, 12 satellites at 600x: its links clear the Earth's limb only part of each
    orbit, so the mesh splits and joins again; physics predicts each loss, and nobody is suspected."""
    async def body(fleet):
        names = fleet.peers.names()
        topo = fleet[names[0]].topology
        up = set()
        for _ in range(40):       # 20 s at 600x: two orbits
            await trio.sleep(0.5)
            snap = topo.snapshot(fleet.config.clock.orbit_t(wallclock.now()))
            up.add(frozenset(tuple(sorted(map(int, p))) for p in snap.pairs))
        nodes = [fleet[n] for n in names]      # its ground stations included
        return len(up), {n.me.name: n.membership.m.stats["suspicions"] for n in nodes if n.membership.m.stats["suspicions"]}, \
            {n.me.name: n.membership.dead_nodes() for n in nodes if n.membership.dead_nodes()}
    shapes, suspicions, dead = await fleet_of(tmp_path, tiny_models, body, n=12, preset="telesat-t1", time_scale=600.0)
    assert shapes > 1, "no link came or went: the test would prove nothing"
    assert not suspicions and not dead, (suspicions, dead)


async def test_placement_routes_from_one_dijkstra_equal_each_path(tmp_path, tiny_models, virtual_clock):
    """``_paths_from_me`` (one Dijkstra for every candidate) gives placement exactly what a
    path per candidate gave, with a cut and a dead node in the view; and the node that
    placement picks for ``nearest`` and ``auto`` is the same with either."""
    async def body(fleet):
        entry = fleet["sat-0"]
        near = entry.relay.next_hop(far_from(fleet, "sat-0"))
        entry.apply_fault({"kind": "cut", "a": "sat-0", "b": near})
        await fleet.kill("sat-4")
        victim = fleet.peers["sat-4"].index
        await fleet.until(lambda: all(victim in fleet[n].membership.dead_nodes() for n in ("sat-0", "sat-3")), 30)
        seen = []
        for name in ("sat-0", "sat-3"):
            node = fleet[name]
            assert node._cut_links(wallclock.now())
            loaded = await node.load_model("matmul")
            batch = node._paths_from_me()
            each = {p: node._path_to(p) for p in fleet.peers.names() if p != name}
            assert {p: batch(p) for p in each} == each
            assert each["sat-4"] is None and sum(v is not None for v in each.values()) == len(each) - 1
            picks = []
            for target in ("nearest", "auto"):
                picks.append(node._place("matmul", target, matmul_inputs(), loaded, 30.0)[0])
                real = node._paths_from_me
                node._paths_from_me = lambda: node._path_to      # the old way: a path per candidate
                try:
                    old = node._place("matmul", target, matmul_inputs(), loaded, 30.0)[0]
                finally:
                    node._paths_from_me = real
                assert picks[-1] == old, (name, target)
            seen.append(picks)
        return seen
    seen = await fleet_of(tmp_path, tiny_models, body)
    assert len(seen) == 2 and all(len(p) == 2 for p in seen)


async def test_a_submission_that_waited_for_its_model_gets_the_first_task_even_once_it_is_cached(
        tmp_path, tiny_models, virtual_clock):
    """Two submissions with one idempotency key: the second is still loading its model while the
    first is accepted, run and answered into the edge cache.  It must get the first task (200),
    not a second task answered from the cache (a second 202: seen once in a fresh-clone CI run)."""
    inputs = {k: v.tolist() for k, v in matmul_inputs(1).items()}

    async def body(fleet):
        node = fleet["sat-0"]
        load, first_done = node.load_model, trio.Event()

        calls = []

        async def slow_load(model):
            """Both submissions pass the key check, then wait here: the first for 10 ms, the
            second until the first task is answered and cached."""
            calls.append(model)
            if len(calls) == 1:
                await trio.sleep(0.01)
            else:
                await first_done.wait()
            return await load(model)
        node.load_model = slow_load
        answers = []

        async def submit():
            answers.append(await node.submit("matmul", inputs, None, idem_key="one-key"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            nursery.start_soon(submit)
            with trio.fail_after(20):
                while not answers:
                    await trio.sleep(0.01)
                await answers[0][0].done.wait()
            cached = len(node.edge_cache)
            first_done.set()
        return answers, cached
    answers, cached = await fleet_of(tmp_path, tiny_models, body)
    assert cached == 1                     # the first answer was in the edge cache when the second resumed
    assert [new for _, new in answers] == [True, False]
    assert answers[0][0].task_id == answers[1][0].task_id


@pytest.mark.parametrize("share_world", [True, False])
async def test_nodes_that_share_a_world_share_its_fault_topology_and_healing_router(
        tmp_path, tiny_models, virtual_clock, share_world):
    """What is the same for every node of a world (the fleet's laser links and planes for fault
    validation; route views and first-hop tables) is built once per process, not once per node
    (bench/sat_memory.py: ~2 MB per hosted satellite at starlink-s1's size); with a world of its
    own, a node has its own.  Received membership records are pooled per process either way."""
    async def body(fleet):
        a, b = fleet["sat-0"], fleet["sat-5"]
        assert (a.chaos.topo is b.chaos.topo) is share_world
        assert (a.healing is b.healing) is share_world
        assert a.chaos.topo == b.chaos.topo
        assert a.chaos.topo.nodes == frozenset(fleet.peers.names()) and a.chaos.topo.links
        # the peers file's index → name and member ids: one of each for every node of the process
        assert a.relay.names is b.relay.names is b.membership.names is fleet.peers.name_of
        assert a.links.members is b.links.members
        a.revoke(frozenset({"sat-7"}))                      # copy on write: the sibling's set is untouched
        assert fleet.peers["sat-7"].peer_id not in a.links.members
        assert fleet.peers["sat-7"].peer_id in b.links.members
        # the process's one pool of membership records: one copy of a third node's state for both
        await fleet.until(lambda: a.membership.m.states.get(3) and b.membership.m.states.get(3), 30.0)
        assert a.membership.m.states.get(3) is b.membership.m.states.get(3)
        # shared or not, each node answers its own next hops, which lead to the destination
        assert fleet.world.router.path(0, 5, a.orbit_t())[0][1] == fleet.peers[a.relay.next_hop("sat-5")].index
    await fleet_of(tmp_path, tiny_models, body, n=8, share_world=share_world)


async def test_membership_ticks_on_its_deadlines_not_on_every_frame(tmp_path, tiny_models, virtual_clock):
    """The protocol's deadlines are one-shot timers on the process's heap: a frame that does not
    bring a deadline nearer costs no tick (it used to wake the node's membership task, which
    ticked after every frame), and nobody is suspected for it."""
    async def body(fleet):
        counts = {"ticks": 0, "frames": 0}
        for name in fleet.peers.names():
            m = fleet[name].membership.m
            tick, on_message = m.tick, m.on_message

            def counted_tick(now, _tick=tick):
                counts["ticks"] += 1
                return _tick(now)

            def counted_message(now, frm, msg, _on=on_message):
                counts["frames"] += 1
                return _on(now, frm, msg)
            m.tick, m.on_message = counted_tick, counted_message
        await trio.sleep(20)
        suspected = {n: dict(fleet[n].membership.verdicts["suspect"]) for n in fleet.peers.names()}
        return counts, suspected

    counts, suspected = await fleet_of(tmp_path, tiny_models, body)
    assert counts["frames"] > 100
    # Here (fleet rates, 6 nodes) the deadlines alone come about once per two frames received
    # (0.5); waking on every frame as well made it ~1.5 ticks per frame, and a timer left at a
    # deadline that an ack had moved later ~1.0.
    assert 0 < counts["ticks"] < 0.75 * counts["frames"]
    assert all(not s for s in suspected.values()), suspected


async def test_the_delivery_loop_sleeps_until_a_hop_timer_and_not_twice_a_second(tmp_path, tiny_models, virtual_clock):
    """A frame the relay forwards starts a hop timer that wakes the node's delivery loop when due
    (the relay tells it), even on a path that does not wake the loop itself; an idle node's loop
    otherwise sleeps (it used to look at its deadlines twice a second)."""
    from mesh.wire import TaskQuery

    async def body(fleet):
        ticks = {name: 0 for name in fleet.peers.names()}
        for name in ticks:
            relay = fleet[name].relay
            tick = relay.tick

            def counted(_tick=tick, _name=name):
                ticks[_name] += 1
                _tick()
            relay.tick = counted
        await trio.sleep(20)
        idle_ticks = dict(ticks)
        node = fleet["sat-0"]
        target = far_from(fleet, "sat-0")
        hop = node.relay.next_hop(target)
        node.apply_fault({"kind": "loss", "a": "sat-0", "b": hop, "loss": "100%"})
        sent: list[float] = []
        send = node.links.send

        def recorded(peer, msg, _send=send):
            if peer == hop and isinstance(getattr(msg, "msg", msg), TaskQuery):
                sent.append(wallclock.now())
            return _send(peer, msg)
        node.links.send = recorded
        query = TaskQuery("q-1", "sat-0", target, "t-1", deadline=wallclock.now() + 30)
        assert node.relay.send(query, target) == ""          # as a forwarded query is: no wake-up of its own
        rto = node.relay.hops._out[query.hop_id].rto
        await trio.sleep(1.5)
        return idle_ticks, sent, rto

    idle_ticks, sent, rto = await fleet_of(tmp_path, tiny_models, body)
    assert max(idle_ticks.values()) <= 5, idle_ticks
    assert len(sent) >= 3, sent
    assert sent[1] - sent[0] == pytest.approx(rto, abs=1e-6)     # on its timer, not on the next poll


@pytest.mark.parametrize("warm", [False, True])
async def test_routes_are_warmed_ahead_only_on_a_real_clock_for_nodes_that_route_and_tasks_find_their_way(
        tmp_path, tiny_models, virtual_clock, monkeypatch, warm):
    """Warming buys latency, which a virtual clock does not charge: the simulator computes a route
    when a frame needs it (``WARM_WHEN_VIRTUAL`` puts the warming back, as a real clock runs it).
    And only a node that routes frames is warmed: an idle fleet computes no table at all."""
    from agent.runtime import node_physics
    monkeypatch.setattr(node_physics, "WARM_WHEN_VIRTUAL", warm)
    inputs = {k: v.tolist() for k, v in matmul_inputs(3).items()}

    async def body(fleet):
        healing = {id(fleet[n].healing): fleet[n].healing for n in fleet.peers.names()}.values()
        ready = sum(h.computations for h in healing)
        await trio.sleep(3.0)       # three routing steps (snapshots) later
        idle = sum(h.computations for h in healing) - ready
        target = far_from(fleet, "sat-0")
        rec, _ = await fleet["sat-0"].submit("matmul", inputs, target)
        with trio.fail_after(20):
            await rec.done.wait()
        after = sum(h.computations for h in healing)
        routed = [n for n in fleet.peers.names() if fleet[n].relay.fwd.decided_at > 0]
        await trio.sleep(3.0)       # three more steps, no frame routed meanwhile
        return idle, after, sum(h.computations for h in healing) - after, routed, rec, target
    idle, after, later, routed, rec, target = await fleet_of(tmp_path, tiny_models, body)
    assert rec.status == "succeeded" and rec.executor == target, rec.error
    assert idle == 0 and after > 0      # none while no node routes; the task's hops computed theirs
    assert "sat-0" in routed and target in routed and len(routed) < N, routed
    if warm:
        assert later >= 2 * len(routed)     # each node that routed warms each new step's table
    else:
        assert later == 0


async def test_ground_links_open_and_close_with_the_sky(tmp_path, tiny_models, virtual_clock):
    """Telesat's polar shell with its stations at 60x: stations dial the satellites that rise and
    satellites retire the links of those that set.  At each look a satellite keeps only the ground
    links physics has now, and a station has a link to every satellite it sees; over the run links
    both open and close (most satellites, most of the time, see no station: the quick path)."""
    async def body(fleet):
        topo = fleet[fleet.peers.names()[0]].topology
        opened, closed, checked = set(), set(), 0
        for _ in range(60):       # 30 s at 60x: half an orbit
            await trio.sleep(0.5)
            for name in fleet.peers.names():
                node = fleet[name]
                node._follow_the_sky()
                me, t = node.me.index, node.orbit_t(wallclock.now())
                sky = {fleet.peers.by_index[i].name for i in topo.contacts_of(me, t)}
                held = {p for p, link in node.links.links.items() if not link.retiring} - node._laser_partners
                if node.is_ground:
                    assert sky <= held, (name, sky - held)
                else:
                    assert held <= sky, (name, held - sky)
                    opened |= {(name, p) for p in held}
                    closed |= {(name, p) for p, link in node.links.links.items() if link.retiring}
                checked += 1
        return opened, closed, checked
    opened, closed, checked = await fleet_of(tmp_path, tiny_models, body, n=12, preset="telesat-t1", time_scale=60.0)
    assert opened and closed and checked > 1000, (len(opened), len(closed), checked)
