"""Copies of other homes' jobs, kept by this node as their neighbour, in its ``jobs.sqlite``.

A home sends its keeper the job (spec without inputs), its inputs in slices,
every checkpoint and move, and the end (``agent/runtime/job_copies.py``).  Each record
is written here before it is acknowledged, so a copy the home was told is
safe survives a kill -9 of the keeper as well.  Rows are idempotent: the same
record sent twice (a resend after a lost ack) is kept once.  When the home is
declared dead, :meth:`CopyStore.assemble` gives back everything needed to
drive the job from here.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import numpy as np

from agent import wallclock
from agent.runtime.job_spec import JobSpec
from agent.runtime.job_journal import ChunkRow, JobJournal, JobJournalError, arrays_from_wire, pack_arrays, unpack_arrays
from mesh.jobs import Move

SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    job_id   TEXT PRIMARY KEY,
    home     TEXT NOT NULL,
    idem_key TEXT,
    created  REAL NOT NULL,
    spec     BLOB NOT NULL,
    n        INTEGER NOT NULL,
    deadline REAL NOT NULL,
    status   TEXT NOT NULL DEFAULT 'running',
    finished REAL,
    error    TEXT NOT NULL DEFAULT '',
    taken    REAL,
    told     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS copy_inputs (
    job_id TEXT NOT NULL,
    lo     INTEGER NOT NULL,
    hi     INTEGER NOT NULL,
    arrays BLOB NOT NULL,
    PRIMARY KEY (job_id, lo)
);
CREATE TABLE IF NOT EXISTS copy_chunks (
    job_id  TEXT NOT NULL,
    shard   INTEGER NOT NULL,
    lo      INTEGER NOT NULL,
    hi      INTEGER NOT NULL,
    node    TEXT NOT NULL,
    outputs BLOB NOT NULL,
    PRIMARY KEY (job_id, lo)
);
CREATE TABLE IF NOT EXISTS copy_moves (
    job_id    TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    at        REAL NOT NULL,
    src       TEXT,
    dst       TEXT NOT NULL,
    why       TEXT NOT NULL,
    resume_at INTEGER NOT NULL,
    resent    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard, at, dst)
);
"""


class CopyError(ValueError):
    """A copy record that cannot be stored as sent (damaged, or for a job this node does not keep)."""


@dataclass(frozen=True)
class CopyRow:
    job_id: str
    home: str
    status: str
    taken: float | None
    told: bool
    created: float
    inputs: int


@dataclass(frozen=True)
class Assembled:
    """A kept job put back together: what ``JobBoard.adopt`` needs to drive it here."""

    job_id: str
    home: str
    idem_key: str | None
    created: float
    spec: JobSpec
    chunks: list[ChunkRow]
    moves: list[tuple[int, Move, int]]


class CopyStore:
    """The keeper's side: one connection shared with the node's own job journal (one file, one WAL)."""

    def __init__(self, journal: JobJournal):
        self.journal = journal
        self._none_kept = False      # the last look found no copy and none was accepted since
        journal.add_schema(SCHEMA)   # created with the file, at the first write of either

    @property
    def db(self) -> sqlite3.Connection:
        return self.journal.db

    def _write(self, sql: str, args: tuple) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise JobJournalError(f"job journal {self.journal.path}: {exc}") from None

    def store(self, job_id: str, home: str, op: str, body: dict[str, Any]) -> None:
        """Keep one record from ``home`` (CopyError if it is malformed, JobJournalError if it cannot be written)."""
        try:
            if op == "accept":
                created = float(body["created"])
                self._none_kept = False
                self._write("INSERT OR IGNORE INTO copies (job_id, home, idem_key, created, spec, n, deadline) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (job_id, home, body["idem_key"], created, msgpack.packb(body["spec"]),
                             int(body["spec"]["n"]), created + float(body["spec"]["timeout_s"])))
            elif op == "inputs":
                arrays = arrays_from_wire(body["arrays"])
                self._write("INSERT OR IGNORE INTO copy_inputs (job_id, lo, hi, arrays) VALUES (?, ?, ?, ?)",
                            (job_id, int(body["lo"]), int(body["hi"]), pack_arrays(arrays)))
            elif op == "chunk":
                outputs = arrays_from_wire(body["outputs"])
                self._write("INSERT OR IGNORE INTO copy_chunks (job_id, shard, lo, hi, node, outputs) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (job_id, int(body["shard"]), int(body["lo"]),
                                                         int(body["hi"]), str(body["node"]), pack_arrays(outputs)))
            elif op == "move":
                self._write("INSERT OR IGNORE INTO copy_moves (job_id, shard, at, src, dst, why, resume_at, resent) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (job_id, int(body["shard"]), float(body["at"]), body["src"], str(body["dst"]),
                             str(body["why"]), int(body["resume_at"]), int(body["resent"])))
            elif op == "end":
                self._write("UPDATE copies SET status = ?, finished = ?, error = ? WHERE job_id = ? AND finished IS NULL",
                            (str(body["status"]), float(body["finished"]), str(body["error"]), job_id))
            elif op == "forget":
                self.forget(job_id)
            else:
                raise CopyError(f"a keeper stores no {op!r} record")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CopyError):
                raise
            raise CopyError(f"{op} record of job {job_id}: {type(exc).__name__}: {exc}") from None

    def forget(self, job_id: str) -> None:
        for table in ("copy_inputs", "copy_chunks", "copy_moves", "copies"):
            self._write(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))

    _ROW = "SELECT job_id, home, status, taken, told, created, n FROM copies"

    def row(self, job_id: str) -> CopyRow | None:
        if not self.journal.written:
            return None
        r = self.db.execute(f"{self._ROW} WHERE job_id = ?", (job_id,)).fetchone()
        return CopyRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) if r else None

    def kept(self) -> list[CopyRow]:
        """Every copy kept, oldest first.  Looked at every second by every node, and almost always
        empty: a store known to hold none answers without a query."""
        if self._none_kept or not self.journal.written:
            return []
        rows = self.db.execute(f"{self._ROW} ORDER BY created").fetchall()
        self._none_kept = not rows
        return [CopyRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def mark_taken(self, job_id: str, when: float) -> None:
        self._write("UPDATE copies SET taken = ? WHERE job_id = ?", (when, job_id))

    def mark_told(self, job_id: str) -> None:
        self._write("UPDATE copies SET told = 1 WHERE job_id = ?", (job_id,))

    def progress(self, job_id: str) -> tuple[int, int]:
        """(inputs held, inputs checkpointed) of a kept job."""
        held = self.db.execute("SELECT COALESCE(SUM(hi - lo), 0) FROM copy_inputs WHERE job_id = ?", (job_id,)).fetchone()
        done = self.db.execute("SELECT COALESCE(SUM(hi - lo), 0) FROM copy_chunks WHERE job_id = ?", (job_id,)).fetchone()
        return int(held[0]), int(done[0])

    def assemble(self, job_id: str) -> Assembled:
        """The whole job, or CopyError saying what is missing (then it cannot be taken over)."""
        r = self.db.execute("SELECT home, idem_key, created, spec FROM copies WHERE job_id = ?", (job_id,)).fetchone()
        if r is None:
            raise CopyError(f"no copy of job {job_id} here")
        home, idem_key, created, raw = r
        try:
            spec = JobSpec.from_wire(msgpack.unpackb(raw) | {"inputs": {}})
        except (KeyError, TypeError, ValueError, msgpack.ExtraData, JobJournalError) as exc:
            raise CopyError(f"job {job_id}: damaged spec in its copy ({exc})") from None
        n, at, parts = spec.n, 0, []
        for lo, hi, blob in self.db.execute("SELECT lo, hi, arrays FROM copy_inputs WHERE job_id = ? ORDER BY lo",
                                            (job_id,)).fetchall():
            if lo != at:
                raise CopyError(f"job {job_id}: inputs {at}–{lo - 1} never reached this keeper")
            parts.append(unpack_arrays(blob))
            at = hi
        if at != n or not parts:
            raise CopyError(f"job {job_id}: inputs {at}–{n - 1} never reached this keeper")
        inputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        chunks = [ChunkRow(s, lo, hi, node, unpack_arrays(o)) for s, lo, hi, node, o in self.db.execute(
            "SELECT shard, lo, hi, node, outputs FROM copy_chunks WHERE job_id = ? ORDER BY lo", (job_id,)).fetchall()]
        moves = [(s, Move(at_, src, dst, why, ra), rs) for s, at_, src, dst, why, ra, rs in self.db.execute(
            "SELECT shard, at, src, dst, why, resume_at, resent FROM copy_moves WHERE job_id = ? ORDER BY at",
            (job_id,)).fetchall()]
        return Assembled(job_id, home, idem_key, created, replace(spec, inputs=inputs), chunks, moves)

    def purge(self, retention_s: float, now: float | None = None) -> int:
        """Forget copies of jobs that ended, were taken over, or passed their deadline (a home that never
        came back, a copy that never completed) longer ago than the retention."""
        if not self.journal.written:
            return 0
        cutoff = (wallclock.now() if now is None else now) - retention_s
        old = [r[0] for r in self.db.execute(
            "SELECT job_id FROM copies WHERE (finished IS NOT NULL AND finished < ?) OR (taken IS NOT NULL AND told = 1 "
            "AND taken < ?) OR deadline < ?", (cutoff, cutoff, cutoff)).fetchall()]
        for job_id in old:
            self.forget(job_id)
        return len(old)
