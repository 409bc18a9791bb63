"""Emulated laser links: one long-lived libp2p stream per neighbour.

Sending: the link's :class:`mesh.link.LinkEmulator` (with any faults laid
over its profile) decides each frame's fate at the moment the node hands it
over: dropped (cut, loss, full transmit queue), or put on the wire once or
twice, stamped with its emulated send time and extra delay (serialization,
jitter, injected delay), possibly corrupted.  A writer task then carries the
bytes over libp2p.

Receiving: each frame's CRC is checked, its due time computed as
``sent_at + distance(t_sent)/c + extra``, and the process's one releaser
(``agent/links/release.py``: one heap, one timer for every link of every node
in the process) hands frames to the node in due-time order, each exactly when
due.  Releasing at the receiver cancels the real transport's latency out, as
long as that latency is below the emulated one (loopback: ~0.3–1 ms; a laser
hop: ≥ 2 ms).  A frame that arrives after its due time is released at once and
counted as late.

The lower-named end of a link dials; the other accepts.  The first frame each
way is ``Hello``, and the claimed node name must match the Noise-authenticated
peer id listed for it in the peers file.

Before Hello a stream is a stranger's and costs bounded memory and time: a
peer id that is not a (non-revoked) member is refused before anything is
read; a member gets at most ``PRE_HELLO_STREAMS_PER_PEER`` streams awaiting
Hello at once (``PRE_HELLO_STREAMS`` in all), each may send at most
``PRE_HELLO_MAX_BYTES`` before its Hello and must send it within
``HELLO_TIMEOUT_S``.  (Before these bounds a stream could buffer a whole
8 MiB frame while its Hello was awaited: 40 streams, +200–390 MB RSS.)
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from agent import wallclock
from agent.links.hello import HELLO_TIMEOUT_S, PRE_HELLO_MAX_BYTES, hello_reply
from agent.links.p2p import P2PError, P2PHost, P2PStream, P2PTimeout
from agent.links.release import FrameReleaser, process_releaser
from mesh.link import Dropped, LinkEmulator, LinkProfile
from mesh.frames import FrameDecoder, LinkFrame, corrupt_frame, encode_frame, frame_from_message, frame_size
from mesh.wire import ISL_PROTOCOL, ChecksumError, Control, Hello, Message, Probe, WireError, encode_message

log = logging.getLogger(__name__)

# (message, from_node, released_at_wall, expected_link_delay_s)
DeliverFn = Callable[[Message, str, float, float], Awaitable[None]]
# (from_node, to_node, sent_at_wall) -> one-way propagation delay in seconds
PropagationFn = Callable[[str, str, float], float]
# (to_node, now) -> the profile of the link direction me→to_node, faults included
ProfileFn = Callable[[str, float], LinkProfile]

PRE_HELLO_STREAMS_PER_PEER = 4   # a restarting peer may race a couple of streams; more is a flood
PRE_HELLO_STREAMS = 64           # all peers together
REDIAL_MIN_S, REDIAL_MAX_S = 0.2, 5.0
# A dial (TCP, Noise, yamux, multistream) takes ~200 turns of both event loops: 2.3 s when each
# loop turns every 10 ms, 11 s at 50 ms (a host of 66 busy satellites).  A timed-out dial is
# thrown away and the next starts from scratch, so a fixed deadline shorter than the dial would
# never connect: after each timeout the next dial gets twice as long, up to the cap.
DIAL_TIMEOUT_S, DIAL_TIMEOUT_MAX_S = 5.0, 80.0
WRITE_BATCH_BYTES = 64 * 1024   # frames queued together are written as one (bounded) write
DIAL_WARN_AFTER_S = 10.0         # a link failing to dial this long is warned about (start-up races are not)
DIAL_WARN_EVERY_S = 60.0         # then once a minute, not per attempt
# Upper bounds (seconds) of the delay-error histogram: release time − due time.
ERROR_BUCKETS_S = (1e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, float("inf"))
DROP_CAUSES = ("out_of_sight", "cut", "loss", "queue_full", "corrupt", "malformed", "overflow")


@dataclass
class LinkStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    control_frames_sent: int = 0   # membership, gossip and hop acks (a subset of the frames above)
    control_bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    probes_sent: int = 0
    probes_received: int = 0
    duplicates_sent: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_CAUSES, 0))
    late_frames: int = 0           # arrived after their due time (transport slower than the emulated link)
    max_lateness_s: float = 0.0
    error_buckets: list[int] = field(default_factory=lambda: [0] * len(ERROR_BUCKETS_S))
    error_sum_s: float = 0.0
    error_max_s: float = 0.0
    connects: int = 0
    dial_failures: int = 0         # failed dials of this end (0 at the accepting end)
    hello_failures: int = 0        # streams that broke before our Hello went out on them
    # Release error of recent probe frames, for exact percentiles in benchmarks.
    probe_errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50_000))

    def record_error(self, err: float) -> None:
        self.error_buckets[bisect.bisect_left(ERROR_BUCKETS_S, err)] += 1
        self.error_sum_s += err
        self.error_max_s = max(self.error_max_s, err)

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("error_buckets", "probe_errors")}
        out["dropped"] = dict(self.dropped)
        out["delay_error_histogram"] = {("+Inf" if b == float("inf") else f"{b:g}"): n
                                        for b, n in zip(ERROR_BUCKETS_S, self.error_buckets)}
        return out


@dataclass
class Link:
    """Both directions of the link to one neighbour."""

    peer: str
    multiaddr: str
    dialer: bool
    emulator: LinkEmulator
    outbound_send: trio.MemorySendChannel
    outbound_recv: trio.MemoryReceiveChannel
    stats: LinkStats = field(default_factory=LinkStats)
    stream: P2PStream | None = None
    up_since: float | None = None
    stream_changed: trio.Event = field(default_factory=trio.Event)
    retiring: bool = False
    retire_at: float = 0.0
    retire_requested: trio.Event = field(default_factory=trio.Event)   # set by ``retire_link``
    dial_failing_since: float | None = None   # first failed dial since the last success
    dial_warned_at: float = float("-inf")
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    releasing: int = 0             # received frames waiting in the process's release heap
    release_space: trio.Event = field(default_factory=trio.Event)   # set when a full link's heap share drains
    closed: bool = False
    writing: bool = False          # the writer task holds frames it has not written yet

    @property
    def up(self) -> bool:
        return self.stream is not None


class LinkLayer:
    def __init__(self, me: str, host: P2PHost, neighbours: dict[str, tuple[str, str]],
                 propagation: PropagationFn, profile: ProfileFn, deliver: DeliverFn,
                 *, seeds: dict[str, int], queue_frames: int, max_frame_bytes: int,
                 on_link_up: Callable[[str], None] | None = None,
                 accept_unknown: Callable[[str, str], tuple[str, int] | str | None] | None = None,
                 members: frozenset[str] | None = None, revoked: frozenset[str] = frozenset()):
        """``neighbours`` maps node name → (multiaddr with /p2p/, peer id).

        ``accept_unknown(name, peer_id)`` decides about an inbound stream from a
        node that is not (yet) a partner: (its multiaddr, link seed) to add it, a reason to
        refuse a known member quietly (counted, logged at INFO), or None (a warning).
        ``members``: the roster's peer ids (revoked ones left out); a stream from
        any other peer is refused unread (None: no such check).  ``revoked``:
        node names refused at Hello.
        """
        self.me = me
        self.host = host
        self.propagation = propagation
        self.profile = profile
        self.deliver = deliver
        self.max_frame_bytes = max_frame_bytes
        self.queue_frames = queue_frames
        self.on_link_up = on_link_up
        self.accept_unknown = accept_unknown
        self.members = members
        self.revoked = revoked
        self._pre_hello: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self._peer_ids = {name: pid for name, (_, pid) in neighbours.items()}
        self._seq = itertools.count()
        self._nursery: trio.Nursery | None = None
        self._releaser: FrameReleaser | None = None   # the process's (agent/links/release.py), from ``run``
        self._running = True
        self.links: dict[str, Link] = {}
        for name, (addr, pid) in sorted(neighbours.items()):
            self._new_link(name, addr, pid, seeds[name])

    def _new_link(self, name: str, addr: str, peer_id: str, seed: int) -> Link:
        # The real transport's buffers are bounded too: the emulated queue
        # drops first, these only hold what the emulator let through.
        out_s, out_r = trio.open_memory_channel(self.queue_frames * 2)
        link = Link(name, addr, dialer=self.me < name, emulator=LinkEmulator(self.profile(name, wallclock.now()), seed),
                    outbound_send=out_s, outbound_recv=out_r)
        self._peer_ids[name] = peer_id
        self.links[name] = link
        return link

    def add_link(self, name: str, addr: str, peer_id: str, seed: int) -> None:
        """Start a link to a new partner (e.g. a satellite that came into view)."""
        if name in self.revoked:
            return
        link = self.links.get(name)
        if link is not None:
            link.retiring = False  # back in view before it was closed
            return
        link = self._new_link(name, addr, peer_id, seed)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_link, link)

    def retire_link(self, name: str, grace_s: float) -> None:
        """Close a link once it went out of view, without losing frames in flight:
        the node stops routing over it now; frames already sent are still
        written and released; after ``grace_s`` (≫ a link's delay) it closes."""
        link = self.links.get(name)
        if link is not None and not link.retiring:
            link.retiring = True
            link.retire_at = wallclock.now() + grace_s
            link.retire_requested.set()

    def revoke(self, name: str, peer_id: str) -> None:
        """The roster revoked ``name``: refuse its streams and close its link now."""
        self.revoked = self.revoked | {name}
        if self.members is not None:
            self.members = self.members - {peer_id}      # a new set: the old one may be shared
        self.retire_link(name, 0.0)

    # -- public -------------------------------------------------------------

    def send(self, peer: str, msg: Message) -> bool:
        """Hand ``msg`` to the link towards ``peer``; False if the link dropped it.

        The emulated transmission starts now; the writer task's scheduling
        delay is transport latency that the receiver cancels out.
        """
        link = self.links[peer]
        now = wallclock.now()
        link.emulator.set_profile(self.profile(peer, now))
        message = encode_message(msg)
        fate = link.emulator.transmit(now, frame_size(message))
        if isinstance(fate, Dropped):
            link.stats.dropped[fate.cause] += 1
            return False
        if isinstance(msg, Control):
            link.stats.control_frames_sent += len(fate)
            link.stats.control_bytes_sent += len(fate) * frame_size(message)
        for i, emission in enumerate(fate):
            frame = frame_from_message(emission.sent_at, emission.extra_s, message, self.max_frame_bytes)
            if emission.corrupt:
                frame = corrupt_frame(frame, next(self._seq))
            if not self._hand_over(link, frame):
                try:
                    link.outbound_send.send_nowait(frame)
                except trio.WouldBlock:  # the real transport is stalled (e.g. peer restarting)
                    link.stats.dropped["overflow"] += 1
                    return False
            if i:
                link.stats.duplicates_sent += 1
        return True

    @staticmethod
    def _hand_over(link: Link, frame: bytes) -> bool:
        """Over the in-memory twin, give ``frame`` straight to the receiving link's reader when
        nothing of this link is queued or being written ahead of it (the order stays); the writer
        and reader tasks then take no turn for it.  False: the writer task writes it."""
        stream = link.stream
        try_send = getattr(stream, "try_send", None)
        if try_send is None or link.writing or link.outbound_recv.statistics().current_buffer_used:
            return False
        if not try_send(frame):
            return False
        link.stats.frames_sent += 1
        link.stats.bytes_sent += len(frame)
        return True

    def all_up(self) -> bool:
        return all(link.up for link in self.links.values())

    async def run(self) -> None:
        """Keep every link up until cancelled."""
        self.host.set_stream_handler(ISL_PROTOCOL, self._on_inbound)
        self._releaser = process_releaser()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for link in list(self.links.values()):
                    nursery.start_soon(self._run_link, link)
                # Stay open: links are added later as partners come into view (a
                # ground station may start with none).
                await trio.sleep_forever()
        finally:
            self._running = False   # frames still in the process's heap are a dead node's: dropped

    async def _run_link(self, link: Link) -> None:
        """All of one link's tasks, under its own cancel scope (closed on retirement)."""
        with link.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, link)
                nursery.start_soon(self._retire_watch, link)
                if link.dialer:
                    nursery.start_soon(self._dial_loop, link)
        link.closed = True          # its frames still in the heap are dropped
        if link.stream is not None:
            with trio.CancelScope(shield=True):
                await link.stream.aclose()
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
        log.info("link %s–%s closed (out of view)", self.me, link.peer)

    async def _retire_watch(self, link: Link) -> None:
        """Close the link once it is retired and drained.  It sleeps until ``retire_link`` asks
        (a poll of every link twice a second was a quarter of an idle satellite's timer
        wake-ups), then polls until the grace has passed and nothing is in flight."""
        while True:
            if not link.retiring:
                link.retire_requested = trio.Event()
                await link.retire_requested.wait()
            await trio.sleep(max(0.5, link.retire_at - wallclock.now()))
            # Frames in flight are written and released before the link closes;
            # a link that is not connected has nobody to write them to, and
            # would otherwise wait for ever (and keep its node from being ready).
            if (link.retiring and wallclock.now() >= link.retire_at
                    and (not link.up or (link.outbound_recv.statistics().current_buffer_used == 0
                                         and link.releasing == 0))):
                link.scope.cancel()
                return

    # -- connection management ------------------------------------------------

    async def _dial_loop(self, link: Link) -> None:
        backoff, timeout = REDIAL_MIN_S, DIAL_TIMEOUT_S
        while True:
            try:
                stream = await self.host.open_stream(link.multiaddr, ISL_PROTOCOL, timeout=timeout)
            except P2PError as exc:
                self._dial_failed(link, exc)
                if isinstance(exc, P2PTimeout):
                    timeout = min(timeout * 2, DIAL_TIMEOUT_MAX_S)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, REDIAL_MAX_S)
                continue
            backoff, timeout = REDIAL_MIN_S, DIAL_TIMEOUT_S
            link.dial_failing_since = None
            await self._serve_stream(link, stream, hello_first=True)
            await trio.sleep(REDIAL_MIN_S)

    def _dial_failed(self, link: Link, exc: P2PError) -> None:
        """Count a failed dial.  A link that keeps failing is never silent: once it has failed
        for ``DIAL_WARN_AFTER_S``, a warning, then at most one per ``DIAL_WARN_EVERY_S`` (a peer
        that is down must not flood the log; a sibling still starting is not warned about)."""
        link.stats.dial_failures += 1
        now = wallclock.now()
        if link.dial_failing_since is None:
            link.dial_failing_since = now
        if now - link.dial_failing_since >= DIAL_WARN_AFTER_S and now - link.dial_warned_at >= DIAL_WARN_EVERY_S:
            link.dial_warned_at = now
            log.warning("link %s–%s: no connection for %.0fs (%d failed dials; the next warning in %.0fs): %s",
                        self.me, link.peer, now - link.dial_failing_since, link.stats.dial_failures,
                        DIAL_WARN_EVERY_S, exc)
        else:
            log.debug("link %s–%s: dial failed: %s", self.me, link.peer, exc)

    async def _on_inbound(self, stream: P2PStream) -> None:
        pid = stream.remote_peer_id
        why = None
        if self.members is not None and pid not in self.members:
            why = "not a member"
        elif self._pre_hello[pid] >= PRE_HELLO_STREAMS_PER_PEER:
            why = "too many streams awaiting Hello from this peer"
        elif sum(self._pre_hello.values()) >= PRE_HELLO_STREAMS:
            why = "too many streams awaiting Hello"
        if why is not None:
            self.refused[why] += 1
            log.warning("refusing a stream from %s: %s", pid, why)
            await stream.reset()
            return
        decoder = FrameDecoder(self.max_frame_bytes)
        self._pre_hello[pid] += 1
        try:
            peer, leftover = await self._read_hello(stream, decoder)
        finally:
            self._pre_hello[pid] -= 1
            if not self._pre_hello[pid]:
                del self._pre_hello[pid]
        if peer is None:
            await stream.reset()          # not aclose: a half-closed stream would still buffer what it is sent
            return
        link = self.links[peer]
        if link.retiring and wallclock.now() >= link.retire_at:
            await stream.aclose()
            return
        await self._serve_stream(link, stream, hello_first=False, decoder=decoder, leftover=leftover)

    async def _read_hello(self, stream: P2PStream, decoder: FrameDecoder) -> tuple[str | None, list]:
        read = 0
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while True:
                if read >= PRE_HELLO_MAX_BYTES:
                    self.refused["no Hello in the first bytes"] += 1
                    log.warning("rejecting stream from %s: no Hello in its first %d bytes", stream.remote_peer_id,
                                PRE_HELLO_MAX_BYTES)
                    return None, []
                data = await stream.receive_some(PRE_HELLO_MAX_BYTES - read)
                if not data:
                    return None, []
                read += len(data)
                items = decoder.feed(data)
                if not items:
                    continue
                first, rest = items[0], items[1:]
                if isinstance(first, LinkFrame) and isinstance(first.msg, Hello):
                    name = first.msg.node
                    if name in self.revoked:
                        self.refused["revoked"] += 1
                        log.warning("rejecting stream: %s is revoked by the roster", name)
                        return None, []
                    if name not in self.links and self.accept_unknown is not None:
                        found = self.accept_unknown(name, stream.remote_peer_id)
                        if isinstance(found, str):
                            # A member whose view of the sky differs from ours by a moment (a station
                            # dialling a satellite that has just set): routine, not an intrusion.
                            self.refused[found] += 1
                            log.info("refusing a stream from %s: %s", name, found)
                            return None, []
                        if found is not None:
                            self.add_link(name, found[0], stream.remote_peer_id, found[1])
                    if name not in self.links or self._peer_ids.get(name) != stream.remote_peer_id:
                        log.warning("rejecting stream: %s claims to be %r, which is not a neighbour with that peer id",
                                    stream.remote_peer_id, name)
                        return None, []
                    return name, rest
                log.warning("rejecting stream from %s: first frame is not Hello", stream.remote_peer_id)
                return None, []
        self.refused["no Hello in time"] += 1
        log.warning("rejecting stream from %s: no Hello within %.0fs", stream.remote_peer_id, HELLO_TIMEOUT_S)
        return None, []

    async def _serve_stream(self, link: Link, stream: P2PStream, *, hello_first: bool,
                            decoder: FrameDecoder | None = None, leftover: list | None = None) -> None:
        """Run one stream for ``link`` until it breaks or a newer one replaces it."""
        if link.stream is not None:  # a newer stream (e.g. after a peer restart) wins
            old = link.stream
            link.stream = None
            await old.aclose()
        # Hello is the real transport's handshake, not an emulated frame.  A stream the peer
        # resets meanwhile (it replaced it, or restarted) breaks this link's attempt only: the
        # dialler tries again, as after any broken stream; it must not end the node.
        decoder = decoder or FrameDecoder(self.max_frame_bytes)
        got: list | None = leftover or []
        try:
            await stream.send_all(encode_frame(LinkFrame(wallclock.now(), Hello(self.me)), self.max_frame_bytes))
            if hello_first:     # the dialler's link is up once the peer's Hello answers ours
                got = await hello_reply(self.me, link.peer, stream, decoder, self.max_frame_bytes)
        except (P2PError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("link %s–%s broke before its Hello: %s", self.me, link.peer, exc)
            got = None
        if got is None:
            link.stats.hello_failures += 1
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        link.stream = stream
        link.up_since = wallclock.now()
        link.stats.connects += 1
        self._signal(link)
        log.info("link %s–%s up (%s)", self.me, link.peer, "dialled" if hello_first else "accepted")
        if self.on_link_up:
            self.on_link_up(link.peer)
        try:
            if got:
                await self._accept_frames(link, got)
            await self._read_loop(link, stream, decoder)
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

    async def _read_loop(self, link: Link, stream: P2PStream, decoder: FrameDecoder) -> None:
        while link.stream is stream:
            # Past Hello, a twin stream may hand frames to this loop while it waits
            # (``_take_now``); never while it works on what it read, so the order stays.
            set_sink = getattr(stream, "set_sink", None)
            if set_sink is not None:
                set_sink(functools.partial(self._take_now, link, stream, decoder))
            try:
                data = await stream.receive_some()
            finally:
                if set_sink is not None:
                    set_sink(None)
            if not data:
                return
            await self._accept_frames(link, decoder.feed(data))

    def _take_now(self, link: Link, stream: P2PStream, decoder: FrameDecoder, data: bytes) -> bool:
        """A twin stream's direct handover: decode and queue ``data`` for release now, unless this
        stream was replaced or the link's share of the release heap is full (then it is written
        and read the usual way, and waits there as on a full socket)."""
        if link.stream is not stream or link.releasing >= self.queue_frames:
            return False
        for item in decoder.feed(data):
            self._accept(link, item)
        return True

    async def _accept_frames(self, link: Link, items: list) -> None:
        for item in items:
            if isinstance(item, LinkFrame):
                while link.releasing >= self.queue_frames:   # bounded: the reader waits, as on a full socket
                    link.release_space = trio.Event()
                    await link.release_space.wait()
            self._accept(link, item)

    def _accept(self, link: Link, item: LinkFrame | WireError) -> None:
        """Count one decoded frame and put it in the process's release heap at its due time."""
        if isinstance(item, WireError):
            cause = "corrupt" if isinstance(item, ChecksumError) else "malformed"
            link.stats.dropped[cause] += 1
            (log.debug if cause == "corrupt" else log.warning)("link %s→%s: dropped a frame: %s",
                                                                link.peer, self.me, item)
            return
        if isinstance(item.msg, Hello):
            return
        expected = self.propagation(link.peer, self.me, item.sent_at) + item.extra_s
        link.stats.frames_received += 1
        link.stats.bytes_received += item.wire_size
        due, now = item.sent_at + expected, wallclock.now()
        if due < now:             # the real transport was slower than the emulated link
            link.stats.late_frames += 1
            link.stats.max_lateness_s = max(link.stats.max_lateness_s, now - due)
        link.releasing += 1
        self._releaser.push(due, functools.partial(self._release, link, expected, item))

    # -- data path ------------------------------------------------------------

    async def _write_loop(self, link: Link) -> None:
        """Write the link's frames in order.  Frames queued together go out in one write (up to
        WRITE_BATCH_BYTES): one wake-up of this task, and over libp2p one yamux frame and one Noise
        message, for a burst instead of one each; the receiver's decoder splits them again."""
        pending: bytes | None = None
        count = 0
        while True:
            if pending is None:
                link.writing = False
                pending, count = await link.outbound_recv.receive(), 1
                link.writing = True
                if len(pending) < WRITE_BATCH_BYTES:
                    parts = [pending]
                    size = len(pending)
                    while size < WRITE_BATCH_BYTES:
                        try:
                            more = link.outbound_recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                        parts.append(more)
                        size += len(more)
                    if len(parts) > 1:
                        pending, count = b"".join(parts), len(parts)
            stream = link.stream
            if stream is None:
                await link.stream_changed.wait()
                continue
            try:
                await stream.send_all(pending)
            except (P2PError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("link %s→%s: write failed (%s); will resend on the next stream", self.me, link.peer, exc)
                if link.stream is stream:
                    link.stream = None
                    self._signal(link)
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                continue
            link.stats.frames_sent += count
            link.stats.bytes_sent += len(pending)
            pending = None

    def _release(self, link: Link, expected: float, frame: LinkFrame, due: float, released: float):
        """The process's releaser calls this when ``frame`` is due: hand it to the node
        (the awaitable it returns), unless its link closed or its node stopped meanwhile."""
        link.releasing -= 1
        if link.releasing < self.queue_frames:
            link.release_space.set()
        if link.closed or not self._running:
            return None
        link.stats.record_error(released - due)
        if isinstance(frame.msg, Probe):
            link.stats.probe_errors.append(released - due)
        return self.deliver(frame.msg, link.peer, released, expected)
