"""Open Inference Protocol (KServe v2) over gRPC: ``inference.GRPCInferenceService``.

The bridge.  grpcio's server runs on asyncio; the agent runs on trio, and
decision 4 of the house plan keeps asyncio out of the agent's loop.  So the
gRPC server gets a thread of its own with its own asyncio loop, and each RPC
crosses to trio once each way without blocking either loop:

- asyncio -> trio: ``TrioToken.run_sync_soon`` (thread-safe) starts the call
  as a task in a nursery this module owns on the trio side;
- trio -> asyncio: the task's result completes an asyncio future through
  ``loop.call_soon_threadsafe``.

Decoding and encoding protobuf messages happen on the gRPC thread, so the trio
loop only runs the task itself (``Node.submit`` and waiting for its result).

Flow control pushes back instead of queueing: at most ``max_concurrent`` RPCs
are in flight (grpc's own ``maximum_concurrent_rpcs`` refuses more with
RESOURCE_EXHAUSTED, and so does this module's count), and the node's own
limits (pending tasks, executor queue) answer RESOURCE_EXHAUSTED too.  gRPC's
core sets TCP_NODELAY on its sockets and writes a message's frames together.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Awaitable, Callable

import grpc
import numpy as np
import trio

from agent.serve.auth import token_matches
from agent.links.priority import normal_priority_for_this_thread
from agent.serve.oip import MAX_TIMEOUT_S, WAIT_MARGIN_S, InferenceService
from agent.serve.oip_codec import (V2_TO_NP, InferRequest, OipError, array_from_bytes, array_from_json, select_outputs,
                             v2_datatype)
from agent.serve.oip_proto import METHODS, STREAMING, message

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 64
# Bounds of time (docs/security.md, "Bounded work").  An RPC's handler ends by
# its limit whatever the client asked; a task ends by its own timeout_s (at most
# MAX_TIMEOUT_S), so an inference gets that long and a little more.
CONTROL_RPC_S = 60.0            # metadata, config, repository load (a model loads in a thread)
INFER_RPC_S = MAX_TIMEOUT_S + 2 * WAIT_MARGIN_S + 5.0
STREAM_IDLE_S = 300.0           # a stream with no new request for this long is closed
CONNECTION_OPTIONS = [
    ("grpc.max_connection_idle_ms", 300_000),                 # no RPC for 5 min: closed
    ("grpc.max_connection_age_ms", int(INFER_RPC_S * 1000)),  # every connection ends (a slow sender too) ...
    ("grpc.max_connection_age_grace_ms", 30_000),             # ... its RPCs given 30 s to finish
    ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),   # a silent peer is dropped
    ("grpc.max_concurrent_streams", DEFAULT_MAX_CONCURRENT),  # per connection
]
STREAM_IN_FLIGHT = 8         # requests of one stream running at once; the stream's reading waits beyond it
STATUS_TO_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                  413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.FAILED_PRECONDITION,
                  429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                  504: grpc.StatusCode.DEADLINE_EXCEEDED}

# The typed-contents field for each datatype (FP16 has none: raw bytes only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}

# Reads any client may make; every other RPC (inference, repository calls) needs the
# fleet's token in the ``authorization`` metadata, as the HTTP API's POSTs do.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata",
                          "ModelConfig"})

_TensorMeta = message("ModelMetadataResponse.TensorMetadata")


def _param(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _set_param(p: Any, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def request_from_proto(msg: Any) -> InferRequest:
    """A ModelInferRequest as typed arrays (raw_input_contents or typed contents)."""
    req = InferRequest(id=msg.id, parameters={k: _param(v) for k, v in msg.parameters.items()})
    raw = msg.raw_input_contents
    if not msg.inputs:
        raise OipError(400, "no inputs")
    if raw and len(raw) != len(msg.inputs):
        raise OipError(400, f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs: one each, in order")
    for i, t in enumerate(msg.inputs):
        where = f"input {t.name!r}"
        if t.name in req.inputs:
            raise OipError(400, f"{where} given twice")
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise OipError(400, f"{where}: shape {shape} has a negative dimension")
        if raw:
            req.inputs[t.name] = array_from_bytes(raw[i], t.datatype, shape, where)
            continue
        field = CONTENTS.get(t.datatype)
        if field is None:
            if t.datatype not in V2_TO_NP:
                raise OipError(400, f"{where}: datatype {t.datatype!r} is not one of {', '.join(V2_TO_NP)}")
            raise OipError(400, f"{where}: {t.datatype} travels only as raw_input_contents")
        req.inputs[t.name] = array_from_json(list(getattr(t.contents, field)), t.datatype, tuple(shape), where)
    req.outputs = [o.name for o in msg.outputs]
    return req


def response_to_proto(name: str, req: InferRequest, outputs: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
    resp = METHODS["ModelInfer"][1](model_name=name, model_version="1", id=req.id)
    for out in select_outputs(outputs, req.outputs, name):
        arr = np.ascontiguousarray(outputs[out])
        resp.outputs.add(name=out, datatype=v2_datatype(arr.dtype.name), shape=list(arr.shape))
        resp.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    for k, v in params.items():
        _set_param(resp.parameters[k], v)
    return resp


class _Bridge:
    """Runs coroutines of the trio side for the gRPC thread's asyncio loop."""

    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery, max_concurrent: int):
        self.token, self.nursery, self.max_concurrent = token, nursery, max_concurrent
        self.in_flight = 0
        self.refused = 0

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``await fn()`` on trio; OipError(429) at once if too many calls are in flight."""
        if self.in_flight >= self.max_concurrent:
            self.refused += 1
            raise OipError(429, f"{self.in_flight} gRPC calls in flight (limit {self.max_concurrent}); retry later")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                fut.set_result(value) if ok else fut.set_exception(value)

        def answer(ok: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:        # the gRPC loop has closed (shutdown): nobody is waiting
                pass

        async def run() -> None:
            try:
                value = await fn()
            except Exception as exc:   # handed to the RPC, which answers with its status
                answer(False, exc)
            else:
                answer(True, value)

        def spawn() -> None:
            try:
                self.nursery.start_soon(run)
            except RuntimeError:        # the nursery is closing: the agent is shutting down
                answer(False, OipError(503, "the agent is shutting down"))

        self.in_flight += 1
        try:
            try:
                self.token.run_sync_soon(spawn)
            except trio.RunFinishedError:
                raise OipError(503, "the agent is shutting down") from None
            return await fut
        finally:
            self.in_flight -= 1


class InferenceServicer:
    """One coroutine per RPC of the service; each answers or aborts with a status and a clear message."""

    def __init__(self, service: InferenceService, bridge: _Bridge):
        self.service, self.bridge = service, bridge

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return METHODS["ServerLive"][1](live=self.service.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return METHODS["ServerReady"][1](ready=self.service.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        md = self.service.server_metadata()
        return METHODS["ServerMetadata"][1](name=md["name"], version=md["version"], extensions=md["extensions"])

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return METHODS["ModelReady"][1](ready=self.service.model_ready(request.name, request.version))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        md = await self.bridge.call(lambda: self.service.model_metadata(request.name, request.version))
        tensors = lambda ts: [_TensorMeta(**t) for t in ts]  # noqa: E731
        return METHODS["ModelMetadata"][1](name=md["name"], versions=md["versions"], platform=md["platform"],
                                           inputs=tensors(md["inputs"]), outputs=tensors(md["outputs"]))

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        cfg = await self.bridge.call(lambda: self.service.model_config(request.name, request.version))
        return METHODS["ModelConfig"][1](config=cfg)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        name = request.model_name
        self.service.check_known(name, request.model_version)
        req = request_from_proto(request)
        outputs, params = await self.bridge.call(lambda: self.service.infer(name, request.model_version, req))
        return response_to_proto(name, req, outputs, params)

    async def ModelStreamInfer(self, requests: Any, context: Any):
        """Requests on one stream run up to STREAM_IN_FLIGHT at a time; answers come as
        each finishes (match them by ``id``).  Beyond that the stream is not read, so
        HTTP/2 flow control holds the client back.  A failed request is an answer with
        ``error_message``; the stream goes on, until STREAM_IDLE_S pass without a request."""
        Resp, Infer = METHODS["ModelStreamInfer"][1], METHODS["ModelInfer"][1]
        answers: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def one(request: Any) -> None:
            try:
                resp = Resp(infer_response=await self.ModelInfer(request, context))
            except OipError as exc:
                resp = Resp(error_message=str(exc), infer_response=Infer(id=request.id, model_name=request.model_name))
            except Exception as exc:   # a bug: said as such, and the stream goes on
                log.exception("gRPC stream request failed")
                resp = Resp(error_message=f"internal error: {type(exc).__name__}",
                            infer_response=Infer(id=request.id, model_name=request.model_name))
            finally:
                slots.release()
            await answers.put(resp)

        idle = []

        async def read() -> None:
            running = set()
            source = aiter(requests)
            while True:
                try:
                    async with asyncio.timeout(STREAM_IDLE_S):
                        request = await anext(source)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    idle.append(True)
                    break
                await slots.acquire()
                task = asyncio.ensure_future(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
            await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (resp := await answers.get()) is not None:
                yield resp
            await reader
            if idle:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no request on this stream for {STREAM_IDLE_S:g} s; closed")
        finally:
            reader.cancel()

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        resp = METHODS["RepositoryIndex"][1]()
        for m in self.service.repository_index(request.ready):
            resp.models.add(**m)
        return resp

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self.bridge.call(lambda: self.service.load(request.model_name))
        return METHODS["RepositoryModelLoad"][1]()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self.service.unload(request.model_name)
        return METHODS["RepositoryModelUnload"][1]()


def _handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    def guard(fn: Callable[[Any, Any], Awaitable[Any]], limit_s: float) -> Callable[[Any, Any], Awaitable[Any]]:
        async def method(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async with asyncio.timeout(limit_s):     # one timer; the client's own deadline also applies
                    return await fn(request, context)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"{fn.__name__} took longer than this server's {limit_s:g} s limit")
            except OipError as exc:
                await context.abort(STATUS_TO_CODE.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:     # a bug: said as such, and the server goes on
                log.exception("gRPC %s failed", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        return method

    handlers = {name: grpc.unary_unary_rpc_method_handler(guard(getattr(servicer, name),
                                                                INFER_RPC_S if name == "ModelInfer" else CONTROL_RPC_S),
                                                          request_deserializer=req.FromString,
                                                          response_serializer=resp.SerializeToString)
                for name, (req, resp) in METHODS.items() if name not in STREAMING}
    req, resp = METHODS["ModelStreamInfer"]
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a non-read RPC without ``authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, token: str):
        self.token = token

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            given = dict(context.invocation_metadata() or ()).get("authorization")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{'wrong' if given else 'missing'} bearer token: send metadata 'authorization: "
                                f"Bearer <token>' with the fleet's API token (docs/security.md)")
        self._deny = {False: grpc.unary_unary_rpc_method_handler(deny),
                      True: grpc.stream_stream_rpc_method_handler(deny)}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        if method in OPEN_METHODS or token_matches(self.token, dict(details.invocation_metadata or ()).get(
                "authorization")):
            return await continuation(details)
        return self._deny[method in STREAMING]


def _run_server(servicer: InferenceServicer, address: str, max_message: int, max_concurrent: int,
                started: threading.Event, box: dict[str, Any], token: str | None = None) -> None:
    """The gRPC thread: its own asyncio loop, until ``box['stop']`` is called.

    At the normal scheduling policy, as are the threads grpc starts from it: only the
    event loop that releases frames needs real time (agent/links/priority.py).  Inherited
    from that loop, real time cost ~0.5 ms of CPU per cloud-mask request under load
    (docs/benchmarks.md, "Open Inference Protocol")."""
    normal_priority_for_this_thread()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message),
                                          ("grpc.max_send_message_length", max_message),
                                          ("grpc.so_reuseport", 0), *CONNECTION_OPTIONS],
                                 maximum_concurrent_rpcs=max_concurrent,
                                 interceptors=[TokenInterceptor(token)] if token is not None else [])
        server.add_generic_rpc_handlers((_handler(servicer),))
        try:
            box["port"] = server.add_insecure_port(address)
            await server.start()
        except Exception as exc:  # grpc raises RuntimeError for a port it cannot bind
            box["error"] = f"gRPC cannot listen on {address}: {exc}"
            started.set()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        box["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
        started.set()
        await stop.wait()
        await server.stop(grace=0.5)

    asyncio.run(main())


async def serve_grpc(service: InferenceService, host: str, port: int, *, max_message_bytes: int,
                     max_concurrent: int = DEFAULT_MAX_CONCURRENT, token: str | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``inference.GRPCInferenceService`` on ``host:port`` until cancelled; with ``token``,
    every RPC but the reads (OPEN_METHODS) needs it (None: an open lab)."""
    async with trio.open_nursery() as nursery:
        bridge = _Bridge(trio.lowlevel.current_trio_token(), nursery, max_concurrent)
        started, box = threading.Event(), {}
        thread = threading.Thread(target=_run_server, name="grpc", daemon=True,
                                  args=(InferenceServicer(service, bridge), f"{host}:{port}", max_message_bytes,
                                        max_concurrent, started, box, token))
        thread.start()
        await trio.to_thread.run_sync(started.wait)
        if "error" in box:
            raise OSError(box["error"])
        task_status.started(box["port"])
        try:
            await trio.sleep_forever()
        finally:
            box["stop"]()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, 5.0)
            nursery.cancel_scope.cancel()
