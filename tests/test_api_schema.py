"""The OpenAPI document is the API, and a schemathesis run against a live agent finds no 5xx (issue 18).

``GET /openapi.json`` is written by hand (agent/serve/openapi.py); the first test
keeps it and the routes in step.  The fuzz run starts a real two-satellite
fleet, loads the document from the agent, and sends every operation
schemathesis-generated requests, valid (positive) and invalid (negative),
checking each answer: no 5xx, a documented status and content type, a body
that fits the documented schema, and invalid data refused with a 4xx.
"""

import os
import time
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from agent.serve.api import build_app
from agent.serve.openapi import document
from tests.conftest import AUTH, local_fleet

NODES = {f"sat-{i}" for i in range(64)}

# Examples per operation and mode (at most: hypothesis stops early where there is little to vary).
EXAMPLES = int(os.environ.get("ORBITMESH_SCHEMA_EXAMPLES", "30"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


def test_every_route_is_in_the_document_and_nothing_else():
    node = SimpleNamespace(config=SimpleNamespace(limits=SimpleNamespace(max_body_bytes=1)))
    routes = {(r.path, m) for r in build_app(node).routes for m in r.methods if m != "HEAD"}
    documented = {(path, method.upper()) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented, f"routes only: {sorted(routes - documented)}; " \
                                 f"document only: {sorted(documented - routes)}"
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (method, path)
            assert op["responses"], (method, path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("schema"), models_dir, 2) as (spec, _, peers, _):
        yield SimpleNamespace(api=peers["sat-0"].api, log=spec.directory / "logs" / "sat-0.log")


@pytest.fixture(scope="module")
def api_headers() -> dict[str, str]:
    """Headers every request to the fleet carries: the session's bearer token (tests/conftest.py)."""
    return dict(AUTH)


def test_the_document_is_served_and_loads_in_schemathesis(fleet, api_headers):
    api = fleet.api
    served = httpx.get(f"{api}/openapi.json", headers=api_headers, timeout=10).json()
    assert served == document()
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", headers=dict(api_headers))
    labels = {r.ok().label for r in schema.get_all_operations()}
    documented = {f"{m.upper()} {p}" for p, ops in document()["paths"].items() for m in ops}
    # loaded from its own URL, schemathesis leaves out the operation that serves the document
    assert labels == documented - {"GET /openapi.json"}


@pytest.mark.timeout(900)      # ~1 min here; several on a machine busy with other work
def test_schemathesis_finds_no_server_error_on_a_live_agent(fleet, api_headers):
    api = fleet.api
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", headers=dict(api_headers))
    calls, accepted, statuses, failures, skipped = Counter(), Counter(), Counter(), [], []
    get_task = schema.find_operation_by_label("GET /v1/tasks/{task_id}")
    records = Counter()
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        spec = document()["paths"][op.path][op.method.lower()]
        # Negative data needs something to break: a body, a query or a header (any string is a valid path).
        breakable = "requestBody" in spec or any(p["in"] != "path" for p in spec.get("parameters", []))
        runs = [("positive", op.as_strategy(), EXAMPLES)]
        runs += [(f"example {i}", s, 1) for i, s in enumerate(schema.get_strategies_from_examples(op))]
        if breakable:
            runs.append(("negative", op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE), EXAMPLES))
        for mode, strategy, examples in runs:
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                if op.label == "GET /v1/console/stream" and mode != "negative":
                    case.query = {**(case.query or {}), "frames": 1}   # a stream lasts an hour by default
                if op.label == "POST /v1/console/node-chaos" and isinstance(case.body, dict) \
                        and isinstance(case.body.get("node"), str) and case.body["node"] in NODES:
                    return          # a real kill or pause would take this node's neighbour out of the run
                response = case.call(base_url=api, headers=dict(api_headers), timeout=30)
                calls[(op.label, mode)] += 1
                if response.status_code < 300:
                    accepted[op.label] += 1
                statuses[response.status_code // 100 * 100] += 1
                if op.label == "POST /v1/tasks" and response.status_code in (200, 202):
                    # the record of every task a case created must fit the document too
                    rec = httpx.get(f"{api}/v1/tasks/{response.json()['task_id']}", params={"wait": 10},
                                    headers=api_headers, timeout=30)
                    records[rec.json().get("status")] += 1
                    try:
                        get_task.validate_response(rec)
                    except Exception as exc:  # noqa: BLE001
                        failures.append(f"GET {rec.url}: {str(exc).strip()[:400]}")
                if op.label == "POST /v1/time" and response.status_code == 200:
                    # A random pause or speed would change the fleet's pace for the rest of the run.
                    httpx.post(f"{api}/v1/time", json={"speed": 1.0, "resume": True}, headers=api_headers)
                if op.label == "POST /v1/chaos" and response.status_code in (200, 201):
                    # A random fault (a plane outage) would cut the fleet for the rest of the run.
                    httpx.delete(f"{api}/v1/chaos/{response.json()['fault']['id']}", headers=api_headers)
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:  # noqa: BLE001 — schemathesis groups its failures in one exception
                    failures.append(f"{op.label} [{mode}] {response.status_code}: "
                                    f"{str(exc).strip()[:400]}\n  {case.as_curl_command()[:300]}")

            try:
                run()
            except Exception as exc:  # noqa: BLE001 — e.g. no negative data exists for an operation
                skipped.append(f"{op.label} [{mode}]: {type(exc).__name__}")
    elapsed = time.monotonic() - started
    total = sum(calls.values())
    print(f"\nschemathesis: {total} requests, {len(calls)} operation×mode runs, {elapsed:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}; records of accepted tasks {dict(records)}; "
          f"not run: {skipped}")
    assert not failures, f"{len(failures)} of {total} answers failed:\n" + "\n".join(failures[:20])
    assert not skipped
    # valid work got through as well as garbage was refused
    assert accepted["POST /v1/tasks"] and accepted["POST /v2/models/{name}/infer"] and accepted["POST /v1/time"]
    assert statuses[500] == 0
    assert total >= len(document()["paths"]) * EXAMPLES // 2    # it really ran
    assert httpx.get(f"{api}/v1/health", headers=api_headers, timeout=10).json()["status"] == "ok"
    log = fleet.log.read_text(errors="replace")
    assert "API handler failed" not in log and "Traceback" not in log


# --- the 500s of issue 18's probe, over HTTP on the same live agent -----------------------------------

async def test_a_float32_overflow_is_a_400_and_a_result_that_overflows_is_still_served(fleet, api_headers):
    async with httpx.AsyncClient(base_url=fleet.api, headers=api_headers, timeout=30) as c:
        r = await c.post("/v1/tasks", json={"model": "matmul", "inputs": {"a": [[1e39]], "b": [[1.0]]}})
        assert r.status_code == 400 and "outside the range of float32" in r.json()["error"]
        r = await c.post("/v1/tasks", json={"model": "matmul", "inputs": {"a": [[3e38, 1.0]], "b": [[10.0], [1.0]]},
                                            "target": "sat-0"})
        assert r.status_code == 202, r.text
        for _ in range(2):   # every GET answers, not only the first
            rec = (await c.get(f"/v1/tasks/{r.json()['task_id']}", params={"wait": 20})).json()
            assert rec["status"] == "succeeded" and rec["outputs"]["c"]["data"] == [["Infinity"]]


async def test_concurrent_submissions_with_one_idempotency_key_get_one_task(fleet, api_headers):
    """The model is new and 16 MB, so each submission awaits its load: they all pass the key check
    before any is journaled (which was an IntegrityError, a 500, for all but one)."""
    import trio

    from tests.test_model_store import doubler
    answers = []
    name = f"idem-{int(time.time() * 1000)}"
    body = {"model": name, "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}, "idempotency_key": f"k-{name}"}
    async with httpx.AsyncClient(base_url=fleet.api, headers=api_headers, timeout=30) as c:
        assert (await c.put(f"/v1/models/{name}", content=doubler(3.0, pad=16 << 20))).status_code == 201
        async def post():
            answers.append(await c.post("/v1/tasks", json=body))
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(post)
    assert sorted(r.status_code for r in answers) == [200] * 11 + [202], [r.text for r in answers]
    assert len({r.json()["task_id"] for r in answers}) == 1


async def test_the_fault_after_the_table_limit_is_a_409_that_states_it(fleet, api_headers):
    import trio

    from mesh.chaos import MAX_FAULTS
    codes = Counter()
    async with httpx.AsyncClient(base_url=fleet.api, headers=api_headers, timeout=60) as c:
        async def add(lo, hi):
            for i in range(lo, hi):
                r = await c.post("/v1/chaos", json={"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": f"{i}us",
                                                    "duration_s": 600})
                codes[r.status_code] += 1
        try:
            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(add, 1 + k * MAX_FAULTS // 8, 1 + (k + 1) * MAX_FAULTS // 8)
            assert codes == {201: MAX_FAULTS}
            r = await c.post("/v1/chaos", json={"kind": "delay", "a": "sat-0", "b": "sat-1", "delay": "5s"})
            assert r.status_code == 409 and f"the limit is {MAX_FAULTS}" in r.json()["error"]
            assert (await c.get("/v1/health")).json()["status"] == "ok"
        finally:
            await c.delete("/v1/chaos")
