"""The fleet's roster and every node's signing key: who may say what in the mesh.

Each node has its own Ed25519 key (its libp2p identity, ``identity.key``:
the 32-byte seed).  Its peer id *is* its public key (an identity multihash),
so the peers file already names every member's key; the **roster** adds who
vouches for that list and who is no longer a member:

    {"roster": 1, "fleet": "demo", "nodes": {"sat-0": "12D3KooW…", …},
     "revoked": ["sat-5"], "authority": "<hex Ed25519 public key>",
     "signature": "<hex Ed25519 signature over the canonical JSON of the rest>"}

signed by the **fleet authority**, a key that stays with the operator
(``orbitmesh up`` keeps it in the fleet directory; compose in a volume only
the init service mounts).  An agent started with ``--roster`` and the
authority's public key (``--authority``) refuses a roster not signed by it,
a peers file that disagrees with it, Hello from a revoked member, and every
rumour or fault whose origin is revoked.  Without ``--roster`` the peers file
is the roster (the operator wrote it; no revocation).

A running agent re-reads its roster when the file changes: members newly
revoked are cut off at once (their links closed, their Hello refused, their
records ignored); ``orbitmesh revoke NODE`` re-signs a local fleet's roster.
Restoring a member takes a restart of the agents.

Either way the mesh signs and checks every record (:mod:`mesh.trust`):
:func:`mesh_trust` gives a node its signer (its own key) and the verifier
(every member's public key, from its peer id).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.atomic import write_atomic
from mesh.trust import CheckCache, Trust

log = logging.getLogger(__name__)

ROSTER_VERSION = 1
WATCH_EVERY_S = 2.0
ROSTER_CONTEXT = b"orbitmesh/roster/v1\x00"
_ED25519_PREFIX = bytes.fromhex("0024080112" "20")   # identity multihash, 36 bytes: protobuf {Type: Ed25519, Data: 32}
SEED_BYTES = 32


class RosterError(ValueError):
    """A roster, authority key or node key that cannot be trusted; the message says why."""


# -- keys ----------------------------------------------------------------------------------

@lru_cache(maxsize=1 << 14)
def public_key_of(peer_id: str) -> Ed25519PublicKey:
    """The Ed25519 public key a libp2p peer id (``12D3KooW…``) spells out.  One object per peer
    id per process: every satellite of a host checks every member's records (~0.2 KB of native
    memory a key, 1,590 keys at starlink-s1's size, per satellite otherwise)."""
    from libp2p.peer.id import ID
    try:
        raw = ID.from_base58(peer_id).to_bytes()
    except Exception:  # base58 raises several types on garbage
        raise RosterError(f"peer id {peer_id!r} is not base58") from None
    if len(raw) != len(_ED25519_PREFIX) + 32 or not raw.startswith(_ED25519_PREFIX):
        raise RosterError(f"peer id {peer_id!r} is not an inline Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw[len(_ED25519_PREFIX):])


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def holds_key(seed_hex: str, peer_id: str) -> bool:
    """Whether ``seed_hex`` (an Ed25519 seed, hex) is the private half of ``peer_id``: which
    node a leaked or shipped key speaks for (the swarm checks use it)."""
    try:
        priv = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
        return raw_public(priv.public_key()) == raw_public(public_key_of(peer_id))
    except (ValueError, RosterError):
        return False


def read_seed(path: Path) -> bytes:
    """A 32-byte Ed25519 seed file (a node's ``identity.key``, the authority's key)."""
    try:
        seed = Path(path).read_bytes()
    except FileNotFoundError:
        raise RosterError(f"no key at {path}") from None
    if len(seed) != SEED_BYTES:
        raise RosterError(f"key file {path} holds {len(seed)} bytes, not a {SEED_BYTES}-byte Ed25519 seed")
    return seed


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600 (directories created)."""
    write_atomic(path, data, 0o600)


def ensure_authority(path: Path) -> Ed25519PrivateKey:
    """The fleet authority's key at ``path`` (created if missing), and ``<path>.pub`` beside it."""
    path = Path(path)
    if not path.exists():
        write_private(path, os.urandom(SEED_BYTES))
    key = Ed25519PrivateKey.from_private_bytes(read_seed(path))
    pub = path.with_name(path.name + ".pub")
    text = raw_public(key.public_key()).hex() + "\n"
    if not pub.exists() or pub.read_text() != text:
        write_atomic(pub, text)
    return key


def read_authority_pub(path: Path) -> bytes:
    """The authority's 32-byte public key from a hex file (``authority.key.pub``)."""
    try:
        raw = bytes.fromhex(Path(path).read_text().strip())
    except FileNotFoundError:
        raise RosterError(f"no authority public key at {path}") from None
    except ValueError:
        raise RosterError(f"{path}: not a hex public key") from None
    if len(raw) != 32:
        raise RosterError(f"{path}: an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


# -- the roster ----------------------------------------------------------------------------

def _canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return ROSTER_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_roster(nodes: dict[str, str], authority: Ed25519PrivateKey, *, fleet: str = "",
                revoked: Iterable[str] = ()) -> dict:
    """A roster document for ``nodes`` (name → peer id), signed by ``authority``."""
    revoked = sorted(set(revoked))
    unknown = [n for n in revoked if n not in nodes]
    if unknown:
        raise RosterError(f"cannot revoke {', '.join(unknown)}: not in the roster")
    doc = {"roster": ROSTER_VERSION, "fleet": fleet, "nodes": dict(sorted(nodes.items())), "revoked": revoked,
           "authority": raw_public(authority.public_key()).hex()}
    doc["signature"] = authority.sign(_canonical(doc)).hex()
    return doc


@dataclass(frozen=True)
class Roster:
    nodes: dict[str, str]              # name -> peer id
    revoked: frozenset[str]

    def check_peers(self, peers) -> None:
        """The peers file must name exactly the roster's keys (RosterError otherwise)."""
        for name in peers.names():
            if self.nodes.get(name) != peers[name].peer_id:
                raise RosterError(f"peers file gives {name} peer id {peers[name].peer_id}, the signed roster "
                                  f"{self.nodes.get(name)}")


def verify_roster(doc: object, authority_pub: bytes) -> Roster:
    """Check a roster document against the pinned authority key; the roster it vouches for."""
    if not isinstance(doc, dict) or doc.get("roster") != ROSTER_VERSION:
        raise RosterError(f"not a version-{ROSTER_VERSION} roster")
    nodes, revoked = doc.get("nodes"), doc.get("revoked", [])
    if not (isinstance(nodes, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in nodes.items())
            and isinstance(revoked, list) and all(isinstance(r, str) for r in revoked)):
        raise RosterError("roster: 'nodes' must map names to peer ids and 'revoked' list names")
    if doc.get("authority") != authority_pub.hex():
        raise RosterError("roster is signed by another authority than the one this agent trusts")
    try:
        sig = bytes.fromhex(str(doc.get("signature", "")))
        Ed25519PublicKey.from_public_bytes(authority_pub).verify(sig, _canonical(doc))
    except (ValueError, InvalidSignature):
        raise RosterError("roster signature does not verify: the file was altered or not signed") from None
    return Roster(dict(nodes), frozenset(revoked))


def load_roster(path: Path, authority_pub_path: Path) -> Roster:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RosterError(f"no roster at {path}") from None
    except ValueError:
        raise RosterError(f"{path}: not JSON") from None
    try:
        return verify_roster(doc, read_authority_pub(authority_pub_path))
    except RosterError as exc:
        raise RosterError(f"{path}: {exc}") from None


def write_roster(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, indent=1) + "\n")


# -- what the mesh gets --------------------------------------------------------------------

def mesh_trust(me: int, seed: bytes, keys: dict[int, str], revoked: Iterable[int] = ()) -> Trust:
    """A :class:`mesh.trust.Trust` for node ``me``: it signs with ``seed``, checks
    node i's records against the key in peer id ``keys[i]``."""
    priv = Ed25519PrivateKey.from_private_bytes(seed)
    pubs, checks = _fleet_keys(tuple(sorted(keys.items())))
    if raw_public(priv.public_key()) != raw_public(pubs[me]):
        raise RosterError(f"this node's key is not the one the roster lists for node {me}")

    def verify(node: int, payload: bytes, sig: bytes) -> bool:
        key = pubs.get(node)
        if key is None:
            return False
        try:
            key.verify(sig, payload)
            return True
        except InvalidSignature:
            return False

    return Trust(me, priv.sign, verify, revoked=revoked, cache=checks)


@lru_cache(maxsize=4)
def _fleet_keys(keys: tuple[tuple[int, str], ...]) -> tuple[dict[int, Ed25519PublicKey], CheckCache]:
    """Every member's public key and one cache of signature checks against them, for all the
    nodes of this process that have the same roster (the satellites of a host): the same keys
    give the same answers, so a record reaching K satellites is checked once, and the cache
    (~3.6 MB full) is held once, not K times.  Read only."""
    return {i: public_key_of(pid) for i, pid in keys}, CheckCache()


# -- a running agent follows its roster ----------------------------------------------------

async def watch_roster(path: Path, pub: Path, peers, on_revoked, every_s: float = WATCH_EVERY_S) -> None:
    """Re-read the roster whenever its file changes; ``on_revoked(names)`` with the
    revoked set of each new, valid roster.  A roster that fails to verify is
    logged and ignored (the last good one stays in force)."""
    import trio

    def mtime() -> float | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    last = mtime()
    while True:
        await trio.sleep(every_s)
        now = mtime()
        if now == last:
            continue
        last = now
        try:
            roster = load_roster(path, pub)
            roster.check_peers(peers)
        except (OSError, ValueError) as exc:
            log.warning("roster changed but is not accepted: %s", exc)
            continue
        on_revoked(roster.revoked)


# -- orbitmesh revoke ----------------------------------------------------------------------

def revoke(fleet_dir: Path, names: list[str], authority_key: str = "authority.key") -> dict:
    """Re-sign a local fleet's roster with ``names`` revoked too; the new document."""
    fleet_dir = Path(fleet_dir)
    pub = fleet_dir / (authority_key + ".pub")
    current = load_roster(fleet_dir / "roster.json", pub)
    key = Ed25519PrivateKey.from_private_bytes(read_seed(fleet_dir / authority_key))
    doc = json.loads((fleet_dir / "roster.json").read_text())
    new = sign_roster(current.nodes, key, fleet=doc.get("fleet", ""), revoked=set(current.revoked) | set(names))
    write_roster(fleet_dir / "roster.json", new)
    return new


def cmd_revoke(args: argparse.Namespace) -> int:
    try:
        doc = revoke(args.dir, args.node)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"revoked: {', '.join(doc['revoked'])}; running agents follow within {WATCH_EVERY_S:g}s", file=sys.stderr)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``orbitmesh revoke`` to the CLI."""
    p = subparsers.add_parser("revoke", help="revoke fleet members: re-sign the local fleet's roster without them",
                              description="Re-sign roster.json in the fleet directory (--dir) with these nodes "
                                          "revoked; running agents close their links and ignore their gossip.")
    p.add_argument("node", nargs="+", help="node name, e.g. sat-3")
    p.set_defaults(func=cmd_revoke)
    return p
