"""Tests for agent.links.p2p: identity files and two real hosts in one trio run."""

from __future__ import annotations

import logging
import os
import socket
import stat
from contextlib import asynccontextmanager
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from tests.conftest import free_port_block
from agent.links.p2p import (
    P2PError,
    P2PHost,
    P2PStream,
    load_or_create_identity,
    open_host,
    peer_id_of,
)

PROTO = "/orbitmesh/isl/1"


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def keys(tmp_path):
    """Two persisted identities, "a" and "b"."""
    return {n: load_or_create_identity(tmp_path / f"{n}.key") for n in "ab"}


@asynccontextmanager
async def two_hosts(keys):
    async with open_host(keys["a"]) as a, open_host(keys["b"]) as b:
        yield a, b


async def recv_exactly(stream: P2PStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def echo(stream: P2PStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def free_port() -> int:
    return free_port_block(1)


# --------------------------------------------------------------------------
# identity


def test_identity_is_created_private_and_reloaded(tmp_path):
    path = tmp_path / "state" / "nested" / "identity.key"
    first = load_or_create_identity(path)
    assert path.stat().st_size == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(path)
    assert peer_id_of(again) == peer_id_of(first)
    assert peer_id_of(first).startswith("12D3KooW")  # Ed25519, identity-hashed
    assert peer_id_of(load_or_create_identity(tmp_path / "other.key")) != peer_id_of(
        first
    )


@pytest.mark.parametrize("content", [b"", b"short", bytes(33)])
def test_corrupt_identity_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="identity.key"):
        load_or_create_identity(path)
    assert path.read_bytes() == content  # never silently replaced


def test_libp2p_logger_propagates_at_warning():
    if os.environ.get("LIBP2P_DEBUG"):
        pytest.skip("LIBP2P_DEBUG keeps libp2p's own handlers")
    lg = logging.getLogger("libp2p")
    assert lg.propagate is True
    assert lg.level == logging.WARNING
    assert not logging.getLogger("libp2p.network.auto_connector").isEnabledFor(
        logging.INFO
    )


# --------------------------------------------------------------------------
# hosts and streams


async def test_noise_only_and_yamux_only(keys):
    async with two_hosts(keys) as (a, b):
        upgrader = a._swarm.upgrader  # libp2p internals, inspected on purpose
        assert list(upgrader.security_multistream.transports) == ["/noise"]
        assert list(upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]
        b.set_stream_handler(PROTO, echo)
        async with await a.open_stream(b.listen_multiaddrs()[0], PROTO):
            (conn,) = a._swarm.get_connections(b._host.get_id())
            assert type(conn.muxed_conn).__name__ == "Yamux"
            assert type(conn.muxed_conn.secured_conn).__name__ == "SecureSession"


async def test_listen_multiaddr_has_real_port_and_peer_id(keys):
    async with open_host(keys["a"]) as a:
        assert isinstance(a, P2PHost)
        assert a.peer_id == peer_id_of(keys["a"])
        (addr,) = a.listen_multiaddrs()
        m = multiaddr.Multiaddr(addr)
        assert m.value_for_protocol("ip4") == "127.0.0.1"
        assert int(m.value_for_protocol("tcp")) > 0
        assert addr.endswith(f"/p2p/{a.peer_id}")


async def test_listen_on_busy_port_raises(keys):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with pytest.raises(P2PError, match=str(port)):
            async with open_host(keys["a"], listen_port=port):
                pass
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_body_exception_is_not_wrapped(keys):
    with pytest.raises(KeyError):
        async with open_host(keys["a"]):
            raise KeyError("mine")


async def test_bytes_flow_both_ways(keys):
    seen = {}

    async def handler(stream: P2PStream) -> None:
        seen["peer"] = stream.remote_peer_id
        request = await recv_exactly(stream, 4)
        await stream.send_all(b"pong:" + request)

    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, handler)
        stream = await a.open_stream(b.listen_multiaddrs()[0], PROTO)
        assert stream.remote_peer_id == b.peer_id
        await stream.send_all(b"ping")
        assert await recv_exactly(stream, 9) == b"pong:ping"
        assert seen["peer"] == a.peer_id
        await stream.aclose()


async def test_concurrent_streams_share_one_connection(keys):
    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, echo)
        addr = b.listen_multiaddrs()[0]
        results = {}

        async def one(i: int) -> None:
            payload = bytes([i]) * (1000 + 40_000 * i)  # up to ~300 KB
            async with await a.open_stream(addr, PROTO) as s:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(s.send_all, payload)
                    results[i] = await recv_exactly(s, len(payload)) == payload

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
        assert results == {i: True for i in range(8)}
        assert len(a._swarm.get_connections(b._host.get_id())) == 1


async def test_clean_eof_in_both_directions(keys):
    handler_saw = trio.Event()

    async def say_bye(stream: P2PStream) -> None:
        await stream.send_all(b"bye")  # returning closes the stream

    async def drain(stream: P2PStream) -> None:
        assert await stream.receive_some() == b"x"
        assert await stream.receive_some() == b""
        handler_saw.set()

    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, say_bye)
        b.set_stream_handler(PROTO + "/drain", drain)
        addr = b.listen_multiaddrs()[0]

        s = await a.open_stream(addr, PROTO)
        assert await recv_exactly(s, 3) == b"bye"
        assert await s.receive_some() == b""
        assert await s.receive_some() == b""  # EOF is sticky, never raises
        await s.aclose()
        await s.aclose()  # idempotent
        with pytest.raises(P2PError):
            await s.send_all(b"late")

        s = await a.open_stream(addr, PROTO + "/drain")
        await s.send_all(b"x")
        await s.aclose()
        with trio.fail_after(2):
            await handler_saw.wait()


async def test_failing_handler_resets_only_its_stream(keys, caplog):
    async def broken(stream: P2PStream) -> None:
        await stream.receive_some()
        raise RuntimeError("boom")

    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, echo)
        b.set_stream_handler(PROTO + "/broken", broken)
        addr = b.listen_multiaddrs()[0]
        good = await a.open_stream(addr, PROTO)
        bad = await a.open_stream(addr, PROTO + "/broken")
        await bad.send_all(b"trigger")
        assert await bad.receive_some() == b""
        await good.send_all(b"still up")
        assert await recv_exactly(good, 8) == b"still up"
        assert "boom" in caplog.text


async def test_unknown_protocol_and_bad_address_raise_p2perror(keys):
    async with two_hosts(keys) as (a, b):
        with pytest.raises(P2PError, match="/nope/1"):
            await a.open_stream(b.listen_multiaddrs()[0], "/nope/1")
        with pytest.raises(P2PError, match="/p2p/"):
            await a.open_stream("/ip4/127.0.0.1/tcp/1", PROTO)


async def test_failed_dial_is_quick(keys):
    dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{peer_id_of(keys['b'])}"
    async with open_host(keys["a"]) as a:
        start = trio.current_time()
        with pytest.raises(P2PError, match="cannot open"):
            await a.open_stream(dead, PROTO)
        assert trio.current_time() - start < 0.5  # no retries, no back-off


async def test_silent_peer_times_out(keys):
    async def mute(tcp_stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        # accepts TCP, never speaks multistream
        serve = partial(trio.serve_tcp, mute, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        async with open_host(keys["a"]) as a:
            addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of(keys['b'])}"
            start = trio.current_time()
            with pytest.raises(P2PError, match="timed out"):
                await a.open_stream(addr, PROTO, timeout=0.3)
            assert trio.current_time() - start < 1.0
        nursery.cancel_scope.cancel()


async def test_restarted_peer_is_redialled_immediately(keys):
    port = free_port()

    async with open_host(keys["a"]) as a:
        b_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of(keys['b'])}"
        b_id = info_from_p2p_addr(multiaddr.Multiaddr(b_addr)).peer_id

        async def exchange() -> None:
            async with await a.open_stream(b_addr, PROTO) as s:
                await s.send_all(b"hi")
                assert await recv_exactly(s, 2) == b"hi"

        # 1. B restarts (same key, same port) while A still holds a connection.
        for _ in range(2):
            async with open_host(keys["b"], listen_port=port) as b:
                b.set_stream_handler(PROTO, echo)
                await exchange()

        # 2. A fails to reach B while it is down; libp2p's own dial path puts
        #    B into the 60 s negative cache.  open_stream must ignore that.
        with pytest.raises(P2PError):
            await a.open_stream(b_addr, PROTO)
        with pytest.raises(Exception):
            await a._host.connect(info_from_p2p_addr(multiaddr.Multiaddr(b_addr)))
        assert a._swarm._negative_peer_cache.is_blocked(str(b_id))

        async with open_host(keys["b"], listen_port=port) as b:
            b.set_stream_handler(PROTO, echo)
            await exchange()


async def test_disconnect_ends_streams(keys):
    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, echo)
        s = await a.open_stream(b.listen_multiaddrs()[0], PROTO)
        await a.disconnect(b.peer_id)
        with trio.fail_after(2):
            assert await s.receive_some() == b""
        assert not a._swarm.get_connections(b._host.get_id())


async def test_cancelled_host_closes_its_connections(keys):
    async with open_host(keys["a"]) as a:
        ready = trio.Event()
        addr = []

        async def run_b():
            async with open_host(keys["b"]) as b:
                b.set_stream_handler(PROTO, echo)
                addr.append(b.listen_multiaddrs()[0])
                ready.set()
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_b)
            await ready.wait()
            s = await a.open_stream(addr[0], PROTO)
            nursery.cancel_scope.cancel()  # B is torn down by cancellation

        with trio.fail_after(2):
            assert await s.receive_some() == b""  # B closed the socket
            while a._swarm.get_connections():
                await trio.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_cancellation_leaks_no_sockets(keys):
    before = set(os.listdir("/proc/self/fd"))
    with trio.CancelScope() as cancel_scope:
        async with two_hosts(keys) as (a, b):
            b.set_stream_handler(PROTO, echo)
            a.set_stream_handler(PROTO, echo)
            streams = [await a.open_stream(b.listen_multiaddrs()[0], PROTO)]
            streams.append(await b.open_stream(a.listen_multiaddrs()[0], PROTO))
            cancel_scope.cancel()
            await trio.sleep_forever()
    assert set(os.listdir("/proc/self/fd")) <= before  # no gc.collect() needed


# --------------------------------------------------------------------------
# names: /dns4 multiaddrs (containers dial each other by service name)


def _dns_addr(host: P2PHost, name: str) -> str:
    port = multiaddr.Multiaddr(host.listen_multiaddrs()[0]).value_for_protocol("tcp")
    return f"/dns4/{name}/tcp/{port}/p2p/{host.peer_id}"


async def test_dns4_multiaddr_is_dialled(keys):
    # py-libp2p 0.8.1's own /dns4 path cannot dial this (no /etc/hosts)
    async with two_hosts(keys) as (a, b):
        b.set_stream_handler(PROTO, echo)
        async with await a.open_stream(_dns_addr(b, "localhost"), PROTO) as s:
            await s.send_all(b"by name")
            assert await recv_exactly(s, 7) == b"by name"
        assert a._names._cache[("localhost", socket.AF_INET)][0] == "127.0.0.1"


async def test_unknown_name_fails_fast_and_clearly(keys):
    async with two_hosts(keys) as (a, b):
        start = trio.current_time()
        with pytest.raises(P2PError, match="no-such-satellite.invalid"):
            await a.open_stream(_dns_addr(b, "no-such-satellite.invalid"), PROTO)
        assert trio.current_time() - start < 5.0


async def test_slow_lookup_is_cut_short_and_not_repeated(keys):
    from agent.links.names import NameCache

    import threading
    calls = []
    release, finished = threading.Event(), threading.Event()

    def hanging(name: str, family: int) -> list[str]:
        calls.append(name)
        release.wait(10.0)  # a resolver that never answers in time (until the test lets it go)
        finished.set()
        return ["127.0.0.1"]

    names = NameCache(timeout=0.2, lookup=hanging)
    start = trio.current_time()
    with pytest.raises(P2PError, match="timed out after 0.2s"):
        await names.lookup("sat-3")
    assert trio.current_time() - start < 0.6
    # the abandoned lookup still holds its thread: no second one is started
    with pytest.raises(P2PError, match="still pending"):
        await names.lookup("sat-3")
    assert calls == ["sat-3"]
    release.set()  # let the abandoned thread finish
    assert await trio.to_thread.run_sync(finished.wait, 5.0)


async def test_cached_address_is_reused_and_kept_when_lookups_fail(keys):
    from agent.links.names import NameCache

    answers = {"sat-3": ["127.0.0.1"]}
    calls = []

    def lookup(name: str, family: int) -> list[str]:
        calls.append(name)
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[name]

    names = NameCache(ttl=60.0, lookup=lookup)
    addr = multiaddr.Multiaddr("/dns4/sat-3/tcp/4001")
    assert str(await names.resolve(addr)) == "/ip4/127.0.0.1/tcp/4001"
    assert str(await names.resolve(addr)) == "/ip4/127.0.0.1/tcp/4001"
    assert calls == ["sat-3"]  # cached
    # a failed dial makes the next one ask again; a container that is gone
    # (its name no longer resolves) keeps its last known address
    names.forget(addr)
    del answers["sat-3"]
    assert str(await names.resolve(addr)) == "/ip4/127.0.0.1/tcp/4001"
    assert calls == ["sat-3", "sat-3"]
    # ... and a restarted one with a new address is found again
    names.forget(addr)
    answers["sat-3"] = ["127.0.0.2"]
    assert str(await names.resolve(addr)) == "/ip4/127.0.0.2/tcp/4001"
    # IP addresses pass through untouched
    ip = multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/1")
    assert await names.resolve(ip) is ip
