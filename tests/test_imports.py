"""The house's layering, read statically (ast) from the source: no import cycles among
agent/ and mesh/ modules, and mesh/ (the pure core) never imports agent/ (the shell).

Every import counts, wherever it is: at the top, inside a function, or under
``if TYPE_CHECKING:``. ``from pkg import name`` depends on ``pkg.name`` when that
is a module, else on ``pkg`` (the semantics of grimp / import-linter).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph(root: Path, packages: tuple[str, ...] = ("agent", "mesh")) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports."""
    mods = modules(root, packages)

    def owner(name: str) -> str | None:          # the longest known module prefix of a dotted name
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (owner(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                for a in node.names:
                    dep = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else owner(base)
                    if dep:
                        deps.add(dep)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def describe(graph: dict[str, set[str]], comp: list[str]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(comp)))}" for m in comp)


@pytest.fixture(scope="module")
def tree():
    """The real tree's graph, parsed once for the tests that only read it (~0.5 s of ast)."""
    return import_graph(ROOT)


def test_no_import_cycles_among_agent_and_mesh(tree):
    graph = tree
    assert len(graph) > 60 and "mesh.forwarding" in graph["agent.runtime.relay"]      # the reader sees the real tree
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(describe(graph, c) for c in found)


def test_mesh_never_imports_agent(tree):
    graph = tree
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith("mesh") for d in deps
                 if d.startswith("agent"))
    assert not bad, bad


def test_the_checker_finds_cycles_of_every_kind(tmp_path):
    """Top-level, function-level, TYPE_CHECKING and relative imports all count."""
    pkg = tmp_path / "agent"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from agent import b\n")
    (pkg / "b.py").write_text("def f():\n    import agent.a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.d import D\n")
    (pkg / "d.py").write_text("from . import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import x\n")
    (pkg / "sub" / "x.py").write_text("from .. import e\n")
    (pkg / "e.py").write_text("from agent.sub import x\n")
    (pkg / "ok.py").write_text("from agent import a, sub\n")
    (tmp_path / "mesh").mkdir()
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["agent.a", "agent.b"], ["agent.c", "agent.d"], ["agent.e", "agent.sub.x"]]
    assert graph["agent.ok"] == {"agent.a", "agent.sub"}


# agent/'s packages, lowest first: a package may import those below it, never one above
# (docs/architecture.md, "The house"). The process modules at the top of agent/ (daemon,
# agent_cli, __main__) compose them; client, atomic and wallclock are used from anywhere.
LAYERS = ("links", "compute", "runtime", "serve", "ops")
ALLOWED_UP = {("agent.serve.console_api", "agent.ops.chaos_cli"),        # the console a node serves runs
              ("agent.serve.console_scenario", "agent.ops.chaos_cli")}   # chaos scenarios with the operator's tool


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[0] == "agent" and parts[1] in LAYERS else None


def test_agent_packages_import_only_downwards(tree):
    assert {m.split(".")[1] for m in tree if m.count(".") >= 2 and m.startswith("agent.")} >= set(LAYERS)
    up = sorted(f"{m} -> {d}" for m, deps in tree.items() for d in deps
                if layer(m) is not None and layer(d) is not None and layer(d) > layer(m) and (m, d) not in ALLOWED_UP)
    assert not up, "imports from a lower package to a higher one: " + "; ".join(up)
    assert all(d in tree[m] for m, d in ALLOWED_UP), "an allowed exception is gone: drop it from ALLOWED_UP"


def test_the_layer_check_sees_an_upward_import(tmp_path):
    for pkg in ("agent/links", "agent/ops", "mesh"):
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "agent" / "__init__.py").write_text("")
    (tmp_path / "agent" / "links" / "p2p.py").write_text("def f():\n    from agent.ops import fleet\n")
    (tmp_path / "agent" / "ops" / "fleet.py").write_text("from agent.links import p2p\n")
    graph = import_graph(tmp_path)
    assert layer("agent.links.p2p") < layer("agent.ops.fleet")
    assert "agent.ops.fleet" in graph["agent.links.p2p"]
