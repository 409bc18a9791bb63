"""Membership's records on the wire and in the broadcast queue: decoded once per process, taken
without sorting the queue per frame (mesh/gossip_msgs.py, mesh/dissemination.py)."""

from __future__ import annotations

from mesh import dissemination
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


class _Model:
    """The broadcast queue's rules stated plainly, with a scan and a sort per call."""

    def __init__(self, max_items, caps):
        self.max_items, self.caps, self.items, self.sends = max_items, caps, [], 0

    def cap(self, it, t):
        return self.caps.get(it["u"].kind, 1 << 30) if t != -1 else 1 << 30

    def push(self, u, have):
        self.items = [it for it in self.items if it["u"].key != u.key]
        self.items.append({"u": u, "size": u.wire_size, "sent": {}, "last": {}, "have": set(have)})
        if len(self.items) > self.max_items:
            self.items.pop(0)

    def mark_have(self, u, nb):
        for it in self.items:
            if it["u"].key == u.key and it["u"] == u:
                it["have"].add(nb)

    def eligible(self, to, limit):
        t = -1 if to is None else to
        return [it for it in self.items if (to is None or to not in it["have"])
                and it["sent"].get(t, 0) < min(limit, self.cap(it, t))], t

    def take(self, to, budget, limit):
        if budget <= 0 or limit <= 0 or not self.items:
            return []
        cand, t = self.eligible(to, limit)
        fresh = [it for it in reversed(cand) if it["sent"].get(t, 0) == 0]
        again = sorted((it for it in cand if it["sent"].get(t, 0) > 0), key=lambda it: (it["sent"][t], it["last"][t]))
        out, left, misfits = [], budget, 0
        for it in fresh + again:
            if it["size"] > left:
                misfits += 1
                if misfits > dissemination.MAX_MISFITS:
                    break
                continue
            out.append(it)
            left -= it["size"]
            if left < 8:
                break
        for it in out:
            it["sent"][t] = it["sent"].get(t, 0) + 1
            self.sends += 1
            it["last"][t] = self.sends
        return [it["u"] for it in out]

    def pending_for(self, to, limit):
        return bool(self.eligible(to, limit)[0])

    def prune(self, nbrs, limit, total_limit):
        self.items = [it for it in self.items if it["sent"].get(-1, 0) < total_limit
                      and any(nb not in it["have"] and it["sent"].get(nb, 0) < min(limit, self.cap(it, nb))
                              for nb in nbrs)]


def test_the_broadcast_queue_follows_its_rules_stated_plainly():
    """``take`` reads per-target indexes instead of scanning the queue: against a model that scans
    and sorts (never-sent first, newest first; then fewest sends, longest ago first; at most
    MAX_MISFITS records passed over for room; at most a kind's cap of copies to one neighbour),
    under random pushes, replacements, overflow, copies heard from neighbours, prunes and more
    targets than the indexes keep."""
    import random
    rng = random.Random(7)
    for _ in range(150):
        max_items = rng.choice([4, 16, 1024])
        caps = rng.choice([{}, {"n": 1}, {"n": 2, "a": 1}])
        q, model = BroadcastQueue(max_items, caps), _Model(max_items, caps)
        for _step in range(60):
            op = rng.random()
            node = rng.randrange(30)
            if op < 0.4:
                u = (Alive(node, rng.randrange(3)) if rng.random() < 0.5
                     else NodeState(node, rng.randrange(1, 3),
                                    (("battery", rng.random()), ("models", ("digits",) * rng.randrange(6)))))
                have = {rng.randrange(20) for _ in range(rng.randrange(3))}
                q.push(u, have)
                model.push(u, have)
            elif op < 0.5 and model.items:
                it = rng.choice(model.items)
                nb = rng.randrange(20)
                q.mark_have(it["u"], nb)
                model.mark_have(it["u"], nb)
            elif op < 0.9:
                to = rng.choice([None] + list(range(20)))
                budget, limit = rng.randrange(0, 700), rng.randrange(0, 4)
                assert q.take(to, budget, limit) == model.take(to, budget, limit)
                if to is not None:
                    assert q.pending_for(to, limit) == model.pending_for(to, limit)
            else:
                nbrs = rng.sample(range(20), rng.randrange(0, 5))
                limit, total = rng.randrange(1, 4), rng.choice([0, 2, 10**9])
                q.prune(nbrs, limit, total)
                model.prune(nbrs, limit, total)
            assert [i.update for i in q._items.values()] == [it["u"] for it in model.items]
            assert q.holds_other_than("n") == any(it["u"].kind != "n" for it in model.items)
        assert [dict(i.sent) for i in q._items.values()] == [it["sent"] for it in model.items]


def test_state_records_go_once_to_each_neighbour_and_liveness_news_up_to_the_limit():
    import pytest
    q = BroadcastQueue(caps={"n": 1})
    state, alive = NodeState(1, 1, (("battery", 0.5),)), Alive(2, 1)
    q.push(state)
    q.push(alive)
    assert q.take(7, 2048, 3) == [alive, state]
    assert q.take(7, 2048, 3) == [alive] and q.take(7, 2048, 3) == [alive] and q.take(7, 2048, 3) == []
    assert q.take(8, 2048, 3) == [alive, state]          # another neighbour: its own copy
    q.prune([7, 8], 3, 10**9)
    assert q.updates() == [alive] and q.pending_for(8, 3) and not q.pending_for(7, 3)
    for bad in ({"n": 0}, {"n": True}, {"n": 1.5}):
        with pytest.raises(ValueError):
            BroadcastQueue(caps=bad)


def test_a_take_costs_what_it_takes_not_the_queue():
    """A thousand queued state records (a large fleet's start-up), each sent to the neighbour as
    often as allowed: a take for it looks at none of them (before, every take scanned all)."""
    q = BroadcastQueue()
    for node in range(1000):
        q.push(NodeState(node, 1, (("battery", 0.5),)))
    assert len(q.take(1, 10**9, 1)) == 1000
    looked = []
    real = dict.get
    q._items = type("Spy", (dict,), {"__getitem__": lambda d, k: looked.append(k) or real(d, k)})(q._items)
    q.push(Alive(5000, 1))
    assert q.take(1, 512, 1) == [Alive(5000, 1)] and set(looked) == {("m", 5000)}
