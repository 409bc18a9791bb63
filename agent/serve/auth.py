"""Access control of a node's API: the fleet's bearer token, and Host/Origin checks.

Why each piece (docs/security.md, "Access control"):

* **Bearer token on every mutating request** (any method but GET, HEAD and
  OPTIONS: tasks, model uploads, faults, probes, time control, v2 inference and repository
  calls).  A browser never attaches an ``Authorization`` header by itself, so
  the token also stops cross-site requests and DNS rebinding from changing
  anything.  Reads (health, metadata, status, membership, metrics) stay open:
  probes, Prometheus and ``orbitmesh status`` need them, and they hold no secret.
* **Host check** on every request: a name that is not the node's own, a
  fleet member's, loopback or a configured one is refused, which is what
  defeats DNS rebinding (the browser sends the attacker's name).  IP literals
  are accepted: a page cannot make a browser send another site's IP as Host
  without that being a different origin, which the Origin check handles.
* **Origin check** on mutating requests: a browser's cross-origin request
  (including a ``Content-Type: text/plain`` "simple" POST) carries an Origin
  that is not this host, and is refused with 403 even before the token is read.

One token per fleet: ``orbitmesh up`` writes it to ``.fleet/token`` (0600),
compose's init service to the fleet volume, a swarm stack reads a Docker
secret, Kubernetes a Secret.  Clients find it in ``$ORBITMESH_TOKEN``,
``$ORBITMESH_TOKEN_FILE`` or the fleet directory (:func:`client_token`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.atomic import write_atomic

log = logging.getLogger("orbitmesh.auth")

TOKEN_ENV = "ORBITMESH_TOKEN"
TOKEN_FILE_ENV = "ORBITMESH_TOKEN_FILE"
ALLOWED_HOSTS_ENV = "ORBITMESH_ALLOWED_HOSTS"
TOKEN_FILE = "token"                   # in a fleet directory
MIN_TOKEN_CHARS = 16                   # a token shorter than this is a mistake (an empty file, a placeholder)
MAX_TOKEN_CHARS = 4096
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class TokenError(ValueError):
    """No usable token where one was asked for."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_token(token: str, where: str) -> str:
    token = token.strip()
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"{where}: an API token is {MIN_TOKEN_CHARS}–{MAX_TOKEN_CHARS} characters without "
                         f"spaces (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def read_token_file(path: Path) -> str:
    try:
        return check_token(Path(path).read_text(), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the API token from {path}: {exc}") from None


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path``, readable by its owner only, atomically."""
    write_atomic(path, token + "\n", 0o600)


def ensure_token(path: Path) -> str:
    """The fleet's token: ``$ORBITMESH_TOKEN`` if set, else the one in ``path``, else a new one; kept in ``path``."""
    path = Path(path)
    env = os.environ.get(TOKEN_ENV)
    if env:
        token = check_token(env, f"${TOKEN_ENV}")
    elif path.exists():
        return read_token_file(path)
    else:
        token = new_token()
    write_token(path, token)
    return token


_fleet_dir = [Path(".fleet")]


def use_fleet_dir(directory: Path) -> None:
    """Where :func:`client_token` looks by default (the CLI's ``--dir``)."""
    _fleet_dir[0] = Path(directory)


def client_token(fleet_dir: Path | None = None) -> str | None:
    """The token a client sends: ``$ORBITMESH_TOKEN``, the file ``$ORBITMESH_TOKEN_FILE``, else
    ``FLEET_DIR/token`` (default: the CLI's ``--dir``, ``.fleet``) if it exists; None without any."""
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env.strip()
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        return read_token_file(Path(path))
    default = Path(fleet_dir if fleet_dir is not None else _fleet_dir[0]) / TOKEN_FILE
    return read_token_file(default) if default.is_file() else None


def agent_token(token_file: Path | None) -> str:
    """The token an agent requires: ``--api-token-file``, else ``$ORBITMESH_TOKEN``, else ``$ORBITMESH_TOKEN_FILE``."""
    if token_file is not None:
        return read_token_file(token_file)
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if os.environ.get(TOKEN_FILE_ENV):
        return read_token_file(Path(os.environ[TOKEN_FILE_ENV]))
    raise TokenError(f"no API token: give --api-token-file FILE or set ${TOKEN_ENV} (`orbitmesh up` makes one in "
                     f".fleet/token), or run an open lab with --no-auth; see docs/security.md")


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` value carries ``expected``, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


# -- Host and Origin ---------------------------------------------------------------------

def split_host(value: str | None) -> str | None:
    """The host name of a Host header value or an origin's netloc, lowercased, without port or brackets."""
    if value is None or any(c in value for c in "@/\\?# \t"):     # userinfo or a path: not a bare host
        return None
    try:
        host = urlsplit("//" + value.strip()).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """Names a request's Host may carry; ``*.example`` matches subdomains, ``*`` anything."""

    names: frozenset[str] = frozenset(LOOPBACK_NAMES)
    allow_ip_literals: bool = True

    @classmethod
    def of(cls, *groups: Iterable[str]) -> "HostPolicy":
        names = set(LOOPBACK_NAMES)
        for group in groups:
            for n in group:
                n = n.strip().lower().strip("[]").rstrip(".")
                if n:
                    if "*" in n[1:] or (n.startswith("*") and n != "*" and not n.startswith("*.")):
                        raise ValueError(f"allowed host {n!r}: a wildcard must be like '*.example.com'")
                    names.add(n)
        return cls(frozenset(names))

    def allows(self, host: str | None) -> bool:
        if host is None:
            return False
        if "*" in self.names or host in self.names or (self.allow_ip_literals and _is_ip(host)):
            return True
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self.names)


@lru_cache(maxsize=8)
def _host_policy(groups: tuple[tuple[str, ...], ...]) -> HostPolicy:
    """One policy per set of names: the satellites of a host each name the whole fleet's hosts
    (two per member, ~150 KB per satellite at starlink-s1's size otherwise)."""
    return HostPolicy.of(*groups)


def env_hosts() -> list[str]:
    return [h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None                          # None: an open lab (--no-auth)
    hosts: HostPolicy = field(default_factory=HostPolicy)
    origins: frozenset[str] = frozenset()      # extra allowed origins, "https://console.example"


class AccessControl:
    """ASGI middleware applying an :class:`AccessPolicy`; refusals are JSON ``{"error": ...}``."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope["method"], Headers(scope=scope), scope.get("scheme", "http"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, method: str, headers: Headers, scheme: str = "http") -> JSONResponse | None:
        raw_host = headers.get("host")
        host = split_host(raw_host)
        # HTTP/1.0 without Host cannot come from a browser; anything else must name an allowed host.
        if raw_host is not None and not self.policy.hosts.allows(host):
            return JSONResponse({"error": f"Host {raw_host!r} is not an allowed name for this node; add it with "
                                          f"--allow-host (DNS-rebinding protection, docs/security.md)"}, 400)
        if method.upper() in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, raw_host, scheme):
            return JSONResponse({"error": f"cross-origin request from {origin!r} refused: control calls must come "
                                          f"from the node's own origin or an --allow-origin"}, 403)
        if headers.get("sec-fetch-site") == "cross-site":
            return JSONResponse({"error": "cross-site request refused"}, 403)
        if self.policy.token is None:
            return None
        auth = headers.get("authorization")
        if token_matches(self.policy.token, auth):
            return None
        why = "missing bearer token" if not auth else "wrong bearer token"
        return JSONResponse(
            {"error": f"{why}: {method.upper()} needs 'Authorization: Bearer <token>' with the fleet's API token "
                      f"(.fleet/token, $ORBITMESH_TOKEN; docs/security.md)"}, 401,
            headers={"WWW-Authenticate": 'Bearer realm="orbitmesh"' + ("" if not auth else ', error="invalid_token"')})

    def _same_origin(self, origin: str, raw_host: str | None, scheme: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.policy.origins:
            return True
        if origin == "null" or raw_host is None:
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == raw_host.strip().lower() \
            and parts.scheme == scheme


def warn_open(where: str) -> None:
    """The loud line an open lab prints: anyone who reaches the port may change the fleet."""
    log.warning("!!! %s: API authentication is OFF (--no-auth): anyone who can reach this port can submit tasks, "
                "upload models and inject faults; use it only on a private lab network !!!", where)


@dataclass(frozen=True)
class AgentAuth:
    """An agent's access settings, from its command line."""

    token: str | None                          # None: --no-auth
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    tls: tuple[str, str] | None = None         # (certificate, key) PEM files

    def policy(self, fleet_hosts: Iterable[str]) -> AccessPolicy:
        """The policy for a node of a fleet whose members answer at ``fleet_hosts`` (compose service names,
        pod DNS names), besides loopback, this machine's hostname and the allowed extras."""
        import socket
        hosts = _host_policy((tuple(fleet_hosts), (socket.gethostname(),), tuple(self.allow_hosts), tuple(env_hosts())))
        origins = frozenset(o.strip().rstrip("/").lower() for o in self.allow_origins if o.strip())
        return AccessPolicy(self.token, hosts, origins)
