"""Who may say what: signing and checking rumours, with the cryptography injected.

Inside an authenticated link every member used to be believed about every
other: one member could declare any node dead at incarnation 2^63−1 (dead
for ever) or flood a fault with version ``inf`` (a partition nobody can lift).
:class:`Trust` closes that: every record carries its origin's signature
(``mesh.gossip_msgs.signer_of``), and a record is applied only if that
signature checks against the roster's key of that origin, and the origin is
not revoked.

The module stays sans-I/O and crypto-free: ``sign(payload) -> sig`` (this
node's key) and ``verify(node, payload, sig) -> bool`` (the roster's key of
``node``) are callables the driver passes in (the agent wraps the
``cryptography`` package's Ed25519; tests may use the same or a stub).
Checks of identical records are cached (a rumour reaches a node once per
neighbour that forwards it), so each distinct record costs one verification.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Iterable

from mesh.gossip_msgs import Update, signed_bytes, signer_of

SignFn = Callable[[bytes], bytes]
VerifyFn = Callable[[int, bytes, bytes], bool]

CACHE_ENTRIES = 8192      # distinct (signer, record, signature) checks remembered


class CheckCache:
    """Signature checks remembered, least recently used out first: (signer, payload, sig) → ok.

    Full, it holds ~3.6 MB (8,192 signed state records).  The nodes of one process whose
    ``verify`` agree (the same roster keys: a satellite host) share one: every record reaches
    each of them, and is checked once instead of once per node."""

    __slots__ = ("entries", "_done")

    def __init__(self, entries: int = CACHE_ENTRIES):
        self.entries = entries
        self._done: OrderedDict[tuple[int, bytes, bytes], bool] = OrderedDict()

    def get(self, key: tuple[int, bytes, bytes]) -> bool | None:
        ok = self._done.get(key)
        if ok is not None:
            self._done.move_to_end(key)
        return ok

    def put(self, key: tuple[int, bytes, bytes], ok: bool) -> None:
        self._done[key] = ok
        if len(self._done) > self.entries:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._done)


class Trust:
    """One node's signer and its checks of others' records."""

    def __init__(self, me: int, sign: SignFn, verify: VerifyFn, *, revoked: Iterable[int] = (),
                 cache_entries: int = CACHE_ENTRIES, cache: CheckCache | None = None):
        """``cache``: checks shared with other nodes whose ``verify`` gives the same answers
        (None: a cache of ``cache_entries`` of this node's own)."""
        self.me = me
        self._sign = sign
        self._verify = verify
        self.revoked: set[int] = set(revoked)
        self.cache = cache if cache is not None else CheckCache(cache_entries)
        self.stats: Counter[str] = Counter()

    # -- our own records ------------------------------------------------------------

    def sign(self, u: Update) -> Update:
        """``u`` signed with this node's key (``u``'s origin must be this node)."""
        if signer_of(u) != self.me:
            raise ValueError(f"node {self.me} cannot sign a record whose origin is {signer_of(u)}")
        self.stats["signed"] += 1
        return u.signed(self._sign(signed_bytes(u)))

    def sign_bytes(self, payload: bytes) -> bytes:
        self.stats["signed"] += 1
        return self._sign(payload)

    # -- others' records ------------------------------------------------------------

    def check(self, u: Update) -> str | None:
        """Why ``u`` must not be applied, or None if its origin signed it."""
        if u.kind == "l" and u.origin not in (u.a, u.b):
            return self._reject("link report by a node that is not an endpoint")
        return self.check_bytes(signer_of(u), signed_bytes(u), u.sig)

    def check_bytes(self, signer: int, payload: bytes, sig: bytes) -> str | None:
        """Why ``sig`` is not ``signer``'s over ``payload`` (None: it is)."""
        if signer in self.revoked:
            return self._reject("origin revoked")
        if not sig:
            return self._reject("unsigned")
        key = (signer, payload, sig)
        ok = self.cache.get(key)
        if ok is not None:
            self.stats["cache_hits"] += 1
        else:
            ok = bool(self._verify(signer, payload, sig))
            self.stats["verified"] += 1
            self.cache.put(key, ok)
        return None if ok else self._reject("bad signature")

    def revoke(self, node: int) -> None:
        self.revoked.add(node)

    def _reject(self, why: str) -> str:
        self.stats["rejected"] += 1
        self.stats[f"rejected: {why}"] += 1
        return why
