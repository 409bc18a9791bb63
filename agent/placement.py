"""Where a task runs when the client does not say.

For now: on the entry node, unless its executor is already busy, then on the
nearest neighbour whose link is up.  Load- and sky-aware placement replaces
this once node state is gossiped.
"""

from __future__ import annotations


def choose_executor(target: str | None, me: str, busy: bool,
                    neighbour_latency: dict[str, float], link_up: dict[str, bool]) -> str:
    if target not in (None, "", "auto"):
        return target  # type: ignore[return-value]
    if not busy:
        return me
    candidates = [(lat, n) for n, lat in neighbour_latency.items() if link_up.get(n)]
    return min(candidates)[1] if candidates else me
