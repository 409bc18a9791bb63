"""``orbitmesh compose --sats-per-container K``: the file, the keys and ports init issues, the
engine's chaos on one hosted satellite (faked engine), and a host's control command against a
real satellite host.  The containers themselves run in ``make test-docker``
(deploy/test-compose.sh, stage 8)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon import bound_to
from agent.links.fleet_identity import API_PORT, GRPC_PORT, P2P_PORT, slot_ports
from agent.links.peers import Peers
from agent.ops.compose import ComposeError, ComposeSpec, compose_document, generate, init_fleet
from agent.ops.compose_hosts import container_groups, container_slots
from agent.ops.engine_chaos import ChaosError, EngineChaos

ROOT = Path(__file__).resolve().parent.parent


def test_slot_ports_keep_slot_zero_and_never_collide():
    assert slot_ports(0) == (P2P_PORT, API_PORT, GRPC_PORT)
    ports = [p for s in range(256) for p in slot_ports(s)]
    assert len(ports) == len(set(ports))
    with pytest.raises(ValueError, match="at most"):
        slot_ports(1000)


def test_groups_keep_planes_together_and_ground_stations_alone():
    names = [f"sat-{i}" for i in range(24)] + ["gs-london"]
    groups = container_groups(names, 12)
    assert groups == {"host-0": [f"sat-{i}" for i in range(12)], "host-1": [f"sat-{i}" for i in range(12, 24)],
                      "gs-london": ["gs-london"]}
    slots = container_slots(names, 12)
    assert slots["sat-0"] == 0 and slots["sat-13"] == 1 and slots["gs-london"] == 0
    assert container_groups(names, 1) == {n: [n] for n in names}
    for bad in (0, 257):
        with pytest.raises(ComposeError, match="--sats-per-container"):
            container_groups(names, bad)


def test_document_runs_hosts_of_k_with_every_satellite_reachable_by_name():
    spec = ComposeSpec(sats_per_container=12)
    doc = compose_document(spec)
    svc = doc["services"]
    assert [k for k in svc if k not in ("init", "prometheus")] == ["host-0", "host-1", "gs-london", "gs-tokyo"]
    h1 = svc["host-1"]
    group = [f"sat-{i}" for i in range(12, 24)]
    assert h1["command"][:4] == ["python", "-m", "agent.ops.compose", "host"]
    assert h1["command"][h1["command"].index("--names") + 1] == ",".join(group)
    # every hosted satellite's name resolves to its host: peers.json names nodes by their own names
    assert h1["networks"] == {"constellation": {"aliases": group}}
    # each satellite keeps its own volume (its key and journals), mounted by name
    assert h1["volumes"] == ["fleet:/fleet:ro", *(f"{n}-data:/data/{n}" for n in group)]
    assert all(f"{n}-data" in doc["volumes"] for n in group)
    # sat-i is published where a container of its own would be: api_base + i, onto its slot's ports
    assert "127.0.0.1:8113:8082" in h1["ports"] and "127.0.0.1:8213:8083" in h1["ports"]
    assert len(h1["ports"]) == 24
    assert h1["labels"]["org.orbitmesh.sats"] == ",".join(group)
    assert h1["labels"]["org.orbitmesh.node"] == "host-1"
    health = h1["healthcheck"]["test"][-1]
    assert "for p in 8080 8082" in health and str(API_PORT + 22) in health
    # ground stations and the init service are as before, and init learns K
    assert svc["gs-london"]["command"][:4] == ["python", "-m", "agent.ops.compose", "node"]
    assert svc["init"]["command"][-2:] == ["--sats-per-container", "12"]
    assert "--sats-per-container 12" in generate(spec).splitlines()[0]
    # K = 1 is the committed file, byte for byte
    assert compose_document(ComposeSpec(sats_per_container=1)) == compose_document()


def test_publish_first_publishes_only_sat_0():
    doc = compose_document(ComposeSpec(sats_per_container=6, publish="first"))
    assert doc["services"]["host-0"]["ports"] == ["127.0.0.1:8100:8080", "127.0.0.1:8200:8081"]
    assert "ports" not in doc["services"]["host-1"]


def test_init_issues_each_hosted_satellite_its_own_ports(tmp_path):
    fleet, keys = tmp_path / "fleet", tmp_path / "keys"
    init_fleet(fleet, n=12, ground=("london",), now=1000.0, keys=keys, authority=tmp_path / "authority",
               sats_per_container=6)
    peers = Peers.load(fleet / "peers.json")
    e = peers["sat-7"]                                   # host-1, slot 1
    assert "/dns4/sat-7/tcp/4002/p2p/" in e.multiaddr and e.api == "http://sat-7:8082" and e.grpc == "sat-7:8083"
    assert peers["gs-london"].api == "http://gs-london:8080"
    assert all((keys / n / "identity.key").exists() for n in peers.names())
    prom = (fleet / "prometheus.yml").read_text()
    assert "sat-7:8082" in prom and "sat-6:8080" in prom and "gs-london:8080" in prom
    with pytest.raises(ComposeError, match="issued keys"):
        init_fleet(tmp_path / "derived", n=12, now=1000.0, sats_per_container=6)


def test_a_hosted_satellite_binds_every_interface_on_its_own_ports(tmp_path):
    init_fleet(tmp_path, n=12, now=1000.0, keys=tmp_path / "k", authority=tmp_path / "a", sats_per_container=6)
    e = Peers.load(tmp_path / "peers.json")["sat-8"]
    assert bound_to(e, "0.0.0.0") == (("0.0.0.0", 4003), ("0.0.0.0", 8084), ("0.0.0.0", 8085))


# -- the engine's chaos on a hosted satellite (faked engine) ----------------------------------


def answer_control(container, cmd):
    """What the control command run in a host container answers (``docker exec``), on a fake."""
    container.execs.append(cmd)
    assert cmd[:3] == ["python", "-m", "agent.ops.compose_hosts"]
    verb, node = cmd[3], cmd[4]
    if node not in container.sats:
        return 2, f"error: {node!r} is not hosted here".encode()
    container.sats[node] = {"kill": "down", "restart": "running", "pause": "paused", "resume": "running"}.get(
        verb, container.sats[node])
    return 0, (container.sats[node] + "\n").encode()


class FakeHost:
    """A host container: its satellites answer the control command run in it."""

    def __init__(self, name, sats, project="p"):
        self.name = name
        self.labels = {"org.orbitmesh.node": name, "org.orbitmesh.sats": ",".join(sats),
                       "com.docker.compose.project": project}
        self.status = "running"
        self.sats = {s: "running" for s in sats}
        self.execs = []

    def reload(self):
        pass

    def start(self):
        self.status = "running"
        self.sats = {s: "running" for s in self.sats}

    def kill(self, signal):
        self.status = "exited"

    def exec_run(self, cmd):
        return answer_control(self, cmd)


class FakeEngine:
    def __init__(self, containers):
        self.all = containers
        self.containers = self

    def list(self, all, filters):      # noqa: A002  (docker's keyword)
        assert all is True
        want = [lab.split("=", 1) for lab in filters["label"]]
        return [c for c in self.all
                if not [k for k in want if (c.labels.get(k[0]) != k[1] if len(k) == 2 else k[0] not in c.labels)]]


def test_engine_chaos_acts_on_one_hosted_satellite_through_its_host():
    h0, h1 = FakeHost("host-0", ["sat-0", "sat-1"]), FakeHost("host-1", ["sat-2", "sat-3"])
    other = FakeHost("host-0", ["sat-0", "sat-1"], project="other")
    chaos = EngineChaos("p", client=FakeEngine([h0, h1, other]))
    assert chaos.kill("sat-3") == "exited"
    assert h1.execs[-1] == ["python", "-m", "agent.ops.compose_hosts", "kill", "sat-3"]
    assert h1.sats == {"sat-2": "running", "sat-3": "down"} and h1.status == "running"
    assert chaos.state("sat-3") == "exited" and chaos.state("sat-2") == "running"
    assert chaos.start("sat-3") == "running" and h1.execs[-1][3] == "restart"
    assert chaos.pause("sat-0") == "paused" and chaos.resume("sat-0") == "running"
    assert other.execs == []                        # the other project's sat-0 untouched
    # the host container itself: a correlated failure, then starting any of its satellites starts it
    assert chaos.kill("host-1") == "exited" and h1.status == "exited"
    assert chaos.state("sat-2") == "exited"
    with pytest.raises(ChaosError, match="host container host-1 is exited"):
        chaos.pause("sat-2")
    assert chaos.start("sat-2") == "running" and h1.status == "running"
    with pytest.raises(ChaosError, match="no container for sat-9"):
        chaos.kill("sat-9")


# -- the control command inside a host container, against a real satellite host -------------


def test_control_command_kills_and_restarts_one_satellite_of_a_real_host(tmp_path, models_dir):
    """``python -m agent.ops.compose_hosts`` (what the engine's chaos runs in the container)
    against a real ``orbitmesh sat-host`` of two satellites listening on every interface
    (``--bind``), as a host container runs them."""
    import time

    from agent.ops.fleet import FleetSpec, host_command, prepare
    from tests.conftest import free_port_block
    spec = FleetSpec(directory=tmp_path, n=2, models=models_dir, p2p_base_port=free_port_block(3),
                     api_base_port=free_port_block(3), grpc_base_port=free_port_block(3))
    _, peers = prepare(spec)
    sock = tmp_path / "c.sock"
    cmd = host_command(spec, "host-0", ["sat-0", "sat-1"])
    cmd[cmd.index("--control") + 1] = str(sock)
    proc = subprocess.Popen([*cmd, "--bind", "0.0.0.0", "--no-realtime"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def control(*argv, token_file=tmp_path / "token"):
        return subprocess.run([sys.executable, "-m", "agent.ops.compose_hosts", *argv, "--control", str(sock),
                               "--token-file", str(token_file)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 90
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert sock.exists(), "the host never opened its control socket"
        r = control("kill", "sat-1")
        assert r.returncode == 0 and r.stdout.strip() == "down", r.stderr
        assert control("status", "sat-0").stdout.strip() == "running"
        r = control("restart", "sat-1")
        assert r.returncode == 0 and r.stdout.strip() == "running", r.stderr
        r = control("kill", "sat-7")
        assert r.returncode == 2 and "not hosted here" in r.stderr
        r = control("kill", "sat-0", token_file=tmp_path / "no-such-token")
        assert r.returncode == 2 and "token" in r.stderr
        assert control("status", "sat-0").stdout.strip() == "running"
        # bound to every interface, on the port its peers entry lists
        import httpx
        port = int(peers["sat-0"].api.rsplit(":", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- what the engine hands the shell: compose and stack files interpolate ``$`` -----------------


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def test_no_string_in_the_compose_or_stack_files_is_interpolated_by_the_engine():
    """``docker compose`` and ``docker stack deploy`` replace ``$name`` with the variable of
    their own environment (unset: ""), so a shell variable must be written ``$$name``; the
    files' own ``${VAR:-default}`` are meant for the engine.  The hosts' health check once
    went out as ``/dev/tcp/127.0.0.1/$p``: every check failed."""
    from agent.ops.stack import StackSpec, stack_document
    docs = {"compose K=1": compose_document(ComposeSpec()), "compose K=6": compose_document(ComposeSpec(sats_per_container=6)),
            "stack K=1": stack_document(StackSpec()), "stack K=12": stack_document(StackSpec(sats_per_container=12))}
    for what, doc in docs.items():
        for s in strings(doc):
            assert not re.search(r"\$(?!\{)", s.replace("$$", "")), f"{what}: an unescaped $ in {s!r}"
    check = compose_document(ComposeSpec(sats_per_container=6))["services"]["host-0"]["healthcheck"]["test"]
    assert "/dev/tcp/127.0.0.1/$$p" in check[-1]


def engine_interpolates(s: str) -> str:
    """What compose does to a string of the file, with none of its variables set."""
    return re.sub(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", "", s.replace("$$", "\0")).replace("\0", "$")


def test_the_hosts_health_check_as_the_engine_runs_it_needs_every_satellite(tmp_path):
    """The check, interpolated as the engine does (``$$`` → ``$``), run by bash against stub
    APIs: healthy only when every slot's API answers ready."""
    import http.server
    import threading

    check = compose_document(ComposeSpec(sats_per_container=3))["services"]["host-0"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "bash", "-c"]
    answers = {}

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):      # noqa: N802  (http.server's name)
            body = answers[self.server.server_address[1]].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api) for _ in range(3)]
    ports = [s.server_address[1] for s in servers]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    # the container's slot ports (8080, 8082, 8084) are this test's stubs' ports
    script = engine_interpolates(check[3])
    for slot, port in enumerate(ports):
        script = script.replace(f" {slot_ports(slot)[1]}", f" {port}", 1)
    try:
        for p in ports:
            answers[p] = '{"status":"ok","ready":true}'
        assert subprocess.run(["bash", "-c", script], timeout=10).returncode == 0
        answers[ports[2]] = '{"status":"ok","ready":false}'
        assert subprocess.run(["bash", "-c", script], timeout=10).returncode != 0
    finally:
        for s in servers:
            s.shutdown()
