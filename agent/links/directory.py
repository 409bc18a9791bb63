"""Find a node's address where nodes have no DNS names of their own (Docker Swarm replicas).

A swarm gives a replicated service one name for all its tasks
(``tasks.<service>``: every healthy replica's address) but none per replica:
the hostname a stack sets is not resolvable (measured on Docker 20.10), and
task names carry random ids.  Every agent already answers ``GET /v1/health``
with its node name, so the directory resolves ``tasks.<service>``, asks each
address it does not know yet who it is, and keeps the map.  A replaced
replica has a new address: its old one leaves ``tasks.<service>`` and the
next lookup finds the new one.  Used as :class:`agent.links.names.NameCache`'s
lookup (blocking, in a worker thread).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ASK_TIMEOUT_S = 1.5
MAX_PARALLEL = 8


def resolve_all(name: str, family: int) -> list[str]:
    """Every address the system resolver has for ``name``, in its order."""
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


class DirectoryError(OSError):
    """No replica behind the service name says it is the node asked for."""


class SwarmDirectory:
    def __init__(self, service_name: str, api_port: int, timeout: float = ASK_TIMEOUT_S):
        self.service_name = service_name
        self.api_port = api_port
        self.timeout = timeout
        self._by_ip: dict[str, str] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str, family: int = socket.AF_INET) -> list[str]:
        """Addresses of node ``name`` (the system resolver is not asked: on a swarm
        it would forward the unknown name to the host's DNS and wait)."""
        return [self.find(name, family)]

    def find(self, name: str, family: int = socket.AF_INET) -> str:
        live, known = self.refresh(family, recheck=name)
        found = [ip for ip, n in known.items() if n == name]
        if not found:
            raise DirectoryError(f"{name} is not among the {len(live)} replicas behind {self.service_name}")
        return found[0]

    def refresh(self, family: int = socket.AF_INET, recheck: str | None = None) -> tuple[list[str], dict[str, str]]:
        """(every address behind the service, the names of those that answered).

        Addresses not named yet are asked, and so is the one believed to be
        ``recheck`` (its replica may have been replaced meanwhile).
        """
        live = resolve_all(self.service_name, family)
        with self._lock:
            self._by_ip = {ip: n for ip, n in self._by_ip.items() if ip in live}   # replaced replicas leave
            known = dict(self._by_ip)
        ask = [ip for ip in live if ip not in known or known[ip] == recheck]
        if ask:
            with ThreadPoolExecutor(min(MAX_PARALLEL, len(ask))) as pool:
                answers = dict(zip(ask, pool.map(self._whois, ask)))
            with self._lock:
                for ip, who in answers.items():
                    if who is None:
                        self._by_ip.pop(ip, None)
                    else:
                        self._by_ip[ip] = who
                known = dict(self._by_ip)
        return live, known

    def _whois(self, ip: str) -> str | None:
        host = f"[{ip}]" if ":" in ip else ip
        try:
            with urllib.request.urlopen(f"http://{host}:{self.api_port}/v1/health", timeout=self.timeout) as r:
                return json.loads(r.read(1 << 20)).get("node")
        except (OSError, ValueError, urllib.error.URLError):
            return None
