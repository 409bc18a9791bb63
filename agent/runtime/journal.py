"""The entry node's task journal: accepted tasks and their results, on disk before anyone is told.

SQLite in WAL mode (Python's own ``sqlite3``: no service to run, one file per
agent, readers never block the writer).  A task is written when it is
accepted, before the ``202`` goes out, and again when it reaches its final
state; ``synchronous=NORMAL`` makes each commit survive a crash of the
process (kill -9), which is the failure this emulator injects; ``FULL``
would also survive a power cut, at an fsync per commit.

After a restart the agent reads back every task that was not final and
sends it again under the same id (the executor may run it twice; the client
still sees one final state).  Finished tasks are kept for
``limits.result_retention_s`` so their results can still be asked for.

A row that cannot be read back (bytes that do not decode, fields of the
wrong type, a page SQLite reports damaged) is moved to the ``quarantine``
table with the reason and counted; the other rows recover as usual, and the
task it was answers as failed with that reason (:meth:`Journal.quarantined_task`).
A file SQLite cannot read at all is moved aside (``tasks.sqlite.damaged-<time>``)
and an empty journal started, so the node comes back; that is logged and shown.
A node that has never journaled a task has no file (``agent/runtime/sqlite_file.py``):
it is created by the first write, and reads before that answer empty.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent import wallclock
from agent.runtime.sqlite_file import LazyFile, OnLazyFile
from mesh.wire import TaskRequest, TaskResult, WireError, decode_message, encode_message

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id   TEXT PRIMARY KEY,
    idem_key  TEXT UNIQUE,
    model     TEXT NOT NULL,
    executor  TEXT NOT NULL,
    placement TEXT NOT NULL DEFAULT '',
    created   REAL NOT NULL,
    deadline  REAL NOT NULL,
    status    TEXT NOT NULL,
    request   BLOB NOT NULL,
    finished  REAL,
    result    BLOB,
    error     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (status) WHERE finished IS NULL;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
CREATE TABLE IF NOT EXISTS quarantine (
    task_id     TEXT,
    idem_key    TEXT,
    quarantined REAL NOT NULL,
    reason      TEXT NOT NULL,
    created     REAL,
    row         BLOB
);
CREATE INDEX IF NOT EXISTS quarantine_task ON quarantine (task_id);
CREATE INDEX IF NOT EXISTS quarantine_key ON quarantine (idem_key);
CREATE TABLE IF NOT EXISTS replicated (
    task_id   TEXT PRIMARY KEY,
    idem_key  TEXT UNIQUE,
    model     TEXT NOT NULL,
    executors TEXT NOT NULL,
    agreement TEXT NOT NULL,
    placement TEXT NOT NULL DEFAULT '',
    created   REAL NOT NULL,
    deadline  REAL NOT NULL,
    status    TEXT NOT NULL DEFAULT 'accepted',
    finished  REAL,
    winner    TEXT,
    error     TEXT NOT NULL DEFAULT ''
);
"""

log = logging.getLogger(__name__)
COLUMNS = ("task_id, idem_key, model, executor, placement, created, deadline, status, request, finished, result, "
           "error")
STATUSES = ("accepted", "succeeded", "failed")
QUARANTINE_KEEP = 1000       # quarantined rows kept (oldest dropped): evidence, bounded


class JournalError(RuntimeError):
    """The journal cannot be written (disk full, file damaged): the task is not accepted."""


class DamagedRow(JournalError):
    """One row that cannot be read back; it is quarantined, the rest of the journal is fine."""


class DuplicateKey(JournalError):
    """An idempotency key already recorded for another task."""


@dataclass(frozen=True)
class ReplicatedRow:
    """A replicated task's parent: its replicas are the tasks ``TASK_ID.rI`` (rows of their own); its
    answer is its ``winner``'s result, kept in that replica's row."""

    task_id: str
    idem_key: str | None
    model: str
    executors: tuple[str, ...]
    agreement: str
    placement: str
    created: float
    deadline: float
    status: str
    finished: float | None
    winner: str | None
    error: str


@dataclass(frozen=True)
class Row:
    task_id: str
    idem_key: str | None
    model: str
    executor: str
    placement: str
    created: float
    deadline: float
    status: str
    request: TaskRequest
    finished: float | None
    result: TaskResult | None
    error: str


class Journal(OnLazyFile):
    def __init__(self, path: Path, retention_s: float = 3600.0):
        self.path = Path(path)
        self.retention_s = retention_s
        self.set_aside: Path | None = None     # a file SQLite could not read at all, moved here at start
        try:
            self._file = LazyFile(self.path, lambda msg: JournalError(f"task journal {msg}"))
            self._file.add_schema(SCHEMA)
            if self.path.exists():      # a past life's file: read (or set aside) now; a new one at the first write
                self._file.connection()
        except sqlite3.DatabaseError as exc:
            # Not a database any more (its header is gone): keep it for inspection and
            # start an empty journal, so that the node comes back.  Anything else (a
            # directory, no permission) is the operator's to fix: a clear error.
            if isinstance(exc, sqlite3.OperationalError) or not self.path.is_file():
                raise JournalError(f"task journal {self.path}: {exc}") from None
            self.set_aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.error("task journal %s is unreadable (%s): moved to %s, starting an empty journal; the tasks it "
                      "held are lost", self.path, exc, self.set_aside)
            self._file.close()
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.replace(Path(f"{self.set_aside}{suffix}"))
            try:
                self._file.connection()
            except sqlite3.Error as exc2:
                raise JournalError(f"task journal {self.path}: {exc2}") from None
        except sqlite3.Error as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        self.writes = 0
        self.quarantined_now = 0       # rows this process moved to the quarantine

    def _write(self, sql: str, args: tuple) -> None:
        try:
            self.db.execute(sql, args)
            self.writes += 1
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None

    def accept(self, req: TaskRequest, executor: str, placement: str, created: float,
               idem_key: str | None = None) -> None:
        """Record a task before it is acknowledged (a commit of its own)."""
        try:
            self._write("INSERT INTO tasks (task_id, idem_key, model, executor, placement, created, deadline, "
                        "status, request) VALUES (?, ?, ?, ?, ?, ?, ?, 'accepted', ?)",
                        (req.task_id, idem_key, req.model, executor, placement, created, req.deadline,
                         encode_message(req)))
        except sqlite3.IntegrityError as exc:
            raise DuplicateKey(f"task journal {self.path}: {exc}") from None

    def finish(self, task_id: str, ok: bool, finished: float, result: TaskResult | None, error: str = "") -> None:
        """Record a task's one final state; a second call changes nothing."""
        self._write("UPDATE tasks SET status = ?, finished = ?, result = ?, error = ? "
                    "WHERE task_id = ? AND finished IS NULL",
                    ("succeeded" if ok else "failed", finished, encode_message(result) if result else None, error,
                     task_id))

    # -- replicated tasks' parents (agent/runtime/replicas.py) ----------------------------------------------

    def accept_replicated(self, task_id: str, idem_key: str | None, model: str, executors: list[str],
                          agreement: str, placement: str, created: float, deadline: float) -> None:
        """Record a replicated task before its replicas (and before it is acknowledged)."""
        try:
            self._write("INSERT INTO replicated (task_id, idem_key, model, executors, agreement, placement, created, "
                        "deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (task_id, idem_key, model, ",".join(executors), agreement, placement, created, deadline))
        except sqlite3.IntegrityError as exc:
            raise DuplicateKey(f"task journal {self.path}: {exc}") from None

    def finish_replicated(self, task_id: str, ok: bool, finished: float, winner: str | None, error: str = "") -> None:
        self._write("UPDATE replicated SET status = ?, finished = ?, winner = ?, error = ? "
                    "WHERE task_id = ? AND finished IS NULL",
                    ("succeeded" if ok else "failed", finished, winner, error, task_id))

    _REPLICATED = ("SELECT task_id, idem_key, model, executors, agreement, placement, created, deadline, status, "
                   "finished, winner, error FROM replicated")

    def replicated(self, task_id: str) -> ReplicatedRow | None:
        if not self.written:
            return None
        try:
            r = self.db.execute(f"{self._REPLICATED} WHERE task_id = ?", (task_id,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        return _replicated_row(r) if r else None

    def open_replicated(self) -> list[ReplicatedRow]:
        if not self.written:
            return []
        try:
            rows = self.db.execute(f"{self._REPLICATED} WHERE finished IS NULL ORDER BY created").fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        return [_replicated_row(r) for r in rows]

    def by_key(self, idem_key: str) -> str | None:
        """The task an idempotency key names (a replicated task's parent, or a quarantined one included:
        a retry with the key gets that task's failure, not a second task)."""
        if not self.written:
            return None
        try:
            row = self.db.execute("SELECT task_id FROM tasks WHERE idem_key = ?", (idem_key,)).fetchone() or \
                self.db.execute("SELECT task_id FROM replicated WHERE idem_key = ?", (idem_key,)).fetchone() or \
                self.db.execute("SELECT task_id FROM quarantine WHERE idem_key = ? ORDER BY rowid DESC",
                                (idem_key,)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        return row[0] if row else None

    def get(self, task_id: str) -> Row | None:
        """The task's row; None if unknown, or if it was damaged (then quarantined here)."""
        if not self.written:
            return None
        try:
            row = self.db.execute(f"SELECT rowid, {COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        if row is None:
            return None
        try:
            return _row(row[1:])
        except DamagedRow as exc:
            self._quarantine(row[0], str(exc))
            return None

    def open_tasks(self) -> list[Row]:
        """Tasks accepted but not final (what a restarted agent must finish), oldest first.

        Row by row: a damaged one is quarantined (:meth:`quarantined`) and the
        others come back; only a journal SQLite cannot read at all is an error."""
        if not self.written:
            return []
        try:
            ids = [r[0] for r in self.db.execute("SELECT rowid FROM tasks WHERE finished IS NULL ORDER BY created")]
        except sqlite3.DatabaseError:
            try:       # the index may be what is damaged: scan the table itself
                ids = [r[0] for r in self.db.execute("SELECT rowid FROM tasks NOT INDEXED")]
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"task journal {self.path}: {exc}") from None
        out = []
        for rowid in ids:
            try:
                r = self.db.execute(f"SELECT {COLUMNS} FROM tasks WHERE rowid = ?", (rowid,)).fetchone()
                if r is None or r[9] is not None:
                    continue
                out.append(_row(r))
            except (sqlite3.DatabaseError, DamagedRow) as exc:
                self._quarantine(rowid, str(exc))
        out.sort(key=lambda row: row.created)
        return out

    def _quarantine(self, rowid: int, reason: str) -> None:
        """Move one unreadable row out of ``tasks``, with what can still be read of it."""
        task_id, key, created, raw = None, None, None, None
        try:
            task_id, key, created = self.db.execute(
                "SELECT CAST(task_id AS TEXT), CAST(idem_key AS TEXT), created FROM tasks WHERE rowid = ?",
                (rowid,)).fetchone() or (None, None, None)
            raw = self.db.execute("SELECT request FROM tasks WHERE rowid = ?", (rowid,)).fetchone()
            raw = raw[0] if raw else None
        except sqlite3.DatabaseError:
            pass
        if not isinstance(created, (int, float)):
            created = None
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO quarantine (task_id, idem_key, quarantined, reason, created, row) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (task_id if isinstance(task_id, str) else f"rowid {rowid}", key, wallclock.now(), reason,
                             created, raw if isinstance(raw, bytes) else None))
            self.db.execute("DELETE FROM tasks WHERE rowid = ?", (rowid,))
            self.db.execute("DELETE FROM quarantine WHERE rowid NOT IN "
                            "(SELECT rowid FROM quarantine ORDER BY rowid DESC LIMIT ?)", (QUARANTINE_KEEP,))
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            log.error("task journal %s: row %d is damaged (%s) and could not be quarantined: %s",
                      self.path, rowid, reason, exc)
            return
        self.quarantined_now += 1
        log.error("task journal %s: quarantined %s: %s", self.path, task_id or f"row {rowid}", reason)

    def quarantined(self) -> int:
        """Rows in the quarantine (kept across restarts, the newest QUARANTINE_KEEP)."""
        if not self.written:
            return 0
        try:
            return self.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        except sqlite3.DatabaseError:
            return -1

    def quarantined_task(self, task_id: str) -> tuple[str, float | None] | None:
        """(reason, created) if ``task_id``'s row was quarantined, else None."""
        if not self.written:
            return None
        try:
            row = self.db.execute("SELECT reason, created FROM quarantine WHERE task_id = ? ORDER BY rowid DESC",
                                  (task_id,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return (row[0], row[1]) if row else None

    def quarantine_listing(self, limit: int = 20) -> list[dict]:
        if not self.written:
            return []
        try:
            rows = self.db.execute("SELECT task_id, quarantined, reason FROM quarantine ORDER BY rowid DESC LIMIT ?",
                                   (limit,)).fetchall()
        except sqlite3.DatabaseError:
            return []
        return [{"task_id": t, "quarantined": q, "reason": r} for t, q, r in rows]

    def purge(self, now: float | None = None) -> int:
        """Forget finished tasks older than the retention."""
        if not self.written:
            return 0
        cutoff = (wallclock.now() if now is None else now) - self.retention_s
        cur = self.db.execute("DELETE FROM tasks WHERE finished IS NOT NULL AND finished < ?", (cutoff,))
        self.db.execute("DELETE FROM replicated WHERE finished IS NOT NULL AND finished < ?", (cutoff,))
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        if not self.written:
            return {}
        return dict(self.db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())

    def close(self) -> None:
        self._file.close()


def _replicated_row(r: tuple) -> ReplicatedRow:
    return ReplicatedRow(r[0], r[1], r[2], tuple(r[3].split(",")), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])


def _row(r: tuple) -> Row:
    """A row read back, every field checked (DamagedRow says which is wrong)."""
    def damaged(why: str) -> DamagedRow:
        return DamagedRow(f"task {r[0]!r}: damaged journal entry ({why})")

    if not isinstance(r[8], bytes) or (r[10] is not None and not isinstance(r[10], bytes)):
        raise damaged("request or result is not a blob")
    try:
        req = decode_message(r[8])
        res = decode_message(r[10]) if r[10] is not None else None
    except (WireError, ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise damaged(str(exc) or type(exc).__name__) from None
    if not isinstance(req, TaskRequest) or (res is not None and not isinstance(res, TaskResult)):
        raise damaged("unexpected message types")
    if not all(isinstance(v, str) for v in (r[0], r[2], r[3], r[4], r[7], r[11])) or r[7] not in STATUSES:
        raise damaged("text fields of the wrong type, or an unknown status")
    if r[1] is not None and not isinstance(r[1], str):
        raise damaged("idempotency key of the wrong type")
    times = (r[5], r[6]) + ((r[9],) if r[9] is not None else ())
    if not all(isinstance(t, (int, float)) and math.isfinite(t) for t in times):
        raise damaged("times that are not finite numbers")
    if req.task_id != r[0]:
        raise damaged(f"its request names task {req.task_id!r}")
    return Row(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), r[7], req, r[9], res, r[11])
