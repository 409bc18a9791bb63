"""Client SDK for a node's HTTP API.

Built on httpx's async client, which runs on anyio: the same code works from
trio (the CLI) and from asyncio/uvloop applications.  ``infer`` speaks the
Open Inference Protocol (KServe v2) with binary tensors and returns numpy
arrays; ``submit`` is orbitmesh's asynchronous task API (JSON or, given
arrays, binary tensors).

Control calls carry the fleet's API token (``Authorization: Bearer``): given
as ``token``, else found in ``$ORBITMESH_TOKEN``, ``$ORBITMESH_TOKEN_FILE`` or
``.fleet/token`` (:func:`agent.serve.auth.client_token`).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import numpy as np

from agent.serve.auth import bearer, client_token
from agent.serve.oip_codec import (HEADER_LENGTH, OipError, decode_infer_response, encode_infer_request, encode_task_body)
from agent.compute.tensors import typed_arrays


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class InferResult:
    """A v2 inference's outputs, and its parameters: the executor, the route and the time split (ms)."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process: httpx builds one per client (it loads
    the CA bundle), ~33 ms each on a quiet machine and ~0.8 s on a loaded one, so waiting for the
    1,590 agents of starlink-s1 spent its first minutes only making clients."""
    return httpx.create_ssl_context()


class Client:
    def __init__(self, base_url: str, *, timeout: float = 10.0, token: str | None = None):
        """``token`` None: look for one (see the module's docstring); "" sends none."""
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, verify=_tls_context(),
                                       headers=bearer(client_token() if token is None else token))

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{self.base_url}{path}: {type(exc).__name__}: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text[:200]}
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, body.get("error", str(body)) if isinstance(body, dict) else str(body))
        return body

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/health")

    async def node(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/node")

    async def membership(self) -> dict[str, Any]:
        """This node's view of the fleet: members, their state, links reported down, delivery counters."""
        return await self._call("GET", "/v1/membership")

    async def links(self, samples: bool = False) -> dict[str, Any]:
        return await self._call("GET", "/v1/links", params={"samples": "1"} if samples else None)

    async def models(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/models")

    async def submit(self, model: str, inputs: dict[str, Any], target: str | None = None,
                     timeout_s: float | None = None, idempotency_key: str | None = None,
                     cache: bool | None = None, replicas: int | None = None,
                     agreement: str | None = None) -> dict[str, Any]:
        """Submit a task. With ``idempotency_key``, resubmitting after a lost answer
        returns the task the first submission created (HTTP 200) instead of a new one.
        ``inputs`` of numpy arrays travel as binary tensors, others as JSON.
        ``cache=False``: compute it even if the entry holds the answer (agent/runtime/edge_cache.py)."""
        options = {"idempotency_key": idempotency_key, "target": target, "timeout_s": timeout_s, "cache": cache,
                   "replicas": replicas, "agreement": agreement}
        body: dict[str, Any] = {"model": model, **{k: v for k, v in options.items() if v is not None}}
        if typed_arrays(inputs):
            data, header = encode_task_body(body, inputs)
            return await self._call("POST", "/v1/tasks", content=data,
                                    headers={"Inference-Header-Content-Length": str(header),
                                             "Content-Type": "application/octet-stream"})
        return await self._call("POST", "/v1/tasks", json={**body, "inputs": inputs})

    # -- the Open Inference Protocol (KServe v2) ---------------------------------------

    async def server_metadata(self) -> dict[str, Any]:
        return await self._call("GET", "/v2")

    async def model_metadata(self, model: str) -> dict[str, Any]:
        """Inputs and outputs (name, datatype, shape with -1 for any size) from the ONNX file."""
        return await self._call("GET", f"/v2/models/{model}")

    async def infer(self, model: str, inputs: dict[str, np.ndarray], *, target: str | None = None,
                    timeout_s: float | None = None, outputs: list[str] | None = None, binary: bool = True,
                    parameters: dict[str, Any] | None = None) -> InferResult:
        """Run ``model`` and wait for its outputs, as numpy arrays.

        ``target``: a node (``sat-7``) or a placement policy (``sunlit``); the
        request crosses the emulated links like any task.  Binary tensors both
        ways unless ``binary`` is False (JSON tensors).
        """
        params = dict(parameters or {})
        if target is not None:
            params["target"] = target
        if timeout_s is not None:
            params["timeout_s"] = timeout_s
        data, header = encode_infer_request(inputs, parameters=params, binary=binary, outputs=outputs)
        headers = {"Content-Type": "application/octet-stream" if header is not None else "application/json"}
        if header is not None:
            headers["Inference-Header-Content-Length"] = str(header)
        wait = httpx.Timeout(self._http.timeout.read + (timeout_s or 30.0))
        try:
            resp = await self._http.post(f"/v2/models/{model}/infer", content=data, headers=headers, timeout=wait)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            try:
                message = resp.json().get("error", resp.text[:200])
            except ValueError:
                message = resp.text[:200]
            raise ApiError(resp.status_code, message)
        try:
            outs, params_out = decode_infer_response(resp.content, resp.headers.get(HEADER_LENGTH))
        except OipError as exc:
            raise ApiError(0, f"malformed v2 response: {exc}") from None
        return InferResult(outs, params_out)

    async def faults(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/chaos")

    async def apply_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/chaos", json=spec)

    async def clear_faults(self, fault_id: str | None = None) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/chaos/{fault_id}" if fault_id else "/v1/chaos")

    async def clock(self) -> dict[str, Any]:
        """The fleet's orbital clock as this node runs it (``GET /v1/time``)."""
        return await self._call("GET", "/v1/time")

    async def set_clock(self, *, speed: float | None = None, pause: bool = False,
                        resume: bool = False) -> dict[str, Any]:
        """Speed up (``speed``: orbital seconds per wall second), pause or resume the whole
        fleet's orbital clock; the switch is flooded and takes effect about a second later."""
        body: dict[str, Any] = {}
        if speed is not None:
            body["speed"] = speed
        if pause:
            body["pause"] = True
        if resume:
            body["resume"] = True
        return await self._call("POST", "/v1/time", json=body)

    async def probe(self, peer: str, rate_hz: float = 100.0, size: int = 1024, duration_s: float = 5.0) -> dict[str, Any]:
        return await self._call("POST", "/v1/probe",
                                json={"peer": peer, "rate_hz": rate_hz, "size": size, "duration_s": duration_s})

    async def task(self, task_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": wait} if wait is not None else None
        timeout = httpx.Timeout(self._http.timeout.read + (wait or 0)) if wait else None
        kw: dict[str, Any] = {"params": params}
        if timeout is not None:
            kw["timeout"] = timeout
        return await self._call("GET", f"/v1/tasks/{task_id}", **kw)

    # -- jobs (docs/jobs.md) ------------------------------------------------------------

    async def submit_job(self, model: str, inputs: list[dict[str, Any]] | dict[str, np.ndarray], *, shards: int | None = None,
                         chunk: int | None = None, window: int | None = None, target: str | None = None,
                         timeout_s: float | None = None, state: dict[str, Any] | None = None,
                         idempotency_key: str | None = None, replicas: int | None = None,
                         agreement: str | None = None) -> dict[str, Any]:
        """Submit a job: many inputs through ``model``, sharded across the fleet, checkpointed per chunk.
        ``inputs``: one object of input tensors per input (numpy arrays or nested lists, sent as JSON), or
        each input name's arrays stacked on a new first axis (sent as binary tensors: far smaller); ``state``:
        ``{"carry": {OUTPUT: INPUT}, "initial": {INPUT: tensor}}`` for a stateful step; ``replicas``: run
        every chunk on that many satellites in different planes and vote (``agreement``)."""
        options = {"shards": shards, "chunk": chunk, "window": window, "target": target, "timeout_s": timeout_s,
                   "state": _jsonable(state), "idempotency_key": idempotency_key, "replicas": replicas,
                   "agreement": agreement}
        head = {"model": model, **{k: v for k, v in options.items() if v is not None}}
        if isinstance(inputs, dict) and typed_arrays(inputs):    # stacked arrays travel as binary tensors
            data, header = encode_task_body(head, inputs)
            return await self._call("POST", "/v1/jobs", content=data,
                                    headers={"Inference-Header-Content-Length": str(header),
                                             "Content-Type": "application/octet-stream"})
        return await self._call("POST", "/v1/jobs", json={**head, "inputs": [_jsonable(item) for item in inputs]})

    async def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """A job's status: shards, where they run, their moves and progress."""
        kw: dict[str, Any] = {"params": {"wait": wait}} if wait else {}
        if wait:
            kw["timeout"] = httpx.Timeout(self._http.timeout.read + wait)
        return await self._call("GET", f"/v1/jobs/{job_id}", **kw)

    async def jobs(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/jobs")

    async def wait_job(self, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Long-poll until the job ends (or ``timeout`` passes) at this node.  ``handed_over`` ends it here
        too: its keeper (``handed_to``) took it over while this home was down, and follows it from there."""
        with anyio.move_on_after(timeout):
            while True:
                info = await self.job(job_id, wait=min(10.0, timeout))
                if info["status"] in ("succeeded", "failed", "cancelled", "handed_over"):
                    return info
        return await self.job(job_id)

    async def job_result(self, job_id: str, *, arrays: bool = True) -> dict[str, Any]:
        """The outputs of every input, in order (numpy arrays unless ``arrays`` is False)."""
        body = await self._call("GET", f"/v1/jobs/{job_id}/result")
        if arrays:
            body["outputs"] = [{k: from_wire_json(v) for k, v in item.items()} for item in body["outputs"]]
            if "state" in body:
                body["state"] = [{k: from_wire_json(v) for k, v in st.items()} for st in body["state"]]
        return body

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/jobs/{job_id}")

    async def wait(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Long-poll until the task is final (or ``timeout`` passes)."""
        with anyio.move_on_after(timeout):
            while True:
                rec = await self.task(task_id, wait=min(10.0, timeout))
                if rec["status"] in ("succeeded", "failed"):
                    return rec
        return await self.task(task_id)


def _jsonable(value: Any) -> Any:
    """Numpy arrays (at any depth of dicts) as typed JSON tensors; everything else as it is."""
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.reshape(-1).tolist()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def from_wire_json(t: dict[str, Any]) -> np.ndarray:
    """A tensor as the API returns it (``{"dtype", "shape", "data"}``, non-finite values as strings)."""
    return np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])
