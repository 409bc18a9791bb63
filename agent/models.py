"""The models a node can run: ONNX files in a directory, with their signatures.

The signature comes from onnxruntime's own view of the graph, so a user's
model needs no manifest to be checked; the zoo's manifests add descriptions
and sample inputs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

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


class ModelStore:
    """Loads ``<dir>/<name>.onnx`` lazily and caches the session."""

    def __init__(self, directory: Path, preload_max_bytes: int = PRELOAD_MAX_BYTES):
        self.directory = Path(directory)
        self.preload_max_bytes = preload_max_bytes
        self._loaded: dict[str, LoadedModel] = {}
        self.load_s: dict[str, float] = {}      # how long each session took to create here
        self._lock = threading.Lock()  # sessions are created from worker threads

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.onnx"))

    def preloadable(self) -> list[str]:
        return [n for n in self.names() if (self.directory / f"{n}.onnx").stat().st_size <= self.preload_max_bytes]

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                return model
            if not name or "/" in name or name.startswith(".") or not (self.directory / f"{name}.onnx").is_file():
                raise ModelError(f"unknown model {name!r}; this node has: {', '.join(self.names()) or 'none'}")
            path = self.directory / f"{name}.onnx"
            started = time.perf_counter()
            try:
                session = ort.InferenceSession(str(path), sess_options=session_options(),
                                               providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception hierarchy
                raise ModelError(f"model {name!r} cannot be loaded: {str(exc).splitlines()[0][:300]}") from None
            manifest: dict[str, Any] = {}
            try:
                manifest = json.loads((self.directory / f"{name}.json").read_text())
            except (OSError, ValueError):
                pass
            model = LoadedModel(name, path, session, _specs(session.get_inputs(), path),
                                _specs(session.get_outputs(), path), manifest)
            self._loaded[name] = model
            self.load_s[name] = time.perf_counter() - started
            return model

    def loaded_names(self) -> list[str]:
        return sorted(self._loaded)
