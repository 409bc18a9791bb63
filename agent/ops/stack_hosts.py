"""Docker Swarm with several satellites per replica: ``orbitmesh stack --sats-per-container K``.

The swarm form of ``orbitmesh compose --sats-per-container K`` (agent/ops/compose_hosts.py):
⌈N/K⌉ services ``host-0`` … of one replica each run K consecutive satellites in one process
(``python -m agent.ops.compose host``); ground stations keep a service each.  Why it differs
from the one-service stack of K = 1 (agent/ops/stack.py):

* **A service per host, so a secret per satellite.**  A swarm secret reaches every task of
  the services that name it.  With a service per host, each host names only the key secrets
  of its own K satellites (``key-sat-7``, the issued key file itself, mounted at
  ``/run/secrets/node-key-sat-7``): no slot template is needed, and no replica holds another
  host's keys.
* **Every satellite reachable by its own name.**  Each host service carries its satellites'
  names as network aliases, and every service runs with ``endpoint_mode: dnsrr``: a name then
  resolves to the replica's own address, not to a virtual IP that needs IPVS in the kernel
  (which this project's CI VMs lack, see the gateway below).  So ``peers.json`` names every
  node by its own name with its slot's ports (:func:`agent.links.fleet_identity.slot_ports`),
  as compose does, and no ``--discover`` is needed.
* **Health is "every hosted satellite's API answers"**: swarm resolves only healthy tasks, so
  "every link up" would never come (as for K = 1).
* **The API on every machine through the gateway only.**  The gateway reads ``peers.json``
  (a swarm config) and sends each request to a satellite by name and slot port
  (``agent.serve.gateway --peers``).  ``--publish mesh`` (the routing mesh) needs one service
  behind the port and a virtual IP: refused with K > 1.
* **Placement**: each host is a service of one replica, so ``--max-per-machine`` (a cap on one
  service's replicas per machine) would mean nothing: refused with K > 1.
* **Journals**: one volume per host replica, ``orbitmesh-<service id>-1``, each satellite in
  its own directory ``/data/<name>``.
"""

from __future__ import annotations

from typing import Any

from agent.links.fleet_identity import API_PORT, ComposeError
from agent.ops.compose import DATA_DIR, LABEL_ROLE, NETWORK, station_names
from agent.ops.compose_hosts import KEY_SECRET_PREFIX, container_groups, healthcheck
from agent.ops.engine_chaos import LABEL_NODE, LABEL_SATS
from agent.ops.stack_spec import (CONFIG_TARGET, FLEET_FILES, FLEET_TARGET, LIVE_CHECK, TOKEN_TARGET, StackSpec,
                                  gateway_service, swarm_service)

KEY_DIR = "/run/secrets"


def check_hosts(spec: StackSpec) -> None:
    """What K > 1 cannot do, said before anything is written."""
    if spec.publish == "mesh":
        raise ComposeError("--publish mesh needs one service behind the port; with --sats-per-container the "
                           "gateway publishes it (--publish gateway, the default)")
    if spec.max_per_machine is not None:
        raise ComposeError("--max-per-machine caps one service's replicas on a machine; with "
                           "--sats-per-container each host is a service of one replica (use placement "
                           "constraints instead)")


def key_secret(name: str) -> str:
    return f"key-{name}"


def node_groups(cfg, k: int) -> dict[str, list[str]]:
    """Service name → the nodes it runs (host-0 … of K satellites, then a service per ground station)."""
    from mesh.nodes import NodeNames
    names = NodeNames(cfg.size, station_names(cfg))
    return container_groups([names.name(i) for i in range(len(names))], k)


def node_slots(cfg, k: int) -> dict[str, int]:
    """Every node's slot in its replica (its ports: :func:`agent.links.fleet_identity.slot_ports`)."""
    return {n: s for group in node_groups(cfg, k).values() for s, n in enumerate(group)}


def hosts_document(spec: StackSpec, cfg, config_file: str, keys_dir: str) -> dict[str, Any]:
    """The stack file for ``spec`` (K = ``spec.sats_per_container`` > 1) as plain data."""
    check_hosts(spec)
    services: dict[str, Any] = {}
    key_secrets: dict[str, Any] = {}
    for service, group in node_groups(cfg, spec.sats_per_container).items():
        hosted = service != group[0]
        if hosted:
            cmd = ["python", "-m", "agent.ops.compose", "host", "--host-name", service, "--names", ",".join(group),
                   "--fleet", FLEET_TARGET, "--config", CONFIG_TARGET, "--key-dir", KEY_DIR,
                   "--data-root", DATA_DIR, "--api-token-file", TOKEN_TARGET]
        else:
            cmd = ["python", "-m", "agent.ops.compose", "node", "--node", service, "--fleet", FLEET_TARGET,
                   "--node-key", f"{KEY_DIR}/{KEY_SECRET_PREFIX}{service}", "--config", CONFIG_TARGET,
                   "--data", DATA_DIR, "--api-token-file", TOKEN_TARGET]
        if not spec.realtime:
            cmd.append("--no-realtime")
        role = "satellite" if group[0].startswith("sat-") else "ground"
        # alive, not ready: swarm resolves only healthy tasks' names, which is how nodes find each other
        health = healthcheck(group, want='"status":"ok"') if hosted else LIVE_CHECK
        svc = swarm_service(spec, hostname=service, command=cmd,
                            networks={NETWORK: {"aliases": group}} if hosted else [NETWORK],
                            secrets=[{"source": key_secret(n), "target": f"{KEY_SECRET_PREFIX}{n}", "mode": 0o400}
                                     for n in group] + [{"source": "api-token", "target": "api-token", "mode": 0o400}],
                            labels={LABEL_NODE: service, LABEL_ROLE: role,
                                    **({LABEL_SATS: ",".join(group)} if hosted else {})},
                            health=health,
                            deploy={"mode": "replicated", "replicas": 1,
                                    # names resolve to the replica itself: no virtual IP, no IPVS
                                    "endpoint_mode": "dnsrr",
                                    "restart_policy": {"condition": "any", "delay": "2s"},
                                    "labels": {"org.orbitmesh.preset": spec.preset}})
        services[service] = svc
        # the issued key file itself (the raw seed, which install_node_key accepts); only its host names it
        key_secrets.update({key_secret(n): {"file": f"{keys_dir}/nodes/{n}/identity.key"} for n in group})
    services["api"] = gateway_service(spec, ["python", "-m", "agent.serve.gateway", "--peers",
                                             f"{FLEET_TARGET}/peers.json", "--port", str(API_PORT)],
                                      configs=[{"source": "fleet-peers", "target": f"{FLEET_TARGET}/peers.json",
                                                "mode": 0o444}])
    return {
        "version": "3.8",
        "services": services,
        "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
        "secrets": {**key_secrets, "api-token": {"external": True, "name": spec.token_secret}},
        "configs": {"fleet-config": {"file": config_file},
                    **{src: {"file": f"{keys_dir}/fleet/{name}"} for src, name in FLEET_FILES.items()}},
        # one volume per host replica and deployment; each satellite in its own directory
        "volumes": {"journal": {"name": "orbitmesh-{{.Service.ID}}-{{.Task.Slot}}"}},
    }


def hosts_header_line(spec: StackSpec, cfg) -> str:
    """The header's line about what runs where."""
    groups = node_groups(cfg, spec.sats_per_container)
    hosts = [h for h, g in groups.items() if h != g[0]]
    gs = [h for h, g in groups.items() if h == g[0]]
    which = ", ".join(hosts) if len(hosts) <= 3 else f"{hosts[0]} … {hosts[-1]}"
    return (f"# {cfg.size} satellites in {len(hosts)} service{'s' * (len(hosts) > 1)} {which} of up to "
            f"{spec.sats_per_container} each (one replica each; every satellite reachable by its own name)"
            + (f", ground stations {', '.join(gs)}" if gs else "") + ".\n")
