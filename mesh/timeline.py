"""The fleet's orbital clock as data: a replicated, piecewise-linear timeline.

The config's :class:`mesh.clock.OrbitalClock` fixes orbital time as a line
of wall time.  Time control (pause, resume, speed up) bends that line, and
every satellite must bend it the same way, at the same wall instant, or
their link geometry and delays disagree.  A change is therefore one small
signed record, flooded like a fault (``mesh.chaos``)::

    orbit_t(wall) = orbit_t_at + rate × (wall − at_wall)      for wall ≥ at_wall

where ``rate`` is ``scale`` (the speed) or 0 while ``paused``.  A record is
an absolute anchor: once its ``at_wall`` passes, every node that holds it
computes the same orbital time, whatever it saw before.  A change is issued
for ``now + SETTLE_S`` (so the flood reaches every node before it takes
effect) with ``orbit_t_at`` read from the issuer's timeline at that instant,
so orbital time never jumps.

Records are last-writer-wins by ``(version, origin)``: ``orbit_t(wall)`` uses
the newest record (by that key) whose ``at_wall`` ≤ ``wall``, older ones only
for earlier walls, and the config's clock before any record.  That is a
function of the set of records, so merging commutes and repeats change
nothing.  Records are bounded (finite numbers, 0 < scale ≤ ``MAX_RECORD_SCALE``, a
switch at most ``MAX_SETTLE_S`` after its version, a version at most
``MAX_FUTURE_S`` ahead of the receiver's clock) and, with a
:class:`mesh.trust.Trust`, signed by their origin and refused from a
revoked one, exactly as fault entries are.

Wall times are passed in: the fleet's hosts are assumed NTP-synced, as the
config's clock already assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import msgpack

from mesh.clock import OrbitalClock

SETTLE_S = 1.0             # a change takes effect this long after it is issued (the flood arrives first)
MAX_SCALE = 1000.0         # the fastest speed a client may ask for: beyond it routes are recomputed too often
MAX_RECORD_SCALE = 1e6     # a record may carry more: a config's time_scale, kept through a pause
MAX_SETTLE_S = 10.0        # a record's switch may be at most this long after its version
MAX_FUTURE_S = 60.0        # a version may be at most this ahead of the receiver's clock (NTP-synced hosts)
MAX_PENDING = 16           # records kept that have not taken effect yet
MAX_HISTORY = 4            # records kept from before the one in force (for walls slightly in the past)
MAX_ORBIT_T = 1e12         # |orbital seconds| a record may name (~31,000 years)
CLOCK_CONTEXT = b"orbitmesh/clock/v1\x00"


class ClockError(ValueError):
    """A time-control request or record that cannot be applied; the message says why."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_speed(value: Any) -> float:
    """A speed as a client gives it: a number in (0, MAX_SCALE]."""
    if not _number(value) or not 0 < value <= MAX_SCALE:
        raise ClockError(f"speed: expected a number of orbital seconds per wall second in (0, {MAX_SCALE:g}], "
                         f"got {value!r}")
    return float(value)


def parse_request(body: Any) -> tuple[float | None, bool | None]:
    """``{"speed": x}``, ``{"pause": true}``, ``{"resume": true}`` (speed may go with either):
    (new speed or None, new paused state or None)."""
    if not isinstance(body, dict):
        raise ClockError('body must be a JSON object: {"speed": 10}, {"pause": true} or {"resume": true}')
    unknown = set(body) - {"speed", "pause", "resume"}
    if unknown:
        raise ClockError(f"unknown fields {sorted(unknown)}; expected speed, pause or resume")
    for k in ("pause", "resume"):
        if k in body and body[k] is not True:
            raise ClockError(f"{k}: the only value is true, got {body[k]!r}")
    if "pause" in body and "resume" in body:
        raise ClockError("pause and resume together: choose one")
    speed = check_speed(body["speed"]) if "speed" in body else None
    paused = True if "pause" in body else False if "resume" in body else None
    if speed is None and paused is None:
        raise ClockError('nothing to do: give "speed", "pause" or "resume"')
    return speed, paused


@dataclass(frozen=True)
class ClockRecord:
    """One switch of the fleet's clock: from ``at_wall`` on, orbital time runs at ``rate``."""

    version: float          # issue time (wall); newest wins
    origin: str             # the node that issued it (tie-break, signer)
    at_wall: float          # when it takes effect
    orbit_t_at: float       # orbital time at at_wall (read from the issuer's timeline: no jump)
    scale: float            # the speed, > 0 (kept while paused, so resume knows it)
    paused: bool
    sig: bytes = field(default=b"", compare=False, repr=False)

    @property
    def rate(self) -> float:
        return 0.0 if self.paused else self.scale

    def key(self) -> tuple[float, str]:
        return (self.version, self.origin)

    def orbit_t(self, wall: float) -> float:
        return self.orbit_t_at + self.rate * (wall - self.at_wall)

    def body(self) -> list:
        return [self.version, self.origin, self.at_wall, self.orbit_t_at, self.scale, self.paused]

    def to_wire(self) -> list:
        return self.body() + [self.sig] if self.sig else self.body()

    def signed_bytes(self) -> bytes:
        return CLOCK_CONTEXT + msgpack.packb(self.body(), use_bin_type=True)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "origin": self.origin, "at_wall": self.at_wall,
                "orbit_t_at": self.orbit_t_at, "scale": self.scale, "paused": self.paused}

    @classmethod
    def from_wire(cls, raw: Any) -> "ClockRecord":
        if not isinstance(raw, list) or len(raw) not in (6, 7):
            raise ClockError("clock record: expected 6 fields and a signature")
        version, origin, at_wall, orbit_t_at, scale, paused = raw[:6]
        sig = raw[6] if len(raw) == 7 else b""
        if not (isinstance(origin, str) and 0 < len(origin) <= 64 and isinstance(paused, bool)
                and isinstance(sig, bytes) and len(sig) in (0, 64)):
            raise ClockError("clock record: bad field types or sizes")
        if not all(_number(x) for x in (version, at_wall, orbit_t_at, scale)):
            raise ClockError("clock record: version, at_wall, orbit_t_at and scale must be finite numbers")
        rec = cls(float(version), origin, float(at_wall), float(orbit_t_at), float(scale), paused, sig)
        why = bounds(rec)
        if why:
            raise ClockError(f"clock record: {why}")
        return rec


def bounds(rec: ClockRecord) -> str | None:
    """Why ``rec``'s numbers are out of bounds, or None."""
    if not all(_number(x) for x in (rec.version, rec.at_wall, rec.orbit_t_at, rec.scale)):
        return "numbers must be finite"
    if not 0 < rec.scale <= MAX_RECORD_SCALE:
        return f"scale {rec.scale!r} outside (0, {MAX_RECORD_SCALE:g}]"
    if not 0 <= rec.at_wall - rec.version <= MAX_SETTLE_S:
        return f"the switch must come 0–{MAX_SETTLE_S:g} s after the version"
    if abs(rec.orbit_t_at) > MAX_ORBIT_T:
        return "orbit_t_at out of range"
    return None


class Timeline:
    """One node's copy of the fleet clock: the config's clock, bent by the records it holds."""

    def __init__(self, base: OrbitalClock, *, trust: Any = None,
                 node_index: Callable[[str], int | None] | None = None):
        """``trust`` (a :class:`mesh.trust.Trust`) signs our records and checks others'
        against ``node_index(origin)``; None believes every record (tests, the simulator)."""
        self.base = base
        self.trust = trust
        self.node_index = node_index
        self.rejected = 0
        self.last_refusal: str | None = None
        self._records: list[ClockRecord] = []      # newest (by key) first
        self._pruned = False                        # some record fell off the end: extrapolate the oldest kept
        self.merged = 0                             # records taken: what orbital time says may have changed

    # -- reading ----------------------------------------------------------------------------

    def in_force(self, wall: float) -> ClockRecord | None:
        """The record that sets orbital time at ``wall`` (None: the config's clock)."""
        for rec in self._records:
            if rec.at_wall <= wall:
                return rec
        return self._records[-1] if self._pruned and self._records else None

    def orbit_t(self, wall: float) -> float:
        """Called per frame (link delays): sub-microsecond, ~0.3 µs with a few records held."""
        if not self._records:
            return self.base.orbit_t(wall)
        rec = self.in_force(wall)
        return self.base.orbit_t(wall) if rec is None else rec.orbit_t(wall)

    def speed(self, wall: float) -> tuple[float, bool]:
        """(scale, paused) at ``wall``."""
        rec = self.in_force(wall)
        return (self.base.time_scale, False) if rec is None else (rec.scale, rec.paused)

    def rate(self, wall: float) -> float:
        scale, paused = self.speed(wall)
        return 0.0 if paused else scale

    @property
    def newest(self) -> ClockRecord | None:
        return self._records[0] if self._records else None

    def records(self) -> list[ClockRecord]:
        """Every record held, newest first (what a neighbour gets on link-up)."""
        return list(self._records)

    def describe(self, wall: float) -> dict[str, Any]:
        rec = self.in_force(wall)
        scale, paused = self.speed(wall)
        out: dict[str, Any] = {
            "wall": wall, "orbit_t": self.orbit_t(wall), "scale": scale, "paused": paused,
            "rate": 0.0 if paused else scale,
            "version": rec.version if rec else None, "origin": rec.origin if rec else None,
            "since_wall": rec.at_wall if rec else None, "pending": None}
        new = self.newest
        if new is not None and new is not rec and new.at_wall > wall:
            out["pending"] = new.describe()
        return out

    # -- issuing (at the node a user talks to) ------------------------------------------------

    def issue(self, now: float, origin: str, *, speed: float | None = None, paused: bool | None = None,
              settle: float = SETTLE_S) -> tuple[ClockRecord, bool]:
        """A switch to ``speed`` and/or ``paused`` at ``now + settle``, continuous with this
        timeline; returns (the record, whether anything changed).  Asking for the state the
        newest record already sets changes nothing."""
        if speed is not None:
            speed = check_speed(speed)
        if speed is None and paused is None:
            raise ClockError("nothing to do: give a speed, pause or resume")
        if not 0 <= settle <= MAX_SETTLE_S:
            raise ClockError(f"settle must be in [0, {MAX_SETTLE_S:g}] s")
        new = self.newest
        cur_scale, cur_paused = (new.scale, new.paused) if new is not None else (self.base.time_scale, False)
        want = (cur_scale if speed is None else speed, cur_paused if paused is None else paused)
        if want == (cur_scale, cur_paused):
            return (new, False) if new is not None else (self._base_record(now), False)
        version = now if new is None else max(now, new.version + 1e-6)
        at = version + settle
        rec = ClockRecord(version, origin, at, self.orbit_t(at), want[0], want[1])
        if self.trust is not None:
            rec = replace(rec, sig=self.trust.sign_bytes(rec.signed_bytes()))
        if not self.merge(rec, now):
            raise ClockError(f"the switch was not applied: {self.last_refusal or 'a newer one is known'}")
        return rec, True

    def _base_record(self, now: float) -> ClockRecord:
        """The config's clock described as a record (for answers before any switch)."""
        return ClockRecord(self.base.start_unix, "config", self.base.start_unix, self.base.offset_s,
                           self.base.time_scale, False)

    # -- replication ----------------------------------------------------------------------------

    def admissible(self, rec: ClockRecord, now: float) -> str | None:
        """Why ``rec`` must not be merged, or None."""
        why = bounds(rec)
        if why:
            return why
        if rec.version > now + MAX_FUTURE_S:
            return f"version more than {MAX_FUTURE_S:g} s ahead of this node's clock"
        if self.trust is not None:
            signer = self.node_index(rec.origin) if self.node_index else None
            if signer is None:
                return f"origin {rec.origin!r} is not a member"
            return self.trust.check_bytes(signer, rec.signed_bytes(), rec.sig)
        return None

    def merge(self, rec: ClockRecord, now: float) -> bool:
        """Take a flooded record; True if it is news (forward it).  ``now``: this node's clock."""
        self.last_refusal = self.admissible(rec, now)
        if self.last_refusal is not None:
            self.rejected += 1
            return False
        key = rec.key()
        if any(r.key() == key for r in self._records):
            return False                               # a repeat
        current = self.in_force(now)
        if current is not None and key < current.key():
            return False                               # older than the record in force: it lost
        self._records.append(rec)
        self._records.sort(key=ClockRecord.key, reverse=True)
        self.merged += 1
        self._prune(now)
        return any(r is rec for r in self._records)

    def _prune(self, now: float) -> None:
        """Keep the records in force or pending, and a few before them; bounded."""
        current = self.in_force(now)
        at = self._records.index(current) if current is not None and current in self._records else len(self._records)
        pending, older = self._records[:at], self._records[at:]
        if len(pending) > MAX_PENDING:
            pending = pending[:MAX_PENDING]            # the newest win anyway
        if len(older) > 1 + MAX_HISTORY:
            older = older[:1 + MAX_HISTORY]
            self._pruned = True
        self._records = pending + older
