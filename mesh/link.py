"""What one direction of a laser link does to each frame (pure, seeded).

The sender's side of a link decides each frame's fate, as netem would: a full
transmit queue drops it, a cut or a loss model drops it, serialization at
the link's bandwidth and jitter delay it, and it may be duplicated, held
back so later frames overtake it, or corrupted (the receiver's checksum then
drops it).  Propagation (distance / c) is added by the receiver, which knows
the physics too.  Every random choice comes from the link's own seeded RNG,
so the same seed and the same frames replay the same fates.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

JITTER_DISTRIBUTIONS = ("none", "uniform", "normal", "pareto")


@dataclass(frozen=True)
class LossModel:
    """Bernoulli (``p_bad_to_good == 0`` unused) or Gilbert–Elliott bursts.

    Gilbert–Elliott: a two-state Markov chain; in the good state frames are
    lost with ``loss_good``, in the bad state with ``loss_bad``.
    """

    kind: str = "bernoulli"          # bernoulli | gilbert
    p: float = 0.0                   # Bernoulli loss probability
    p_good_to_bad: float = 0.0
    p_bad_to_good: float = 1.0
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("bernoulli", "gilbert"):
            raise ValueError(f"loss model must be 'bernoulli' or 'gilbert', not {self.kind!r}")
        for name in ("p", "p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"loss {name} must be within 0–1 (0–100%), not {v!r}")

    @property
    def mean_rate(self) -> float:
        """Long-run loss rate (for checks against measurements)."""
        if self.kind == "bernoulli":
            return self.p
        denom = self.p_good_to_bad + self.p_bad_to_good
        bad = self.p_good_to_bad / denom if denom else 0.0
        return bad * self.loss_bad + (1 - bad) * self.loss_good

    @property
    def active(self) -> bool:
        return self.mean_rate > 0 or (self.kind == "gilbert" and self.loss_good > 0)


@dataclass(frozen=True)
class LinkProfile:
    """Everything configurable about one link direction; faults overlay it."""

    bandwidth_bps: float = 10e9
    queue_frames: int = 1024
    extra_delay_s: float = 0.0
    jitter: str = "none"
    jitter_s: float = 0.0            # scale: half-width (uniform), σ (normal), scale (pareto)
    loss: LossModel = field(default_factory=LossModel)
    duplicate: float = 0.0
    reorder: float = 0.0             # probability a frame is held back by ``reorder_gap_s``
    reorder_gap_s: float = 0.002
    corrupt: float = 0.0
    cut: bool = False
    in_sight: bool = True            # physics: line of sight clear and range within reach

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise ValueError(f"bandwidth must be > 0 bit/s, not {self.bandwidth_bps!r}")
        if self.queue_frames < 1:
            raise ValueError("transmit queue must hold at least 1 frame")
        if self.extra_delay_s < 0 or self.jitter_s < 0 or self.reorder_gap_s < 0:
            raise ValueError("delays must be ≥ 0")
        if self.jitter not in JITTER_DISTRIBUTIONS:
            raise ValueError(f"jitter distribution must be one of {', '.join(JITTER_DISTRIBUTIONS)}, not {self.jitter!r}")
        for name in ("duplicate", "reorder", "corrupt"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within 0–1 (0–100%), not {v!r}")


@dataclass(frozen=True)
class Emission:
    """One copy of a frame put on the wire: when it leaves, and its extra delay."""

    sent_at: float        # start of transmission (wall time)
    extra_s: float        # serialization + extra delay + jitter + reorder hold
    corrupt: bool = False


@dataclass(frozen=True)
class Dropped:
    cause: str            # out_of_sight | cut | loss | queue_full


def link_seed(fleet_seed: int | str, src: str, dst: str) -> int:
    """A per-direction seed: stable across processes (no hash randomisation)."""
    digest = hashlib.sha256(f"{fleet_seed}|{src}|{dst}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class LinkEmulator:
    """The sender-side state of one link direction."""

    def __init__(self, profile: LinkProfile, seed: int):
        self.profile = profile
        self._rng = random.Random(seed)
        self._bad_state = False
        self._tx_ends: deque[float] = deque()   # transmission end times still in the future
        self._last_release = -math.inf           # FIFO unless reordering is asked for

    def set_profile(self, profile: LinkProfile) -> None:
        self.profile = profile

    def _lost(self) -> bool:
        loss = self.profile.loss
        if loss.kind == "bernoulli":
            return loss.p > 0 and self._rng.random() < loss.p
        # Gilbert–Elliott: move the chain one step per frame, then draw.
        if self._bad_state:
            if self._rng.random() < loss.p_bad_to_good:
                self._bad_state = False
        elif self._rng.random() < loss.p_good_to_bad:
            self._bad_state = True
        rate = loss.loss_bad if self._bad_state else loss.loss_good
        return rate > 0 and self._rng.random() < rate

    def _jitter(self) -> float:
        p = self.profile
        if p.jitter == "none" or p.jitter_s == 0:
            return 0.0
        if p.jitter == "uniform":
            return self._rng.uniform(0.0, 2 * p.jitter_s)
        if p.jitter == "normal":
            return abs(self._rng.gauss(0.0, p.jitter_s))
        return (self._rng.paretovariate(2.5) - 1.0) * p.jitter_s  # heavy tail, minimum 0

    def transmit(self, now: float, nbytes: int) -> list[Emission] | Dropped:
        """The fate of a frame of ``nbytes`` handed to this link at ``now``."""
        p = self.profile
        if not p.in_sight:
            return Dropped("out_of_sight")
        if p.cut:
            return Dropped("cut")
        while self._tx_ends and self._tx_ends[0] <= now:
            self._tx_ends.popleft()
        if len(self._tx_ends) >= p.queue_frames:
            return Dropped("queue_full")
        if p.loss.active and self._lost():
            return Dropped("loss")
        serialization = nbytes * 8.0 / p.bandwidth_bps
        tx_start = max(now, self._tx_ends[-1]) if self._tx_ends else now
        self._tx_ends.append(tx_start + serialization)
        copies = 2 if p.duplicate and self._rng.random() < p.duplicate else 1
        out = []
        for _ in range(copies):
            release = tx_start + serialization + p.extra_delay_s + self._jitter()
            if p.reorder and self._rng.random() < p.reorder:
                release += p.reorder_gap_s  # held back, and not a floor: later frames overtake it
            else:
                release = max(release, self._last_release)  # jitter alone never reorders
                self._last_release = release
            corrupt = bool(p.corrupt) and self._rng.random() < p.corrupt
            out.append(Emission(tx_start, release - tx_start, corrupt))
        return out


def with_overrides(base: LinkProfile, **changes: object) -> LinkProfile:
    return replace(base, **changes)
