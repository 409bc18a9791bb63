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
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

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
"""


class JournalError(RuntimeError):
    """The journal cannot be written (disk full, file damaged): the task is not accepted."""


class DuplicateKey(JournalError):
    """An idempotency key already recorded for another task."""


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


class Journal:
    def __init__(self, path: Path, retention_s: float = 3600.0):
        self.path = Path(path)
        self.retention_s = retention_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        self.writes = 0

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

    def by_key(self, idem_key: str) -> str | None:
        try:
            row = self.db.execute("SELECT task_id FROM tasks WHERE idem_key = ?", (idem_key,)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"task journal {self.path}: {exc}") from None
        return row[0] if row else None

    def get(self, task_id: str) -> Row | None:
        row = self.db.execute("SELECT task_id, idem_key, model, executor, placement, created, deadline, status, "
                              "request, finished, result, error FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _row(row) if row else None

    def open_tasks(self) -> list[Row]:
        """Tasks accepted but not final (what a restarted agent must finish), oldest first."""
        rows = self.db.execute("SELECT task_id, idem_key, model, executor, placement, created, deadline, status, "
                               "request, finished, result, error FROM tasks WHERE finished IS NULL "
                               "ORDER BY created").fetchall()
        return [_row(r) for r in rows]

    def purge(self, now: float | None = None) -> int:
        """Forget finished tasks older than the retention."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        cur = self.db.execute("DELETE FROM tasks WHERE finished IS NOT NULL AND finished < ?", (cutoff,))
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())

    def close(self) -> None:
        self.db.close()


def _row(r: tuple) -> Row:
    try:
        req = decode_message(r[8])
        res = decode_message(r[10]) if r[10] is not None else None
    except WireError as exc:
        raise JournalError(f"task {r[0]}: damaged journal entry ({exc})") from None
    if not isinstance(req, TaskRequest) or (res is not None and not isinstance(res, TaskResult)):
        raise JournalError(f"task {r[0]}: damaged journal entry (unexpected message types)")
    return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], req, r[9], res, r[11])
