"""One way to replace a file on disk so that a crash leaves the old file or the new one, never half of either.

Write a temporary file in the same directory under a name no other writer
shares (process id and a random part: two concurrent writers of one path
never write into each other's temporary file), fsync it, rename it over the
target, then fsync the directory so the rename itself survives a power cut.
A failure removes the temporary file and re-raises.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8); parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path | str) -> None:
    """Make a rename or an unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass          # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
