"""Node faults through the Docker engine: kill, pause, resume, restart containers.

Link faults stay with the agents' own chaos API (they are frames on links);
a node fault is something done to a process, and in containers the engine is
what holds the process.  Used by ``orbitmesh chaos --compose`` and the e2e tests.
"""

from __future__ import annotations

from typing import Any

#: The container label that names a node: written by agent/ops/compose.py, read here.
LABEL_NODE = "org.orbitmesh.node"
#: A container that hosts several satellites lists them here (agent/ops/compose_hosts.py).
LABEL_SATS = "org.orbitmesh.sats"


class ChaosError(Exception):
    """A chaos action could not be done; the message says why."""


class EngineChaos:
    """Kill, pause, resume, restart and start node containers through the Docker engine.

    Containers are found by the labels the generator puts on every service
    (``org.orbitmesh.node``), within one compose project when ``project`` is
    given (Compose 1.29 and v2 both label ``com.docker.compose.project``).
    Link faults stay with the agents' own chaos API: they are frames on links.
    """

    ACTIONS = ("kill", "pause", "resume", "restart", "start", "stop", "state")

    def __init__(self, project: str | None = None, client: Any = None):
        self.project = project
        if client is None:
            try:
                import docker
            except ImportError:
                raise ChaosError("the Docker SDK is not installed: pip install 'orbitmesh[docker]'") from None
            try:
                client = docker.from_env()
                client.ping()
            except Exception as exc:  # docker.errors.DockerException and connection errors
                raise ChaosError(f"no Docker engine answers: {exc}") from None
        self.client = client

    def _filters(self, node: str | None = None) -> dict[str, Any]:
        labels = [f"{LABEL_NODE}={node}" if node else LABEL_NODE]
        if self.project:
            labels.append(f"com.docker.compose.project={self.project}")
        return {"label": labels}

    def nodes(self) -> dict[str, Any]:
        """node name → container (running or not)."""
        out: dict[str, Any] = {}
        for c in self.client.containers.list(all=True, filters=self._filters()):
            node = c.labels.get(LABEL_NODE)
            if node in out:
                raise ChaosError(f"{node} runs in more than one compose project; name one (--project)")
            out[node] = c
        return out

    def hosting(self, node: str) -> Any | None:
        """The container that hosts satellite ``node`` among others (``--sats-per-container``), if one does."""
        labels = [LABEL_SATS] + ([f"com.docker.compose.project={self.project}"] if self.project else [])
        found = [c for c in self.client.containers.list(all=True, filters={"label": labels})
                 if node in c.labels.get(LABEL_SATS, "").split(",")]
        if len(found) > 1:
            raise ChaosError(f"{node} runs in more than one compose project; name one (--project)")
        return found[0] if found else None

    def _hosted(self, node: str, action: str) -> str | None:
        """``action`` done to one satellite of a host container, through the host's control
        socket inside it (``docker exec``); None when no container hosts ``node``.  Asked only
        once ``node`` has no container of its own.  Its state comes back as the engine's words:
        running, paused, exited."""
        if action not in self.ACTIONS:
            raise ChaosError(f"unknown action {action!r}; one of {', '.join(self.ACTIONS)}")
        host = self.hosting(node)
        if host is None:
            return None
        host.reload()
        if host.status != "running":
            if action == "start":        # its host is down: starting it starts all its satellites
                return self._do_on(host, node, "start", lambda c: c.start())
            if action == "state":
                return host.status
            raise ChaosError(f"cannot {action} {node}: its host container {host.name} is {host.status}")
        verb = {"start": "restart", "stop": "kill", "state": "status"}.get(action, action)
        try:
            code, out = host.exec_run(["python", "-m", "agent.ops.compose_hosts", verb, node])
        except Exception as exc:
            raise ChaosError(f"cannot {action} {node} in {host.name}: {getattr(exc, 'explanation', None) or exc}") \
                from None
        text = out.decode(errors="replace").strip() if isinstance(out, bytes) else str(out).strip()
        if code != 0:
            raise ChaosError(f"cannot {action} {node} in {host.name}: {text.removeprefix('error: ')}")
        state = text.splitlines()[-1] if text else ""
        return {"down": "exited"}.get(state, state)

    def container(self, node: str) -> Any:
        found = self.client.containers.list(all=True, filters=self._filters(node))
        if not found:
            where = f" in compose project {self.project!r}" if self.project else ""
            raise ChaosError(f"no container for {node}{where}; is the constellation up?")
        if len(found) > 1:
            raise ChaosError(f"{node} runs in more than one compose project; name one (--project)")
        return found[0]

    def _own_or_hosted(self, node: str, action: str) -> tuple[Any, str | None]:
        """(``node``'s own container, None), or (None, ``action``'s outcome in the container that
        hosts it); no container for it at all is the engine's own error."""
        try:
            return self.container(node), None
        except ChaosError:
            hosted = self._hosted(node, action)
            if hosted is None:
                raise
            return None, hosted

    def state(self, node: str) -> str:
        c, hosted = self._own_or_hosted(node, "state")
        if c is None:
            return hosted
        c.reload()
        return c.status            # running, paused, exited, created, restarting

    def _do(self, node: str, what: str, fn) -> str:
        c, hosted = self._own_or_hosted(node, what)
        return hosted if c is None else self._do_on(c, node, what, fn)

    def _do_on(self, c: Any, node: str, what: str, fn) -> str:
        try:
            fn(c)
        except Exception as exc:
            raise ChaosError(f"cannot {what} {node}: {getattr(exc, 'explanation', None) or exc}") from None
        c.reload()
        return c.status

    def kill(self, node: str, signal: str = "SIGKILL") -> str:
        """Crash ``node`` (SIGKILL: no shutdown, no goodbye on its links); a hosted satellite alone."""
        return self._do(node, "kill", lambda c: c.kill(signal=signal))

    def pause(self, node: str) -> str:
        """Freeze ``node`` (cgroup freezer): its links stay open but silent, like SIGSTOP."""
        return self._do(node, "pause", lambda c: c.pause())

    def resume(self, node: str) -> str:
        return self._do(node, "resume", lambda c: c.unpause())

    def stop(self, node: str, timeout: int = 5) -> str:
        return self._do(node, "stop", lambda c: c.stop(timeout=timeout))

    def start(self, node: str) -> str:
        """Start a killed or stopped ``node`` again (same volume, so the same peer id)."""
        return self._do(node, "start", lambda c: c.start())

    def restart(self, node: str, timeout: int = 5) -> str:
        return self._do(node, "restart", lambda c: c.restart(timeout=timeout))

    def run(self, action: str, node: str) -> str:
        if action not in self.ACTIONS:
            raise ChaosError(f"unknown action {action!r}; one of {', '.join(self.ACTIONS)}")
        return getattr(self, action)(node)


class SwarmChaos(EngineChaos):
    """The same faults on a swarm stack (``docker stack deploy``), on this machine's replicas.

    A replica is a container of service ``<stack>_sat`` whose task slot k runs
    node k - 1 (agent/ops/stack.py); the node names come from the fleet config the
    stack ships as a swarm config, read back through the engine.  Swarm's
    restart policy brings a killed replica back in its slot (a new container:
    same name, key and journal volume), so ``kill`` here is a crash followed by
    the engine's recovery; ``start`` only waits for that.

    A stack of hosts (``orbitmesh stack --sats-per-container K``, agent/ops/stack_hosts.py)
    has services ``host-0`` … of one replica each, K satellites in each: the host's
    name acts on its container (all its satellites at once, and swarm replaces it),
    a hosted satellite's name on that satellite alone, through the host's control
    socket inside the container (``docker exec``, as :class:`EngineChaos` does for
    compose hosts); ``start`` then restarts a killed hosted satellite in its host.
    """

    ACTIONS = ("kill", "pause", "resume", "restart", "start", "state")

    def __init__(self, stack: str, client: Any = None, service: str = "sat"):
        super().__init__(None, client)
        self.stack = stack
        self.service = f"{stack}_{service}"
        #: service (short name) → the nodes it runs; a stack of K = 1 runs every node in ``service``
        self.groups: dict[str, list[str]] = {}
        try:
            spec = self._container_spec(self.service)
        except ChaosError as first:
            try:                                  # a stack of hosts has no `sat` service, but a host-0
                spec = self._container_spec(f"{stack}_host-0")
            except ChaosError:
                raise first from None
            self.names = self._node_names(spec, self.service)
            from agent.ops.fleet import container_groups
            k = len([s for s in (spec.get("Labels") or {}).get(LABEL_SATS, "").split(",") if s])
            self.groups = container_groups(self.names, max(1, k))
        else:
            self.names = self._node_names(spec, self.service)
        self.host_of = {n: svc for svc, group in self.groups.items() for n in group}

    def _container_spec(self, service: str) -> dict[str, Any]:
        try:
            return self.client.services.get(service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        except KeyError as exc:
            raise ChaosError(f"service {service} has no container spec: {exc}") from None
        except Exception as exc:   # docker.errors.NotFound, APIError
            raise ChaosError(f"no swarm service {service} (is the stack {self.stack!r} deployed?): "
                             f"{getattr(exc, 'explanation', None) or exc}") from None

    def _node_names(self, spec: dict[str, Any], service: str) -> list[str]:
        import base64

        from mesh.config import ConfigError, parse_config
        from mesh.nodes import NodeNames
        try:
            refs = spec.get("Configs") or []
            # the fleet config (.toml) among the roster, peers and authority configs
            ref = next((r for r in refs if str(r.get("File", {}).get("Name", "")).endswith(".toml")), refs[0])
            data = self.client.configs.get(ref["ConfigID"]).attrs["Spec"]["Data"]
            cfg = parse_config(base64.b64decode(data).decode())
        except (IndexError, KeyError, ConfigError, UnicodeDecodeError) as exc:
            raise ChaosError(f"service {service} carries no readable fleet config: {exc}") from None
        except Exception as exc:   # docker.errors.NotFound, APIError
            raise ChaosError(f"cannot read the fleet config of {service}: "
                             f"{getattr(exc, 'explanation', None) or exc}") from None
        names = NodeNames(cfg.size, tuple(st.name for st in cfg.ground.stations))
        return [names.name(i) for i in range(len(names))]

    def _slot(self, container: Any) -> int | None:
        task = container.labels.get("com.docker.swarm.task.name", "")      # <stack>_sat.<slot>.<task id>
        parts = task.split(".")
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None

    def nodes(self) -> dict[str, Any]:
        """node name → its newest container on this machine; in a stack of hosts, service name
        (``host-0``, ``gs-london``) → its newest container."""
        out: dict[str, Any] = {}
        if self.groups:
            found = self.client.containers.list(all=True, filters={"label": f"com.docker.stack.namespace={self.stack}"})
            prefix = f"{self.stack}_"
            for c in sorted(found, key=lambda c: c.attrs.get("Created", "")):
                svc = c.labels.get("com.docker.swarm.service.name", "").removeprefix(prefix)
                if svc in self.groups:
                    out[svc] = c                       # a replacement replica supersedes the dead one
            return out
        found = self.client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={self.service}"})
        for c in sorted(found, key=lambda c: c.attrs.get("Created", "")):
            slot = self._slot(c)
            if slot is not None and 1 <= slot <= len(self.names):
                out[self.names[slot - 1]] = c          # a replacement replica supersedes the dead one
        return out

    def placements(self) -> dict[str, tuple[Any, int]]:
        """Every node whose replica runs on this machine → (that container, the node's slot in it,
        which gives its ports: :func:`agent.links.fleet_identity.slot_ports`)."""
        if not self.groups:
            return {n: (c, 0) for n, c in self.nodes().items()}
        return {n: (c, slot) for svc, c in self.nodes().items() for slot, n in enumerate(self.groups[svc])}

    def container(self, node: str) -> Any:
        host = self.host_of.get(node, node)
        if node not in self.names and node not in self.groups:
            raise ChaosError(f"{node} is not in stack {self.stack} ({self.names[0]} … {self.names[-1]}"
                             + (f"; hosts {', '.join(h for h, g in self.groups.items() if h != g[0])}"
                                if self.groups else "") + ")")
        if host != node:           # hosted: no container of its own (EngineChaos asks its host next)
            raise ChaosError(f"{node} runs in {host}, and no replica of {host} runs on this machine "
                             f"(`docker service ps {self.stack}_{host}` shows where it runs)")
        c = self.nodes().get(node)
        if c is None:
            where = f"{self.stack}_{node}" if self.groups else self.service
            slot = "" if self.groups else f"slot {self.names.index(node) + 1}; "
            raise ChaosError(f"no replica of {node} runs on this machine ({slot}"
                             f"`docker service ps {where}` shows where it runs)")
        return c

    def hosting(self, node: str) -> Any | None:
        """The newest container on this machine of the host that runs satellite ``node``, if any."""
        host = self.host_of.get(node, node)
        return None if host == node else self.nodes().get(host)

    def _hosted(self, node: str, action: str) -> str | None:
        if not self.groups:
            return None           # a stack of K = 1 runs one satellite per replica
        if action == "start":
            host = self.hosting(node)
            if host is not None:
                host.reload()
                if host.status != "running":       # swarm, not we, starts a new host replica
                    raise ChaosError(f"cannot start {node}: its host replica {host.name} is {host.status}; "
                                     f"swarm starts a new one itself (restart policy)")
        return super()._hosted(node, action)

    def start(self, node: str) -> str:
        """A killed hosted satellite: started again in its host.  A replica: swarm's to start."""
        if self.host_of.get(node, node) != node:
            return self._do(node, "start", lambda c: c.start())
        raise ChaosError("swarm starts killed replicas itself (restart policy); wait for the new one")

    def stop(self, node: str, timeout: int = 5) -> str:
        raise ChaosError("swarm starts killed replicas itself (restart policy); wait for the new one")
