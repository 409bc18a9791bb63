"""The Docker Swarm stack: generator, slot identities, engine chaos on replicas (deploy/test-swarm.sh runs it for real)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.compose import ComposeError, prepare_node
from agent.fleet_identity import derived_peer_id, read_secret
from agent.engine_chaos import ChaosError, SwarmChaos
from agent.stack import SECRET_TEMPLATE, StackSpec, stack_document, write_stack
from mesh.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"0123456789abcdef0123456789abcdef"


def test_demo_stack_is_one_replicated_service_with_slot_identities():
    doc = stack_document()
    assert list(doc["services"]) == ["sat", "api"]
    svc = doc["services"]["sat"]
    assert svc["deploy"]["mode"] == "replicated" and svc["deploy"]["replicas"] == 26     # 24 satellites + 2 stations
    assert svc["deploy"]["restart_policy"]["condition"] == "any"
    assert svc["hostname"] == "orbitmesh-{{.Task.Slot}}"
    assert svc["environment"] == {"ORBITMESH_SLOT": "{{.Task.Slot}}"}
    cmd = svc["command"]
    assert "--node-from-slot" in cmd and cmd[cmd.index("--address") + 1] == "{name}"
    assert cmd[cmd.index("--discover") + 1] == "tasks.sat"          # replicas have no DNS names of their own
    assert '"status":"ok"' in svc["healthcheck"]["test"][-1]        # alive, not ready: swarm lists healthy tasks only
    # port 8080 on every machine through a gateway per machine (no IPVS needed), not the routing mesh
    api = doc["services"]["api"]
    assert "ports" not in svc and api["deploy"]["mode"] == "global"
    assert api["ports"] == [{"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}]
    assert api["command"][:3] == ["python", "-m", "agent.gateway"] and "tasks.sat" in api["command"]
    # keys and config from the engine, journals per slot: no shared volume
    assert doc["secrets"]["fleet"] == {"file": "fleet-secret.tmpl", "template_driver": "golang"}
    assert doc["configs"]["fleet-config"] == {"file": "fleet.toml"}
    assert svc["volumes"] == [{"type": "volume", "source": "journal", "target": "/data"}]
    assert doc["volumes"] == {"journal": {"name": "orbitmesh-{{.Service.ID}}-{{.Task.Slot}}"}}
    assert doc["networks"]["constellation"]["driver"] == "overlay"
    assert "bash" in svc["healthcheck"]["test"] and "/v1/health" in svc["healthcheck"]["test"][-1]


def test_options_and_bad_options():
    doc = stack_document(StackSpec(n=6, ground=(), external_secret="my-fleet", max_per_machine=3, api_port=9000,
                                   realtime=False, publish="mesh"))
    svc = doc["services"]["sat"]
    assert svc["deploy"]["replicas"] == 6 and svc["deploy"]["placement"] == {"max_replicas_per_node": 3}
    assert doc["secrets"]["fleet"] == {"external": True, "name": "my-fleet"}
    assert svc["ports"] == [{"target": 8080, "published": 9000, "protocol": "tcp", "mode": "ingress"}]
    assert list(doc["services"]) == ["sat"] and "--no-realtime" in svc["command"] and "cap_add" not in svc
    for spec, match in [(StackSpec(api_port=0), "not a port"), (StackSpec(publish="ipvs"), "--publish"), (StackSpec(max_per_machine=0), "max-per-machine"),
                        (StackSpec(preset="nope"), "nope"), (StackSpec(ground=("51.5,0.1",)), "DNS name")]:
        with pytest.raises(ComposeError, match=match):
            stack_document(spec)


def test_committed_stack_is_the_generators_demo(tmp_path):
    written = write_stack(StackSpec(), tmp_path / "stack.yml")
    assert [p.name for p in written] == ["stack.yml", "stack-fleet.toml", "stack-secret.tmpl"]
    for p in written:
        assert (ROOT / "deploy" / p.name).read_text() == p.read_text(), f"regenerate deploy/{p.name}"
    cfg = parse_config((tmp_path / "stack-fleet.toml").read_text())
    assert cfg.size == 24 and [s.name for s in cfg.ground.stations] == ["london", "tokyo"]
    assert cfg.clock.start_unix == 1767225600.0             # the preset's epoch: replicas agree with no coordinator
    text = (tmp_path / "stack.yml").read_text()
    assert "./stack-fleet.toml" in text and "./stack-secret.tmpl" in text


def test_the_engine_filled_secret_template_is_a_valid_fleet_secret(tmp_path):
    (tmp_path / "s").write_text(SECRET_TEMPLATE.replace("{{ .Service.ID }}", "x7q0m3k9c2vbn5d8f1g4h6j0l"))
    assert len(read_secret(tmp_path / "s")) >= 16
    assert "{{" not in (tmp_path / "s").read_text()


def test_slot_entry_runs_node_slot_minus_one_and_stations_after_the_satellites(tmp_path):
    (tmp_path / "secret").write_text(SECRET.decode())
    cfg_path = tmp_path / "fleet.toml"
    write_stack(StackSpec(), tmp_path / "stack.yml")
    cfg_path.write_text((tmp_path / "stack-fleet.toml").read_text())

    def launch(slot, sub):
        return prepare_node(None, slot=slot, secret_path=tmp_path / "secret", config_path=cfg_path,
                            data_dir=tmp_path / sub, peers_path=tmp_path / sub / "peers.json",
                            discover="tasks.sat")

    assert launch(1, "a").node == "sat-0"
    got = launch(8, "b")
    assert got.node == "sat-7" and got.peer_id == derived_peer_id(SECRET, "sat-7")
    assert got.argv[got.argv.index("--discover") + 1] == "tasks.sat"
    assert launch(25, "c").node == "gs-london" and launch(26, "d").node == "gs-tokyo"
    peers = json.loads((tmp_path / "b" / "peers.json").read_text())["nodes"]
    assert peers[7]["multiaddr"].startswith("/dns4/sat-7/tcp/4001/p2p/")
    with pytest.raises(ComposeError, match="slot 27 has no node"):
        launch(27, "e")


@pytest.mark.slow    # a subprocess
def test_a_bad_slot_variable_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent.compose", "node", "--node-from-slot", "--fleet", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env={"ORBITMESH_SLOT": "{{.Task.Slot}}",
                                                                      "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "ORBITMESH_SLOT must be a task slot number" in r.stderr


@pytest.mark.slow    # a subprocess
def test_stack_command_writes_the_three_files(tmp_path):
    out = tmp_path / "s.yml"
    r = subprocess.run([sys.executable, "-m", "agent", "stack", "-n", "6", "--no-ground", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "replicas: 6" in out.read_text() and (tmp_path / "s-fleet.toml").exists()
    assert "docker stack deploy -c" in r.stderr
    r = subprocess.run([sys.executable, "-m", "agent", "stack", "--preset", "nope", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error:")


@pytest.mark.engine  # needs Debian's docker-compose, which `make test-docker` installs
def test_compose_spec_schema_accepts_the_stack():
    import jsonschema
    import yaml
    schema = json.loads(Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    validator.validate(yaml.safe_load((ROOT / "deploy" / "stack.yml").read_text()))
    bad = stack_document()
    bad["services"]["sat"]["deploy"]["no_such_key"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


# -- chaos on replicas, through a fake engine --------------------------------------------------


class Replica:
    def __init__(self, slot: int, created: str, stack: str = "st"):
        self.id = f"c{slot}-{created}"
        self.labels = {"com.docker.swarm.service.name": f"{stack}_sat",
                       "com.docker.swarm.task.name": f"{stack}_sat.{slot}.task{created}"}
        self.attrs = {"Created": created}
        self.status = "running"
        self.calls: list[str] = []

    def reload(self):
        pass

    def kill(self, signal):
        self.calls.append("kill")
        self.status = "exited"

    def pause(self):
        self.status = "paused"

    def unpause(self):
        self.status = "running"


class FakeSwarm:
    def __init__(self, replicas, config_text: str):
        self.replicas = replicas
        self.containers, self.services, self.configs = self, self, self
        self.config_text = config_text

    def ping(self):
        return True

    def list(self, all, filters):
        k, v = filters["label"].split("=", 1)
        return [c for c in self.replicas if c.labels.get(k) == v]

    def get(self, name):
        class Obj:
            pass
        o = Obj()
        if name == "st_sat":
            o.attrs = {"Spec": {"TaskTemplate": {"ContainerSpec": {"Configs": [{"ConfigID": "cfg1"}]}}}}
        elif name == "cfg1":
            o.attrs = {"Spec": {"Data": base64.b64encode(self.config_text.encode()).decode()}}
        else:
            raise RuntimeError(f"not found: {name}")
        return o


def test_swarm_chaos_maps_slots_to_nodes_and_prefers_the_newest_replica(tmp_path):
    write_stack(StackSpec(n=4, ground=("london",)), tmp_path / "s.yml")
    cfg = (tmp_path / "s-fleet.toml").read_text()
    reps = [Replica(k, "2026-01-01") for k in range(1, 6)]
    swarm = FakeSwarm(reps, cfg)
    chaos = SwarmChaos("st", client=swarm)
    assert chaos.names == ["sat-0", "sat-1", "sat-2", "sat-3", "gs-london"]
    assert chaos.nodes()["gs-london"] is reps[4]
    assert chaos.kill("sat-2") == "exited" and reps[2].calls == ["kill"]
    newer = Replica(3, "2026-01-02")
    swarm.replicas.append(newer)                   # swarm's replacement in slot 3
    assert chaos.container("sat-2") is newer and chaos.pause("sat-2") == "paused"
    with pytest.raises(ChaosError, match="starts killed replicas itself"):
        chaos.start("sat-2")
    with pytest.raises(ChaosError, match="not in stack st"):
        chaos.kill("sat-9")
    swarm.replicas.remove(reps[0])
    with pytest.raises(ChaosError, match="no replica of sat-0 runs on this machine"):
        chaos.kill("sat-0")
    with pytest.raises(ChaosError, match="no swarm service other_sat"):
        SwarmChaos("other", client=swarm)
