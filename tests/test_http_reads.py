"""hypercorn reads a request in receives of up to 256 KiB (agent/serve/http_reads.py)."""

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from agent.serve import http_reads


async def test_large_reads(monkeypatch):
    http_reads.install()
    asked: list[int] = []
    original = trio.SocketStream.receive_some

    async def recording(self, max_bytes=None):
        asked.append(max_bytes)
        return await original(self, max_bytes)
    monkeypatch.setattr(trio.SocketStream, "receive_some", recording)

    async def echo(request: Request):
        body = await request.body()
        return PlainTextResponse(f"{len(body)} {body[:1].hex()}{body[-1:].hex()}")

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    payload = bytes(range(256)) * 1200          # 300 KB, first byte 00, last ff
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, Starlette(routes=[Route("/echo", echo, methods=["POST"])]), cfg)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            resp = await client.post("/echo", content=payload)
        nursery.cancel_scope.cancel()
    assert resp.text == f"{len(payload)} 00ff"
    assert http_reads.READ_BYTES in asked        # the server side (httpx, the client, reads 64 KiB)
