"""The agent: one satellite's daemon, tying physics, links, tasks and inference together.

Everything it owns runs in one nursery; cancelling it (SIGTERM, Ctrl-C)
tears the links down and closes the libp2p host cleanly.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import trio

from agent.executor import ExecutionError, Executor, ExecutorBusy
from agent.models import ModelError, ModelStore
from agent.p2p import P2PHost
from agent.peers import Peers
from agent.placement import choose_executor
from agent.tasks import TaskRecord, TaskTable
from agent.tensors import InputError, check_shape, inputs_from_json
from agent.transport import LinkLayer
from agent.zoo import LimitError, check_limits
from mesh.chaos import Entry, FaultError, FaultTable, Topo
from mesh.config import FleetConfig
from mesh.link import LinkProfile, link_seed
from mesh.world import World
from mesh.wire import ChaosUpdate, Hop, Message, Probe, TaskRequest, TaskResult, Tensor, WireError

log = logging.getLogger(__name__)

DEFAULT_TASK_TIMEOUT_S = 30.0
MAX_PROBE_RATE_HZ = 2000
MAX_PROBE_SECONDS = 120
MAX_PROBE_BYTES = 256 * 1024


class SubmitError(Exception):
    """A task the node refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    index: int
    peer_id: str


class Node:
    def __init__(self, name: str, config: FleetConfig, peers: Peers, host: P2PHost, store: ModelStore,
                 *, workers: int | None = None):
        if name not in peers:
            raise ValueError(f"node {name!r} is not in the peers file")
        self.config = config
        self.peers = peers
        self.host = host
        self.me = NodeIdentity(name, peers[name].index, host.peer_id)
        if peers[name].peer_id != host.peer_id:
            raise ValueError(f"identity mismatch: peers file says {name} is {peers[name].peer_id}, "
                             f"but this data dir holds {host.peer_id}")
        self.world = World.from_config(config)
        self.constellation = self.world.constellation
        self.topology = self.world.topology
        self.router = self.world.router
        if self.topology.names.index(name) != self.me.index:
            raise ValueError(f"peers file numbers {name} as {self.me.index}, the config as "
                             f"{self.topology.names.index(name)}")
        if len(peers.by_name) > self.topology.n_nodes:
            raise ValueError("peers file lists more nodes than the config has satellites and stations")
        self.is_ground = self.topology.names.is_ground(self.me.index)
        self.store = store
        self.executor = Executor(store, workers=workers)
        self.tasks = TaskTable()
        partners = [peers.by_index[i].name for i in self._wanted_partners(time.time()) if i in peers.by_index]
        self.chaos = FaultTable(self._chaos_topo())
        self.base_profile = LinkProfile(bandwidth_bps=config.links.isl_bandwidth_bps,
                                        queue_frames=config.limits.link_queue_frames)
        self.links = LinkLayer(
            name, host, {p: (peers[p].multiaddr, peers[p].peer_id) for p in partners},
            self._propagation, self._link_profile, self._on_message,
            seeds={p: link_seed(config.name, name, p) for p in partners},
            queue_frames=config.limits.link_queue_frames, max_frame_bytes=config.limits.max_frame_bytes,
            on_link_up=self._sync_chaos, accept_unknown=self._accept_ground,
        )
        self.started = time.time()
        self._nursery: trio.Nursery | None = None

    # -- physics ---------------------------------------------------------------

    def orbit_t(self, wall: float | None = None) -> float:
        return self.config.clock.orbit_t(time.time() if wall is None else wall)

    def _propagation(self, a: str, b: str, sent_at: float) -> float:
        return self.topology.link_latency(self.peers[a].index, self.peers[b].index, self.orbit_t(sent_at))

    def _next_hop(self, dst: str) -> str | None:
        """Next hop on the shortest path that avoids links cut by faults."""
        if dst not in self.peers:
            return None
        src, dst_i = self.me.index, self.peers[dst].index
        if src == dst_i:
            return None
        cut = self.chaos.cut_now(time.time())
        down = frozenset((min(self.peers[a].index, self.peers[b].index), max(self.peers[a].index, self.peers[b].index))
                         for a, b in cut)
        found = self.router.snapshot(self.orbit_t()).shortest_path(src, dst_i, down_links=down)
        if found is None or len(found[0]) < 2:
            return None
        return self.peers.by_index[found[0][1]].name

    def _link_profile(self, peer: str, now: float) -> LinkProfile:
        profile = self.chaos.profile(self.me.name, peer, now, self.base_profile)
        if not self._in_sight(peer, now):
            profile = replace(profile, in_sight=False)
        return profile

    def _in_sight(self, peer: str, now: float) -> bool:
        """Whether physics has this link up now (line of sight, range)."""
        snap = self.router.snapshot(self.orbit_t(now))
        idx = self.peers[peer].index
        return any(n == idx for n, _ in snap.neighbours(self.me.index))

    def _chaos_topo(self) -> Topo:
        names = {i: e.name for i, e in self.peers.by_index.items()}
        links = frozenset(frozenset((names[int(a)], names[int(b)])) for a, b in self.topology.candidates.tolist()
                          if int(a) in names and int(b) in names)
        planes = {n: (self.constellation.shell_of[i], self.constellation.plane_of[i]) for i, n in names.items()
                  if i < len(self.constellation)}
        return Topo(frozenset(names.values()), links, planes)

    def position(self) -> dict[str, float]:
        x, y, z = (float(v) for v in self.topology.node_position(self.me.index, self.orbit_t()))
        r = math.sqrt(x * x + y * y + z * z)
        return {"x_km": x, "y_km": y, "z_km": z, "lat_deg": math.degrees(math.asin(z / r)),
                "lon_deg": math.degrees(math.atan2(y, x)), "radius_km": r}

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Load and warm every model before reporting ready: creating a session
        # takes tens of ms and its first run allocates onnxruntime's arena;
        # neither may stall the event loop (and every frame it is due to
        # release) when the first task arrives.
        for name in self.store.preloadable():
            try:
                await trio.to_thread.run_sync(self.store.get, name)
            except ModelError as exc:
                log.error("model %s is unusable: %s", name, exc)
                continue
            await self.executor.warm_up(name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.executor.serve)
            nursery.start_soon(self.links.run)
            nursery.start_soon(self._expire_faults)
            nursery.start_soon(self._follow_the_sky)
            task_status.started()

    # -- live topology ---------------------------------------------------------------

    LINK_GRACE_S = 2.0  # ≫ any link's delay: frames in flight land before a retired link closes
    REWIRE_EVERY_S = 0.5

    def _wanted_partners(self, wall: float) -> set[int]:
        """Laser partners always (their streams stay up; physics drops frames
        while out of sight), plus the ground links physics gives at t."""
        i = self.me.index
        wanted = set(self.topology.partners_of(i, self.orbit_t(wall)))
        if not self.is_ground:
            wanted |= set(self.topology.neighbours_of(i))
        return wanted

    async def _follow_the_sky(self) -> None:
        """Open and close ground links as satellites rise, set and hand over."""
        while True:
            await trio.sleep(self.REWIRE_EVERY_S)
            now = time.time()
            wanted = {self.peers.by_index[i].name for i in self._wanted_partners(now) if i in self.peers.by_index}
            for name in wanted - set(self.links.links):
                if name < self.me.name:
                    continue  # the other end dials; _accept_ground takes it
                entry = self.peers[name]
                log.info("%s: %s came into view", self.me.name, name)
                self.links.add_link(name, entry.multiaddr, entry.peer_id, link_seed(self.config.name, self.me.name, name))
            for name, link in list(self.links.links.items()):
                if name not in wanted and not link.retiring:
                    log.info("%s: %s out of view; closing the link in %.0fs", self.me.name, name, self.LINK_GRACE_S)
                    self.links.retire_link(name, self.LINK_GRACE_S)
                elif name in wanted and link.retiring:
                    self.links.add_link(name, link.multiaddr, self.peers[name].peer_id, 0)

    def _accept_ground(self, name: str, peer_id: str) -> tuple[str, int] | None:
        """An inbound stream from a node we don't link to yet: accept it if
        physics says the link exists now (a station that just saw us rise)."""
        if name not in self.peers or self.peers[name].peer_id != peer_id:
            return None
        if self.peers[name].index not in self._wanted_partners(time.time()):
            return None
        return self.peers[name].multiaddr, link_seed(self.config.name, self.me.name, name)

    async def _expire_faults(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.chaos.expire(time.time())

    # -- tasks at the entry node --------------------------------------------------

    async def submit(self, model: str, inputs: Any, target: str | None,
                     timeout_s: float = DEFAULT_TASK_TIMEOUT_S) -> TaskRecord:
        """Validate and accept a task; raises SubmitError with a clear reason."""
        if not isinstance(model, str) or not model:
            raise SubmitError(400, "'model' must be a non-empty string")
        if target is not None and not isinstance(target, str):
            raise SubmitError(400, "'target' must be a node name such as 'sat-7', or 'auto'")
        try:
            # Loading a large model takes a while: never on the event loop.
            loaded = self.store.get(model) if self.store.loaded(model) else \
                await trio.to_thread.run_sync(self.store.get, model)
        except ModelError as exc:
            raise SubmitError(404 if "unknown model" in str(exc) else 422, str(exc)) from None
        try:
            arrays = inputs_from_json(inputs, loaded.inputs, max_elements=self.config.limits.max_frame_bytes // 4)
            check_limits(model, arrays, loaded.manifest)
        except (InputError, LimitError) as exc:
            raise SubmitError(400, str(exc)) from None
        if target not in (None, "", "auto") and target not in self.peers:
            raise SubmitError(404, f"unknown target node {target!r}; nodes are {self.peers.names()[0]} … "
                                   f"{self.peers.names()[-1]}")
        if self.tasks.pending() >= self.config.limits.max_pending_tasks:
            raise SubmitError(429, f"{self.tasks.pending()} tasks pending at {self.me.name}; retry later")
        latencies = {}
        snap = self.router.snapshot(self.orbit_t())
        for n, lat in snap.neighbours(self.me.index):
            if n in self.peers.by_index:
                latencies[self.peers.by_index[n].name] = lat
        link_up = {n: l.up for n, l in self.links.links.items()}
        executor = choose_executor(target, self.me.name, self.executor.full or self.executor.queued > 0,
                                   latencies, link_up)
        if executor == self.me.name and self.executor.full:
            raise SubmitError(429, f"executor at {self.me.name} is full ({self.executor.queued} tasks queued); "
                                   f"retry in {self.executor.retry_after_s()}s")
        if executor != self.me.name and self._next_hop(executor) is None:
            raise SubmitError(503, f"no route from {self.me.name} to {executor} right now")
        now = time.time()
        rec = TaskRecord(uuid.uuid4().hex, model, self.me.name, executor, created=now)
        self.tasks.add(rec)
        req = TaskRequest(rec.task_id, self.me.name, executor, model,
                          {k: Tensor.from_array(v) for k, v in arrays.items()}, ttl=self.config.limits.ttl)
        assert self._nursery is not None, "node is not running"
        self._nursery.start_soon(self._drive, rec, req, now, timeout_s)
        return rec

    async def _drive(self, rec: TaskRecord, req: TaskRequest, accepted: float, timeout_s: float) -> None:
        await self._on_request(req, accepted, 0.0, event="entry")
        with trio.move_on_after(timeout_s):
            await rec.done.wait()
            return
        if rec.finish(ok=False, when=time.time(), error=f"no result within {timeout_s:.0f}s"):
            log.warning("task %s timed out", rec.task_id)

    # -- routed messages ------------------------------------------------------------

    async def _on_message(self, msg: Message, from_node: str, arrived: float, expected: float) -> None:
        if isinstance(msg, TaskRequest):
            await self._on_request(msg, arrived, expected, event="forward")
        elif isinstance(msg, TaskResult):
            await self._on_result(msg, arrived, expected)
        elif isinstance(msg, ChaosUpdate):
            self._on_chaos(msg, from_node)
        elif isinstance(msg, Probe):
            self.links.links[from_node].stats.probes_received += 1

    # -- chaos ------------------------------------------------------------------------

    def apply_fault(self, spec: Any) -> tuple[dict[str, Any], bool]:
        """Validate, record and flood a fault; raises FaultError with the reason."""
        now = time.time()
        entry, changed = self.chaos.issue(spec, now, self.me.name)
        if changed:
            self._flood([entry], exclude=None)
        fault = next(f for f in self.chaos.listing(now) if f["id"] == entry.id)
        return fault, changed

    def clear_fault(self, fid: str | None) -> list[str]:
        """Remove one fault (KeyError if unknown) or, with None, all of them."""
        now = time.time()
        tombs = self.chaos.remove_all(now, self.me.name) if fid is None else [self.chaos.remove(fid, now, self.me.name)]
        if tombs:
            self._flood(tombs, exclude=None)
        return [t.id for t in tombs]

    def _flood(self, entries: list[Entry], exclude: str | None) -> None:
        msg = ChaosUpdate(tuple(e.to_wire() for e in entries))
        for peer in self.links.links:
            if peer != exclude:
                self.links.send(peer, msg)

    def _on_chaos(self, msg: ChaosUpdate, from_node: str) -> None:
        news = []
        for raw in msg.entries:
            try:
                entry = Entry.from_wire(raw)
            except (FaultError, WireError) as exc:
                log.warning("bad chaos entry from %s: %s", from_node, exc)
                continue
            if self.chaos.merge(entry):
                news.append(entry)
        if news:
            self._flood(news, exclude=from_node)

    def _sync_chaos(self, peer: str) -> None:
        """A (re)connected neighbour gets the whole table: it may have missed floods."""
        entries = self.chaos.entries()
        if entries:
            self.links.send(peer, ChaosUpdate(tuple(e.to_wire() for e in entries)))

    # -- probes -----------------------------------------------------------------------

    def start_probe(self, peer: str, rate_hz: float, size: int, duration_s: float) -> dict[str, Any]:
        if peer not in self.links.links:
            raise SubmitError(404, f"{self.me.name} has no laser link to {peer!r}; its links: "
                                   f"{', '.join(sorted(self.links.links))}")
        if not 0 < rate_hz <= MAX_PROBE_RATE_HZ:
            raise SubmitError(400, f"rate_hz must be in (0, {MAX_PROBE_RATE_HZ}]")
        if not 0 <= size <= MAX_PROBE_BYTES:
            raise SubmitError(400, f"size must be in [0, {MAX_PROBE_BYTES}] bytes")
        if not 0 < duration_s <= MAX_PROBE_SECONDS:
            raise SubmitError(400, f"duration_s must be in (0, {MAX_PROBE_SECONDS}]")
        count = max(1, int(rate_hz * duration_s))
        assert self._nursery is not None
        self._nursery.start_soon(self._probe, peer, 1.0 / rate_hz, size, count)
        return {"peer": peer, "frames": count, "rate_hz": rate_hz, "size": size}

    async def _probe(self, peer: str, interval: float, size: int, count: int) -> None:
        padding = b"\0" * max(0, size - 30)  # ≈ size bytes on the wire with headers
        stats = self.links.links[peer].stats
        start = trio.current_time()
        for seq in range(count):
            await trio.sleep_until(start + seq * interval)
            stats.probes_sent += 1
            self.links.send(peer, Probe(seq, padding))

    async def _on_request(self, req: TaskRequest, arrived: float, expected: float, *, event: str) -> None:
        if req.executor == self.me.name:
            assert self._nursery is not None
            self._nursery.start_soon(self._execute, req, arrived, expected, event)
            return
        problem, trace = self._forward(req, req.executor, Hop(self.me.name, arrived, 0.0, event, expected))
        if problem:
            await self._reply(TaskResult(req.task_id, req.entry, req.executor, ok=False, error=problem,
                                         ttl=self.config.limits.ttl, trace=trace))

    async def _execute(self, req: TaskRequest, arrived: float, expected: float, event: str) -> None:
        rec = self.tasks.get(req.task_id) if req.entry == self.me.name else None
        if rec is not None:
            rec.status = "running"
        ok, outputs, error, compute = False, {}, "", 0.0
        try:
            model = self.store.get(req.model) if self.store.loaded(req.model) else \
                await trio.to_thread.run_sync(self.store.get, req.model)
            arrays = {}
            for spec in model.inputs:
                if spec.name not in req.inputs:
                    raise InputError(f"input {spec.name!r} missing")
                arr = req.inputs[spec.name].to_array()
                if arr.dtype.name != spec.dtype:
                    raise InputError(f"input {spec.name!r}: dtype {arr.dtype.name}, model expects {spec.dtype}")
                check_shape(arr, spec)
                arrays[spec.name] = arr
            check_limits(req.model, arrays, model.manifest)
            result = await self.executor.run(req.model, arrays)
            ok, compute = True, result.compute_s
            outputs = {k: Tensor.from_array(np.asarray(v)) for k, v in result.outputs.items()}
        except ExecutorBusy as exc:
            error = f"{self.me.name}: executor busy ({exc}); retry later"
        except (ModelError, InputError, LimitError, ExecutionError) as exc:
            error = f"{self.me.name}: {exc}"
        batch = f", batch of {result.batch_size}" if ok and result.batch_size > 1 else ""
        hop = Hop(self.me.name, arrived, 0.0, "execute", expected,
                  detail=f"compute {compute * 1e3:.2f} ms{batch}" if ok else error)
        await self._reply(TaskResult(req.task_id, req.entry, self.me.name, ok, outputs, error,
                                     self.config.limits.ttl, req.trace, compute), hop)

    async def _reply(self, res: TaskResult, hop: Hop | None = None) -> None:
        """Send a result back to its entry node; ``hop`` is this node's trace entry, if any."""
        if res.entry == self.me.name:
            now = time.time()
            trace = res.trace + ((replace(hop, departed=now),) if hop else ())
            self._complete(replace(res, trace=trace), now, 0.0)
            return
        if hop is None:
            hop = Hop(self.me.name, time.time(), 0.0, "forward")
        problem, _ = self._forward(res, res.entry, hop)
        if problem:
            log.warning("result of %s cannot return to %s: %s", res.task_id, res.entry, problem)

    async def _on_result(self, res: TaskResult, arrived: float, expected: float) -> None:
        if res.entry == self.me.name:
            self._complete(res, arrived, expected)
            return
        problem, _ = self._forward(res, res.entry, Hop(self.me.name, arrived, 0.0, "forward", expected))
        if problem:
            log.warning("result of %s dropped at %s: %s", res.task_id, self.me.name, problem)

    def _forward(self, msg: TaskRequest | TaskResult, dst: str, hop: Hop) -> tuple[str, tuple[Hop, ...]]:
        """Append ``hop`` and hand ``msg`` to the next hop towards ``dst``.

        Returns (reason it could not be sent or "", the trace).  The hop's
        departure is stamped after routing, at the hand-off to the link, so
        route computation shows as dwell time at this node, not as link time.
        """
        nh = self._next_hop(dst) if msg.ttl > 1 else None
        trace = msg.trace + (replace(hop, departed=time.time()),)
        if msg.ttl <= 1:
            return f"TTL expired at {self.me.name}", trace
        if nh is None:
            return f"no route from {self.me.name} to {dst}", trace
        if nh not in self.links.links:
            return f"{self.me.name} has no laser link to {nh}", trace
        if not self.links.send(nh, replace(msg, ttl=msg.ttl - 1, trace=trace)):
            return f"link {self.me.name}→{nh} queue full", trace
        return "", trace

    def _complete(self, res: TaskResult, arrived: float, expected: float) -> None:
        rec = self.tasks.get(res.task_id)
        if rec is None:
            log.warning("result for unknown task %s", res.task_id)
            return
        hop = Hop(self.me.name, arrived, arrived, "deliver", expected)
        outputs = {k: t.to_array() for k, t in res.outputs.items()} if res.ok else None
        rec.finish(ok=res.ok, when=arrived, outputs=outputs, error=res.error,
                   trace=res.trace + (hop,) if expected else res.trace, compute_s=res.compute_s)

    # -- views -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        t = self.orbit_t()
        snap = self.router.snapshot(t)
        up = dict(snap.neighbours(self.me.index))
        neighbours = []
        for name, link in sorted(self.links.links.items(), key=lambda kv: self.peers[kv[0]].index):
            idx = self.peers[name].index
            neighbours.append({
                "node": name, "peer_id": self.peers[name].peer_id, "link_up": link.up,
                "in_sight": idx in up,
                "latency_ms": self.topology.link_latency(self.me.index, idx, t) * 1e3,
            })
        if self.is_ground:
            view = self.topology.ground_view(self.me.index, t)
            orbit: dict[str, Any] = {"ground_station": True, "t_s": t,
                                     "serving": None if view.serving is None or view.serving < 0
                                     else self.topology.names.name(view.serving),
                                     "visible": len(view.visible)}
        else:
            shell = self.constellation.shells[self.constellation.shell_of[self.me.index]]
            orbit = {"shell": shell.name, "plane": self.constellation.plane_of[self.me.index],
                     "slot": self.constellation.slot_of[self.me.index], "t_s": t,
                     "altitude_km": shell.altitude_km, "inclination_deg": shell.inclination_deg}
        return {
            "node": self.me.name, "index": self.me.index, "peer_id": self.me.peer_id,
            "kind": "ground" if self.is_ground else "satellite",
            "multiaddrs": self.host.listen_multiaddrs(),
            "orbit": orbit,
            "position": self.position(), "neighbours": neighbours,
            "models": self.store.names(),
            "tasks": self.tasks.counts(), "uptime_s": time.time() - self.started,
        }

    def health(self) -> dict[str, Any]:
        links = self.links.links
        return {"status": "ok", "node": self.me.name, "links_up": sum(l.up for l in links.values()),
                "links_total": len(links), "ready": self.links.all_up()}

    def link_stats(self, samples: bool = False) -> list[dict[str, Any]]:
        out = []
        for n, link in sorted(self.links.links.items()):
            row = {"peer": n, "up": link.up, **link.stats.as_dict()}
            if samples:
                row["probe_errors_s"] = list(link.stats.probe_errors)
            out.append(row)
        return out


def data_paths(data_dir: Path) -> dict[str, Path]:
    return {"identity": Path(data_dir) / "identity.key"}
