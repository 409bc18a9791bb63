"""Agreement among replicas of one task: ``first`` or ``majority``, and who dissented.

A task with ``replicas: k`` runs on k satellites in different planes; each
replica's answer arrives as (node, succeeded, digest of its outputs).  The
vote decides as early as it can and keeps listening, so that answers arriving
after the decision still show who disagreed (a node whose result a radiation
upset flipped is named, whichever mode decided).

* ``first``: the first successful answer wins.
* ``majority``: an answer wins once more than half of the k replicas returned
  it bit for bit; the task fails as soon as no answer can reach that any more.

Pure: no I/O, no clock; the node feeds it answers as they come.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MODES = ("first", "majority")
MAX_REPLICAS = 7


@dataclass(frozen=True)
class Decision:
    ok: bool
    digest: str | None            # the winning answer's digest (None when failed)
    node: str | None              # a node that returned it (whose outputs become the task's)
    reason: str


@dataclass
class Vote:
    replicas: int
    mode: str = "majority"
    answers: dict[str, tuple[bool, str | None]] = field(default_factory=dict)   # node -> (ok, digest)
    decision: Decision | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"agreement must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be 1–{MAX_REPLICAS}, not {self.replicas}")

    @property
    def needed(self) -> int:
        return 1 if self.mode == "first" else self.replicas // 2 + 1

    def add(self, node: str, ok: bool, digest: str | None) -> Decision | None:
        """Record one replica's answer; the decision if this answer made it (once)."""
        if node in self.answers:
            return None
        self.answers[node] = (ok, digest if ok else None)
        if self.decision is not None:
            return None
        tally = Counter(d for good, d in self.answers.values() if good)
        best, count = tally.most_common(1)[0] if tally else (None, 0)
        if count >= self.needed:
            winner = next(n for n, (good, d) in self.answers.items() if good and d == best)
            why = "first answer" if self.mode == "first" else f"{count} of {self.replicas} replicas agree"
            self.decision = Decision(True, best, winner, why)
        elif count + (self.replicas - len(self.answers)) < self.needed:
            failed = sum(1 for good, _ in self.answers.values() if not good)
            why = (f"no majority: {len(tally)} different answers among {self.replicas - failed} results, "
                   f"{failed} replicas failed") if self.mode == "majority" else f"all {self.replicas} replicas failed"
            self.decision = Decision(False, None, None, why)
        return self.decision

    def dissenters(self) -> list[str]:
        """Nodes whose successful answer differs from the winner (or, without a winner, from the most common)."""
        tally = Counter(d for good, d in self.answers.values() if good)
        ref = self.decision.digest if self.decision is not None and self.decision.ok else \
            (tally.most_common(1)[0][0] if tally else None)
        return sorted(n for n, (good, d) in self.answers.items() if good and d != ref)

    def failed(self) -> list[str]:
        return sorted(n for n, (good, _) in self.answers.items() if not good)
