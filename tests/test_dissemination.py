"""Membership's records on the wire and in the broadcast queue: decoded once per process, taken
without sorting the queue per frame (mesh/gossip_msgs.py, mesh/dissemination.py)."""

from __future__ import annotations

from mesh.dissemination import BroadcastQueue
from mesh.gossip_msgs import Alive, Gossip, NodeState


def test_a_state_record_decoded_again_in_a_process_is_the_same_record_and_not_validated_again(monkeypatch):
    """A state record floods the fleet: K satellites of a host decode it K times.  The decoder
    keeps recent ones: the same values and signature give the same record without validating them
    again; values that differ in any way (even True for 1) or another signature are decoded anew."""
    from mesh import gossip_msgs
    from mesh.gossip_msgs import decode, encode
    gossip_msgs._STATE_CACHE.clear()
    checks = []
    check = gossip_msgs.check_state_values
    monkeypatch.setattr(gossip_msgs, "check_state_values", lambda v: checks.append(1) or check(v))
    sig = bytes(range(64))
    state = NodeState(5, 9, (("battery", 0.5), ("low", True), ("models", ("digits",)))).signed(sig)
    first = decode(encode(Gossip((state,)))).updates[0]
    again = decode(encode(Gossip((state,)))).updates[0]
    assert first is again and first == state and first.sig == sig and len(checks) == 1
    other_values = decode(encode(Gossip((NodeState(5, 9, (("battery", 0.5), ("low", 1), ("models", ("digits",))))
                                         .signed(sig),)))).updates[0]
    other_sig = decode(encode(Gossip((state.signed(bytes(64)),)))).updates[0]
    assert other_values is not first and other_values.values[1] == ("low", 1) and type(other_values.values[1][1]) is int
    assert other_sig is not first and other_sig.sig == bytes(64) and len(checks) == 3
    monkeypatch.setattr(gossip_msgs, "STATE_CACHE_MAX", 4)
    for v in range(10):
        decode(encode(Gossip((NodeState(6, v, (("battery", 0.1),)),))))
    assert len(gossip_msgs._STATE_CACHE) <= 4


def test_the_pool_knows_its_own_records_by_identity_and_forgets_them_when_they_die(monkeypatch):
    """The decoder hands out the instance it decoded before, so the pool is mostly asked about its
    own records: those are answered without building a key (here building one would fail)."""
    import gc
    from mesh import dissemination
    pool = dissemination.RecordPool()
    state = NodeState(5, 9, (("battery", 0.5), ("models", ("digits",))))
    twin = NodeState(5, 9, (("battery", 0.5), ("models", ("digits",))))
    assert pool(state) is state and pool(twin) is state and len(pool) == 1
    real_fields = dissemination.fields
    monkeypatch.setattr(dissemination, "fields", lambda u: 1 / 0)
    pool._fields.clear()
    assert pool(state) is state                          # by identity: no key built
    monkeypatch.setattr(dissemination, "fields", real_fields)
    del state
    gc.collect()
    assert len(pool) == 0 and pool._ids == {}            # gone from both maps
    assert pool(twin) is twin and len(pool) == 1


def test_a_records_wire_form_is_built_once_and_encodes_as_before():
    from mesh.gossip_msgs import decode, encode
    state = NodeState(5, 9, (("battery", 0.5), ("models", ("digits", "resnet")))).signed(bytes(range(64)))
    assert state.to_wire() is state.to_wire()
    assert state.to_wire() == ["n", 5, 9, {"battery": 0.5, "models": ["digits", "resnet"]}, bytes(range(64))]
    assert decode(encode(Gossip((state, Alive(3, 2))))).updates == (state, Alive(3, 2))


def test_the_broadcast_queue_takes_what_a_full_sort_would_in_the_same_order():
    """``take`` scans for never-sent items and sorts only the rest: the same updates, in the same
    order, with the same counts as sorting every candidate (newest first, fewest sends first)."""
    import random

    def reference(q, to, budget, limit):
        out, left, key = [], budget, -1 if to is None else to
        cand = [(item.sent.get(key, 0), item) for item in reversed(q._items.values())
                if to is None or to not in item.have]
        cand.sort(key=lambda x: x[0])
        for n, item in cand:
            if n >= limit:
                break
            if item.size > left:
                continue
            out.append(item.update)
            item.sent[key] = n + 1
            left -= item.size
            if left < 8:
                break
        return out

    rng = random.Random(7)
    for _ in range(200):
        queues = BroadcastQueue(), BroadcastQueue()
        for node in range(rng.randrange(1, 40)):
            u = (Alive(node, rng.randrange(3)) if rng.random() < 0.5
                 else NodeState(node, 1, (("battery", rng.random()), ("models", ("digits",) * rng.randrange(4)))))
            have = {rng.randrange(5) for _ in range(rng.randrange(3))}
            for q in queues:
                q.push(u, have)
        for _ in range(6):
            to = rng.choice([None, 0, 1, 2, 3, 4])
            budget, limit = rng.randrange(0, 600), rng.randrange(0, 4)
            assert queues[0].take(to, budget, limit) == reference(queues[1], to, budget, limit)
        assert [dict(i.sent) for i in queues[0]._items.values()] == [dict(i.sent) for i in queues[1]._items.values()]
