"""``orbitmesh agent``: run one satellite (or ground-station) agent.

The command line of the daemon, apart from the operator commands in
``agent/ops/cli.py``: ``orbitmesh`` registers it, and a container's entry point
(``python -m agent.ops.compose node``) runs it in its own process without
importing the operator tools (no import cycle between ``cli`` and ``compose``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    logging.getLogger("hypercorn").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """``orbitmesh``'s options before the command that the agent reads too."""
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--models", type=Path, default=Path("models"), help="built models (default: models/)")


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``agent`` to an ``add_subparsers()`` object."""
    p = sub.add_parser("agent", help="run one satellite agent")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--sat", type=int, help="satellite index")
    who.add_argument("--node", help="node name (sat-N or gs-NAME)")
    who.add_argument("--ground", help="ground station name, as listed in the config (runs node gs-NAME)")
    p.add_argument("--data-dir", required=True, help="identity and state of this agent")
    p.add_argument("--listen", help="HOST:PORT for laser links (default: from this node's peers entry)")
    p.add_argument("--api", help="HOST:PORT for the HTTP API (default: from this node's peers entry)")
    p.add_argument("--grpc", help="HOST:PORT for the gRPC inference service (default: this node's peers entry's "
                                  "\"grpc\"; none if it has none)")
    p.add_argument("--discover", metavar="NAME",
                   help="peers whose names do not resolve are found behind this DNS name, which lists every "
                        "node's address (a swarm's tasks.<service>; agent/links/directory.py)")
    _add_daemon_args(p)
    p.set_defaults(func=cmd_agent)

    h = sub.add_parser("sat-host", help="run several satellite agents in one process (orbitmesh up --sats-per-process)")
    h.add_argument("--names", required=True, help="the satellites of this process, comma-separated (sat-0,sat-1,...)")
    h.add_argument("--host-name", default=None, help="this host's name in logs and its control socket (default: "
                                                     "the first satellite's)")
    h.add_argument("--data-root", required=True, help="the directory holding one data dir per satellite (by name)")
    h.add_argument("--control", type=Path, help="Unix socket for per-satellite kill/restart/status "
                                                "(agent/ops/sat_host_control.py); none if omitted")
    h.add_argument("--bind", metavar="ADDR", help="listen on ADDR (0.0.0.0 in a container) with the ports each "
                                                  "satellite's peers entry lists (default: the entry's own host)")
    _add_daemon_args(h)
    h.set_defaults(func=cmd_sat_host)
    return p


def _add_daemon_args(p: argparse.ArgumentParser) -> None:
    """What one agent and a satellite host both take: the fleet's files, limits and access settings."""
    p.add_argument("--config", required=True, help="fleet config (TOML)")
    p.add_argument("--peers", help="peers file (default: peers.json beside the config)")
    p.add_argument("--workers", type=int,
                   help="inference worker threads (default: one per core); each runs one onnxruntime call at a time")
    p.add_argument("--no-journal", action="store_true",
                   help="keep accepted tasks in memory only (lost if the agent dies; bench/durability.py "
                        "measures what the journal costs)")
    p.add_argument("--no-realtime", action="store_true",
                   help="do not ask for real-time scheduling of the event loop (see agent/links/priority.py)")
    p.add_argument("--roster", metavar="FILE",
                   help="the fleet's signed roster (roster.json): the peers file must agree with it; the members "
                        "it revokes are refused (docs/security.md, Mesh trust)")
    p.add_argument("--authority", metavar="FILE",
                   help="the fleet authority's public key (hex) that must have signed --roster")
    p.add_argument("--api-token-file", type=Path,
                   help="file with the fleet's API token, required on control calls (default: $ORBITMESH_TOKEN, "
                        "else the file $ORBITMESH_TOKEN_FILE; the agent refuses to start without one)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve control calls without a token: an open lab, said loudly in the log")
    p.add_argument("--allow-host", action="append", metavar="NAME[,NAME]",
                   help="another Host name clients use for this node (*.example.com for subdomains; * for any); "
                        "loopback, IP addresses and the fleet's own names are always allowed; also "
                        "$ORBITMESH_ALLOWED_HOSTS")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                   help="a browser origin (https://console.example) allowed to make control calls")
    p.add_argument("--tls-cert", type=Path,
                   help="serve the HTTP API over TLS with this PEM certificate (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")


def cmd_agent(args: argparse.Namespace) -> int:
    from agent import daemon
    from agent.serve.auth import TokenError
    from agent.links.peers import sat_name
    from mesh.nodes import ground_name
    name = args.node or (ground_name(args.ground) if args.ground else sat_name(args.sat))
    peers = args.peers or Path(args.config).parent / "peers.json"
    try:
        listen = daemon.parse_hostport(args.listen) if args.listen else None
        api = daemon.parse_hostport(args.api) if args.api else None
        grpc = daemon.parse_hostport(args.grpc) if args.grpc else None
        auth = _auth_of(args)
    except (ValueError, TokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return daemon.main(name, Path(args.config), Path(peers), Path(args.data_dir), Path(args.models),
                       listen=listen, api=api, realtime=not args.no_realtime, journal=not args.no_journal,
                       discover=args.discover, grpc=grpc, workers=args.workers, auth=auth,
                       roster=(Path(args.roster), Path(args.authority)) if args.roster else None)


def _auth_of(args: argparse.Namespace):
    """Check the shared daemon options; the access settings they give (ValueError, TokenError)."""
    from agent.serve.auth import AgentAuth, agent_token
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise ValueError(f"--workers {args.workers}: use 1 to 64")
    if bool(args.roster) != bool(args.authority):
        raise ValueError("--roster and --authority go together (the roster and the key that signed it)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.no_auth and args.api_token_file:
        raise ValueError("--no-auth and --api-token-file contradict each other")
    return AgentAuth(None if args.no_auth else agent_token(args.api_token_file),
                     tuple(h for a in args.allow_host or () for h in a.split(",")), tuple(args.allow_origin or ()),
                     (str(args.tls_cert), str(args.tls_key)) if args.tls_cert else None)


def cmd_sat_host(args: argparse.Namespace) -> int:
    from agent import sat_host
    from agent.serve.auth import TokenError
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    peers = args.peers or Path(args.config).parent / "peers.json"
    try:
        if not names:
            raise ValueError("--names lists no satellite")
        auth = _auth_of(args)
    except (ValueError, TokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return sat_host.main(args.host_name or names[0], names, Path(args.config), Path(peers), Path(args.data_root),
                         Path(args.models), control=args.control, realtime=not args.no_realtime,
                         journal=not args.no_journal, workers=args.workers, auth=auth,
                         roster=(Path(args.roster), Path(args.authority)) if args.roster else None, bind=args.bind)


def main(argv: list[str]) -> int:
    """Run ``orbitmesh [-v] [--models DIR] agent ...`` (what ``agent.ops.compose``'s ``node`` launches)."""
    ap = argparse.ArgumentParser(prog="orbitmesh")
    add_common_args(ap)
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    return args.func(args)
