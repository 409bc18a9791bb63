"""Which satellites may be above which stations, per second of orbital time, shared.

A node asks "which ground links do I have now?" twice a second (its rewiring
chore) at its own instant.  Answering with a K×N visibility product per node
cost ~80 µs each, and a process holding 1,584 satellites asked it 3,000 times a
second.  Here each second of orbital time is looked at once per process: the
pairs that could be in view at any instant of it (``StationSet.near``, with the
distance each satellite moves in the second as slack); an instant's question
then checks only those pairs, exactly, at that instant (``Topology._ground_up``),
and for most satellites there are none.  The answer is the same as computing the
sky afresh: nothing is rounded to the second.

The satellites' positions at whole seconds are kept here too: the snapshots
(``mesh.routing.Router``, per second) ask for the same instants.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from mesh.ground import StationSet
from mesh.orbit import Constellation

BUCKET_S = 1.0          # orbital seconds looked at together (the router's step: positions are shared)
SLACK_KM = 1.0          # a path's length beyond its chord within a bucket (µm at LEO) and float rounding


class SkyBuckets:
    """Per bucket of orbital time: for each satellite and each station, the other side's
    candidates (tuples of indices, ascending); a few buckets kept, LRU."""

    def __init__(self, constellation: Constellation, stations: StationSet, mask_deg: float,
                 max_range_km: float | None = None, *, bucket_s: float = BUCKET_S, keep: int = 4):
        self.constellation = constellation
        self.stations = stations
        self.mask_deg = mask_deg
        self.max_range_km = max_range_km
        self.bucket_s = bucket_s
        self.keep = keep
        self._pos: OrderedDict[float, np.ndarray] = OrderedDict()
        self._buckets: OrderedDict[int, tuple[dict[int, tuple[int, ...]], list[tuple[int, ...]]]] = OrderedDict()
        self.computed = 0                  # buckets computed (tests: shared, not per asker)

    def positions(self, t: float) -> np.ndarray:
        """Every satellite's Earth-fixed position at ``t`` (read-only: shared by whoever asks)."""
        hit = self._pos.get(t)
        if hit is None:
            hit = self.constellation.positions(t)
            hit.setflags(write=False)
            self._pos[t] = hit
            while len(self._pos) > self.keep + 2:
                self._pos.popitem(last=False)
        return hit

    def _bucket(self, t: float) -> tuple[dict[int, tuple[int, ...]], list[tuple[int, ...]]]:
        b = math.floor(t / self.bucket_s)
        hit = self._buckets.get(b)
        if hit is not None:
            return hit
        p0, p1 = self.positions(b * self.bucket_s), self.positions((b + 1) * self.bucket_s)
        moved = np.sqrt(np.einsum("ij,ij->i", p1 - p0, p1 - p0)) + SLACK_KM
        k, i = self.stations.near(p0, moved, self.mask_deg, self.max_range_km)
        by_sat: dict[int, list[int]] = {}
        by_station: list[list[int]] = [[] for _ in range(len(self.stations))]
        for kk, ii in zip(k.tolist(), i.tolist()):       # ordered by (k, i): both lists come out sorted
            by_sat.setdefault(ii, []).append(kk)
            by_station[kk].append(ii)
        hit = ({s: tuple(v) for s, v in by_sat.items()}, [tuple(v) for v in by_station])
        self._buckets[b] = hit
        self.computed += 1
        while len(self._buckets) > self.keep:
            self._buckets.popitem(last=False)
        return hit

    def stations_near(self, sat: int, t: float) -> tuple[int, ...]:
        """Stations (k) that satellite ``sat`` may be in view of at some instant of ``t``'s bucket."""
        return self._bucket(t)[0].get(sat, ())

    def sats_near(self, k: int, t: float) -> tuple[int, ...]:
        """Satellites station ``k`` may see at some instant of ``t``'s bucket."""
        return self._bucket(t)[1][k]
