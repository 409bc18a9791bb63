import contextlib
from functools import partial
import os
import secrets
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

# One API token for the session: every fleet a test starts takes it ($ORBITMESH_TOKEN wins over a
# generated one), and every Client finds it there.  Tests of the token's own paths unset it.
TOKEN = os.environ.setdefault("ORBITMESH_TOKEN", secrets.token_urlsafe(32))
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def with_token(triton_client):
    """A tritonclient (HTTP or gRPC) that sends the token on every call (header, or gRPC metadata)."""
    def plugin(request):
        request.headers["authorization"] = AUTH["Authorization"]
    triton_client.register_plugin(plugin)
    return triton_client


def _ephemeral_low() -> int:
    """The first port the kernel may hand out as a connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """A base port with ``n`` consecutive free ports (checked by binding).

    The block lies below the kernel's ephemeral range: a port taken from
    inside it can be handed to some outgoing connection (an agent dialling
    its neighbours, say) between this check and the agent's bind.
    """
    import random
    rng = random.Random()
    low = _ephemeral_low()
    for _ in range(200):
        base = rng.randrange(10000, low - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind((host, p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    if not (MODELS / "digits.onnx").is_file():
        from agent.zoo import build
        build(MODELS)
    return MODELS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """``matmul``, a real one-node ONNX model with its manifest, built here with the ``onnx``
    helper API (a core dependency; no torch): for tests that need a model but not the zoo."""
    from agent.zoo import matmul
    out = tmp_path_factory.mktemp("tiny-models")
    matmul.build(out)
    return out


@pytest.fixture
def virtual_clock():
    """The process on a virtual wall clock (``agent.wallclock``) driven by the simulator's
    ``JumpClock``; a test that takes it as an argument runs on it (pytest-trio passes a
    Clock fixture to ``trio.run``)."""
    from agent import wallclock
    clock = wallclock.JumpClock()
    with wallclock.virtual(clock):
        yield clock


@pytest.fixture(scope="session")
def kv():
    """kubernetes_validate, its schema files parsed once a session: each validate() call re-reads
    and parses megabytes of JSON (~14 ms a document); the parsed schemas are only read."""
    import functools

    import kubernetes_validate
    import kubernetes_validate.utils as utils
    original = utils.schema_contents
    utils.schema_contents = functools.lru_cache(maxsize=64)(original)
    try:
        yield kubernetes_validate
    finally:
        utils.schema_contents = original


@contextlib.contextmanager
def local_fleet(directory: Path, models: Path, n: int, *, ground: tuple[str, ...] = (), ready_timeout: float = 120.0,
                **spec_fields):
    """A real local fleet for a test module: started on free ports, ready, always stopped (a SIGTERM
    to the test or bench process included: it exits through the ``finally`` instead of orphaning agents)."""
    import signal
    import threading

    import trio

    from agent.ops import fleet
    from mesh.world import World
    # every node of the config, the preset's own ground stations included (starlink-s1 has six)
    nodes = len(World.from_config(fleet.fleet_config(fleet.FleetSpec(n=n, ground=tuple(ground), **{
        k: v for k, v in spec_fields.items() if k in ("preset", "time_scale")}))).names)
    base = free_port_block(3 * nodes)
    spec = fleet.FleetSpec(directory=directory, n=n, p2p_base_port=base, api_base_port=base + nodes,
                           grpc_base_port=base + 2 * nodes, models=models, ground=tuple(ground), **spec_fields)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main else None
    cfg, peers, procs = fleet.start(spec)
    try:
        trio.run(partial(fleet.wait_ready, peers, ready_timeout, None, procs, log_dir=directory / "logs"))
        yield spec, cfg, peers, procs
    finally:
        fleet.stop(directory)
        if on_main:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


async def membership_views(peers, names) -> dict:
    """``GET /v1/membership`` of each named node."""
    from agent.client import Client
    out = {}
    for n in names:
        async with Client(peers[n].api) as c:
            out[n] = await c.membership()
    return out


def member(view: dict, node: str) -> dict:
    """One member's row (status, incarnation, state) in a membership view."""
    return next(m for m in view["members"] if m["node"] == node)


# -- make test-fast: what starts no process ------------------------------------------------------
#
# A test that starts a process (an agent fleet, the CLI or a build in a
# subprocess) or needs the built models carries the ``slow`` marker; `make
# test-fast` runs everything else (`-m "not slow and not engine"`). Tests that
# use the ``models_dir`` fixture are marked here; any other unmarked test that
# starts a Python process (an agent, the CLI, a build) or docker fails, so a
# forgotten marker cannot slow test-fast down unnoticed.
# A test that needs a model but not the zoo takes ``tiny_models`` (matmul, built
# here in ~0.2 s) instead; one that runs nodes takes ``virtual_clock`` as well.

def pytest_collection_modifyitems(config, items):
    for item in items:
        if "models_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


class ProcessStarted(AssertionError):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around the whole of an unmarked test, its fixtures' set-up included: no process starts."""
    if item.get_closest_marker("slow") is not None or item.get_closest_marker("engine") is not None:
        yield
        return
    import os
    import subprocess
    import sys
    original = subprocess.Popen._execute_child

    def refuse(self, args, *rest, **kwargs):
        # Python processes (agents, the CLI, builds) and the engine's tools; a library's
        # own helper (ctypes.util.find_library runs ldconfig on import) is let through.
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        prog = os.path.basename(os.fsdecode(argv[0]).split()[0]) if argv else ""
        if argv and (os.fsdecode(argv[0]) == sys.executable or prog.startswith(("python", "orbitmesh", "docker"))):
            raise ProcessStarted(f"{item.nodeid} starts a process ({args!r}): "
                                 "mark it @pytest.mark.slow (make test-fast leaves those out)")
        return original(self, args, *rest, **kwargs)
    subprocess.Popen._execute_child = refuse
    try:
        yield
    finally:
        subprocess.Popen._execute_child = original
