"""A job's plan: its inputs split into shards, each shard a run of chunks behind a checkpoint.

A job is many inputs through one model.  Its home node (where it was
submitted) splits the inputs into contiguous shards, gives each shard to a
satellite, and streams it there in chunks, at most ``window`` in flight.  A
chunk that comes back is a checkpoint: its outputs (and, for a stateful step,
the state after it) are held at home, in the home's journal.  When a shard's
satellite dies, is cut off or runs low in eclipse, the shard moves: a new
epoch fences off every chunk still out there, and the next satellite starts
from the first input without a checkpoint.  So every input's output is kept
exactly once, and the work done twice is at most what was in flight.

Pure: the runner (``agent/runtime/jobs.py``) tells the plan what happened, with the
time, and asks it what to send next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_JOB_INPUTS = 10_000
MAX_SHARDS = 64
MAX_CHUNK = 256
MAX_MOVES = 64          # per shard: past this the job fails instead of chasing satellites for ever


class PlanError(ValueError):
    """A job shape that cannot be planned (too many inputs, shards, ...)."""


@dataclass(frozen=True)
class Move:
    """A shard given to a node: when, from where, why, and the input it resumes at."""

    at: float
    src: str | None
    dst: str
    why: str
    resume_at: int

    def to_json(self) -> dict:
        return {"at": self.at, "from": self.src, "to": self.dst, "why": self.why, "resume_at": self.resume_at}


@dataclass
class Shard:
    index: int
    lo: int
    hi: int
    node: str | None = None
    epoch: int = 0
    done: int = -1                                          # checkpoint: outputs of [lo, done) are home
    ahead: dict[int, int] = field(default_factory=dict)     # finished chunks past the checkpoint: lo -> hi
    sent: dict[int, int] = field(default_factory=dict)      # this epoch's chunks in flight: lo -> hi
    cursor: int = -1                                        # next input to send
    moves: list[Move] = field(default_factory=list)
    resent: int = 0                                         # inputs sent again after a move
    progress_at: float = 0.0

    def __post_init__(self) -> None:
        if self.done < 0:
            self.done = self.lo
        if self.cursor < 0:
            self.cursor = self.lo

    @property
    def size(self) -> int:
        return self.hi - self.lo

    @property
    def finished(self) -> bool:
        return self.done >= self.hi

    @property
    def completed(self) -> int:
        """Inputs whose outputs are home (checkpointed), in order or ahead of the checkpoint."""
        return self.done - self.lo + sum(h - l for l, h in self.ahead.items())

    def to_json(self) -> dict:
        return {"shard": self.index, "inputs": [self.lo, self.hi], "node": self.node, "epoch": self.epoch,
                "done": self.completed, "checkpoint": self.done, "in_flight": sorted(self.sent.items()),
                "moves": [m.to_json() for m in self.moves], "resent": self.resent}


class JobPlan:
    """Shards of ``n`` inputs, chunks of at most ``chunk``, ``window`` chunks in flight per shard.

    A stateful job (``stateful``) sends one chunk at a time: the next chunk
    needs the state the previous one ends with.
    """

    def __init__(self, n: int, shards: int, chunk: int, window: int = 2, stateful: bool = False):
        if not 1 <= n <= MAX_JOB_INPUTS:
            raise PlanError(f"a job has 1–{MAX_JOB_INPUTS} inputs, got {n}")
        if not 1 <= shards <= MAX_SHARDS:
            raise PlanError(f"'shards' must be in 1–{MAX_SHARDS}, got {shards}")
        if not 1 <= chunk <= MAX_CHUNK:
            raise PlanError(f"'chunk' must be in 1–{MAX_CHUNK}, got {chunk}")
        if not 1 <= window <= 8:
            raise PlanError(f"'window' must be in 1–8, got {window}")
        shards = min(shards, n)
        self.n, self.chunk = n, chunk
        self.window = 1 if stateful else window
        self.stateful = stateful
        base, extra = divmod(n, shards)
        bounds, lo = [], 0
        for i in range(shards):
            hi = lo + base + (1 if i < extra else 0)
            bounds.append((lo, hi))
            lo = hi
        self.shards = [Shard(i, lo, hi) for i, (lo, hi) in enumerate(bounds)]

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.shards)

    @property
    def completed(self) -> int:
        return sum(s.completed for s in self.shards)

    @property
    def resent(self) -> int:
        return sum(s.resent for s in self.shards)

    def assign(self, i: int, node: str, now: float, why: str) -> Move:
        """Give shard ``i`` to ``node``; it resumes at its checkpoint."""
        s = self.shards[i]
        if len(s.moves) >= MAX_MOVES:
            raise PlanError(f"shard {i} moved {MAX_MOVES} times; giving up")
        move = Move(now, s.node or (s.moves[-1].dst if s.moves else None), node, why, s.done)
        s.node = node
        s.moves.append(move)
        s.progress_at = now
        return move

    def next_chunks(self, i: int) -> list[tuple[int, int]]:
        """Chunks of shard ``i`` to send now (marked in flight), skipping what is already home."""
        s = self.shards[i]
        out: list[tuple[int, int]] = []
        if s.node is None:
            return out
        while len(s.sent) < self.window and s.cursor < s.hi:
            if s.cursor in s.ahead:
                s.cursor = s.ahead[s.cursor]
                continue
            end = min(s.cursor + self.chunk, s.hi, *[lo for lo in s.ahead if lo > s.cursor])
            s.sent[s.cursor] = end
            out.append((s.cursor, end))
            s.cursor = end
        return out

    def chunk_done(self, i: int, epoch: int, lo: int, hi: int, now: float) -> bool:
        """A chunk's outputs arrived: True if they are new (keep them), False if fenced off or a repeat."""
        s = self.shards[i]
        if epoch != s.epoch or s.sent.get(lo) != hi:
            return False
        del s.sent[lo]
        self._mark(s, lo, hi)
        s.progress_at = now
        return True

    def restore(self, i: int, lo: int, hi: int) -> None:
        """A checkpoint read back from the journal after a restart."""
        s = self.shards[i]
        if not s.lo <= lo < hi <= s.hi:
            raise PlanError(f"checkpoint [{lo}, {hi}) is outside shard {i} [{s.lo}, {s.hi})")
        self._mark(s, lo, hi)
        s.cursor = s.done

    @staticmethod
    def _mark(s: Shard, lo: int, hi: int) -> None:
        if lo == s.done:
            s.done = hi
            while s.done in s.ahead:
                s.done = s.ahead.pop(s.done)
        else:
            s.ahead[lo] = hi

    def abandon(self, i: int) -> int:
        """Shard ``i`` leaves its node: fence off its chunks in flight; the inputs to send again."""
        s = self.shards[i]
        lost = sum(hi - lo for lo, hi in s.sent.items())
        s.epoch += 1
        s.resent += lost
        s.sent.clear()
        s.cursor = s.done
        s.node = None
        return lost
