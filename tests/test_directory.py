"""agent.links.directory: naming swarm replicas by asking the addresses behind the service's name."""

from __future__ import annotations

import socket

import multiaddr
import pytest

from agent.links import directory
from agent.links.directory import DirectoryError, SwarmDirectory
from agent.links.names import NameCache
from tests.conftest import free_port_block
from tests.http_stubs import http_stubs


def agents(port: int, who: dict[str, str]):
    """Stand-ins for agents: GET /v1/health on each loopback address answers its node name."""
    return http_stubs(port, {ip: (lambda m, p, b, node=node: (200, {"status": "ok", "node": node}))
                             for ip, node in who.items()})


async def test_replicas_are_named_by_asking_them_and_a_replacement_is_found(monkeypatch):
    port = free_port_block(1)
    behind = {"tasks.sat": ["127.0.0.2", "127.0.0.3", "127.0.0.4"]}       # .4: a replica still starting
    monkeypatch.setattr(directory, "resolve_all", lambda name, family: list(behind[name]))
    d = SwarmDirectory("tasks.sat", port, timeout=0.5)
    with agents(port, {"127.0.0.2": "sat-0", "127.0.0.3": "sat-1"}):
        assert d.lookup("sat-1") == ["127.0.0.3"]
        assert d.lookup("sat-0") == ["127.0.0.2"]
        with pytest.raises(DirectoryError, match="sat-9 is not among the 3 replicas behind tasks.sat"):
            d.lookup("sat-9")
        cache = NameCache(lookup=d.lookup)
        got = await cache.resolve(multiaddr.Multiaddr("/dns4/sat-1/tcp/4001"))
        assert str(got) == "/ip4/127.0.0.3/tcp/4001"
    # sat-1's replica was replaced: its old address left the service, a new one says it is sat-1
    behind["tasks.sat"] = ["127.0.0.2", "127.0.0.5"]
    with agents(port, {"127.0.0.2": "sat-0", "127.0.0.5": "sat-1"}):
        assert d.lookup("sat-1") == ["127.0.0.5"]


def test_an_unknown_service_name_is_an_os_error():
    d = SwarmDirectory("tasks.no-such-service.invalid", 8080)
    with pytest.raises(OSError):
        d.lookup("sat-0", socket.AF_INET)
