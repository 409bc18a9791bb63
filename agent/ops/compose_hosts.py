"""Satellite hosts in containers: ``orbitmesh compose --sats-per-container K``.

The container form of ``orbitmesh up --sats-per-process K`` (``agent/sat_host.py``,
docs/sat-hosts.md): ⌈N/K⌉ services ``host-0`` … each run K consecutive satellites
in one process; ground stations keep a container each.

What each satellite keeps, as in its own container: its key (issued by the init
service into its own ``<name>-data`` volume, mounted in its host at
``/data/<name>``), peer id, journals, and its own API and gRPC ports. The
satellites of one container share its network namespace, so the satellite in
slot s listens on ports of its own (:func:`agent.links.fleet_identity.slot_ports`),
and ``peers.json`` says so; each satellite's name is a network alias of its
host, so ``sat-7:4002`` reaches sat-7 from any container, and its published
host ports stay ``api_base + i`` and ``grpc_base + i``.

Chaos: a container is killed, paused or restarted through the engine as a whole
(a correlated failure of its K satellites, like losing a plane); one satellite
is killed, paused, resumed or restarted through the host's control socket inside
the container (``agent/ops/engine_chaos.py`` runs :func:`control_main` there with
``docker exec``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent.links.fleet_identity import ComposeError, slot_ports
from agent.ops.fleet import MAX_SATS_PER_CONTAINER, container_groups, container_slots  # noqa: F401 (re-exported)

log = logging.getLogger("orbitmesh.compose")

CONTROL_SOCKET = "/run/orbitmesh/control.sock"     # inside a host container; the fleet volume is read-only
# the fleet's API token in a host container: compose's fleet volume, or a swarm stack's secret
TOKEN_FILES = ("/fleet/api-token", "/run/secrets/api-token")
KEY_SECRET_PREFIX = "node-key-"     # swarm: /run/secrets/node-key-<name>, one per hosted satellite (stack_hosts.py)
def healthcheck(group: list[str], want: str = '"ready":true') -> list[str]:
    """Healthy once every satellite of the container answers ready (bash's /dev/tcp: no
    interpreter started per check, see ``agent.ops.compose.HEALTHCHECK``); ``want``: what each
    health answer must hold (a swarm stack asks only ``"status":"ok"``, agent/ops/stack_hosts.py)."""
    ports = " ".join(str(slot_ports(s)[1]) for s in range(len(group)))
    # ``$$``: compose and stack files interpolate ``$p`` themselves (to "", the variable being
    # unset there), so the shell must be handed an escaped one.
    return ["CMD", "bash", "-c",
            f"for p in {ports}; do exec 3<>/dev/tcp/127.0.0.1/$$p && "
            "printf 'GET /v1/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
            f"grep -q '{want}' <&3 || exit 1; exec 3<&-; done"]


def published_ports(spec: Any, index_of: dict[str, int], group: list[str]) -> list[str]:
    """sat-i's API on the host's ``api_base + i`` and gRPC on ``grpc_base + i``, as with a
    container each, mapped onto its slot's ports inside the container."""
    out = []
    for slot, name in enumerate(group):
        i = index_of[name]
        if spec.publish == "all" or (spec.publish == "first" and i == 0):
            _, api, grpc = slot_ports(slot)
            out += [f"{spec.api_host}:{spec.api_base_port + i}:{api}",
                    f"{spec.api_host}:{spec.grpc_base_port + i}:{grpc}"]
    return out


def host_command(host: str, group: list[str], fleet_dir: str, data_dir: str, realtime: bool) -> list[str]:
    cmd = ["python", "-m", "agent.ops.compose", "host", "--host-name", host, "--names", ",".join(group),
           "--fleet", fleet_dir, "--data-root", data_dir]
    return cmd + ([] if realtime else ["--no-realtime"])


# =============================================================================
# inside a host container


def run_host(args: argparse.Namespace, token_args: list[str]) -> int:
    """``python -m agent.ops.compose host``: check every satellite's issued key against the
    roster, then run them all in this process (PID 1, so SIGTERM reaches the host).  ``--key-dir``
    (swarm): each satellite's key is the secret ``KEY_DIR/node-key-<name>``, installed into its
    directory first; ``--config``: the fleet config, if not ``FLEET/config.toml``."""
    from agent.ops.fleet_keys import install_node_key, roster_node
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if not names:
        raise ComposeError("--names lists no satellite")
    fleet, data_root = Path(args.fleet), Path(args.data_root)
    config = Path(args.config) if getattr(args, "config", None) else fleet / "config.toml"
    key_dir = getattr(args, "key_dir", None)
    extra: list[str] = []
    for name in names:
        if key_dir is not None:
            install_node_key(Path(key_dir) / f"{KEY_SECRET_PREFIX}{name}", data_root / name)
        _, extra, pid = roster_node(fleet, data_root / name, name)
        log.info("%s: peer %s", name, pid)
    argv = ["--models", args.models, "sat-host", "--names", ",".join(names), "--host-name", args.host_name,
            "--data-root", str(data_root), "--config", str(config),
            "--peers", str(fleet / "peers.json"), "--control", args.control, "--bind", "0.0.0.0", *extra,
            *token_args]
    if args.no_realtime:
        argv.append("--no-realtime")
    log.info("%s: starting %d satellites", args.host_name, len(names))
    from agent import agent_cli
    return agent_cli.main(argv)


def control_main(argv: list[str] | None = None) -> int:
    """``python -m agent.ops.compose_hosts ACTION NODE``, run in a host container by the engine's
    chaos (``docker exec``): one request to the host's control socket, with the fleet's token."""
    from agent.ops.sat_host_control import ACTIONS, ControlError, request
    ap = argparse.ArgumentParser(prog="python -m agent.ops.compose_hosts",
                                 description="one satellite's kill, restart, pause, resume or status in this host")
    ap.add_argument("action", choices=ACTIONS)
    ap.add_argument("node")
    ap.add_argument("--control", default=CONTROL_SOCKET)
    ap.add_argument("--token-file", type=Path, action="append",
                    help=f"the fleet's API token (default: the first of {', '.join(TOKEN_FILES)} that exists)")
    args = ap.parse_args(argv)
    token = os.environ.get("ORBITMESH_TOKEN") or None
    for path in args.token_file or [Path(p) for p in TOKEN_FILES]:
        if token is None and path.exists():
            token = path.read_text().strip() or None
    try:
        reply = request(Path(args.control), args.action, args.node, token)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(reply.get("state", ""))
    return 0


if __name__ == "__main__":
    sys.exit(control_main())
