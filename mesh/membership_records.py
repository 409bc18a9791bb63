"""Membership's internal records: a running suspicion (Lifeguard's falling timeout) and
a probe round in flight. Their own module so every part of the object can name them."""

from __future__ import annotations

import math


class _Suspicion:
    __slots__ = ("start", "incarnation", "confirmers", "k", "deadline", "min_t", "max_t")

    def __init__(self, start: float, incarnation: int, by: int, k: int, min_t: float, max_t: float):
        self.start = start
        self.incarnation = incarnation
        self.confirmers = {by}
        self.k = k
        self.min_t = min_t
        self.max_t = max_t
        self.deadline = start + self.timeout()

    def timeout(self) -> float:
        """Lifeguard: max at no confirmation, falling as log(C+1)/log(K+1) to min at K."""
        c = len(self.confirmers) - 1
        if self.k < 1:
            return self.min_t
        frac = math.log(c + 1) / math.log(self.k + 1)
        return max(self.min_t, self.max_t - (self.max_t - self.min_t) * frac)

    def confirm(self, by: int) -> bool:
        if by in self.confirmers:
            return False
        self.confirmers.add(by)
        self.deadline = self.start + self.timeout()
        return True


class _Probe:
    __slots__ = ("target", "seq", "start", "rto", "attempts", "next_at", "indirect", "paths", "path_rto",
                 "ind_attempts", "ind_start", "nacks", "quiet", "max_direct")

    def __init__(self, target: int, seq: int, start: float, rto: float, quiet: bool):
        self.target = target
        self.seq = seq
        self.start = start
        self.rto = rto
        self.attempts = 1
        self.next_at = start + rto
        self.indirect = False
        self.paths: list[tuple[int, ...]] = []
        self.path_rto = 0.0
        self.ind_attempts = 0
        self.ind_start = 0.0
        self.nacks = 0
        self.quiet = quiet
        self.max_direct = 1
