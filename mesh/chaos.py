"""Link faults as data: validated specs, a replicated table, and their effect.

A fault is a small JSON-able spec (``{"kind": "cut", "a": "sat-1", "b":
"sat-2", "duration_s": 30}``).  Any node accepts it, validates it against the
shared topology (so nothing is applied half), and floods it over the mesh.
Every node keeps the same table: a last-writer-wins register per fault id,
where a delete is a newer tombstone, so updates commute and a late or
repeated flood changes nothing.  Ids are content hashes: posting the same
fault twice is a no-op.  Faults act on the sending side of each link
direction (as netem does), by overlaying the link's :class:`LinkProfile`.

Times are wall-clock seconds (the fleet shares a clock), passed in.

Entries are bounded and, with a :class:`mesh.trust.Trust`, signed: an entry
carries its origin's signature (the node that issued or removed it) and is
merged only if the roster's key of that origin checks it and the origin is
not revoked; its version (issue time), start and end must be finite, and a
version more than ``MAX_FUTURE_S`` ahead of the receiver's clock is refused,
so no member can plant a fault that no later tombstone outranks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import msgpack

from mesh.link import JITTER_DISTRIBUTIONS, LinkProfile, LossModel

LINK_KINDS = ("cut", "loss", "delay", "jitter", "bandwidth", "duplicate", "reorder", "corrupt")
SET_KINDS = ("partition", "plane")
KINDS = LINK_KINDS + SET_KINDS
# Partitions and plane outages cut many links at once; starting them a moment
# after they are issued lets the flood reach every node first, so both sides
# of every affected link apply them (each side only stops its own sending).
SETTLE_S = 1.0
MAX_FAULTS = 1024
MAX_FUTURE_S = 3600.0      # an entry's version may be at most this ahead of the receiver's clock
FAULT_CONTEXT = b"orbitmesh/fault/v1\x00"


class FaultError(ValueError):
    """A fault spec that cannot be applied; the message says why."""


class FaultConflict(FaultError):
    """A valid fault the table cannot take now (it is full, or a newer removal of it is
    known): a 409 that says so, not a 400 and not a crash."""


@dataclass(frozen=True)
class Topo:
    """What fault validation needs to know about the fleet."""

    nodes: frozenset[str]
    links: frozenset[frozenset[str]]           # undirected laser links (+Grid partners)
    planes: dict[str, tuple[int, int]]          # node → (shell, plane)


@dataclass(frozen=True)
class Fault:
    id: str
    spec: dict[str, Any]                 # normalised spec, as flooded
    directed: frozenset[tuple[str, str]]  # (sender, receiver) pairs it acts on
    start: float
    until: float | None

    def active(self, now: float) -> bool:
        return self.start <= now and (self.until is None or now < self.until)

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, **self.spec, "start": self.start, "until": self.until,
                "active": self.active(now), "links_affected": len(self.directed)}


def _pct(value: Any, name: str) -> float:
    """0.1, or "10%": a probability in [0, 1]."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise FaultError(f"{name}: {value!r} is not a percentage") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FaultError(f"{name}: expected a number in 0–1 or a percentage, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise FaultError(f"{name}: {value!r} is outside 0–100%")
    return float(value)


def _seconds(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """3, 0.02, "20ms", "30s", "2m": a non-negative duration in seconds."""
    if isinstance(value, str):
        text = value.strip()
        for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            if text.endswith(suffix):
                try:
                    value = float(text[: -len(suffix)]) * scale
                except ValueError:
                    raise FaultError(f"{name}: {text!r} is not a duration") from None
                break
        else:
            raise FaultError(f"{name}: {text!r} needs a unit (ms, s, m)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FaultError(f"{name}: expected a duration, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise FaultError(f"{name}: must be {'≥' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _node(topo: Topo, value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in topo.nodes:
        raise FaultError(f"{name}: unknown node {value!r}")
    return value


def _bps(value: Any) -> float:
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("bps").removesuffix("bit/s")
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:], 1.0)
        try:
            value = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise FaultError(f"bandwidth: {value!r} is not a rate (e.g. 10M, 1e6)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FaultError(f"bandwidth: must be > 0 bit/s, got {value!r}")
    return float(value)


def normalise(spec: Any, topo: Topo) -> tuple[dict[str, Any], frozenset[tuple[str, str]], float, float | None]:
    """Validate a user's spec; returns (normalised spec, directed links, settle, duration)."""
    if not isinstance(spec, dict):
        raise FaultError("a fault is a JSON object with a 'kind'")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise FaultError(f"kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    common = {"kind", "duration_s", "direction"}
    allowed = {
        "cut": set(), "loss": {"loss", "model", "p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"},
        "delay": {"delay"}, "jitter": {"jitter", "distribution"}, "bandwidth": {"bandwidth"},
        "duplicate": {"probability"}, "reorder": {"probability", "gap"}, "corrupt": {"probability"},
        "partition": {"groups"}, "plane": {"plane", "shell"},
    }[kind] | common | ({"a", "b"} if kind in LINK_KINDS else set())
    unknown = set(spec) - allowed
    if unknown:
        raise FaultError(f"{kind}: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {"kind": kind}
    duration = None
    if spec.get("duration_s") is not None:
        duration = _seconds(spec["duration_s"], "duration_s", allow_zero=False)
        out["duration_s"] = duration
    if kind in LINK_KINDS:
        a, b = _node(topo, spec.get("a"), "a"), _node(topo, spec.get("b"), "b")
        if frozenset((a, b)) not in topo.links:
            raise FaultError(f"there is no laser link {a}–{b} (not +Grid neighbours)")
        direction = spec.get("direction", "both")
        if direction not in ("both", "a->b"):
            raise FaultError("direction: 'both' or 'a->b'")
        out.update(a=a, b=b, direction=direction)
        directed = frozenset({(a, b)} if direction == "a->b" else {(a, b), (b, a)})
        settle = 0.0
        if kind == "loss":
            model = spec.get("model", "bernoulli")
            if model == "bernoulli":
                out.update(model=model, loss=_pct(spec.get("loss"), "loss"))
            elif model == "gilbert":
                out["model"] = model
                for k, default in (("p_good_to_bad", None), ("p_bad_to_good", None), ("loss_good", 0.0), ("loss_bad", 1.0)):
                    if spec.get(k, default) is None:
                        raise FaultError(f"loss (gilbert): {k} is required")
                    out[k] = _pct(spec.get(k, default), k)
            else:
                raise FaultError(f"loss model: 'bernoulli' or 'gilbert', not {model!r}")
        elif kind == "delay":
            out["delay"] = _seconds(spec.get("delay"), "delay")
        elif kind == "jitter":
            out["jitter"] = _seconds(spec.get("jitter"), "jitter")
            dist = spec.get("distribution", "normal")
            if dist not in JITTER_DISTRIBUTIONS:
                raise FaultError(f"distribution: one of {', '.join(JITTER_DISTRIBUTIONS)}")
            out["distribution"] = dist
        elif kind == "bandwidth":
            out["bandwidth"] = _bps(spec.get("bandwidth"))
        elif kind in ("duplicate", "reorder", "corrupt"):
            out["probability"] = _pct(spec.get("probability"), "probability")
            if kind == "reorder":
                out["gap"] = _seconds(spec.get("gap", 0.002), "gap")
    elif kind == "partition":
        groups = spec.get("groups")
        if not isinstance(groups, list) or len(groups) < 1 or not all(isinstance(g, list) and g for g in groups):
            raise FaultError("partition: groups must be a non-empty list of non-empty node lists")
        seen: dict[str, int] = {}
        for gi, g in enumerate(groups):
            for n in g:
                _node(topo, n, f"groups[{gi}]")
                if n in seen:
                    raise FaultError(f"partition: {n} is in groups {seen[n]} and {gi}")
                seen[n] = gi
        rest = len(groups)  # unlisted nodes form one more group together
        side = {n: seen.get(n, rest) for n in topo.nodes}
        if len(set(side.values())) < 2:
            raise FaultError("partition: every node is on one side; nothing would be cut")
        out["groups"] = [sorted(g) for g in groups]
        directed = frozenset((x, y) for link in topo.links for x, y in _both(link) if side[x] != side[y])
        settle = SETTLE_S
    else:  # plane
        plane, shell = spec.get("plane"), spec.get("shell", 0)
        if isinstance(plane, bool) or not isinstance(plane, int) or isinstance(shell, bool) or not isinstance(shell, int):
            raise FaultError("plane: 'plane' (and optional 'shell') must be integers")
        members = {n for n, sp in topo.planes.items() if sp == (shell, plane)}
        if not members:
            raise FaultError(f"plane: shell {shell} has no plane {plane}")
        out.update(plane=plane, shell=shell)
        directed = frozenset((x, y) for link in topo.links for x, y in _both(link) if x in members or y in members)
        settle = SETTLE_S
    return out, directed, settle, duration


def _both(link: frozenset[str]) -> Iterable[tuple[str, str]]:
    x, y = sorted(link)
    return ((x, y), (y, x))


def fault_id(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Entry:
    """One register of the replicated table (a fault, or its tombstone)."""

    id: str
    version: float                # issue time; newest wins
    origin: str                   # node that issued it (tie-break)
    removed: bool
    spec: dict[str, Any]          # normalised spec ({} for a tombstone of unknown spec)
    start: float
    until: float | None
    sig: bytes = field(default=b"", compare=False, repr=False)     # the origin's signature (mesh.trust)

    def key(self) -> tuple[float, str, bool]:
        return (self.version, self.origin, self.removed)

    def body(self) -> list:
        return [self.id, self.version, self.origin, self.removed, json.dumps(self.spec, sort_keys=True),
                self.start, self.until]

    def to_wire(self) -> list:
        b = self.body()
        return b + [self.sig] if self.sig else b

    def signed_bytes(self) -> bytes:
        return FAULT_CONTEXT + msgpack.packb(self.body(), use_bin_type=True)

    @classmethod
    def from_wire(cls, raw: Any) -> "Entry":
        if not isinstance(raw, list) or len(raw) not in (7, 8):
            raise FaultError("chaos entry: expected 7 fields and a signature")
        fid, version, origin, removed, spec, start, until = raw[:7]
        sig = raw[7] if len(raw) == 8 else b""
        if not (isinstance(fid, str) and isinstance(origin, str) and isinstance(removed, bool)
                and isinstance(spec, str) and isinstance(version, (int, float)) and isinstance(start, (int, float))
                and (until is None or isinstance(until, (int, float))) and isinstance(sig, bytes)
                and len(fid) <= 64 and len(origin) <= 64 and len(spec) <= 4096 and len(sig) in (0, 64)):
            raise FaultError("chaos entry: bad field types or sizes")
        if not all(math.isfinite(x) for x in (version, start, until or 0.0)) or isinstance(version, bool):
            raise FaultError("chaos entry: version, start and until must be finite")
        try:
            spec_doc = json.loads(spec)
        except (ValueError, RecursionError):
            raise FaultError("chaos entry: spec is not JSON") from None
        return cls(fid, float(version), origin, removed, spec_doc, float(start),
                   None if until is None else float(until), sig)


class FaultTable:
    """Every node's copy of the fleet's faults, and the links they act on."""

    def __init__(self, topo: Topo, *, trust: Any = None, node_index: Callable[[str], int | None] | None = None):
        """``trust`` (a :class:`mesh.trust.Trust`) signs our entries and checks
        others' against ``node_index(origin name)``; None believes every entry."""
        self.topo = topo
        self.trust = trust
        self.node_index = node_index
        self.rejected = 0
        self.last_refusal: str | None = None     # why the last merge refused its entry
        self._entries: dict[str, Entry] = {}
        self._faults: dict[str, Fault] = {}
        self._by_link: dict[tuple[str, str], list[Fault]] = {}

    # -- issuing (at the node a user talks to) ----------------------------------

    def issue(self, spec: Any, now: float, origin: str) -> tuple[Entry, bool]:
        """Validate and add a fault; returns (its entry, whether anything changed)."""
        norm, _, settle, duration = normalise(spec, self.topo)
        fid = fault_id(norm)
        current = self._entries.get(fid)
        if current is not None and not current.removed and (current.until is None or now < current.until):
            return current, False  # idempotent: already there
        if len(self._faults) >= MAX_FAULTS and fid not in self._faults:
            raise FaultConflict(f"the fault table is full: {len(self._faults)} faults, the limit is {MAX_FAULTS}; "
                                 f"clear some (DELETE /v1/chaos/{{id}}) or let them expire")
        start = now + settle
        entry = self._sign(Entry(fid, now, origin, False, norm, start, None if duration is None else start + duration))
        return entry, self.merge(entry)

    def remove(self, fid: str, now: float, origin: str) -> Entry:
        current = self._entries.get(fid)
        if current is None or current.removed:
            raise KeyError(f"no fault {fid!r}")
        tomb = self._sign(replace(current, version=max(now, current.version + 1e-6), origin=origin, removed=True))
        self.merge(tomb)
        return tomb

    def remove_all(self, now: float, origin: str) -> list[Entry]:
        return [self.remove(fid, now, origin) for fid, e in list(self._entries.items()) if not e.removed]

    # -- replication ---------------------------------------------------------------

    def _sign(self, entry: Entry) -> Entry:
        if self.trust is None:
            return entry
        return replace(entry, sig=self.trust.sign_bytes(entry.signed_bytes()))

    def admissible(self, entry: Entry, now: float | None) -> str | None:
        """Why ``entry`` must not be merged, or None."""
        if not all(math.isfinite(x) for x in (entry.version, entry.start, entry.until or 0.0)):
            return "version, start or until not finite"
        if now is not None and entry.version > now + MAX_FUTURE_S:
            return f"version more than {MAX_FUTURE_S:g}s in the future"
        if self.trust is not None:
            signer = self.node_index(entry.origin) if self.node_index else None
            if signer is None:
                return f"origin {entry.origin!r} is not a member"
            return self.trust.check_bytes(signer, entry.signed_bytes(), entry.sig)
        return None

    def merge(self, entry: Entry, now: float | None = None) -> bool:
        """Apply a flooded entry; True if it was news (and should be forwarded).

        ``now``: the receiver's clock, to refuse versions from the far future."""
        self.last_refusal = self.admissible(entry, now)
        if self.last_refusal is not None:
            self.rejected += 1
            return False
        current = self._entries.get(entry.id)
        if current is not None and current.key() >= entry.key():
            return False
        if entry.removed:
            self._entries[entry.id] = entry
            self._faults.pop(entry.id, None)
        else:
            try:
                _, directed, _, _ = normalise(entry.spec, self.topo)
            except FaultError:
                return False  # a spec this node's topology rejects is not applied
            if len(self._faults) >= MAX_FAULTS and entry.id not in self._faults:
                return False
            self._entries[entry.id] = entry
            self._faults[entry.id] = Fault(entry.id, entry.spec, directed, entry.start, entry.until)
        self._reindex()
        return True

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def _reindex(self) -> None:
        by_link: dict[tuple[str, str], list[Fault]] = {}
        for f in sorted(self._faults.values(), key=lambda f: (f.start, f.id)):
            for pair in f.directed:
                by_link.setdefault(pair, []).append(f)
        self._by_link = by_link

    # -- effect -------------------------------------------------------------------

    def profile(self, src: str, dst: str, now: float, base: LinkProfile) -> LinkProfile:
        """``base`` with every fault active on src→dst at ``now`` laid over it."""
        faults = self._by_link.get((src, dst))
        if not faults:
            return base
        p = base
        for f in faults:
            if not f.active(now):
                continue
            s = f.spec
            k = s["kind"]
            if k in ("cut", "partition", "plane"):
                p = replace(p, cut=True)
            elif k == "loss":
                if s["model"] == "bernoulli":
                    p = replace(p, loss=LossModel(p=s["loss"]))
                else:
                    p = replace(p, loss=LossModel("gilbert", 0.0, s["p_good_to_bad"], s["p_bad_to_good"],
                                                  s["loss_good"], s["loss_bad"]))
            elif k == "delay":
                p = replace(p, extra_delay_s=p.extra_delay_s + s["delay"])
            elif k == "jitter":
                p = replace(p, jitter=s["distribution"], jitter_s=s["jitter"])
            elif k == "bandwidth":
                p = replace(p, bandwidth_bps=min(p.bandwidth_bps, s["bandwidth"]))
            elif k == "duplicate":
                p = replace(p, duplicate=s["probability"])
            elif k == "reorder":
                p = replace(p, reorder=s["probability"], reorder_gap_s=s["gap"])
            elif k == "corrupt":
                p = replace(p, corrupt=s["probability"])
        return p

    def cut_now(self, now: float) -> frozenset[tuple[str, str]]:
        """Directed links that carry nothing at ``now`` (routing avoids them)."""
        return frozenset(pair for pair, faults in self._by_link.items()
                         if any(f.active(now) and f.spec["kind"] in ("cut", "partition", "plane") for f in faults))

    def degraded_now(self, now: float) -> frozenset[tuple[str, str]]:
        """Directed links that still carry traffic but under a fault (loss, delay, …) at ``now``."""
        return frozenset(pair for pair, faults in self._by_link.items()
                         if any(f.active(now) and f.spec["kind"] not in ("cut", "partition", "plane") for f in faults))

    def listing(self, now: float) -> list[dict[str, Any]]:
        return [f.describe(now) for f in sorted(self._faults.values(), key=lambda f: (f.start, f.id))
                if f.until is None or now < f.until]

    def expire(self, now: float) -> None:
        """Forget faults that ended (their tombstone-free entries stay as history)."""
        gone = [fid for fid, f in self._faults.items() if f.until is not None and now >= f.until]
        for fid in gone:
            del self._faults[fid]
        if gone:
            self._reindex()


