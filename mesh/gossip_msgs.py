"""Messages of membership, gossip and hop-by-hop delivery, and their wire forms.

Every message and every piggybacked update is a small frozen dataclass (h11's
``_events.py`` style) with ``to_wire() -> list`` and ``Cls.from_wire(raw)``.
Wire forms are msgpack-friendly lists that start with a short kind string;
node ids are ints (the node indices of ``mesh.nodes.NodeNames``).  Decoding
validates every field and raises :class:`GossipWireError` (a ``ValueError``)
on malformed input, so a bad frame is dropped with a reason, never a crash.

Integration API (what ``mesh/wire.py`` plugs in)::

    raw = message_to_wire(msg)          # list, e.g. ["ping", 7, 3, 4, [3, 4], [[...updates...]]]
    msg = message_from_wire(raw)        # any message; GossipWireError on anything malformed
    msg = Ping.from_wire(raw)           # one type (each message and update class has from_wire)
    encoded_size(msg)                   # msgpack bytes of the message (for budgets, stats)

Wire forms (``u`` = list of update wire forms)::

    Ping        ["ping",  seq, origin, target, route, u]     route: origin ... target (2..8 nodes)
    Ack         ["ack",   seq, origin, target, route, u]     route: target ... origin (reverse)
    Nack        ["nack",  seq, origin, target, relay, u]     Lifeguard: the relay heard no ack
    Gossip      ["gossip", u]
    SyncRequest ["sync",  roster, nodes, incarnations, statuses, versions, links, u]
    SyncReply   ["syncr", roster, nodes, incarnations, statuses, versions, links, u]
    HopAck      ["hopack", [msg_id, ...]]                    per-hop delivery acknowledgements

    Alive       ["a", node, incarnation]
    Suspect     ["s", node, incarnation, by]
    Dead        ["d", node, incarnation, by]
    NodeState   ["n", node, version, {key: value}]
    LinkState   ["l", a, b, up, seq, origin]                 a < b

Every update may end with ``sig`` (64 bytes): its origin's Ed25519 signature
over :func:`signed_bytes` (the wire form without ``sig``).  The origin is
:func:`signer_of`: the subject for Alive and NodeState (only a node raises its
own incarnation or state), the accuser ``by`` for Suspect and Dead, the
reporter for LinkState.  Signing and checking are ``mesh.trust``'s business;
here a signature is only carried, and compares as nothing (two copies of one
record are equal whoever signed them).

Sync digests are columns: ``incarnations`` and ``versions`` (node-state versions)
are int lists, ``statuses`` is bytes (0 alive, 1 suspect, 2 dead), entry i about
the i-th node of the roster; ``roster`` is :func:`roster_id` of the node list and
``nodes`` is that list, or empty when the sender expects the receiver to share
the roster (every node of a fleet does: it comes from the config).  ``links`` is
a flat int list ``[a, b, seq, up(0|1)] * m``.  Columns compare and encode in C,
which keeps a 1,584-node digest at ~5 KB and cheap to merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Union

import msgpack

MAX_NODE_ID = 2**31 - 1
MAX_COUNTER = 2**63 - 1           # incarnations, versions, sequence numbers
MAX_ROUTE = 8                     # origin + up to 6 relays + target; indirect paths are ≤ 4
MAX_UPDATES = 4096                # per message (a sync reply carries many)
MAX_DIGEST_ENTRIES = 1 << 17      # 131,072 nodes or links: several constellations
MAX_STATE_KEYS = 16
MAX_STATE_STR = 64
MAX_STATE_LIST = 16
MAX_MSG_ID = 128
MAX_HOP_IDS = 1024
SIG_BYTES = 64                    # an Ed25519 signature
SIG_OVERHEAD = SIG_BYTES + 2      # what a signature adds to an update's msgpack size (bin 8)
SIGNED_CONTEXT = b"orbitmesh/rumour/v1\x00"

ALIVE, SUSPECT, DEAD = 0, 1, 2
STATUS_NAMES = ("alive", "suspect", "dead")


class GossipWireError(ValueError):
    """A membership/gossip/delivery message that does not follow its wire form."""


# -- validation helpers ------------------------------------------------------------

def _int(v: Any, what: str, lo: int = 0, hi: int = MAX_COUNTER) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise GossipWireError(f"{what}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise GossipWireError(f"{what}: {v} outside [{lo}, {hi}]")
    return v


def _node(v: Any, what: str) -> int:
    return _int(v, what, 0, MAX_NODE_ID)


def _list(v: Any, what: str, max_len: int) -> list:
    if not isinstance(v, (list, tuple)):
        raise GossipWireError(f"{what}: expected a list, got {type(v).__name__}")
    if len(v) > max_len:
        raise GossipWireError(f"{what}: {len(v)} items, at most {max_len}")
    return list(v)


def _route(v: Any, what: str) -> tuple[int, ...]:
    r = tuple(_node(x, f"{what}[]") for x in _list(v, what, MAX_ROUTE))
    if len(r) < 2:
        raise GossipWireError(f"{what}: needs at least 2 nodes")
    if len(set(r)) != len(r):
        raise GossipWireError(f"{what}: a node appears twice")
    return r


def _state_value(v: Any, what: str) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return _int(v, what, -MAX_COUNTER, MAX_COUNTER)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise GossipWireError(f"{what}: must be finite")
        return v
    if isinstance(v, str):
        if len(v) > MAX_STATE_STR:
            raise GossipWireError(f"{what}: string longer than {MAX_STATE_STR}")
        return v
    if isinstance(v, (list, tuple)):
        items = _list(v, what, MAX_STATE_LIST)
        out = []
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, str)):
                raise GossipWireError(f"{what}: list items must be ints or strings")
            out.append(_state_value(x, what))
        return tuple(out)
    raise GossipWireError(f"{what}: unsupported value type {type(v).__name__}")


def check_state_values(values: Any) -> tuple[tuple[str, Any], ...]:
    """Validate a node-state dict; returns it as sorted (key, value) pairs."""
    if not isinstance(values, dict):
        raise GossipWireError("state values: expected a dict")
    if len(values) > MAX_STATE_KEYS:
        raise GossipWireError(f"state values: {len(values)} keys, at most {MAX_STATE_KEYS}")
    out = []
    for k, v in values.items():
        if not isinstance(k, str) or not 0 < len(k) <= 32:
            raise GossipWireError(f"state key {k!r}: expected a string of 1–32 characters")
        out.append((k, _state_value(v, f"state[{k}]")))
    return tuple(sorted(out))


def roster_id(nodes: tuple[int, ...] | list[int]) -> int:
    """CRC32 of a node list: two nodes with equal rosters can omit it from digests."""
    import zlib
    return zlib.crc32(msgpack.packb(list(nodes)))


def _packed_size(wire: Any) -> int:
    return len(msgpack.packb(wire, use_bin_type=True))


# -- piggybacked updates ---------------------------------------------------------------

class _Update:
    """What every piggybacked update has: its encoded size, computed once (budgets
    are checked for every outbound frame), and its wire form, built once and shared
    (do not mutate it): a state record is encoded into a frame per neighbour of every node."""

    sig: bytes

    def body(self) -> list:
        """The wire form without the signature (what the origin signs)."""
        raise NotImplementedError

    def to_wire(self) -> list:
        return self._wire

    @cached_property
    def _wire(self) -> list:
        b = self.body()
        return b + [self.sig] if self.sig else b

    def signed(self, sig: bytes) -> "Update":
        """This record carrying ``sig``."""
        return replace(self, sig=sig)

    @cached_property
    def wire_size(self) -> int:
        return _packed_size(self.to_wire())


class _MemberUpdate(_Update):
    """Alive, Suspect and Dead about one node supersede each other: one key per node."""

    node: int

    @property
    def key(self) -> tuple:
        return ("m", self.node)


@dataclass(frozen=True)
class Alive(_MemberUpdate):
    """``node`` is alive at ``incarnation``: refutes suspicion/death at lower incarnations."""

    node: int
    incarnation: int
    sig: bytes = field(default=b"", compare=False, repr=False)

    kind = "a"

    def body(self) -> list:
        return ["a", self.node, self.incarnation]


@dataclass(frozen=True)
class Suspect(_MemberUpdate):
    """``by`` could not reach ``node`` at ``incarnation`` (directly or indirectly)."""

    node: int
    incarnation: int
    by: int
    sig: bytes = field(default=b"", compare=False, repr=False)

    kind = "s"

    def body(self) -> list:
        return ["s", self.node, self.incarnation, self.by]


@dataclass(frozen=True)
class Dead(_MemberUpdate):
    """``node`` at ``incarnation`` was declared dead by ``by`` when its suspicion expired."""

    node: int
    incarnation: int
    by: int
    sig: bytes = field(default=b"", compare=False, repr=False)

    kind = "d"

    def body(self) -> list:
        return ["d", self.node, self.incarnation, self.by]


@dataclass(frozen=True)
class NodeState(_Update):
    """A node's small self-description (load, queue depth, models, battery, low, ...).

    Last writer wins by ``version``, which only the node itself increments.
    ``values`` are sorted (key, value) pairs so the record is immutable.
    """

    node: int
    version: int
    values: tuple[tuple[str, Any], ...]
    sig: bytes = field(default=b"", compare=False, repr=False)

    kind = "n"

    @property
    def key(self) -> tuple:
        return ("n", self.node)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values}

    def body(self) -> list:
        return ["n", self.node, self.version, self.as_dict()]


@dataclass(frozen=True)
class LinkState(_Update):
    """Link a–b (a < b) seen ``up`` or down by ``origin``; newest ``seq`` wins, down wins ties."""

    a: int
    b: int
    up: bool
    seq: int
    origin: int
    sig: bytes = field(default=b"", compare=False, repr=False)

    kind = "l"

    @property
    def key(self) -> tuple:
        return ("l", self.a, self.b)

    def order(self) -> tuple[int, bool, int]:
        return (self.seq, not self.up, self.origin)

    def body(self) -> list:
        return ["l", self.a, self.b, self.up, self.seq, self.origin]


Update = Union[Alive, Suspect, Dead, NodeState, LinkState]
MEMBER_UPDATES = (Alive, Suspect, Dead)


def signer_of(u: Update) -> int:
    """The node whose signature makes ``u`` valid (see the module docstring)."""
    k = u.kind
    if k == "s" or k == "d":
        return u.by
    if k == "l":
        return u.origin
    return u.node


def signed_bytes(u: Update) -> bytes:
    """The bytes an update's origin signs: a context tag and its wire form without ``sig``."""
    return SIGNED_CONTEXT + msgpack.packb(u.body(), use_bin_type=True)


_ARITY = {"a": 2, "s": 3, "d": 3, "n": 3, "l": 5}


def update_from_wire(raw: Any) -> Update:
    raw = _list(raw, "update", 8)
    if not raw or not isinstance(raw[0], str):
        raise GossipWireError("update: expected [kind, ...]")
    kind, args = raw[0], raw[1:]
    sig = b""
    if kind in _ARITY and len(args) == _ARITY[kind] + 1:      # an unknown kind with no fields has no signature
        sig = args.pop()
        if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
            raise GossipWireError(f"update signature: expected {SIG_BYTES} bytes")
    if kind == "n" and len(args) == 3:
        return _node_state(args, sig)
    u = _update_body(kind, args)
    return replace(u, sig=sig) if sig else u


# Node-state records decoded lately in this process, by (node, version): (the values as msgpack
# bytes, signature, the record).  A state record floods the whole fleet, so a process hosting K
# satellites (or a simulation of every node) decodes the same record K times, and validating its
# values was a third of a starlink-s1 start-up.  A record whose values pack to the same bytes, with
# the same signature, is that record again (msgpack keeps True, 1, 1.0 and -0.0 apart, as the
# record pool does); anything else is validated afresh.  Bounded, oldest dropped first.
_STATE_CACHE: dict[tuple[int, int], tuple[bytes, bytes, "NodeState"]] = {}
STATE_CACHE_MAX = 16_384      # gen1 floods 4,414 first states at once: a FIFO smaller than that misses every one


def _node_state(args: list, sig: bytes) -> "NodeState":
    node, version, raw = _node(args[0], "state.node"), _int(args[1], "state.version"), args[2]
    try:
        packed = msgpack.packb(raw, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        packed = None                   # not a state's values at all: check_state_values says why
    hit = _STATE_CACHE.get((node, version))
    if hit is not None and packed is not None and hit[0] == packed and hit[1] == sig:
        return hit[2]
    u = NodeState(node, version, check_state_values(raw))
    if sig:
        u = replace(u, sig=sig)
    if packed is not None:
        if len(_STATE_CACHE) >= STATE_CACHE_MAX:
            del _STATE_CACHE[next(iter(_STATE_CACHE))]
        _STATE_CACHE[(node, version)] = (packed, sig, u)
    return u


def _update_body(kind: str, args: list) -> Update:
    if kind == "a" and len(args) == 2:
        return Alive(_node(args[0], "alive.node"), _int(args[1], "alive.incarnation"))
    if kind in ("s", "d") and len(args) == 3:
        cls = Suspect if kind == "s" else Dead
        return cls(_node(args[0], f"{kind}.node"), _int(args[1], f"{kind}.incarnation"), _node(args[2], f"{kind}.by"))
    if kind == "n" and len(args) == 3:
        return NodeState(_node(args[0], "state.node"), _int(args[1], "state.version"), check_state_values(args[2]))
    if kind == "l" and len(args) == 5:
        a, b = _node(args[0], "link.a"), _node(args[1], "link.b")
        if not a < b:
            raise GossipWireError("link: a must be < b")
        if not isinstance(args[2], bool):
            raise GossipWireError("link.up: expected a boolean")
        return LinkState(a, b, args[2], _int(args[3], "link.seq"), _node(args[4], "link.origin"))
    raise GossipWireError(f"unknown update kind {kind!r} with {len(args)} fields")


def _updates_from_wire(raw: Any) -> tuple[Update, ...]:
    return tuple(update_from_wire(u) for u in _list(raw, "updates", MAX_UPDATES))


def _updates_to_wire(updates: tuple[Update, ...]) -> list:
    return [u.to_wire() for u in updates]


# -- messages ---------------------------------------------------------------------

@dataclass(frozen=True)
class Ping:
    """A probe of ``target`` by ``origin`` along ``route`` (direct: ``(origin, target)``).

    An indirect probe is source-routed through relays that are the origin's
    laser neighbours' neighbours, so it never uses the link under test.
    """

    seq: int
    origin: int
    target: int
    route: tuple[int, ...]
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        if self.route[0] != self.origin or self.route[-1] != self.target:
            raise GossipWireError("ping: route must run from origin to target")

    def to_wire(self) -> list:
        return ["ping", self.seq, self.origin, self.target, list(self.route), _updates_to_wire(self.updates)]


@dataclass(frozen=True)
class Ack:
    """``target``'s answer to probe ``seq`` of ``origin``; ``route`` runs target → origin."""

    seq: int
    origin: int
    target: int
    route: tuple[int, ...]
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        if self.route[0] != self.target or self.route[-1] != self.origin:
            raise GossipWireError("ack: route must run from target to origin")

    def to_wire(self) -> list:
        return ["ack", self.seq, self.origin, self.target, list(self.route), _updates_to_wire(self.updates)]


@dataclass(frozen=True)
class Nack:
    """Lifeguard: ``relay`` forwarded an indirect probe and heard no ack in time.

    The origin learns its own links work (the relay answered), so a missing
    nack, not a missing ack, is what points at the origin's own health.
    """

    seq: int
    origin: int
    target: int
    relay: int
    updates: tuple[Update, ...] = ()

    def to_wire(self) -> list:
        return ["nack", self.seq, self.origin, self.target, self.relay, _updates_to_wire(self.updates)]


@dataclass(frozen=True)
class Gossip:
    """Updates pushed to a neighbour on their own (nothing else was going its way)."""

    updates: tuple[Update, ...]

    def to_wire(self) -> list:
        return ["gossip", _updates_to_wire(self.updates)]


@dataclass(frozen=True)
class _Sync:
    """A digest of one node's view: roster node i is at ``incarnations[i]`` with
    status ``statuses[i]`` and its node state at version ``versions[i]``;
    ``links`` is ``[a, b, seq, up] * m``.  ``nodes`` may be empty (same roster)."""

    roster: int
    nodes: tuple[int, ...]
    incarnations: tuple[int, ...]
    statuses: bytes
    versions: tuple[int, ...]
    links: tuple[int, ...] = ()
    updates: tuple[Update, ...] = ()

    kind = "sync"   # overridden below

    def to_wire(self) -> list:
        return [self.kind, self.roster, list(self.nodes), list(self.incarnations), bytes(self.statuses),
                list(self.versions), list(self.links), _updates_to_wire(self.updates)]


@dataclass(frozen=True)
class SyncRequest(_Sync):
    """Push-pull anti-entropy (join, new neighbour, periodic): the sender's digest."""

    kind = "sync"


@dataclass(frozen=True)
class SyncReply(_Sync):
    """The answer to a SyncRequest: the receiver's digest plus what the sender lacked."""

    kind = "syncr"


@dataclass(frozen=True)
class HopAck:
    """Per-hop acknowledgement of routed frames, by their hop message ids."""

    ids: tuple[str, ...]

    def to_wire(self) -> list:
        return ["hopack", list(self.ids)]


Message = Union[Ping, Ack, Nack, Gossip, SyncRequest, SyncReply, HopAck]
MESSAGE_TYPES = (Ping, Ack, Nack, Gossip, SyncRequest, SyncReply, HopAck)


def _ints(raw: Any, what: str, max_len: int, hi: int = MAX_COUNTER) -> tuple[int, ...]:
    items = _list(raw, what, max_len)
    for i, v in enumerate(items):
        if type(v) is not int or not 0 <= v <= hi:
            raise GossipWireError(f"{what}[{i}]: expected an integer in [0, {hi}]")
    return tuple(items)


def _sync_from_wire(cls: type, a: list) -> "_Sync":
    what = cls.kind
    roster = _int(a[0], f"{what}.roster", 0, 2**32 - 1)
    nodes = _ints(a[1], f"{what}.nodes", MAX_DIGEST_ENTRIES, MAX_NODE_ID)
    incs = _ints(a[2], f"{what}.incarnations", MAX_DIGEST_ENTRIES)
    sts = a[3]
    if not isinstance(sts, bytes) or (sts and max(sts) > DEAD):
        raise GossipWireError(f"{what}.statuses: expected bytes of 0 (alive), 1 (suspect) or 2 (dead)")
    vers = _ints(a[4], f"{what}.versions", MAX_DIGEST_ENTRIES)
    if not len(incs) == len(sts) == len(vers) or (nodes and len(nodes) != len(incs)):
        raise GossipWireError(f"{what}: digest columns differ in length")
    links = _ints(a[5], f"{what}.links", 4 * MAX_DIGEST_ENTRIES)
    if len(links) % 4:
        raise GossipWireError(f"{what}.links: length must be a multiple of 4")
    for j in range(0, len(links), 4):
        if links[j + 1] > MAX_NODE_ID or not links[j] < links[j + 1] or links[j + 3] > 1:
            raise GossipWireError(f"{what}.links: bad entry at {j}")
    return cls(roster, nodes, incs, sts, vers, links, _updates_from_wire(a[6]))


def message_to_wire(msg: Message) -> list:
    if not isinstance(msg, MESSAGE_TYPES):
        raise TypeError(f"not a gossip message: {type(msg).__name__}")
    return msg.to_wire()


def message_from_wire(raw: Any) -> Message:
    """Decode and validate one message; GossipWireError on malformed input."""
    raw = _list(raw, "message", 8)
    if not raw or not isinstance(raw[0], str):
        raise GossipWireError("message: expected [kind, ...]")
    kind, a = raw[0], raw[1:]
    if kind in ("ping", "ack") and len(a) == 5:
        cls = Ping if kind == "ping" else Ack
        return cls(_int(a[0], f"{kind}.seq"), _node(a[1], f"{kind}.origin"), _node(a[2], f"{kind}.target"),
                   _route(a[3], f"{kind}.route"), _updates_from_wire(a[4]))
    if kind == "nack" and len(a) == 5:
        return Nack(_int(a[0], "nack.seq"), _node(a[1], "nack.origin"), _node(a[2], "nack.target"),
                    _node(a[3], "nack.relay"), _updates_from_wire(a[4]))
    if kind == "gossip" and len(a) == 1:
        return Gossip(_updates_from_wire(a[0]))
    if kind in ("sync", "syncr") and len(a) == 7:
        return _sync_from_wire(SyncRequest if kind == "sync" else SyncReply, a)
    if kind == "hopack" and len(a) == 1:
        ids = _list(a[0], "hopack.ids", MAX_HOP_IDS)
        for i in ids:
            if not isinstance(i, str) or not 0 < len(i) <= MAX_MSG_ID:
                raise GossipWireError(f"hopack: ids must be strings of 1–{MAX_MSG_ID} characters")
        return HopAck(tuple(ids))
    raise GossipWireError(f"unknown gossip message kind {kind!r} with {len(a)} fields")


def _from_wire_of(cls: type) -> classmethod:
    def from_wire(klass: type, raw: Any) -> Any:
        msg = message_from_wire(raw)
        if not isinstance(msg, klass):
            raise GossipWireError(f"expected a {klass.__name__} message, got {type(msg).__name__}")
        return msg
    from_wire.__doc__ = f"Decode and validate a {cls.__name__}; GossipWireError (a ValueError) if malformed."
    return classmethod(from_wire)


def _update_from_wire_of(cls: type) -> classmethod:
    def from_wire(klass: type, raw: Any) -> Any:
        u = update_from_wire(raw)
        if not isinstance(u, klass):
            raise GossipWireError(f"expected a {klass.__name__} update, got {type(u).__name__}")
        return u
    return classmethod(from_wire)


for _cls in MESSAGE_TYPES:
    _cls.from_wire = _from_wire_of(_cls)          # type: ignore[attr-defined]
for _cls in (Alive, Suspect, Dead, NodeState, LinkState):
    _cls.from_wire = _update_from_wire_of(_cls)   # type: ignore[attr-defined]


def encode(msg: Message) -> bytes:
    """msgpack bytes of a message (what the simulator counts; the agent frames it)."""
    return msgpack.packb(msg.to_wire(), use_bin_type=True)


def decode(data: bytes) -> Message:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise GossipWireError(f"not msgpack: {type(exc).__name__}") from None
    return message_from_wire(raw)


def encoded_size(msg: Message) -> int:
    return len(encode(msg))
