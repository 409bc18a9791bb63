"""hypercorn reads up to 256 KiB per receive instead of 64 KiB.

Each receive costs two task steps on the event loop (hypercorn's reader, then
the request's handler), ~0.1 ms of CPU each.  A v2 infer body with a
cloud-mask tile is 256 KB: with 64 KiB reads it arrived in ~12 receives, with
256 KiB in ~4 (the client's writes set the rest), and the agent's event loop
spent ~0.5 ms less per request (docs/benchmarks.md, "Open Inference
Protocol").  Still a bound: one connection buffers at most this much per read
before its handler applies the body limit (``agent.serve.http_body``).
"""

from __future__ import annotations

from hypercorn.trio import tcp_server

READ_BYTES = 256 * 1024


def install() -> None:
    """Set hypercorn's per-receive size for this process (idempotent)."""
    tcp_server.MAX_RECV = READ_BYTES
