"""Kubernetes: the manifests of a constellation in which every pod holds only its own key.

``orbitmesh k8s --out deploy/k8s`` writes ``statefulset.yaml`` and
``kustomization.yaml`` (committed: ``deploy/k8s`` is its output for the
``demo`` preset) and issues the keys into ``deploy/k8s/keys/`` (never
committed).  ``kubectl apply -k deploy/k8s`` then creates everything.

Why it is shaped this way (docs/kubernetes.md has the user's side):

* **A StatefulSet per node, one replica each.**  A pod template cannot vary
  with the ordinal, so one StatefulSet of N replicas can only mount the same
  Secret in every pod; that is why the derived scheme (one fleet secret, every
  key derived from it) was all a single StatefulSet allowed.  A StatefulSet per
  node mounts *its* node's Secret only, and keeps what a StatefulSet gives:
  a stable name (``orbitmesh-sat-7-0``), its own PersistentVolumeClaim, a new
  pod in the same identity when one dies.
* **Keys issued on the operator's machine** by
  :func:`agent.ops.fleet_keys.issue_keys` (as compose's init does): a random
  Ed25519 key per node, and a roster signed by a fleet authority whose private
  key never leaves ``keys/authority``.  kustomize's ``secretGenerator`` turns
  each node's key file into the Secret ``orbitmesh-key-<node>``, and
  ``configMapGenerator`` the signed roster, the peers file and the authority's
  public key into the ConfigMap ``orbitmesh-fleet``.
* **The config is computed in every pod** from the preset, its clock at the
  element sets' epoch, so pods agree with no coordinator (as before).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.ops.compose import DEFAULT_IMAGE, preset_config_at_epoch
from agent.links.fleet_identity import API_PORT, P2P_PORT, ComposeError

APP = "orbitmesh"
SERVICE = "orbitmesh"                        # the headless Service (service.yaml)
NODE_LABEL = "orbitmesh.io/node"
ADDRESS = "orbitmesh-{name}-0.orbitmesh"     # pod 0 of StatefulSet orbitmesh-<node>, under the headless Service
KEY_DIR = "/etc/orbitmesh/key"               # this pod's own key (its Secret)
FLEET_DIR = "/etc/orbitmesh/fleet"           # roster.json, peers.json, authority.key.pub (the ConfigMap)
TOKEN_DIR = "/etc/orbitmesh/api-token"
TOKEN_SECRET = "orbitmesh-api-token"
FLEET_CONFIGMAP = "orbitmesh-fleet"
STATIC = ("service.yaml", "networkpolicy.yaml")   # hand-written, beside the generated files
KEYS = "keys"


def key_secret(node: str) -> str:
    return f"orbitmesh-key-{node}"


def _names(preset: str, n: int | None) -> list[str]:
    cfg = preset_config_at_epoch(preset, n)
    return [f"sat-{i}" for i in range(cfg.size)]


def statefulset(node: str, preset: str = "demo", n: int | None = None, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The StatefulSet (one replica) that runs ``node`` with its own key and nothing of another's."""
    cmd = ["python", "-m", "agent.ops.compose", "node", "--node", node, "--preset", preset]
    cmd += ["-n", str(n)] if n is not None else []
    cmd += ["--fleet", FLEET_DIR, "--node-key", f"{KEY_DIR}/identity.key", "--data", "/data",
            "--no-realtime",          # non-root pods get no CAP_SYS_NICE
            "--api-token-file", f"{TOKEN_DIR}/token"]
    labels = {"app.kubernetes.io/name": APP, NODE_LABEL: node}
    probe = {"httpGet": {"path": "/v1/health", "port": "api"}}
    agent = {
        "name": "agent",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": cmd,
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            # host names in-cluster clients use (besides IPs and the pods' own names)
            {"name": "ORBITMESH_ALLOWED_HOSTS",
             "value": "orbitmesh-api,orbitmesh-api.$(POD_NAMESPACE),orbitmesh-api.$(POD_NAMESPACE).svc,"
                      "*.svc.cluster.local"},
        ],
        "ports": [{"name": "p2p", "containerPort": P2P_PORT}, {"name": "api", "containerPort": API_PORT}],
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/v1/ready", "port": "api"}, "periodSeconds": 10},
        "livenessProbe": {**probe, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        # an agent holds every model of the zoo warm: ~310 MiB measured (docs/benchmarks.md)
        "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "key", "mountPath": KEY_DIR, "readOnly": True},
            {"name": "fleet", "mountPath": FLEET_DIR, "readOnly": True},
            {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": f"orbitmesh-{node}", "labels": labels},
        "spec": {
            "serviceName": SERVICE,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,      # a satellite never talks to the API server
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [agent],
                    "volumes": [
                        {"name": "key", "secret": {"secretName": key_secret(node), "defaultMode": 0o440}},
                        {"name": "fleet", "configMap": {"name": FLEET_CONFIGMAP, "defaultMode": 0o444}},
                        {"name": "api-token", "secret": {"secretName": TOKEN_SECRET, "defaultMode": 0o440}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                               "resources": {"requests": {"storage": "64Mi"}}}}],
        },
    }


def kustomization(names: list[str]) -> dict[str, Any]:
    """``kubectl apply -k``: the manifests, a Secret per node from its key file, the fleet ConfigMap."""
    stable = {"disableNameSuffixHash": True}     # the StatefulSets name them
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["service.yaml", "statefulset.yaml", "networkpolicy.yaml"],
        "secretGenerator": [{"name": key_secret(node), "files": [f"identity.key={KEYS}/nodes/{node}/identity.key"],
                             "options": stable} for node in names],
        "configMapGenerator": [{"name": FLEET_CONFIGMAP,
                                "files": [f"{f}={KEYS}/fleet/{f}" for f in ("roster.json", "peers.json",
                                                                            "authority.key.pub")],
                                "options": stable}],
    }


def _header(preset: str, n: int | None, what: str) -> str:
    how = f"orbitmesh k8s --preset {preset}" + (f" -n {n}" if n is not None else "") + " --out deploy/k8s"
    return (f"# Generated by `{how}`; regenerate rather than edit.  {what}\n"
            "# Before `kubectl apply -k`: that command issues the node keys and the signed roster into keys/\n"
            "# (never commit them), and the API token is a Secret you create (docs/kubernetes.md):\n"
            "#   kubectl create secret generic orbitmesh-api-token --from-literal=token=\"$(openssl rand -hex 32)\"\n")


def write_k8s(out_dir: Path, preset: str = "demo", n: int | None = None, image: str = DEFAULT_IMAGE) -> list[Path]:
    """Write ``statefulset.yaml`` and ``kustomization.yaml`` into ``out_dir`` and issue (or keep) the
    keys in ``out_dir/keys`` (mode 0700); the committable files written."""
    import os

    from agent.ops.fleet_keys import issue_keys
    from agent.ops.yamlfile import to_yaml
    out_dir = Path(out_dir)
    names = _names(preset, n)
    keys = out_dir / KEYS
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    issue_keys(keys / "fleet", keys / "authority", keys / "nodes", names, preset, address=ADDRESS)
    sts = out_dir / "statefulset.yaml"
    docs = [to_yaml(statefulset(node, preset, n, image),
                    _header(preset, n, f"One StatefulSet per node: pod orbitmesh-{node}-0 runs {node} "
                                       f"and mounts only its Secret {key_secret(node)}.") if k == 0 else "")
            for k, node in enumerate(names)]
    sts.write_text("---\n".join(docs))
    kust = out_dir / "kustomization.yaml"
    kust.write_text(to_yaml(kustomization(names), _header(preset, n, "kubectl apply -k deploy/k8s")))
    return [sts, kust]


def cmd_k8s(args: argparse.Namespace) -> int:
    out = Path(args.out)
    missing = [f for f in STATIC if not (out / f).exists()]
    try:
        if missing:
            raise ComposeError(f"{out} lacks {', '.join(missing)}: write into a copy of deploy/k8s")
        written = write_k8s(out, args.preset, args.n, args.image)
    except (ComposeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in written)} and the node keys in {out / KEYS}/ (keep them like a "
          f"password, never commit them); then: kubectl apply -k {out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``orbitmesh k8s`` to the CLI."""
    p = subparsers.add_parser("k8s", help="write the Kubernetes manifests and issue every node its own key",
                              description="Write a StatefulSet per node and the kustomization into a copy of "
                                          "deploy/k8s, and issue the node keys and signed roster into its keys/.  "
                                          "See docs/kubernetes.md.")
    p.add_argument("--preset", default="demo", help="constellation preset (default: demo)")
    p.add_argument("-n", type=int, default=None, help="number of satellites (default: the preset's)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"agent image (default: {DEFAULT_IMAGE})")
    p.add_argument("-o", "--out", default="deploy/k8s", help="directory with service.yaml and networkpolicy.yaml")
    p.set_defaults(func=cmd_k8s)
    return p
