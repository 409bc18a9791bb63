"""Per-node keys for compose: the init service issues them; no container can derive another's.

The derived scheme (:mod:`agent.links.fleet_identity`) hands every container the
fleet secret, from which any node's key follows: one compromised container
speaks for the whole fleet.  Under compose the init service can do better,
because a one-shot container can mount every node's volume:

* it keeps the **fleet authority** key in the ``authority`` volume, which
  only it mounts;
* it creates each node's random Ed25519 key in that node's own data volume
  (``<node>-data``, mounted at ``/nodes/<node>``), once, and keeps it;
* it writes ``peers.json``, the authority-signed ``roster.json`` and the
  authority's public key into the ``fleet`` volume (read-only to the nodes).

A node container then holds only its own private key and the signed roster
(``python -m agent.ops.compose node`` finds ``roster.json`` in the fleet volume
and starts the agent with ``--roster``/``--authority``).  Swarm has no
volume one task can share with every other: there ``orbitmesh stack`` issues
the keys on the operator's machine with the same :func:`issue_keys`, and the
engine renders each replica only its own slot's key from a secret template
(agent/ops/stack.py); the replica installs it with :func:`install_node_key`.
"""

from __future__ import annotations

from pathlib import Path

from agent.atomic import write_atomic
from agent.links.fleet_identity import ComposeError, slot_ports
from agent.links.roster import RosterError, ensure_authority, load_roster, sign_roster, write_roster

NODES_DIR = "/nodes"            # init: every node's data volume, at /nodes/<node>
AUTHORITY_DIR = "/authority"    # init only: the fleet authority's key
AUTHORITY_KEY = "authority.key"


def issue_keys(fleet_dir: Path, authority_dir: Path, nodes_dir: Path, names: list[str], fleet: str,
               address: str = "{name}", slots: dict[str, int] | None = None) -> list[str]:
    """Create (or keep) every node's key in its volume; write peers, roster and the authority's
    public key into the fleet volume.  What it did, as lines.  ``slots``: a node's place in a
    container that hosts several (``--sats-per-container``), which gives it its own ports
    (:func:`agent.links.fleet_identity.slot_ports`); absent nodes have slot 0."""
    from agent.links.p2p import load_or_create_identity, peer_id_of
    from agent.links.peers import PeerEntry, Peers
    fleet_dir, nodes_dir = Path(fleet_dir), Path(nodes_dir)
    authority = ensure_authority(Path(authority_dir) / AUTHORITY_KEY)
    entries, created = [], 0
    for i, name in enumerate(names):
        key = nodes_dir / name / "identity.key"
        created += not key.exists()
        pid = peer_id_of(load_or_create_identity(key))
        host = address.format(name=name, index=i)
        p2p, api, grpc = slot_ports((slots or {}).get(name, 0))
        entries.append(PeerEntry(name, i, pid, f"/dns4/{host}/tcp/{p2p}/p2p/{pid}", f"http://{host}:{api}",
                                 f"{host}:{grpc}"))
    peers = Peers(entries)
    fleet_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(fleet_dir / "peers.json", peers.to_json())
    write_roster(fleet_dir / "roster.json", sign_roster({e.name: e.peer_id for e in entries}, authority, fleet=fleet))
    pub = (Path(authority_dir) / (AUTHORITY_KEY + ".pub")).read_text()
    write_atomic(fleet_dir / (AUTHORITY_KEY + ".pub"), pub)
    return [f"issued {created} new node keys (kept {len(names) - created}) in their volumes",
            f"wrote {fleet_dir / 'peers.json'} and the signed {fleet_dir / 'roster.json'}"]


def install_node_key(key_file: Path, data_dir: Path) -> None:
    """Install the node key a secret handed this node as ``data_dir/identity.key``: 64 hex
    digits (a swarm secret template renders text) or the raw 32-byte seed (a Kubernetes
    Secret made from the issued key file).  The secret is the authority here: a key issued
    again replaces the volume's copy (:func:`roster_node` then checks it against the roster)."""
    try:
        raw = Path(key_file).read_bytes()
    except FileNotFoundError:
        raise ComposeError(f"no node key at {key_file}: the node's key secret is missing") from None
    if not raw.strip():
        raise ComposeError(f"{key_file} is empty: the node-key secret holds no key for this task slot "
                           f"(more replicas than issued keys? run `orbitmesh stack` again and redeploy)")
    seed = raw
    if len(raw) != 32:
        try:
            seed = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            seed = b""
    if len(seed) != 32:
        raise ComposeError(f"{key_file} is not a node key (a 32-byte Ed25519 seed, raw or as 64 hex digits)")
    path = Path(data_dir) / "identity.key"
    if not path.exists() or path.read_bytes() != seed:
        write_atomic(path, seed, 0o600)


def roster_node(fleet_dir: Path, data_dir: Path, node: str) -> tuple[Path, list[str], str]:
    """A node started from issued keys: (peers file, extra agent arguments, its peer id)."""
    from agent.links.p2p import load_or_create_identity, peer_id_of
    from agent.links.peers import Peers
    fleet_dir = Path(fleet_dir)
    roster_path, pub = fleet_dir / "roster.json", fleet_dir / (AUTHORITY_KEY + ".pub")
    try:
        peers = Peers.load(fleet_dir / "peers.json")
        load_roster(roster_path, pub).check_peers(peers)
    except (OSError, ValueError) as exc:
        raise ComposeError(f"fleet volume: {exc}") from None
    if node not in peers:
        raise ComposeError(f"{node} is not in {fleet_dir / 'peers.json'}")
    key = Path(data_dir) / "identity.key"
    if not key.exists():
        raise ComposeError(f"no {key}: the init service issues every node's key into its volume "
                           f"(docker compose up runs it first)")
    pid = peer_id_of(load_or_create_identity(key))
    if pid != peers[node].peer_id:
        raise ComposeError(f"{key} is not the key the roster lists for {node}: remove the fleet's volumes "
                           f"(docker compose down -v) or run the init service again")
    return fleet_dir / "peers.json", ["--roster", str(roster_path), "--authority", str(pub)], pid


__all__ = ["AUTHORITY_DIR", "NODES_DIR", "RosterError", "install_node_key", "issue_keys", "roster_node"]
