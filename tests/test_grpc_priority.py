"""The gRPC thread runs at the normal scheduling policy even when the event loop that
starts it is real time (agent/links/priority.py): it does not preempt onnxruntime's workers."""

import os
import threading

import trio

from agent.serve.kserve_grpc import serve_grpc
from agent.links.priority import normal_priority_for_this_thread, raise_event_loop_priority
from tests.conftest import free_port_block


class StubService:
    def check_known(self, name, version=""):
        pass


async def test_the_grpc_thread_is_not_real_time():
    raised = raise_event_loop_priority()      # permitted as root (the agents' case here); else already normal
    try:
        if raised:
            assert os.sched_getscheduler(0) == os.SCHED_RR
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_grpc(StubService(), "127.0.0.1", free_port_block(1),
                                                               max_message_bytes=4096, task_status=task_status))
            grpc_threads = [t for t in threading.enumerate() if t.name == "grpc"]
            assert grpc_threads and all(os.sched_getscheduler(t.native_id) == os.SCHED_OTHER for t in grpc_threads)
            nursery.cancel_scope.cancel()
    finally:
        normal_priority_for_this_thread()
