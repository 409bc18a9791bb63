"""When a frame sent on a laser link is due at the far end.

due = sent + propagation (distance / c at the send time) + serialization
(size / bandwidth).  The receiver computes it from shared physics and holds
the frame until then, which cancels the real transport's own (smaller)
latency out.  Loss, jitter and queues arrive with the link-fault model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkTiming:
    bandwidth_bps: float

    def serialization_s(self, nbytes: int) -> float:
        return nbytes * 8.0 / self.bandwidth_bps

    def due(self, sent_at: float, propagation_s: float, nbytes: int) -> float:
        return sent_at + propagation_s + self.serialization_s(nbytes)
