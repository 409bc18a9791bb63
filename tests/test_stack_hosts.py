"""``orbitmesh stack --sats-per-container K``: the stack document, the keys and ports it issues,
a host replica's entry point, the gateway by peers file, and the engine's chaos on hosted
satellites (faked engine).  The stack itself runs in ``make test-swarm`` (deploy/test-swarm.sh,
stage "hosts", ``ONLY=hosts`` alone)."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from agent.links.fleet_identity import ComposeError
from agent.links.peers import Peers
from agent.links.roster import holds_key, load_roster, read_seed
from agent.ops.compose_hosts import run_host
from agent.ops.engine_chaos import ChaosError, SwarmChaos
from agent.ops.stack import StackSpec, stack_document, write_stack
from agent.serve import gateway
from tests.conftest import free_port_block
from tests.test_compose_hosts import answer_control
from tests.http_stubs import http_stubs

ROOT = Path(__file__).resolve().parent.parent
GROUP_1 = [f"sat-{i}" for i in range(12, 24)]


def test_demo_in_hosts_of_12_every_satellite_reachable_by_name_each_host_only_its_keys():
    doc = stack_document(StackSpec(sats_per_container=12))
    svc = doc["services"]
    assert list(svc) == ["host-0", "host-1", "gs-london", "gs-tokyo", "api"]      # no `sat` service
    h1 = svc["host-1"]
    cmd = h1["command"]
    assert cmd[:4] == ["python", "-m", "agent.ops.compose", "host"]
    assert cmd[cmd.index("--names") + 1] == ",".join(GROUP_1) and cmd[cmd.index("--host-name") + 1] == "host-1"
    assert cmd[cmd.index("--key-dir") + 1] == "/run/secrets" and cmd[cmd.index("--config") + 1] == "/etc/orbitmesh/fleet.toml"
    assert "--discover" not in cmd and "--no-realtime" not in cmd and h1["cap_add"] == ["SYS_NICE"]
    # every hosted satellite's name resolves to its replica itself (no virtual IP: no IPVS needed)
    assert h1["networks"] == {"constellation": {"aliases": GROUP_1}}
    assert h1["deploy"]["replicas"] == 1 and h1["deploy"]["endpoint_mode"] == "dnsrr"
    assert h1["deploy"]["restart_policy"]["condition"] == "any" and "placement" not in h1["deploy"]
    assert h1["hostname"] == "host-1"
    # a secret per satellite, named only by its host; its key file is the issued one
    assert h1["secrets"] == [{"source": f"key-{n}", "target": f"node-key-{n}", "mode": 0o400} for n in GROUP_1] \
        + [{"source": "api-token", "target": "api-token", "mode": 0o400}]
    for name, s in svc.items():
        if name != "api":
            assert {x["source"] for x in s["secrets"]} & {f"key-{n}" for n in GROUP_1} == \
                ({f"key-{n}" for n in GROUP_1} if name == "host-1" else set())
    assert doc["secrets"]["key-sat-13"] == {"file": "stack-keys/nodes/sat-13/identity.key"}
    assert set(doc["secrets"]) == {f"key-sat-{i}" for i in range(24)} | {"key-gs-london", "key-gs-tokyo", "api-token"}
    assert h1["labels"] == {"org.orbitmesh.node": "host-1", "org.orbitmesh.role": "satellite",
                            "org.orbitmesh.sats": ",".join(GROUP_1)}
    # alive, not ready (swarm resolves only healthy tasks): every hosted satellite's API on its slot's port
    health = h1["healthcheck"]["test"][-1]
    assert "for p in 8080 8082 " in health and " 8102; do" in health and '"status":"ok"' in health
    assert "ready" not in health
    assert h1["volumes"] == [{"type": "volume", "source": "journal", "target": "/data"}]
    assert doc["volumes"] == {"journal": {"name": "orbitmesh-{{.Service.ID}}-{{.Task.Slot}}"}}
    # ground stations: a service each, their own key, found by their service name
    gs = svc["gs-london"]
    assert gs["command"][:6] == ["python", "-m", "agent.ops.compose", "node", "--node", "gs-london"]
    assert gs["command"][gs["command"].index("--node-key") + 1] == "/run/secrets/node-key-gs-london"
    assert [x["source"] for x in gs["secrets"]] == ["key-gs-london", "api-token"]
    assert gs["networks"] == ["constellation"] and gs["deploy"]["endpoint_mode"] == "dnsrr"
    assert gs["labels"]["org.orbitmesh.role"] == "ground" and "org.orbitmesh.sats" not in gs["labels"]
    # port 8080 on every machine: the gateway, by the peers file (names and slot ports)
    api = svc["api"]
    assert api["command"] == ["python", "-m", "agent.serve.gateway", "--peers", "/etc/orbitmesh/fleet/peers.json",
                              "--port", "8080"]
    assert api["configs"] == [{"source": "fleet-peers", "target": "/etc/orbitmesh/fleet/peers.json", "mode": 0o444}]
    assert api["ports"] == [{"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}]
    assert api["deploy"]["mode"] == "global"
    # K = 1 is the one-service stack, unchanged (the committed deploy/stack.yml: test_stack.py)
    assert stack_document(StackSpec(sats_per_container=1)) == stack_document()


def test_bad_k_and_what_k_over_1_cannot_do():
    for k in (0, 257, -3):
        with pytest.raises(ComposeError, match="--sats-per-container must be 1 to 256"):
            stack_document(StackSpec(sats_per_container=k))
    with pytest.raises(ComposeError, match="--publish mesh needs one service"):
        stack_document(StackSpec(sats_per_container=6, publish="mesh"))
    with pytest.raises(ComposeError, match="--max-per-machine caps one service"):
        stack_document(StackSpec(sats_per_container=6, max_per_machine=2))
    from agent.ops.stack import _fleet
    from agent.ops.stack_hosts import hosts_header_line
    spec = StackSpec(n=40, ground=(), sats_per_container=8)
    assert hosts_header_line(spec, _fleet(spec)).startswith("# 40 satellites in 5 services host-0 … host-4 of up to 8")
    spec = StackSpec(n=4, ground=(), sats_per_container=8)
    assert hosts_header_line(spec, _fleet(spec)).startswith("# 4 satellites in 1 service host-0 of up to 8")
    doc = stack_document(StackSpec(n=7, ground=(), sats_per_container=3, realtime=False))
    assert list(doc["services"]) == ["host-0", "host-1", "host-2", "api"]
    h2 = doc["services"]["host-2"]                 # the last host holds what is left: one satellite
    assert h2["networks"] == {"constellation": {"aliases": ["sat-6"]}} and h2["labels"]["org.orbitmesh.sats"] == "sat-6"
    assert "--no-realtime" in h2["command"] and "cap_add" not in h2


def test_write_issues_keys_with_slot_ports_and_prometheus_targets(tmp_path):
    written = write_stack(StackSpec(n=12, ground=("london",), sats_per_container=6), tmp_path / "s.yml")
    assert [p.name for p in written] == ["s.yml", "s-fleet.toml"]
    text = (tmp_path / "s.yml").read_text()
    assert "--sats-per-container 6" in text.splitlines()[0] and "2 services host-0, host-1 of up to 6 each" in text
    keys = tmp_path / "s-keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert not (keys / "node-keys.tmpl").exists()       # no slot template: a secret per satellite
    peers = Peers.load(keys / "fleet" / "peers.json")
    e = peers["sat-8"]                                  # host-1, slot 2
    assert "/dns4/sat-8/tcp/4003/p2p/" in e.multiaddr and e.api == "http://sat-8:8084" and e.grpc == "sat-8:8085"
    assert peers["sat-6"].api == "http://sat-6:8080" and peers["gs-london"].api == "http://gs-london:8080"
    prom = (keys / "fleet" / "prometheus.yml").read_text()
    assert "sat-8:8084" in prom and "sat-6:8080" in prom and "gs-london:8080" in prom
    roster = load_roster(keys / "fleet" / "roster.json", keys / "fleet" / "authority.key.pub")
    doc = stack_document(StackSpec(n=12, ground=("london",), sats_per_container=6), keys_dir=str(keys))
    # every key secret is the issued key of the node it is named after, and of no other
    for name in peers.names():
        seed = read_seed(Path(doc["secrets"][f"key-{name}"]["file"])).hex()
        assert holds_key(seed, roster.nodes[name])
        assert not any(holds_key(seed, roster.nodes[o]) for o in peers.names() if o != name)
    # run again: the same keys (a second `docker stack deploy` finds the same secrets)
    before = (keys / "nodes" / "sat-8" / "identity.key").read_bytes()
    write_stack(StackSpec(n=12, ground=("london",), sats_per_container=6), tmp_path / "s.yml")
    assert (keys / "nodes" / "sat-8" / "identity.key").read_bytes() == before


def test_host_entry_installs_each_satellites_key_from_its_own_secret(tmp_path, monkeypatch):
    write_stack(StackSpec(n=12, ground=(), sats_per_container=6), tmp_path / "s.yml")
    keys, secrets = tmp_path / "s-keys", tmp_path / "secrets"
    group = [f"sat-{i}" for i in range(6, 12)]
    secrets.mkdir()
    for n in group:           # what swarm mounts: the raw key file, /run/secrets/node-key-<name>
        shutil.copy(keys / "nodes" / n / "identity.key", secrets / f"node-key-{n}")
    seen: list[list[str]] = []
    from agent import agent_cli
    monkeypatch.setattr(agent_cli, "main", lambda argv: seen.append(argv) or 0)

    def host(**kw):
        args = dict(names=",".join(group), host_name="host-1", fleet=str(keys / "fleet"), data_root=str(tmp_path / "data"),
                    config=str(tmp_path / "s-fleet.toml"), key_dir=str(secrets), models="/m", control="/tmp/c.sock",
                    no_realtime=True)
        return run_host(argparse.Namespace(**{**args, **kw}), ["--api-token-file", "/run/secrets/api-token"])

    assert host() == 0
    argv = seen[-1]
    assert argv[argv.index("--names") + 1] == ",".join(group)
    assert argv[argv.index("--config") + 1] == str(tmp_path / "s-fleet.toml")
    assert argv[argv.index("--peers") + 1] == str(keys / "fleet" / "peers.json") and "--roster" in argv
    for n in group:
        assert (tmp_path / "data" / n / "identity.key").read_bytes() == (keys / "nodes" / n / "identity.key").read_bytes()
    # a secret holding another satellite's key is refused before anything starts
    shutil.copy(keys / "nodes" / "sat-0" / "identity.key", secrets / "node-key-sat-7")
    with pytest.raises(ComposeError, match="not the key the roster lists for sat-7"):
        host()
    (secrets / "node-key-sat-9").unlink()
    with pytest.raises(ComposeError, match="no node key at .*node-key-sat-9"):
        host(names="sat-9")


@pytest.mark.slow    # a subprocess
def test_stack_command_k_and_bad_k(tmp_path):
    out = tmp_path / "s.yml"
    r = subprocess.run([sys.executable, "-m", "agent", "stack", "-n", "6", "--no-ground", "--sats-per-container", "3",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "host-1:" in out.read_text() and "endpoint_mode: \"dnsrr\"" in out.read_text()
    for bad, msg in (("0", "--sats-per-container must be 1 to 256, not 0"),
                     ("x", "invalid int value")):
        r = subprocess.run([sys.executable, "-m", "agent", "stack", "--sats-per-container", bad, "--out", str(out)],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "agent", "stack", "--sats-per-container", "6", "--publish", "mesh",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: --publish mesh")


@pytest.mark.engine  # needs Debian's docker-compose (its schema), which `make test-docker` installs
def test_compose_spec_schema_accepts_the_stack_of_hosts(tmp_path):
    import jsonschema
    import yaml
    schema = json.loads(Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    write_stack(StackSpec(sats_per_container=12), tmp_path / "s.yml")
    validator.validate(yaml.safe_load((tmp_path / "s.yml").read_text()))
    bad = stack_document(StackSpec(sats_per_container=12))
    bad["services"]["host-0"]["deploy"]["endpoint_mode"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


# -- the gateway by peers file ------------------------------------------------------------------


async def test_gateway_by_peers_file_reaches_satellites_on_their_slot_ports(tmp_path):
    up = free_port_block(2)
    gw = up + 1
    # sat-2's replica is down (nothing listens): skipped; gs-london never gets new requests
    hosts = {"sat-0": "127.0.0.2", "sat-1": "127.0.0.3", "sat-2": "127.0.0.7", "gs-london": "127.0.0.4"}
    peers = {"nodes": [{"name": n, "index": i, "peer_id": f"p{i}", "multiaddr": f"/dns4/{n}/tcp/4001/p2p/p{i}",
                        "api": f"http://{ip}:{up}", "grpc": f"{ip}:8081"} for i, (n, ip) in enumerate(hosts.items())]}
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    cfg = HypercornConfig()
    cfg.bind = [f"127.0.0.1:{gw}"]

    def echo(node):
        return lambda m, p, b: (202 if m == "POST" else 200, {"node": node, "path": p})
    async with trio.open_nursery() as nursery:
        app = gateway.build_app("api", up, peers=str(tmp_path / "peers.json"))
        await nursery.start(lambda task_status: serve(app, cfg, shutdown_trigger=trio.sleep_forever,
                                                      task_status=task_status))
        with http_stubs(up, {hosts[n]: echo(n) for n in ("sat-0", "sat-1", "gs-london")}):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw}", timeout=10) as http:
                seen = set()
                for _ in range(6):
                    r = await http.post("/v1/tasks", json={"model": "digits"})
                    assert r.status_code == 202, r.text
                    assert r.headers["x-orbitmesh-replica"] == r.json()["node"]
                    seen.add(r.json()["node"])
                assert seen == {"sat-0", "sat-1"}
                for _ in range(3):                  # a task's queries go to its entry node
                    r = await http.get("/v1/tasks/sat-1-00ff", params={"wait": "1"})
                    assert r.json() == {"node": "sat-1", "path": "/v1/tasks/sat-1-00ff?wait=1"}
        nursery.cancel_scope.cancel()


def test_gateway_refuses_a_bad_peers_file(tmp_path, capsys):
    (tmp_path / "p.json").write_text("{}")
    assert gateway.main(["--peers", str(tmp_path / "p.json")]) == 2
    assert "not a valid peers file" in capsys.readouterr().err
    assert gateway.main(["--peers", str(tmp_path / "none.json")]) == 2


# -- the engine's chaos on a stack of hosts (faked engine) ----------------------------------------


class Replica:
    """A host's (or ground station's) container: its satellites answer the control command run in it."""

    def __init__(self, service: str, sats: list[str], created: str, stack: str = "st"):
        self.name = f"{stack}_{service}.1.t{created}"
        self.id = f"{service}-{created}"
        self.labels = {"com.docker.stack.namespace": stack, "com.docker.swarm.service.name": f"{stack}_{service}",
                       "com.docker.swarm.task.name": self.name, "org.orbitmesh.node": service}
        if sats != [service]:
            self.labels["org.orbitmesh.sats"] = ",".join(sats)
        self.attrs = {"Created": created}
        self.status = "running"
        self.sats = {s: "running" for s in sats}
        self.execs: list[list[str]] = []

    def reload(self):
        pass

    def kill(self, signal):
        self.status = "exited"

    def pause(self):
        self.status = "paused"

    def unpause(self):
        self.status = "running"

    def exec_run(self, cmd):
        return answer_control(self, cmd)


class FakeHostsSwarm:
    """Services host-0, host-1, gs-london of stack ``st``; containers of this machine."""

    def __init__(self, replicas, config_text: str, k: int):
        self.replicas = replicas
        self.containers, self.services, self.configs = self, self, self
        self.config_text, self.k = config_text, k

    def ping(self):
        return True

    def list(self, all, filters):      # noqa: A002  (docker's keyword)
        k, v = filters["label"].split("=", 1)
        return [c for c in self.replicas if c.labels.get(k) == v]

    def get(self, name):
        class Obj:
            pass
        o = Obj()
        if name == "st_host-0":
            o.attrs = {"Spec": {"TaskTemplate": {"ContainerSpec": {
                "Labels": {"org.orbitmesh.node": "host-0",
                           "org.orbitmesh.sats": ",".join(f"sat-{i}" for i in range(self.k))},
                "Configs": [{"ConfigID": "peers", "File": {"Name": "/etc/orbitmesh/fleet/peers.json"}},
                            {"ConfigID": "cfg1", "File": {"Name": "/etc/orbitmesh/fleet.toml"}}]}}}}
        elif name == "cfg1":
            o.attrs = {"Spec": {"Data": base64.b64encode(self.config_text.encode()).decode()}}
        else:
            raise RuntimeError(f"not found: {name}")
        return o


def test_swarm_chaos_on_one_hosted_satellite_and_on_a_whole_host(tmp_path):
    write_stack(StackSpec(n=12, ground=("london",), sats_per_container=6), tmp_path / "s.yml")
    cfg = (tmp_path / "s-fleet.toml").read_text()
    h0 = Replica("host-0", [f"sat-{i}" for i in range(6)], "2026-01-01")
    h1 = Replica("host-1", [f"sat-{i}" for i in range(6, 12)], "2026-01-01")
    gs = Replica("gs-london", ["gs-london"], "2026-01-01")
    other = Replica("host-1", [f"sat-{i}" for i in range(6, 12)], "2026-01-01", stack="other")
    swarm = FakeHostsSwarm([h0, h1, gs, other], cfg, 6)
    chaos = SwarmChaos("st", client=swarm)
    assert chaos.groups == {"host-0": [f"sat-{i}" for i in range(6)], "host-1": [f"sat-{i}" for i in range(6, 12)],
                            "gs-london": ["gs-london"]}
    assert chaos.nodes() == {"host-0": h0, "host-1": h1, "gs-london": gs}
    assert chaos.placements()["sat-8"] == (h1, 2) and chaos.placements()["gs-london"] == (gs, 0)
    # one satellite alone, through its host's control socket
    assert chaos.kill("sat-8") == "exited"
    assert h1.execs[-1] == ["python", "-m", "agent.ops.compose_hosts", "kill", "sat-8"]
    assert h1.status == "running" and h1.sats["sat-8"] == "down" and h1.sats["sat-7"] == "running"
    assert chaos.state("sat-8") == "exited" and chaos.state("sat-7") == "running"
    assert chaos.start("sat-8") == "running" and h1.execs[-1][3] == "restart"
    assert chaos.pause("sat-1") == "paused" and chaos.resume("sat-1") == "running" and h0.execs[-1][3] == "resume"
    assert chaos.restart("sat-2") == "running" and h0.execs[-1][3] == "restart"
    assert other.execs == []                                   # another stack's host-1 untouched
    # the host's own name: its container, all its satellites at once; swarm, not we, starts it again
    assert chaos.kill("host-1") == "exited" and h1.status == "exited"
    assert chaos.state("sat-7") == "exited"
    with pytest.raises(ChaosError, match="host container .*host-1.* is exited"):
        chaos.pause("sat-7")
    with pytest.raises(ChaosError, match="swarm starts a new one itself"):
        chaos.start("sat-7")
    with pytest.raises(ChaosError, match="swarm starts killed replicas itself"):
        chaos.start("host-1")
    new = Replica("host-1", [f"sat-{i}" for i in range(6, 12)], "2026-01-02")
    swarm.replicas.append(new)                                 # swarm's replacement replica
    assert chaos.nodes()["host-1"] is new and chaos.kill("sat-9") == "exited" and new.execs[-1][4] == "sat-9"
    assert h1.execs[-1][4] != "sat-9"
    # a ground station is a replica of its own
    assert chaos.pause("gs-london") == "paused" and gs.status == "paused"
    with pytest.raises(ChaosError, match="not in stack st"):
        chaos.kill("sat-99")
    swarm.replicas.remove(h0)
    with pytest.raises(ChaosError, match="sat-1 runs in host-0, and no replica of host-0 runs on this machine"):
        chaos.kill("sat-1")
    with pytest.raises(ChaosError, match="no replica of host-0 runs on this machine"):
        chaos.kill("host-0")
    with pytest.raises(ChaosError, match="no swarm service nope_sat"):
        SwarmChaos("nope", client=swarm)


def test_control_command_in_a_swarm_host_finds_the_token_secret(tmp_path, monkeypatch, capsys):
    """The engine's chaos runs ``python -m agent.ops.compose_hosts`` in the host replica with no
    options: the token is the stack's secret there, not compose's fleet volume."""
    from agent.ops import compose_hosts, sat_host_control
    monkeypatch.delenv("ORBITMESH_TOKEN", raising=False)
    (tmp_path / "api-token").write_text("tok\n")
    monkeypatch.setattr(compose_hosts, "TOKEN_FILES", (str(tmp_path / "no-fleet-token"), str(tmp_path / "api-token")))
    seen = []
    monkeypatch.setattr(sat_host_control, "request",
                        lambda path, action, node, token: seen.append((str(path), action, node, token)) or {"state": "down"})
    assert compose_hosts.control_main(["kill", "sat-9", "--control", str(tmp_path / "c.sock")]) == 0
    assert seen == [(str(tmp_path / "c.sock"), "kill", "sat-9", "tok")] and capsys.readouterr().out == "down\n"


def test_the_swarm_token_secret_is_among_the_control_commands_token_files():
    from agent.ops.compose_hosts import TOKEN_FILES
    from agent.ops.stack import TOKEN_TARGET
    assert TOKEN_TARGET in TOKEN_FILES and "/fleet/api-token" in TOKEN_FILES
