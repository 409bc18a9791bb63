"""Docker Swarm: the stack file for a constellation that spans machines.

``orbitmesh stack --preset NAME [-n N]`` writes a stack file and, beside it,
the fleet config it ships as a swarm config; ``deploy/stack.yml`` is its
output for the ``demo`` preset.  After ``docker swarm init`` a user types
``docker stack deploy -c deploy/stack.yml orbitmesh`` and nothing else.

Why it is shaped this way (docs/deploy.md has the user's side):

* **One replicated service, identity from the task slot.**  Replica slot k
  (from 1) runs node k - 1: ``sat-0`` … then the ground stations.  Swarm
  keeps a slot when it replaces a failed task, so a replaced satellite keeps
  its name, its key and (through the per-slot volume) its journal.
* **A key per node, each replica holding only its own.**  ``orbitmesh stack``
  issues every node a random Ed25519 key and a roster signed by a fleet
  authority (:func:`agent.ops.fleet_keys.issue_keys`) into ``<stack>-keys/`` on
  the operator's machine, never committed.  The node keys reach the engine as
  one secret *template* (``node-keys.tmpl``): an if/else-if chain over
  ``{{.Task.Slot}}``, so the engine (which keeps secrets encrypted in its raft
  log) renders each task only its own slot's key.  The roster, the peers file
  and the authority's public key are swarm configs.  A swarm secret belongs to
  a service, and the stack is one service: a plain secret would reach every
  replica, which is what the derived scheme (one fleet secret) did.
* **Peers through the service's name.**  Swarm resolves no per-replica name
  (a task's hostname is not in its DNS), only ``tasks.sat``: every healthy
  replica's address.  The peers file lists ``/dns4/sat-7/…``; that name does
  not resolve, so each agent asks the addresses behind ``tasks.sat`` who they
  are (``--discover``, agent/links/directory.py).  The health check is therefore
  "the API answers", not "every link is up": swarm lists only healthy tasks.
* **Keys and config from the engine, never a shared volume.**  The config is
  a swarm config (the preset with its clock at the element sets' epoch, so
  replicas on different machines agree with no coordinator).  The API token
  (docs/security.md) is a secret you create, ``orbitmesh-api-token`` by
  default (``--token-secret``).  Swarm secrets and configs cannot change under
  a running stack: re-running ``orbitmesh stack`` keeps the issued keys, so a
  second ``docker stack deploy`` finds the same files.
* **Journals per slot**: the volume ``orbitmesh-<service id>-<slot>`` on
  whichever machine runs the task: a new deployment (new identities) never
  meets an old deployment's journal.
* **API on every machine**: port 8080 reaches some satellite; a task can
  target any other.  By default through a gateway per machine (agent/serve/gateway.py:
  swarm's routing mesh needs IPVS, which some kernels lack); ``--publish mesh``
  uses the routing mesh itself.
* **Several satellites per replica** (``--sats-per-container K``): services
  ``host-0`` … of one replica each, a key secret per satellite named only by its
  host, satellites reachable by their own names; :mod:`agent.ops.stack_hosts`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ops.compose import (DATA_DIR, DEFAULT_IMAGE, DEMO_GROUND, NETWORK, ComposeSpec, _check, preset_config_at_epoch,
                           station_names)
from agent.atomic import write_atomic
from agent.links.fleet_identity import API_PORT, ComposeError
from agent.ops.stack_spec import (CONFIG_TARGET, FLEET_FILES, FLEET_TARGET, HOSTNAME, KEY_TARGET, KEYS_TEMPLATE,  # noqa: F401
                                  LIVE_CHECK, PUBLISH_CHOICES, SERVICE, TOKEN_SECRET, TOKEN_TARGET, StackSpec,
                                  gateway_service, swarm_service)

def _fleet(spec: StackSpec):
    if spec.publish not in PUBLISH_CHOICES:
        raise ComposeError(f"--publish must be one of {', '.join(PUBLISH_CHOICES)}, not {spec.publish!r}")
    if not 0 < spec.api_port <= 65535:
        raise ComposeError(f"--api-port {spec.api_port} is not a port")
    if spec.max_per_machine is not None and spec.max_per_machine < 1:
        raise ComposeError("--max-per-machine must be ≥ 1")
    cfg = _check(ComposeSpec(preset=spec.preset, n=spec.n, time_scale=spec.time_scale, image=spec.image,
                             ground=spec.ground, publish="none", sats_per_container=spec.sats_per_container))
    if spec.sats_per_container > 1:
        from agent.ops.stack_hosts import check_hosts
        check_hosts(spec)
    # the clock at the element sets' epoch: replicas on different machines agree with no coordinator
    return cfg.with_start(preset_config_at_epoch(spec.preset, spec.n, spec.time_scale).clock.start_unix)


def stack_document(spec: StackSpec = StackSpec(), config_file: str = "fleet.toml",
                   keys_dir: str = "stack-keys") -> dict[str, Any]:
    """The stack file for ``spec`` as plain data (compose file format 3.8, ``docker stack deploy``);
    ``keys_dir``: where :func:`issue_stack_keys` writes the secret template and the public configs."""
    cfg = _fleet(spec)
    if spec.sats_per_container > 1:
        from agent.ops.stack_hosts import hosts_document
        return hosts_document(spec, cfg, config_file, keys_dir)
    replicas = cfg.size + len(station_names(cfg))
    cmd = ["python", "-m", "agent.ops.compose", "node", "--node-from-slot", "--fleet", FLEET_TARGET,
           "--node-key", KEY_TARGET, "--config", CONFIG_TARGET, "--address", "{name}",
           "--discover", f"tasks.{SERVICE}", "--data", DATA_DIR, "--api-token-file", TOKEN_TARGET]
    if not spec.realtime:
        cmd.append("--no-realtime")
    deploy: dict[str, Any] = {
        "mode": "replicated",
        "replicas": replicas,
        # a crashed or killed satellite comes back in its slot: same name, same key, its journal
        "restart_policy": {"condition": "any", "delay": "2s"},
        "update_config": {"parallelism": 4, "order": "stop-first"},
        "labels": {"org.orbitmesh.preset": spec.preset},
    }
    if spec.max_per_machine is not None:
        deploy["placement"] = {"max_replicas_per_node": spec.max_per_machine}
    svc = swarm_service(spec, hostname=HOSTNAME, command=cmd, environment={"ORBITMESH_SLOT": "{{.Task.Slot}}"},
                        networks=[NETWORK],
                        secrets=[{"source": "node-key", "target": "node-key", "mode": 0o400},
                                 {"source": "api-token", "target": "api-token", "mode": 0o400}],
                        health=LIVE_CHECK, deploy=deploy)
    services: dict[str, Any] = {SERVICE: svc}
    if spec.publish == "mesh":
        svc["ports"] = [{"target": API_PORT, "published": spec.api_port, "protocol": "tcp", "mode": "ingress"}]
    else:
        services["api"] = gateway_service(spec, ["python", "-m", "agent.serve.gateway", "--service", f"tasks.{SERVICE}",
                                                 "--port", str(API_PORT), "--upstream-port", str(API_PORT)])
    return {
        "version": "3.8",
        "services": services,
        "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
        # the engine renders each task only its own slot's key from this template
        "secrets": {"node-key": {"file": f"{keys_dir}/{KEYS_TEMPLATE}", "template_driver": "golang"},
                    "api-token": {"external": True, "name": spec.token_secret}},
        "configs": {"fleet-config": {"file": config_file},
                    **{src: {"file": f"{keys_dir}/fleet/{name}"} for src, name in FLEET_FILES.items()}},
        # the engine fills the template per task: one volume per slot and deployment
        "volumes": {"journal": {"name": "orbitmesh-{{.Service.ID}}-{{.Task.Slot}}"}},
    }


def stack_header(spec: StackSpec, cfg) -> str:
    d = StackSpec()
    how = ["orbitmesh stack", f"--preset {spec.preset}"]
    how += [f"-n {spec.n}"] if spec.n is not None else []
    how += [f"--time-scale {spec.time_scale:g}"] if spec.time_scale is not None else []
    if spec.ground != d.ground:
        how += [f"--ground {g}" for g in spec.ground] or ["--no-ground"]
    how += [f"--image {spec.image}"] if spec.image != d.image else []
    how += [f"--api-port {spec.api_port}"] if spec.api_port != d.api_port else []
    how += [f"--publish {spec.publish}"] if spec.publish != d.publish else []
    how += [f"--max-per-machine {spec.max_per_machine}"] if spec.max_per_machine else []
    how += [f"--token-secret {spec.token_secret}"] if spec.token_secret != d.token_secret else []
    how += ["--no-realtime"] if not spec.realtime else []
    how += [f"--sats-per-container {spec.sats_per_container}"] if spec.sats_per_container > 1 else []
    if spec.sats_per_container > 1:
        from agent.ops.stack_hosts import hosts_header_line
    gs = station_names(cfg)
    nodes = f"{cfg.size} satellites (slots 1–{cfg.size})" + (
        f" and ground stations {', '.join(f'gs-{g} (slot {cfg.size + 1 + k})' for k, g in enumerate(gs))}"
        if gs else "")
    return (f"# Generated by `{' '.join(how)}`; regenerate rather than edit.\n"
            "# Build or load the image on every machine (`make image`), then, on a manager:\n"
            "#   docker swarm init\n"
            f"#   {' '.join(how)} --out <this file>   (issues the node keys into <stem>-keys/, never commit them)\n"
            f"#   python -c 'import secrets; print(secrets.token_urlsafe(32))' | docker secret create {spec.token_secret} -\n"
            "#   docker stack deploy -c <this file> orbitmesh\n"
            f"# Control calls need that token (Authorization: Bearer; docs/security.md).\n"
            + (f"# One replicated service, {nodes}; replica slot k runs node k - 1.\n"
               if spec.sats_per_container == 1 else hosts_header_line(spec, cfg))
            + f"# The API answers on port {spec.api_port} of every machine ("
            + ("a gateway per machine" if spec.publish == "gateway" else "routing mesh") + ").  See docs/deploy.md.\n")


def slot_key_template(seeds: list[bytes]) -> str:
    """A golang secret template that renders task slot k (from 1) only ``seeds[k - 1]``, as hex;
    a slot beyond them renders nothing, which the replica refuses with a clear error."""
    if not seeds:
        raise ComposeError("a stack needs at least one node key")
    chain = "".join(f'{{{{ {"if" if k == 1 else "else if"} eq .Task.Slot "{k}" }}}}{seed.hex()}'
                    for k, seed in enumerate(seeds, 1))
    return chain + "{{ end }}\n"


def issue_stack_keys(keys_dir: Path, names: list[str], fleet: str, slots: dict[str, int] | None = None) -> list[str]:
    """Issue (or keep) every node's key and the authority's in ``keys_dir`` (mode 0700); write the
    signed roster, peers file and authority's public key under ``keys_dir/fleet`` and the slot
    template ``keys_dir/node-keys.tmpl`` (0600).  What it did, as lines.  ``slots`` (a stack of
    hosts, agent/ops/stack_hosts.py): every node's slot in its replica, which gives it its ports in
    ``peers.json`` and in the Prometheus targets ``keys_dir/fleet/prometheus.yml``; no template
    then (each host's service names its satellites' key files as secrets of their own)."""
    import os

    from agent.ops.fleet_keys import issue_keys
    from agent.links.roster import read_seed
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    done = issue_keys(keys_dir / "fleet", keys_dir / "authority", keys_dir / "nodes", names, fleet, slots=slots)
    if slots is not None:
        from agent.links.fleet_identity import slot_ports
        from agent.ops import monitoring
        write_atomic(keys_dir / "fleet" / monitoring.CONFIG_NAME,
                     monitoring.prometheus_config(names, {n: slot_ports(slots.get(n, 0))[1] for n in names}))
        return done + [f"wrote {keys_dir / 'fleet' / monitoring.CONFIG_NAME} ({len(names)} scrape targets)"]
    seeds = [read_seed(keys_dir / "nodes" / name / "identity.key") for name in names]
    write_atomic(keys_dir / KEYS_TEMPLATE, slot_key_template(seeds), 0o600)
    return done + [f"wrote {keys_dir / KEYS_TEMPLATE} (each task slot renders only its own key)"]


def write_stack(spec: StackSpec, out: Path) -> list[Path]:
    """Write the stack file ``out`` and its config beside it (both committable), and issue the
    node keys into ``<stem>-keys/`` beside them (never to commit); the committable files written."""
    from agent.ops.yamlfile import to_yaml
    from mesh.config import config_to_toml
    from mesh.nodes import NodeNames
    cfg = _fleet(spec)
    out = Path(out)
    config_path = out.with_name(out.stem + "-fleet.toml")
    keys_dir = out.with_name(out.stem + "-keys")
    doc = stack_document(spec, config_file=f"./{config_path.name}", keys_dir=f"./{keys_dir.name}")
    names = NodeNames(cfg.size, station_names(cfg))
    slots = None
    if spec.sats_per_container > 1:
        from agent.ops.stack_hosts import node_slots
        slots = node_slots(cfg, spec.sats_per_container)
    issue_stack_keys(keys_dir, [names.name(i) for i in range(len(names))], cfg.name, slots=slots)
    out.write_text(to_yaml(doc, stack_header(spec, cfg)))
    config_path.write_text(config_to_toml(cfg))
    return [out, config_path]


def cmd_stack(args: argparse.Namespace) -> int:
    spec = StackSpec(preset=args.preset, n=args.n, time_scale=args.time_scale, image=args.image,
                     ground=() if args.no_ground else tuple(args.ground) if args.ground else DEMO_GROUND,
                     api_port=args.api_port, publish=args.publish,
                     max_per_machine=args.max_per_machine, realtime=not args.no_realtime,
                     token_secret=args.token_secret, sats_per_container=args.sats_per_container)
    try:
        written = write_stack(spec, Path(args.out))
    except (ComposeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = written[0].with_name(written[0].stem + "-keys")
    print(f"wrote {', '.join(str(p) for p in written)} and the node keys in {keys}/ (keep them like a "
          f"password, never commit them); on a swarm manager: create the API token "
          f"(docker secret create {spec.token_secret} -), then docker stack deploy -c {written[0]} orbitmesh",
          file=sys.stderr)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``orbitmesh stack`` to the CLI."""
    p = subparsers.add_parser("stack", help="write a Docker Swarm stack file for a constellation",
                              description="Write a swarm stack file (one replicated service, identity from the "
                                          "task slot) and its fleet config.  See docs/deploy.md.")
    p.add_argument("--preset", default="demo", help="constellation preset (default: demo)")
    p.add_argument("-n", type=int, default=None, help="number of satellites (default: the preset's)")
    p.add_argument("--time-scale", type=float, default=None, help="orbital seconds per wall second")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"agent image on every machine (default: {DEFAULT_IMAGE})")
    p.add_argument("-o", "--out", default="stack.yml",
                   help="stack file to write; its config (-fleet.toml) and the node keys (-keys/) go beside it")
    p.add_argument("--api-port", type=int, default=API_PORT,
                   help=f"port of the API on every machine, through the routing mesh (default: {API_PORT})")
    p.add_argument("--publish", choices=PUBLISH_CHOICES, default="gateway",
                   help="how port 8080 reaches the satellites: gateway (a small proxy per machine; works on "
                        "every kernel, the default) or mesh (swarm's routing mesh; needs IPVS in the kernel)")
    p.add_argument("--max-per-machine", type=int, metavar="K", help="place at most K satellites on one machine")
    p.add_argument("--token-secret", default=TOKEN_SECRET, metavar="NAME",
                   help=f"the swarm secret with the API token, created before deploying (default: {TOKEN_SECRET})")
    p.add_argument("--no-realtime", action="store_true", help="do not grant CAP_SYS_NICE (no SCHED_RR)")
    p.add_argument("--sats-per-container", type=int, default=1, metavar="K",
                   help="run K satellites per replica: services host-0 … of one replica each "
                        "(docs/deploy.md, docs/sat-hosts.md); default 1")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ground", action="append", default=None, metavar="NAME",
                   help=f"a ground station (repeatable; default: {' and '.join(DEMO_GROUND)})")
    g.add_argument("--no-ground", action="store_true", help="satellites only")
    p.set_defaults(func=cmd_stack)
    return p
