"""mesh.membership's Membership is split into mixins (mesh/membership_*.py) that share
``self``. Each declares, as class annotations, what it uses of the object: read statically
here, so a method that starts using a new attribute, or a declaration that names nothing,
fails."""

from __future__ import annotations

import ast
from pathlib import Path

from mesh.membership import Membership
from tests.mixin_ast import classes as _classes, declared as _declared, defined as _defined, self_attrs as _self_attrs

MESH = Path(__file__).resolve().parent.parent / "mesh"


def _mixins() -> dict[str, tuple[Path, ast.ClassDef]]:
    bases = {b.__name__ for b in Membership.__mro__[1:-1]}
    return {cls.name: (path, cls) for path in sorted(MESH.glob("membership_*.py"))
            for cls in _classes(path) if cls.name in bases}


def test_membership_is_made_of_its_mixins_one_module_each():
    mixins = _mixins()
    assert set(mixins) == {b.__name__ for b in Membership.__mro__[1:-1]}
    assert len({path for path, _ in mixins.values()}) == len(mixins) == 6     # one module each
    for base in Membership.__mro__[1:-1]:
        path, _ = mixins[base.__name__]
        assert base.__module__ == f"mesh.{path.stem}"                          # the class read is the class used


def test_each_mixin_declares_what_it_uses():
    for name, (_, cls) in _mixins().items():
        undeclared = _self_attrs(cls) - _defined(cls) - _declared(cls)
        assert not undeclared, f"{name} uses {sorted(undeclared)} of Membership without declaring them"


def test_every_declaration_names_something_membership_has():
    main = next(c for c in _classes(MESH / "membership.py") if c.name == "Membership")
    init = next(f for f in main.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    targets = [t for n in ast.walk(init) if isinstance(n, ast.Assign) for t in n.targets] + \
              [n.target for n in ast.walk(init) if isinstance(n, ast.AnnAssign)]
    assigned = {t.attr for t in targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    for name, (_, cls) in _mixins().items():
        assert _declared(cls), f"{name} declares nothing"
        unknown = {a for a in _declared(cls) if a not in assigned and not hasattr(Membership, a)}
        assert not unknown, f"{name} declares {sorted(unknown)}, which Membership neither sets nor defines"


def test_mixins_hold_only_declarations_and_methods():
    for name, (_, cls) in _mixins().items():
        for x in cls.body[1:]:     # after the docstring
            assert isinstance(x, (ast.FunctionDef, ast.AnnAssign)), f"{name} holds a {type(x).__name__}"
            assert not isinstance(x, ast.AnnAssign) or x.value is None, f"{name} assigns {x.target.id} (state lives in __init__)"


def test_no_method_is_defined_twice_along_the_mro():
    seen: dict[str, str] = {}
    for base in Membership.__mro__[:-1]:
        for attr in vars(base):
            if not attr.startswith("__"):
                assert attr not in seen, f"{attr} is defined by both {seen[attr]} and {base.__name__}"
                seen[attr] = base.__name__
