"""Reading a class split into mixins statically: what each defines, declares and uses of ``self``
(tests/test_node_parts.py, tests/test_membership_parts.py)."""

from __future__ import annotations

import ast
from pathlib import Path


def classes(path: Path) -> list[ast.ClassDef]:
    return [c for c in ast.parse(path.read_text()).body if isinstance(c, ast.ClassDef)]


def self_attrs(cls: ast.ClassDef) -> set[str]:
    return {n.attr for n in ast.walk(cls)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"}


def defined(cls: ast.ClassDef) -> set[str]:
    return {x.name for x in cls.body if isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef))} | \
           {t.id for x in cls.body if isinstance(x, ast.Assign) for t in x.targets if isinstance(t, ast.Name)}


def declared(cls: ast.ClassDef) -> set[str]:
    return {x.target.id for x in cls.body if isinstance(x, ast.AnnAssign) and isinstance(x.target, ast.Name)}
