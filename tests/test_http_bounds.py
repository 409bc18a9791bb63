"""The API's HTTP server bounds every body in size and time, over a real socket:
a trickled body is answered 408 by its deadline, an oversized one 413 before it
is buffered, and trickled headers are cut by hypercorn's keep-alive timer."""

import json
import time
from types import SimpleNamespace

import pytest
import trio
from hypercorn.trio import serve

from agent.serve import http_body
from agent.serve.api import build_app, server_config
from tests.conftest import free_port_block

LIMIT = 64 * 1024


def stub_node():
    """Just what the routes touch before they read a body."""
    store = SimpleNamespace(max_model_bytes=LIMIT, has=lambda name, sha=None: True, names=lambda: ["m"])
    return SimpleNamespace(config=SimpleNamespace(limits=SimpleNamespace(max_body_bytes=LIMIT)), store=store)


async def _server(nursery, keep_alive_s=None):
    port = free_port_block(1)
    cfg = server_config("127.0.0.1", port)
    if keep_alive_s is not None:
        cfg.keep_alive_timeout = keep_alive_s
    await nursery.start(lambda task_status: serve(build_app(stub_node()), cfg, shutdown_trigger=trio.sleep_forever,
                                                  task_status=task_status))
    return port


async def _read_response(stream) -> tuple[int | None, dict]:
    """(status, JSON body) of the first response, or (None, {}) if the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:     # closed with our unread bytes in its buffer: a reset
            chunk = b""
        if not chunk:
            return None, {}
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), json.loads(rest[:length])


@pytest.mark.parametrize("method,path", [("POST", "/v1/tasks"), ("PUT", "/v1/models/m"), ("POST", "/v1/chaos"),
                                         ("POST", "/v1/probe"), ("POST", "/v2/models/m/infer"),
                                         ("POST", "/v2/repository/index")])
async def test_a_trickled_body_gets_408_by_its_deadline(monkeypatch, method, path):
    # a short deadline, bytes arriving 5x faster than it: an idle timer reset by each byte never fires
    monkeypatch.setattr(http_body, "BODY_BASE_S", 0.5)
    declared = 1000
    bound = http_body.body_deadline_s(declared)
    async with trio.open_nursery() as nursery:
        port = await _server(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {declared}\r\n\r\n".encode())
        started = time.monotonic()

        async def trickle():
            for _ in range(declared):
                await stream.send_all(b" ")
                await trio.sleep(0.1)       # one byte every 0.1 s, forever as far as the server knows

        async with trio.open_nursery() as client:
            client.start_soon(trickle)
            with trio.fail_after(bound + 5):
                status, body = await _read_response(stream)
            took = time.monotonic() - started
            client.cancel_scope.cancel()
        assert status == 408, (status, body)
        assert "not received within" in body["error"]
        assert bound - 0.1 <= took <= bound + 1.5
        # the rest of the body is never read: the server closes the connection
        with trio.fail_after(2):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_oversized_chunked_body_gets_413_before_it_is_all_sent():
    async with trio.open_nursery() as nursery:
        port = await _server(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        sent = 0
        status = None

        async def send():
            nonlocal sent
            try:
                for _ in range(1000):            # 16 MB offered; the server stops at 64 KB
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as client:
            client.start_soon(send)
            status, body = await _read_response(stream)
            client.cancel_scope.cancel()
        assert status == 413 and f"{LIMIT}-byte limit" in body["error"]
        assert sent < 4 * 1024 * 1024
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_declared_oversized_body_gets_413_without_being_read():
    async with trio.open_nursery() as nursery:
        port = await _server(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"PUT /v1/models/m HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n")
        with trio.fail_after(2):
            status, body = await _read_response(stream)
        assert status == 413 and "999999999 bytes exceeds" in body["error"]
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_trickled_headers_are_cut_by_the_keep_alive_timer():
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, keep_alive_s=1.0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        started = time.monotonic()

        async def trickle():
            try:
                for b in b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                    await stream.send_all(bytes([b]))
                    await trio.sleep(0.2)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as client:
            client.start_soon(trickle)
            with trio.fail_after(5):
                status, _ = await _read_response(stream)
            client.cancel_scope.cancel()
        assert status is None and time.monotonic() - started < 2.5
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_the_api_starts_on_a_loop_too_busy_for_hypercorns_default_start_up_time(virtual_clock):
    """A host starting 99 satellites at once (starlink-s1 live) kept each API's start-up waiting
    past hypercorn's default 60 s, and the satellite failed to start."""
    inner = build_app(stub_node())

    async def slow_start(scope, receive, send):
        if scope["type"] != "lifespan":
            return await inner(scope, receive, send)
        assert (await receive())["type"] == "lifespan.startup"
        await trio.sleep(120.0)
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    port = free_port_block(1)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(slow_start, server_config("127.0.0.1", port),
                                                      shutdown_trigger=trio.sleep_forever, task_status=task_status))
        assert trio.current_time() - t0 >= 120.0
        nursery.cancel_scope.cancel()
