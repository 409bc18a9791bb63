"""Containers: the compose generator, the in-container entry points, chaos through Docker.

Two parts, one module:

* **Generator** (host side, no Docker needed): :func:`compose_document` builds
  the compose file for a preset (or ``-n`` satellites) as plain data and
  :func:`agent.ops.yamlfile.to_yaml` writes it.  The top-level ``docker-compose.yml`` is its
  output for the ``demo`` preset.  ``orbitmesh compose`` runs it (the CLI
  hooks :func:`register` in).
* **Entry points** (inside the image): ``python -m agent.ops.compose init`` runs
  once per ``up`` in the ``init`` service and ``python -m agent.ops.compose node``
  starts every satellite (also in Kubernetes pods) and every ground station
  (``gs-<name>``, node ``n_sats + k``, listed in the config by ``init --ground``).
* Chaos through the engine lives in :mod:`agent.ops.engine_chaos`, the YAML
  writer in :mod:`agent.ops.yamlfile`, the swarm stack generator in :mod:`agent.ops.stack`.

Identities: under compose the init service issues every node its own key
and a roster signed by the fleet authority (:mod:`agent.ops.fleet_keys`); on
swarm ``orbitmesh stack`` issues them and each replica gets its own through
``--node-key``; Kubernetes derives them from one secret (:mod:`agent.links.fleet_identity`).
The API token (docs/security.md) is ``FLEET/api-token``:
``$ORBITMESH_TOKEN`` of ``docker compose up`` if set, else made once by ``init``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ops import monitoring
from agent.atomic import write_atomic
from agent.ops.engine_chaos import LABEL_NODE, LABEL_SATS
from agent.links.fleet_identity import (API_PORT, GRPC_PORT, P2P_PORT, ComposeError, ensure_identity, fleet_peers,
                                        read_secret, slot_ports)
from agent.ops.fleet_keys import AUTHORITY_DIR, NODES_DIR
from agent.ops.compose_spec import (DEFAULT_IMAGE, DEMO_GROUND, PUBLISH_CHOICES, ComposeSpec, _check,
                                   station_names)
from agent.ops.compose_hosts import (CONTROL_SOCKET, container_groups, container_slots, healthcheck,
                                    host_command, published_ports, run_host)

log = logging.getLogger("orbitmesh.compose")

FLEET_DIR = "/fleet"             # the fleet volume: secret, api-token, config.toml, peers.json
TOKEN_NAME = "api-token"
DATA_DIR = "/data"               # a node's own volume: identity.key
MODELS_DIR = "/opt/orbitmesh/models"
NETWORK = "constellation"
LABEL_ROLE = "org.orbitmesh.role"


# =============================================================================
# in-container entry points


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    write_atomic(path, text, mode)


def init_fleet(fleet_dir: Path, preset: str = "demo", n: int | None = None,
               time_scale: float | None = None, now: float | None = None,
               ground: tuple[str, ...] = (), keys: Path | None = None, authority: Path | None = None,
               sats_per_container: int = 1) -> list[str]:
    """Create the fleet volume's secret and config (kept if present); what it did, as lines.

    ``ground``: stations added to the preset's config (as ``orbitmesh up
    --ground`` does), each then run by its own ``gs-<name>`` service.
    ``keys`` (every node's volume, at ``keys/<node>``) and ``authority``: issue
    per-node keys and a signed roster instead of a fleet secret (agent/ops/fleet_keys.py).
    ``sats_per_container``: the compose file's K, which gives each satellite its ports.
    """
    from agent.ops.fleet import FleetError, FleetSpec, fleet_config
    from mesh.config import ConfigError, config_to_toml, parse_config
    fleet_dir = Path(fleet_dir)
    done = [_init_token(fleet_dir / TOKEN_NAME)]
    secret_path = fleet_dir / "secret"
    if keys is None and not secret_path.exists():
        _write_atomic(secret_path, secrets.token_hex(32) + "\n", 0o600)
        done.append(f"created a new fleet secret in {secret_path}")
    try:
        want = fleet_config(FleetSpec(preset=preset, n=n, time_scale=time_scale, ground=tuple(ground)))
    except FleetError as exc:
        raise ComposeError(str(exc)) from None
    config_path = fleet_dir / "config.toml"
    keep = False
    if config_path.exists():
        try:
            have = parse_config(config_path.read_text())
            # same constellation: keep the first start time, so a restarted
            # service and its still-running peers share one clock
            keep = config_to_toml(have.with_start(0.0)) == config_to_toml(want.with_start(0.0))
        except (OSError, ConfigError):
            keep = False
    if keep:
        cfg = parse_config(config_path.read_text())
        done.append(f"kept {config_path} ({cfg.name}, {cfg.size} satellites{_stations_note(cfg)}, "
                    f"started {cfg.clock.start_unix:.0f})")
    else:
        cfg = want.with_start(time.time() if now is None else now)
        _write_atomic(config_path, config_to_toml(cfg))
        done.append(f"wrote {config_path} ({cfg.name}, {cfg.size} satellites{_stations_note(cfg)})")
    from mesh.nodes import NodeNames
    names = NodeNames(cfg.size, station_names(cfg))
    nodes = [names.name(i) for i in range(len(names))]
    slots = container_slots(nodes, sats_per_container)
    _write_atomic(fleet_dir / monitoring.CONFIG_NAME,
                  monitoring.prometheus_config(nodes, {n: slot_ports(slots[n])[1] for n in nodes}))
    done.append(f"wrote {fleet_dir / monitoring.CONFIG_NAME} ({len(nodes)} scrape targets, for the "
                f"'{monitoring.PROFILE}' profile)")
    if keys is not None:
        from agent.ops.fleet_keys import AUTHORITY_DIR, issue_keys
        return done + issue_keys(fleet_dir, Path(authority or AUTHORITY_DIR), Path(keys), nodes, cfg.name,
                                 slots=slots)
    if sats_per_container > 1:
        raise ComposeError("--sats-per-container needs issued keys (--keys): a derived fleet has no per-satellite ports")
    # For people and tools; every node derives the same file itself.
    secret = read_secret(secret_path)
    _write_atomic(fleet_dir / "peers.json", fleet_peers(secret, cfg.size, stations=station_names(cfg)).to_json())
    done.append(f"wrote {fleet_dir / 'peers.json'}")
    return done


def _init_token(path: Path) -> str:
    """The API token: ``$ORBITMESH_TOKEN`` (compose passes the host's) if set, else kept, else new."""
    from agent.serve.auth import TOKEN_ENV, ensure_token
    existed = path.exists()
    ensure_token(path)
    if os.environ.get(TOKEN_ENV):
        return f"API token from ${TOKEN_ENV} in {path}"
    return f"kept the API token in {path}" if existed else \
        f"created an API token in {path} (read it: docker compose exec sat-0 cat {path})"



def _stations_note(cfg) -> str:
    names = station_names(cfg)
    return f" and ground stations {', '.join(names)}" if names else ""


@dataclass
class NodeLaunch:
    node: str
    argv: list[str]      # ``orbitmesh`` CLI arguments that run the agent
    peer_id: str


def preset_config_at_epoch(preset: str, n: int | None = None, time_scale: float | None = None):
    """The preset's config with its clock started at the preset's epoch.

    Every pod computes the same config from the same image, with no shared
    file and no coordinator: the orbital clock then reads real time since
    the element sets' epoch (NTP-synced nodes agree to a millisecond).
    """
    from agent.ops.fleet import FleetError, FleetSpec, fleet_config
    from mesh.orbit import iso_to_jd
    try:
        cfg = fleet_config(FleetSpec(preset=preset, n=n, time_scale=time_scale))
    except FleetError as exc:
        raise ComposeError(str(exc)) from None
    return cfg.with_start(round((iso_to_jd(cfg.epoch) - 2440587.5) * 86400.0, 3))


def prepare_node(node: str | None, *, secret_path: Path, config_path: Path | None, data_dir: Path,
                 peers_path: Path, address: str = "{name}", p2p_port: int = P2P_PORT,
                 api_port: int = API_PORT, models: str = MODELS_DIR, realtime: bool = True,
                 hostname: str | None = None, preset: str = "demo", n: int | None = None,
                 time_scale: float | None = None, slot: int | None = None,
                 discover: str | None = None, fleet_dir: Path | None = None,
                 node_key: Path | None = None) -> NodeLaunch:
    """Identity into ``data_dir``, the derived peers file into ``peers_path``; the agent's CLI args.

    ``node`` None takes the node from ``slot`` (a swarm task slot, from 1:
    node ``slot - 1``, so ground stations follow the satellites), else from a
    StatefulSet pod's hostname (``orbitmesh-7`` → ``sat-7``).  ``config_path`` None computes the config
    from ``preset`` (see :func:`preset_config_at_epoch`) and writes it beside
    the peers file.  ``fleet_dir`` holding a ``roster.json`` (compose's init
    issued keys): this node's own key and the signed roster, no secret;
    ``node_key`` (swarm: the replica's own key secret) is installed first.
    """
    from agent.links.peers import sat_name
    from mesh.config import ConfigError, parse_config
    if node is None and slot is None:
        hostname = hostname or os.environ.get("HOSTNAME") or os.uname().nodename
        m = re.search(r"-(\d+)$", hostname)
        if not m:
            raise ComposeError(f"cannot take a satellite index from hostname {hostname!r} "
                               f"(expected a StatefulSet pod name such as orbitmesh-7)")
        node = sat_name(int(m.group(1)))
    issued = fleet_dir is not None and (Path(fleet_dir) / "roster.json").exists()
    secret = None if issued else read_secret(secret_path)
    if config_path is None:
        from mesh.config import config_to_toml
        cfg = preset_config_at_epoch(preset, n, time_scale)
        config_path = Path(peers_path).with_name("config.toml")
        _write_atomic(config_path, config_to_toml(cfg))
    else:
        try:
            cfg = parse_config(Path(config_path).read_text())
        except FileNotFoundError:
            raise ComposeError(f"no fleet config at {config_path}") from None
        except ConfigError as exc:
            raise ComposeError(f"{config_path}: {exc}") from None
    if issued:
        from agent.ops.fleet_keys import roster_node
        from agent.links.peers import Peers
        peers = Peers.load(Path(fleet_dir) / "peers.json")
    else:
        peers = fleet_peers(secret, cfg.size, address, p2p_port, api_port, stations=station_names(cfg))
    if node is None:
        if not 1 <= slot <= len(peers.names()):
            raise ComposeError(f"task slot {slot} has no node: this fleet has {len(peers.names())} nodes "
                               f"({cfg.size} satellites and {len(station_names(cfg))} ground stations); "
                               f"set the service's replicas to that number")
        node = peers.names()[slot - 1]
    if node not in peers:
        gs = [n for n in peers.names() if not n.startswith("sat-")]
        raise ComposeError(f"{node} is not in this fleet ({cfg.name} has {cfg.size} satellites: "
                           f"sat-0 … sat-{cfg.size - 1}; ground stations: {', '.join(gs) or 'none'})")
    extra: list[str] = []
    if issued:
        if node_key is not None:
            from agent.ops.fleet_keys import install_node_key
            install_node_key(node_key, data_dir)
        peers_path, extra, peer_id = roster_node(Path(fleet_dir), data_dir, node)
    else:
        peer_id = ensure_identity(data_dir, secret, node)
        _write_atomic(Path(peers_path), peers.to_json())
    argv = ["--models", models, "agent", "--node", node, *extra,
            "--config", str(config_path), "--peers", str(peers_path), "--data-dir", str(data_dir),
            "--listen", f"0.0.0.0:{p2p_port}", "--api", f"0.0.0.0:{api_port}", "--grpc", f"0.0.0.0:{GRPC_PORT}"]
    if not realtime:
        argv.append("--no-realtime")
    if discover:
        argv += ["--discover", discover]
    return NodeLaunch(node, argv, peer_id)


def token_args(args: argparse.Namespace) -> list[str]:
    """The agent's access arguments for ``node``'s options: ``--no-auth``, or the token file
    (``--api-token-file``, else FLEET/api-token if present); none: the agent takes $ORBITMESH_TOKEN[_FILE]."""
    if args.no_auth:
        return ["--no-auth"]
    path = args.api_token_file or Path(args.fleet) / TOKEN_NAME
    return ["--api-token-file", str(path)] if args.api_token_file or path.exists() else []


# =============================================================================
# the compose file




# A container is healthy once its API answers and every laser link is up.
# bash's /dev/tcp and grep, not a Python one-liner: 26 containers starting an
# interpreter every interval cost ~60 ms of CPU each, on the cores the agents'
# event loops need (measured, docs/docker.md); this costs ~2 ms.
HEALTHCHECK = ["CMD", "bash", "-c",
               f"exec 3<>/dev/tcp/127.0.0.1/{API_PORT} && "
               "printf 'GET /v1/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
               "grep -q '\"ready\":true' <&3"]


def compose_document(spec: ComposeSpec = ComposeSpec()) -> dict[str, Any]:
    """The compose file for ``spec`` as plain data (valid for Compose 1.29 and v2).

    One service per node: satellites ``sat-0`` … then ground stations
    ``gs-<name>`` (node ``size + k``), all alike but for their role label.
    """
    from mesh.nodes import NodeNames
    cfg = _check(spec)
    size = cfg.size
    names = NodeNames(size, station_names(cfg))
    init_cmd = ["python", "-m", "agent.ops.compose", "init", "--fleet", FLEET_DIR, "--preset", spec.preset,
                "--keys", NODES_DIR, "--authority", AUTHORITY_DIR]
    if spec.n is not None:
        init_cmd += ["-n", str(size)]
    if spec.time_scale is not None:
        init_cmd += ["--time-scale", repr(float(spec.time_scale))]
    for g in spec.ground:
        init_cmd += ["--ground", g]
    if spec.sats_per_container > 1:
        init_cmd += ["--sats-per-container", str(spec.sats_per_container)]
    services: dict[str, Any] = {
        "init": {
            "image": spec.image,
            "command": init_cmd,
            # the host's $ORBITMESH_TOKEN, if set, becomes the fleet's API token; else init makes one
            "environment": {"ORBITMESH_TOKEN": "${ORBITMESH_TOKEN:-}"},
            "network_mode": "none",
            # and every node's volume, to issue its key there; the authority's key only here
            "volumes": [f"fleet:{FLEET_DIR}", f"authority:{AUTHORITY_DIR}",
                        *(f"{names.name(i)}-data:{NODES_DIR}/{names.name(i)}" for i in range(len(names)))],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "labels": {LABEL_ROLE: "init"},
            "restart": "no",
        },
    }
    volumes: dict[str, Any] = {"fleet": {}, "authority": {}}
    all_names = [names.name(i) for i in range(len(names))]
    index_of = {n: i for i, n in enumerate(all_names)}
    for service, group in container_groups(all_names, spec.sats_per_container).items():
        name = group[0]
        role = "ground" if names.is_ground(index_of[name]) else "satellite"
        svc: dict[str, Any] = {
            "image": spec.image,
            "hostname": service,
            "command": host_command(service, group, FLEET_DIR, DATA_DIR, spec.realtime) if service != name else
            ["python", "-m", "agent.ops.compose", "node", "--node", name, "--fleet", FLEET_DIR, "--data", DATA_DIR,
             *([] if spec.realtime else ["--no-realtime"])],
            "depends_on": {"init": {"condition": "service_completed_successfully"}},
            # a hosted satellite's name reaches its host: peers.json names every node by its own name
            "networks": {NETWORK: {"aliases": group}} if service != name else [NETWORK],
            "volumes": [f"fleet:{FLEET_DIR}:ro", *((f"{name}-data:{DATA_DIR}",) if service == name else
                                                  (f"{n}-data:{DATA_DIR}/{n}" for n in group))],
        }
        ports = published_ports(spec, index_of, group)
        if ports:
            svc["ports"] = ports
        svc["cap_drop"] = ["ALL"]
        if spec.realtime:
            # SCHED_RR for the event loop (agent/links/priority.py); nothing else.
            svc["cap_add"] = ["SYS_NICE"]
        svc.update({
            "security_opt": ["no-new-privileges:true"],
            "labels": {LABEL_NODE: service, LABEL_ROLE: role,
                       **({LABEL_SATS: ",".join(group)} if service != name else {})},
            # a killed node stays down until chaos (or you) start it again
            "restart": "no",
            "stop_grace_period": "5s",
            # ready = API answers and every link up; a ground station with no
            # satellite in view has no links, so it is ready too
            "healthcheck": {"test": HEALTHCHECK if service == name else healthcheck(group), "interval": "30s",
                            "timeout": "5s", "retries": 3, "start_period": "60s"},
            "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}},
        })
        services[service] = svc
        volumes.update({f"{n}-data": {} for n in group})
    services["prometheus"] = monitoring.prometheus_service("fleet", FLEET_DIR, NETWORK, spec.api_host,
                                                          {LABEL_ROLE: monitoring.PROFILE})
    volumes["prometheus-data"] = {}
    return {"services": services, "networks": {NETWORK: {"driver": "bridge"}}, "volumes": volumes}


def compose_header(spec: ComposeSpec) -> str:
    """The file's opening comment, naming the command that regenerates it."""
    d = ComposeSpec()
    how = ["orbitmesh compose", f"--preset {spec.preset}"]
    how += [f"-n {spec.n}"] if spec.n is not None else []
    how += [f"--time-scale {spec.time_scale:g}"] if spec.time_scale is not None else []
    if spec.ground != d.ground:
        how += [f"--ground {g}" for g in spec.ground] or ["--no-ground"]
    how += [f"--image {spec.image}"] if spec.image != d.image else []
    how += [f"--publish {spec.publish}"] if spec.publish != d.publish else []
    how += [f"--api-host {spec.api_host}"] if spec.api_host != d.api_host else []
    how += [f"--api-port {spec.api_base_port}"] if spec.api_base_port != d.api_base_port else []
    how += [f"--grpc-port {spec.grpc_base_port}"] if spec.grpc_base_port != d.grpc_base_port else []
    how += ["--no-realtime"] if not spec.realtime else []
    how += [f"--sats-per-container {spec.sats_per_container}"] if spec.sats_per_container > 1 else []
    cfg = _check(spec)
    gs = station_names(cfg)
    ground = ""
    if gs:
        ground = (f"\n# Ground station{'s' if len(gs) > 1 else ''} "
                  + ", ".join(f"gs-{g}" + (f" ({spec.api_base_port + cfg.size + k})" if spec.publish == "all" else "")
                              for k, g in enumerate(gs))
                  + ": links only to satellites in view, often none.")
    ports = {"all": f"Satellite sat-i's API is published on {spec.api_host}:{spec.api_base_port}+i, "
                    f"its gRPC (Open Inference Protocol) on {spec.grpc_base_port}+i.",
             "first": f"sat-0's API is published on {spec.api_host}:{spec.api_base_port}, "
                      f"its gRPC on {spec.grpc_base_port}.",
             "none": "No API port is published."}[spec.publish]
    return (f"# Generated by `{' '.join(how)}`; regenerate rather than edit.\n"
            "# Build the image first (`make image`), then: docker compose up -d   (or: docker-compose up -d)\n"
            f"# {ports}{ground}  See docs/docker.md.\n"
            "# Control calls need the API token: export ORBITMESH_TOKEN before `up` (the CLI reads it too), or\n"
            f"# read it: docker compose exec sat-0 cat {FLEET_DIR}/{TOKEN_NAME}   (docs/security.md)\n")


def generate(spec: ComposeSpec) -> str:
    from agent.ops.yamlfile import to_yaml
    return to_yaml(compose_document(spec), compose_header(spec))


# =============================================================================
# command line


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="constellation preset (default: demo, 4×6 at 550 km)")
    p.add_argument("-n", type=int, default=None, help="number of satellites (default: the preset's)")
    p.add_argument("--time-scale", type=float, default=None, help="orbital seconds per wall second")
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help=f"agent image (default: {DEFAULT_IMAGE}, built by `make image`)")
    p.add_argument("-o", "--out", default="docker-compose.yml",
                   help="file to write, - for stdout (default: docker-compose.yml)")
    p.add_argument("--publish", choices=PUBLISH_CHOICES, default="all",
                   help="whose API ports to publish on the host (default: all)")
    p.add_argument("--api-host", default="127.0.0.1",
                   help="host address of published API ports (default: 127.0.0.1)")
    p.add_argument("--api-port", type=int, default=8100,
                   help="host port of sat-0's API; sat-i gets this + i (default: 8100)")
    p.add_argument("--grpc-port", type=int, default=8200,
                   help="host port of sat-0's gRPC inference service; sat-i gets this + i (default: 8200)")
    p.add_argument("--no-realtime", action="store_true",
                   help="run agents with --no-realtime instead of granting CAP_SYS_NICE for SCHED_RR")
    p.add_argument("--sats-per-container", type=int, default=1, metavar="K",
                   help="run K satellites per container (services host-0 …, docs/sat-hosts.md); default 1")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ground", action="append", default=None, metavar="NAME",
                   help="a ground-station service gs-NAME (a built-in station such as london); repeatable; "
                        f"default: {' and '.join(DEMO_GROUND)}")
    g.add_argument("--no-ground", action="store_true", help="satellites only, no ground stations")


def cmd_generate(args: argparse.Namespace) -> int:
    spec = ComposeSpec(preset=args.preset, n=args.n, time_scale=args.time_scale, image=args.image,
                       api_host=args.api_host, api_base_port=args.api_port, grpc_base_port=args.grpc_port,
                       publish=args.publish,
                       realtime=not args.no_realtime, sats_per_container=args.sats_per_container,
                       ground=() if args.no_ground else tuple(args.ground) if args.ground else DEMO_GROUND)
    try:
        text = generate(spec)
    except ComposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        roles = [svc["labels"][LABEL_ROLE] for svc in compose_document(spec)["services"].values()]
        n, g = roles.count("satellite"), roles.count("ground")
        print(f"wrote {args.out}: {n} satellites{f' and {g} ground station' + 's' * (g > 1) if g else ''} on network "
              f"{NETWORK!r}; build the image (`make image`), then `docker compose -f {args.out} up -d`",
              file=sys.stderr)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``orbitmesh compose`` (writes a compose file) to the CLI's subparsers."""
    p = subparsers.add_parser("compose", help="write a docker compose file for a constellation",
                              description="Write a compose file: every satellite a container on one network, "
                                          "identities in volumes.  See docs/docker.md.")
    add_generate_args(p)
    p.set_defaults(func=cmd_generate)
    return p


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m agent.ops.compose",
                                 description="orbitmesh containers: generator, entry points, chaos")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a compose file (same as `orbitmesh compose`)")
    add_generate_args(p)

    p = sub.add_parser("init", help="(in the init service) create the fleet secret and config if absent")
    p.add_argument("--fleet", type=Path, default=Path(FLEET_DIR))
    p.add_argument("--preset", default="demo")
    p.add_argument("-n", type=int, default=None)
    p.add_argument("--time-scale", type=float, default=None)
    p.add_argument("--ground", action="append", default=[], metavar="NAME",
                   help="add this ground station to the config (repeatable)")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="issue each node a key in DIR/<node> (its volume) and a signed roster, no fleet secret")
    p.add_argument("--authority", type=Path, default=Path(AUTHORITY_DIR), metavar="DIR",
                   help="where the fleet authority's key lives (only the init service mounts it)")
    p.add_argument("--sats-per-container", type=int, default=1, metavar="K",
                   help="the compose file's K: satellites sharing a container get ports of their own")

    p = sub.add_parser("host", help="(in a host container) run several satellites, keys issued by init")
    p.add_argument("--host-name", required=True)
    p.add_argument("--names", required=True, help="the satellites of this container, comma-separated")
    p.add_argument("--fleet", type=Path, default=Path(FLEET_DIR))
    p.add_argument("--data-root", type=Path, default=Path(DATA_DIR), help="every satellite's volume, by name")
    p.add_argument("--config", type=Path, help="fleet config (default: FLEET/config.toml)")
    p.add_argument("--key-dir", type=Path, help="(swarm) each satellite's key secret, KEY_DIR/node-key-<name>")
    p.add_argument("--control", default=CONTROL_SOCKET, help="the host's control socket (per-satellite chaos)")
    p.add_argument("--models", default=MODELS_DIR)
    p.add_argument("--no-realtime", action="store_true")
    p.add_argument("--api-token-file", type=Path)
    p.add_argument("--no-auth", action="store_true")

    p = sub.add_parser("node", help="(in a satellite container) derive identity and peers, then run the agent")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", help="node name, e.g. sat-3 or gs-london")
    who.add_argument("--node-from-hostname", action="store_true",
                     help="take the index from a StatefulSet pod name (orbitmesh-7 → sat-7)")
    who.add_argument("--node-from-slot", action="store_true",
                     help="take the node from $ORBITMESH_SLOT, a swarm task slot (1 → sat-0; ground stations "
                          "after the satellites)")
    p.add_argument("--fleet", type=Path, default=Path(FLEET_DIR), help="directory with secret and config.toml")
    p.add_argument("--secret", type=Path, help="fleet secret file (default: FLEET/secret)")
    p.add_argument("--node-key", type=Path, help="this node's own key (hex), with FLEET/roster.json (swarm)")
    p.add_argument("--config", type=Path, help="fleet config (default: FLEET/config.toml, unless --preset)")
    p.add_argument("--preset", help="compute the config from this preset, clock started at its epoch "
                                    "(Kubernetes: every pod derives the same one)")
    p.add_argument("-n", type=int, default=None, help="with --preset: number of satellites")
    p.add_argument("--time-scale", type=float, default=None, help="with --preset: orbital seconds per wall second")
    p.add_argument("--data", type=Path, default=Path(DATA_DIR), help="this node's volume")
    p.add_argument("--peers-out", type=Path, default=Path("/tmp/orbitmesh/peers.json"))
    p.add_argument("--address", default="{name}",
                   help="DNS name of node {name} / {index} (default: {name}, the compose service)")
    p.add_argument("--p2p-port", type=int, default=P2P_PORT)
    p.add_argument("--api-port", type=int, default=API_PORT)
    p.add_argument("--models", default=MODELS_DIR)
    p.add_argument("--no-realtime", action="store_true")
    p.add_argument("--discover", metavar="NAME",
                   help="find peers whose names do not resolve behind this name (swarm: tasks.<service>)")
    p.add_argument("--api-token-file", type=Path,
                   help="the API token (default: FLEET/api-token if present, else $ORBITMESH_TOKEN)")
    p.add_argument("--no-auth", action="store_true", help="an open lab: control calls need no token")

    p = sub.add_parser("chaos", help="kill, pause, resume, restart, start or stop a node's container")
    p.add_argument("action", choices=("kill", "pause", "resume", "restart", "start", "stop", "state"))
    p.add_argument("node")
    p.add_argument("-p", "--project", default=os.environ.get("COMPOSE_PROJECT_NAME"),
                   help="compose project (default: $COMPOSE_PROJECT_NAME, else any)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "init":
            for line in init_fleet(args.fleet, args.preset, args.n, args.time_scale, ground=tuple(args.ground),
                                   keys=args.keys, authority=args.authority,
                                   sats_per_container=args.sats_per_container):
                log.info("%s", line)
            return 0
        if args.command == "node":
            slot = None
            if args.node_from_slot:
                raw = os.environ.get("ORBITMESH_SLOT", "")
                if not raw.isdigit():
                    raise ComposeError(f"--node-from-slot: $ORBITMESH_SLOT must be a task slot number, "
                                       f"not {raw!r} (the stack sets it to {{{{.Task.Slot}}}})")
                slot = int(raw)
            launch = prepare_node(None if (args.node_from_hostname or slot is not None) else args.node, slot=slot,
                                  secret_path=args.secret or args.fleet / "secret",
                                  config_path=(args.config or (None if args.preset else args.fleet / "config.toml")),
                                  preset=args.preset or "demo", n=args.n, time_scale=args.time_scale,
                                  data_dir=args.data, peers_path=args.peers_out, address=args.address,
                                  p2p_port=args.p2p_port, api_port=args.api_port, models=args.models,
                                  realtime=not args.no_realtime, discover=args.discover,
                                  fleet_dir=args.fleet if args.secret is None else None, node_key=args.node_key)
            launch.argv += token_args(args)
            log.info("%s: peer %s; starting the agent", launch.node, launch.peer_id)
            # In this process (PID 1 of the container, so SIGTERM reaches the
            # agent), which has already imported libp2p: a fresh interpreter
            # would pay ~1 s of CPU per container again.
            from agent import agent_cli
            return agent_cli.main(launch.argv)
        if args.command == "host":
            return run_host(args, token_args(args))
        if args.command == "chaos":
            from agent.ops.engine_chaos import ChaosError, EngineChaos
            try:
                print(EngineChaos(args.project).run(args.action, args.node))
            except ChaosError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            return 0
    except ComposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
