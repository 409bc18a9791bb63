"""agent.serve.gateway: port 8080 on a swarm machine forwards to any live replica (no IPVS needed)."""

from __future__ import annotations

import json

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from agent.links import directory
from agent.serve import gateway
from tests.conftest import free_port_block
from tests.http_stubs import LAST_HEADERS, http_stubs


def replicas(port: int, names: dict[str, str]):
    """Stand-in agents: echo the method, path and body with their node name (202 for a POST)."""
    def echo(node):
        return lambda m, p, b: (202 if m == "POST" else 200, {"node": node, "method": m, "path": p, "body": b.decode()})
    return http_stubs(port, {ip: echo(node) for ip, node in names.items()})


async def test_requests_reach_live_replicas_round_robin_skipping_dead_ones(monkeypatch):
    up = free_port_block(2)
    gw = up + 1
    # .7: a replica being replaced, refusing; .4: a ground station (no new requests: it may have no satellite in view)
    behind = ["127.0.0.2", "127.0.0.7", "127.0.0.3", "127.0.0.4"]
    monkeypatch.setattr(directory, "resolve_all", lambda name, family: list(behind))
    monkeypatch.setattr(gateway, "REFRESH_S", 0.5)     # the list's staleness bound (2 s live): waited out below
    cfg = HypercornConfig()
    cfg.bind = [f"127.0.0.1:{gw}"]
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(gateway.build_app("tasks.sat", up, max_body=1000), cfg,
                                                      shutdown_trigger=trio.sleep_forever, task_status=task_status))
        with replicas(up, {"127.0.0.2": "sat-0", "127.0.0.3": "sat-1", "127.0.0.4": "gs-london"}):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw}", timeout=10) as http:
                seen = set()
                for _ in range(6):
                    r = await http.post("/v1/tasks?x=1", json={"model": "digits"})
                    assert r.status_code == 202, r.text
                    got = r.json()
                    assert got["path"] == "/v1/tasks?x=1" and json.loads(got["body"]) == {"model": "digits"}
                    assert r.headers["x-orbitmesh-replica"] in ("127.0.0.2", "127.0.0.3")
                    seen.add(got["node"])
                assert seen == {"sat-0", "sat-1"}
                for _ in range(4):                       # a task's queries go to its entry node
                    r = await http.get("/v1/tasks/sat-1-0123abcd", params={"wait": "5"})
                    assert r.json()["node"] == "sat-1" and r.json()["path"] == "/v1/tasks/sat-1-0123abcd?wait=5"
                r = await http.post("/v1/tasks", content=b"x" * 2000)
                assert r.status_code == 413 and "limit" in r.json()["error"]
                # the token reaches the replica (the agents check it); Host and Origin are checked here
                r = await http.post("/v1/tasks", json={}, headers={"Authorization": "Bearer abc"})
                assert LAST_HEADERS[r.headers["x-orbitmesh-replica"]]["authorization"] == "Bearer abc"
                r = await http.get("/v1/membership", headers={"Host": "evil.example"})
                assert r.status_code == 400 and "not an allowed name" in r.json()["error"]
                r = await http.post("/v1/chaos", json={}, headers={"Origin": "https://evil.example"})
                assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        behind[:] = ["127.0.0.7"]
        await trio.sleep(gateway.REFRESH_S + 0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw}", timeout=10) as http:
            r = await http.get("/v1/health")
            assert r.status_code == 503 and "no replica behind tasks.sat answers" in r.json()["error"]
        nursery.cancel_scope.cancel()
