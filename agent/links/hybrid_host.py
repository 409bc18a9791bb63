"""A satellite's host when it shares its process with others: memory inside, libp2p outside.

A satellite host process (``agent/sat_host.py``) runs K satellites.  Each
keeps its own libp2p host (its own key, peer id and port), so satellites of
other processes dial it and check its Noise identity as before.  Streams to a
satellite of the *same* process go over the in-memory twin
(``agent/links/memory_host.py``) instead: no TCP, Noise or yamux between two
objects in one address space.  The twin host carries the satellite's real
peer id, so ``LinkLayer``'s Hello check (the claimed name must match the
stream's peer id) holds on both carriers, and the link model above is the
same (``agent/links/transport.py`` releases every frame at its emulated due time,
whatever carried it).

Which carrier: a peer whose peer id has a twin in this process's
``MemoryNetwork`` is local.  A local peer that is down (killed) refuses the
dial like a dead process; there is no fall-back to TCP, whose listener died
with it.  Inbound streams come from both carriers: the handler is set on both.

Pause (SIGSTOP would freeze every satellite of the process): a closed
:class:`Gate` holds every read and write of this satellite's streams, both
carriers, both directions, so its links stay open but fall silent, as under
SIGSTOP; opening it lets what waited through (late, as after SIGCONT).
Unlike SIGSTOP, the satellite's own timers and API keep running meanwhile
(docs/sat-hosts.md).
"""

from __future__ import annotations

import trio

from agent.links.memory_host import Handler, MemoryHost
from agent.links.p2p import P2PHost


class Gate:
    """Open, or closed while the satellite is paused; streams wait at a closed gate."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        if not self.paused:
            self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        if self.paused:
            await self._open.wait()


class GatedStream:
    """A stream whose reads and writes wait while its satellite is paused."""

    def __init__(self, stream, gate: Gate):
        self._s, self._gate = stream, gate
        self.remote_peer_id = stream.remote_peer_id

    async def send_all(self, data: bytes) -> None:
        await self._gate.wait()
        await self._s.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        await self._gate.wait()
        data = await self._s.receive_some(max_bytes)
        await self._gate.wait()         # what arrived while paused is read after the resume
        return data

    async def aclose(self) -> None:
        await self._s.aclose()

    async def reset(self) -> None:
        await self._s.reset()

    # The twin's direct handover (agent/links/memory_host.py), shut while the satellite is paused:
    # neither end of a paused satellite's stream moves a frame then.

    def try_send(self, data: bytes) -> bool:
        try_send = getattr(self._s, "try_send", None)       # libp2p streams have none
        return try_send is not None and not self._gate.paused and try_send(data)

    def set_sink(self, sink) -> None:
        set_sink = getattr(self._s, "set_sink", None)
        if set_sink is not None:
            gate = self._gate
            set_sink(None if sink is None else (lambda data: not gate.paused and sink(data)))


def peer_of(multiaddr: str) -> str:
    """The peer id at the end of ``.../p2p/<id>``."""
    return multiaddr.rstrip("/").rsplit("/p2p/", 1)[-1]


class HybridHost:
    """``agent.links.p2p.P2PHost``'s interface over two carriers; both must carry the same peer id."""

    def __init__(self, p2p: P2PHost, twin: MemoryHost, gate: Gate | None = None):
        if p2p.peer_id != twin.peer_id:
            raise ValueError(f"the twin host is {twin.peer_id}, the libp2p host {p2p.peer_id}: one identity per satellite")
        self.p2p, self.twin, self.gate = p2p, twin, gate or Gate()
        self.peer_id = p2p.peer_id

    def is_local(self, peer_id: str) -> bool:
        return peer_id in self.twin.network.hosts

    def listen_multiaddrs(self) -> list[str]:
        return self.p2p.listen_multiaddrs()

    def set_stream_handler(self, protocol: str, handler: Handler) -> None:
        async def gated(stream) -> None:
            await handler(GatedStream(stream, self.gate))
        self.p2p.set_stream_handler(protocol, gated)
        self.twin.set_stream_handler(protocol, gated)

    async def open_stream(self, peer_multiaddr: str, protocol: str, *, timeout: float = 5.0) -> GatedStream:
        await self.gate.wait()
        if self.is_local(peer_of(peer_multiaddr)):
            stream = await self.twin.open_stream(peer_multiaddr, protocol, timeout=timeout)
        else:
            stream = await self.p2p.open_stream(peer_multiaddr, protocol, timeout=timeout)
        return GatedStream(stream, self.gate)

    async def disconnect(self, peer_id: str) -> None:
        if self.is_local(peer_id):
            await self.twin.disconnect(peer_id)
        else:
            await self.p2p.disconnect(peer_id)
