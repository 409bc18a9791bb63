"""The fleet's address book: node name → index, peer id, link and API addresses.

Written by the launcher (or the compose generator) before agents start, so an
agent knows whom to dial and which Noise-authenticated peer id to expect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class PeerEntry:
    name: str
    index: int
    peer_id: str
    multiaddr: str      # full libp2p address, ending in /p2p/<peer_id>
    api: str            # base URL of the node's HTTP API (also the Open Inference Protocol's /v2)
    grpc: str = ""      # host:port of its gRPC inference service; "" = none


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    index: int
    peer_id: str


class Peers:
    def __init__(self, entries: list[PeerEntry]):
        self.by_name = {e.name: e for e in entries}
        self.by_index = {e.index: e for e in entries}
        if len(self.by_name) != len(entries) or len(self.by_index) != len(entries):
            raise ValueError("peers file lists a node name or index twice")

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    @cached_property
    def name_of(self) -> dict[int, str]:
        """Index → name, one dict for every reader (do not modify): the satellites of a host
        share the peers file, and each node's relay and membership read it (O(n) each otherwise)."""
        return {i: e.name for i, e in self.by_index.items()}

    def member_ids(self, revoked: frozenset[str] = frozenset()) -> frozenset[str]:
        """The peer ids of every member but ``revoked``, one set per ``revoked`` for every reader."""
        cache = self.__dict__.setdefault("_member_ids", {})
        ids = cache.get(revoked)
        if ids is None:
            ids = cache[revoked] = frozenset(e.peer_id for e in self.by_name.values() if e.name not in revoked)
        return ids

    def __getitem__(self, name: str) -> PeerEntry:
        return self.by_name[name]

    def names(self) -> list[str]:
        return sorted(self.by_name, key=lambda n: self.by_name[n].index)

    def to_json(self) -> str:
        return json.dumps({"nodes": [asdict(self.by_name[n]) for n in self.names()]}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "peers file") -> "Peers":
        try:
            doc = json.loads(text)
            return cls([PeerEntry(**e) for e in doc["nodes"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not a valid peers file ({exc})") from None

    @classmethod
    def load(cls, path: Path) -> "Peers":
        return cls.from_json(Path(path).read_text(), str(path))


def sat_name(index: int) -> str:
    return f"sat-{index}"
