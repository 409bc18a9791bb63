"""Open Inference Protocol (KServe v2) over HTTP/REST, on the node's API port.

Routes under ``/v2`` beside ``/v1``: health, metadata, infer (JSON tensors and
the binary tensor data extension) and the model repository extension.  Every
error is the protocol's ``{"error": "..."}`` with a status that says whose
fault it is.  A response with binary tensors is one bytes object (JSON header
then tensors), so it leaves in as few writes as the server makes.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.serve.http_body import BodyError, read_body
from agent.serve.oip import InferenceService
from agent.serve.oip_codec import HEADER_LENGTH, OipError, encode_infer_response, json_object, parse_infer

BINARY_TYPE = "application/octet-stream"
# JSON tensors larger than this are parsed and printed in a worker thread: a 256 KB
# tile is 1.3 MB of JSON and ~30 ms of the agent's CPU, which on the event loop would hold
# every link frame due meanwhile.  Binary tensors are views and stay on the loop.
JSON_ON_LOOP_BYTES = 64 * 1024


def _error(exc: OipError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 before it is read past ``limit`` bytes and 408 past its deadline."""
    try:
        return await read_body(request, limit)
    except BodyError as exc:
        raise OipError(exc.status, str(exc)) from None


def kserve_routes(service: InferenceService, max_body_bytes: int) -> list[Route]:
    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except OipError as exc:
                return _error(exc)
        return endpoint

    def version(request: Request) -> str:
        return request.path_params.get("version", "")

    async def live(request: Request) -> Response:
        return JSONResponse({"live": service.live()})

    async def ready(request: Request) -> Response:
        ok = service.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(service.server_metadata())

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(await service.model_metadata(request.path_params["name"], version(request)))

    async def model_config(request: Request) -> Response:
        return JSONResponse(await service.model_config(request.path_params["name"], version(request)))

    async def model_ready(request: Request) -> Response:
        ok = service.model_ready(request.path_params["name"], version(request))
        return JSONResponse({"name": request.path_params["name"], "ready": ok}, status_code=200 if ok else 400)

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        service.check_known(name, version(request))
        body = await read_limited(request, max_body_bytes)
        header = request.headers.get(HEADER_LENGTH)
        big_json = (len(body) if header is None else int(header) if header.isdigit() else 0) > JSON_ON_LOOP_BYTES
        req = await trio.to_thread.run_sync(parse_infer, body, header) if big_json else parse_infer(body, header)
        outputs, params = await service.infer(name, version(request), req)
        json_out = sum(a.nbytes for k, a in outputs.items()
                       if not req.binary_outputs.get(k, req.binary_default) and (not req.outputs or k in req.outputs))
        data, header_len = await trio.to_thread.run_sync(encode_infer_response, name, req, outputs, params) \
            if json_out > JSON_ON_LOOP_BYTES // 4 else encode_infer_response(name, req, outputs, params)
        if header_len is None:
            return Response(data, media_type="application/json")
        return Response(data, media_type=BINARY_TYPE, headers={"Inference-Header-Content-Length": str(header_len)})

    async def _json_body(request: Request) -> dict[str, Any]:
        body = await read_limited(request, 1 << 16)
        if not body:        # no body at all; anything else, whitespace alone too, must be a JSON document
            return {}
        return json_object(body, "body")

    async def repo_index(request: Request) -> Response:
        doc = await _json_body(request)
        return JSONResponse(service.repository_index(bool(doc.get("ready", False))))

    async def repo_load(request: Request) -> Response:
        await _json_body(request)
        await service.load(request.path_params["name"])
        return Response(status_code=200)

    async def repo_unload(request: Request) -> Response:
        await _json_body(request)
        service.unload(request.path_params["name"])
        return Response(status_code=200)

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route(m, guarded(model_metadata), methods=["GET"]), Route(mv, guarded(model_metadata), methods=["GET"]),
        Route(f"{m}/ready", guarded(model_ready), methods=["GET"]),
        Route(f"{m}/config", guarded(model_config), methods=["GET"]),
        Route(f"{mv}/config", guarded(model_config), methods=["GET"]),
        Route(f"{mv}/ready", guarded(model_ready), methods=["GET"]),
        Route(f"{m}/infer", guarded(infer), methods=["POST"]), Route(f"{mv}/infer", guarded(infer), methods=["POST"]),
        Route("/v2/repository/index", guarded(repo_index), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", guarded(repo_load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", guarded(repo_unload), methods=["POST"]),
    ]
