"""Membership's neighbours and physics: who is a laser neighbour now and at what latency,
the retransmission timeout that follows, and when silence may not be judged (start-up,
our own loop's lag, a neighbour's link just (re)opened)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.membership_config import MembershipConfig
    from mesh.membership_events import LinkDownExpectedFn, NeighboursFn

_INF = math.inf


class NeighboursAndPhysics:
    """Mixin of ``mesh.membership.Membership``; what it uses of it:"""
    me: int
    config: MembershipConfig
    neighbours_fn: NeighboursFn
    link_down_expected: LinkDownExpectedFn | None
    reports_links: bool
    _status: dict[int, int]
    _started: float | None
    _hold_until: float
    _next_lag_bump: float
    _opened: dict[int, float]
    lhm: int
    stats: dict[str, int]

    def _nbr_lat(self, now: float) -> dict[int, float]:
        """Current neighbours (physics up, not expected down) → one-way latency."""
        exp = self.link_down_expected
        st = self._status
        out = {}
        for n, lat in self.neighbours_fn(self.me, now):
            if n in st and (exp is None or not exp(self.me, n, now)):
                out[n] = lat
        return out

    def _neighbours(self, now: float) -> list[int]:
        return list(self._nbr_lat(now))

    def _lat(self, a: int, b: int, now: float) -> float | None:
        for n, lat in self.neighbours_fn(a, now):
            if n == b:
                return lat
        return None

    def note_lag(self, now: float, lag_s: float) -> None:
        """The driver's measure of how late its own timers ran (Lifeguard's local health).

        Past ``lag_tolerance_s`` the node degrades its health (at most one step
        per period: longer period and timeouts) and holds every verdict for
        ``max(T, lag_hold_mult × lag)``; probes go on, so answers still count.
        """
        c = self.config
        if lag_s <= c.lag_tolerance_s:
            return
        self.stats["lag_events"] += 1
        self._hold_until = max(self._hold_until, now + max(c.probe_interval_s, c.lag_hold_mult * lag_s))
        if now >= self._next_lag_bump:
            self.lhm = min(c.max_lhm, self.lhm + 1)
            self._next_lag_bump = now + c.probe_interval_s

    def link_opened(self, now: float, node: int) -> None:
        """The driver's link to neighbour ``node`` just (re)connected.

        A peer whose link is that fresh is usually starting (a fleet's start-up
        storm, a restart): loading, connecting its other links, warming its
        models, with its event loop busy for seconds on a loaded host.  Its
        silence proves nothing for ``join_grace_s``.
        """
        if node in self._status:
            self._opened[node] = now

    def _joining(self, now: float, node: int) -> bool:
        return now < self._join_hold(node)

    def _join_hold(self, node: int) -> float:
        """Until when verdicts about ``node`` wait for it to join."""
        opened = self._opened.get(node)
        if opened is None:
            # Never connected: it has not joined yet (a fleet starting on a busy
            # host brings its agents up over a minute or more), not died.
            return self._started + self.config.unjoined_grace_s if self.reports_links and self._started is not None else -_INF
        return opened + self.config.join_grace_s

    def holding_verdicts(self, now: float) -> bool:
        """Whether silence is not being judged at ``now`` (start-up, or the loop lagged)."""
        return self._started is None or now < self._hold_until

    def _rto(self, one_way: float) -> float:
        c = self.config
        return (2.0 * one_way * c.rtt_mult + c.rto_margin_s) * (1 + self.lhm)
