"""The fleet clock as a replicated timeline (mesh/timeline.py): continuity, pause and resume,
last-writer-wins that commutes, bounds, and signatures checked like fault entries."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.clock import OrbitalClock
from mesh.timeline import (MAX_FUTURE_S, MAX_HISTORY, MAX_PENDING, MAX_RECORD_SCALE, MAX_SCALE, SETTLE_S, ClockError, ClockRecord,
                           Timeline, parse_request)
from mesh.trust import Trust
from mesh.frames import FrameDecoder, LinkFrame, encode_frame
from mesh.wire import ClockUpdate

BASE = OrbitalClock(start_unix=1000.0, time_scale=1.0, offset_s=50.0)   # orbit_t(wall) = wall − 950
NAMES = {"sat-0": 0, "sat-1": 1, "sat-2": 2, "sat-3": 3}
KEYS = {i: Ed25519PrivateKey.from_private_bytes(bytes([i + 7]) * 32) for i in NAMES.values()}


def verify(node: int, payload: bytes, sig: bytes) -> bool:
    try:
        KEYS[node].public_key().verify(sig, payload)
        return True
    except Exception:  # noqa: BLE001 — InvalidSignature, KeyError
        return False


def signed(me: str, revoked=()) -> Timeline:
    return Timeline(BASE, trust=Trust(NAMES[me], KEYS[NAMES[me]].sign, verify, revoked=revoked),
                    node_index=NAMES.get)


def test_before_any_switch_the_timeline_is_the_configs_clock():
    tl = Timeline(BASE)
    for wall in (0.0, 1000.0, 1234.5):
        assert tl.orbit_t(wall) == BASE.orbit_t(wall)
    assert tl.speed(2000.0) == (1.0, False) and tl.in_force(2000.0) is None
    d = tl.describe(2000.0)
    assert d["orbit_t"] == 1050.0 and d["origin"] is None and d["pending"] is None


def test_a_speed_up_is_scheduled_a_moment_ahead_and_orbital_time_never_jumps():
    tl = Timeline(BASE)
    now = 2000.0
    rec, changed = tl.issue(now, "sat-0", speed=10)
    assert changed and rec.at_wall == now + SETTLE_S and rec.scale == 10 and not rec.paused
    # until the switch: the old pace; at it: the same value from both sides; after it: 10×
    assert tl.orbit_t(now + 0.5) == BASE.orbit_t(now + 0.5)
    assert rec.orbit_t_at == BASE.orbit_t(rec.at_wall) == tl.orbit_t(rec.at_wall)
    eps = 1e-6
    assert abs(tl.orbit_t(rec.at_wall - eps) - tl.orbit_t(rec.at_wall + eps)) < 1e-4
    assert tl.orbit_t(rec.at_wall + 3.0) == pytest.approx(rec.orbit_t_at + 30.0)
    assert tl.describe(now)["pending"]["scale"] == 10 and tl.describe(now)["scale"] == 1.0
    assert tl.describe(rec.at_wall + 1)["scale"] == 10 and tl.describe(rec.at_wall + 1)["pending"] is None


def test_pause_freezes_and_resume_continues_at_the_old_speed_from_where_it_stopped():
    tl = Timeline(BASE)
    speed, _ = tl.issue(2000.0, "sat-0", speed=10)
    pause, changed = tl.issue(2005.0, "sat-1", paused=True)
    assert changed and pause.paused and pause.scale == 10 and pause.rate == 0.0
    frozen = tl.orbit_t(pause.at_wall)
    assert frozen == pytest.approx(speed.orbit_t_at + 10 * (pause.at_wall - speed.at_wall))
    assert tl.orbit_t(pause.at_wall + 100.0) == frozen and tl.speed(2100.0) == (10.0, True)
    # pausing again changes nothing; a speed while paused is kept for the resume
    assert tl.issue(2050.0, "sat-2", paused=True) == (pause, False)
    slower, _ = tl.issue(2060.0, "sat-2", speed=4)
    assert slower.paused and tl.orbit_t(2080.0) == frozen
    resume, changed = tl.issue(2100.0, "sat-3", paused=False)
    assert changed and resume.orbit_t_at == frozen and not resume.paused and resume.scale == 4
    assert tl.orbit_t(resume.at_wall + 2.5) == pytest.approx(frozen + 10.0)


def test_a_fleet_configured_faster_than_a_client_may_ask_can_still_pause_and_resume():
    fast = OrbitalClock(start_unix=1000.0, time_scale=3600.0)     # `orbitmesh up --time-scale 3600`
    tl = Timeline(fast)
    pause, _ = tl.issue(2000.0, "sat-0", paused=True)
    assert pause.scale == 3600.0 and tl.orbit_t(2010.0) == fast.orbit_t(pause.at_wall)
    resume, _ = tl.issue(2020.0, "sat-0", paused=False)
    assert tl.rate(resume.at_wall + 1) == 3600.0
    with pytest.raises(ClockError, match="speed"):
        tl.issue(2030.0, "sat-0", speed=3600.0)                     # asked for: the API's bound holds


def test_a_receiver_of_the_flood_runs_the_same_clock_as_the_issuer():
    a, b = Timeline(BASE), Timeline(BASE)
    rec, _ = a.issue(2000.0, "sat-0", speed=60)
    assert b.merge(ClockRecord.from_wire(rec.to_wire()), 2000.01)
    assert not b.merge(rec, 2000.02)                        # a repeat is not news
    for wall in (1999.0, 2000.5, rec.at_wall, 2003.0, 2500.0):
        assert a.orbit_t(wall) == b.orbit_t(wall)


def _concurrent_records() -> list[ClockRecord]:
    """Switches issued on three nodes that had not heard of each other yet."""
    out = []
    for origin, now, kw in (("sat-0", 2000.0, {"speed": 10}), ("sat-1", 2000.2, {"paused": True}),
                            ("sat-2", 2000.2, {"speed": 3}), ("sat-3", 2030.0, {"speed": 7})):
        rec, _ = Timeline(BASE).issue(now, origin, **kw)
        out.append(rec)
    return out


@pytest.mark.parametrize("now", [2000.3, 2040.0])
def test_merging_commutes_the_newest_switch_wins_everywhere(now):
    records = _concurrent_records()
    newest = max(records, key=ClockRecord.key)
    results = set()
    for order in itertools.permutations(records):
        tl = Timeline(BASE)
        for rec in order:
            tl.merge(rec, now)
        for rec in order:                                   # repeats change nothing
            assert not tl.merge(rec, now)
        assert tl.newest == newest
        results.add(tuple(tl.orbit_t(w) for w in (newest.at_wall, newest.at_wall + 1.0, 3000.0)))
    assert len(results) == 1
    # the tie on version (sat-1 and sat-2 at 2000.2) is broken by origin, the same way everywhere
    tl = Timeline(BASE)
    for rec in records[:3]:
        tl.merge(rec, 2000.3)
    assert tl.speed(2002.0) == (3.0, False)


def test_a_record_older_than_the_one_in_force_is_not_news():
    tl = Timeline(BASE)
    old, new = Timeline(BASE).issue(2000.0, "sat-0", speed=5)[0], Timeline(BASE).issue(2010.0, "sat-1", speed=2)[0]
    assert tl.merge(new, 2020.0)
    assert not tl.merge(old, 2020.0) and tl.last_refusal is None
    assert tl.records() == [new]


def test_a_node_whose_clock_is_behind_still_supersedes_the_newest_switch():
    tl = Timeline(BASE)
    ahead, _ = Timeline(BASE).issue(2030.0, "sat-1", speed=5)      # a node 30 s ahead
    assert tl.merge(ahead, 2000.0)
    rec, changed = tl.issue(2000.0, "sat-0", speed=8)
    assert changed and rec.key() > ahead.key() and tl.newest == rec


def test_the_kept_records_are_bounded_and_the_past_stays_continuous():
    tl = Timeline(BASE)
    now = 2000.0
    values = {}
    for k in range(200):
        rec, _ = tl.issue(now, "sat-0", speed=1 + k % 50)
        values[now + 0.5] = tl.orbit_t(now + 0.5)
        now += 2.0
    assert len(tl.records()) <= 1 + MAX_HISTORY + MAX_PENDING
    # a wall shortly in the past is still read from the record that was in force then
    for wall in sorted(values)[-MAX_HISTORY:]:
        assert tl.orbit_t(wall) == pytest.approx(values[wall])
    # pending switches beyond the bound: the newest are kept
    tl = Timeline(BASE)
    recs = [Timeline(BASE).issue(2000.0 + k * 0.01, f"sat-{k % 4}", speed=2 + k)[0] for k in range(40)]
    for rec in recs:
        tl.merge(rec, 2000.0)
    assert len(tl.records()) == MAX_PENDING and tl.newest == max(recs, key=ClockRecord.key)


def test_parse_request_takes_speed_pause_resume_and_says_what_is_wrong():
    assert parse_request({"speed": 10}) == (10.0, None)
    assert parse_request({"pause": True}) == (None, True)
    assert parse_request({"resume": True, "speed": 0.5}) == (0.5, False)
    bad = [([], "JSON object"), ({}, "nothing to do"), ({"speed": 0}, "speed"), ({"speed": -1}, "speed"),
           ({"speed": MAX_SCALE * 2}, "speed"), ({"speed": True}, "speed"), ({"speed": "10"}, "speed"),
           ({"speed": math.inf}, "speed"), ({"speed": math.nan}, "speed"), ({"pause": False}, "pause"),
           ({"resume": 1}, "resume"), ({"pause": True, "resume": True}, "choose one"),
           ({"rate": 2}, "unknown fields")]
    for body, words in bad:
        with pytest.raises(ClockError, match=words):
            parse_request(body)
    assert MAX_SCALE >= 1000


def test_records_out_of_bounds_are_refused():
    tl = Timeline(BASE)
    good, _ = Timeline(BASE).issue(2000.0, "sat-0", speed=10)
    for rec, why in [(replace(good, scale=0.0), "scale"), (replace(good, scale=MAX_RECORD_SCALE * 2), "scale"),
                     (replace(good, at_wall=good.version - 1), "after the version"),
                     (replace(good, at_wall=good.version + 3600), "after the version"),
                     (replace(good, orbit_t_at=1e300), "orbit_t_at"),
                     (replace(good, version=math.inf, at_wall=math.inf), "finite")]:
        assert not tl.merge(rec, 2000.0) and why in tl.last_refusal
    far = ClockRecord(2000.0 + MAX_FUTURE_S + 5, "sat-0", 2000.0 + MAX_FUTURE_S + 6, 0.0, 2.0, False)
    assert not tl.merge(far, 2000.0) and "ahead" in tl.last_refusal
    assert tl.rejected == 7 and tl.records() == []


def test_bad_records_on_the_wire_are_refused_with_a_reason():
    good = ClockRecord(2000.0, "sat-0", 2001.0, 10.0, 2.0, False).to_wire()
    assert ClockRecord.from_wire(good).scale == 2.0
    for raw in [None, good[:5], good + [b"x" * 64, 1], [True] + good[1:], good[:1] + [7] + good[2:],
                good[:4] + [float("nan")] + good[5:], good[:5] + [0], good[:1] + ["x" * 65] + good[2:],
                good + [b"short"], good[:4] + [-1.0] + good[5:]]:
        with pytest.raises(ClockError):
            ClockRecord.from_wire(raw)


def test_records_ride_the_wire_with_their_signature():
    tl = signed("sat-0")
    rec, _ = tl.issue(2000.0, "sat-0", speed=10)
    assert len(rec.sig) == 64
    dec = FrameDecoder(1 << 16)
    [frame] = dec.feed(encode_frame(LinkFrame(1.0, ClockUpdate((rec.to_wire(),))), 1 << 16))
    back = ClockRecord.from_wire(frame.msg.records[0])
    assert back == rec and back.sig == rec.sig


def test_signed_records_merge_only_from_their_unrevoked_origin():
    issuer = signed("sat-1")
    rec, _ = issuer.issue(2000.0, "sat-1", speed=10)
    assert signed("sat-0").merge(rec, 2000.0)
    receiver = signed("sat-0")
    refusals = {
        "unsigned": replace(rec, sig=b""),
        "bad signature": replace(rec, scale=1000.0),                        # tampered after signing
        "forged": replace(rec, origin="sat-2"),                             # sat-1's signature, sat-2's name
        "not a member": replace(rec, origin="sat-99"),
    }
    for what, bad in refusals.items():
        assert not receiver.merge(bad, 2000.0), what
        assert receiver.last_refusal, what
    assert "not a member" in receiver.last_refusal
    revoked = signed("sat-0", revoked=[1])
    assert not revoked.merge(rec, 2000.0) and revoked.last_refusal == "origin revoked"
    assert receiver.records() == [] and receiver.rejected == 4


def test_a_clock_update_on_the_wire_is_bounded():
    import msgpack

    from mesh.wire import MAX_CLOCK_RECORDS, WireError, decode_message
    one = [2000.0, "sat-1", 2001.0, 50.0, 10.0, False]
    assert len(decode_message(msgpack.packb(["clock", [one] * MAX_CLOCK_RECORDS])).records) == MAX_CLOCK_RECORDS
    for raw in (["clock", [one] * (MAX_CLOCK_RECORDS + 1)], ["clock", "x"], ["clock", [7]], ["clock"]):
        with pytest.raises(WireError):
            decode_message(msgpack.packb(raw))
