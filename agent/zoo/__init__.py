"""Model zoo: deterministic, offline builders for the ONNX models agents run.

Each model lives in its own module exposing ``NAME``, ``RECIPE`` (bump it
whenever the training/export recipe changes, so stale artifacts get rebuilt)
and ``build(out_dir) -> manifest``.  Build-only dependencies (scikit-learn,
skl2onnx, onnx) are imported inside those ``build`` functions: agents import
this package for the manifest helpers and must not need the build toolchain.

Artifacts: ``<out>/<name>.onnx`` plus ``<out>/<name>.json`` (the manifest:
sha256 of the .onnx, I/O signature, held-out accuracy, sample inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from . import digits

_MODULES = (digits,)

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


# --- helpers for builder modules (kept here so every model shares them) ----


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via rename so a crash never leaves a half-written artifact."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def canonicalize_onnx(model: Any, name: str, doc: str = "") -> Any:
    """Strip run-to-run variation from an exported ONNX model, in place.

    skl2onnx emits opset_import in set-iteration order (depends on
    PYTHONHASHSEED), sometimes with a domain listed twice, and names the graph
    with a random uuid; all of these make identical models hash differently.
    """
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


def write_model(out_dir: Path, name: str, model_bytes: bytes, manifest: dict) -> dict:
    """Write ``<name>.onnx`` then ``<name>.json``; return the completed manifest.

    The .onnx goes first so an interrupted build leaves a manifest whose
    sha256 does not match, which ``is_current`` treats as "rebuild".
    """
    onnx_path, json_path = artifact_paths(out_dir, name)
    _atomic_write(onnx_path, model_bytes)
    manifest = {
        "name": name,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "size_bytes": len(model_bytes),
        **manifest,
    }
    _atomic_write(json_path, _dump_manifest(manifest).encode())
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
