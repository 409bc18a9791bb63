"""Kubernetes: a StatefulSet per node, each pod mounting only its own key Secret (agent/ops/k8s.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.ops import compose
from agent.ops.compose import ComposeError, prepare_node
from agent.ops.k8s import FLEET_CONFIGMAP, TOKEN_SECRET, key_secret, write_k8s
from agent.links.roster import holds_key, load_roster

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "k8s"
    out.mkdir()
    for name in ("service.yaml", "networkpolicy.yaml"):
        shutil.copy(K8S / name, out / name)
    return out


def test_committed_manifests_are_the_generators_demo_and_the_keys_are_not_committed(tmp_path):
    out = _copy(tmp_path)
    written = write_k8s(out)
    assert [p.name for p in written] == ["statefulset.yaml", "kustomization.yaml"]
    for p in written:
        assert (K8S / p.name).read_text() == p.read_text(), f"regenerate deploy/k8s/{p.name} (orbitmesh k8s)"
    assert "deploy/k8s/keys/" in (ROOT / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "deploy/k8s"], capture_output=True, text=True, cwd=ROOT).stdout
    assert tracked and "keys/" not in tracked
    assert oct((out / "keys").stat().st_mode & 0o777) == "0o700"


def test_each_pod_template_mounts_only_its_own_key_secret():
    sets = [d for d in yaml.safe_load_all((K8S / "statefulset.yaml").read_text()) if d]
    nodes = []
    for sts in sets:
        pod = sts["spec"]["template"]["spec"]
        args = compose._parser().parse_args(pod["containers"][0]["command"][3:])
        nodes.append(args.node)
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {key_secret(args.node), TOKEN_SECRET}, sts["metadata"]["name"]
        projected = [v for v in pod["volumes"] if "projected" in v or "csi" in v]
        assert not projected
        configmaps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        assert configmaps == {FLEET_CONFIGMAP}
        assert pod["automountServiceAccountToken"] is False     # no API credentials to read other Secrets with
        assert sts["spec"]["replicas"] == 1 and sts["spec"]["selector"]["matchLabels"]["orbitmesh.io/node"] == args.node
    assert nodes == [f"sat-{i}" for i in range(24)]
    # kustomize builds each node's Secret from that node's key file only
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    gen = {g["name"]: g["files"] for g in kust["secretGenerator"]}
    assert gen == {key_secret(n): [f"identity.key=keys/nodes/{n}/identity.key"] for n in nodes}
    (fleet,) = kust["configMapGenerator"]
    assert fleet["name"] == FLEET_CONFIGMAP and not any("authority.key=" in f or "nodes/" in f for f in fleet["files"])
    assert set(kust["resources"]) == {"service.yaml", "statefulset.yaml", "networkpolicy.yaml"}


def test_issued_keys_differ_and_a_pod_runs_with_its_own_key_only(tmp_path):
    out = _copy(tmp_path)
    write_k8s(out, n=4)
    keys = out / "keys"
    roster = load_roster(keys / "fleet" / "roster.json", keys / "fleet" / "authority.key.pub")
    seeds = {n: (keys / "nodes" / n / "identity.key").read_bytes() for n in roster.nodes}
    assert len(set(seeds.values())) == 4
    for n, seed in seeds.items():
        assert [m for m, pid in roster.nodes.items() if holds_key(seed.hex(), pid)] == [n]
    peers = (keys / "fleet" / "peers.json").read_text()
    assert "/dns4/orbitmesh-sat-2-0.orbitmesh/tcp/4001/p2p/" in peers

    def launch(node, key: bytes, sub):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "identity.key").write_bytes(key)         # the Secret's file, as kubelet mounts it
        return prepare_node(node, secret_path=tmp_path / "none", config_path=None, preset="demo", n=4,
                            data_dir=tmp_path / sub / "data", peers_path=tmp_path / sub / "run" / "peers.json",
                            fleet_dir=keys / "fleet", node_key=tmp_path / sub / "identity.key")

    got = launch("sat-2", seeds["sat-2"], "a")
    assert got.peer_id == roster.nodes["sat-2"]
    assert got.argv[got.argv.index("--roster") + 1] == str(keys / "fleet" / "roster.json")
    with pytest.raises(ComposeError, match="not the key the roster lists for sat-2"):
        launch("sat-2", seeds["sat-3"], "b")
    # issued again: kept (the PVCs and the running pods keep their peer ids)
    write_k8s(out, n=4)
    assert {n: (keys / "nodes" / n / "identity.key").read_bytes() for n in roster.nodes} == seeds


def test_rendered_kustomization_validates_against_the_kubernetes_schemas(tmp_path, kv):
    """What `kubectl apply -k` sends: kustomize's output, every object strict-valid for 1.30."""
    out = _copy(tmp_path)
    write_k8s(out)
    docs = [d for d in yaml.safe_load_all((out / "statefulset.yaml").read_text()) if d]
    for name in ("service.yaml", "networkpolicy.yaml"):
        docs += [d for d in yaml.safe_load_all((out / name).read_text()) if d]
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)
    kubectl = shutil.which("kubectl")
    if kubectl:      # the real kustomize, where installed: it must find every key file and name
        r = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rendered = [d for d in yaml.safe_load_all(r.stdout) if d]
        kinds = sorted(d["kind"] for d in rendered)
        assert kinds.count("Secret") == 24 and kinds.count("StatefulSet") == 24 and kinds.count("ConfigMap") == 1
        for d in rendered:
            kv.validate(d, "1.30.0", strict=True)


@pytest.mark.slow    # a subprocess
def test_k8s_command_writes_manifests_and_keys(tmp_path):
    out = _copy(tmp_path)
    r = subprocess.run([sys.executable, "-m", "agent", "k8s", "-n", "6", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (out / "statefulset.yaml").read_text().count("kind: \"StatefulSet\"") == 6
    assert (out / "keys" / "nodes" / "sat-5" / "identity.key").exists() and "never commit" in r.stderr
    r = subprocess.run([sys.executable, "-m", "agent", "k8s", "--out", str(tmp_path / "empty")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "lacks service.yaml" in r.stderr
