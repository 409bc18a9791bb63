"""An in-memory twin of the libp2p host: nodes that share one process talk through it.

``agent/links/transport.py``'s ``LinkLayer`` needs five things of a host (its peer
id and addresses, a stream handler, ``open_stream``, ``disconnect``) and four
of a stream (``send_all``, ``receive_some``, ``aclose``, ``reset``).  Here they
are trio memory channels instead of TCP, Noise and yamux.  Everything above
them is the production code: the link model (release at ``sent + distance/c``,
loss models, bandwidth, cuts, statistics) lives in ``LinkLayer``, in user
space, so links over this twin behave as over libp2p, minus the kernel.

A twin host can *crash* (every stream it has reads ``b""`` at the other end and
no one can dial it) and come back; that is how in-process tests kill a node.
Bounded: each direction of a stream holds at most ``STREAM_BUFFER`` writes, so
a writer that outruns its reader waits, as on a socket.

A write can also be handed straight to the reader (``try_send``): when the
reader has registered a ``sink`` (it waits for data, nothing is queued ahead)
and the sink takes it.  In a satellite host most frames cross such streams,
and the handover saves the writer's and the reader's turns of the event loop;
the frame still goes through the reader's decoder and the release heap.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

from agent.links.p2p import P2PError

STREAM_BUFFER = 64          # writes in flight per direction of a stream before the writer waits
Handler = Callable[["MemoryStream"], Awaitable[None]]


class MemoryStream:
    """One direction pair of a twin stream, seen from one end."""

    def __init__(self, local: "MemoryHost", remote_peer_id: str, send: trio.MemorySendChannel,
                 recv: trio.MemoryReceiveChannel):
        self.local, self.remote_peer_id = local, remote_peer_id
        self._send, self._recv = send, recv
        self._rest = b""
        self._closed = False
        self.peer: MemoryStream | None = None               # the other end
        self.sink: Callable[[bytes], bool] | None = None    # the reader, while it waits with nothing queued

    def set_sink(self, sink: Callable[[bytes], bool] | None) -> None:
        self.sink = sink

    def try_send(self, data: bytes) -> bool:
        """Hand ``data`` to the other end's reader now, if it waits with nothing queued ahead of it
        and takes it; False: write it the usual way (``send_all``)."""
        peer = self.peer
        if self._closed or peer is None or peer._closed or peer.sink is None or peer._rest \
                or self._send.statistics().current_buffer_used:
            return False
        return peer.sink(data)

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise P2PError("send_all on a closed stream")
        try:
            try:
                # Room in the buffer: no wait, so a write costs its writer no extra turn of the loop
                # (a socket with room in its buffer does not block either).
                self._send.send_nowait(bytes(data))
            except trio.WouldBlock:
                await self._send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise P2PError(f"send to {self.remote_peer_id} failed: the stream is gone") from None

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._closed:
            raise P2PError("receive_some on a closed stream")
        if not self._rest:
            try:
                self._rest = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        out, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return out

    async def aclose(self) -> None:
        """The remote reads ``b""`` once it has read what was sent; idempotent."""
        self._drop()

    async def reset(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if not self._closed:
            self._closed = True
            self._send.close()
            self._recv.close()
            self.local.streams.discard(self)


class MemoryNetwork:
    """The process's twin hosts by peer id; dialling one opens a stream pair to it."""

    def __init__(self) -> None:
        self.hosts: dict[str, MemoryHost] = {}

    def host(self, peer_id: str) -> "MemoryHost":
        if peer_id in self.hosts:
            raise ValueError(f"a twin host {peer_id!r} exists already")
        self.hosts[peer_id] = MemoryHost(self, peer_id)
        return self.hosts[peer_id]


class MemoryHost:
    """The same interface as ``agent.links.p2p.P2PHost``, over memory; ``serve`` runs its inbound handlers."""

    def __init__(self, network: MemoryNetwork, peer_id: str):
        self.network, self.peer_id = network, peer_id
        self.handlers: dict[str, Handler] = {}
        self.streams: set[MemoryStream] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def up(self) -> bool:
        return self._nursery is not None

    def listen_multiaddrs(self) -> list[str]:
        return [f"/memory/{self.peer_id}/p2p/{self.peer_id}"]

    def set_stream_handler(self, protocol: str, handler: Handler) -> None:
        self.handlers[protocol] = handler

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept streams until cancelled; then it is down (a crash: every stream it had ends).
        One run at a time: a restart waits for the crash to finish."""
        if self._nursery is not None:
            raise RuntimeError(f"twin host {self.peer_id} is serving already")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.handlers.clear()
            for s in list(self.streams):
                s._drop()

    async def open_stream(self, peer_multiaddr: str, protocol: str, timeout: float = 10.0) -> MemoryStream:
        if not self.up:
            raise P2PError(f"{self.peer_id} is down")
        peer = peer_multiaddr.rstrip("/").rsplit("/p2p/", 1)[-1]
        remote = self.network.hosts.get(peer)
        if remote is None or remote._nursery is None:
            raise P2PError(f"cannot open {protocol} to {peer_multiaddr}: connection refused")
        handler = remote.handlers.get(protocol)
        if handler is None:
            raise P2PError(f"cannot open {protocol} to {peer_multiaddr}: protocol not supported")
        a_send, b_recv = trio.open_memory_channel[bytes](STREAM_BUFFER)
        b_send, a_recv = trio.open_memory_channel[bytes](STREAM_BUFFER)
        mine = MemoryStream(self, peer, a_send, a_recv)
        theirs = MemoryStream(remote, self.peer_id, b_send, b_recv)
        mine.peer, theirs.peer = theirs, mine
        try:
            remote._nursery.start_soon(handler, theirs)
        except RuntimeError:            # it is going down right now (its nursery closes): as if it were down
            raise P2PError(f"cannot open {protocol} to {peer_multiaddr}: connection refused") from None
        self.streams.add(mine)
        remote.streams.add(theirs)
        return mine

    async def disconnect(self, peer_id: str) -> None:
        """End every stream to ``peer_id`` (both ends read ``b""``)."""
        for s in [s for s in self.streams if s.remote_peer_id == peer_id]:
            s._drop()
        remote = self.network.hosts.get(peer_id)
        if remote is not None:
            for s in [s for s in remote.streams if s.remote_peer_id == self.peer_id]:
                s._drop()
