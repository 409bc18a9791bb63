"""What every swarm stack shares, for one satellite per replica (agent/ops/stack.py) and
for hosts of K (agent/ops/stack_hosts.py): the spec, the paths inside a replica, and the
service shapes.  Its own module so that neither of those two imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.links.fleet_identity import API_PORT
from agent.ops.compose import DATA_DIR, DEFAULT_IMAGE, DEMO_GROUND, NETWORK

SERVICE = "sat"
HOSTNAME = "orbitmesh-{{.Task.Slot}}"           # a swarm template, filled per task (for people: not resolvable)
KEY_TARGET = "/run/secrets/node-key"           # this replica's own key (the engine renders only its slot's)
FLEET_TARGET = "/etc/orbitmesh/fleet"            # roster.json, peers.json, authority.key.pub (swarm configs)
TOKEN_SECRET = "orbitmesh-api-token"             # docker secret create orbitmesh-api-token - (docs/security.md)
TOKEN_TARGET = "/run/secrets/api-token"
CONFIG_TARGET = "/etc/orbitmesh/fleet.toml"
# The API answers (bash's /dev/tcp: no interpreter per check).
LIVE_CHECK = ["CMD", "bash", "-c",
              f"exec 3<>/dev/tcp/127.0.0.1/{API_PORT} && "
              "printf 'GET /v1/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
              "grep -q '\"status\":\"ok\"' <&3"]
KEYS_TEMPLATE = "node-keys.tmpl"
FLEET_FILES = {"fleet-roster": "roster.json", "fleet-peers": "peers.json", "fleet-authority": "authority.key.pub"}


@dataclass(frozen=True)
class StackSpec:
    preset: str = "demo"
    n: int | None = None
    time_scale: float | None = None
    image: str = DEFAULT_IMAGE
    ground: tuple[str, ...] = DEMO_GROUND
    api_port: int = API_PORT                 # published on every machine (gateway or routing mesh)
    publish: str = "gateway"                 # gateway: one per machine (any kernel); mesh: swarm's routing mesh (IPVS)
    max_per_machine: int | None = None       # placement: at most this many replicas on one machine
    token_secret: str = TOKEN_SECRET         # the swarm secret holding the API token
    realtime: bool = True
    sats_per_container: int = 1              # K > 1: services host-0 … of K satellites (agent/ops/stack_hosts.py)


PUBLISH_CHOICES = ("gateway", "mesh")



def swarm_service(spec: StackSpec, *, hostname: str, command: list[str], networks: Any,
                  secrets: list[dict[str, Any]], health: list[str], deploy: dict[str, Any],
                  environment: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A service that runs nodes: keys from secrets, config and roster from swarm configs, a journal volume."""
    svc: dict[str, Any] = {"image": spec.image, "hostname": hostname, "command": command}
    if environment:
        svc["environment"] = environment
    svc.update({
        "networks": networks,
        "secrets": secrets,
        "configs": [{"source": "fleet-config", "target": CONFIG_TARGET, "mode": 0o444}]
        + [{"source": src, "target": f"{FLEET_TARGET}/{name}", "mode": 0o444} for src, name in FLEET_FILES.items()],
        "volumes": [{"type": "volume", "source": "journal", "target": DATA_DIR}],
        "cap_drop": ["ALL"],
    })
    if labels:
        svc["labels"] = labels
    svc.update({
        # Alive, not ready: swarm resolves only healthy tasks, which is how
        # replicas find each other, so "every link up" here would never come.
        "healthcheck": {"test": health, "interval": "10s", "timeout": "5s", "retries": 3,
                        "start_period": "120s"},
        "stop_grace_period": "5s",
        "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}},
        "deploy": deploy,
    })
    if spec.realtime:
        svc["cap_add"] = ["SYS_NICE"]      # SCHED_RR for the event loop (agent/links/priority.py), nothing else
    return svc


def gateway_service(spec: StackSpec, command: list[str], configs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One gateway per machine on the machine's own port: IPVS-free (agent/serve/gateway.py)."""
    svc: dict[str, Any] = {"image": spec.image, "command": command}
    if configs:
        svc["configs"] = configs
    svc.update({
        # names clients use for the machines (DNS-rebinding check): set at `docker stack deploy`
        "environment": {"ORBITMESH_ALLOWED_HOSTS": "${ORBITMESH_ALLOWED_HOSTS:-}"},
        "networks": [NETWORK],
        "ports": [{"target": API_PORT, "published": spec.api_port, "protocol": "tcp", "mode": "host"}],
        "cap_drop": ["ALL"],
        "stop_grace_period": "5s",
        "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}},
        "deploy": {"mode": "global", "restart_policy": {"condition": "any", "delay": "2s"}},
    })
    return svc
