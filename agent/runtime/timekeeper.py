"""A node's share of the fleet clock: time control issued here, floods, and anti-entropy.

The timeline itself (``mesh.timeline``) is pure; this module feeds it the
wall clock and carries its records over the links, as the node does for
faults: a change issued at this node is flooded to every neighbour, a
record that is news is forwarded to the others, and a neighbour whose link
comes up gets every record held (so a node that restarts or joins late
adopts the fleet's clock from its first neighbour; nothing is persisted).
Because a flood can miss a node (a lossy or cut link whose stream stays
up), the newest record is also re-sent to every neighbour every
``REFRESH_EVERY_S``: one small frame per link, and the fleet converges
however the flood went.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable


from mesh.clock import OrbitalClock
from mesh.timeline import ClockError, ClockRecord, Timeline, parse_request
from mesh.wire import ClockUpdate, Message, WireError
from agent import wallclock

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 10.0


class Timekeeper:
    def __init__(self, me: str, base: OrbitalClock, *, trust: Any = None,
                 node_index: Callable[[str], int | None] | None = None,
                 send: Callable[[str, Message], None], neighbours: Callable[[], Iterable[str]]):
        """``send(peer, msg)`` puts a frame on the link to ``peer``; ``neighbours()`` names the links."""
        self.me = me
        self.timeline = Timeline(base, trust=trust, node_index=node_index)
        self._send = send
        self._neighbours = neighbours

    def orbit_t(self, wall: float) -> float:
        return self.timeline.orbit_t(wall)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        return {"node": self.me, **self.timeline.describe(wallclock.now() if now is None else now)}

    def control(self, body: Any, now: float | None = None) -> dict[str, Any]:
        """An API request (``{"speed": x}``, ``{"pause": true}``, ``{"resume": true}``):
        issue the switch here and flood it.  ClockError (a 400) says what is wrong."""
        speed, paused = parse_request(body)
        now = wallclock.now() if now is None else now
        rec, changed = self.timeline.issue(now, self.me, speed=speed, paused=paused)
        if changed:
            log.info("%s: fleet clock to %g× %s from %.3f (orbital t %.3f)", self.me, rec.scale,
                     "paused" if rec.paused else "running", rec.at_wall, rec.orbit_t_at)
            self._flood([rec], exclude=None)
        return {"changed": changed, "switch": rec.describe(), **self.describe(now)}

    def _flood(self, records: list[ClockRecord], exclude: str | None) -> None:
        msg = ClockUpdate(tuple(r.to_wire() for r in records))
        for peer in list(self._neighbours()):
            if peer != exclude:
                self._send(peer, msg)

    def on_update(self, msg: ClockUpdate, from_node: str, now: float | None = None) -> None:
        now = wallclock.now() if now is None else now
        news = []
        for raw in msg.records:
            try:
                rec = ClockRecord.from_wire(raw)
            except (ClockError, WireError) as exc:
                log.warning("bad clock record from %s: %s", from_node, exc)
                continue
            if self.timeline.merge(rec, now):
                news.append(rec)
            elif self.timeline.last_refusal is not None:
                log.warning("clock record %s@%.3f from %s refused: %s", rec.origin, rec.version, from_node,
                            self.timeline.last_refusal)
        if news:
            self._flood(news, exclude=from_node)

    def sync(self, peer: str) -> None:
        """A (re)connected neighbour gets every record held: it may have missed floods or restarted."""
        records = self.timeline.records()
        if records:
            self._send(peer, ClockUpdate(tuple(r.to_wire() for r in records)))

    def refresh(self) -> None:
        """Re-send the newest record to every neighbour (anti-entropy; the node does this every
        REFRESH_EVERY_S)."""
        new = self.timeline.newest
        if new is not None:
            self._flood([new], exclude=None)
