"""The models a node can run: ONNX files in a directory, with their signatures.

The signature comes from onnxruntime's own view of the graph, so a user's
model needs no manifest to be checked; the zoo's manifests add descriptions
and sample inputs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from agent.model_check import ModelCheckError, check_model
from agent.ort_limits import cap_session
from agent.tensors import ORT_TYPES, TensorSpec


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


class UploadError(ValueError):
    """A model upload refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ModelStore:
    """Loads ``<dir>/<name>.onnx`` lazily and caches the session.

    Two sources: the zoo directory (built, read-only) and, when ``uploads`` is
    given, a content-addressed store of users' models: ``blobs/<sha256>.onnx``
    written once, and ``names/<name>.json`` pointing a name at a blob.  A name
    re-uploaded with other content points at the new blob; the zoo's names
    cannot be replaced.
    """

    def __init__(self, directory: Path, preload_max_bytes: int = PRELOAD_MAX_BYTES, *, uploads: Path | None = None,
                 max_model_bytes: int = MAX_MODEL_BYTES, session_budget_bytes: int = SESSION_BUDGET_BYTES):
        self.directory = Path(directory)
        self.uploads = Path(uploads) if uploads is not None else None
        self.max_model_bytes = max_model_bytes
        self.preload_max_bytes = preload_max_bytes
        self.session_budget_bytes = session_budget_bytes
        self._sha: dict[str, str] = {}
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()   # LRU first
        self.session_bytes: dict[str, int] = {}  # what each session costs in memory (measured at load)
        self.evictions = 0
        self.load_s: dict[str, float] = {}      # how long each session took to create here
        self._lock = threading.Lock()  # sessions are created from worker threads

    def zoo_names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.onnx"))

    def uploaded_names(self) -> list[str]:
        if self.uploads is None or not (self.uploads / "names").is_dir():
            return []
        return sorted(p.stem for p in (self.uploads / "names").glob("*.json"))

    def names(self) -> list[str]:
        return sorted(set(self.zoo_names()) | set(self.uploaded_names()))

    def path_of(self, name: str) -> Path | None:
        """The ONNX file behind a name, or None."""
        if not NAME_RE.fullmatch(name or ""):
            return None
        zoo = self.directory / f"{name}.onnx"
        if zoo.is_file():
            return zoo
        if self.uploads is not None:
            try:
                ref = json.loads((self.uploads / "names" / f"{name}.json").read_text())
                blob = self.uploads / "blobs" / f"{ref['sha256']}.onnx"
                return blob if blob.is_file() else None
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None

    def sha256(self, name: str) -> str:
        """Content hash of a model (cached; uploaded blobs are named by it)."""
        path = self.path_of(name)
        if path is None:
            raise ModelError(f"unknown model {name!r}")
        if path.parent.name == "blobs":
            return path.stem
        key = f"{name}:{path.stat().st_mtime_ns}"
        if key not in self._sha:
            try:   # the zoo's manifest records it (checked by tests/test_zoo.py)
                sha = json.loads((self.directory / f"{name}.json").read_text())["sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                sha = None
            self._sha[key] = sha if isinstance(sha, str) and SHA_RE.fullmatch(sha) else \
                hashlib.sha256(path.read_bytes()).hexdigest()
        return self._sha[key]

    def has(self, name: str, sha256: str | None = None) -> bool:
        if self.path_of(name) is None:
            return False
        return sha256 is None or not sha256 or self.sha256(name) == sha256

    def read(self, name: str) -> bytes:
        path = self.path_of(name)
        if path is None:
            raise ModelError(f"unknown model {name!r}")
        return path.read_bytes()

    def put(self, name: str, data: bytes, expect_sha256: str | None = None) -> dict[str, Any]:
        """Validate and store a model under ``name``; UploadError with a status and reason.

        Checks, in order: the name, the size limit, the hash the client (or the
        mesh) expects, and that onnxruntime can load it with tensor types the
        wire carries.  Nothing is written unless all pass.
        """
        if self.uploads is None:
            raise UploadError(503, "this node has no model store for uploads")
        if bad_name(name):
            raise UploadError(400, bad_name(name))
        if (self.directory / f"{name}.onnx").is_file():
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
            inputs, outputs = _specs(session.get_inputs(), Path(name)), _specs(session.get_outputs(), Path(name))
        except ModelError as exc:
            raise UploadError(400, str(exc)) from None
        blobs, names = self.uploads / "blobs", self.uploads / "names"
        blobs.mkdir(parents=True, exist_ok=True)
        names.mkdir(parents=True, exist_ok=True)
        blob = blobs / f"{sha}.onnx"
        if not blob.is_file():
            _write_atomic(blob, data)
        _write_atomic(names / f"{name}.json", json.dumps({"sha256": sha, "size": len(data)}).encode())
        with self._lock:
            self._loaded.pop(name, None)      # a new version replaces the old session
        return {"name": name, "sha256": sha, "size": len(data),
                "inputs": [x.describe() for x in inputs], "outputs": [x.describe() for x in outputs]}

    def preloadable(self) -> list[str]:
        return [n for n in self.zoo_names() if (self.directory / f"{n}.onnx").stat().st_size <= self.preload_max_bytes]

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                self._loaded.move_to_end(name)
                return model
            path = self.path_of(name)
            if path is None:
                raise ModelError(f"unknown model {name!r}; this node has: {', '.join(self.names()) or 'none'}")
            started, rss = time.perf_counter(), _rss_bytes()
            opts = session_options()
            if path.parent != self.directory:    # uploaded: a blob an older version stored was never checked
                try:
                    check_model(path.read_bytes())
                except (ModelCheckError, OSError) as exc:
                    raise ModelError(f"model {name!r} cannot be loaded: {exc}") from None
                opts = cap_session(opts)
            try:
                session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception hierarchy
                raise ModelError(f"model {name!r} cannot be loaded: {str(exc).splitlines()[0][:300]}") from None
            manifest: dict[str, Any] = {}
            if path.parent == self.directory:
                try:
                    manifest = json.loads((self.directory / f"{name}.json").read_text())
                except (OSError, ValueError):
                    pass
            else:
                manifest = {"sha256": path.stem, "uploaded": True}
            model = LoadedModel(name, path, session, _specs(session.get_inputs(), path),
                                _specs(session.get_outputs(), path), manifest)
            self._loaded[name] = model
            self.load_s[name] = time.perf_counter() - started
            # Resident growth is the real cost (a 40 MB fp16 U-Net takes ~220 MB);
            # the file size is the floor when the allocator reused freed memory.
            self.session_bytes[name] = max(path.stat().st_size, _rss_bytes() - rss)
            self._evict(keep=name)
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

    def unload(self, name: str) -> bool:
        """Drop a model's session (the repository extension's unload); the file stays,
        and the next task loads it again.  False if it was not loaded."""
        with self._lock:
            return self._loaded.pop(name, None) is not None

    def loaded_names(self) -> list[str]:
        return sorted(self._loaded)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer thread
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 elsewhere, so the file size is used)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
