"""The on-disk half of the model store: model bytes by SHA-256, names pointing at versions, retention.

Layout under the store's directory::

    blobs/<sha256>.onnx     the bytes, written once (atomically, fsynced), named by their digest
    names/<name>.json       {"sha256": current, "size": …, "versions": [current, older, …]}

A name's re-upload points it at the new blob and keeps the older digests in
``versions``; the newest ``keep_versions`` of every name are kept, older ones
are removed when they drop out of that list.  Blobs no name points at were
fetched over the mesh for a task (addressed by digest only: a task never re-points a local name, see
``ModelStore.put_version``); the ``keep_fetched`` most recently used of those
are kept.  Collection runs after every write.  Whatever reads a blob back
checks its bytes against the digest in its name (:func:`read_verified`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from agent import wallclock
from agent.atomic import fsync_dir, write_atomic

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3            # versions kept per name (the current one included)
KEEP_FETCHED = 16            # blobs fetched for tasks, not named here, kept (most recently used)
STALE_TMP_S = 600.0          # a temporary file this old was left by a crash: removed
SHA_RE = re.compile(r"[0-9a-f]{64}")


class DigestMismatch(ValueError):
    """Bytes read back from disk that do not hash to the digest they are stored under."""


def read_verified(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, checked against ``sha256`` (when one is recorded)."""
    data = path.read_bytes()
    if sha256:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise DigestMismatch(f"{path} hashes to {got}, not the recorded {sha256}: damaged on disk")
    return data


class BlobStore:
    def __init__(self, root: Path, keep_versions: int = KEEP_VERSIONS, keep_fetched: int = KEEP_FETCHED):
        if keep_versions < 1 or keep_fetched < 0:
            raise ValueError("model retention: keep_versions must be ≥ 1 and keep_fetched ≥ 0")
        self.root = Path(root)
        self.blobs, self.names_dir = self.root / "blobs", self.root / "names"
        self.keep_versions = keep_versions
        self.keep_fetched = keep_fetched
        self.collected = 0                      # blobs removed by retention so far
        self._lock = threading.Lock()           # name updates and collection (puts run in worker threads)

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / f"{sha256}.onnx"

    def has_blob(self, sha256: str) -> bool:
        return bool(SHA_RE.fullmatch(sha256 or "")) and self.blob_path(sha256).is_file()

    def ref(self, name: str) -> dict | None:
        """What ``names/<name>.json`` says, or None (missing or unreadable)."""
        try:
            ref = json.loads((self.names_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(ref, dict) or not SHA_RE.fullmatch(str(ref.get("sha256", ""))):
            return None
        versions = ref.get("versions")
        ref["versions"] = [v for v in versions if isinstance(v, str) and SHA_RE.fullmatch(v)] \
            if isinstance(versions, list) else [ref["sha256"]]
        return ref

    def current(self, name: str) -> str | None:
        ref = self.ref(name)
        return ref["sha256"] if ref else None

    def names(self) -> list[str]:
        if not self.names_dir.is_dir():
            return []
        return sorted(p.stem for p in self.names_dir.glob("*.json"))

    def store(self, sha256: str, data: bytes, name: str | None = None, if_unnamed: bool = False) -> list[str]:
        """Write ``data`` (hashed to ``sha256`` by the caller) and, with ``name``, make
        the name mean it (see :meth:`point`); the digests collected.  One lock around
        the write, the name and the collection: a concurrent upload cannot collect a
        blob between its write and the name that keeps it."""
        with self._lock:
            self._write_blob(sha256, data)
            if name is None:
                return self._collect()
            return self._point(name, sha256, len(data), if_unnamed)

    def _write_blob(self, sha256: str, data: bytes) -> None:
        """Store ``data`` unless an intact copy is there."""
        path = self.blob_path(sha256)
        try:
            read_verified(path, sha256)
            os.utime(path)                      # in use again: retention counts from now
            return
        except (OSError, DigestMismatch):
            pass                                # absent, or damaged: (re)write it
        write_atomic(path, data)

    def _point(self, name: str, sha256: str, size: int, if_unnamed: bool = False) -> list[str]:
        """Make ``name`` mean ``sha256`` (its blob written already; lock held).
        ``if_unnamed``: only if ``name`` means nothing here yet."""
        old = self.ref(name)
        if if_unnamed and old is not None:
            return self._collect()
        versions = [sha256] + [v for v in (old["versions"] if old else []) if v != sha256]
        write_atomic(self.names_dir / f"{name}.json",
                     json.dumps({"sha256": sha256, "size": size, "versions": versions[:self.keep_versions]}))
        return self._collect(dropped=set(versions[self.keep_versions:]) - {sha256})

    def collect(self) -> list[str]:
        with self._lock:
            return self._collect()

    def _collect(self, dropped: set[str] = frozenset()) -> list[str]:
        """Remove the versions a name just ``dropped`` (unless another name keeps them) and
        unnamed blobs (fetched for tasks) beyond the ``keep_fetched`` most recently used."""
        if not self.blobs.is_dir():
            return []
        live: set[str] = set()
        for name in self.names():
            ref = self.ref(name)
            if ref is None:
                continue                        # unreadable: keep everything rather than guess
            live.update(ref["versions"][:self.keep_versions])
            live.add(ref["sha256"])
        unnamed, removed = [], []
        now = wallclock.now()
        for p in self.blobs.iterdir():
            if p.name.startswith("."):
                if p.name.endswith(".tmp") and now - _mtime(p) > STALE_TMP_S:
                    p.unlink(missing_ok=True)
                continue
            if p.suffix == ".onnx" and p.stem not in live:
                unnamed.append(p)
        gone = [p for p in unnamed if p.stem in dropped]
        fetched = sorted((p for p in unnamed if p.stem not in dropped), key=_mtime, reverse=True)
        for p in gone + fetched[self.keep_fetched:]:
            p.unlink(missing_ok=True)
            removed.append(p.stem)
        if removed:
            fsync_dir(self.blobs)
            self.collected += len(removed)
            log.info("model store: removed %d old version(s): %s", len(removed),
                     ", ".join(r[:12] for r in removed))
        return removed


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
