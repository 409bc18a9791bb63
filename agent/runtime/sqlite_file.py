"""A journal's SQLite file, opened at its first write: a node that never journals holds no file.

Both journals (tasks, jobs) are WAL files with ``synchronous=NORMAL``: a commit
survives a kill -9 of the agent.  An open WAL database holds three files (the
database, its ``-wal`` and ``-shm``), so two journals per node opened at start
cost six open files per node: 26,000 for starlink-gen1's 4,414 nodes in one
process, past the 20,000 a process may hold here, for journals almost none of
them write.  Opened on the first write instead, a relay that is never a task's
entry or a job's home or keeper opens none.  Reads of a journal never written
answer empty without creating it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable


def connect(path: Path, schemas: list[str]) -> sqlite3.Connection:
    """The file at ``path`` (created if new) in WAL mode with every schema applied."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for schema in schemas:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


class LazyFile:
    """One journal's connection: made when first needed, or at once if its file is there already."""

    def __init__(self, path: Path, error: Callable[[str], Exception]):
        """``error``: the journal's own error, made from a message (what ``open`` raises)."""
        self.path = Path(path)
        self.error = error
        self.schemas: list[str] = []
        self.db: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() and not os.access(self.path.parent, os.W_OK | os.X_OK):
            # the error a start-up open gave: at start, not at the first task
            raise sqlite3.OperationalError(f"cannot create a file in {self.path.parent}")

    @property
    def written(self) -> bool:
        """Whether the journal has a file to read (one never written holds nothing).  Its owner
        opens a file that is there at start, and only this object creates one, so an open
        connection says it; no look at the disk (the copies' look asks every second per node)."""
        return self.db is not None

    def connection(self) -> sqlite3.Connection:
        """The open connection, made (and the file created) on the first call."""
        if self.db is None:
            self.db = connect(self.path, self.schemas)
        return self.db

    def open(self) -> sqlite3.Connection:
        """``connection()``, with SQLite's errors as the journal's own."""
        try:
            return self.connection()
        except sqlite3.Error as exc:
            raise self.error(f"{self.path}: {exc}") from None

    def add_schema(self, schema: str) -> None:
        """Tables another part keeps in this file (created now if it is open, else when it opens)."""
        self.schemas.append(schema)
        if self.db is not None:
            self.db.executescript(schema)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class OnLazyFile:
    """A journal kept in a ``LazyFile`` (its ``_file``): the connection and whether it has a file."""

    _file: LazyFile

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; the file is created by the first use."""
        return self._file.open()

    @property
    def written(self) -> bool:
        return self._file.written
