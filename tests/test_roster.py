"""The fleet roster: signed by the authority, checked against the peers file, revocations."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.links.p2p import load_or_create_identity, peer_id_of
from agent.links.roster import (RosterError, ensure_authority, load_roster, mesh_trust, public_key_of,
                                raw_public, revoke, sign_roster, verify_roster, write_roster)
from mesh.gossip_msgs import Alive


def test_a_peer_id_spells_out_its_ed25519_key(tmp_path):
    kp = load_or_create_identity(tmp_path / "k")
    seed = (tmp_path / "k").read_bytes()
    assert raw_public(public_key_of(peer_id_of(kp))) == raw_public(Ed25519PrivateKey.from_private_bytes(seed).public_key())
    with pytest.raises(RosterError):
        public_key_of("not-a-peer-id")


def test_a_roster_verifies_only_against_its_authority_and_unaltered(tmp_path):
    auth = ensure_authority(tmp_path / "authority.key")
    pub = (tmp_path / "authority.key.pub").read_text().strip()
    doc = sign_roster({"sat-0": "A", "sat-1": "B"}, auth, fleet="t", revoked=["sat-1"])
    r = verify_roster(doc, bytes.fromhex(pub))
    assert r.nodes == {"sat-0": "A", "sat-1": "B"} and r.revoked == {"sat-1"}
    with pytest.raises(RosterError, match="another authority"):
        verify_roster(doc, raw_public(Ed25519PrivateKey.generate().public_key()))
    forged = json.loads(json.dumps(doc))
    forged["revoked"] = []
    with pytest.raises(RosterError, match="does not verify"):
        verify_roster(forged, bytes.fromhex(pub))
    with pytest.raises(RosterError, match="not in the roster"):
        sign_roster({"sat-0": "A"}, auth, revoked=["sat-9"])


def test_revoke_re_signs_the_fleet_roster(tmp_path):
    auth = ensure_authority(tmp_path / "authority.key")
    write_roster(tmp_path / "roster.json", sign_roster({"sat-0": "A", "sat-1": "B"}, auth))
    revoke(tmp_path, ["sat-1"])
    assert load_roster(tmp_path / "roster.json", tmp_path / "authority.key.pub").revoked == {"sat-1"}


def test_mesh_trust_signs_with_the_nodes_key_and_checks_others(tmp_path):
    kps = [load_or_create_identity(tmp_path / f"k{i}") for i in range(2)]
    keys = {i: peer_id_of(kp) for i, kp in enumerate(kps)}
    t0 = mesh_trust(0, (tmp_path / "k0").read_bytes(), keys)
    t1 = mesh_trust(1, (tmp_path / "k1").read_bytes(), keys)
    u = t0.sign(Alive(0, 3))
    assert t1.check(u) is None
    assert t1.check(Alive(0, 4).signed(u.sig)) == "bad signature"
    with pytest.raises(RosterError):
        mesh_trust(1, (tmp_path / "k0").read_bytes(), keys)      # a key that is not node 1's


def test_a_peer_ids_public_key_is_one_object_per_process(tmp_path):
    """Every satellite of a host checks every member's records: they share the keys (not 1,590 each)."""
    pid = peer_id_of(load_or_create_identity(tmp_path / "k"))
    assert public_key_of(pid) is public_key_of(str(pid))
    with pytest.raises(RosterError):
        public_key_of("not-a-peer-id")


def test_the_nodes_of_one_roster_share_their_signature_checks(tmp_path):
    """The satellites of a host check records against the same keys: one cache of checks (~3.6 MB
    full) for all of them; a node of another roster has its own."""
    kps = [load_or_create_identity(tmp_path / f"k{i}") for i in range(3)]
    keys = {i: peer_id_of(kp) for i, kp in enumerate(kps)}
    t0, t1 = (mesh_trust(i, (tmp_path / f"k{i}").read_bytes(), dict(keys)) for i in (0, 1))
    assert t0.cache is t1.cache
    u = t0.sign(Alive(0, 3))
    assert mesh_trust(2, (tmp_path / "k2").read_bytes(), keys).check(u) is None
    assert t1.check(u) is None
    assert t1.stats["verified"] == 0 and t1.stats["cache_hits"] == 1     # node 2 verified it for both
    other = mesh_trust(0, (tmp_path / "k0").read_bytes(), {0: keys[0], 1: keys[1]})
    assert other.cache is not t0.cache
    # where node 0 is someone else, this fleet's record of node 0 is refused, not served from a cache
    stranger = peer_id_of(load_or_create_identity(tmp_path / "k3"))
    elsewhere = mesh_trust(1, (tmp_path / "k1").read_bytes(), {0: stranger, 1: keys[1]})
    assert elsewhere.cache is not t1.cache and elsewhere.check(u) == "bad signature"
