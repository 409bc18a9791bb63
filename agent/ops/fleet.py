"""Local fleet launcher: every satellite an agent process on this machine.

``prepare`` writes the fleet directory (config with a shared start time,
one data dir and identity per node, the peers file, the API token in
``token``, mode 0600); ``start`` spawns the agents; ``stop`` signals them.  Identities are created before the agents
start, so the peers file can name every node's peer id up front.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from agent.atomic import write_atomic
from agent.serve.auth import TOKEN_FILE, TokenError, ensure_token
from agent.client import ApiError, Client
from agent.links.fleet_identity import ComposeError
from agent.links.p2p import load_or_create_identity, peer_id_of
from agent.links.peers import PeerEntry, Peers
from agent.links.roster import ensure_authority, sign_roster, write_roster
from mesh.config import FleetConfig, config_to_toml
from mesh.energy import EnergyConfig
from mesh.ground import parse_station
from mesh.handover import HANDOVER_POLICIES
from mesh.world import World
from mesh.presets import preset

AUTHORITY_KEY = "authority.key"     # the fleet authority (operator side): signs roster.json
READY_POLLS_AT_ONCE = 32            # health polls in flight while a fleet starts (1,584 agents share the cores)
READY_NAMES_SHOWN = 12              # nodes named when some are not ready in time


class FleetError(RuntimeError):
    pass


@dataclass(frozen=True)
class FleetSpec:
    directory: Path = Path(".fleet")
    preset: str = "demo"
    n: int | None = None             # satellites; None = the preset's size
    host: str = "127.0.0.1"
    p2p_base_port: int = 4100
    api_base_port: int = 8100
    grpc_base_port: int = 7100         # gRPC inference service (Open Inference Protocol): base + i
    time_scale: float | None = None
    models: Path = Path("models")
    ground: tuple[str, ...] = ()       # extra ground-station agents: built-in names or lat,lon
    handover: str | None = None        # ground-station handover policy; None = the preset's
    energy: EnergyConfig | None = None  # battery model; None = the preset's
    journal: bool = True               # False: agents keep tasks in memory only (for measuring the journal)
    workers: int | None = None         # inference worker threads per agent; None = one per core
    auth: bool = True                  # False: an open lab (agents run with --no-auth)
    sats_per_process: int = 1          # K > 1: satellite hosts of K satellites each (agent/sat_host.py)


def walker_shape(n: int) -> tuple[int, int]:
    """planes × sats_per_plane for n satellites, as square as n allows."""
    planes = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return planes, n // planes


def fleet_config(spec: FleetSpec) -> FleetConfig:
    try:
        cfg = preset(spec.preset)
    except KeyError as exc:
        raise FleetError(str(exc.args[0])) from None
    if spec.n is not None and spec.n != cfg.size:
        if spec.n < 2:
            raise FleetError("a fleet needs at least 2 satellites")
        base = cfg.shells[0]
        planes, per_plane = walker_shape(spec.n)
        shell = replace(base, planes=planes, sats_per_plane=per_plane, phasing=1 if planes > 1 else 0,
                        name=f"{base.name}-{spec.n}")
        cfg = replace(cfg, name=f"{cfg.name}-{spec.n}", shells=(shell,))
    if spec.time_scale is not None:
        cfg = replace(cfg, clock=replace(cfg.clock, time_scale=spec.time_scale))
    if spec.energy is not None:
        cfg = replace(cfg, energy=spec.energy)
    if spec.ground:
        try:
            extra = tuple(parse_station(g) for g in spec.ground)
        except (KeyError, ValueError) as exc:
            raise FleetError(f"--ground: {exc.args[0] if exc.args else exc}") from None
        have = {st.name for st in cfg.ground.stations}
        cfg = replace(cfg, ground=replace(cfg.ground, stations=cfg.ground.stations + tuple(
            st for st in extra if st.name not in have)))
    if spec.handover is not None:
        if spec.handover not in HANDOVER_POLICIES:
            raise FleetError(f"--handover: must be one of {', '.join(HANDOVER_POLICIES)}, not {spec.handover!r}")
        cfg = replace(cfg, ground=replace(cfg.ground, handover=spec.handover))
    return cfg


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


DEFAULT_BASE_PORTS = (4100, 8100, 7100)       # libp2p, API, gRPC: FleetSpec's defaults


def with_ports_for(spec: FleetSpec, members: int) -> FleetSpec:
    """``spec`` with base ports whose ranges (one port per member each) do not meet.

    The defaults put libp2p at 4100, gRPC at 7100 and the API at 8100: they meet beyond 1,000
    members (starlink-s1 has 1,590), so for larger fleets the defaults are laid out anew: the API
    keeps 8100 (sat-0's address stays the same) and libp2p and gRPC follow its range, rounded up
    to the thousand (below Linux's outgoing ports, 32768, up to starlink-gen1's 4,414).  Ports a
    user chose are kept, and a clash among them is an error."""
    bases = (spec.p2p_base_port, spec.api_base_port, spec.grpc_base_port)
    if bases == DEFAULT_BASE_PORTS and members > 1000:
        step = -(-members // 1000) * 1000
        spec = replace(spec, p2p_base_port=8100 + step, grpc_base_port=8100 + 2 * step)
        bases = (spec.p2p_base_port, spec.api_base_port, spec.grpc_base_port)
    ranges = sorted(zip(bases, ("--p2p-port", "--api-port", "--grpc-port")))
    for (a, name_a), (b, name_b) in zip(ranges, ranges[1:]):
        if a + members > b:
            raise FleetError(f"{name_a} {a} and {name_b} {b}: {members} agents need {members} ports each, "
                             f"so these ranges overlap; choose base ports at least {members} apart")
    (low, low_name), (top, top_name) = ranges[0], ranges[-1]
    if low < 1 or top + members > 65536:
        raise FleetError(f"{low_name if low < 1 else top_name} {low if low < 1 else top}: "
                         f"the {members} ports from there must fit in 1–65535")
    return spec


def prepare(spec: FleetSpec) -> tuple[FleetConfig, Peers]:
    cfg = fleet_config(spec).with_start(time.time())
    d = spec.directory
    (d / "logs").mkdir(parents=True, exist_ok=True)
    entries = []
    names = World.from_config(cfg).names
    for i in range(len(names)):
        name = names.name(i)
        p2p, api, grpc = spec.p2p_base_port + i, spec.api_base_port + i, spec.grpc_base_port + i
        for port in (p2p, api, grpc):
            if not _port_free(spec.host, port):
                raise FleetError(f"port {spec.host}:{port} for {name} is in use; is a fleet already up "
                                 f"(`orbitmesh down`), or choose other base ports")
        pid = peer_id_of(load_or_create_identity(d / "data" / name / "identity.key"))
        entries.append(PeerEntry(name, i, pid, f"/ip4/{spec.host}/tcp/{p2p}/p2p/{pid}", f"http://{spec.host}:{api}",
                                 f"{spec.host}:{grpc}"))
    peers = Peers(entries)
    if spec.auth:
        try:
            ensure_token(d / TOKEN_FILE)       # kept across up/down, like the identities; $ORBITMESH_TOKEN wins
        except TokenError as exc:
            raise FleetError(str(exc)) from None
    write_atomic(d / "config.toml", config_to_toml(cfg))
    write_atomic(d / "peers.json", peers.to_json())
    # The fleet authority's key stays here, with the operator; agents get its
    # public half and the roster it signed (agent/links/roster.py).
    authority = ensure_authority(d / AUTHORITY_KEY)
    write_roster(d / "roster.json", sign_roster({e.name: e.peer_id for e in entries}, authority, fleet=cfg.name))
    return cfg, peers


def _shared_args(spec: FleetSpec) -> list[str]:
    d = spec.directory
    return ["--config", str(d / "config.toml"), "--peers", str(d / "peers.json"),
            "--roster", str(d / "roster.json"), "--authority", str(d / (AUTHORITY_KEY + ".pub")),
            *(["--api-token-file", str(d / TOKEN_FILE)] if spec.auth else ["--no-auth"]),
            *([] if spec.journal else ["--no-journal"]),
            *([] if spec.workers is None else ["--workers", str(spec.workers)])]


def agent_command(spec: FleetSpec, name: str) -> list[str]:
    who = ["--sat", name.split("-", 1)[1]] if name.startswith("sat-") else ["--node", name]
    return [sys.executable, "-m", "agent", "--models", str(spec.models), "agent", *who,
            "--data-dir", str(spec.directory / "data" / name), *_shared_args(spec)]


def host_groups(names: list[str], k: int) -> dict[str, list[str]]:
    """Satellite hosts for K satellites per process: ⌈N/K⌉ runs of consecutive satellites.

    Satellites are numbered plane by plane, so a run keeps neighbours of a
    plane together (intra-plane links never re-wire); with K a multiple or a
    divisor of the plane size, no plane is split across processes more than it
    must be.  Ground stations keep a process each (K = 1 for them)."""
    if k < 1:
        raise FleetError(f"--sats-per-process must be at least 1, not {k}")
    sats = [n for n in names if n.startswith("sat-")]
    groups = {f"host-{i // k}": sats[i:i + k] for i in range(0, len(sats), k)}
    return {**groups, **{n: [n] for n in names if not n.startswith("sat-")}}


def host_command(spec: FleetSpec, host: str, names: list[str]) -> list[str]:
    from agent.ops.sat_host_control import ControlError, socket_path
    try:
        control = socket_path(spec.directory, host)
    except ControlError as exc:
        raise FleetError(str(exc)) from None
    return [sys.executable, "-m", "agent", "--models", str(spec.models), "sat-host", "--names", ",".join(names),
            "--host-name", host, "--data-root", str(spec.directory / "data"), "--control", str(control),
            *_shared_args(spec)]


def _spawn(spec: FleetSpec, command: list[str], log_name: str) -> subprocess.Popen:
    log = open(spec.directory / "logs" / f"{log_name}.log", "ab")
    # One BLAS thread per agent: many agents share few cores, and multi-threaded
    # BLAS in each made the ground-visibility check 5–10× slower here.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    # Own session: a Ctrl-C in the launcher's terminal reaches the launcher,
    # which then stops the agents in order, instead of killing them mid-write.
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def start_agent(spec: FleetSpec, name: str) -> subprocess.Popen:
    proc = _spawn(spec, agent_command(spec, name), name)
    _record_pid(spec.directory, {name: proc.pid})
    return proc


def start_host(spec: FleetSpec, host: str, names: list[str]) -> subprocess.Popen:
    """One satellite host process for ``names``; its log is logs/HOST.log, and each name's log links to it."""
    proc = _spawn(spec, host_command(spec, host, names), host)
    for name in names:
        link = spec.directory / "logs" / f"{name}.log"
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"{host}.log")
    _record_pid(spec.directory, {name: proc.pid for name in names}, {host: names})
    return proc


def _record_pid(directory: Path, pids: dict[str, int], hosts: dict[str, list[str]] | None = None) -> None:
    """Keep fleet.json's pid list current, so `down` also stops restarted agents."""
    path = directory / "fleet.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    state["pids"].update(pids)
    if hosts:
        state.setdefault("hosts", {}).update(hosts)
    write_atomic(path, json.dumps(state, indent=1))


def fleet_hosts(directory: Path) -> dict[str, list[str]]:
    """The satellite hosts of a running fleet (host name → its satellites); {} when every agent has a process."""
    try:
        return json.loads((directory / "fleet.json").read_text()).get("hosts", {})
    except (OSError, ValueError):
        return {}


def start(spec: FleetSpec) -> tuple[FleetConfig, Peers, dict[str, subprocess.Popen]]:
    if spec.sats_per_process < 1:
        raise FleetError(f"--sats-per-process must be at least 1, not {spec.sats_per_process}")
    if not (spec.models / "digits.onnx").is_file():
        raise FleetError(f"no models in {spec.models}/: build them with `python -m agent.zoo build --out {spec.models}`")
    if (spec.directory / "fleet.json").exists() and any(_alive(p) for p in _pids(spec.directory).values()):
        raise FleetError(f"a fleet is already running from {spec.directory}; `orbitmesh down` first")
    spec = with_ports_for(spec, len(World.from_config(fleet_config(spec)).names))
    cfg, peers = prepare(spec)
    write_atomic(spec.directory / "fleet.json", json.dumps(
        {"pids": {}, "started": time.time(), "spec": {
            "preset": spec.preset, "n": cfg.size, "host": spec.host, "p2p_base_port": spec.p2p_base_port,
            "api_base_port": spec.api_base_port, "grpc_base_port": spec.grpc_base_port,
            "models": str(spec.models), "auth": spec.auth, "sats_per_process": spec.sats_per_process}}, indent=1))
    if spec.sats_per_process == 1:
        return cfg, peers, {name: start_agent(spec, name) for name in peers.names()}
    procs: dict[str, subprocess.Popen] = {}
    for host, names in host_groups(peers.names(), spec.sats_per_process).items():
        proc = start_agent(spec, names[0]) if host == names[0] else start_host(spec, host, names)
        procs.update({n: proc for n in names})
    return cfg, peers, procs


async def wait_ready(peers: Peers, timeout: float = 120.0, progress=None,
                     procs: dict[str, subprocess.Popen] | None = None, log_dir: Path | None = None) -> None:
    """Until every agent answers /v1/health with all its links up and every
    member of the fleet known alive (membership has converged).

    An agent that exits instead is reported with the end of its log, so the
    cause survives even when the fleet directory is temporary.
    """
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    clients = {n: Client(peers[n].api, timeout=2.0, token="") for n in peers.names()}   # reads need no token
    limit = anyio.CapacityLimiter(READY_POLLS_AT_ONCE)

    async def poll(name: str) -> None:
        async with limit:
            try:
                h = await clients[name].health()
            except ApiError:
                return
            if h.get("ready") and h.get("members_alive", 0) >= h.get("members_total", 0):
                ready.add(name)

    try:
        while True:
            for name in clients:
                if name not in ready and procs and procs[name].poll() is not None:
                    raise FleetError(f"{name} exited with code {procs[name].returncode}"
                                     + _log_tail(log_dir, name))
            async with anyio.create_task_group() as tg:
                for name in clients:
                    if name not in ready:
                        tg.start_soon(poll, name)
            if progress:
                progress(len(ready), len(clients))
            if len(ready) == len(clients):
                return
            if time.monotonic() > deadline:
                missing = sorted(set(clients) - ready, key=lambda n: peers[n].index)
                shown = ", ".join(missing[:READY_NAMES_SHOWN])
                more = f" and {len(missing) - READY_NAMES_SHOWN} more" if len(missing) > READY_NAMES_SHOWN else ""
                raise FleetError(f"not ready after {timeout:.0f}s: {len(missing)} of {len(clients)}: {shown}{more}")
            await anyio.sleep(0.3)
    finally:
        for c in clients.values():
            await c.aclose()


def _log_tail(log_dir: Path | None, name: str, lines: int = 15) -> str:
    if log_dir is None:
        return "; see its log"
    try:
        tail = (log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"; no log at {log_dir / f'{name}.log'}"
    return ":\n    " + "\n    ".join(tail)


def _pids(directory: Path) -> dict[str, int]:
    try:
        return json.loads((directory / "fleet.json").read_text())["pids"]
    except (OSError, ValueError, KeyError):
        return {}


def _alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # not a recycled pid of something else
    return b"agent" in cmd and (b"--sat" in cmd or b"--node" in cmd or b"--names" in cmd)


def stop(directory: Path, timeout: float = 10.0) -> int:
    """SIGTERM every agent of the fleet, SIGKILL stragglers; returns how many were running."""
    pids = {n: p for n, p in _pids(directory).items() if _alive(p)}
    for pid in set(pids.values()):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        (directory / "fleet.json").unlink()
    except FileNotFoundError:
        pass
    return len(pids)


def load_peers(directory: Path) -> Peers:
    path = directory / "peers.json"
    if not path.exists():
        raise FleetError(f"no fleet at {directory}/ (no peers.json); start one with `orbitmesh up`")
    return Peers.load(path)


# -- containers of K satellites (orbitmesh compose/stack --sats-per-container) --------------------

MAX_SATS_PER_CONTAINER = 256


def container_groups(names: list[str], k: int) -> dict[str, list[str]]:
    """Service name → the nodes it runs: hosts of K consecutive satellites, one service per
    ground station (K = 1: one service per node, named after it)."""
    if not 1 <= k <= MAX_SATS_PER_CONTAINER:
        raise ComposeError(f"--sats-per-container must be 1 to {MAX_SATS_PER_CONTAINER}, not {k}")
    if k == 1:
        return {n: [n] for n in names}
    try:
        return host_groups(names, k)
    except FleetError as exc:
        raise ComposeError(str(exc)) from None


def container_slots(names: list[str], k: int) -> dict[str, int]:
    """Every node's slot in its container (0 when it has a container of its own)."""
    return {n: s for group in container_groups(names, k).values() for s, n in enumerate(group)}
