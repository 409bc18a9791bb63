"""Names in link addresses: ``/dns*/NAME/...`` multiaddrs resolved before libp2p dials them.

libp2p's own resolver (dnspython) reads no ``/etc/hosts`` and passes an unresolved
name on, so the dial fails (``agent/links/p2p.py``, "Names"); containers and pods
dial each other by name, so the host resolves names itself, here.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable

import multiaddr
import trio

from agent.links.p2p_errors import P2PError

logger = logging.getLogger(__name__)

# Upper bound on one name lookup (``/dns4/NAME/...``).  Names on a compose
# network or in a cluster answer in about a millisecond; an unknown one takes
# 10 s to fail, which must not eat a whole dial attempt.
DNS_LOOKUP_TIMEOUT_S = 2.0
# A resolved address is reused this long without asking again.
DNS_CACHE_TTL_S = 30.0


_DNS_FAMILIES = {"dns": socket.AF_UNSPEC, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}


def _system_lookup(name: str, family: int) -> list[str]:
    """The addresses of ``name`` from the system resolver, in its order."""
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class NameCache:
    """Resolves ``/dns*/NAME/...`` multiaddrs to ``/ip4`` or ``/ip6`` ones.

    ``getaddrinfo`` cannot be cancelled, so a lookup that outlives its timeout
    is abandoned and keeps its worker thread until the system resolver gives
    up; at most one lookup per name runs at a time (a later call while one is
    still pending falls back at once), and lookups get their own thread
    limiter instead of trio's default one, which inference work shares.
    """

    def __init__(
        self,
        timeout: float = DNS_LOOKUP_TIMEOUT_S,
        ttl: float = DNS_CACHE_TTL_S,
        lookup: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self._lookup = lookup or _system_lookup
        # (name, family) -> (address, resolved at (monotonic), still trusted)
        self._cache: dict[tuple[str, int], tuple[str, float, bool]] = {}
        self._pending: set[tuple[str, int]] = set()
        self._limiter = trio.CapacityLimiter(8)

    async def resolve(self, addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
        """``addr`` with its leading ``/dns*/NAME`` replaced by an IP address."""
        parts = str(addr).split("/")
        if len(parts) < 3 or parts[1] not in _DNS_FAMILIES:
            return addr
        name, family = parts[2], _DNS_FAMILIES[parts[1]]
        ip = await self.lookup(name, family)
        parts[1:3] = ["ip6" if ":" in ip else "ip4", ip]
        return multiaddr.Multiaddr("/".join(parts))

    def forget(self, addr: multiaddr.Multiaddr) -> None:
        """Distrust the cached address of ``addr``'s name (a dial to it failed)."""
        parts = str(addr).split("/")
        if len(parts) >= 3 and parts[1] in _DNS_FAMILIES:
            key = (parts[2], _DNS_FAMILIES[parts[1]])
            if key in self._cache:
                ip, when, _ = self._cache[key]
                self._cache[key] = (ip, when, False)

    async def lookup(self, name: str, family: int = socket.AF_INET) -> str:
        key = (name, family)
        cached = self._cache.get(key)
        if cached and cached[2] and time.monotonic() - cached[1] < self.ttl:
            return cached[0]
        problem = await self._ask(key)
        if problem is None:
            return self._cache[key][0]
        if cached:
            logger.debug("%s; using its last known address %s", problem, cached[0])
            return cached[0]
        raise P2PError(problem)

    async def _ask(self, key: tuple[str, int]) -> str | None:
        """Look ``key`` up into the cache; a description of the failure, or None."""
        name, family = key
        if key in self._pending:
            return f"lookup of {name!r} is still pending"
        self._pending.add(key)

        def run() -> list[str]:
            try:
                return self._lookup(name, family)
            finally:
                self._pending.discard(key)  # set ops are atomic under the GIL

        addrs: list[str] = []
        try:
            with trio.move_on_after(self.timeout) as scope:
                addrs = await trio.to_thread.run_sync(
                    run, abandon_on_cancel=True, limiter=self._limiter
                )
        except (OSError, UnicodeError) as exc:
            return f"cannot resolve {name!r}: {exc}"
        if scope.cancelled_caught:
            return f"lookup of {name!r} timed out after {self.timeout:g}s"
        if not addrs:
            return f"cannot resolve {name!r}: no addresses"
        self._cache[key] = (addrs[0], time.monotonic(), True)
        return None
