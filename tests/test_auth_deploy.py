"""The API token and network policy in every deployment: compose, swarm stack, Kubernetes (no engine needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.serve import auth
from agent.ops import compose
from agent.ops.cli import parser
from agent.ops.compose import compose_document, init_fleet, prepare_node
from agent.links.fleet_identity import API_PORT, GRPC_PORT, P2P_PORT
from agent.ops.stack import TOKEN_SECRET, TOKEN_TARGET, StackSpec, stack_document

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def test_compose_init_makes_the_token_once_or_takes_the_hosts(tmp_path, monkeypatch):
    fleet = tmp_path / "fleet"
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    done = init_fleet(fleet, now=1000.0)
    token = (fleet / compose.TOKEN_NAME).read_text().strip()
    assert len(token) >= 40 and stat.S_IMODE((fleet / compose.TOKEN_NAME).stat().st_mode) == 0o600
    assert any("created an API token" in line for line in done)
    assert any("kept the API token" in line for line in init_fleet(fleet, now=1000.0))
    assert (fleet / compose.TOKEN_NAME).read_text().strip() == token
    monkeypatch.setenv(auth.TOKEN_ENV, "the-operators-own-token-1")      # `ORBITMESH_TOKEN=… docker compose up`
    init_fleet(fleet, now=1000.0)
    assert (fleet / compose.TOKEN_NAME).read_text().strip() == "the-operators-own-token-1"


def test_compose_passes_the_hosts_token_to_init_and_the_file_to_every_node(tmp_path):
    doc = compose_document()
    assert doc["services"]["init"]["environment"] == {"ORBITMESH_TOKEN": "${ORBITMESH_TOKEN:-}"}
    assert "${ORBITMESH_TOKEN:-}" in (ROOT / "docker-compose.yml").read_text()
    fleet = tmp_path / "fleet"
    node_cmd = doc["services"]["sat-3"]["command"]
    ns = compose._parser().parse_args([*node_cmd[3:], "--fleet", str(fleet)])
    assert compose.token_args(ns) == []                   # no file yet: the agent looks at $ORBITMESH_TOKEN
    init_fleet(fleet)
    argv = compose.token_args(ns)
    assert argv == ["--api-token-file", str(fleet / compose.TOKEN_NAME)]
    launch = prepare_node("sat-3", secret_path=fleet / "secret", config_path=fleet / "config.toml",
                          data_dir=tmp_path / "d", peers_path=tmp_path / "run" / "peers.json")
    assert parser().parse_args(launch.argv + argv).api_token_file == fleet / compose.TOKEN_NAME
    open_lab = compose._parser().parse_args([*node_cmd[3:], "--fleet", str(fleet), "--no-auth"])
    assert compose.token_args(open_lab) == ["--no-auth"]
    explicit = compose._parser().parse_args([*node_cmd[3:], "--api-token-file", "/run/secrets/t"])
    assert compose.token_args(explicit) == ["--api-token-file", "/run/secrets/t"]


def test_stack_reads_the_token_from_a_swarm_secret():
    doc = stack_document()
    sat = doc["services"]["sat"]
    assert doc["secrets"]["api-token"] == {"external": True, "name": TOKEN_SECRET}
    assert {"source": "api-token", "target": "api-token", "mode": 0o400} in sat["secrets"]
    cmd = sat["command"]
    assert cmd[cmd.index("--api-token-file") + 1] == TOKEN_TARGET == "/run/secrets/api-token"
    assert compose._parser().parse_args(cmd[3:]).api_token_file == Path(TOKEN_TARGET)
    other = stack_document(StackSpec(token_secret="team-token"))
    assert other["secrets"]["api-token"]["name"] == "team-token"
    committed = (ROOT / "deploy" / "stack.yml").read_text()
    assert "/run/secrets/api-token" in committed and f'name: "{TOKEN_SECRET}"' in committed


def _k8s(name):
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_k8s_pods_take_the_token_from_a_secret_and_allow_the_service_names():
    sts = _k8s("statefulset.yaml")[0]
    pod = sts["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    cmd = agent["command"]
    token_path = cmd[cmd.index("--api-token-file") + 1]
    vol = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "orbitmesh-api-token")
    mount = next(m for m in agent["volumeMounts"] if m["name"] == vol["name"])
    assert token_path == mount["mountPath"] + "/token" and mount["readOnly"] is True
    assert compose._parser().parse_args(cmd[3:]).api_token_file == Path(token_path)
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert "orbitmesh-api" in env["ORBITMESH_ALLOWED_HOSTS"].split(",")
    hosts = auth.HostPolicy.of(env["ORBITMESH_ALLOWED_HOSTS"].replace("$(POD_NAMESPACE)", "default").split(","))
    assert hosts.allows("orbitmesh-api.default.svc.cluster.local") and not hosts.allows("evil.example")
    assert "networkpolicy.yaml" in (K8S / "kustomization.yaml").read_text()


def test_k8s_network_policy_mesh_only_between_satellites_api_only_from_labelled_clients():
    (policy,) = _k8s("networkpolicy.yaml")
    pods = [sts["spec"]["template"]["metadata"]["labels"] for sts in _k8s("statefulset.yaml")]
    # the labels every satellite pod shares (each also has its own orbitmesh.io/node)
    sat_labels = dict(set.intersection(*(set(p.items()) for p in pods)))
    assert sat_labels == {"app.kubernetes.io/name": "orbitmesh"} and len(pods) == 24
    spec = policy["spec"]
    assert policy["kind"] == "NetworkPolicy" and spec["podSelector"]["matchLabels"].items() <= sat_labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}

    def ports(rule):
        return {p["port"] for p in rule["ports"]}

    by_port = {}
    for rule in spec["ingress"]:
        for port in ports(rule):
            by_port.setdefault(port, []).extend(rule["from"])
    assert set(by_port) == {P2P_PORT, API_PORT, GRPC_PORT}
    # the laser-link port: from satellites of this StatefulSet only (same namespace, no namespaceSelector)
    assert by_port[P2P_PORT] == [{"podSelector": {"matchLabels": sat_labels}}]
    # the API and gRPC: from labelled client pods or labelled namespaces, never from everyone
    for port in (API_PORT, GRPC_PORT):
        peers = by_port[port]
        assert peers and all(p for p in peers)               # an empty peer would mean "anyone"
        assert {"podSelector": {"matchLabels": {"orbitmesh.io/client": "true"}}} in peers
        assert {"namespaceSelector": {"matchLabels": {"orbitmesh.io/client": "true"}}} in peers
        assert all(sat_labels.items() - p.get("podSelector", {}).get("matchLabels", {}).items() for p in peers)
    egress_ports = set().union(*(ports(r) for r in spec["egress"]))
    assert egress_ports == {P2P_PORT, 53}
