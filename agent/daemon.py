"""``orbitmesh agent``: run one satellite until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import trio

from agent import collector
from agent.serve.api import serve_api
from agent.atomic import write_atomic
from agent.serve.auth import AgentAuth, warn_open
from agent.serve.kserve_grpc import serve_grpc
from agent.serve.oip import InferenceService
from agent.runtime.job_journal import JobJournal
from agent.runtime.journal import Journal, JournalError
from agent.links.hybrid_host import Gate, HybridHost
from agent.runtime.loopwatch import install_from_env as install_slow_step_logger
from agent.links.memory_host import MemoryNetwork
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.p2p import load_or_create_identity, open_host
from agent.links.peers import Peers
from agent.links.priority import raise_event_loop_priority
from agent.links.roster import load_roster, mesh_trust, read_seed, watch_roster
from mesh.config import FleetConfig, parse_config
from mesh.world import World

log = logging.getLogger("orbitmesh.agent")


def _listen_of(multiaddr: str) -> tuple[str, int]:
    parts = multiaddr.strip("/").split("/")
    try:
        return parts[parts.index("ip4") + 1], int(parts[parts.index("tcp") + 1])
    except (ValueError, IndexError):
        raise ValueError(f"cannot find /ip4/HOST/tcp/PORT in {multiaddr!r}") from None


def bound_to(entry, host: str) -> tuple[tuple[str, int], tuple[str, int], tuple[str, int] | None]:
    """(libp2p, API, gRPC) addresses on ``host`` with the ports ``entry`` lists: a satellite in a
    container listens on every interface there, whatever name the peers file gives it."""
    parts = entry.multiaddr.strip("/").split("/")
    try:
        p2p = int(parts[parts.index("tcp") + 1])
    except (ValueError, IndexError):
        raise ValueError(f"cannot find /tcp/PORT in {entry.multiaddr!r}") from None
    api = urlparse(entry.api).port or 80
    grpc = parse_hostport(entry.grpc)[1] if entry.grpc else None
    return (host, p2p), (host, api), ((host, grpc) if grpc is not None else None)


async def run_agent(name: str, config: FleetConfig, peers: Peers, data_dir: Path, models: Path,
                    listen: tuple[str, int] | None = None, api: tuple[str, int] | None = None,
                    realtime: bool = True, journaled: bool = True, discover: str | None = None,
                    grpc: tuple[str, int] | None = None, workers: int | None = None, *,
                    auth: AgentAuth, revoked: frozenset[str] = frozenset(),
                    roster: tuple[Path, Path] | None = None, fleet_dir: Path | None = None) -> None:
    """One satellite in this process, until SIGTERM or SIGINT (see :func:`run_satellite`)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_satellite, name, config, peers, data_dir, models, listen, api, journaled,
                                    discover, grpc, workers, auth=auth, revoked=revoked, roster=roster,
                                    fleet_dir=fleet_dir))
        if realtime:
            raise_event_loop_priority()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: %s received, shutting down", name, signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def run_satellite(name: str, config: FleetConfig, peers: Peers, data_dir: Path, models: Path,
                        listen: tuple[str, int] | None = None, api: tuple[str, int] | None = None,
                        journaled: bool = True, discover: str | None = None,
                        grpc: tuple[str, int] | None = None, workers: int | None = None, *,
                        auth: AgentAuth, revoked: frozenset[str] = frozenset(),
                        roster: tuple[Path, Path] | None = None, fleet_dir: Path | None = None,
                        memory: MemoryNetwork | None = None, gate: Gate | None = None,
                        sats_per_process: int = 1, world: World | None = None,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one satellite (host, node, gRPC, API) until cancelled; started once its API answers.

    The daemon runs one per process, the satellite host (``agent/sat_host.py``)
    several: cancelling this is a crash of this satellite alone (its links,
    ports and volatile state go; its journals stay on disk).
    ``memory``: the process's twin network when satellites share the process:
    peers with a twin there are reached over memory (``agent/links/hybrid_host.py``);
    ``gate``: closed, it pauses this satellite's links (with ``memory`` only).
    ``sats_per_process``: satellites in this process (with the peers file's size it sets the
    membership's probe and gossip rates, ``mesh.membership_config.scaled_config``).
    ``world``: the process's one World of ``config``, shared by the satellites of a host (built here if None).
    ``fleet_dir``: where the peers file lives (a local fleet's directory lets the console signal agents).
    ``auth``: the token (None only for an explicit open lab), extra hosts and origins, TLS.
    ``revoked``, ``roster``: members the signed roster revokes, and the roster to follow."""
    install_slow_step_logger()
    if auth.token is None:
        warn_open(name)
    # Host names other members and tools use for this node: compose services, pod DNS names, tasks.<service>.
    access = auth.policy([*peers.names(), *(urlparse(peers[n].api).hostname or "" for n in peers.names()),
                          *([discover] if discover else [])])
    entry = peers[name]
    keypair = load_or_create_identity(Path(data_dir) / "identity.key")
    # Every record this node gossips is signed with its own key; others' are
    # checked against the roster's (the peers file, vouched for by --roster).
    trust = mesh_trust(entry.index, read_seed(Path(data_dir) / "identity.key"),
                       {e.index: e.peer_id for e in peers.by_name.values()},
                       revoked=[peers[r].index for r in revoked if r in peers])
    lhost, lport = listen or _listen_of(entry.multiaddr)
    if api is None:
        url = urlparse(entry.api)
        api = (url.hostname or "127.0.0.1", url.port or 80)
    if grpc is None and entry.grpc:
        grpc = parse_hostport(entry.grpc)
    lookup = None
    if discover:
        # swarm replicas have no names of their own: find peers behind the service's name
        from agent.links.directory import SwarmDirectory
        lookup = SwarmDirectory(discover, api[1]).lookup
    async with open_host(keypair, lhost, lport, name_lookup=lookup) as p2p:
        store = ModelStore(models, uploads=Path(data_dir) / "models",
                           session_budget_bytes=config.limits.session_memory_mb << 20,
                           keep_versions=config.limits.model_versions_kept)
        journal = Journal(Path(data_dir) / "tasks.sqlite", config.limits.result_retention_s) if journaled else None
        job_journal = JobJournal(Path(data_dir) / "jobs.sqlite", config.limits.result_retention_s) \
            if journaled else None
        try:
            async with trio.open_nursery() as nursery:
                host = p2p
                if memory is not None:
                    twin = memory.hosts.get(p2p.peer_id)
                    if twin is None:
                        raise ValueError(f"identity mismatch: peers file says {name} is {entry.peer_id}, "
                                         f"but this data dir holds {p2p.peer_id}")
                    await nursery.start(twin.serve)
                    host = HybridHost(p2p, twin, gate)
                node = Node(name, config, peers, host, store, incarnation=next_incarnation(Path(data_dir)),
                            journal=journal, workers=workers, trust=trust, revoked=revoked, job_journal=job_journal,
                            gate=gate, sats_per_process=sats_per_process, world=world)
                await nursery.start(node.run)
                if roster is not None:
                    nursery.start_soon(watch_roster, roster[0], roster[1], peers, node.revoke)
                # ~100k objects from libp2p, onnxruntime, numpy and starlette make a
                # full GC pass take 20–60 ms here, which would hold every frame due
                # in that window.  Freezing the start-up heap makes later passes
                # scan only what the agent allocates while running (~0.01 ms).
                # Done before the API answers, so "ready" means ready.
                collector.freeze_start_up()
                if grpc is not None:     # before the API: a node that answers /v1/health serves gRPC too
                    await nursery.start(partial(serve_grpc, InferenceService(node), grpc[0], grpc[1],
                                                max_message_bytes=config.limits.max_body_bytes, token=auth.token))
                await nursery.start(partial(serve_api, fleet_dir=fleet_dir), node, api[0], api[1], access, auth.tls)
                log.info("%s up: peer %s, links on %s:%d%s, API on %s://%s:%d (%s), gRPC on %s", name,
                         p2p.peer_id, lhost, lport, " (in-process peers over memory)" if memory is not None else "",
                         "https" if auth.tls else "http", *api,
                         "control needs the fleet's token" if auth.token else "OPEN: no token needed",
                         "%s:%d" % grpc if grpc else "none")
                task_status.started()
        finally:
            for j in (journal, job_journal):
                if j is not None:
                    j.close()


def load_fleet(config_path: Path, peers_path: Path,
               roster: tuple[Path, Path] | None) -> tuple[FleetConfig, Peers, frozenset[str]]:
    """The config, the peers file and the members the signed roster revokes (which must agree with the peers)."""
    config = parse_config(Path(config_path).read_text())
    peers = Peers.load(peers_path)
    revoked: frozenset[str] = frozenset()
    if roster is not None:
        signed = load_roster(*roster)
        signed.check_peers(peers)
        revoked = signed.revoked
    return config, peers, revoked


def next_incarnation(data_dir: Path) -> int:
    """One more than the last run's: a restarted agent outranks what the fleet
    remembers of its previous life (suspect or dead), so it rejoins at once.

    A first life is incarnation 0, which every member already holds for it: its
    ``Alive`` is no news and is not flooded.  Starting at 1 made a fleet's start-up
    flood every node's ``Alive`` to every node (n² records, ~60% of a fleet's
    start-up gossip).  A node whose data was lost also starts at 0; if the fleet
    holds it suspect or dead, it refutes above that as any node does."""
    path = data_dir / "incarnation"
    try:
        last = int(path.read_text().strip())
    except (OSError, ValueError):
        last = -1
    inc = max(-1, last) + 1
    write_atomic(path, f"{inc}\n")
    return inc


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(name: str, config_path: Path, peers_path: Path, data_dir: Path, models: Path,
         listen: tuple[str, int] | None = None, api: tuple[str, int] | None = None, realtime: bool = True,
         journal: bool = True, discover: str | None = None, grpc: tuple[str, int] | None = None,
         workers: int | None = None, *, auth: AgentAuth, roster: tuple[Path, Path] | None = None) -> int:
    """``roster``: (signed roster, the fleet authority's public key): the peers file
    must agree with it, and the members it revokes are refused (agent/links/roster.py)."""
    try:
        config, peers, revoked = load_fleet(config_path, peers_path, roster)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if name not in peers:
        log.error("node %r is not in %s", name, peers_path)
        return 2
    if name in revoked:
        log.error("node %r is revoked by the roster %s", name, roster[0])
        return 2
    try:
        trio.run(partial(run_agent, name, config, peers, data_dir, models, listen, api, realtime, journal, discover,
                         grpc, workers, auth=auth, revoked=revoked, roster=roster,
                         fleet_dir=Path(peers_path).resolve().parent))
    except (ValueError, JournalError, OSError) as exc:
        log.error("%s", exc)
        return 2
    return 0
