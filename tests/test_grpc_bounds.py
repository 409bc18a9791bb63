"""The gRPC server's bounds, in process: an oversized message is refused by gRPC
itself, a handler that runs past this server's limit answers DEADLINE_EXCEEDED,
and a stream left without requests is closed."""

import threading
import time

import grpc
import pytest
import trio

from agent.serve import kserve_grpc
from agent.serve.kserve_grpc import serve_grpc
from agent.serve.oip_proto import METHODS
from tests.conftest import free_port_block

SERVICE = "/inference.GRPCInferenceService/"


class StubService:
    """Knows one model, whose metadata never comes."""

    def check_known(self, name, version=""):
        pass

    async def model_metadata(self, name, version=""):
        await trio.sleep_forever()


async def _with_server(nursery):
    port = free_port_block(1)
    await nursery.start(lambda task_status: serve_grpc(StubService(), "127.0.0.1", port, max_message_bytes=4096,
                                                       task_status=task_status))
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def _unary(channel, name):
    req, resp = METHODS[name]
    return channel.unary_unary(SERVICE + name, request_serializer=req.SerializeToString,
                               response_deserializer=resp.FromString), req


async def test_a_message_over_the_limit_is_refused():
    async with trio.open_nursery() as nursery:
        channel = await _with_server(nursery)
        infer, Req = _unary(channel, "ModelInfer")
        big = Req(model_name="m", raw_input_contents=[b"x" * 10_000])
        with pytest.raises(grpc.RpcError) as err:
            await trio.to_thread.run_sync(lambda: infer(big, timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
        nursery.cancel_scope.cancel()


async def test_a_handler_past_the_servers_limit_answers_deadline_exceeded(monkeypatch):
    monkeypatch.setattr(kserve_grpc, "CONTROL_RPC_S", 0.5)
    async with trio.open_nursery() as nursery:
        channel = await _with_server(nursery)
        metadata, Req = _unary(channel, "ModelMetadata")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:      # the client asks for no deadline at all
            await trio.to_thread.run_sync(lambda: metadata(Req(name="m")))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "longer than this server's 0.5 s limit" in err.value.details()
        assert time.monotonic() - started < 2.0
        channel.close()
        nursery.cancel_scope.cancel()


async def test_a_stream_without_requests_is_closed(monkeypatch):
    monkeypatch.setattr(kserve_grpc, "STREAM_IDLE_S", 0.5)
    async with trio.open_nursery() as nursery:
        channel = await _with_server(nursery)
        req, resp = METHODS["ModelStreamInfer"]
        stream = channel.stream_stream(SERVICE + "ModelStreamInfer", request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString)
        quiet = threading.Event()

        def requests():          # opens the stream, then sends nothing until the test ends
            quiet.wait(10)
            yield from ()

        def call():
            try:
                list(stream(requests(), timeout=10))
            finally:
                quiet.set()

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            await trio.to_thread.run_sync(call)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no request on this stream" in \
            err.value.details()
        assert time.monotonic() - started < 3.0
        channel.close()
        nursery.cancel_scope.cancel()
