"""The dialler's half of a link's handshake: waiting for the peer's ``Hello`` (``agent/links/transport.py``).

The acceptor reads the dialler's Hello first (within ``HELLO_TIMEOUT_S``, at most
``PRE_HELLO_MAX_BYTES`` before it), then answers with its own; the dialler takes the link as up
only once that answer is there.  Up at once, a stream the peer had dropped (our Hello came after
its 5 s on a loaded host) and whose reset never reached us stayed "up" at our end for ever while
the peer waited for a dial (starlink-s1 live: 12 agents never ready).
"""

from __future__ import annotations

import logging

import trio

from agent import wallclock
from agent.links.p2p import P2PError, P2PStream
from mesh.frames import FrameDecoder, LinkFrame, encode_frame
from mesh.wire import Hello

log = logging.getLogger("agent.links.transport")

HELLO_TIMEOUT_S = 5.0            # a stream's Hello must arrive within this (the acceptor's bound)
HELLO_REPLY_TIMEOUT_S = 60.0     # a dialler's wait for the peer's Hello before it dials again: a
#                                  loaded host answers late (15 s: 1,800 re-dials at starlink-s1)
PRE_HELLO_MAX_BYTES = 4096       # a Hello frame is ~40 bytes; pipelined frames after it wait in the decoder
_BROKEN = (P2PError, trio.BrokenResourceError, trio.ClosedResourceError)


async def hello_reply(me: str, peer: str, stream: P2PStream, decoder: FrameDecoder,
                      max_frame_bytes: int) -> list | None:
    """The frames after ``peer``'s Hello on a stream we dialled, or None: no Hello back within
    ``HELLO_REPLY_TIMEOUT_S``, the stream failed or ended, or its first frame was something else.

    Meanwhile our Hello goes again every ``HELLO_TIMEOUT_S`` (the peer ignores a repeat): a
    libp2p stream the peer has reset fails the next write while a read may never notice, so
    a dropped stream is known in seconds, not at the end of the wait."""
    hello = encode_frame(LinkFrame(wallclock.now(), Hello(me)), max_frame_bytes)
    got: list | None = None
    with trio.move_on_after(HELLO_REPLY_TIMEOUT_S) as waited:
        async with trio.open_nursery() as nursery:
            async def knock() -> None:
                try:
                    while True:
                        await trio.sleep(HELLO_TIMEOUT_S)
                        await stream.send_all(hello)
                except _BROKEN as exc:
                    log.info("link %s–%s: dropped before the peer's Hello: %s", me, peer, exc)
                    nursery.cancel_scope.cancel()
            nursery.start_soon(knock)
            try:
                got = await _read_reply(peer, stream, decoder)
            except _BROKEN as exc:
                log.info("link %s–%s broke before the peer's Hello: %s", me, peer, exc)
            nursery.cancel_scope.cancel()
    if waited.cancelled_caught:
        log.info("link %s–%s: no Hello back within %.0fs; dialling again", me, peer, HELLO_REPLY_TIMEOUT_S)
    return got


async def _read_reply(peer: str, stream: P2PStream, decoder: FrameDecoder) -> list | None:
    while True:
        data = await stream.receive_some(PRE_HELLO_MAX_BYTES)
        if not data:
            return None
        items = decoder.feed(data)
        if not items:
            continue
        first = items[0]
        if isinstance(first, LinkFrame) and isinstance(first.msg, Hello) and first.msg.node == peer:
            return items[1:]
        log.warning("link to %s: unexpected first frame %r; closing", peer, first)
        return None
