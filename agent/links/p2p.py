"""Inter-satellite links over py-libp2p, behind a small trio wrapper.

The agent daemon only sees :class:`P2PHost` and :class:`P2PStream` (plain
``str``/``bytes``); no libp2p type leaks out.  Hosts listen on TCP, secure
every connection with Noise and multiplex streams with yamux.

py-libp2p 0.8.1 is pinned and several of its measured behaviours are worked
around here (paths relative to the installed ``libp2p`` package):

* **Dial delay.**  ``Swarm.dial_peer`` (``network/swarm.py``) staggers
  address attempts "happy eyeballs" style and waits
  ``_HAPPY_EYEBALLS_DELAY`` (250 ms) after starting each one; the wait is only
  cut short once ``ConnectionConfig.max_connections_per_peer`` (default 3)
  connections exist, so a successful single-address dial still pays 250 ms.
  ``BasicHost.connect`` goes through that path.  The delay is a module
  constant, not a config option (``max_connections_per_peer=1`` would also
  cut it short, at the price of trimming duplicate connections from
  simultaneous dials).  We already know the one address of the link, so we
  call ``Swarm.dial_addr(addr, peer_id)`` instead: a single-address dial with
  no stagger (and no negative cache, below).
* **Negative cache.**  When ``dial_peer`` fails it records the peer in
  ``Swarm._negative_peer_cache`` (``_NegativePeerCache``, 60 s TTL) and
  refuses to dial it again until the entry expires, so a satellite that
  restarts is unreachable for a minute.  ``open_stream`` calls the public
  ``Swarm.unblock_peer(peer_id)`` before dialling; that also keeps libp2p's
  internal fallback dial (``Swarm.new_stream`` -> ``dial_peer`` when a
  connection vanished in between) usable.
* **Dial retries.**  ``Swarm._dial_with_retry`` retries a refused dial three
  times with 0.1/0.2/0.4 s back-off by default (``RetryConfig``).  Links are
  managed by the agent, which retries on its own schedule, so we pass
  ``RetryConfig(max_retries=0)`` and a failed dial reports at once.
* **Step timeouts.**  ``ConnectionConfig`` bounds each step of a connection
  (dial, outbound/inbound upgrade, stream protocol negotiation) at 10 s.
  Under load a dial needs longer (issue 14: ~200 turns of both event loops),
  and a step cut short is lost, so every retry would be cut again; the agent
  bounds its own dials (growing timeouts, ``agent/links/transport.py``), so
  every step gets its cap, the inbound ones too: both ends bound the same
  handshake (with 30 s at the listener, a 264-satellite fleet's dials were
  all reset by the listener while negotiating yamux).  The price: an
  unauthenticated inbound connection may hold one of a host's 250 inbound
  slots for 80 s instead of 10 s.
* **Auto-connector.**  ``Swarm.run`` starts ``AutoConnector``
  (``network/auto_connector.py``), which dials every peerstore peer (identify
  fills the peerstore) whenever the node has fewer than ~200 connections,
  i.e. always for us; a disconnected peer is redialled once its 60 s
  disconnect back-off ends.  That would undo :meth:`P2PHost.disconnect` and
  re-poison the negative cache, so it is stopped once the host runs: links
  come and go only when the agent says so.
* **Security.**  ``new_swarm`` offers Noise, TLS, SECIO and plaintext by
  default.  We pass ``sec_opt`` with Noise only and ``muxer_opt`` with yamux
  only, so a peer cannot negotiate us down.
* **Silent listen failure.**  ``Swarm.listen`` returns ``False`` instead of
  raising when it cannot bind (port in use, bad address); :func:`open_host`
  checks that a listener exists and raises :class:`P2PError` otherwise.
* **Leaked sockets on exit.**  Leaving ``BasicHost.run()`` without
  ``await host.close()`` leaves connections open; :func:`open_host` always
  closes inside a shielded (but time-bounded) cancel scope.  On cancellation
  that is not enough by itself: libp2p's own background tasks, cancelled at
  the same moment, abort ``SwarmConn.close`` half-way (the connection is
  marked closed, its socket is not), so the host runs in a task shielded from
  the caller's cancellation and is stopped only after ``host.close()``.
* **Handler exceptions.**  A stream handler's exception propagates into the
  connection's nursery (``SwarmConn._handle_muxed_stream``) and tears the
  whole connection down; our handler adapter logs it and resets only that
  stream.
* **Names.**  ``TCP.dial`` hands ``/dns4`` addresses to
  ``multiaddr.resolvers.DNSResolver`` (dnspython): it reads no ``/etc/hosts``,
  asks the nameservers of ``resolv.conf`` itself, retries three times with a
  5 s per-attempt timeout, and when that yields nothing it passes the name on
  unresolved, so the dial fails with "IP address not found in multiaddr"
  (measured: ``/dns4/localhost/...`` cannot be dialled).  Containers dial each
  other by service name (``/dns4/sat-3/tcp/4001/p2p/...``), so
  :class:`agent.links.names.NameCache` resolves ``/dns``, ``/dns4`` and ``/dns6`` addresses
  before libp2p sees them: through the system resolver (``/etc/hosts``,
  Docker's and Kubernetes' DNS), in a worker thread bounded by
  ``agent.links.names.DNS_LOOKUP_TIMEOUT_S`` (an unknown name on a Docker network takes 10 s to
  fail), one lookup per name at a time, and the answer is cached for
  ``DNS_CACHE_TTL_S``.  After a failed dial the name is looked up again on the
  next one (a restarted container may have a new address); when that lookup
  fails the last known address is used.
* **Logging.**  ``import libp2p`` runs ``libp2p.utils.logging.setup_logging``,
  which sets ``propagate = False`` on the ``"libp2p"`` logger.  Unless
  ``LIBP2P_DEBUG`` asked libp2p to install its own handlers, we let it
  propagate again (so the daemon's logging configuration sees it) at level
  WARNING; ``network/auto_connector.py`` pins its logger to INFO, which we
  reset so it inherits that level.

Not handled yet: a peer that hangs without closing (e.g. SIGSTOP) is never
torn down.  yamux already pings every connection
(``Yamux._measure_rtt_loop`` in ``stream_muxer/yamux/yamux.py``) but ignores a
missing pong; a keepalive would close the connection there, or enable
``ConnectionConfig(enable_health_monitoring=True,
abort_connection_on_ping_failure=True)`` (``network/health/monitor.py``), or
run ``/ipfs/ping/1.0.0`` (``host/ping.py``) from the agent and call
:meth:`P2PHost.disconnect` on timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import multiaddr
import trio

from libp2p import new_swarm
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair as _ed25519_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from agent.atomic import write_atomic
from agent.links.names import NameCache
from agent.links.p2p_errors import P2PError, P2PTimeout

__all__ = [
    "P2PError",
    "P2PHost",
    "P2PTimeout",
    "P2PStream",
    "load_or_create_identity",
    "open_host",
    "peer_id_of",
]

logger = logging.getLogger(__name__)

# `import libp2p` muted its logger (propagate=False); undo that unless the
# user asked libp2p for its own handlers via LIBP2P_DEBUG.  The auto-connector
# module pins its own logger to INFO; let it inherit WARNING like the rest.
if not os.environ.get("LIBP2P_DEBUG"):
    logging.getLogger("libp2p").propagate = True
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.NOTSET)

_SEED_BYTES = 32
# Upper bound on the shielded host shutdown: SwarmConn._cleanup sleeps 100 ms
# per connection, and a wedged peer must not hang the daemon's exit forever.
_HOST_CLOSE_TIMEOUT = 5.0
# libp2p's bounds on each step of a connection (default 10 s; see "Step timeouts" above).
_STEP_TIMEOUT = 80.0                # = agent.links.transport.DIAL_TIMEOUT_MAX_S
# Upper bound on a shielded stream close (one yamux FIN frame).
_STREAM_CLOSE_TIMEOUT = 1.0


# --------------------------------------------------------------------------
# identity


def load_or_create_identity(path: pathlib.Path) -> KeyPair:
    """Load the Ed25519 identity stored at ``path``, creating it if missing.

    The file holds the raw 32-byte Ed25519 seed (mode 0600), so the same file
    always yields the same peer id.  A file of any other size raises
    :class:`ValueError` naming the file rather than silently minting a new
    identity (which would change the satellite's peer id).
    """
    path = pathlib.Path(path)
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        keypair = _ed25519_key_pair()
        _write_private_file(path, keypair.private_key.to_bytes())
        return keypair
    if len(seed) != _SEED_BYTES:
        raise ValueError(
            f"identity file {path} is corrupt: expected a {_SEED_BYTES}-byte "
            f"Ed25519 seed, found {len(seed)} bytes"
        )
    try:
        return _ed25519_key_pair(seed)
    except ValueError as exc:
        raise ValueError(f"identity file {path} is corrupt: {exc}") from exc


def _write_private_file(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600 (dirs created)."""
    write_atomic(path, data, 0o600)


def peer_id_of(keypair: KeyPair) -> str:
    """The base58 peer id (``12D3KooW...``) that ``keypair`` hosts will have."""
    return ID.from_pubkey(keypair.public_key).to_base58()


# --------------------------------------------------------------------------
# streams


class P2PStream:
    """One yamux stream to ``remote_peer_id``, with trio-style method names."""

    def __init__(self, net_stream: INetStream) -> None:
        self._stream = net_stream
        self.remote_peer_id: str = net_stream.muxed_conn.peer_id.to_base58()
        self._closed = False

    async def send_all(self, data: bytes) -> None:
        """Send all of ``data``; :class:`P2PError` if the stream is broken."""
        if self._closed:
            raise P2PError("send_all on a closed stream")
        try:
            await self._stream.write(bytes(data))
        except Exception as exc:
            raise P2PError(f"send to {self.remote_peer_id} failed: {exc!r}") from exc

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Return 1..``max_bytes`` bytes, or ``b""`` once the remote is done.

        EOF, a remote reset and the connection going away all read as
        ``b""``: to the caller each means "no more data will come".
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._closed:
            raise P2PError("receive_some on a closed stream")
        try:
            return await self._stream.read(max_bytes)
        except (StreamEOF, StreamReset):
            return b""
        except Exception as exc:
            raise P2PError(
                f"receive from {self.remote_peer_id} failed: {exc!r}"
            ) from exc

    async def aclose(self) -> None:
        """Close gracefully (yamux FIN: the remote reads ``b""``); idempotent.

        Shielded and time-bounded so that a cancelled caller still releases
        the stream instead of leaking it in the connection's stream table.
        """
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(_STREAM_CLOSE_TIMEOUT, shield=True):
            try:
                await self._stream.close()
            except Exception:
                await self._reset_quietly()

    async def reset(self) -> None:
        """Abort the stream both ways (yamux RST): the muxer drops what it
        buffered and the remote's further writes fail.  For refused streams."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(_STREAM_CLOSE_TIMEOUT, shield=True):
            await self._reset_quietly()

    async def _reset_quietly(self) -> None:
        try:
            await self._stream.reset()
        except Exception:
            pass

    async def __aenter__(self) -> P2PStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


StreamHandler = Callable[[P2PStream], Awaitable[None]]


# --------------------------------------------------------------------------
# host


class P2PHost:
    """A running libp2p host; create it with :func:`open_host`."""

    def __init__(self, host: BasicHost, name_lookup: Callable[[str, int], list[str]] | None = None) -> None:
        self._host = host
        self._swarm = host.get_network()
        self.peer_id: str = host.get_id().to_base58()
        # Serialises dials per peer: Swarm.dial_addr, unlike dial_peer, does
        # not merge concurrent dials to the same peer.
        self._dial_locks: dict[ID, trio.Lock] = {}
        self._names = NameCache(lookup=name_lookup)

    def listen_multiaddrs(self) -> list[str]:
        """Our listen addresses with the real bound port and ``/p2p/<id>``."""
        return [f"{a}/p2p/{self.peer_id}" for a in self._host.get_transport_addrs()]

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Run ``handler(stream)`` for each inbound stream of ``protocol``.

        The stream is closed when the handler returns.  If the handler
        raises, the error is logged and only that stream is reset (libp2p
        would otherwise tear down the whole connection).
        """

        async def adapter(net_stream: INetStream) -> None:
            stream = P2PStream(net_stream)
            try:
                await handler(stream)
            except Exception:
                logger.exception(
                    "%s handler failed for stream from %s",
                    protocol,
                    stream.remote_peer_id,
                )
                await stream._reset_quietly()
            finally:
                await stream.aclose()

        self._host.set_stream_handler(TProtocol(protocol), adapter)

    async def open_stream(
        self, peer_multiaddr: str, protocol: str, *, timeout: float = 5.0
    ) -> P2PStream:
        """Open a ``protocol`` stream to the peer at ``peer_multiaddr``.

        ``peer_multiaddr`` must end in ``/p2p/<peer id>``; the peer is dialled
        on that one address unless a connection already exists.  It may start
        with ``/dns4/NAME`` (or ``/dns``, ``/dns6``): the name is resolved by
        the system resolver and cached (see the module notes).  Everything
        (name lookup, dial, Noise, yamux, protocol negotiation) is bounded by
        ``timeout``; any failure raises :class:`P2PError`.
        """
        addr, peer = _split_peer_multiaddr(peer_multiaddr)
        try:
            with trio.fail_after(timeout):
                await self._ensure_connected(addr, peer)
                net_stream = await self._host.new_stream(peer, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise P2PTimeout(
                f"timed out after {timeout:g}s opening {protocol} to {peer_multiaddr}"
            ) from None
        except P2PError as exc:
            raise P2PError(f"cannot open {protocol} to {peer_multiaddr}: {exc}") from exc
        except Exception as exc:
            raise P2PError(
                f"cannot open {protocol} to {peer_multiaddr}: {_describe(exc)}"
            ) from exc
        return P2PStream(net_stream)

    async def _ensure_connected(self, addr: multiaddr.Multiaddr, peer: ID) -> None:
        lock = self._dial_locks.setdefault(peer, trio.Lock())
        async with lock:
            if self._is_connected(peer):
                return
            # Workarounds: clear the 60 s negative cache, then dial this one
            # address directly (no happy-eyeballs stagger, no cache update).
            self._swarm.unblock_peer(peer)
            target = await self._names.resolve(addr)
            try:
                await self._swarm.dial_addr(target, peer)
            except BaseException:
                self._names.forget(addr)  # ask again next time: it may have moved
                raise

    def _is_connected(self, peer: ID) -> bool:
        return any(not c.is_closed for c in self._swarm.get_connections(peer))

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (its streams read ``b""``)."""
        await self._host.disconnect(_parse_peer_id(peer_id))


@asynccontextmanager
async def open_host(
    keypair: KeyPair, listen_host: str = "127.0.0.1", listen_port: int = 0,
    name_lookup: Callable[[str, int], list[str]] | None = None,
) -> AsyncIterator[P2PHost]:
    """Run a Noise+yamux TCP host on ``listen_host:listen_port`` (0 = any).

    ``name_lookup(name, family)`` resolves ``/dns*`` names instead of the
    system resolver (e.g. :class:`agent.links.directory.SwarmDirectory`).

    The host is closed in a shielded scope on exit, including cancellation,
    because leaving ``BasicHost.run()`` alone leaks connection sockets.  An
    exception raised in the ``async with`` body comes out as itself, not
    wrapped in an ExceptionGroup by the nursery the host runs in.
    """
    listen_addr = _tcp_multiaddr(listen_host, listen_port)
    host = _new_libp2p_host(keypair, listen_addr)
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            run_scope = await nursery.start(_run_host, host, listen_addr)
            if run_scope is not None:
                try:
                    yield P2PHost(host, name_lookup)
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    await _close_host(host)
                    run_scope.cancel()
    except BaseExceptionGroup as group:
        if raised is None or any(e is not raised for e in _leaves(group)):
            raise
    if raised is not None:
        raise raised
    if run_scope is None:
        raise P2PError(f"cannot listen on {listen_host}:{listen_port}")


async def _run_host(
    host: BasicHost,
    listen_addr: multiaddr.Multiaddr,
    *,
    task_status: trio.TaskStatus[trio.CancelScope | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``host`` until its scope (passed to ``task_status``) is cancelled.

    Reports ``None`` instead of a scope if nothing could be bound:
    ``Swarm.listen`` only logs a bind failure and returns ``False``.

    Shielded from the caller's cancellation on purpose: libp2p's background
    tasks close connections in unshielded code, and when they are cancelled
    half-way ``SwarmConn.close`` marks a connection closed without closing
    its socket, so the later ``host.close()`` skips it and the socket leaks.
    Keeping them alive lets :func:`open_host` close everything in order.
    """
    with trio.CancelScope(shield=True) as scope:
        async with host.run([listen_addr]):
            if not host.get_transport_addrs():
                await _close_host(host)
                task_status.started(None)
                return
            await host.get_network().auto_connector.stop()
            task_status.started(scope)
            await trio.sleep_forever()


async def _close_host(host: BasicHost) -> None:
    """``host.close()``, shielded but bounded so a wedged peer cannot hang us."""
    with trio.move_on_after(_HOST_CLOSE_TIMEOUT, shield=True) as scope:
        await host.close()
    if scope.cancelled_caught:
        logger.warning("libp2p host close timed out; sockets may leak")


def _new_libp2p_host(keypair: KeyPair, listen_addr: multiaddr.Multiaddr) -> BasicHost:
    """Build the swarm ourselves: ``new_host`` cannot pass ``retry_config``."""
    noise = NoiseTransport(keypair, noise_privkey=_x25519_key_pair().private_key)
    swarm = new_swarm(
        key_pair=keypair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[listen_addr],
        retry_config=RetryConfig(max_retries=0),
        connection_config=ConnectionConfig(
            dial_timeout=_STEP_TIMEOUT, outbound_upgrade_timeout=_STEP_TIMEOUT,
            outbound_stream_protocol_negotiation_timeout=_STEP_TIMEOUT,
            inbound_upgrade_timeout=_STEP_TIMEOUT, inbound_stream_protocol_negotiation_timeout=_STEP_TIMEOUT),
    )
    return BasicHost(network=swarm)


# --------------------------------------------------------------------------
# parsing helpers


def _tcp_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen_host must be an IP address, got {host!r}") from None
    return multiaddr.Multiaddr(f"/ip{ip.version}/{ip}/tcp/{int(port)}")


def _parse_peer_id(text: str) -> ID:
    try:
        peer = ID.from_base58(text)
    except Exception as exc:
        raise P2PError(f"invalid peer id {text!r}") from exc
    if not peer.to_bytes():
        raise P2PError(f"invalid peer id {text!r}")
    return peer


def _split_peer_multiaddr(text: str) -> tuple[multiaddr.Multiaddr, ID]:
    """Split ``/ip4/../tcp/../p2p/<id>`` into (transport address, peer id)."""
    try:
        maddr = multiaddr.Multiaddr(text)
        peer_text = maddr.value_for_protocol("p2p")
    except Exception as exc:
        raise P2PError(
            f"{text!r} is not a peer multiaddr ending in /p2p/<peer id>"
        ) from exc
    addr = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_text}"))
    return addr, _parse_peer_id(peer_text)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def _describe(exc: BaseException) -> str:
    """Flatten libp2p's exception chains (the root cause is usually deepest)."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc) or type(exc).__name__
        if not any(text in part for part in parts):
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts)
