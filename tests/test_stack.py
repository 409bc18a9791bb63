"""The Docker Swarm stack: generator, slot identities, engine chaos on replicas (deploy/test-swarm.sh runs it for real)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops.compose import ComposeError, prepare_node
from agent.ops.engine_chaos import ChaosError, SwarmChaos
from agent.ops.stack import StackSpec, slot_key_template, stack_document, write_stack
from mesh.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


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
    assert api["command"][:3] == ["python", "-m", "agent.serve.gateway"] and "tasks.sat" in api["command"]
    # keys and config from the engine, journals per slot: no shared volume
    assert doc["secrets"]["node-key"] == {"file": "stack-keys/node-keys.tmpl", "template_driver": "golang"}
    assert set(doc["secrets"]) == {"node-key", "api-token"}          # no fleet secret any more
    assert doc["configs"]["fleet-config"] == {"file": "fleet.toml"}
    assert doc["configs"]["fleet-roster"] == {"file": "stack-keys/fleet/roster.json"}
    assert {c["target"] for c in svc["configs"]} == {"/etc/orbitmesh/fleet.toml", "/etc/orbitmesh/fleet/roster.json",
                                                      "/etc/orbitmesh/fleet/peers.json",
                                                      "/etc/orbitmesh/fleet/authority.key.pub"}
    assert cmd[cmd.index("--node-key") + 1] == "/run/secrets/node-key" and "--secret" not in cmd
    assert cmd[cmd.index("--fleet") + 1] == "/etc/orbitmesh/fleet"
    assert svc["volumes"] == [{"type": "volume", "source": "journal", "target": "/data"}]
    assert doc["volumes"] == {"journal": {"name": "orbitmesh-{{.Service.ID}}-{{.Task.Slot}}"}}
    assert doc["networks"]["constellation"]["driver"] == "overlay"
    assert "bash" in svc["healthcheck"]["test"] and "/v1/health" in svc["healthcheck"]["test"][-1]


def test_options_and_bad_options():
    doc = stack_document(StackSpec(n=6, ground=(), max_per_machine=3, api_port=9000,
                                   realtime=False, publish="mesh"))
    svc = doc["services"]["sat"]
    assert svc["deploy"]["replicas"] == 6 and svc["deploy"]["placement"] == {"max_replicas_per_node": 3}
    assert svc["ports"] == [{"target": 8080, "published": 9000, "protocol": "tcp", "mode": "ingress"}]
    assert list(doc["services"]) == ["sat"] and "--no-realtime" in svc["command"] and "cap_add" not in svc
    for spec, match in [(StackSpec(api_port=0), "not a port"), (StackSpec(publish="ipvs"), "--publish"), (StackSpec(max_per_machine=0), "max-per-machine"),
                        (StackSpec(preset="nope"), "nope"), (StackSpec(ground=("51.5,0.1",)), "DNS name")]:
        with pytest.raises(ComposeError, match=match):
            stack_document(spec)


def test_committed_stack_is_the_generators_demo(tmp_path):
    written = write_stack(StackSpec(), tmp_path / "stack.yml")
    assert [p.name for p in written] == ["stack.yml", "stack-fleet.toml"]
    for p in written:
        assert (ROOT / "deploy" / p.name).read_text() == p.read_text(), f"regenerate deploy/{p.name}"
    # the keys are issued beside it, never committed
    assert (tmp_path / "stack-keys" / "node-keys.tmpl").exists() and not (ROOT / "deploy" / "stack-keys").exists()
    assert "stack-keys/" in (ROOT / ".gitignore").read_text().split()
    cfg = parse_config((tmp_path / "stack-fleet.toml").read_text())
    assert cfg.size == 24 and [s.name for s in cfg.ground.stations] == ["london", "tokyo"]
    assert cfg.clock.start_unix == 1767225600.0             # the preset's epoch: replicas agree with no coordinator
    text = (tmp_path / "stack.yml").read_text()
    assert "./stack-fleet.toml" in text and "./stack-keys/node-keys.tmpl" in text
    assert "./stack-keys/fleet/roster.json" in text


def render_slot(template: str, slot: int) -> str:
    """What the engine renders for task ``slot`` from :func:`slot_key_template`'s output (the
    real engine's rendering is checked by deploy/test-swarm.sh): the first branch whose slot matches."""
    for m in re.finditer(r'\{\{ (?:if|else if) eq \.Task\.Slot "(\d+)" \}\}([0-9a-f]*)', template):
        if int(m.group(1)) == slot:
            return m.group(2) + "\n"
    return "\n"


def test_issued_keys_one_per_node_the_template_renders_each_slot_only_its_own(tmp_path):
    from agent.links.roster import load_roster
    from agent.links.roster import holds_key
    write_stack(StackSpec(n=4, ground=("london",)), tmp_path / "s.yml")
    keys = tmp_path / "s-keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    tmpl = keys / "node-keys.tmpl"
    assert oct(tmpl.stat().st_mode & 0o777) == "0o600"
    roster = load_roster(keys / "fleet" / "roster.json", keys / "fleet" / "authority.key.pub")
    names = ["sat-0", "sat-1", "sat-2", "sat-3", "gs-london"]
    assert sorted(roster.nodes) == sorted(names)
    text = tmpl.read_text()
    rendered = {slot: render_slot(text, slot).strip() for slot in range(1, 6)}
    assert len(set(rendered.values())) == 5
    for slot, name in enumerate(names, 1):
        assert holds_key(rendered[slot], roster.nodes[name])
        assert not any(holds_key(rendered[slot], roster.nodes[o]) for o in names if o != name)
    assert render_slot(text, 6) == "\n"                   # a slot without a node renders no key
    # the authority's private key is not shipped: not in the template, not among the configs
    authority = (keys / "authority" / "authority.key").read_bytes().hex()
    assert authority not in text and not (keys / "fleet" / "authority.key").exists()
    # issued again: the same keys (a second `docker stack deploy` finds the same secret)
    write_stack(StackSpec(n=4, ground=("london",)), tmp_path / "s.yml")
    assert tmpl.read_text() == text
    with pytest.raises(ComposeError, match="at least one"):
        slot_key_template([])


def test_slot_entry_installs_its_own_key_and_runs_node_slot_minus_one(tmp_path):
    write_stack(StackSpec(), tmp_path / "stack.yml")
    keys, text = tmp_path / "stack-keys", (tmp_path / "stack-keys" / "node-keys.tmpl").read_text()
    roster = json.loads((keys / "fleet" / "roster.json").read_text())["nodes"]

    def launch(slot, sub, key_text=None):
        (tmp_path / sub).mkdir(exist_ok=True)
        secret = tmp_path / sub / "node-key"
        secret.write_text(render_slot(text, slot) if key_text is None else key_text)
        return prepare_node(None, slot=slot, secret_path=tmp_path / "no-secret", config_path=tmp_path / "stack-fleet.toml",
                            data_dir=tmp_path / sub / "data", peers_path=tmp_path / sub / "peers.json",
                            discover="tasks.sat", fleet_dir=keys / "fleet", node_key=secret)

    assert launch(1, "a").node == "sat-0"
    got = launch(8, "b")
    assert got.node == "sat-7" and got.peer_id == roster["sat-7"]
    assert (tmp_path / "b" / "data" / "identity.key").read_bytes().hex() == render_slot(text, 8).strip()
    assert got.argv[got.argv.index("--discover") + 1] == "tasks.sat"
    assert got.argv[got.argv.index("--roster") + 1] == str(keys / "fleet" / "roster.json")
    assert got.argv[got.argv.index("--peers") + 1] == str(keys / "fleet" / "peers.json")
    assert launch(25, "c").node == "gs-london" and launch(26, "d").node == "gs-tokyo"
    peers = json.loads((keys / "fleet" / "peers.json").read_text())["nodes"]
    assert peers[7]["multiaddr"].startswith("/dns4/sat-7/tcp/4001/p2p/")
    with pytest.raises(ComposeError, match="slot 27 has no node"):
        launch(27, "e")
    # a replica handed another slot's key is refused: the roster names another key for its node
    with pytest.raises(ComposeError, match="not the key the roster lists for sat-2"):
        launch(3, "f", key_text=render_slot(text, 4))
    with pytest.raises(ComposeError, match="holds no key for this task slot"):
        launch(5, "g", key_text="\n")
    with pytest.raises(ComposeError, match="not a node key"):
        launch(5, "h", key_text="zz" * 32)


@pytest.mark.slow    # a subprocess
def test_a_bad_slot_variable_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent.ops.compose", "node", "--node-from-slot", "--fleet", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env={"ORBITMESH_SLOT": "{{.Task.Slot}}",
                                                                      "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "ORBITMESH_SLOT must be a task slot number" in r.stderr


@pytest.mark.slow    # a subprocess
def test_stack_command_writes_the_stack_its_config_and_the_keys(tmp_path):
    out = tmp_path / "s.yml"
    r = subprocess.run([sys.executable, "-m", "agent", "stack", "-n", "6", "--no-ground", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "replicas: 6" in out.read_text() and (tmp_path / "s-fleet.toml").exists()
    assert (tmp_path / "s-keys" / "node-keys.tmpl").exists() and "never commit" in r.stderr
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
            o.attrs = {"Spec": {"TaskTemplate": {"ContainerSpec": {"Configs": [
                {"ConfigID": "roster", "File": {"Name": "/etc/orbitmesh/fleet/roster.json"}},
                {"ConfigID": "cfg1", "File": {"Name": "/etc/orbitmesh/fleet.toml"}}]}}}}
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
