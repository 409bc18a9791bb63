"""The console's routes on an agent's API: the page, its stream, node details, node chaos.

* ``GET /`` and ``/console/*``: the page and its vendored files (agent/serve/web/,
  no CDN: it works offline).
* ``GET /v1/console/stream``: Server-Sent Events (agent/serve/console.py).
* ``GET /v1/console/node/{name}``: what this agent knows of one node (the
  physics, its gossiped state, and, for itself, its link statistics).
* ``POST /v1/console/node-chaos`` ``{"node", "action"}``: kill, pause, resume
  or restart a node's process.  Only where this agent can reach the processes:
  a local fleet (``orbitmesh up``; the same signals as ``orbitmesh chaos
  kill``).  In containers the engine is the operator's, not the agents' (no
  agent holds the Docker socket), so the answer is a 409 that names the
  command to use instead.
Link faults from the page use the ordinary ``POST /v1/chaos``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.serve import http_body
from agent import wallclock
from agent.ops.chaos_cli import NODE_ACTIONS, LocalNodeChaos, NodeChaosError, ScenarioError
from agent.serve.console import (MAX_STREAM_FRAMES, RECENT_TASKS, TASK_SHOWN_S, WEB_DIR, FleetFacts, FrameBuilder, Pair, Viewers,
                           ecef_to_geodetic, frames)
from agent.serve.console_scenario import MAX_SCENARIO_BYTES, ScenarioBusy, ScenarioRunner
from agent.serve.oip_codec import loads_strict
from mesh.sun import illumination, sun_position_ecef

if TYPE_CHECKING:
    from agent.runtime.node import Node

MAX_CHAOS_BODY = 4096


class NodeConsoleView:
    """The console's view of a live node: its clock, membership, faults and tasks."""

    def __init__(self, node: "Node"):
        self.node = node

    def orbit_t(self, wall: float) -> float:
        return self.node.orbit_t(wall)

    def clock(self, wall: float) -> dict[str, Any]:
        """The fleet clock as this node runs it (agent/runtime/timekeeper.py), so the page shows a pause or a speed."""
        scale, paused = self.node.timekeeper.timeline.speed(wall)
        return {"scale": scale, "paused": paused}

    def statuses(self) -> list[str]:
        m = self.node.membership.m
        return [m.status(i) for i in range(len(self.node.topology.names))]

    def _index_pairs(self, directed: frozenset[tuple[str, str]]) -> frozenset[Pair]:
        peers = self.node.peers
        return frozenset((min(peers[a].index, peers[b].index), max(peers[a].index, peers[b].index))
                         for a, b in directed if a in peers and b in peers)

    def cut_pairs(self, wall: float) -> frozenset[Pair]:
        return self._index_pairs(self.node.chaos.cut_now(wall))

    def lossy_pairs(self, wall: float) -> frozenset[Pair]:
        return self._index_pairs(self.node.chaos.degraded_now(wall))

    def down_pairs(self) -> frozenset[Pair]:
        return frozenset((min(a, b), max(a, b)) for a, b in self.node.membership.down_links())

    def tasks(self, wall: float) -> list[dict[str, Any]]:
        node = self.node
        out = []
        for rec in node.tasks.recent(RECENT_TASKS):
            if rec.finished is not None and wall - rec.finished > TASK_SHOWN_S:
                continue
            route = _dedup([node.peers[h.node].index for h in rec.trace if h.node in node.peers])
            planned = False
            if not route and rec.entry in node.peers and rec.executor in node.peers:
                path = node.healing.path(node.peers[rec.entry].index, node.peers[rec.executor].index,
                                         node.orbit_t(wall), down_nodes=node.membership.dead_nodes(),
                                         down_links=node.membership.down_links() | node._cut_links(wall))
                route, planned = list(path or []), True
            out.append({"id": rec.task_id, "model": rec.model, "entry": rec.entry, "executor": rec.executor,
                        "status": rec.status, "created": rec.created, "finished": rec.finished,
                        "route": route, "planned": planned,
                        "ms": None if rec.finished is None else round((rec.finished - rec.created) * 1e3, 2)})
        return out


def _dedup(route: list[int]) -> list[int]:
    return [x for k, x in enumerate(route) if k == 0 or route[k - 1] != x]


def node_details(node: "Node", name: str, wall: float) -> dict[str, Any]:
    """One node as the serving agent knows it: physics, membership, gossiped state, links."""
    i = node.peers[name].index
    t = node.orbit_t(wall)
    snap = node.router.snapshot(t)
    x, y, z = (float(v) for v in snap.positions[i])
    lat, lon, alt = ecef_to_geodetic(x, y, z)
    n_sats = node.topology.names.n_sats
    sun = sun_position_ecef(node.constellation.epoch_jd + t / 86400.0)
    m = node.membership.m
    links = []
    for j, latency in snap.neighbours(i):
        other = node.topology.names.name(j)
        row: dict[str, Any] = {"node": other, "latency_ms": round(latency * 1e3, 3),
                               "kind": "ground" if i >= n_sats or j >= n_sats else "laser"}
        links.append(row)
    if name == node.me.name:
        stats = {s["peer"]: s for s in node.link_stats()}
        for row in links:
            row.update({k: v for k, v in stats.get(row["node"], {}).items() if k != "peer"})
    out: dict[str, Any] = {
        "node": name, "index": i, "kind": "ground" if i >= n_sats else "satellite",
        "status": m.status(i), "incarnation": m.incarnation_of(i),
        "position": {"lat_deg": round(lat, 4), "lon_deg": round(lon, 4), "alt_km": round(alt, 2)},
        "sunlit": bool(illumination(np.array([[x, y, z]]), sun)[0] > 0.5) if i < n_sats else None,
        "state": m.node_state(i), "links": links, "served_by": node.me.name,
        "faults": [f for f in node.chaos.listing(wall) if name in (f.get("a"), f.get("b"))],
    }
    if name == node.me.name:
        out["self"] = {k: v for k, v in node.describe().items() if k in ("models", "tasks", "executed", "energy",
                                                                         "compute_ms", "uptime_s")}
    return out


def web_files() -> dict[str, Path]:
    """The page's files by URL path under /console/: a fixed list, so no path reaches outside agent/serve/web/."""
    return {str(p.relative_to(WEB_DIR)): p for p in sorted(WEB_DIR.rglob("*")) if p.is_file()}


def console_routes(node: "Node", fleet_dir: Path | None, now=None) -> list:
    """The routes; ``fleet_dir``: a local fleet's directory (node chaos by signal), else None.
    The frame builder is made on first use: building routes touches nothing of the node."""
    now = now or wallclock.now
    files = web_files()
    viewers = Viewers()
    made: list = []

    def parts() -> tuple[FleetFacts, FrameBuilder]:
        if not made:
            made.extend([FleetFacts(node.world, node.me.name), FrameBuilder(node.world, NodeConsoleView(node))])
        return made[0], made[1]

    async def page(request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        want = "/".join(p for p in (request.path_params.get("folder"), request.path_params["name"]) if p)
        path = files.get(want)
        if path is None:
            return JSONResponse({"error": f"no console file {want!r}"}, status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-cache" if path.parent == WEB_DIR else "max-age=86400"})

    async def fleet(request: Request) -> JSONResponse:
        return JSONResponse(parts()[0].describe())

    async def stream(request: Request) -> Response:
        raw = request.query_params.get("frames", str(MAX_STREAM_FRAMES))
        try:
            count = int(raw)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_STREAM_FRAMES:
            return JSONResponse({"error": f"'frames' must be an integer in [1, {MAX_STREAM_FRAMES}], not {raw!r}"},
                                status_code=400)
        if not viewers.admit():
            return JSONResponse({"error": f"{viewers.limit} console viewers are open on {node.me.name}; "
                                          f"close one or open another node's page"}, status_code=503)
        facts, builder = parts()
        return StreamingResponse(frames(builder, facts, viewers, now, count=count), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def details(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in node.peers:
            return JSONResponse({"error": f"unknown node {name!r}"}, status_code=404)
        return JSONResponse(node_details(node, name, now()))

    async def node_chaos(request: Request) -> JSONResponse:
        try:
            body = loads_strict(await http_body.read_body(request, MAX_CHAOS_BODY))
        except http_body.BodyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return JSONResponse({"error": f"body is not valid JSON: {exc}"}, status_code=400)
        if not isinstance(body, dict) or set(body) != {"node", "action"} or not isinstance(body["node"], str) \
                or body["action"] not in NODE_ACTIONS:
            return JSONResponse({"error": f"expected {{\"node\": NAME, \"action\": one of {', '.join(NODE_ACTIONS)}}}"},
                                status_code=400)
        if body["node"] not in node.peers:
            return JSONResponse({"error": f"unknown node {body['node']!r}"}, status_code=404)
        if fleet_dir is None or not (fleet_dir / "fleet.json").is_file():
            return JSONResponse({"error": "this agent cannot reach other nodes' processes (not a local fleet): "
                                          f"use `orbitmesh chaos {body['action']} {body['node']}` (add --compose "
                                          "PROJECT for a compose constellation)"}, status_code=409)
        try:
            done = await trio.to_thread.run_sync(lambda: LocalNodeChaos(fleet_dir).run(body["action"], body["node"]))
        except NodeChaosError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"node": body["node"], "action": body["action"], "result": done})

    runner = ScenarioRunner(node, fleet_dir)

    async def scenario_start(request: Request) -> JSONResponse:
        try:
            text = (await http_body.read_body(request, MAX_SCENARIO_BYTES)).decode()
        except http_body.BodyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except UnicodeDecodeError:
            return JSONResponse({"error": "a scenario is TOML text in UTF-8"}, status_code=400)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        try:
            started = runner.start(text, token)
        except ScenarioError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (ScenarioBusy, NodeChaosError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(started, status_code=202)

    async def scenario_state(request: Request) -> JSONResponse:
        return JSONResponse(runner.describe())

    return [
        Route("/v1/console/scenario", scenario_start, methods=["POST"]),
        Route("/v1/console/scenario", scenario_state, methods=["GET"]),
        Route("/", page, methods=["GET"]),
        Route("/console/{name}", static, methods=["GET"]),
        Route("/console/{folder}/{name}", static, methods=["GET"]),
        Route("/v1/console/fleet", fleet, methods=["GET"]),
        Route("/v1/console/stream", stream, methods=["GET"]),
        Route("/v1/console/node/{name}", details, methods=["GET"]),
        Route("/v1/console/node-chaos", node_chaos, methods=["POST"]),
    ]
