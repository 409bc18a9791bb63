"""What operators inject to test the mesh: faults (chaos), issued here and flooded to
every node, synced to a neighbour whose link (re)opens; and probe trains on one link.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from agent import wallclock
from agent.runtime.tasks import SubmitError
from mesh.chaos import Entry, FaultConflict, FaultError
from mesh.wire import ChaosUpdate, Probe, WireError

if TYPE_CHECKING:
    from agent.runtime.membership import MembershipService
    from agent.links.peers import NodeIdentity
    from agent.runtime.timekeeper import Timekeeper
    from agent.links.transport import LinkLayer
    from mesh.chaos import FaultTable

log = logging.getLogger("agent.runtime.node")      # the node's one logger, whichever part of it logs

MAX_PROBE_RATE_HZ = 2000
MAX_PROBE_SECONDS = 120
MAX_PROBE_BYTES = 256 * 1024


class FaultsAndProbes:
    """Mixin of ``agent.runtime.node.Node``; what it uses of the node:"""
    me: NodeIdentity
    chaos: FaultTable
    links: LinkLayer
    membership: MembershipService
    timekeeper: Timekeeper
    _nursery: trio.Nursery | None

    # -- chaos ------------------------------------------------------------------------

    def apply_fault(self, spec: Any) -> tuple[dict[str, Any], bool]:
        """Validate, record and flood a fault; raises FaultError with the reason."""
        now = wallclock.now()
        entry, changed = self.chaos.issue(spec, now, self.me.name)
        if changed:
            self._flood([entry], exclude=None)
        fault = next((f for f in self.chaos.listing(now) if f["id"] == entry.id), None)
        if fault is None:   # not applied: a removal newer than this clock is known (another node's clock)
            raise FaultConflict(f"fault {entry.id} was not applied: this node knows a newer removal of it; "
                                f"retry in a moment")
        return fault, changed

    def clear_fault(self, fid: str | None) -> list[str]:
        """Remove one fault (KeyError if unknown) or, with None, all of them."""
        now = wallclock.now()
        tombs = self.chaos.remove_all(now, self.me.name) if fid is None else [self.chaos.remove(fid, now, self.me.name)]
        if tombs:
            self._flood(tombs, exclude=None)
        return [t.id for t in tombs]

    def _flood(self, entries: list[Entry], exclude: str | None) -> None:
        msg = ChaosUpdate(tuple(e.to_wire() for e in entries))
        for peer in self.links.links:
            if peer != exclude:
                self.links.send(peer, msg)

    def _on_chaos(self, msg: ChaosUpdate, from_node: str) -> None:
        news = []
        for raw in msg.entries:
            try:
                entry = Entry.from_wire(raw)
            except (FaultError, WireError) as exc:
                log.warning("bad chaos entry from %s: %s", from_node, exc)
                continue
            if self.chaos.merge(entry, now=wallclock.now()):
                news.append(entry)
            elif self.chaos.last_refusal is not None:
                log.warning("chaos entry %s from %s refused: %s", entry.id, from_node, self.chaos.last_refusal)
        if news:
            self._flood(news, exclude=from_node)

    def _link_up(self, peer: str) -> None:
        self.membership.link_opened(peer)
        self._sync_chaos(peer)
        self.timekeeper.sync(peer)

    def _sync_chaos(self, peer: str) -> None:
        """A (re)connected neighbour gets the whole table: it may have missed floods."""
        entries = self.chaos.entries()
        if entries:
            self.links.send(peer, ChaosUpdate(tuple(e.to_wire() for e in entries)))

    # -- probes -----------------------------------------------------------------------

    def start_probe(self, peer: str, rate_hz: float, size: int, duration_s: float) -> dict[str, Any]:
        if peer not in self.links.links:
            raise SubmitError(404, f"{self.me.name} has no laser link to {peer!r}; its links: "
                                   f"{', '.join(sorted(self.links.links))}")
        if not 0 < rate_hz <= MAX_PROBE_RATE_HZ:
            raise SubmitError(400, f"rate_hz must be in (0, {MAX_PROBE_RATE_HZ}]")
        if not 0 <= size <= MAX_PROBE_BYTES:
            raise SubmitError(400, f"size must be in [0, {MAX_PROBE_BYTES}] bytes")
        if not 0 < duration_s <= MAX_PROBE_SECONDS:
            raise SubmitError(400, f"duration_s must be in (0, {MAX_PROBE_SECONDS}]")
        count = max(1, int(rate_hz * duration_s))
        assert self._nursery is not None
        self._nursery.start_soon(self._probe, peer, 1.0 / rate_hz, size, count)
        return {"peer": peer, "frames": count, "rate_hz": rate_hz, "size": size}

    async def _probe(self, peer: str, interval: float, size: int, count: int) -> None:
        padding = b"\0" * max(0, size - 30)  # ≈ size bytes on the wire with headers
        stats = self.links.links[peer].stats
        start = trio.current_time()
        for seq in range(count):
            await trio.sleep_until(start + seq * interval)
            stats.probes_sent += 1
            self.links.send(peer, Probe(seq, padding))
