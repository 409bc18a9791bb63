"""The job home's journal: each job's spec when accepted, each checkpoint as it comes home.

A separate SQLite file (``jobs.sqlite``) beside the task journal, in WAL mode
with ``synchronous=NORMAL`` like it: a commit survives a kill -9 of the agent.
A job is written before its ``202``; each chunk that comes home (its outputs; for a
stateful step the state after it is its last carried output) is one row, written before the
plan counts it, so after a restart the job resumes from exactly the
checkpoints it had, and no input's output is kept twice (the chunk rows are
keyed by the shard and the first input they cover).  Moves are kept too, so
``status`` still tells the story after a restart.  Finished jobs are purged
after the same retention as tasks.  The file is created by the first write
(``agent/runtime/sqlite_file.py``): most nodes are never a job's home or keeper.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np

from agent import wallclock
from agent.runtime.sqlite_file import LazyFile, OnLazyFile
from mesh.jobs import Move
from mesh.wire import Tensor, WireError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id   TEXT PRIMARY KEY,
    idem_key TEXT UNIQUE,
    created  REAL NOT NULL,
    spec     BLOB NOT NULL,
    status   TEXT NOT NULL,
    finished REAL,
    error    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id  TEXT NOT NULL,
    shard   INTEGER NOT NULL,
    lo      INTEGER NOT NULL,
    hi      INTEGER NOT NULL,
    node    TEXT NOT NULL,
    outputs BLOB NOT NULL,
    PRIMARY KEY (job_id, lo)
);
CREATE TABLE IF NOT EXISTS moves (
    job_id    TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    at        REAL NOT NULL,
    src       TEXT,
    dst       TEXT NOT NULL,
    why       TEXT NOT NULL,
    resume_at INTEGER NOT NULL,
    resent    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS moves_job ON moves (job_id);
"""


class JobJournalError(RuntimeError):
    """The job journal cannot be written or read back."""


def arrays_to_wire(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    """Arrays as msgpack-able ``[dtype, shape, bytes]`` (the wire's tensor form)."""
    return {k: [t.dtype, list(t.shape), t.data] for k, t in ((k, Tensor.from_array(v)) for k, v in arrays.items())}


def arrays_from_wire(raw: dict[str, list]) -> dict[str, np.ndarray]:
    """The inverse of :func:`arrays_to_wire`, each tensor checked (JobJournalError if damaged)."""
    try:
        return {k: Tensor(d, tuple(s), b).to_array() for k, (d, s, b) in raw.items()}
    except (ValueError, TypeError, WireError) as exc:
        raise JobJournalError(f"damaged tensors in the job journal: {exc}") from None


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    return msgpack.packb(arrays_to_wire(arrays))


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    try:
        raw = msgpack.unpackb(blob)
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise JobJournalError(f"damaged tensors in the job journal: {exc}") from None
    if not isinstance(raw, dict):
        raise JobJournalError("damaged tensors in the job journal: not a map")
    return arrays_from_wire(raw)


@dataclass(frozen=True)
class JobRow:
    job_id: str
    idem_key: str | None
    created: float
    spec: dict[str, Any]
    status: str
    finished: float | None
    error: str


@dataclass(frozen=True)
class ChunkRow:
    shard: int
    lo: int
    hi: int
    node: str
    outputs: dict[str, np.ndarray]


class JobJournal(OnLazyFile):
    def __init__(self, path: Path, retention_s: float = 3600.0):
        self.path = Path(path)
        self.retention_s = retention_s
        try:
            self._file = LazyFile(self.path, lambda msg: JobJournalError(f"job journal {msg}"))
            self._file.add_schema(SCHEMA)
            if self.path.exists():      # a past life's jobs: opened now; a new file at the first write
                self._file.connection()
        except sqlite3.Error as exc:
            raise JobJournalError(f"job journal {self.path}: {exc}") from None

    def add_schema(self, schema: str) -> None:
        """Another part's tables in this file (the copies a keeper holds: ``agent/runtime/job_copy_store.py``)."""
        try:
            self._file.add_schema(schema)
        except sqlite3.Error as exc:
            raise JobJournalError(f"job journal {self.path}: {exc}") from None

    def _write(self, sql: str, args: tuple) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise JobJournalError(f"job journal {self.path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes as one: all of them, or (on any error) none."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JobJournalError(f"job journal {self.path}: {exc}") from None
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            raise JobJournalError(f"job journal {self.path}: {exc}") from None

    def accept(self, job_id: str, idem_key: str | None, created: float, spec: dict[str, Any]) -> None:
        self._write("INSERT INTO jobs (job_id, idem_key, created, spec, status) VALUES (?, ?, ?, ?, 'running')",
                    (job_id, idem_key, created, msgpack.packb(spec)))

    def checkpoint(self, job_id: str, shard: int, lo: int, hi: int, node: str, outputs: dict[str, np.ndarray]) -> None:
        """A chunk's outputs (a stateful step's state after it is its last carried output)."""
        self._write("INSERT OR IGNORE INTO chunks (job_id, shard, lo, hi, node, outputs) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, shard, lo, hi, node, pack_arrays(outputs)))

    def move(self, job_id: str, shard: int, move: Move, resent: int = 0) -> None:
        """A shard placed; ``resent``: the shard's inputs sent again so far (kept across a restart)."""
        self._write("INSERT INTO moves (job_id, shard, at, src, dst, why, resume_at, resent) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, shard, move.at, move.src, move.dst, move.why, move.resume_at, resent))

    def finish(self, job_id: str, status: str, finished: float, error: str = "") -> None:
        self._write("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE job_id = ? AND finished IS NULL",
                    (status, finished, error, job_id))

    def by_key(self, idem_key: str) -> str | None:
        if not self.written:
            return None
        row = self.db.execute("SELECT job_id FROM jobs WHERE idem_key = ?", (idem_key,)).fetchone()
        return row[0] if row else None

    def job(self, job_id: str) -> JobRow | None:
        if not self.written:
            return None
        row = self.db.execute("SELECT job_id, idem_key, created, spec, status, finished, error FROM jobs "
                              "WHERE job_id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def open_jobs(self) -> list[JobRow]:
        if not self.written:
            return []
        rows = self.db.execute("SELECT job_id, idem_key, created, spec, status, finished, error FROM jobs "
                               "WHERE finished IS NULL ORDER BY created").fetchall()
        return [self._job(r) for r in rows]

    def chunks(self, job_id: str) -> list[ChunkRow]:
        if not self.written:
            return []
        rows = self.db.execute("SELECT shard, lo, hi, node, outputs FROM chunks WHERE job_id = ? "
                               "ORDER BY lo", (job_id,)).fetchall()
        return [ChunkRow(s, lo, hi, node, unpack_arrays(o)) for s, lo, hi, node, o in rows]

    def moves(self, job_id: str) -> list[tuple[int, Move, int]]:
        """(shard, move, the shard's resent count then), in order."""
        if not self.written:
            return []
        rows = self.db.execute("SELECT shard, at, src, dst, why, resume_at, resent FROM moves WHERE job_id = ? "
                               "ORDER BY rowid", (job_id,)).fetchall()
        return [(s, Move(at, src, dst, why, r), n) for s, at, src, dst, why, r, n in rows]

    def purge(self, now: float | None = None) -> int:
        """Forget finished jobs (and their checkpoints and moves) older than the retention."""
        if not self.written:
            return 0
        cutoff = (wallclock.now() if now is None else now) - self.retention_s
        old = [r[0] for r in self.db.execute("SELECT job_id FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                                             (cutoff,)).fetchall()]
        for job_id in old:
            for table in ("chunks", "moves", "jobs"):
                self.db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
        return len(old)

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def _job(r: tuple) -> JobRow:
        try:
            spec = msgpack.unpackb(r[3])
        except (ValueError, TypeError, msgpack.ExtraData) as exc:
            raise JobJournalError(f"job {r[0]!r}: damaged spec in the journal ({exc})") from None
        if not isinstance(spec, dict):
            raise JobJournalError(f"job {r[0]!r}: damaged spec in the journal (not a map)")
        return JobRow(r[0], r[1], r[2], spec, r[4], r[5], r[6])
