"""Issue 18's mesh attacks against real agents: a member forges rumours and faults.

Four agents run; a fifth member's key (its agent is not started) is held by
the test, which dials a running neighbour of that member, says Hello as it
(Noise-authenticated: it holds the key) and then sends what a rogue member
would: a Dead rumour about another node at incarnation 2^63−1, one at an
incarnation the subject never published, one that names the subject itself
as accuser (signed with the wrong key), an unsigned one, faults with version
``inf`` and from the far future, fleet-clock switches in another node's name,
unsigned, from the far future or out of bounds.  Every one is refused; a well-formed record
of the rogue's own (its node state) is applied, so the channel did carry.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.ops import fleet
from agent.client import Client
from agent.links.p2p import P2PError, load_or_create_identity, open_host
from agent.links.transport import PRE_HELLO_MAX_BYTES, PRE_HELLO_STREAMS_PER_PEER
from mesh.chaos import Entry
from mesh.gossip_msgs import Dead, Gossip, NodeState, check_state_values, signed_bytes
from mesh.timeline import ClockRecord
from mesh.frames import FrameDecoder, LinkFrame, encode_frame
from mesh.wire import ISL_PROTOCOL, ChaosUpdate, ClockUpdate, Control, Hello
from tests.conftest import free_port_block, member, membership_views

N = 5
MAX_FRAME = 1 << 20


@pytest.fixture(scope="module")
def rogue_fleet(tmp_path_factory, models_dir):
    """Every node but the rogue runs; (spec, peers, rogue, target, victim)."""
    d = tmp_path_factory.mktemp("rogue")
    base = free_port_block(3 * N)
    spec = fleet.FleetSpec(directory=d, n=N, p2p_base_port=base, api_base_port=base + N, grpc_base_port=base + 2 * N,
                           models=models_dir)
    cfg, peers = fleet.prepare(spec)
    rogue = "sat-1"
    (d / "fleet.json").write_text('{"pids": {}}')
    procs = {n: fleet.start_agent(spec, n) for n in peers.names() if n != rogue}
    try:
        target = trio.run(partial(_neighbour_of, peers, rogue, procs))
        victim = next(n for n in peers.names() if n not in (rogue, target))
        yield spec, peers, rogue, target, victim
    finally:
        fleet.stop(d)
        for p in procs.values():
            if p.poll() is None:
                p.kill()


async def _neighbour_of(peers, rogue, procs, timeout=90.0):
    """A running node that holds a link to ``rogue`` (and answers its API)."""
    with trio.fail_after(timeout):
        while True:
            for name, p in procs.items():
                assert p.poll() is None, f"{name} exited"
                try:
                    async with Client(peers[name].api, timeout=2.0) as c:
                        links = (await c.links())["links"]
                except Exception:
                    continue
                if any(link["peer"] == rogue for link in links):
                    return name
            await trio.sleep(0.5)


def _signed(u, seed: bytes):
    return u.signed(Ed25519PrivateKey.from_private_bytes(seed).sign(signed_bytes(u)))


def _entry(fid, version, origin, seed: bytes | None, spec: dict):
    """A fault entry as ``origin`` floods it (``spec`` already normalised, so a receiver applies it)."""
    e = Entry(fid, version, origin, False, spec, version, None)
    if seed is None:
        return e.to_wire()
    from dataclasses import replace
    return replace(e, sig=Ed25519PrivateKey.from_private_bytes(seed).sign(e.signed_bytes())).to_wire()


def _clock(origin, seed: bytes | None, *, version=None, scale=1000.0, paused=False):
    """A fleet-clock switch as ``origin`` floods it, signed with ``seed`` (None: unsigned)."""
    from dataclasses import replace
    now = time.time() if version is None else version
    rec = ClockRecord(now, origin, now + 1.0, 0.0, scale, paused)
    if seed is not None:
        rec = replace(rec, sig=Ed25519PrivateKey.from_private_bytes(seed).sign(rec.signed_bytes()))
    return rec.to_wire()


async def _speak_as(spec, peers, rogue, target, messages):
    """Dial ``target`` as ``rogue``, say Hello, send ``messages``; the Hello we got back."""
    kp = load_or_create_identity(spec.directory / "data" / rogue / "identity.key")
    async with open_host(kp, "127.0.0.1", 0) as host:
        stream = await host.open_stream(peers[target].multiaddr, ISL_PROTOCOL, timeout=5.0)
        await stream.send_all(encode_frame(LinkFrame(time.time(), Hello(rogue)), MAX_FRAME))
        dec = FrameDecoder(MAX_FRAME)
        got = []
        with trio.fail_after(5):
            while not got:
                got = dec.feed(await stream.receive_some())
        for msg in messages:
            await stream.send_all(encode_frame(LinkFrame(time.time(), msg), MAX_FRAME))
        await trio.sleep(1.5)          # released after a laser hop; applied at once
        await stream.aclose()
        return got[0]


async def test_forged_rumours_and_unbounded_faults_are_refused(rogue_fleet):
    spec, peers, rogue, target, victim = rogue_fleet
    seed = (spec.directory / "data" / rogue / "identity.key").read_bytes()
    v = peers[victim].index
    r = peers[rogue].index
    before = member((await membership_views(peers, [target]))[target], victim)
    inc = before["incarnation"]      # 0: a first life, which every member holds from the start
    cut_off = {"kind": "partition", "groups": [[victim]]}
    own_link = {"kind": "cut", "a": rogue, "b": target, "direction": "both"}
    attacks = [
        Control(Gossip((_signed(Dead(v, 2**63 - 1, r), seed),))),        # dead for ever
        Control(Gossip((_signed(Dead(v, inc + 7, r), seed),))),          # an incarnation only the victim may raise
        Control(Gossip((_signed(Dead(v, inc, v), seed),))),              # "the victim says so", signed by the rogue
        Control(Gossip((Dead(v, inc, r),))),                             # unsigned
        ChaosUpdate((_entry("aaaaaaaaaaaa", float("inf"), rogue, seed, cut_off),)),   # a partition nobody can lift
        ChaosUpdate((_entry("bbbbbbbbbbbb", time.time() + 1e9, rogue, seed, cut_off),)),
        ChaosUpdate((_entry("cccccccccccc", time.time(), rogue, None, cut_off),)),    # unsigned
        ChaosUpdate((_entry("dddddddddddd", time.time(), rogue, seed, own_link),)),  # its own link: valid
        Control(Gossip((_signed(NodeState(r, 1, check_state_values({"rogue": 1})), seed),))),   # its own: valid
        ClockUpdate((_clock(victim, seed, paused=True),)),                # the fleet clock, in the victim's name
        ClockUpdate((_clock(rogue, None),)),                              # unsigned
        ClockUpdate((_clock(rogue, seed, version=time.time() + 1e9),)),   # a switch no later one outranks
        ClockUpdate((_clock(rogue, seed)[:4] + [1e9] + _clock(rogue, seed)[5:],)),   # out of bounds
    ]
    hello = await _speak_as(spec, peers, rogue, target, attacks)
    assert hello.msg == Hello(target)
    view = (await membership_views(peers, [target]))[target]
    assert member(view, victim)["status"] == "alive" and member(view, victim)["incarnation"] == inc
    assert member(view, rogue)["state"] == {"rogue": 1}                  # the channel carried
    assert view["protocol"]["rejected_window"] >= 2           # 2^63−1, and inc + 7 by an accuser
    assert view["trust"]["rejected: bad signature"] >= 1      # the victim's name, the rogue's key
    assert view["trust"]["rejected: unsigned"] >= 2           # the unsigned rumour and fault
    async with Client(peers[target].api) as c:
        assert [f["id"] for f in (await c.faults())["faults"]] == ["dddddddddddd"]   # only the valid one
        clock = await c.clock()
    assert clock["version"] is None and not clock["paused"]              # no switch got through
    assert view["trust"]["rejected: unsigned"] >= 3 and view["trust"]["rejected: bad signature"] >= 2


async def _refused(host, addr: str, data: bytes) -> None:
    """Open a stream and send ``data``: the agent must end it (reset or EOF), at once or after reading."""
    try:
        s = await host.open_stream(addr, ISL_PROTOCOL, timeout=5.0)
    except P2PError:
        return                                 # reset during protocol negotiation: refused unread
    try:
        if data:
            await s.send_all(data)
        while await s.receive_some() != b"":
            pass
    except P2PError:
        pass
    await s.aclose()


async def test_a_stranger_and_a_pre_hello_flood_get_bounded_treatment(rogue_fleet):
    """Streams without Hello: at most 4 per member, 4 KiB each; a non-member is refused unread."""
    spec, peers, rogue, target, _ = rogue_fleet
    kp = load_or_create_identity(spec.directory / "data" / rogue / "identity.key")
    header = (8 << 20).to_bytes(4, "big") + b"\0\0\0\0"                  # "an 8 MiB frame follows"
    async with open_host(kp, "127.0.0.1", 0) as host:
        t0 = time.monotonic()
        with trio.fail_after(4.0):             # well before the 5 s Hello timeout
            for _ in range(12):
                await _refused(host, peers[target].multiaddr, header + b"x" * (2 * PRE_HELLO_MAX_BYTES))
        assert time.monotonic() - t0 < 4.0
        # Streams that say nothing wait for Hello, at most PRE_HELLO_STREAMS_PER_PEER of them at once.
        held = [await host.open_stream(peers[target].multiaddr, ISL_PROTOCOL, timeout=5.0)
                for _ in range(PRE_HELLO_STREAMS_PER_PEER)]
        await trio.sleep(0.3)
        with trio.fail_after(2.0):
            await _refused(host, peers[target].multiaddr, b"")
        for s in held:
            await s.aclose()
    stranger = load_or_create_identity(Path(spec.directory) / "stranger.key")
    async with open_host(stranger, "127.0.0.1", 0) as host:
        with trio.fail_after(3.0):
            await _refused(host, peers[target].multiaddr, b"")
    async with Client(peers[target].api) as c:
        assert (await c.health())["status"] == "ok"     # and the target serves on


async def test_a_member_revoked_by_the_roster_is_refused_at_hello_at_once(rogue_fleet):
    """`orbitmesh revoke`: the running target re-reads its roster and refuses the rogue's Hello."""
    from agent.links.roster import WATCH_EVERY_S, revoke
    spec, peers, rogue, target, _ = rogue_fleet
    assert (await _speak_as(spec, peers, rogue, target, [])).msg == Hello(target)    # a member still
    assert revoke(spec.directory, [rogue])["revoked"] == [rogue]
    await trio.sleep(WATCH_EVERY_S + 1.0)
    kp = load_or_create_identity(spec.directory / "data" / rogue / "identity.key")
    async with open_host(kp, "127.0.0.1", 0) as host:
        with trio.fail_after(3.0):
            await _refused(host, peers[target].multiaddr, encode_frame(LinkFrame(time.time(), Hello(rogue)), MAX_FRAME))
    async with Client(peers[target].api) as c:
        assert (await c.health())["status"] == "ok"
