"""Fleet identities for containers: one secret per deployment, every node key derived from it.

Every agent must know every peer id before the first dial (the peers file
lists ``/dns4/<service>/tcp/4001/p2p/<peer id>``).  A node's Ed25519 seed is
``HMAC-SHA256(fleet secret, "orbitmesh/identity/v1/" + node name)``, so the
whole peers file is a function of the secret, the config and the address
pattern, and each container computes it at start with no shared writable
state:

* compose: the one-shot ``init`` service creates ``secret`` (32 random bytes,
  hex, mode 0600) and ``config.toml`` (with the fleet's shared start time) in
  the ``fleet`` volume on the first ``up`` and keeps them afterwards; each
  node (satellite or ground station) mounts ``fleet`` read-only and its own
  ``<node>-data`` volume;
* Kubernetes: the secret is a ``Secret``, the config a ``ConfigMap``; pods of
  a StatefulSet cannot share a volume, which rules out "create random keys
  in a shared volume" there, and the same scheme serves both;
* Docker Swarm (agent/ops/stack.py): a swarm secret and a swarm config.

The derived seed is written to the node's data volume as ``identity.key`` on
first start and checked on every later one, so a changed secret over an old
volume fails loudly instead of silently changing a satellite's peer id.  The
secret is the fleet's root credential (whoever reads it can act as any node);
nothing is committed: the generated compose file holds no keys.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from agent.atomic import write_atomic

P2P_PORT = 4001                  # libp2p links, inside every container
API_PORT = 8080                  # HTTP API, inside every container
GRPC_PORT = 8081                 # gRPC inference (Open Inference Protocol), inside every container
MAX_SLOTS = 1000                 # satellites one container may host (their ports stay below 10,081)


def slot_ports(slot: int) -> tuple[int, int, int]:
    """(libp2p, API, gRPC) ports inside a container of the satellite in ``slot`` (from 0).

    A container that hosts several satellites (``--sats-per-container``) shares one
    network namespace among them, so each needs ports of its own: slot 0 keeps the
    single-satellite container's ports, and API and gRPC ports interleave so they
    never collide (8080/8081, 8082/8083, ...)."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"container slot {slot}: a container hosts at most {MAX_SLOTS} satellites")
    return P2P_PORT + slot, API_PORT + 2 * slot, GRPC_PORT + 2 * slot
IDENTITY_CONTEXT = b"orbitmesh/identity/v1/"
MIN_SECRET_BYTES = 16


class ComposeError(Exception):
    """Bad generator options or a broken fleet volume; the message says what to do."""


# =============================================================================
# identities derived from the fleet secret


def read_secret(path: Path) -> bytes:
    """The fleet secret: the file's bytes without surrounding whitespace."""
    try:
        data = Path(path).read_bytes().strip()
    except FileNotFoundError:
        raise ComposeError(f"no fleet secret at {path}; the init service (compose) or the Secret "
                           f"(Kubernetes) provides it") from None
    if len(data) < MIN_SECRET_BYTES:
        raise ComposeError(f"fleet secret {path} is too short ({len(data)} bytes; at least {MIN_SECRET_BYTES})")
    return data


def derive_seed(secret: bytes, node: str) -> bytes:
    """The 32-byte Ed25519 seed of ``node`` in the fleet keyed by ``secret``."""
    return hmac.new(secret, IDENTITY_CONTEXT + node.encode(), hashlib.sha256).digest()


def derived_peer_id(secret: bytes, node: str) -> str:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from agent.links.p2p import peer_id_of
    return peer_id_of(create_new_key_pair(derive_seed(secret, node)))


def ensure_identity(data_dir: Path, secret: bytes, node: str) -> str:
    """Write ``node``'s derived identity into ``data_dir`` (or check it); its peer id."""
    from agent.links.p2p import load_or_create_identity, peer_id_of
    path = Path(data_dir) / "identity.key"
    seed = derive_seed(secret, node)
    if path.exists():
        if path.read_bytes() != seed:
            raise ComposeError(
                f"{path} holds another identity than the fleet secret derives for {node}: the secret "
                f"changed while this volume was kept.  Restore the secret, or remove the node's volume "
                f"(docker compose down -v) to start the fleet with new identities")
    else:
        write_atomic(path, seed, 0o600)
    return peer_id_of(load_or_create_identity(path))


def fleet_peers(secret: bytes, size: int, address: str = "{name}", p2p_port: int = P2P_PORT,
                api_port: int = API_PORT, stations: tuple[str, ...] = (), grpc_port: int = GRPC_PORT):
    """The peers file of a derived fleet: ``address`` names node ``{name}`` / ``{index}``.

    ``size`` satellites ``sat-0`` … and then the ground stations ``stations``
    (in config order): station k is node ``size + k`` named ``gs-<station>``,
    as in :class:`mesh.nodes.NodeNames`.
    """
    from agent.links.peers import PeerEntry, Peers
    from mesh.nodes import NodeNames
    names = NodeNames(size, tuple(stations))
    entries = []
    for i in range(len(names)):
        name = names.name(i)
        host = address.format(name=name, index=i)
        pid = derived_peer_id(secret, name)
        entries.append(PeerEntry(name, i, pid, f"/dns4/{host}/tcp/{p2p_port}/p2p/{pid}", f"http://{host}:{api_port}",
                                 f"{host}:{grpc_port}"))
    return Peers(entries)
