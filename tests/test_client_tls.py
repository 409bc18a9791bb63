"""The client SDK builds httpx's TLS context once per process, not once per client."""

from __future__ import annotations

import httpx
import trio

from agent import client as sdk


async def test_a_thousand_clients_share_one_tls_context(monkeypatch):
    made: list[object] = []
    create = httpx.create_ssl_context

    def counted(*args, **kw):
        made.append(args)
        return create(*args, **kw)
    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    sdk._tls_context.cache_clear()
    try:
        clients = [sdk.Client(f"http://127.0.0.1:{9000 + i}", token="") for i in range(1000)]
        assert len(made) == 1             # each httpx client built its own before (~20 ms to ~0.8 s each)
        for c in clients:
            await c.aclose()
        with trio.fail_after(5):          # and a client still talks: a refused connection is a clear error
            async with sdk.Client("http://127.0.0.1:9", token="") as c:
                try:
                    await c.health()
                except sdk.ApiError as exc:
                    assert exc.status == 0 and "127.0.0.1:9" in str(exc)
                else:
                    raise AssertionError("nothing listens on port 9 here")
    finally:
        sdk._tls_context.cache_clear()
