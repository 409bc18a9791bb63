"""Issue 18's access-control probe: try each attack on a live two-satellite fleet and print what it got.

Each line: the attack, the status the fleet answered, and whether that is the
refusal wanted.  The baseline (the same call with the token, same-origin, a
proper Host) is measured in the same run, so a refusal is never a dead node.

    python bench/probe_auth.py [--models models]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import AUTH, local_fleet  # noqa: E402

CUT = {"kind": "cut", "a": "sat-0", "b": "sat-1", "duration_s": 1}


def middleware_cost(n: int = 20000) -> tuple[float, float]:
    """µs per request of a one-route Starlette app called in-process (raw ASGI), without and with
    AccessControl (an authorised POST: Host, Origin and token all checked)."""
    import trio
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import Response
    from starlette.routing import Route

    from agent.serve.auth import AccessControl, AccessPolicy

    async def ok(request):
        return Response(b"{}", media_type="application/json")
    token = AUTH["Authorization"].split()[1]
    bare = Starlette(routes=[Route("/v1/chaos", ok, methods=["POST"])])
    checked = Starlette(routes=[Route("/v1/chaos", ok, methods=["POST"])],
                        middleware=[Middleware(AccessControl, policy=AccessPolicy(token))])
    scope = {"type": "http", "method": "POST", "path": "/v1/chaos", "raw_path": b"/v1/chaos", "query_string": b"",
             "scheme": "http", "http_version": "1.1", "root_path": "", "server": ("127.0.0.1", 8100),
             "headers": [(b"host", b"127.0.0.1:8100"), (b"origin", b"http://127.0.0.1:8100"),
                         (b"authorization", AUTH["Authorization"].encode()), (b"content-length", b"0")]}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run(app) -> float:
        for _ in range(500):
            await app(dict(scope), receive, send)
        t0 = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - t0) / n * 1e6
    return trio.run(run, bare), trio.run(run, checked)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()
    rows: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory() as d, local_fleet(Path(d), args.models, 2) as (_, _, peers, _):
        api, grpc_addr = peers["sat-0"].api, peers["sat-0"].grpc
        host = api.split("//", 1)[1]
        with httpx.Client(base_url=api, timeout=10) as http:
            def probe(label: str, want: int | tuple[int, ...], method: str, path: str, **kw) -> None:
                t0 = time.perf_counter()
                r = http.request(method, path, **kw)
                ms = (time.perf_counter() - t0) * 1e3
                wanted = want if isinstance(want, tuple) else (want,)
                rows.append((label, f"{r.status_code} in {ms:.1f} ms: {r.text[:90]}", r.status_code in wanted))

            probe("baseline: fault with the token", 201, "POST", "/v1/chaos", json=CUT, headers=AUTH)
            probe("baseline: read without a token", 200, "GET", "/v1/membership")
            probe("fault without a token", 401, "POST", "/v1/chaos", json=CUT)
            probe("fault with a wrong token", 401, "POST", "/v1/chaos", json=CUT,
                  headers={"Authorization": "Bearer " + "x" * 43})
            probe("task without a token", 401, "POST", "/v1/tasks", json={"model": "digits", "inputs": {}})
            probe("model upload without a token", 401, "PUT", "/v1/models/evil", content=b"onnx")
            probe("v2 infer without a token", 401, "POST", "/v2/models/digits/infer", json={"inputs": []})
            probe("text/plain cross-site POST (CSRF), even with the token", 403, "POST", "/v1/chaos",
                  content=b'{"kind":"cut","a":"sat-0","b":"sat-1"}',
                  headers={**AUTH, "Content-Type": "text/plain", "Origin": "https://evil.example"})
            probe("same-origin POST with the token (200: the same fault again)", (200, 201), "POST", "/v1/chaos",
                  json=CUT,
                  headers={**AUTH, "Origin": f"http://{host}"})
            probe("DNS rebinding: Host evil.example, a read", 400, "GET", "/v1/membership",
                  headers={"Host": "evil.example"})
            probe("DNS rebinding: Host evil.example, a fault with the token", 400, "POST", "/v1/chaos", json=CUT,
                  headers={**AUTH, "Host": "evil.example"})
            http.delete("/v1/chaos", headers=AUTH)
        import tritonclient.grpc as tg
        from tritonclient.utils import InferenceServerException
        client = tg.InferenceServerClient(grpc_addr)
        x = tg.InferInput("input", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        for label, headers, want in (("gRPC infer with the token", {"authorization": AUTH["Authorization"]}, "OK"),
                                     ("gRPC infer without a token", None, "StatusCode.UNAUTHENTICATED")):
            try:
                client.infer("digits", [x], headers=headers)
                got = "OK"
            except InferenceServerException as exc:
                got = str(exc.status())
            rows.append((label, got, got == want))
    bare_us, checked_us = middleware_cost()
    print(f"cost of the checks in process: {bare_us:.1f} µs per request without, {checked_us:.1f} µs with "
          f"(×{checked_us / bare_us:.2f}, +{checked_us - bare_us:.1f} µs)")
    width = max(len(r[0]) for r in rows)
    for label, got, ok in rows:
        print(f"{'ok ' if ok else 'BAD'}  {label:<{width}}  {got}")
    bad = sum(not ok for _, _, ok in rows)
    print(f"{len(rows) - bad}/{len(rows)} as wanted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
