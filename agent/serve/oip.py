"""The Open Inference Protocol's operations on a node, for both of its transports.

HTTP (``agent.serve.kserve_http``) and gRPC (``agent.serve.kserve_grpc``) only translate
their wire format to these calls, so a model's metadata, the checks on a
request and the way it runs are one implementation.  An infer request is a
task: it goes through ``Node.submit`` (journal, placement or
``parameters.target``, the relay over the emulated links, exactly-once,
deadline) and waits for the task's one final state; nothing here runs a model
by another path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import trio

from agent.compute.models import LoadedModel, ModelError, bad_name
from agent.runtime.node import DEFAULT_TASK_TIMEOUT_S, Node, SubmitError
from agent.serve.oip_codec import InferRequest, OipError, check_inputs, tensor_metadata

SERVER_NAME = "orbitmesh"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]
MAX_TIMEOUT_S = 3600.0
WAIT_MARGIN_S = 1.0       # beyond the task's deadline, for its failure to come back


def failure_status(error: str) -> int:
    """The HTTP status of a task that failed after it was accepted."""
    low = error.lower()
    if "busy" in low or "battery" in low or "refused" in low:
        return 503
    if "no result within" in low or "deadline" in low or "timed out" in low or "undeliverable" in low:
        return 504
    return 500


class InferenceService:
    def __init__(self, node: Node):
        self.node = node

    # -- server ------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS,
                "node": self.node.me.name}

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """The transports listen only once the node runs, so an answer means ready."""
        return True

    # -- models ------------------------------------------------------------------

    def _check_version(self, name: str, version: str) -> None:
        if bad_name(name):
            raise OipError(400, bad_name(name))
        if version not in ("", "1"):
            raise OipError(404, f"model {name!r} has one version, '1'; version {version!r} does not exist")

    def check_known(self, name: str, version: str = "") -> None:
        """404 for a model (or version) this node does not have: checked before a body is decoded."""
        self._check_version(name, version)
        store = self.node.store
        if not store.has(name):
            raise OipError(404, f"unknown model {name!r}; this node has: {', '.join(store.names()) or 'none'}")

    async def model(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model (loading it in a thread if needed); 404 if this node does not know it."""
        self.check_known(name, version)
        store = self.node.store
        try:
            return store.get(name) if store.loaded(name) else await trio.to_thread.run_sync(store.get, name)
        except ModelError as exc:
            raise OipError(422, str(exc)) from None

    async def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        m = await self.model(name, version)
        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [tensor_metadata(s) for s in m.inputs],
                "outputs": [tensor_metadata(s) for s in m.outputs]}

    async def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The signature as the protocol's model configuration (full shapes, max_batch_size 0)."""
        md = await self.model_metadata(name, version)

        def rows(ts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": t["name"], "data_type": f"TYPE_{t['datatype']}", "dims": t["shape"]} for t in ts]
        return {"name": name, "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 0,
                "input": rows(md["inputs"]), "output": rows(md["outputs"])}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Loaded and warm; a known model that is not loads on its first request."""
        self._check_version(name, version)
        if not self.node.store.has(name):
            raise OipError(404, f"unknown model {name!r}")
        return self.node.store.loaded(name)

    # -- the repository extension, on the model store ------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        store = self.node.store
        out = []
        for name in store.names():
            ready = store.loaded(name)
            if ready_only and not ready:
                continue
            out.append({"name": name, "version": "1", "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "not loaded: loads on its first request, or on load"})
        return out

    async def load(self, name: str) -> None:
        await self.model(name)
        await self.node.executor.warm_up(name)

    def unload(self, name: str) -> None:
        self._check_version(name, "")
        if not self.node.store.has(name):
            raise OipError(404, f"unknown model {name!r}")
        self.node.store.unload(name)

    # -- inference ---------------------------------------------------------------

    async def infer(self, name: str, version: str, req: InferRequest) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Run ``req`` as a task and wait for it: (outputs, response parameters)."""
        m = await self.model(name, version)
        check_inputs(req.inputs, m.inputs, name)
        known = {s.name for s in m.outputs}
        if any(o not in known for o in req.outputs):
            raise OipError(400, f"model {name!r} has no outputs {[o for o in req.outputs if o not in known]}; "
                                f"it has {sorted(known)}")
        p = req.parameters
        target = p.get("target")
        if target is not None and not isinstance(target, str):
            raise OipError(400, "parameters.target must be a node name (sat-7) or a placement policy (sunlit, auto)")
        timeout = p.get("timeout_s", DEFAULT_TASK_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise OipError(400, f"parameters.timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
        key = p.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise OipError(400, "parameters.idempotency_key must be a string")
        cache = p.get("cache", True)
        if not isinstance(cache, bool):
            raise OipError(400, "parameters.cache must be true or false (false: always compute)")
        try:
            # Journaled only with an idempotency key: without one, nothing could ask
            # for this task after a crash (see Node.submit).
            rec, _ = await self.node.submit(name, req.inputs, target, float(timeout), key, journaled=key is not None,
                                            cache=cache, replicas=p.get("replicas", 1),
                                            agreement=p.get("agreement", "majority"), wait=True)
        except SubmitError as exc:
            raise OipError(exc.status, str(exc)) from None
        if not rec.done.is_set():       # run here, it has ended already: no checkpoint (one loop pass fewer)
            with trio.move_on_after(float(timeout) + WAIT_MARGIN_S):
                await rec.done.wait()
        if rec.status == "failed":
            raise OipError(failure_status(rec.error), f"task {rec.task_id} failed: {rec.error}")
        if rec.status != "succeeded" or rec.outputs is None:
            raise OipError(504, f"task {rec.task_id} has no result after {timeout:g} s (status {rec.status})")
        outputs = rec.outputs
        if key is None:
            # The outputs go back on this connection and nobody can ask for them again
            # by key; the record keeps its trace and timing, not 10,000 tasks' tensors.
            rec.outputs = None
        return outputs, response_parameters(rec)


def response_parameters(rec: Any) -> dict[str, Any]:
    """Where the task ran, the route it took and how its time split (ms)."""
    b = rec.breakdown() or {}
    return {"task_id": rec.task_id, "entry": rec.entry, "executor": rec.executor, "placement": rec.placement,
            "route": ">".join(h.node for h in rec.trace), "hops": int(b.get("hops", 0)),
            **{k: round(float(b.get(k, 0.0)), 3) for k in ("total_ms", "physics_ms", "compute_ms", "overhead_ms")}}
