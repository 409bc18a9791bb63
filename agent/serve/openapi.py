"""The node's HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand next to the routes (``agent.serve.api``, ``agent.serve.kserve_http``) so
that it says what they do, statuses included; tests check that every route
is in it and nothing else is, and a schemathesis run against a live agent
checks the answers against it (tests/test_api_schema.py).  Bodies are as
strict here as the handlers are and no stricter: a request this document
calls invalid is one the agent refuses with a 4xx.
"""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/"
JSON = "application/json"
NAME = {"type": "string", "minLength": 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"content": {JSON: media}}


# Valid requests for the zoo's matmul model (c = a @ b): examples for readers and for fuzzers.
MATMUL_TASK = {"model": "matmul", "inputs": {"a": [[1.0, 2.0]], "b": [[3.0], [4.0]]}, "timeout_s": 10}
MATMUL_INFER = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
                           {"name": "b", "datatype": "FP32", "shape": [2, 1], "data": [3.0, 4.0]}]}


def _responses(ok: dict[int, tuple[str, dict[str, Any] | None]], errors: dict[int, str]) -> dict[str, Any]:
    """Success statuses with their body schema (None: no body); errors all ``{"error": ...}``."""
    out: dict[str, Any] = {}
    for status, (what, schema) in ok.items():
        out[str(status)] = {"description": what, **(_json(schema) if schema is not None else {})}
    for status, what in errors.items():
        out[str(status)] = {"description": what, **_json(_ref("Error"))}
    return out


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, body_required: bool = True, tag: str = "v1") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": body}
    return op


def _path(name: str, what: str, example: str | None = None) -> dict[str, Any]:
    p = {"name": name, "in": "path", "required": True, "description": what, "schema": {"type": "string"}}
    return {**p, "example": example} if example is not None else p


def _query(name: str, what: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": what, "schema": schema}


def _header(name: str, what: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": what, "schema": schema}


OBJECT = {"type": "object"}
BAD = "a malformed request; the error says what is wrong"
TENSOR_V1 = {"oneOf": [{"type": "array"}, {"type": "number"}, {"type": "boolean"}, {
    "type": "object", "additionalProperties": False, "required": ["data"],
    "properties": {"dtype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                   "data": {}}}]}
V2_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Health": {"type": "object", "required": ["status", "node", "links_up", "links_total", "ready"], "properties": {
        "status": {"const": "ok"}, "node": {"type": "string"}, "links_up": {"type": "integer"},
        "links_total": {"type": "integer"}, "ready": {"type": "boolean"}, "members_alive": {"type": "integer"},
        "members_total": {"type": "integer"}}},
    "Node": {"type": "object", "required": ["node", "index", "peer_id"]},
    "Membership": {"type": "object", "required": ["members"],
                   "properties": {"members": {"type": "array", "items": OBJECT}}},
    "Links": {"type": "object", "required": ["node", "links"], "properties": {
        "node": {"type": "string"},
        "links": {"type": "array", "items": {"type": "object", "required": ["peer", "up"]}}}},
    "Faults": {"type": "object", "required": ["node", "faults"], "properties": {
        "node": {"type": "string"}, "faults": {"type": "array", "items": {"type": "object", "required": ["id"]}}}},
    "FaultSpec": {"type": "object", "required": ["kind"], "description": "see docs/chaos.md", "properties": {
        "kind": {"enum": ["cut", "loss", "delay", "jitter", "bandwidth", "duplicate", "reorder", "corrupt",
                          "partition", "plane", "bitflip"]}}},
    "FaultApplied": {"type": "object", "required": ["fault", "created"], "properties": {
        "fault": {"type": "object", "required": ["id"]}, "created": {"type": "boolean"}}},
    "Cleared": {"type": "object", "required": ["cleared"],
                "properties": {"cleared": {"type": "array", "items": {"type": "string"}}}},
    "ProbeRequest": {"type": "object", "required": ["peer"], "properties": {
        "peer": {"type": "string"}, "rate_hz": {"type": "number"}, "size": {"type": "number"},
        "duration_s": {"type": "number"}}},
    "TimeState": {"type": "object", "required": ["node", "wall", "orbit_t", "scale", "paused", "rate", "version",
                                                 "origin", "since_wall", "pending"], "properties": {
        "node": {"type": "string"}, "wall": {"type": "number"}, "orbit_t": {"type": "number"},
        "scale": {"type": "number", "exclusiveMinimum": 0}, "paused": {"type": "boolean"}, "rate": {"type": "number"},
        "version": {"type": ["number", "null"]}, "origin": {"type": ["string", "null"]},
        "since_wall": {"type": ["number", "null"]}, "pending": {"type": ["object", "null"]},
        "changed": {"type": "boolean"}, "switch": OBJECT}},
    "TimeRequest": {"type": "object", "additionalProperties": False, "minProperties": 1,
                    "not": {"required": ["pause", "resume"]}, "description": "see docs/time.md", "properties": {
        "speed": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000,
                  "description": "orbital seconds per wall second"},
        "pause": {"const": True}, "resume": {"const": True}}},
    "ProbeStarted": {"type": "object", "required": ["peer", "frames", "rate_hz", "size"]},
    "Models": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
        "type": "object", "required": ["name"]}}}},
    "Uploaded": {"type": "object", "required": ["name", "sha256", "size", "inputs", "outputs"]},
    "TaskRequest": {"type": "object", "additionalProperties": False, "required": ["model", "inputs"], "properties": {
        "model": {"type": "string", "minLength": 1},
        "inputs": {"type": "object", "minProperties": 1, "additionalProperties": TENSOR_V1},
        "target": {"type": ["string", "null"]},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128},
        "cache": {"type": "boolean", "description": "false: compute, never answer from the entry's edge cache"},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 7,
                     "description": "run on this many satellites, one per plane, and agree"},
        "agreement": {"enum": ["first", "majority"]}}},
    "TaskAccepted": {"type": "object", "required": ["task_id", "status", "executor", "entry", "placement", "url"],
                     "properties": {"task_id": {"type": "string"}, "status": {"type": "string"},
                                    "executor": {"type": "string"}, "entry": {"type": "string"},
                                    "placement": {"type": "string"}, "url": {"type": "string"}}},
    "TaskRecord": {"type": "object", "required": ["task_id", "model", "entry", "executor", "status", "created",
                                                  "finished", "error", "outputs", "trace", "latency"], "properties": {
        "task_id": {"type": "string"}, "status": {"enum": ["accepted", "forwarding", "running", "succeeded", "failed"]},
        "created": {"type": "number"}, "finished": {"type": ["number", "null"]}, "error": {"type": ["string", "null"]},
        "outputs": {"type": ["object", "null"], "additionalProperties": {
            "type": "object", "required": ["dtype", "shape", "data"]}},
        "trace": {"type": "array", "items": OBJECT}, "latency": {"type": ["object", "null"]}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"]},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {"inputs": {"type": "array", "items": V2_TENSOR_META},
                                     "outputs": {"type": "array", "items": V2_TENSOR_META}}},
    "ModelConfig": {"type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"]},
    "ModelReady": {"type": "object", "required": ["name", "ready"],
                   "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": OBJECT,
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "datatype", "shape"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                      "INT64", "FP16", "FP32", "FP64"]},
                "parameters": OBJECT, "data": {}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name", "datatype", "shape"]}}}},
    "RepositoryIndex": {"type": "array", "items": {"type": "object", "required": ["name", "version", "state"]}},
}


def _v1() -> dict[str, Any]:
    task_errors = {400: BAD + " (unknown fields, wrong input names/shapes/dtypes, NaN/∞, a number too large "
                          "for the input's dtype, nesting too deep)",
                   404: "unknown model or target node",
                   409: "the idempotency key belongs to a task this node cannot read back",
                   413: "body over limits.max_body_bytes", 422: "the model file cannot be loaded",
                   429: "too many tasks pending, or the executor is full (Retry-After)",
                   503: "the task cannot be journaled, the target is down, or no node can finish it in time"}
    fault_id = _path("fault_id", "a fault's id (GET /v1/chaos lists them)")
    return {
        "/v1/health": {"get": _op("liveness and link summary", _responses({200: ("ok", _ref("Health"))}, {}))},
        "/v1/ready": {"get": _op("readiness: 200 once every laser link is up", _responses(
            {200: ("ready", _ref("Health")), 503: ("not every link is up yet", _ref("Health"))}, {}))},
        "/v1/node": {"get": _op("identity, orbit, neighbours, models, energy",
                                _responses({200: ("this node", _ref("Node"))}, {}))},
        "/v1/membership": {"get": _op("this node's view of the fleet",
                                      _responses({200: ("members", _ref("Membership"))}, {}))},
        "/v1/links": {"get": _op("per-link counters", _responses({200: ("links", _ref("Links"))}, {}), params=[
            _query("samples", "1 or true: add the recent probe errors", {"type": "string"})])},
        "/metrics": {"get": _op("Prometheus text format", {"200": {
            "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/v1/chaos": {
            "get": _op("faults in force", _responses({200: ("faults", _ref("Faults"))}, {})),
            "post": _op("apply a fault anywhere in the fleet", _responses(
                {200: ("already in force", _ref("FaultApplied")), 201: ("applied", _ref("FaultApplied"))},
                {400: BAD + " (see docs/chaos.md)", 409: "the fault table is full (the limit is stated), or a "
                                                         "newer removal of this fault is known",
                 413: "body over 1 MiB"}), body=_json(_ref("FaultSpec"))["content"]),
            "delete": _op("remove every fault", _responses({200: ("removed", _ref("Cleared"))}, {}))},
        "/v1/chaos/{fault_id}": {"delete": _op("remove one fault", _responses(
            {200: ("removed", _ref("Cleared"))}, {404: "no such fault"}), params=[fault_id])},
        "/v1/time": {
            "get": _op("the fleet's orbital clock as this node runs it", _responses(
                {200: ("the clock", _ref("TimeState"))}, {})),
            "post": _op("pause, resume or speed up the whole fleet's orbital clock (flooded over the mesh; "
                        "takes effect ~1 s later)", _responses(
                {200: ("the switch issued (or changed: false if the clock already runs so)", _ref("TimeState"))},
                {400: BAD + " (speed outside (0, 1000], pause and resume together, unknown fields)",
                 413: "body over 4 KiB"}), body=_json(_ref("TimeRequest"), {"speed": 10})["content"])},
        "/v1/probe": {"post": _op("send numbered probe frames on one link", _responses(
            {202: ("started", _ref("ProbeStarted"))}, {400: BAD, 404: "no laser link to that peer",
                                                       413: "body over 4 KiB"}),
            body=_json(_ref("ProbeRequest"))["content"])},
        "/v1/models": {"get": _op("models and their signatures", _responses({200: ("models", _ref("Models"))}, {}))},
        "/v1/models/{name}": {"put": _op("upload an ONNX model", _responses(
            {200: ("already stored", _ref("Uploaded")), 201: ("stored", _ref("Uploaded"))},
            {400: "invalid ONNX, wrong hash or bad name", 409: "a zoo model's name", 413: "over the size limit",
             503: "this node has no upload store"}), params=[
            _path("name", "1–64 of a-z, 0-9, '_', '.', '-'"),
            _query("sha256", "the body's SHA-256, checked", {"type": "string"}),
            _header("X-Content-SHA256", "the body's SHA-256, checked", {"type": "string"})],
            body={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})},
        "/v1/tasks": {"post": _op("submit a task", _responses(
            {200: ("a repeat with the same idempotency key: its task", _ref("TaskAccepted")),
             202: ("accepted", _ref("TaskAccepted"))}, task_errors),
            params=[_header("Idempotency-Key", "1–128 characters", {"type": "string"}),
                    _header("Inference-Header-Content-Length", "binary tensors: the JSON task's length; the "
                            "inputs' bytes follow it", {"type": "string"})],
            body=_json(_ref("TaskRequest"), MATMUL_TASK)["content"])},
        "/v1/tasks/{task_id}": {"get": _op("a task's state, outputs and trace", _responses(
            {200: ("the task", _ref("TaskRecord"))},
            {400: "'wait' is not a number", 404: "no such task",
             504: "the entry node named in the id did not answer over the mesh"}),
            params=[_path("task_id", "an id from POST /v1/tasks"),
                    _query("wait", "long-poll up to this many seconds (max 60)", {"type": "number"})])},
        "/openapi.json": {"get": _op("this document", _responses({200: ("OpenAPI 3.1", OBJECT)}, {}))},
        **_console(),
        **_jobs(),
    }


DIGITS_ROW = [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0] * 8
JOB_EXAMPLE = {"model": "digits", "inputs": [{"input": [DIGITS_ROW]}, {"input": [DIGITS_ROW]}], "shards": 2, "chunk": 1}


def _jobs() -> dict[str, Any]:
    """Jobs (docs/jobs.md): many inputs, sharded over satellites, checkpointed per chunk."""
    count = {"type": "integer", "minimum": 1}
    request = {"type": "object", "required": ["model", "inputs"], "additionalProperties": False, "properties": {
        "model": NAME, "inputs": {"type": "array", "minItems": 1, "maxItems": 10000,
                                  "items": {"type": "object", "additionalProperties": TENSOR_V1}},
        "shards": {**count, "maximum": 64}, "chunk": {**count, "maximum": 256}, "window": {**count, "maximum": 8},
        "target": {"enum": ["auto", "nearest", "sunlit"]},
        "timeout_s": {"type": "number", "minimum": 1, "maximum": 21600},
        "state": {"type": "object", "required": ["carry"], "additionalProperties": False, "properties": {
            "carry": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
            "initial": {"type": "object", "additionalProperties": TENSOR_V1}}},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128},
        "replicas": {**count, "maximum": 7}, "agreement": {"enum": ["first", "majority"]}}}
    shard = {"type": "object", "required": ["shard", "inputs", "node", "done", "moves", "resent"]}
    job = {"type": "object", "required": ["job_id", "model", "status", "inputs", "done", "shards", "moves", "resent"],
           "properties": {"job_id": {"type": "string"}, "status": {"enum": ["running", "succeeded", "failed",
                                                                             "cancelled", "handed_over"]},
                          "shards": {"type": "array", "items": shard},
                          "home": {"type": "string", "description": "the node driving the job (this one)"},
                          "copy": {"type": ["object", "null"], "description": "its keeper (a neighbour holding "
                                   "a copy) and how many records it still lacks"},
                          "taken_from": {"type": ["string", "null"], "description": "the home it was taken over "
                                         "from, declared dead"},
                          "handed_to": {"type": ["string", "null"], "description": "handed_over: the keeper "
                                        "that took it over while this home was down"}}}
    result = {"type": "object", "required": ["job_id", "outputs"], "properties": {
        "outputs": {"type": "array", "items": OBJECT}, "state": {"type": "array", "items": OBJECT}}}
    wait = _query("wait", "long-poll up to this many seconds (max 60) for the job to end", {"type": "number"})
    job_id = _path("job_id", "an id from POST /v1/jobs (it starts with its home node's name)")
    missing = "no such job here (a job elsewhere: the error names its home node)"
    return {
        "/v1/jobs": {
            "post": _op("submit a job: many inputs through one model, sharded over satellites", _responses(
                {200: ("a repeat with the same idempotency key: its job", job), 202: ("accepted", job)},
                {400: BAD + " (inputs of different shapes, a bad state, unknown fields)", 404: "unknown model",
                 413: "body over limits.max_body_bytes, over 10,000 inputs, or one input over a chunk's limit",
                 422: "the model file cannot be loaded", 429: "too many jobs running here (Retry-After)",
                 503: "the job cannot be journaled"}),
                params=[_header("Inference-Header-Content-Length", "binary tensors: the JSON job's length; each "
                                "input name's tensors, stacked on a first axis, follow it", {"type": "string"})],
                body=_json(request, JOB_EXAMPLE)["content"]),
            "get": _op("the jobs this node is home to, newest first, and the copies it keeps for its "
                       "neighbours", _responses({200: ("jobs", {"type": "object", "required": ["node", "jobs", "kept"]})},
                                                {}))},
        "/v1/jobs/{job_id}": {
            "get": _op("a job's progress: shards, where they run, their moves", _responses(
                {200: ("the job", job)}, {400: "'wait' is not a number", 404: missing}), params=[job_id, wait]),
            "delete": _op("cancel a job (its checkpoints stay readable)", _responses(
                {200: ("the job, cancelled (or already ended)", job)}, {404: missing}), params=[job_id])},
        "/v1/jobs/{job_id}/result": {"get": _op("every input's outputs, in input order", _responses(
            {200: ("the outputs", result)}, {400: "'wait' is not a number", 404: missing,
                                             409: "the job has not succeeded (running, failed or cancelled)"}),
            params=[job_id, wait])},
    }


SCENARIO_EXAMPLE = '[[events]]\nat = "0s"\nkind = "delay"\nlink = "random"\ndelay = "5ms"\nfor = "2s"\n'

# One event of the console's stream (the data is JSON text: docs/console.md#the-stream).
SSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"enum": ["fleet", "frame"]}, "data": {"type": "string"}, "retry": {"type": "integer"}}}


def _console() -> dict[str, Any]:
    """The live globe (docs/console.md): its page and files, its stream, node details, node chaos."""
    file = {"200": {"description": "the file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "404": {"description": "no such file", **_json(_ref("Error"))}}
    html = {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}
    node_chaos = {"type": "object", "required": ["node", "action"], "additionalProperties": False, "properties": {
        "node": {"type": "string"}, "action": {"enum": ["kill", "pause", "resume", "restart"]}}}
    return {
        "/": {"get": _op("the console: a live globe of the fleet", html, tag="console")},
        "/console/{name}": {"get": _op("the page's own files", file, params=[
            _path("name", "a file in agent/serve/web/", "console.js")], tag="console")},
        "/console/{folder}/{name}": {"get": _op("the page's vendored files (three.js, Earth textures)", file, params=[
            _path("folder", "vendor", "vendor"), _path("name", "a file in agent/serve/web/vendor/", "OrbitControls.js")],
            tag="console")},
        "/v1/console/fleet": {"get": _op("what the page draws that never changes: names, planes, stations",
                                         _responses({200: ("the fleet", OBJECT)}, {}), tag="console")},
        "/v1/console/stream": {"get": _op("Server-Sent Events: the fleet, then a frame a second", {
            "200": {"description": "an event stream", "content": {"text/event-stream": {"schema": SSE_EVENT}}},
            "400": {"description": "'frames' out of range", **_json(_ref("Error"))},
            "503": {"description": "too many viewers on this node", **_json(_ref("Error"))}},
            params=[_query("frames", "end after this many frames (1–3600, the default)",
                           {"type": "integer", "minimum": 1, "maximum": 3600})], tag="console")},
        "/v1/console/node/{name}": {"get": _op("one node as this agent knows it", _responses(
            {200: ("the node", OBJECT)}, {404: "unknown node"}), params=[_path("name", "a node's name")],
            tag="console")},
        "/v1/console/scenario": {
            "post": _op("run a chaos scenario (TOML, docs/chaos.md) from this agent", _responses(
                {202: ("started", OBJECT)}, {400: "not a valid scenario for this fleet (the error says where)",
                                            409: "a scenario is running here, or it has node faults this agent "
                                                 "cannot apply", 413: "body over 64 KiB"}),
                body={"text/plain": {"schema": {"type": "string"}, "example": SCENARIO_EXAMPLE}}, tag="console"),
            "get": _op("the scenario running or last run here", _responses({200: ("its progress", OBJECT)}, {}),
                       tag="console")},
        "/v1/console/node-chaos": {"post": _op("kill, pause, resume or restart a node's process (local fleets)",
            _responses({200: ("done", OBJECT)}, {400: BAD, 404: "unknown node", 409: "not possible here: a "
                        "deployment whose processes this agent cannot reach, or the node's state forbids it",
                        413: "body over 4 KiB"}),
            body=_json(node_chaos)["content"], tag="console")},
    }


def _v2() -> dict[str, Any]:
    name = _path("name", "a model name", "matmul")
    version = _path("version", "a model version ('1')", "1")
    unknown = {404: "unknown model or version"}
    infer = _op("run a model (a task: journal, placement, the mesh)", _responses(
        {200: ("outputs", _ref("InferResponse"))},
        {400: BAD, 404: "unknown model or version", 413: "body over limits.max_body_bytes",
         422: "the model file cannot be loaded", 429: "too many tasks pending",
         500: "the model failed while running on these inputs (the error says how)",
         503: "no node can run it now (busy, battery, down)", 504: "no result by the deadline"}),
        params=[_header("Inference-Header-Content-Length", "binary tensors: the JSON header's length",
                        {"type": "string"})], body=_json(_ref("InferRequest"), MATMUL_INFER)["content"], tag="v2")
    repo_body = _json({"type": "object"})["content"]
    ok_empty = {200: ("done", None)}

    def meta(ps: list[dict[str, Any]]) -> dict[str, Any]:
        return {"get": _op("model metadata", _responses({200: ("metadata", _ref("ModelMetadata"))},
                                                        {**unknown, 422: "cannot be loaded"}), params=ps, tag="v2")}

    def config(ps: list[dict[str, Any]]) -> dict[str, Any]:
        return {"get": _op("model configuration", _responses({200: ("config", _ref("ModelConfig"))},
                                                             {**unknown, 422: "cannot be loaded"}), params=ps,
                           tag="v2")}

    def ready(ps: list[dict[str, Any]]) -> dict[str, Any]:
        return {"get": _op("is the model loaded", _responses(
            {200: ("loaded", _ref("ModelReady")),
             400: ("not loaded yet (the protocol's answer), or a model name that is not a name",
                   {"oneOf": [_ref("ModelReady"), _ref("Error")]})}, unknown),
            params=ps, tag="v2")}

    return {
        "/v2/health/live": {"get": _op("liveness", _responses({200: ("live", OBJECT)}, {}), tag="v2")},
        "/v2/health/ready": {"get": _op("readiness", _responses(
            {200: ("ready", OBJECT), 503: ("not ready", OBJECT)}, {}), tag="v2")},
        "/v2": {"get": _op("server metadata", _responses({200: ("metadata", _ref("ServerMetadata"))}, {}), tag="v2")},
        "/v2/models/{name}": meta([name]),
        "/v2/models/{name}/versions/{version}": meta([name, version]),
        "/v2/models/{name}/ready": ready([name]),
        "/v2/models/{name}/versions/{version}/ready": ready([name, version]),
        "/v2/models/{name}/config": config([name]),
        "/v2/models/{name}/versions/{version}/config": config([name, version]),
        "/v2/models/{name}/infer": {"post": {**infer, "parameters": [name, *infer["parameters"]]}},
        "/v2/models/{name}/versions/{version}/infer": {"post": {**infer,
                                                                "parameters": [name, version, *infer["parameters"]]}},
        "/v2/repository/index": {"post": _op("the model repository", _responses(
            {200: ("models", _ref("RepositoryIndex"))}, {400: BAD, 413: "body over 64 KiB"}),
            body=repo_body, body_required=False, tag="v2")},
        "/v2/repository/models/{name}/load": {"post": _op("load a model", _responses(
            ok_empty, {400: BAD, 413: "body over 64 KiB", **unknown, 422: "cannot be loaded"}), params=[name],
            body=repo_body, body_required=False, tag="v2")},
        "/v2/repository/models/{name}/unload": {"post": _op("unload a model", _responses(
            ok_empty, {400: BAD, 413: "body over 64 KiB", **unknown}), params=[name], body=repo_body,
            body_required=False, tag="v2")},
    }


def _access(paths: dict[str, Any]) -> dict[str, Any]:
    """What ``agent.serve.auth`` answers before any route: a Host that is not this node's is a 400
    on every call; a call that changes something (not GET) needs the token (401) and must
    not come from another origin (403)."""
    for ops in paths.values():
        for method, op in ops.items():
            op["responses"].setdefault("400", {"description": "a Host that is not an allowed name for this node",
                                               **_json(_ref("Error"))})
            if method != "get":
                op["security"] = [{"bearer": []}]
                op["responses"]["401"] = {"description": "missing or wrong bearer token", **_json(_ref("Error"))}
                op["responses"]["403"] = {"description": "a cross-origin or cross-site request",
                                          **_json(_ref("Error"))}
            if "requestBody" in op:     # agent.serve.http_body: every body has a size and a time limit
                op["responses"].setdefault("408", {"description": "the body did not arrive in time "
                                                   "(10 s + its size at 256 KiB/s)", **_json(_ref("Error"))})
                op["responses"].setdefault("413", {"description": "the body is over this route's size limit",
                                                   **_json(_ref("Error"))})
    return paths


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a new dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "orbitmesh agent API", "version": "0.1.0",
                 "description": "One satellite's HTTP API: tasks, models, chaos, health, and the Open Inference "
                                "Protocol under /v2. Errors are {\"error\": \"...\"}. Calls that change "
                                "something need the fleet's token (docs/security.md). See docs/api.md."},
        "paths": _access({**_v1(), **_v2()}),
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "description": "the fleet's API token (.fleet/token)"}}},
    }
