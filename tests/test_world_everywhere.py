"""One way to build the world from a config: every command goes through World.from_config,
so a config means the same mesh everywhere (TLE shells and ground stations included)."""

import ast
from pathlib import Path

from agent.ops.chaos_cli import fleet_topo
from agent.links.peers import PeerEntry, Peers
from mesh.config import config_to_toml, parse_config
from mesh.orbit import WalkerShell, iso_to_jd
from mesh.presets import preset
from mesh.tle import walker_tles

ROOT = Path(__file__).resolve().parent.parent
POLAR = WalkerShell(planes=6, sats_per_plane=8, altitude_km=1015, inclination_deg=98.98, phasing=1, kind="star",
                    name="p")


def test_a_tle_shell_reaches_the_chaos_tools_world(tmp_path):
    text = walker_tles([POLAR], iso_to_jd("2026-01-01T00:00:00Z"))
    doc = config_to_toml(preset("demo")) + f"\n[tle]\ntext = '''\n{text}'''\n"
    cfg = parse_config(doc)
    assert cfg.size == 24 + 48
    (tmp_path / "config.toml").write_text(doc)
    peers = Peers([PeerEntry(f"sat-{i}", i, f"p{i}", f"/ip4/127.0.0.1/tcp/{4100 + i}", f"http://127.0.0.1:{8100 + i}")
                   for i in range(cfg.size)])
    (tmp_path / "peers.json").write_text(peers.to_json())
    topo = fleet_topo(tmp_path)
    assert len(topo.nodes) == 72
    tle_sats = {f"sat-{i}" for i in range(24, 72)}
    tle_links = [link for link in topo.links if link <= tle_sats]
    assert len(tle_links) >= 48, "the TLE shell's +Grid links are known to chaos validation"
    assert topo.planes["sat-24"][0] == 1 and topo.planes["sat-0"][0] == 0     # a shell of its own


def test_no_command_builds_a_constellation_or_topology_itself():
    """agent/ builds worlds only through mesh.world.World.from_config."""
    bad = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                    and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                    in ("Constellation", "Topology")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad
