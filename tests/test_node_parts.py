"""agent.runtime.node's Node is split into mixins (agent/runtime/node_*.py) that share ``self``. Each
declares, as class annotations, what it uses of the node: read statically here, so a
method that starts using a new attribute, or a declaration that names nothing, fails."""

from __future__ import annotations

import ast
from pathlib import Path

from agent.runtime.node import Node
from tests.mixin_ast import classes as _classes, declared as _declared, defined as _defined, self_attrs as _self_attrs

AGENT = Path(__file__).resolve().parent.parent / "agent" / "runtime"


def _mixins() -> dict[str, ast.ClassDef]:
    out = {}
    for path in sorted(AGENT.glob("node_*.py")):
        for cls in _classes(path):
            if cls.name in {b.__name__ for b in Node.__mro__}:
                out[cls.name] = cls
    return out


def test_node_is_made_of_every_mixin_module():
    mixins = _mixins()
    assert set(mixins) == {b.__name__ for b in Node.__mro__[1:-1]}
    assert len(mixins) == len(list(AGENT.glob("node_*.py")))


def test_each_mixin_declares_what_it_uses_of_the_node():
    for name, cls in _mixins().items():
        undeclared = _self_attrs(cls) - _defined(cls) - _declared(cls)
        assert not undeclared, f"{name} uses {sorted(undeclared)} of the node without declaring them"


def test_every_declaration_names_something_the_node_has():
    node = next(c for c in _classes(AGENT / "node.py") if c.name == "Node")
    init = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    targets = [t for n in ast.walk(init) if isinstance(n, ast.Assign) for t in n.targets] + \
              [n.target for n in ast.walk(init) if isinstance(n, ast.AnnAssign)]
    assigned = {t.attr for t in targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    for name, cls in _mixins().items():
        unknown = {a for a in _declared(cls) if a not in assigned and not hasattr(Node, a)}
        assert not unknown, f"{name} declares {sorted(unknown)}, which the node neither sets nor defines"


def test_no_method_is_defined_twice_along_the_mro():
    seen: dict[str, str] = {}
    for base in Node.__mro__[:-1]:
        for attr in vars(base):
            if not attr.startswith("__"):
                assert attr not in seen, f"{attr} is defined by both {seen[attr]} and {base.__name__}"
                seen[attr] = base.__name__
