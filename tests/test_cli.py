"""The CLI as a user runs it: up, status, submit, down, as real commands."""

import os
import stat
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, free_port_block

pytestmark = pytest.mark.slow    # every test runs the CLI or agents as processes


def orbitmesh(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_up_status_submit_down(tmp_path, models_dir):
    """With no token in the environment: `up` makes .fleet/token and every later command finds it there."""
    base = free_port_block(8)
    common = ["--dir", str(tmp_path / "fleet"), "--models", str(models_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("ORBITMESH_TOKEN", "ORBITMESH_TOKEN_FILE")}
    up = orbitmesh(*common, "up", "-n", "4", "--p2p-port", str(base), "--api-port", str(base + 4), env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all 4 agents up" in up.stdout and "token" in up.stdout
        token_file = tmp_path / "fleet" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        api = f"http://127.0.0.1:{base + 4}"
        assert httpx.post(f"{api}/v1/chaos", json={"kind": "cut", "a": "sat-0", "b": "sat-1"}).status_code == 401
        assert httpx.get(f"{api}/v1/chaos").status_code == 200
        wrong = orbitmesh(*common, "submit", "--node", "sat-1", env={**env, "ORBITMESH_TOKEN": "w" * 43})
        assert wrong.returncode == 1 and "401" in wrong.stderr and "wrong bearer token" in wrong.stderr
        again = orbitmesh(*common, "up", "-n", "4", "--p2p-port", str(base), "--api-port", str(base + 4), env=env)
        assert again.returncode == 1 and "already running" in again.stderr
        status = orbitmesh(*common, "status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "4/4 nodes answering" in status.stdout
        some = orbitmesh(*common, "status", "--nodes", "sat-2", "sat-1", env=env)
        assert some.returncode == 0 and "2/2 nodes answering" in some.stdout and "sat-0 " not in some.stdout
        nope = orbitmesh(*common, "status", "--nodes", "sat-9", env=env)
        assert nope.returncode == 1 and "not in the fleet: sat-9" in nope.stderr
        sub = orbitmesh(*common, "submit", "--node", "sat-0", "--target", "sat-3", "--sample", "2", env=env)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert "SUCCEEDED" in sub.stdout and "sat-0 → sat-3" in sub.stdout and "execute" in sub.stdout
        bad = orbitmesh(*common, "submit", "--node", "sat-0", "--model", "nope", "--inputs", "{}", env=env)
        assert bad.returncode == 1 and "unknown model" in bad.stderr
    finally:
        down = orbitmesh(*common, "down")
    assert down.returncode == 0 and "stopped 4 agents" in down.stdout
    assert "no agents running" in orbitmesh(*common, "down").stdout


def test_agent_with_bad_config_exits_with_a_reason(tmp_path, models_dir):
    cfg = tmp_path / "config.toml"
    cfg.write_text('name = "x"\nepoch = "2026-01-01T00:00:00Z"\nshells = []\n')
    (tmp_path / "peers.json").write_text('{"nodes": []}')
    r = orbitmesh("--models", str(models_dir), "agent", "--sat", "0", "--config", str(cfg),
                  "--data-dir", str(tmp_path / "d"), timeout=60)
    assert r.returncode == 2 and "at least one shell" in r.stderr


def test_status_without_a_fleet(tmp_path):
    r = orbitmesh("--dir", str(tmp_path / "none"), "status")
    assert r.returncode == 1 and "no fleet" in r.stderr


def test_an_agent_that_dies_at_start_is_reported_with_its_log(tmp_path):
    import pytest
    import trio

    from agent.ops.fleet import FleetError, wait_ready
    from agent.links.peers import PeerEntry, Peers

    class Exited:
        returncode = 1

        def poll(self):
            return 1

    (tmp_path / "sat-0.log").write_text("starting\nOSError: [Errno 98] address already in use\n")
    peers = Peers([PeerEntry("sat-0", 0, "id", "/ip4/127.0.0.1/tcp/1/p2p/id", "http://127.0.0.1:1")])
    with pytest.raises(FleetError, match=r"(?s)sat-0 exited with code 1.*address already in use"):
        trio.run(wait_ready, peers, 5.0, None, {"sat-0": Exited()}, tmp_path)


def test_a_large_fleets_default_ports_are_laid_out_apart_and_chosen_ports_that_clash_are_refused():
    """The default base ports (libp2p 4100, gRPC 7100, API 8100) meet beyond 1,000 members:
    starlink-s1's 1,590 agents bound each other's ports and `orbitmesh up` failed."""
    from agent.ops.fleet import DEFAULT_BASE_PORTS, FleetError, FleetSpec, with_ports_for
    small = FleetSpec()
    assert with_ports_for(small, 1000) == small                     # the demo's ports, as ever
    big = with_ports_for(small, 1590)
    bases = sorted((big.p2p_base_port, big.api_base_port, big.grpc_base_port))
    assert big.api_base_port == DEFAULT_BASE_PORTS[1]               # sat-0's API stays at 8100
    assert all(a + 1590 <= b for a, b in zip(bases, bases[1:])) and bases[-1] + 1590 <= 32768
    gen1 = with_ports_for(small, 4414)
    assert max(gen1.p2p_base_port, gen1.grpc_base_port) + 4414 <= 32768
    chosen = FleetSpec(p2p_base_port=20000, api_base_port=21000, grpc_base_port=30000)
    assert with_ports_for(chosen, 1000) == chosen
    with pytest.raises(FleetError, match=r"--p2p-port 20000 and --api-port 21000: 1590 agents"):
        with_ports_for(chosen, 1590)
    with pytest.raises(FleetError, match="must fit in 1–65535"):
        with_ports_for(FleetSpec(p2p_base_port=1, api_base_port=2000, grpc_base_port=65000), 1000)
