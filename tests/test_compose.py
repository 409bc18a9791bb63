"""The compose generator, derived identities, the in-container entry points, engine chaos (faked).

Fast: no Docker needed.  Tests that parse YAML or validate schemas need PyYAML,
jsonschema and kubernetes-validate (the ``docker`` extra) and skip without
them; ``make test-docker`` installs the extra and runs this file again.
"""

from __future__ import annotations

import argparse
import json
import re
import stat
from pathlib import Path

import pytest

from agent.ops import compose
from agent.ops.compose import (
    ComposeError,
    ComposeSpec,
    compose_document,
    generate,
    init_fleet,
    prepare_node,
)
from agent.ops.engine_chaos import ChaosError, EngineChaos
from agent.links.fleet_identity import derive_seed, derived_peer_id, ensure_identity, fleet_peers, read_secret
from agent.ops.yamlfile import to_yaml
from agent.links.p2p import load_or_create_identity, peer_id_of

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"0123456789abcdef0123456789abcdef"

# Service keys that both Compose 1.29 (its compose_spec.json) and Compose v2 accept.
PORTABLE_SERVICE_KEYS = {
    "image", "command", "hostname", "depends_on", "networks", "volumes", "ports", "cap_add", "cap_drop",
    "security_opt", "labels", "restart", "stop_grace_period", "healthcheck", "logging", "network_mode",
    "environment", "profiles",
}


def sats(doc):
    return {k: v for k, v in doc["services"].items() if v["labels"].get("org.orbitmesh.role") == "satellite"}


def nodes(doc):
    return {k: v for k, v in doc["services"].items() if k not in ("init", "prometheus")}


# -- the compose document ---------------------------------------------------------------


def test_demo_document_runs_every_satellite_on_one_network():
    doc = compose_document()
    # no `version` (v2 warns it is obsolete) and no top-level `name` (1.29 rejects it)
    assert set(doc) == {"services", "networks", "volumes"}
    assert doc["networks"] == {"constellation": {"driver": "bridge"}}
    s = sats(doc)
    assert list(s) == [f"sat-{i}" for i in range(24)]
    # two ground stations after the satellites: nodes 24 and 25, as in mesh.nodes
    assert list(nodes(doc)) == list(s) + ["gs-london", "gs-tokyo"]
    assert set(doc["volumes"]) == {"fleet", "authority", "prometheus-data"} | {f"{n}-data" for n in nodes(doc)}
    init = doc["services"]["init"]
    assert init["command"][:4] == ["python", "-m", "agent.ops.compose", "init"]
    assert init["command"][-4:] == ["--ground", "london", "--ground", "tokyo"]
    # init issues every node its key in the node's own volume; only init sees the authority's key
    assert init["network_mode"] == "none" and init["volumes"] == (
        ["fleet:/fleet", "authority:/authority"] + [f"{n}-data:/nodes/{n}" for n in nodes(doc)])
    assert not any("authority" in v for svc in nodes(doc).values() for v in svc["volumes"])
    for i, (name, svc) in enumerate(nodes(doc).items()):
        assert svc["hostname"] == name
        assert svc["command"][:4] == ["python", "-m", "agent.ops.compose", "node"]
        assert svc["command"][svc["command"].index("--node") + 1] == name
        assert svc["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        assert svc["networks"] == ["constellation"]
        assert svc["volumes"] == ["fleet:/fleet:ro", f"{name}-data:/data"]
        assert svc["ports"] == [f"127.0.0.1:{8100 + i}:8080", f"127.0.0.1:{8200 + i}:8081"]   # API, gRPC
        assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["SYS_NICE"]
        role = "satellite" if i < 24 else "ground"
        assert svc["labels"] == {"org.orbitmesh.node": name, "org.orbitmesh.role": role}
        assert svc["restart"] == "no"   # a killed satellite stays down until started
    for svc in doc["services"].values():
        assert set(svc) <= PORTABLE_SERVICE_KEYS, set(svc) - PORTABLE_SERVICE_KEYS


def test_other_sizes_and_options():
    doc = compose_document(ComposeSpec(n=12, time_scale=10.0, image="reg.local/om:1", publish="first",
                                       api_base_port=9000, realtime=False, ground=()))
    s = sats(doc)
    assert len(s) == 12 and nodes(doc) == s
    assert doc["services"]["init"]["command"][-4:] == ["-n", "12", "--time-scale", "10.0"]
    assert s["sat-0"]["ports"] == ["127.0.0.1:9000:8080", "127.0.0.1:8200:8081"]
    assert all("ports" not in svc for name, svc in s.items() if name != "sat-0")
    assert all("cap_add" not in svc and svc["command"][-1] == "--no-realtime" for svc in s.values())
    assert {svc["image"] for name, svc in doc["services"].items() if name != "prometheus"} == {"reg.local/om:1"}
    assert all("ports" not in svc for svc in sats(compose_document(ComposeSpec(publish="none"))).values())


@pytest.mark.parametrize("spec, match", [
    (ComposeSpec(ground=("atlantis",)), "unknown ground station 'atlantis'"),
    (ComposeSpec(ground=("51.5,-0.1",)), "must be a DNS name"),
    (ComposeSpec(ground=("london", "London")), "given twice"),
    (ComposeSpec(api_base_port=65535 - 24), "the 26 published ports"),
    (ComposeSpec(preset="nope"), "unknown preset"),
    (ComposeSpec(n=1), "at least 2"),
    (ComposeSpec(publish="some"), "--publish"),
    (ComposeSpec(api_base_port=65530), "below 65536"),
    (ComposeSpec(grpc_base_port=8110), "overlap"),
    (ComposeSpec(image="bad image"), "image"),
])
def test_bad_options_are_clear_errors(spec, match):
    with pytest.raises(ComposeError, match=match):
        compose_document(spec)


def test_committed_compose_file_is_the_generators_demo():
    assert (ROOT / "docker-compose.yml").read_text() == generate(ComposeSpec()), \
        "docker-compose.yml is stale: python -m agent.ops.compose generate -o docker-compose.yml"


# -- the YAML writer ----------------------------------------------------------------------


def test_yaml_writer_quotes_every_string():
    text = to_yaml({"a": {"b": ["x", 1, True, None], "c": "no", "d": {}, "e": []}, "yes": "it's \"q\" \\ é"})
    assert text == ('a:\n  b: ["x", 1, true, null]\n  c: "no"\n  d: {}\n  e: []\n'
                    '"yes": "it\'s \\"q\\" \\\\ é"\n')


def test_yaml_round_trip():
    yaml = pytest.importorskip("yaml")
    tricky = {"k": ["no", "on", "1:2", "a: b", "#x", "- y", "", "ünï", "12", "1e3", "null", "\t\n"],
              "n": [{"a": 1, "b": [1, 2]}, {"c": {"d": "e"}}], "long": ["x" * 40] * 4}
    assert yaml.safe_load(to_yaml(tricky)) == tricky
    for spec in (ComposeSpec(), ComposeSpec(n=6, realtime=False, publish="first")):
        assert yaml.safe_load(generate(spec)) == compose_document(spec)


@pytest.mark.engine  # needs Debian's docker-compose, which `make test-docker` installs
def test_compose_1_29_schema_accepts_it():
    """Validate against the Compose Specification schema that Debian's docker-compose 1.29 ships."""
    import jsonschema
    import yaml
    schema_path = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
    validator = jsonschema.Draft201909Validator(json.loads(schema_path.read_text()))
    for spec in (ComposeSpec(), ComposeSpec(n=6, realtime=False, publish="none")):
        validator.validate(yaml.safe_load(generate(spec)))
    bad = compose_document()
    bad["services"]["sat-0"]["no_such_key"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


# -- identities derived from the fleet secret ------------------------------------------------


def test_derived_identities_are_stable_and_distinct(tmp_path):
    assert derive_seed(SECRET, "sat-1") == derive_seed(SECRET, "sat-1")
    assert len(derive_seed(SECRET, "sat-1")) == 32
    assert derive_seed(SECRET, "sat-1") != derive_seed(SECRET, "sat-2")
    assert derive_seed(SECRET, "sat-1") != derive_seed(SECRET[::-1], "sat-1")
    pid = ensure_identity(tmp_path / "d", SECRET, "sat-1")
    key = tmp_path / "d" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pid == derived_peer_id(SECRET, "sat-1") == peer_id_of(load_or_create_identity(key))
    assert ensure_identity(tmp_path / "d", SECRET, "sat-1") == pid       # checked, kept
    with pytest.raises(ComposeError, match="secret changed"):
        ensure_identity(tmp_path / "d", SECRET[::-1], "sat-1")


def test_peers_file_is_a_function_of_the_secret():
    peers = fleet_peers(SECRET, 4, "orbitmesh-{index}.orbitmesh")
    assert peers.to_json() == fleet_peers(SECRET, 4, "orbitmesh-{index}.orbitmesh").to_json()
    e = peers["sat-3"]
    assert e.multiaddr == f"/dns4/orbitmesh-3.orbitmesh/tcp/4001/p2p/{e.peer_id}"
    assert e.api == "http://orbitmesh-3.orbitmesh:8080"
    assert fleet_peers(SECRET, 4)["sat-3"].multiaddr.startswith("/dns4/sat-3/tcp/4001/p2p/")


def test_short_or_missing_secret_is_refused(tmp_path):
    (tmp_path / "s").write_text("short\n")
    with pytest.raises(ComposeError, match="too short"):
        read_secret(tmp_path / "s")
    with pytest.raises(ComposeError, match="no fleet secret"):
        read_secret(tmp_path / "missing")


# -- entry points -------------------------------------------------------------------------


def test_monitoring_profile_scrapes_every_node_from_the_fleet_volume(tmp_path):
    """Prometheus runs only with --profile monitoring; init writes its targets from the fleet it made."""
    import yaml
    prom = compose_document()["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"] and prom["image"] == "orbitmesh-prometheus:bookworm"
    assert "--config.file=/fleet/prometheus.yml" in prom["command"] and prom["volumes"][0] == "fleet:/fleet:ro"
    assert prom["ports"] == ["127.0.0.1:9090:9090"] and prom["networks"] == ["constellation"]
    assert prom["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    done = init_fleet(tmp_path, n=6, ground=("london",), now=1000.0)
    assert any("7 scrape targets" in line for line in done)
    keyed = tmp_path / "keyed"      # what compose's init runs: per-node keys, the same targets
    done = init_fleet(keyed, n=6, ground=("london",), now=1000.0, keys=tmp_path / "keys",
                      authority=tmp_path / "authority")
    assert any("7 scrape targets" in line for line in done)
    assert (keyed / "prometheus.yml").read_text() == (tmp_path / "prometheus.yml").read_text()
    cfg = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and cfg["global"]["scrape_interval"] == "5s"
    groups = {g["labels"]["role"]: g["targets"] for g in job["static_configs"]}
    assert groups == {"satellite": [f"sat-{i}:8080" for i in range(6)], "ground": ["gs-london:8080"]}
    rule = job["relabel_configs"][0]
    assert re.fullmatch(rule["regex"], "sat-3:8080").expand(rule["replacement"].replace("$1", r"\1")) == "sat-3"


def test_init_creates_once_and_keeps_the_start_time(tmp_path):
    fleet = tmp_path / "fleet"
    init_fleet(fleet, now=1000.0)
    secret = (fleet / "secret").read_text()
    assert stat.S_IMODE((fleet / "secret").stat().st_mode) == 0o600
    assert "start_unix = 1000.0" in (fleet / "config.toml").read_text()
    done = init_fleet(fleet, now=2000.0)                  # a second `up`
    assert (fleet / "secret").read_text() == secret
    assert "start_unix = 1000.0" in (fleet / "config.toml").read_text()
    assert any("kept" in line for line in done)
    peers = json.loads((fleet / "peers.json").read_text())["nodes"]
    assert len(peers) == 24 and peers[5]["multiaddr"].startswith("/dns4/sat-5/tcp/4001/p2p/")
    init_fleet(fleet, n=12, now=3000.0)                    # another constellation: new config
    assert "start_unix = 3000.0" in (fleet / "config.toml").read_text()
    assert len(json.loads((fleet / "peers.json").read_text())["nodes"]) == 12


def test_node_entry_prepares_identity_peers_and_agent_args(tmp_path):
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    launch = prepare_node("sat-4", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                          data_dir=tmp_path / "data", peers_path=tmp_path / "run" / "peers.json", realtime=False)
    assert launch.peer_id == json.loads((fleet / "peers.json").read_text())["nodes"][4]["peer_id"]
    assert (tmp_path / "run" / "peers.json").read_text() == (fleet / "peers.json").read_text()
    args = launch.argv
    assert args[2:5] == ["agent", "--node", "sat-4"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:4001" and args[args.index("--api") + 1] == "0.0.0.0:8080"
    assert args[-1] == "--no-realtime"
    from agent.ops.cli import parser
    ns = parser().parse_args(args)                         # the CLI accepts what we hand it
    assert ns.node == "sat-4" and ns.no_realtime


def test_ground_stations_join_the_config_and_peers_file(tmp_path):
    """What the compose file's init and gs-* services do: stations in the config, nodes n_sats+k."""
    fleet = tmp_path / "fleet"
    assert compose.main(["init", "--fleet", str(fleet), "--ground", "london", "--ground", "tokyo"]) == 0
    from mesh.config import parse_config
    cfg = parse_config((fleet / "config.toml").read_text())
    assert [st.name for st in cfg.ground.stations] == ["london", "tokyo"] and cfg.size == 24
    peers = json.loads((fleet / "peers.json").read_text())["nodes"]
    secret = read_secret(fleet / "secret")
    assert [(e["name"], e["index"]) for e in peers[24:]] == [("gs-london", 24), ("gs-tokyo", 25)]
    assert peers[25]["peer_id"] == derived_peer_id(secret, "gs-tokyo")        # the same HMAC scheme
    assert peers[25]["multiaddr"] == f"/dns4/gs-tokyo/tcp/4001/p2p/{peers[25]['peer_id']}"
    launch = prepare_node("gs-london", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                          data_dir=tmp_path / "data", peers_path=tmp_path / "run" / "peers.json")
    assert launch.peer_id == peers[24]["peer_id"]
    from agent.ops.cli import parser
    assert parser().parse_args(launch.argv).node == "gs-london"
    with pytest.raises(ComposeError, match="ground stations: gs-london, gs-tokyo"):
        prepare_node("gs-paris", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                     data_dir=tmp_path / "d2", peers_path=tmp_path / "r2" / "peers.json")
    # the compose file's init command is what this test ran
    init_cmd = compose_document()["services"]["init"]["command"]
    assert compose._parser().parse_args(init_cmd[3:]).ground == ["london", "tokyo"]


def test_statefulset_pod_entry_derives_everything(tmp_path):
    (tmp_path / "secret").write_text(SECRET.decode() + "\n")
    launch = prepare_node(None, hostname="orbitmesh-7", secret_path=tmp_path / "secret", config_path=None,
                          data_dir=tmp_path / "data", peers_path=tmp_path / "run" / "peers.json",
                          address="orbitmesh-{index}.orbitmesh", preset="demo")
    assert launch.node == "sat-7" and launch.peer_id == derived_peer_id(SECRET, "sat-7")
    from mesh.config import parse_config
    cfg = parse_config((tmp_path / "run" / "config.toml").read_text())
    assert cfg.clock.start_unix == 1767225600.0            # the demo epoch: every pod agrees
    with pytest.raises(ComposeError, match="not in this fleet"):
        prepare_node(None, hostname="orbitmesh-24", secret_path=tmp_path / "secret", config_path=None,
                     data_dir=tmp_path / "d2", peers_path=tmp_path / "r2" / "peers.json")
    with pytest.raises(ComposeError, match="hostname"):
        prepare_node(None, hostname="orbitmesh", secret_path=tmp_path / "secret", config_path=None,
                     data_dir=tmp_path / "d3", peers_path=tmp_path / "r3" / "peers.json")


# -- the CLI --------------------------------------------------------------------------------


def test_register_adds_the_compose_subcommand(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    compose.register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["compose", "-n", "6", "-o", "-"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out == generate(ComposeSpec(n=6)) and "sat-5:" in out and "sat-6:" not in out
    assert "gs-london (8106), gs-tokyo (8107)" in out
    args = ap.parse_args(["compose", "--ground", "atlantis", "-o", str(tmp_path / "x.yml")])
    assert args.func(args) == 2
    assert "unknown ground station" in capsys.readouterr().err and not (tmp_path / "x.yml").exists()
    # no flag: the demo's two stations; --ground replaces them; --no-ground drops them
    for argv, gs in ([], ["gs-london", "gs-tokyo"]), (["--ground", "svalbard", "--ground", "sydney"],
                                                       ["gs-svalbard", "gs-sydney"]), (["--no-ground"], []):
        args = ap.parse_args(["compose", "-n", "6", "-o", str(tmp_path / "g.yml"), *argv])
        assert args.func(args) == 0
        assert generate(ComposeSpec(n=6, ground=tuple(g[3:] for g in gs))) == (tmp_path / "g.yml").read_text()
        assert [line[2:-1] for line in (tmp_path / "g.yml").read_text().splitlines()
                if line.startswith("  gs-") and line.endswith(":")] == gs
    with pytest.raises(SystemExit):
        ap.parse_args(["compose", "--ground", "london", "--no-ground"])


def test_module_entry_generates_and_inits(tmp_path):
    assert compose.main(["generate", "-o", str(tmp_path / "c.yml"), "-n", "4"]) == 0
    assert (tmp_path / "c.yml").read_text() == generate(ComposeSpec(n=4))
    assert compose.main(["init", "--fleet", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "secret").exists()
    assert compose.main(["node", "--node", "sat-1", "--fleet", str(tmp_path / "nope")]) == 2


# -- chaos through the engine (a fake Docker client) ------------------------------------------------


class FakeContainer:
    def __init__(self, node, project="p"):
        self.labels = {"org.orbitmesh.node": node, "com.docker.compose.project": project}
        self.status = "running"
        self.calls = []

    def reload(self):
        pass

    def kill(self, signal):
        self.calls.append(("kill", signal))
        self.status = "exited"

    def pause(self):
        self.status = "paused"

    def unpause(self):
        self.status = "running"

    def start(self):
        self.status = "running"

    def stop(self, timeout):
        self.status = "exited"

    def restart(self, timeout):
        self.calls.append(("restart", timeout))
        self.status = "running"


class FakeClient:
    def __init__(self, containers):
        self.all = containers
        self.containers = self
        self.queries = []

    def list(self, all, filters):
        self.queries.append(filters)
        want = [lab.split("=", 1) for lab in filters["label"]]
        return [c for c in self.all
                if all and all_match(c, want)]


def all_match(c, want):
    return all((c.labels.get(k[0]) == k[1]) if len(k) == 2 else k[0] in c.labels for k in want)


def test_engine_chaos_kills_pauses_resumes_restarts_by_label():
    cs = [FakeContainer(f"sat-{i}") for i in range(3)] + [FakeContainer("sat-1", project="other")]
    chaos = EngineChaos("p", client=FakeClient(cs))
    assert sorted(chaos.nodes()) == ["sat-0", "sat-1", "sat-2"]
    assert chaos.kill("sat-1") == "exited" and cs[1].calls == [("kill", "SIGKILL")]
    assert cs[3].status == "running"                        # the other project's sat-1 untouched
    assert chaos.start("sat-1") == "running"
    assert chaos.pause("sat-2") == "paused" and chaos.state("sat-2") == "paused"
    assert chaos.resume("sat-2") == "running"
    assert chaos.run("restart", "sat-0") == "running" and cs[0].calls == [("restart", 5)]
    assert chaos.client.queries[-1] == {"label": ["org.orbitmesh.node=sat-0", "com.docker.compose.project=p"]}
    with pytest.raises(ChaosError, match="no container for sat-9 in compose project 'p'"):
        chaos.kill("sat-9")
    with pytest.raises(ChaosError, match="unknown action"):
        chaos.run("explode", "sat-0")
    with pytest.raises(ChaosError, match="more than one compose project"):
        EngineChaos(None, client=FakeClient(cs)).kill("sat-1")


def test_engine_failure_is_a_chaos_error():
    class Broken(FakeContainer):
        def pause(self):
            raise RuntimeError("cannot pause a stopped container")

    chaos = EngineChaos("p", client=FakeClient([Broken("sat-0")]))
    with pytest.raises(ChaosError, match="cannot pause sat-0: cannot pause a stopped container"):
        chaos.pause("sat-0")


# -- Kubernetes manifests ---------------------------------------------------------------------


def k8s_docs():
    yaml = pytest.importorskip("yaml")
    docs = []
    for name in ("service.yaml", "statefulset.yaml", "networkpolicy.yaml"):
        docs += [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()) if d]
    return docs


def test_k8s_statefulsets_match_their_headless_service_and_the_entry_point():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    sets = [d for (kind, _), d in docs.items() if kind == "StatefulSet"]
    from mesh.presets import preset
    assert len(sets) == preset("demo").size                 # one StatefulSet per satellite
    for sts in sets:
        svc = docs[("Service", sts["spec"]["serviceName"])]
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        assert sts["spec"]["replicas"] == 1
        pod = sts["spec"]["template"]["spec"]
        cmd = pod["containers"][0]["command"]
        assert cmd[:4] == ["python", "-m", "agent.ops.compose", "node"]
        args = compose._parser().parse_args(cmd[3:])          # the entry point accepts the pod's command line
        assert sts["metadata"]["name"] == f"orbitmesh-{args.node}" and args.secret is None
        key_vol = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName", "").startswith("orbitmesh-key-"))
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == key_vol["name"])
        assert str(args.node_key).startswith(mount["mountPath"] + "/")
        fleet_vol = next(v for v in pod["volumes"] if "configMap" in v)
        fleet_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == fleet_vol["name"])
        assert str(args.fleet) == fleet_mount["mountPath"]
        assert {p["containerPort"] for p in pod["containers"][0]["ports"]} == {compose.P2P_PORT, compose.API_PORT}


def test_k8s_manifests_validate_against_the_kubernetes_schemas(kv):
    docs = k8s_docs()
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)
    assert sum(d["kind"] == "StatefulSet" for d in docs) == 24
    broken = json.loads(json.dumps(next(d for d in docs if d["kind"] == "StatefulSet")))
    broken["spec"]["replicas"] = "many"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30.0", strict=True)


@pytest.mark.engine  # run by `make test-docker`, which installs docker-compose first
def test_docker_compose_1_29_reads_the_generated_file(tmp_path):
    import subprocess
    (tmp_path / "docker-compose.yml").write_text(generate(ComposeSpec(n=6, publish="first")))
    out = subprocess.run(["docker-compose", "-f", str(tmp_path / "docker-compose.yml"), "config", "--services"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    want = ["init", "gs-london", "gs-tokyo", "prometheus"] + [f"sat-{i}" for i in range(6)]
    assert sorted(out.stdout.split()) == sorted(want)   # a profile's service is listed too


# -- `orbitmesh chaos kill|pause|resume|restart`: the local fleet and the engine ----------------


def _chaos_cli(directory, *args, env=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "agent", "--dir", str(directory), "chaos", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


def test_node_chaos_on_a_local_fleet(tmp_path, models_dir, capsys, monkeypatch):
    """A 4-agent fleet: pause/resume by SIGSTOP/SIGCONT, kill by SIGKILL, restart with the same identity."""
    import trio

    from agent.ops import cli, fleet
    from agent.ops.chaos_cli import LocalNodeChaos, NodeChaosError, _proc_state
    from tests.conftest import free_port_block
    base = free_port_block(12)
    spec = fleet.FleetSpec(directory=tmp_path / "f", n=4, p2p_base_port=base, api_base_port=base + 4,
                           grpc_base_port=base + 8, models=models_dir)
    # a local fleet in --dir wins over a configured compose project
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "ignored-while-a-local-fleet-is-here")

    def chaos(*args):
        rc = cli.main(["--dir", str(spec.directory), "chaos", *args])
        out = capsys.readouterr()
        return rc, out.out + out.err

    cfg, peers, procs = fleet.start(spec)
    try:
        trio.run(fleet.wait_ready, peers, 25.0, None, procs)
        pids = {n: p.pid for n, p in procs.items()}

        r = _chaos_cli(spec.directory, "pause", "sat-1")        # the real command line, once
        assert r.returncode == 0 and f"paused sat-1 (pid {pids['sat-1']}, SIGSTOP)" in r.stdout, r.stderr
        assert _proc_state(pids["sat-1"]) == "T"
        assert chaos("pause", "sat-1") == (1, "error: sat-1 is already paused (`orbitmesh chaos resume sat-1`)\n")
        rc, out = chaos("resume", "sat-1")
        assert rc == 0 and _proc_state(pids["sat-1"]) in ("S", "R"), out
        assert chaos("resume", "sat-1") == (1, "error: sat-1 is not paused\n")

        rc, out = chaos("kill", "sat-2")
        assert rc == 0 and f"killed sat-2 (pid {pids['sat-2']}, SIGKILL)" in out, out
        assert procs["sat-2"].wait(timeout=5) == -9
        assert chaos("kill", "sat-2") == (1, "error: sat-2 is already down\n")
        assert chaos("pause", "sat-2") == (1, "error: sat-2 is down; cannot pause it\n")
        rc, out = chaos("kill", "sat-7")
        assert rc == 1 and "unknown node 'sat-7'" in out

        local = LocalNodeChaos(spec.directory)
        assert local.status("sat-2") == "down" and local.status("sat-0") == "running"
        rc, out = chaos("restart", "sat-2")                       # was down: just started
        assert rc == 0 and "restarted sat-2 (was down" in out, out
        new = json.loads((spec.directory / "fleet.json").read_text())["pids"]["sat-2"]
        assert new != pids["sat-2"] and local.status("sat-2") == "running"

        async def rejoined():
            from agent.client import Client
            await fleet.wait_ready(peers, 20.0)
            async with Client(peers["sat-2"].api) as c:
                return (await c.node())["peer_id"]
        assert trio.run(rejoined) == peers["sat-2"].peer_id     # same data dir, same identity

        assert f"killed pid {pids['sat-3']}" in local.restart("sat-3")   # running: killed, then started
        assert procs["sat-3"].wait(timeout=5) == -9
        trio.run(fleet.wait_ready, peers, 20.0)
        with pytest.raises(NodeChaosError, match="unknown action"):
            local.run("explode", "sat-0")
    finally:
        fleet.stop(spec.directory)


def test_node_chaos_without_a_fleet_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from agent.ops import cli
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    assert cli.main(["--dir", str(tmp_path / "none"), "chaos", "kill", "sat-1"]) == 1
    err = capsys.readouterr().err
    assert "no local fleet" in err and "--compose" in err


def test_node_chaos_through_the_engine():
    from agent.ops.chaos_cli import ComposeNodeChaos, NodeChaosError, node_chaos
    cs = [FakeContainer(f"sat-{i}") for i in range(3)]
    chaos = ComposeNodeChaos("p", engine=EngineChaos("p", client=FakeClient(cs)))
    assert chaos.run("kill", "sat-1") == "killed sat-1 (compose project p): container exited"
    with pytest.raises(NodeChaosError, match="sat-1 is already down"):
        chaos.run("kill", "sat-1")
    with pytest.raises(NodeChaosError, match="sat-1 is down"):
        chaos.run("pause", "sat-1")
    assert chaos.run("restart", "sat-1").endswith("container running")
    assert chaos.run("pause", "sat-2").endswith("container paused")
    with pytest.raises(NodeChaosError, match="already paused"):
        chaos.run("pause", "sat-2")
    assert chaos.run("kill", "sat-2").endswith("container exited")        # thawed first, then killed
    with pytest.raises(NodeChaosError, match="sat-0 is not paused"):
        chaos.run("resume", "sat-0")
    assert chaos.run("restart", "sat-0").endswith("container running")
    assert cs[0].calls == [("kill", "SIGKILL")]                          # restart = kill, then start
    with pytest.raises(NodeChaosError, match="no container for sat-9 in compose project 'p'"):
        chaos.run("kill", "sat-9")
    # --compose picks the engine even where a local fleet is; without the SDK or an engine: a clear error
    try:
        backend = node_chaos(argparse.Namespace(compose="p", dir=Path("/nonexistent")))
        assert isinstance(backend, ComposeNodeChaos)
    except NodeChaosError as exc:
        assert "Docker" in str(exc)


def test_init_issues_per_node_keys_and_a_signed_roster_and_nodes_hold_only_their_own(tmp_path):
    """Compose: no fleet secret; each node's volume gets its own key, the fleet volume the signed roster."""
    fleet, auth, vols = tmp_path / "fleet", tmp_path / "authority", tmp_path / "nodes"
    cmd = compose_document()["services"]["init"]["command"][3:]
    cmd = [str(fleet) if a == "/fleet" else str(auth) if a == "/authority" else str(vols) if a == "/nodes" else a
           for a in cmd]
    assert compose.main(cmd) == 0
    assert not (fleet / "secret").exists() and (auth / "authority.key").exists()
    assert not (fleet / "authority.key").exists()                      # the private half stays with init
    peers = json.loads((fleet / "peers.json").read_text())["nodes"]
    assert sorted(p.name for p in vols.iterdir()) == sorted(e["name"] for e in peers)
    before = {e["name"]: e["peer_id"] for e in peers}
    assert compose.main(cmd) == 0                                      # a second `up` keeps every key
    assert {e["name"]: e["peer_id"] for e in json.loads((fleet / "peers.json").read_text())["nodes"]} == before
    launch = prepare_node("sat-4", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                          data_dir=vols / "sat-4", peers_path=tmp_path / "run" / "peers.json", fleet_dir=fleet)
    assert launch.peer_id == before["sat-4"]
    args = launch.argv
    assert args[args.index("--roster") + 1] == str(fleet / "roster.json")
    from agent.ops.cli import parser
    assert parser().parse_args(args).authority == str(fleet / "authority.key.pub")
    with pytest.raises(ComposeError, match="not the key the roster lists"):
        prepare_node("sat-5", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                     data_dir=vols / "sat-4", peers_path=tmp_path / "run" / "peers.json", fleet_dir=fleet)
    doc = json.loads((fleet / "roster.json").read_text())
    doc["nodes"]["sat-5"] = before["sat-4"]                           # a tampered roster
    (fleet / "roster.json").write_text(json.dumps(doc))
    with pytest.raises(ComposeError, match="signature does not verify"):
        prepare_node("sat-4", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                     data_dir=vols / "sat-4", peers_path=tmp_path / "run" / "peers.json", fleet_dir=fleet)
