"""What a compose file is asked to be, checked before anything is written.

``ComposeSpec`` carries ``orbitmesh compose``'s options and :func:`_check` turns them into the
fleet config they run, or a :class:`ComposeError` that says what to change; the compose
generator (:mod:`agent.ops.compose`) and the swarm stack (:mod:`agent.ops.stack`) both start here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.links.fleet_identity import ComposeError
from agent.ops.compose_hosts import container_groups

DEFAULT_IMAGE = "orbitmesh:latest"


def station_names(cfg) -> tuple[str, ...]:
    """The config's ground stations, in node order (station k is node n_sats + k)."""
    return tuple(st.name for st in cfg.ground.stations)


# The committed docker-compose.yml runs these two beside the demo satellites.
DEMO_GROUND = ("london", "tokyo")


@dataclass(frozen=True)
class ComposeSpec:
    preset: str = "demo"
    n: int | None = None                 # satellites; None = the preset's size
    time_scale: float | None = None
    image: str = DEFAULT_IMAGE
    api_host: str = "127.0.0.1"          # where published API ports listen on the host
    api_base_port: int = 8100            # sat-i's API is published on api_base_port + i
    grpc_base_port: int = 8200           # ... and its gRPC inference port (Open Inference Protocol) on grpc_base_port + i
    publish: str = "all"                 # all | first | none
    realtime: bool = True                # cap_add SYS_NICE (else --no-realtime)
    # ground-station services gs-<name>, nodes size+k; built-in station names
    ground: tuple[str, ...] = DEMO_GROUND
    sats_per_container: int = 1          # K > 1: services host-0 … of K satellites each (agent/ops/compose_hosts.py)


PUBLISH_CHOICES = ("all", "first", "none")
# DNS label: a service name other containers resolve (gs-<name>)
_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$")


def _check(spec: ComposeSpec):
    """Validate ``spec``; the fleet config it runs (ground stations included)."""
    from agent.ops.fleet import FleetError, FleetSpec, fleet_config
    from mesh.ground import parse_station
    if spec.publish not in PUBLISH_CHOICES:
        raise ComposeError(f"--publish must be one of {', '.join(PUBLISH_CHOICES)}, not {spec.publish!r}")
    seen = set()
    for g in spec.ground:
        try:
            st = parse_station(g)
        except (KeyError, ValueError) as exc:
            raise ComposeError(f"--ground: {exc.args[0] if exc.args else exc}") from None
        if st.name in seen:
            raise ComposeError(f"--ground {g}: ground station {st.name!r} given twice")
        seen.add(st.name)
    try:
        cfg = fleet_config(FleetSpec(preset=spec.preset, n=spec.n, time_scale=spec.time_scale,
                                     ground=tuple(spec.ground)))
    except FleetError as exc:
        raise ComposeError(str(exc)) from None
    for name in station_names(cfg):       # the preset's own stations and the added ones
        if not _SERVICE_NAME.fullmatch(name):
            # lat,lon stations are named after their coordinates ("51.5000N,0.1200W"),
            # which is no DNS name: other containers could not resolve the service.
            raise ComposeError(f"ground station {name!r} cannot be a compose service (gs-<name> must be "
                               f"a DNS name); use a built-in station such as london")
    nodes = cfg.size + len(cfg.ground.stations)
    if spec.publish != "none" and not 0 < spec.api_base_port <= 65535 - (nodes - 1):
        raise ComposeError(f"--api-port {spec.api_base_port}: the {nodes} published ports must fit below 65536")
    if spec.publish != "none" and not 0 < spec.grpc_base_port <= 65535 - (nodes - 1):
        raise ComposeError(f"--grpc-port {spec.grpc_base_port}: the {nodes} published ports must fit below 65536")
    if spec.publish != "none" and abs(spec.grpc_base_port - spec.api_base_port) < nodes:
        raise ComposeError(f"--grpc-port {spec.grpc_base_port} and --api-port {spec.api_base_port} overlap "
                           f"({nodes} ports each)")
    if not spec.image or any(c.isspace() for c in spec.image):
        raise ComposeError(f"bad image name {spec.image!r}")
    container_groups([], spec.sats_per_container)           # K in range
    return cfg
