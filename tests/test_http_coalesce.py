"""A response's head and body leave in one socket write (agent/serve/http_coalesce.py)."""

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from agent.serve import http_coalesce


async def test_head_and_body_are_one_write(monkeypatch):
    http_coalesce.install()
    writes: list[bytes] = []
    original = trio.SocketStream.send_all

    async def counting(self, data):
        writes.append(bytes(data))
        await original(self, data)
    monkeypatch.setattr(trio.SocketStream, "send_all", counting)

    async def big(request):
        return Response(b"x" * 50_000, media_type="application/octet-stream")

    async def empty(request):
        return Response(status_code=204)

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, Starlette(routes=[Route("/big", big), Route("/empty", empty)]), cfg)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            for path, size in (("/big", 50_000), ("/empty", 0), ("/big", 50_000)):
                writes.clear()
                resp = await client.get(path)
                assert len(resp.content) == size
                sent = [w for w in writes if w and not w.startswith(b"GET ")]   # the client shares the patch
                assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 ") and sent[0].endswith(resp.content)
        nursery.cancel_scope.cancel()
