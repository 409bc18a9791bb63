"""``orbitmesh sat-host --names a,b,c``: K satellites in one process (issue 14).

Each satellite is what the daemon runs (``agent.daemon.run_satellite``): its
own identity and libp2p host, node state machines, journals, model store,
HTTP API and gRPC ports from the peers file.  What they share: the process,
one trio event loop, trio's worker-thread cache (each node's executor keeps
its own compute slots and queue, so one satellite's inference cannot take
another's slots), and an in-memory twin network that carries the links
between satellites of this process (``agent/links/hybrid_host.py``).

Failure semantics: killing the process fails all its satellites at once, a
correlated failure like losing a plane.  Killing one satellite (over the
control socket, ``agent/ops/sat_host_control.py``) cancels only its scope: its
tasks stop where they are, its links drop, its ports close, its volatile
state is gone; its journals stay on disk, and a restart runs it again from
them, with a new incarnation.  A satellite that fails on its own (an
unexpected error) is logged and counted down; the others keep running.
Pausing one satellite closes its gate (``agent.links.hybrid_host.Gate``): its links
fall silent both ways, as under SIGSTOP, while the others run on.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import trio

from agent.serve.auth import AgentAuth
from agent.daemon import bound_to, run_satellite
from agent.links.hybrid_host import Gate
from agent.links.memory_host import MemoryNetwork
from agent.links.priority import raise_event_loop_priority
from agent.ops.sat_host_control import MAX_LINE, ControlError, socket_path
from mesh.config import FleetConfig
from mesh.world import World

log = logging.getLogger("orbitmesh.sathost")

REQUEST_TIMEOUT_S = 5.0         # a control client has this long to send its one line
CONTROL_CLIENTS = 8             # control connections served at once; more wait in the listen backlog


@dataclass
class Satellite:
    name: str
    scope: trio.CancelScope | None = None
    stopped: trio.Event | None = None
    crashed: str | None = None          # why it went down on its own, if it did
    gate: Gate | None = None            # closed while paused


class SatHost:
    """The satellites of this process and their lifecycles; ``run`` until cancelled."""

    def __init__(self, host_name: str, names: list[str], config: FleetConfig, peers, data_root: Path,
                 models: Path, *, auth: AgentAuth, journaled: bool = True, workers: int | None = None,
                 revoked: frozenset[str] = frozenset(), roster: tuple[Path, Path] | None = None,
                 fleet_dir: Path | None = None, bind: str | None = None):
        """``bind``: listen on this address (0.0.0.0 in a container) with each satellite's
        ports from the peers file, instead of on the host names it lists."""
        unknown = [n for n in names if n not in peers]
        if unknown:
            raise ValueError(f"not in the peers file: {', '.join(unknown)}")
        if len(set(names)) != len(names):
            raise ValueError("--names lists a satellite twice")
        self.host_name, self.names = host_name, names
        self.config, self.peers, self.data_root, self.models = config, peers, Path(data_root), Path(models)
        self.auth, self.journaled, self.workers = auth, journaled, workers
        self.revoked, self.roster, self.fleet_dir = revoked, roster, fleet_dir
        self.bind = bind
        # Every satellite's twin exists before any starts, so a dial to a sibling
        # never goes out over TCP just because the sibling started later.
        self.net = MemoryNetwork()
        for name in names:
            self.net.host(peers[name].peer_id)
        self.sats = {n: Satellite(n) for n in names}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()            # one lifecycle change at a time

    @cached_property
    def world(self) -> World:
        """One constellation, topology and router (with its snapshot and route-tree caches) for every
        satellite here: each built its own, ~14 MB of Python heap per satellite at starlink-s1's
        1,584 (bench/sat_memory.py), the same numbers K times over."""
        return World.from_config(self.config)

    def state(self, name: str) -> str:
        sat = self.sats[name]
        if sat.scope is None:
            return "down"
        return "paused" if sat.gate is not None and sat.gate.paused else "running"

    async def run(self, *, control: Path | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # All at once: a satellite's start-up waits (model warm-up in threads, binding its
            # servers) overlap, and its siblings' links come up over memory without redials.
            async with trio.open_nursery() as starting:
                for name in self.names:
                    starting.start_soon(partial(self.start, name, initial=True))
            if control is not None:
                await nursery.start(self.serve_control, control)
            task_status.started()

    async def start(self, name: str, initial: bool = False) -> None:
        """Start ``name`` and return once its API answers; a failure to start is the caller's error
        (the process's first start fails loudly, like the daemon; a restart reports it)."""
        sat = self.sats[name]
        if sat.scope is not None:
            raise ControlError(f"{name} is running")
        if self._nursery is None:
            raise RuntimeError("the host is not running")
        sat.crashed, sat.gate = None, Gate()
        try:
            await self._nursery.start(self._run, sat)
        except Exception as exc:
            if initial:
                raise
            sat.crashed = f"{type(exc).__name__}: {exc}"
            raise ControlError(f"{name} failed to start: {sat.crashed}") from None

    async def _run(self, sat: Satellite, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sat.stopped = stopped = trio.Event()
        status = _Started(task_status)
        try:
            with trio.CancelScope() as scope:
                sat.scope = scope
                listen, api, grpc = bound_to(self.peers[sat.name], self.bind) if self.bind else (None, None, None)
                await run_satellite(sat.name, self.config, self.peers, self.data_root / sat.name, self.models,
                                    listen=listen, api=api, grpc=grpc, journaled=self.journaled, workers=self.workers, auth=self.auth,
                                    revoked=self.revoked, roster=self.roster, fleet_dir=self.fleet_dir,
                                    memory=self.net, gate=sat.gate, sats_per_process=len(self.names), world=self.world,
                                    task_status=status)
        except Exception as exc:
            if not status.done:
                raise                       # to start()'s caller
            # Once up, one satellite's failure is its own: the others keep running.
            log.exception("%s crashed", sat.name)
            sat.crashed = f"{type(exc).__name__}: {exc}"
        finally:
            sat.scope = None
            stopped.set()

    async def kill(self, name: str) -> None:
        """A crash of this satellite alone; returns once it is down (a restart must not race its end)."""
        sat = self.sats[name]
        if sat.scope is None or sat.stopped is None:
            raise ControlError(f"{name} is already down")
        sat.scope.cancel()
        await sat.stopped.wait()
        log.info("%s killed (its host process and the other satellites in it keep running)", name)

    def pause(self, name: str) -> None:
        sat = self.sats[name]
        if sat.scope is None or sat.gate is None:
            raise ControlError(f"{name} is down; cannot pause it")
        if sat.gate.paused:
            raise ControlError(f"{name} is already paused")
        sat.gate.close()
        log.info("%s paused: its links are silent", name)

    def resume(self, name: str) -> None:
        sat = self.sats[name]
        if sat.scope is None or sat.gate is None:
            raise ControlError(f"{name} is down; restart it instead")
        if not sat.gate.paused:
            raise ControlError(f"{name} is not paused")
        sat.gate.open()
        log.info("%s resumed", name)

    async def restart(self, name: str) -> None:
        if self.sats[name].scope is not None:
            await self.kill(name)
        await self.start(name)

    # -- control socket -----------------------------------------------------------

    async def serve_control(self, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old = os.umask(0o177)                   # the socket file is born 0600
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(CONTROL_CLIENTS)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._control_client, [listener], handler_nursery=nursery)
        finally:
            path.unlink(missing_ok=True)

    async def _control_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = await stream.receive_some(MAX_LINE)
                        if not chunk:
                            break
                        data += chunk
                        if len(data) > MAX_LINE:
                            raise ControlError(f"request over {MAX_LINE} bytes")
                reply = await self.handle(data)
            except trio.TooSlowError:
                reply = {"ok": False, "error": f"no complete request within {REQUEST_TIMEOUT_S:.0f} s"}
            except ControlError as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                await stream.send_all(json.dumps(reply).encode()[:MAX_LINE - 1] + b"\n")
            except trio.BrokenResourceError:
                pass

    async def handle(self, data: bytes) -> dict:
        try:
            req = json.loads(data)
        except ValueError:
            raise ControlError("the request is not one JSON line") from None
        if not isinstance(req, dict):
            raise ControlError("the request must be a JSON object")
        if self.auth.token is not None:
            token = req.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.auth.token.encode()):
                raise ControlError("wrong or missing token (the fleet's API token is needed)")
        action, name = req.get("action"), req.get("node")
        if name not in self.sats:
            raise ControlError(f"{name!r} is not hosted here ({self.host_name}: {', '.join(self.names)})")
        if action == "status":
            return {"ok": True, "state": self.state(name), "crashed": self.sats[name].crashed}
        if action not in ("kill", "restart", "pause", "resume"):
            raise ControlError(f"unknown action {action!r}: kill, restart, pause, resume or status")
        async with self._lock:
            if action in ("pause", "resume"):
                getattr(self, action)(name)
            else:
                await (self.kill(name) if action == "kill" else self.restart(name))
        return {"ok": True, "state": self.state(name), "detail": f"{action} {name} in {self.host_name}"}


class _Started:
    """``task_status`` passed on, remembering whether ``started()`` was called."""

    def __init__(self, inner):
        self.inner, self.done = inner, False

    def started(self, value=None) -> None:
        self.done = True
        self.inner.started(value)


async def run_host(host: SatHost, control: Path | None, realtime: bool = True) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(host.run, control=control))
        if realtime:
            raise_event_loop_priority()
        log.info("%s up: %d satellites (%s)%s", host.host_name, len(host.names), ", ".join(host.names),
                 f", control socket {control}" if control else "")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: %s received, shutting down", host.host_name, signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(host_name: str, names: list[str], config_path: Path, peers_path: Path, data_root: Path, models: Path, *,
         control: Path | None, realtime: bool, journal: bool, workers: int | None, auth: AgentAuth,
         roster: tuple[Path, Path] | None, bind: str | None = None) -> int:
    """The process's entry (``orbitmesh sat-host``): the same checks as the daemon's, then every satellite."""
    from agent.daemon import load_fleet
    from agent.runtime.journal import JournalError
    try:
        config, peers, revoked = load_fleet(config_path, peers_path, roster)
        bad = [n for n in names if n in revoked]
        if bad:
            raise ValueError(f"revoked by the roster {roster[0] if roster else ''}: {', '.join(bad)}")
        host = SatHost(host_name, names, config, peers, data_root, models, auth=auth, journaled=journal,
                       workers=workers, revoked=revoked, roster=roster,
                       fleet_dir=Path(peers_path).resolve().parent, bind=bind)
        trio.run(run_host, host, control, realtime)
    except (ValueError, JournalError, OSError, ControlError) as exc:
        log.error("%s", exc)
        return 2
    return 0
