"""Emulated laser links: one long-lived libp2p stream per neighbour.

Each link has a bounded outbound queue (frames wait there while the stream is
being (re)established), a writer that stamps each frame with its wall-clock
send time, a reader that decodes frames, and a releaser that hands each frame
to the node at ``sent + distance/c + size/bandwidth``.  Releasing at the
receiver cancels the real transport's latency out, as long as that latency is
below the emulated one (loopback: ~0.3 ms; a laser hop: ≥ 2 ms).

The lower-named end of a link dials; the other accepts.  The first frame each
way is ``Hello``, and the claimed node name must match the Noise-authenticated
peer id listed for it in the peers file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from agent.p2p import P2PError, P2PHost, P2PStream
from agent.timer import PreciseTimer
from mesh.link import LinkTiming
from mesh.wire import ISL_PROTOCOL, FrameDecoder, Hello, LinkFrame, Message, WireError, encode_frame

log = logging.getLogger(__name__)

# (message, from_node, released_at_wall, expected_link_delay_s)
DeliverFn = Callable[[Message, str, float, float], Awaitable[None]]
# (from_node, to_node, sent_at_wall) -> one-way propagation delay in seconds
PropagationFn = Callable[[str, str, float], float]

HELLO_TIMEOUT_S = 5.0
REDIAL_MIN_S, REDIAL_MAX_S = 0.2, 5.0


@dataclass
class LinkStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    dropped_queue_full: int = 0
    dropped_malformed: int = 0
    late_frames: int = 0           # arrived after their due time (transport slower than physics)
    max_lateness_s: float = 0.0
    connects: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class Link:
    """One direction pair to a neighbour."""

    peer: str
    multiaddr: str
    dialer: bool
    outbound_send: trio.MemorySendChannel
    outbound_recv: trio.MemoryReceiveChannel
    release_send: trio.MemorySendChannel
    release_recv: trio.MemoryReceiveChannel
    stats: LinkStats = field(default_factory=LinkStats)
    stream: P2PStream | None = None
    up_since: float | None = None
    stream_changed: trio.Event = field(default_factory=trio.Event)

    @property
    def up(self) -> bool:
        return self.stream is not None


class LinkLayer:
    def __init__(self, me: str, host: P2PHost, neighbours: dict[str, tuple[str, str]],
                 propagation: PropagationFn, timing: LinkTiming, deliver: DeliverFn,
                 *, queue_frames: int, max_frame_bytes: int):
        """``neighbours`` maps node name → (multiaddr with /p2p/, peer id)."""
        self.me = me
        self.host = host
        self.propagation = propagation
        self.timing = timing
        self.deliver = deliver
        self.max_frame_bytes = max_frame_bytes
        self._peer_ids = {name: pid for name, (_, pid) in neighbours.items()}
        self.links: dict[str, Link] = {}
        for name, (addr, _) in sorted(neighbours.items()):
            out_s, out_r = trio.open_memory_channel(queue_frames)
            rel_s, rel_r = trio.open_memory_channel(queue_frames)
            self.links[name] = Link(name, addr, dialer=me < name, outbound_send=out_s, outbound_recv=out_r,
                                    release_send=rel_s, release_recv=rel_r)

    # -- public -------------------------------------------------------------

    def send(self, peer: str, msg: Message) -> bool:
        """Queue ``msg`` on the link to ``peer``; False (and counted) if the queue is full."""
        link = self.links[peer]
        try:
            # The emulated transmission starts now, when the frame reaches the
            # laser terminal; the writer task's scheduling delay is transport
            # latency that the receiver cancels out like any other.
            link.outbound_send.send_nowait((time.time(), msg))
            return True
        except trio.WouldBlock:
            link.stats.dropped_queue_full += 1
            return False

    def all_up(self) -> bool:
        return all(link.up for link in self.links.values())

    async def run(self) -> None:
        """Keep every link up until cancelled."""
        self.host.set_stream_handler(ISL_PROTOCOL, self._on_inbound)
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(self._release_loop, link)
                nursery.start_soon(self._write_loop, link)
                if link.dialer:
                    nursery.start_soon(self._dial_loop, link)

    # -- connection management ------------------------------------------------

    async def _dial_loop(self, link: Link) -> None:
        backoff = REDIAL_MIN_S
        while True:
            try:
                stream = await self.host.open_stream(link.multiaddr, ISL_PROTOCOL, timeout=5.0)
            except P2PError as exc:
                log.debug("dial %s failed: %s", link.peer, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, REDIAL_MAX_S)
                continue
            backoff = REDIAL_MIN_S
            await self._serve_stream(link, stream, hello_first=True)
            await trio.sleep(REDIAL_MIN_S)

    async def _on_inbound(self, stream: P2PStream) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        peer, leftover = await self._read_hello(stream, decoder)
        if peer is None:
            await stream.aclose()
            return
        link = self.links[peer]
        await self._serve_stream(link, stream, hello_first=False, decoder=decoder, leftover=leftover)

    async def _read_hello(self, stream: P2PStream, decoder: FrameDecoder) -> tuple[str | None, list]:
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while True:
                data = await stream.receive_some()
                if not data:
                    return None, []
                items = decoder.feed(data)
                if not items:
                    continue
                first, rest = items[0], items[1:]
                if isinstance(first, LinkFrame) and isinstance(first.msg, Hello):
                    name = first.msg.node
                    if self._peer_ids.get(name) != stream.remote_peer_id:
                        log.warning("rejecting stream: %s claims to be %r, which is not a neighbour with that peer id",
                                    stream.remote_peer_id, name)
                        return None, []
                    return name, rest
                log.warning("rejecting stream from %s: first frame is not Hello", stream.remote_peer_id)
                return None, []
        log.warning("rejecting stream from %s: no Hello within %.0fs", stream.remote_peer_id, HELLO_TIMEOUT_S)
        return None, []

    async def _serve_stream(self, link: Link, stream: P2PStream, *, hello_first: bool,
                            decoder: FrameDecoder | None = None, leftover: list | None = None) -> None:
        """Run one stream for ``link`` until it breaks or a newer one replaces it."""
        if link.stream is not None:  # a newer stream (e.g. after a peer restart) wins
            old = link.stream
            link.stream = None
            await old.aclose()
        await stream.send_all(encode_frame(LinkFrame(time.time(), Hello(self.me)), self.max_frame_bytes))
        link.stream = stream
        link.up_since = time.time()
        link.stats.connects += 1
        self._signal(link)
        log.info("link %s–%s up (%s)", self.me, link.peer, "dialled" if hello_first else "accepted")
        decoder = decoder or FrameDecoder(self.max_frame_bytes)
        try:
            if not hello_first and leftover:
                await self._accept_frames(link, leftover)
            await self._read_loop(link, stream, decoder, expect_hello=hello_first)
        except (P2PError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("link %s–%s broke: %s", self.me, link.peer, exc)
        finally:
            if link.stream is stream:
                link.stream = None
                link.up_since = None
                self._signal(link)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _signal(self, link: Link) -> None:
        link.stream_changed.set()
        link.stream_changed = trio.Event()

    async def _read_loop(self, link: Link, stream: P2PStream, decoder: FrameDecoder, *, expect_hello: bool) -> None:
        while link.stream is stream:
            data = await stream.receive_some()
            if not data:
                return
            items = decoder.feed(data)
            if expect_hello and items:
                first = items.pop(0)
                if not (isinstance(first, LinkFrame) and isinstance(first.msg, Hello) and first.msg.node == link.peer):
                    log.warning("link to %s: unexpected first frame %r; closing", link.peer, first)
                    return
                expect_hello = False
            await self._accept_frames(link, items)

    async def _accept_frames(self, link: Link, items: list) -> None:
        for item in items:
            if isinstance(item, WireError):
                link.stats.dropped_malformed += 1
                log.warning("link %s→%s: dropped a malformed frame: %s", link.peer, self.me, item)
                continue
            if isinstance(item.msg, Hello):
                continue
            expected = self.propagation(link.peer, self.me, item.sent_at)
            due = self.timing.due(item.sent_at, expected, item.wire_size)
            link.stats.frames_received += 1
            link.stats.bytes_received += item.wire_size
            await link.release_send.send((due, expected, item))

    # -- data path ------------------------------------------------------------

    async def _write_loop(self, link: Link) -> None:
        pending: tuple[float, Message] | None = None
        while True:
            if pending is None:
                pending = await link.outbound_recv.receive()
            stream = link.stream
            if stream is None:
                await link.stream_changed.wait()
                continue
            # A frame that waited for the stream to come back is sent when it did.
            sent_at = max(pending[0], link.up_since or 0.0)
            frame = encode_frame(LinkFrame(sent_at, pending[1]), self.max_frame_bytes)
            try:
                await stream.send_all(frame)
            except (P2PError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("link %s→%s: write failed (%s); will resend on the next stream", self.me, link.peer, exc)
                if link.stream is stream:
                    link.stream = None
                    self._signal(link)
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                continue
            link.stats.frames_sent += 1
            link.stats.bytes_sent += len(frame)
            pending = None

    async def _release_loop(self, link: Link) -> None:
        timer = PreciseTimer()
        try:
            await self._release_frames(link, timer)
        finally:
            timer.close()

    async def _release_frames(self, link: Link, timer: PreciseTimer) -> None:
        async for due, expected, frame in link.release_recv:
            now = time.time()
            if due > now:
                await timer.sleep_until(due)
            else:
                lateness = now - due
                link.stats.late_frames += 1
                link.stats.max_lateness_s = max(link.stats.max_lateness_s, lateness)
            try:
                await self.deliver(frame.msg, link.peer, time.time(), expected)
            except Exception:  # a bug in one handler must not take the link down
                log.exception("handler failed for a frame from %s", link.peer)


