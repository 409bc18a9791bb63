"""Prometheus for a compose constellation: the ``monitoring`` profile's service and its config.

Prometheus is Debian's package in a locally built image
(``deploy/build-monitoring-image.sh``: no registry here).  Its config is
written by the compose ``init`` service into the fleet volume, from the same
fleet definition that names the nodes, so the targets can never drift from
the services; Prometheus reads it from there (read-only).  Every node's
``/metrics`` is a read, open without the API token; its Host (``sat-3:8080``)
is a fleet name the agents accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMETHEUS_IMAGE = "orbitmesh-prometheus:bookworm"
PROMETHEUS_PORT = 9090
CONFIG_NAME = "prometheus.yml"
SCRAPE_INTERVAL_S = 5        # an emulated link changes in seconds; 5 s keeps 26 targets cheap
PROFILE = "monitoring"


def prometheus_config(nodes: list[str], api_port: int | dict[str, int], *,
                      scrape_interval_s: int = SCRAPE_INTERVAL_S) -> str:
    """The scrape config: one job, every node a target labelled with its name and role.
    ``api_port``: every node's, or each node's (satellites that share a container)."""
    from agent.ops.yamlfile import to_yaml
    sats = [n for n in nodes if n.startswith("sat-")]
    ground = [n for n in nodes if not n.startswith("sat-")]
    port = api_port.get if isinstance(api_port, dict) else (lambda _n: api_port)
    groups = [{"targets": [f"{n}:{port(n)}" for n in group], "labels": {"role": role}}
              for group, role in ((sats, "satellite"), (ground, "ground")) if group]
    doc = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"},
        "scrape_configs": [{
            "job_name": "orbitmesh",
            "metrics_path": "/metrics",
            "static_configs": groups,
            # the target's host name (sat-3) as the `instance`, without the port
            "relabel_configs": [{"source_labels": ["__address__"], "regex": "([^:]+):.*",
                                 "target_label": "instance", "replacement": "$1"}],
        }],
    }
    return to_yaml(doc, "# Written by `python -m agent.ops.compose init` for the monitoring profile; "
                        "see docs/docker.md.\n")


def prometheus_service(fleet_volume: str, fleet_dir: str, network: str, host: str, labels: dict[str, str],
                       host_port: int = PROMETHEUS_PORT) -> dict[str, Any]:
    """The compose service: started only with ``--profile monitoring``."""
    return {
        "image": PROMETHEUS_IMAGE,
        "profiles": [PROFILE],
        "command": ["prometheus", f"--config.file={fleet_dir}/{CONFIG_NAME}", "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=2d", f"--web.listen-address=:{PROMETHEUS_PORT}"],
        "depends_on": {"init": {"condition": "service_completed_successfully"}},
        "networks": [network],
        "volumes": [f"{fleet_volume}:{fleet_dir}:ro", "prometheus-data:/prometheus"],
        "ports": [f"{host}:{host_port}:{PROMETHEUS_PORT}"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": labels,
        "restart": "no",
        "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}},
    }
