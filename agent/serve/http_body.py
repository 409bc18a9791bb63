"""Reading an HTTP request body with a size limit and a deadline.

hypercorn bounds the header phase (``keep_alive_timeout`` runs until the
request line and headers are complete; ``h11_max_incomplete_size`` caps their
size) but not the body: its ``read_timeout`` is per receive, so a client that
sends one byte every 2 s holds a connection, a handler and its buffer for
ever, and a per-receive timeout short enough to matter would also cut a
long-poll (``?wait=60``) or an inference that waits for its task.  So every
handler that reads a body reads it through ``read_body``: 413 as soon as the
declared or received size passes the limit (nothing beyond the limit is
buffered), 408 when the whole body has not arrived by its deadline.

The deadline grows with the size: ``BODY_BASE_S`` plus the body at
``BODY_MIN_RATE`` bytes/s, so a 64 MB model upload over a slow link still
fits while a trickle of a few bytes is cut after ~10 s.
"""

from __future__ import annotations

import trio
from starlette.requests import Request


class BodyError(Exception):
    """A body refused; ``status`` is the HTTP status to answer with (400, 408, 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


BODY_BASE_S = 10.0              # any body, however small, gets this long
BODY_MIN_RATE = 256 * 1024      # bytes/s a client must sustain beyond the base


def body_deadline_s(size: int) -> float:
    """Seconds a body of ``size`` bytes may take to arrive."""
    return BODY_BASE_S + size / BODY_MIN_RATE


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body: BodyError 413 past ``limit`` bytes, 408 past its deadline, 400 for a bad Content-Length.

    Without a Content-Length (chunked), the deadline is the one for ``limit``
    bytes; either way the connection is closed after the error, since the rest
    of the body is never read."""
    declared = request.headers.get("content-length")
    expect = limit
    if declared is not None:
        if not declared.isdigit():
            raise BodyError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise BodyError(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
        expect = int(declared)
    seconds = body_deadline_s(expect)
    chunks, size = [], 0
    with trio.move_on_after(seconds) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"body exceeds the {limit}-byte limit")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise BodyError(408, f"body not received within {seconds:.1f} s ({size} of "
                            f"{declared if declared is not None else 'an unknown number of'} bytes arrived); "
                            f"send it faster than {BODY_MIN_RATE // 1024} KiB/s")
    return b"".join(chunks)
