"""The node's HTTP API (Starlette on hypercorn's trio worker).

Every error is JSON ``{"error": "..."}`` with a 4xx/5xx status that says whose
fault it is; no request can take the agent down.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.serve import http_body, http_coalesce, http_reads
from agent import wallclock
from agent.serve.auth import AccessControl, AccessPolicy
from agent.serve.console_api import console_routes
from agent.serve.jobs_api import job_routes
from agent.serve.kserve_http import kserve_routes
from agent.runtime.metrics import render as render_metrics
from agent.compute.models import UploadError
from agent.runtime.node import Node, SubmitError
from agent.serve.oip import InferenceService
from agent.serve.openapi import document as openapi_document
from agent.serve.oip_codec import HEADER_LENGTH, OipError, decode_task_body, loads_strict
from mesh.chaos import FaultConflict, FaultError
from mesh.timeline import ClockError

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing anything over ``limit`` bytes before reading it all."""
    body = await read_body(request, limit)
    try:
        return loads_strict(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SubmitError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise SubmitError(400, "body is JSON nested too deeply") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, bounded in size and time (``agent.serve.http_body``)."""
    try:
        return await http_body.read_body(request, limit)
    except http_body.BodyError as exc:
        raise SubmitError(exc.status, str(exc)) from None


async def read_task(request: Request, limit: int) -> Any:
    """A task body: JSON, or (with ``Inference-Header-Content-Length``) a JSON
    header whose inputs are binary tensors that follow it."""
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        return await read_json(request, limit)
    try:
        return decode_task_body(await read_body(request, limit), header_length)
    except OipError as exc:
        raise SubmitError(exc.status, str(exc)) from None


def build_app(node: Node, access: AccessPolicy | None = None, fleet_dir: Path | None = None) -> Starlette:
    """The node's routes behind ``access`` (token, Host and Origin checks; None: unchecked, for in-process use).
    ``fleet_dir``: a local fleet's directory, for the console's node chaos (agent/serve/console_api.py)."""
    async def health(request: Request) -> JSONResponse:
        return JSONResponse(node.health())

    async def ready(request: Request) -> JSONResponse:
        # For probes that read only the status (Kubernetes readinessProbe, load
        # balancers): 503 until every laser link is up.
        h = node.health()
        return JSONResponse(h, status_code=200 if h["ready"] else 503)

    async def node_info(request: Request) -> JSONResponse:
        return JSONResponse(node.describe())

    async def membership(request: Request) -> JSONResponse:
        return JSONResponse(node.describe_membership())

    async def links(request: Request) -> JSONResponse:
        samples = request.query_params.get("samples") in ("1", "true")
        return JSONResponse({"node": node.me.name, "links": node.link_stats(samples)})

    async def models(request: Request) -> JSONResponse:
        out = []
        for name in node.store.names():
            try:
                out.append((await trio.to_thread.run_sync(node.store.get, name)).describe())
            except LookupError as exc:
                out.append({"name": name, "error": str(exc)})
        return JSONResponse({"models": out})

    async def upload_model(request: Request) -> JSONResponse:
        """PUT /v1/models/{name}: the ONNX bytes as the body; ``X-Content-SHA256`` (or
        ``?sha256=``) makes the node check the body against the hash the client has."""
        name = request.path_params["name"]
        expect = request.headers.get("x-content-sha256") or request.query_params.get("sha256")
        try:
            data = await read_body(request, node.store.max_model_bytes)
            existed = node.store.has(name, hashlib.sha256(data).hexdigest())
            info = await trio.to_thread.run_sync(node.store.put, name, data, expect)
        except SubmitError as exc:
            return error(exc.status, str(exc))
        except UploadError as exc:
            return error(exc.status, str(exc))
        return JSONResponse(info, status_code=200 if existed else 201)

    async def submit(request: Request) -> JSONResponse:
        try:
            body = await read_task(request, node.config.limits.max_body_bytes)
            if not isinstance(body, dict):
                raise SubmitError(400, "body must be a JSON object")
            unknown = set(body) - {"model", "inputs", "target", "timeout_s", "idempotency_key", "cache", "replicas",
                                   "agreement"}
            if unknown:
                raise SubmitError(400, f"unknown fields {sorted(unknown)}; expected model, inputs, target, timeout_s, "
                                       f"idempotency_key, cache, replicas, agreement")
            if "model" not in body or "inputs" not in body:
                raise SubmitError(400, "'model' and 'inputs' are required")
            timeout = body.get("timeout_s", 30.0)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
                raise SubmitError(400, "'timeout_s' must be a number in (0, 3600]")
            key = body.get("idempotency_key", request.headers.get("idempotency-key"))
            cache = body.get("cache", True)
            if not isinstance(cache, bool):
                raise SubmitError(400, "'cache' must be true or false (false: always compute, never the edge cache)")
            rec, new = await node.submit(body["model"], body["inputs"], body.get("target"), float(timeout), key,
                                         cache=cache, replicas=body.get("replicas", 1),
                                         agreement=body.get("agreement", "majority"))
        except SubmitError as exc:
            headers = {"Retry-After": str(node.executor.retry_after_s())} if exc.status == 429 else {}
            return error(exc.status, str(exc), **headers)
        return JSONResponse({"task_id": rec.task_id, "status": rec.status, "executor": rec.executor,
                             "entry": rec.entry, "placement": rec.placement,
                             "url": f"/v1/tasks/{rec.task_id}"}, status_code=202 if new else 200)

    async def get_task(request: Request) -> JSONResponse:
        task_id = request.path_params["task_id"]
        seconds = 0.0
        wait = request.query_params.get("wait")
        if wait is not None:
            try:
                seconds = max(0.0, min(float(wait), MAX_WAIT_S))
            except ValueError:
                return error(400, "'wait' must be a number of seconds")
        rec = node.find_task(task_id)
        if rec is None:
            # Accepted elsewhere: its id names the entry node; ask it over the mesh.
            try:
                return JSONResponse(await node.query_task(task_id, seconds))
            except SubmitError as exc:
                return error(exc.status, str(exc))
        if seconds:
            with trio.move_on_after(seconds):
                await rec.done.wait()
        return JSONResponse(rec.to_json())

    async def chaos_list(request: Request) -> JSONResponse:
        import time
        return JSONResponse({"node": node.me.name, "faults": node.chaos.listing(wallclock.now())})

    async def chaos_apply(request: Request) -> JSONResponse:
        try:
            spec = await read_json(request, 1 << 20)
            fault, changed = node.apply_fault(spec)
        except SubmitError as exc:
            return error(exc.status, str(exc))
        except FaultConflict as exc:
            return error(409, str(exc))
        except FaultError as exc:
            return error(400, str(exc))
        return JSONResponse({"fault": fault, "created": changed}, status_code=201 if changed else 200)

    async def chaos_clear(request: Request) -> JSONResponse:
        fid = request.path_params.get("fault_id")
        try:
            cleared = node.clear_fault(fid)
        except KeyError:
            return error(404, f"no fault {fid!r} at {node.me.name}")
        return JSONResponse({"cleared": cleared})

    async def time_get(request: Request) -> JSONResponse:
        return JSONResponse(node.timekeeper.describe())

    async def time_set(request: Request) -> JSONResponse:
        """Pause, resume or speed up the whole fleet's orbital clock (flooded; takes effect in ~1 s)."""
        try:
            out = node.timekeeper.control(await read_json(request, 4096))
        except SubmitError as exc:
            return error(exc.status, str(exc))
        except ClockError as exc:
            return error(400, str(exc))
        return JSONResponse(out)

    async def probe(request: Request) -> JSONResponse:
        try:
            body = await read_json(request, 4096)
            if not isinstance(body, dict) or not isinstance(body.get("peer"), str):
                raise SubmitError(400, "body: {\"peer\": NODE, \"rate_hz\", \"size\", \"duration_s\"}")
            nums = {}
            for k, default in (("rate_hz", 100.0), ("size", 1024), ("duration_s", 5.0)):
                v = body.get(k, default)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SubmitError(400, f"{k} must be a number")
                nums[k] = v
            out = node.start_probe(body["peer"], float(nums["rate_hz"]), int(nums["size"]), float(nums["duration_s"]))
        except SubmitError as exc:
            return error(exc.status, str(exc))
        return JSONResponse(out, status_code=202)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document())

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(node), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/v1/chaos", chaos_list, methods=["GET"]), Route("/v1/chaos", chaos_apply, methods=["POST"]),
        Route("/v1/chaos", chaos_clear, methods=["DELETE"]),
        Route("/v1/chaos/{fault_id}", chaos_clear, methods=["DELETE"]),
        Route("/v1/probe", probe, methods=["POST"]), Route("/metrics", metrics),
        Route("/v1/time", time_get, methods=["GET"]), Route("/v1/time", time_set, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/health", health), Route("/v1/ready", ready), Route("/v1/node", node_info), Route("/v1/membership", membership), Route("/v1/links", links),
        Route("/v1/models", models), Route("/v1/models/{name}", upload_model, methods=["PUT"]),
        Route("/v1/tasks", submit, methods=["POST"]),
        Route("/v1/tasks/{task_id}", get_task),
        *kserve_routes(InferenceService(node), node.config.limits.max_body_bytes),
        *console_routes(node, fleet_dir),
        *job_routes(node, read_task),
    ]

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(getattr(exc, "status_code", 404), f"{request.method} {request.url.path}: "
                     f"{getattr(exc, 'detail', 'not found')}")

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API handler failed: %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    middleware = [Middleware(AccessControl, policy=access)] if access is not None else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={404: not_found, 405: not_found, Exception: crashed})


STARTUP_TIMEOUT_S = 900.0


def server_config(host: str, port: int, tls: tuple[str, str] | None = None) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.bind = [f"{host}:{port}"]
    if tls is not None:
        cfg.certfile, cfg.keyfile = tls
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.graceful_timeout = 1.0
    # Bounds of the header phase (the body's are in agent.serve.http_body): request
    # line and headers complete within keep_alive_timeout of the connection
    # (or of the previous response), and no larger than h11_max_incomplete_size.
    # read_timeout stays off: it is per receive, and a client waiting for a
    # long-poll or a task's result rightly sends nothing for minutes.
    cfg.keep_alive_timeout = 5.0
    cfg.h11_max_incomplete_size = 16 * 1024
    # hypercorn gives the app's start-up 60 s; a host starting 99 satellites at once on a loaded
    # machine (starlink-s1 live) took longer, and the satellite, then its host, failed to start.
    # The fleet's own ready timeout bounds start-up; this only must not cut it short.
    cfg.startup_timeout = STARTUP_TIMEOUT_S
    return cfg


async def serve_api(node: Node, host: str, port: int, access: AccessPolicy, tls: tuple[str, str] | None = None, *,
                    fleet_dir: Path | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on ``host:port``; ``tls`` (certificate, key: PEM files) makes it HTTPS."""
    http_coalesce.install()     # head and body of a response in one write
    http_reads.install()        # a 256 KB tensor body in a few receives, not a dozen
    await serve(build_app(node, access, fleet_dir), server_config(host, port, tls), shutdown_trigger=trio.sleep_forever,
                task_status=task_status)
