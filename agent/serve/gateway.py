"""The API gateway of a swarm stack: port 8080 on every machine, any satellite behind it.

Swarm's routing mesh does this with IPVS in the kernel; kernels without IPVS
(this project's CI VMs: no ``/proc/sys/net/ipv4/vs``, no modules) publish the
port but never answer it.  One gateway per machine (a ``global`` service with
its port published in ``host`` mode) forwards each request to a replica found
behind ``tasks.<service>``, round-robin, and tries the next replica when one
refuses the connection (a replica being replaced), which IPVS does not.  Any
replica accepts tasks for the whole fleet and answers for any task, so any
replica will do.  A stack of hosts (``--sats-per-container K``) has no
``tasks.<service>`` of satellites: there ``--peers`` names every satellite by
its own name and slot port, which the swarm's DNS resolves (network aliases).
Bounded: body size, one request's time, connections.
The agents check the API token (``Authorization`` passes through); the gateway
checks Host and Origin itself, since it replaces Host with the replica's
address (docs/security.md).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import sys

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import wallclock
from agent.serve.auth import AccessControl, AccessPolicy, HostPolicy, env_hosts
from agent.links.directory import SwarmDirectory
from agent.serve.http_body import BodyError, read_body

log = logging.getLogger("orbitmesh.gateway")

REFRESH_S = 2.0              # how stale the replica list may get
MAX_BODY_BYTES = 16 << 20    # the agents' own limit (FleetConfig.limits.max_body_bytes)
REQUEST_TIMEOUT_S = 120.0    # a long-poll GET /v1/tasks/{id}?wait=60 fits
TRIES = 3                    # replicas tried when one refuses the connection
_TASK_PATH = re.compile(r"^/v1/tasks/([^/]+)$")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                "content-length", "proxy-connection"}


class Replicas:
    """The satellites behind the service's DNS name, by name, refreshed at most every REFRESH_S.

    Ground stations are replicas too, but a request entering at one with no
    satellite in view would wait for its deadline: new requests go to
    satellites only, and a task's queries go to its entry node (named in its
    id), which answers without a query over the mesh.
    """

    def __init__(self, service_name: str, upstream_port: int):
        self.service_name = service_name
        self.upstream_port = upstream_port
        self.directory = SwarmDirectory(service_name, upstream_port)
        self.by_name: dict[str, str] = {}
        self.sats: list[str] = []
        self._at = -REFRESH_S
        self._turn = itertools.count()

    async def _refresh(self) -> None:
        if wallclock.monotonic() - self._at < REFRESH_S:
            return
        self._at = wallclock.monotonic()
        try:
            _, known = await trio.to_thread.run_sync(self.directory.refresh, 0)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", self.service_name, exc)
            return
        self.by_name = {name: ip for ip, name in known.items()}
        self.sats = sorted(ip for ip, name in known.items() if name.startswith("sat-"))

    async def pick(self, n: int, prefer: str | None = None) -> list[tuple[str, str]]:
        """Up to ``n`` (+ ``prefer``'s) replicas to try, as (what to call it, base URL)."""
        await self._refresh()
        first = [self.by_name[prefer]] if prefer in self.by_name else []
        if self.sats:
            start = next(self._turn)
            rest = [self.sats[(start + k) % len(self.sats)] for k in range(min(n, len(self.sats)))]
            first += [a for a in rest if a not in first]
        return [(a, f"http://{f'[{a}]' if ':' in a else a}:{self.upstream_port}") for a in first]


class PeerReplicas:
    """The satellites a peers file lists, each by its own name and API port: a stack of hosts
    (``orbitmesh stack --sats-per-container K``, agent/ops/stack_hosts.py), where every satellite's
    name resolves to its replica (network aliases) and its slot has a port of its own."""

    def __init__(self, peers_path: str):
        from agent.links.peers import Peers
        peers = Peers.load(peers_path)
        self.service_name = str(peers_path)
        self.urls = {n: peers[n].api.rstrip("/") for n in peers.names()}
        self.sats = [n for n in peers.names() if n.startswith("sat-")]
        self._turn = itertools.count()

    async def pick(self, n: int, prefer: str | None = None) -> list[tuple[str, str]]:
        first = [prefer] if prefer in self.urls else []
        if self.sats:
            start = next(self._turn)
            rest = [self.sats[(start + k) % len(self.sats)] for k in range(min(n, len(self.sats)))]
            first += [a for a in rest if a not in first]
        return [(a, self.urls[a]) for a in first]


def build_app(service_name: str, upstream_port: int, max_body: int = MAX_BODY_BYTES,
              access: AccessPolicy | None = None, peers: str | None = None) -> Starlette:
    """``access``: Host and Origin checks (the token is the agents' to check); default: loopback, IPs and
    ``service_name``.  ``peers``: a peers file naming every satellite's API (a stack of hosts), instead of
    the replicas behind ``service_name``."""
    access = access or AccessPolicy(None, HostPolicy.of([service_name]))
    replicas: Replicas | PeerReplicas = PeerReplicas(peers) if peers else Replicas(service_name, upstream_port)
    client = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=2.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    async def forward(request: Request) -> Response:
        try:
            body = await read_body(request, max_body)     # bounded in size and time
        except BodyError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        tried = []
        task = _TASK_PATH.fullmatch(request.url.path)
        entry = task.group(1).rsplit("-", 1)[0] if task and "-" in task.group(1) else None
        for addr, base in await replicas.pick(TRIES, prefer=entry):
            url = f"{base}{request.url.path}"
            try:
                r = await client.request(request.method, url, params=request.query_params, content=body,
                                         headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                tried.append(f"{addr}: {exc.__class__.__name__}")   # nothing was sent: another replica
                continue
            except httpx.HTTPError as exc:
                return JSONResponse({"error": f"replica {addr} failed mid-request: {exc.__class__.__name__}; "
                                              f"retry (tasks are idempotent with an idempotency_key)"}, 502)
            out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
            out["x-orbitmesh-replica"] = addr
            return Response(r.content, r.status_code, headers=out)
        return JSONResponse({"error": f"no replica behind {replicas.service_name} answers"
                                      + (f" (tried {'; '.join(tried)})" if tried else "")}, 503)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)],
                     middleware=[Middleware(AccessControl, policy=access)])


async def run(service_name: str, port: int, upstream_port: int, allow_hosts: tuple[str, ...] = (),
              peers: str | None = None) -> None:
    cfg = HypercornConfig()
    cfg.bind = [f"0.0.0.0:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.graceful_timeout = 1.0
    if peers:
        log.info("gateway on :%d → the satellites %s lists", port, peers)
    else:
        log.info("gateway on :%d → replicas behind %s:%d", port, service_name, upstream_port)
    access = AccessPolicy(None, HostPolicy.of([service_name], allow_hosts, env_hosts()))
    await serve(build_app(service_name, upstream_port, access=access, peers=peers), cfg,
                shutdown_trigger=trio.sleep_forever)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.serve.gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--service", default="tasks.sat", help="DNS name listing every replica (default: tasks.sat)")
    ap.add_argument("--port", type=int, default=8080, help="port to serve on (default: 8080)")
    ap.add_argument("--upstream-port", type=int, default=8080, help="the replicas' API port (default: 8080)")
    ap.add_argument("--peers", metavar="FILE",
                    help="forward to the satellites this peers file lists, by name and API port (a stack of "
                         "hosts: orbitmesh stack --sats-per-container), instead of the replicas behind --service")
    ap.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="a Host name clients use for this machine (besides loopback and IP addresses; "
                         "also $ORBITMESH_ALLOWED_HOSTS); docs/security.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)       # not a line per forwarded request
    if args.peers:
        from agent.links.peers import Peers
        try:
            Peers.load(args.peers)
        except (OSError, ValueError) as exc:
            print(f"error: --peers {args.peers}: {exc}", file=sys.stderr)
            return 2
    try:
        trio.run(run, args.service, args.port, args.upstream_port, tuple(args.allow_host), args.peers)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
