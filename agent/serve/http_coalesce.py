"""One write per HTTP/1.1 response (of one body chunk): hypercorn's status line and headers
leave together with the first body chunk.

hypercorn (0.17) sends a response's head, its body and its end as separate
socket writes.  It sets TCP_NODELAY on its sockets, so nothing waits for
Nagle's algorithm, but each write is still a TCP segment of its own and a
client wakes up for a head with no body.  A v2 infer answer is one bytes
object (JSON header and binary tensors), so head + body in one write is the
whole answer in one go.  This holds the head until the first body chunk (or
the end of a body-less response) and sends them as one.
"""

from __future__ import annotations

import h11
from hypercorn.events import RawData
from hypercorn.protocol import h11 as hyper_h11

_MARK = "_orbitmesh_coalesced"


def install() -> None:
    """Patch hypercorn's HTTP/1.1 protocol once per process (idempotent)."""
    cls = hyper_h11.H11Protocol
    if getattr(cls, _MARK, False):
        return
    original = cls._send_h11_event

    def encode(self, event) -> bytes | None:
        try:
            return self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return None

    async def send(self, event) -> None:
        if isinstance(event, h11.Response):
            self._orbitmesh_head = encode(self, event)
            return
        head = getattr(self, "_orbitmesh_head", None)
        if head is None:
            await original(self, event)
            return
        self._orbitmesh_head = None
        data = encode(self, event)
        await self.send(RawData(data=head + (data or b"")))

    cls._send_h11_event = send
    setattr(cls, _MARK, True)
