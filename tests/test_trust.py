"""Signed, bounded gossip: the mesh objects refuse forged, unsigned and out-of-window records."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.chaos import Entry, FaultError, FaultTable, Topo
from mesh.gossip_msgs import (Alive, Dead, Gossip, LinkState, NodeState, Suspect, SyncRequest, check_state_values,
                              roster_id, signed_bytes, update_from_wire)
from mesh.membership import Membership, NodeDead
from mesh.trust import Trust
from tests.test_membership import N, Twin, cfg

KEYS = {i: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(N + 1)}
PUBS = {i: k.public_key() for i, k in KEYS.items()}


def verify(node: int, payload: bytes, sig: bytes) -> bool:
    try:
        PUBS[node].verify(sig, payload)
        return True
    except (KeyError, InvalidSignature):
        return False


def trust(me: int, revoked=()) -> Trust:
    return Trust(me, KEYS[me].sign, verify, revoked=revoked)


def sign(u, by: int):
    """``u`` signed with node ``by``'s key (whoever its origin is: forgeries too)."""
    return u.signed(KEYS[by].sign(signed_bytes(u)))


def lone(me: int = 0, revoked=()) -> Membership:
    nb = {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    m = Membership(me, range(3), lambda n, t: [(x, 0.005) for x in nb[n]], cfg(), random.Random(1),
                   trust=trust(me, revoked))
    m.start(0.0)
    return m


class TrustedTwin(Twin):
    def boot(self, i: int, incarnation: int = 0) -> Membership:
        m = Membership(i, range(N), self.neighbours, self.cfg, random.Random(100 + i), incarnation=incarnation,
                       link_down_expected=self.down_expected, trust=trust(i))
        self.nodes[i] = m
        self.out(i, m.start(self.now))
        return m


# -- records on the wire -----------------------------------------------------------------------

def test_a_signature_rides_on_the_wire_and_is_not_part_of_equality():
    u = sign(Dead(3, 2, 1), 1)
    back = update_from_wire(u.to_wire())
    assert back == Dead(3, 2, 1) and back.sig == u.sig and len(u.sig) == 64
    assert u.wire_size == Dead(3, 2, 1).wire_size + 66


# -- one node, records fed by hand ---------------------------------------------------------------

def test_a_valid_accusation_is_applied_and_a_forged_or_unsigned_one_is_not():
    m = lone(0)
    m.on_message(1.0, 1, Gossip((Dead(2, 0, 1),)))                  # unsigned
    m.on_message(1.0, 1, Gossip((sign(Dead(2, 0, 1), 2),)))         # says by 1, signed by 2
    m.on_message(1.0, 1, Gossip((sign(Dead(2, 0, 1), 1).signed(b"\0" * 64),)))   # garbage signature
    assert m.status(2) == "alive"
    assert m.stats["rejected_unsigned"] == 3
    m.on_message(1.1, 1, Gossip((sign(Suspect(2, 0, 1), 1),)))
    assert m.status(2) == "suspect"


def test_an_accuser_cannot_raise_its_subjects_incarnation():
    """The attack of issue 18: a member declares another dead at 2^63−1, which nobody could refute."""
    m = lone(0)
    m.on_message(1.0, 1, Gossip((sign(Dead(2, 2**63 - 1, 1), 1),)))   # beyond the window
    m.on_message(1.0, 1, Gossip((sign(Dead(2, 5, 1), 1),)))           # within it, but not the subject's word
    assert m.status(2) == "alive" and m.incarnation_of(2) == 0
    assert m.stats["rejected_window"] == 2
    m.on_message(1.1, 2, Gossip((sign(Alive(2, 5), 2),)))             # the subject raises its own
    m.on_message(1.2, 1, Gossip((sign(Dead(2, 5, 1), 1),)))           # now the accusation is current
    assert m.status(2) == "dead" and m.incarnation_of(2) == 5
    m.on_message(1.3, 2, Gossip((sign(Alive(2, 6), 2),)))             # and the subject refutes it
    assert m.status(2) == "alive"


def test_only_a_node_raises_its_own_incarnation_or_state():
    m = lone(0)
    m.on_message(1.0, 1, Gossip((sign(Alive(2, 3), 1),)))
    m.on_message(1.0, 1, Gossip((sign(NodeState(2, 4, check_state_values({"load": 1.0})), 1),)))
    assert m.incarnation_of(2) == 0 and m.node_state(2) is None
    m.on_message(1.1, 1, Gossip((sign(NodeState(2, 4, check_state_values({"load": 1.0})), 2),)))
    assert m.node_state(2) == {"load": 1.0}


def test_an_accusation_about_us_from_our_previous_life_is_refuted_within_the_window():
    m = lone(0)
    m.on_message(1.0, 1, Gossip((sign(Dead(0, 5, 1), 1),)))
    assert m.incarnation == 6
    m.on_message(1.1, 1, Gossip((sign(Dead(0, 6 + 2**16 + 1, 1), 1),)))   # beyond the window: ignored
    assert m.incarnation == 6


def test_versions_and_link_sequences_are_bounded_without_trust_too():
    m = Membership(0, range(3), lambda n, t: [(x, 0.005) for x in {0: [1, 2], 1: [0, 2], 2: [0, 1]}[n]], cfg(),
                   random.Random(1))
    m.start(0.0)
    m.on_message(1.0, 1, Gossip((Dead(2, 2**63 - 1, 1), NodeState(2, 2**40, ()), LinkState(1, 2, False, 2**40, 1))))
    assert m.status(2) == "alive" and m.node_state(2) is None and not m.down_links()
    assert m.stats["rejected_window"] == 3
    m.on_message(1.1, 1, Gossip((Dead(2, 3, 1), LinkState(1, 2, False, 7, 1))))
    assert m.status(2) == "dead" and m.down_links() == {(1, 2)}


def test_a_link_report_must_come_from_an_endpoint():
    m = lone(0)
    m.on_message(1.0, 1, Gossip((sign(LinkState(0, 2, False, 1, 1), 1),)))   # 1 reports on 0–2
    assert not m.down_links()
    m.on_message(1.0, 2, Gossip((sign(LinkState(0, 2, False, 1, 2), 2),)))
    assert m.down_links() == {(0, 2)}


def test_a_revoked_members_gossip_is_ignored():
    m = lone(0, revoked={1})
    m.on_message(1.0, 1, Gossip((sign(Suspect(2, 0, 1), 1), sign(Alive(1, 1), 1))))
    assert m.status(2) == "alive" and m.incarnation_of(1) == 0
    assert m.trust.stats["rejected: origin revoked"] == 2


def test_identical_records_are_verified_once():
    m = lone(0)
    u = sign(NodeState(2, 1, check_state_values({"load": 0.5})), 2)
    for t in (1.0, 1.1, 1.2):
        m.on_message(t, 1, Gossip((u,)))
        m.on_message(t, 2, Gossip((u,)))
    assert m.trust.stats["verified"] == 1 and m.trust.stats["cache_hits"] == 5


def test_a_digest_is_not_believed_but_answered_with_signed_records():
    m = lone(0)
    m.on_message(0.5, 1, Gossip((sign(Suspect(2, 0, 1), 1),)))
    req = SyncRequest(roster_id((0, 1, 2)), (), (0, 0, 9), bytes([0, 0, 2]), (0, 0, 0))   # "2 is dead at 9"
    sends = m.on_message(1.0, 1, req)
    assert m.status(2) == "suspect" and m.incarnation_of(2) == 0
    reply = [s.msg for s in sends if type(s.msg).__name__ == "SyncReply"][0]
    assert all(u.sig for u in reply.updates)     # what it sends back is signed (its own Alive, the suspicion)


def test_a_trusted_fleet_detects_a_death_and_a_restart_refutes_it():
    tw = TrustedTwin(cfg())
    tw.run(3.0)
    tw.kill(5)
    tw.run(8.0)
    for i in tw.live():
        assert tw.nodes[i].status(5) == "dead", i
    assert {e.node for _, e in tw.events if isinstance(e, NodeDead)} == {5}
    m = tw.boot(5)
    tw.run(14.0)
    assert m.incarnation >= 1
    for i in tw.live():
        assert tw.nodes[i].status(5) == "alive", i
        assert tw.nodes[i].stats["rejected_unsigned"] == 0, i


def test_a_trusted_fleet_spreads_state_under_loss():
    tw = TrustedTwin(cfg(), loss=0.1, seed=2)
    tw.run(1.0)
    tw.out(3, tw.nodes[3].set_state(tw.now, {"load": 0.9}))
    tw.run(2.0)
    for i in tw.live():
        assert tw.nodes[i].node_state(3) == {"load": 0.9}, i


# -- the fault table -------------------------------------------------------------------------------

TOPO = Topo(frozenset({"sat-0", "sat-1", "sat-2"}), frozenset({frozenset({"sat-0", "sat-1"})}), {})
INDEX = {"sat-0": 0, "sat-1": 1, "sat-2": 2}


def table(me: int = 0, revoked=()) -> FaultTable:
    return FaultTable(TOPO, trust=trust(me, revoked), node_index=INDEX.get)


def test_a_fault_with_a_non_finite_or_far_future_version_is_refused():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(FaultError):
            Entry.from_wire(["x", bad, "sat-1", False, '{"kind": "cut"}', 0.0, None])
    t = FaultTable(TOPO)
    e, _ = FaultTable(TOPO).issue({"kind": "cut", "a": "sat-0", "b": "sat-1"}, 100.0, "sat-1")
    assert not t.merge(replace(e, version=100.0 + 10**7), now=100.0)
    assert t.merge(e, now=100.0)


def test_faults_are_signed_by_their_origin_and_checked():
    issuer, receiver = table(1), table(0)
    e, _ = issuer.issue({"kind": "cut", "a": "sat-0", "b": "sat-1"}, 100.0, "sat-1")
    assert e.sig
    forged = replace(e, origin="sat-2")                     # sat-1's signature, claimed by sat-2
    assert not receiver.merge(forged, now=100.0)
    assert not receiver.merge(replace(e, sig=b""), now=100.0)
    assert receiver.merge(Entry.from_wire(e.to_wire()), now=100.0)
    tomb = issuer.remove(e.id, 101.0, "sat-1")
    assert receiver.merge(tomb, now=101.0) and not receiver.listing(101.0)


def test_a_revoked_member_cannot_issue_faults():
    e, _ = table(1).issue({"kind": "cut", "a": "sat-0", "b": "sat-1"}, 100.0, "sat-1")
    assert not table(0, revoked={1}).merge(e, now=100.0)


def test_nodes_that_share_a_check_cache_verify_each_record_once_and_still_refuse_for_themselves():
    """The satellites of a host share one cache of signature checks (same roster keys): a record
    reaching all K of them is verified once and held once; revocation stays each node's own."""
    from mesh.trust import CheckCache
    calls = []

    def counting(node, payload, sig):
        calls.append(node)
        return verify(node, payload, sig)
    shared = CheckCache(entries=2)
    a, b = (Trust(me, KEYS[me].sign, counting, cache=shared) for me in (0, 1))
    good, forged = sign(Alive(2, 1), 2), sign(Alive(3, 1), 2)
    assert a.check(good) is None and b.check(good) is None
    assert a.check(forged) == b.check(forged) == "bad signature"
    assert calls == [2, 3] and len(shared) == 2
    b.revoke(2)
    assert b.check(good) == "origin revoked" and a.check(good) is None
    a.check(sign(Alive(4, 1), 4))                      # bounded: the least recently used goes
    assert len(shared) == 2 and b.stats["cache_hits"] == 2 and a.stats["verified"] == 3
