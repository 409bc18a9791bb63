"""Many production nodes in one process, linked by the in-memory twin host (``agent/links/memory_host.py``).

The same ``agent.runtime.node.Node`` as the daemon runs (membership, relay, routing,
delivery, journal, executor with real onnxruntime); only the host under the
link layer is memory instead of libp2p.  A node can be killed (its scope
cancelled and its host down, as a crash: volatile state gone, journal kept)
and started again from its journal.

Run it on a virtual clock (the ``virtual_clock`` fixture of ``tests/conftest.py``:
``agent.wallclock.JumpClock``, virtual time that ``agent.wallclock`` turns into the
process's wall time): every node reads that clock, timers sleep in trio time,
inference runs inline in zero virtual time, so a test takes as long as its
CPU work, not as long as the mesh's timeouts.  It also runs on the real clock.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agent import wallclock
from agent.ops.fleet import FleetSpec, fleet_config
from agent.runtime.job_journal import JobJournal
from agent.runtime.journal import Journal
from agent.links.memory_host import MemoryHost, MemoryNetwork
from agent.compute.models import ModelStore
from agent.runtime.node import Node
from agent.links.peers import PeerEntry, Peers
from mesh.membership_config import MembershipConfig
from mesh.world import World


@dataclass
class Member:
    name: str
    host: MemoryHost
    node: Node | None = None
    scope: trio.CancelScope | None = None
    journals: list = field(default_factory=list)
    incarnation: int = -1         # its last life's (0 is the first, as the daemon's)
    stopped: trio.Event | None = None


class InProcFleet:
    def __init__(self, directory: Path, models_dir: Path, n: int, *, models: tuple[str, ...] = ("digits",),
                 preset: str = "demo", time_scale: float | None = None, start: float | None = None,
                 on_node=None, share_world: bool = True, sats_per_process: int = 1,
                 membership: MembershipConfig | None = None):
        """``start``: the fleet's wall start (default now); ``on_node(node)``: called with each Node built,
        before it runs (the simulator hooks its probes there); ``share_world``: one World for all nodes;
        ``sats_per_process``: the deployment the fleet stands for (1: the daemon's, as ``orbitmesh up``
        ships; K: satellite hosts of K), which with its size sets every node's membership rates
        (``mesh.membership_config.scaled_config``), or ``membership``: one config for all nodes."""
        self.directory = directory
        self.models = directory / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        for m in models:        # only what the test needs: every node warms each model it has at start
            for suffix in (".onnx", ".json"):
                shutil.copy(models_dir / f"{m}{suffix}", self.models / f"{m}{suffix}")
        self.config = fleet_config(FleetSpec(preset=preset, n=n, time_scale=time_scale)).with_start(
            wallclock.now() if start is None else start)
        self.world = World.from_config(self.config)
        self.share_world = share_world
        self.sats_per_process = sats_per_process
        self.membership = membership
        self.on_node = on_node
        names = self.world.names
        self.peers = Peers([PeerEntry(names.name(i), i, f"mem-{names.name(i)}",
                                      f"/memory/mem-{names.name(i)}/p2p/mem-{names.name(i)}", "http://127.0.0.1:9")
                            for i in range(len(names))])
        self.net = MemoryNetwork()
        self.members = {name: Member(name, self.net.host(self.peers[name].peer_id)) for name in self.peers.names()}
        self._nursery: trio.Nursery | None = None

    def __getitem__(self, name: str) -> Node:
        node = self.members[name].node
        if node is None:
            raise KeyError(f"{name} is down")
        return node

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for name in self.members:
            await self.start_node(name)

    async def start_node(self, name: str) -> Node:
        m = self.members[name]
        if m.scope is not None:
            raise RuntimeError(f"{name} is running")
        m.incarnation += 1
        data = self.directory / "data" / name
        journal = Journal(data / "tasks.sqlite")
        jobs = JobJournal(data / "jobs.sqlite")
        m.journals = [journal, jobs]
        m.node = Node(name, self.config, self.peers, m.host, ModelStore(self.models), workers=1, journal=journal,
                      incarnation=m.incarnation, job_journal=jobs, world=self.world if self.share_world else None,
                      gate=getattr(m.host, "gate", None),      # a hybrid host's pause gate, as a satellite host's
                      sats_per_process=self.sats_per_process, membership=self.membership)
        if self.on_node is not None:
            self.on_node(m.node)
        if self._nursery is None:
            raise RuntimeError("start() the fleet first")
        m.scope = await self._nursery.start(self._run, m)
        return m.node

    async def _run(self, m: Member, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        m.stopped = stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as n:
                    await n.start(m.host.serve)
                    await n.start(m.node.run)
                    task_status.started(scope)
                    await trio.sleep_forever()
        finally:
            stopped.set()

    async def kill(self, name: str) -> None:
        """A crash: the node's tasks end where they are, its streams drop; its journals stay on disk.
        Returns once it is down (a restart must not race the old run's end)."""
        m = self.members[name]
        if m.scope is None or m.stopped is None:
            raise RuntimeError(f"{name} is not running")
        m.scope.cancel()
        m.scope = None
        await m.stopped.wait()
        for j in m.journals:
            j.close()

    async def until(self, predicate, timeout: float, step: float = 0.1) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(step)

    async def ready(self, timeout: float = 30.0) -> None:
        """Every running node has all its laser links up."""
        await self.until(lambda: all(m.node.links.all_up() for m in self.members.values() if m.scope), timeout)
