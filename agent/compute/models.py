"""The models a node can run: ONNX files in a directory, with their signatures.

The signature comes from onnxruntime's own view of the graph, so a user's
model needs no manifest to be checked; the zoo's manifests add descriptions
and sample inputs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from agent.compute.blobstore import KEEP_FETCHED, KEEP_VERSIONS, BlobStore, DigestMismatch, read_verified
from agent.compute.model_check import ModelCheckError, check_model
from agent.compute.ort_limits import cap_session
from agent.compute.tensors import ORT_TYPES, TensorSpec

log = logging.getLogger(__name__)


class ModelError(LookupError):
    """Unknown model, or a model file that onnxruntime cannot load."""


@dataclass
class LoadedModel:
    name: str
    path: Path
    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    manifest: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None     # the digest its bytes were checked against when loaded

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "inputs": [s.describe() for s in self.inputs],
                "outputs": [s.describe() for s in self.outputs],
                "description": self.manifest.get("description", ""),
                "sha256": self.manifest.get("sha256")}


def _specs(args: list[Any], path: Path) -> list[TensorSpec]:
    specs = []
    for a in args:
        dtype = ORT_TYPES.get(a.type)
        if dtype is None:
            raise ModelError(f"{path.name}: {a.name!r} has type {a.type}, which orbitmesh cannot carry")
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in a.shape)
        specs.append(TensorSpec(a.name, dtype, shape))
    return specs


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread per session: many agents share few cores, and the
    executor's worker pool, not onnxruntime, decides how much runs at once."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


# Models up to this size are loaded and warmed before an agent reports ready;
# larger ones (a 40 MB U-Net, an embedding model) load on first use, in a
# worker thread, so 24 agents on one machine don't each hold every model.
PRELOAD_MAX_BYTES = 8 * 1024 * 1024


MAX_MODEL_BYTES = 64 * 1024 * 1024      # an uploaded model; the zoo's largest is 40 MB
# Sessions kept loaded per agent: 24 agents × 1 GiB fit this 24 GiB machine with
# room to run; beyond it the least recently used session is dropped.
SESSION_BUDGET_BYTES = 1 << 30
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def bad_name(name: object) -> str | None:
    """Why ``name`` cannot name a model, or None: every entry point (upload, task,
    KServe HTTP and gRPC) asks this before any lookup."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return None
    return (f"model name {name!r}: use 1–64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")


class _Listing:
    """The stems of a directory's files matching ``pattern``, listed again only when the directory
    changed: a node's state chore asks for its models every second (a glob each time was ~0.1 ms,
    ~2% of an idle satellite). Adding, removing or renaming a file moves the directory's mtime;
    a listing is kept only once that mtime is ``SETTLE_S`` old, so two changes within one tick
    of the file system's clock cannot hide behind one mtime."""

    SETTLE_S = 1.0

    def __init__(self, directory: Path, pattern: str):
        self.directory, self.pattern = directory, pattern
        self._key: tuple[int, int, int] | None = None
        self._names: tuple[str, ...] = ()
        self.listed = 0                      # globs run (tests)

    def names(self) -> list[str]:
        try:
            st = os.stat(self.directory)
        except OSError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        key = (st.st_mtime_ns, st.st_ino, st.st_dev)
        if key == self._key:
            return list(self._names)
        names = sorted(p.stem for p in self.directory.glob(self.pattern))
        self.listed += 1
        settled = time.time() - st.st_mtime_ns / 1e9 > self.SETTLE_S
        self._key, self._names = (key, tuple(names)) if settled else (None, ())
        return names


class UploadError(ValueError):
    """A model upload refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def version_key(name: str, sha256: str) -> str:
    """How a task names one version of a model: ``name@sha256`` (see :meth:`ModelStore.key`)."""
    return f"{name}@{sha256}"


class ModelStore:
    """Loads models lazily and caches the sessions; every load re-hashes the bytes it reads.

    Two sources: the zoo directory (built, read-only) and, when ``uploads`` is
    given, a content-addressed store of users' models (:class:`agent.compute.blobstore.BlobStore`:
    blobs by digest, names pointing at versions, retention).  A name
    re-uploaded with other content points at the new blob; the zoo's names
    cannot be replaced.  A task names its model *and* digest (the entry
    resolves the name); an executor whose own model of that name is another
    version runs the task's version, fetched and kept by digest, and its own
    name keeps meaning what it meant.
    """

    def __init__(self, directory: Path, preload_max_bytes: int = PRELOAD_MAX_BYTES, *, uploads: Path | None = None,
                 max_model_bytes: int = MAX_MODEL_BYTES, session_budget_bytes: int = SESSION_BUDGET_BYTES,
                 keep_versions: int = KEEP_VERSIONS, keep_fetched: int = KEEP_FETCHED):
        self.directory = Path(directory)
        self.uploads = Path(uploads) if uploads is not None else None
        self.blobs = BlobStore(self.uploads, keep_versions, keep_fetched) if self.uploads is not None else None
        self.max_model_bytes = max_model_bytes
        self.preload_max_bytes = preload_max_bytes
        self.session_budget_bytes = session_budget_bytes
        self._sha: dict[str, str] = {}
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()   # LRU first
        self.session_bytes: dict[str, int] = {}  # what each session costs in memory (measured at load)
        self.evictions = 0
        self.load_s: dict[str, float] = {}      # how long each session took to create here
        self.damaged: dict[str, str] = {}       # model key -> why its bytes were refused at load (digest mismatch)
        self._lock = threading.Lock()  # sessions are created from worker threads
        self._zoo = _Listing(self.directory, "*.onnx")
        self._uploaded = _Listing(self.blobs.names_dir, "*.json") if self.blobs is not None else None

    def zoo_names(self) -> list[str]:
        return self._zoo.names()

    def uploaded_names(self) -> list[str]:
        """Names uploaded here (``BlobStore.names``, without a glob while nothing changed)."""
        return self._uploaded.names() if self._uploaded is not None else []

    def names(self) -> list[str]:
        return sorted(set(self.zoo_names()) | set(self.uploaded_names()))

    def path_of(self, name: str) -> Path | None:
        """The ONNX file behind a name, or None."""
        if not NAME_RE.fullmatch(name or ""):
            return None
        zoo = self.directory / f"{name}.onnx"
        if zoo.is_file():
            return zoo
        if self.blobs is not None:
            sha = self.blobs.current(name)
            blob = self.blobs.blob_path(sha) if sha else None
            return blob if blob is not None and blob.is_file() else None
        return None

    def _zoo_sha(self, name: str) -> str | None:
        """The digest the zoo's manifest records (checked by tests/test_zoo.py), or None."""
        try:
            sha = json.loads((self.directory / f"{name}.json").read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return sha if isinstance(sha, str) and SHA_RE.fullmatch(sha) else None

    def sha256(self, name: str) -> str:
        """Content hash of a model (cached; uploaded blobs are named by it)."""
        path = self.path_of(name)
        if path is None:
            raise ModelError(f"unknown model {name!r}")
        if path.parent.name == "blobs":
            return path.stem
        key = f"{name}:{path.stat().st_mtime_ns}"
        if key not in self._sha:
            self._sha[key] = self._zoo_sha(name) or hashlib.sha256(path.read_bytes()).hexdigest()
        return self._sha[key]

    def has(self, name: str, sha256: str | None = None) -> bool:
        """Whether ``name`` is here and (with ``sha256``) means that version.

        A session loaded under the name answers without touching the disk: it is the
        name's version until ``put`` or ``unload`` drops it (every inference asks, up
        to three times; each look on disk is several stat calls on the event loop)."""
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.sha256 and (not sha256 or loaded.sha256 == sha256):
            return True
        if self.path_of(name) is None:
            return False
        return sha256 is None or not sha256 or self.sha256(name) == sha256

    def has_version(self, name: str, sha256: str) -> bool:
        """Whether this node can run ``name`` at ``sha256``: its own name means it, or the blob is here."""
        if self.has(name, sha256):
            return True
        return bool(NAME_RE.fullmatch(name or "")) and self.blobs is not None and self.blobs.has_blob(sha256)

    def key(self, name: str, sha256: str | None) -> str:
        """The key to load (``get``) and run a task's model by: the name when it means
        ``sha256`` here (or no digest is given), else ``name@sha256``."""
        if not sha256 or self.has(name, sha256):
            return name
        return version_key(name, sha256)

    def _locate(self, key: str) -> tuple[str, Path | None, str | None]:
        """(name, file, digest its bytes must have) for a key from :meth:`key`."""
        name, _, sha = key.partition("@")
        if not sha:
            path = self.path_of(name)
            if path is None:
                return name, None, None
            return name, path, path.stem if path.parent.name == "blobs" else self._zoo_sha(name)
        if not NAME_RE.fullmatch(name) or not SHA_RE.fullmatch(sha):
            return name, None, None
        if self.has(name, sha):
            return name, self.path_of(name), sha
        if self.blobs is not None and self.blobs.has_blob(sha):
            return name, self.blobs.blob_path(sha), sha
        return name, None, None

    def version_path(self, name: str, sha256: str) -> Path | None:
        """The file holding ``name`` at ``sha256`` (what a holder serves over the mesh), or None."""
        return self._locate(version_key(name, sha256))[1] if sha256 else self.path_of(name)

    def read(self, name: str) -> bytes:
        path = self.path_of(name)
        if path is None:
            raise ModelError(f"unknown model {name!r}")
        return path.read_bytes()

    def _validate(self, name: str, data: bytes, expect_sha256: str | None,
                  replacing: bool = False) -> tuple[str, list[TensorSpec], list[TensorSpec]]:
        """(digest, inputs, outputs) of a model that passes every upload check; UploadError otherwise."""
        if self.uploads is None:
            raise UploadError(503, "this node has no model store for uploads")
        if bad_name(name):
            raise UploadError(400, bad_name(name))
        if replacing and (self.directory / f"{name}.onnx").is_file():
            raise UploadError(409, f"{name!r} is a zoo model and cannot be replaced; upload under another name")
        if len(data) > self.max_model_bytes:
            raise UploadError(413, f"model of {len(data)} bytes exceeds the {self.max_model_bytes}-byte limit")
        if not data:
            raise UploadError(400, "empty model")
        sha = hashlib.sha256(data).hexdigest()
        if expect_sha256 is not None and expect_sha256.lower() != sha:
            raise UploadError(400, f"sha256 mismatch: expected {expect_sha256.lower()}, the body hashes to {sha}")
        try:    # before onnxruntime loads it: loading folds constants, in this process
            check_model(data)
        except ModelCheckError as exc:
            raise UploadError(400, str(exc)) from None
        try:
            session = ort.InferenceSession(data, sess_options=cap_session(session_options()),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception hierarchy
            raise UploadError(400, f"not a loadable ONNX model: {str(exc).splitlines()[0][:300]}") from None
        try:
            return sha, _specs(session.get_inputs(), Path(name)), _specs(session.get_outputs(), Path(name))
        except ModelError as exc:
            raise UploadError(400, str(exc)) from None

    def put(self, name: str, data: bytes, expect_sha256: str | None = None) -> dict[str, Any]:
        """Validate and store a model under ``name``; UploadError with a status and reason.

        Checks, in order: the name, the size limit, the hash the client
        expects, and that onnxruntime can load it with tensor types the wire
        carries.  Nothing is written unless all pass.  The name's older
        versions beyond the store's ``keep_versions`` are removed.
        """
        sha, inputs, outputs = self._validate(name, data, expect_sha256, replacing=True)
        assert self.blobs is not None
        self.blobs.store(sha, data, name)
        with self._lock:
            self._loaded.pop(name, None)      # a new version replaces the old session
        return {"name": name, "sha256": sha, "size": len(data),
                "inputs": [x.describe() for x in inputs], "outputs": [x.describe() for x in outputs]}

    def put_version(self, name: str, data: bytes, sha256: str) -> None:
        """Keep a version fetched over the mesh for a task, by its digest: a name this node
        does not use yet comes to mean it, but whatever ``name`` already means here (a zoo
        model, a local upload) stays as it is (UploadError as for ``put``)."""
        if self.has(name, sha256):
            return
        self._validate(name, data, sha256)
        assert self.blobs is not None
        here = self._zoo_sha(name) if (self.directory / f"{name}.onnx").is_file() else self.blobs.current(name)
        if here is not None:
            log.info("model %r %s… kept by digest for a task; %r here stays %s…", name, sha256[:12], name,
                     here[:12])
            self.blobs.store(sha256, data)
        else:
            self.blobs.store(sha256, data, name, if_unnamed=True)

    def preloadable(self) -> list[str]:
        return [n for n in self.zoo_names() if (self.directory / f"{n}.onnx").stat().st_size <= self.preload_max_bytes]

    def loaded(self, key: str) -> bool:
        return key in self._loaded

    def get(self, key: str) -> LoadedModel:
        """The session of a model name, or of one version (``name@sha256``, from :meth:`key`)."""
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
            name, path, sha = self._locate(key)
            if path is None:
                raise ModelError(f"unknown model {key!r}; this node has: {', '.join(self.names()) or 'none'}")
            started, rss = time.perf_counter(), _rss_bytes()
            try:
                data = read_verified(path, sha)
            except OSError as exc:
                raise ModelError(f"model {name!r} cannot be read: {exc}") from None
            except DigestMismatch as exc:
                self.damaged[key] = str(exc)
                log.error("model %s refused: %s", key, exc)
                raise ModelError(f"model {name!r} refused: its bytes on disk do not match its sha256 {sha}") \
                    from None
            self.damaged.pop(key, None)
            opts = session_options()
            if path.parent != self.directory:    # uploaded: a blob an older version stored was never checked
                try:
                    check_model(data)
                except ModelCheckError as exc:
                    raise ModelError(f"model {name!r} cannot be loaded: {exc}") from None
                opts = cap_session(opts)
            try:
                session = _session(data, sha, opts, capped=path.parent != self.directory)
            except Exception as exc:  # onnxruntime raises its own exception hierarchy
                raise ModelError(f"model {name!r} cannot be loaded: {str(exc).splitlines()[0][:300]}") from None
            del data
            manifest: dict[str, Any] = {}
            if path.parent == self.directory:
                try:
                    manifest = json.loads((self.directory / f"{name}.json").read_text())
                except (OSError, ValueError):
                    pass
            else:
                manifest = {"sha256": path.stem, "uploaded": True}
            model = LoadedModel(name, path, session, _specs(session.get_inputs(), path),
                                _specs(session.get_outputs(), path), manifest, sha256=sha)
            self._loaded[key] = model
            self.load_s[key] = time.perf_counter() - started
            # Resident growth is the real cost (a 40 MB fp16 U-Net takes ~220 MB);
            # the file size is the floor when the allocator reused freed memory.
            self.session_bytes[key] = max(path.stat().st_size, _rss_bytes() - rss)
            self._evict(keep=key)
            return model

    def _evict(self, keep: str) -> None:
        """Drop least recently used sessions until the cached ones fit the budget.
        A running task holds its own reference, so eviction never breaks it."""
        while len(self._loaded) > 1 and sum(self.session_bytes.get(n, 0) for n in self._loaded) \
                > self.session_budget_bytes:
            victim = next(n for n in self._loaded if n != keep)
            del self._loaded[victim]
            self.evictions += 1

    def memory(self) -> dict[str, Any]:
        return {"budget_bytes": self.session_budget_bytes, "evictions": self.evictions,
                "sessions": {n: self.session_bytes.get(n, 0) for n in self._loaded}}

    def storage(self) -> dict[str, Any]:
        """Retention and integrity, for /v1/node and the metrics."""
        return {"keep_versions": self.blobs.keep_versions if self.blobs else 0,
                "keep_fetched": self.blobs.keep_fetched if self.blobs else 0,
                "collected": self.blobs.collected if self.blobs else 0,
                "damaged": dict(self.damaged)}

    def unload(self, name: str) -> bool:
        """Drop a model's session (the repository extension's unload); the file stays,
        and the next task loads it again.  False if it was not loaded."""
        with self._lock:
            return self._loaded.pop(name, None) is not None

    def loaded_names(self) -> list[str]:
        return sorted(self._loaded)


# One onnxruntime session per model version per process: the satellites a host runs share it
# (``InferenceSession.run`` is thread-safe; each satellite keeps its own executor, slots and
# energy).  Keyed by the verified sha256 and whether the session is capped (an upload), and
# held weakly: it goes when no satellite's store holds it any more.
_SHARED_SESSIONS: weakref.WeakValueDictionary[tuple[str, bool], ort.InferenceSession] = \
    weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _session(data: bytes, sha: str | None, opts: ort.SessionOptions, capped: bool) -> ort.InferenceSession:
    """The process's session of these (verified) bytes, made once; a model without a digest gets its own."""
    if not sha:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    with _SHARED_LOCK:
        session = _SHARED_SESSIONS.get((sha, capped))
        if session is None:
            session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
            _SHARED_SESSIONS[(sha, capped)] = session
        return session


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 elsewhere, so the file size is used)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
