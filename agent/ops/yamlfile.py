"""Block-style YAML for compose, stack and Kubernetes files, written without a YAML library.

Generated files are read by Compose 1.29 (PyYAML), Compose v2 and
``docker stack`` (go-yaml): every string is double-quoted and JSON-escaped,
so no value can turn into a boolean, a number or a tag in either reader.
A writer of ~60 lines keeps PyYAML out of the agent's dependencies.
"""

from __future__ import annotations

import json
import re
from typing import Any


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    raise TypeError(f"cannot write {type(v).__name__} as YAML")


def _key(k: str) -> str:
    if not isinstance(k, str):
        raise TypeError("mapping keys must be strings")
    return k if _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML_WORDS else json.dumps(k, ensure_ascii=False)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _lines(v: Any, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, item in v.items():
            if _is_scalar(item):
                out.append(f"{pad}{_key(k)}: {_scalar(item)}")
            elif not item:
                out.append(f"{pad}{_key(k)}: {'{}' if isinstance(item, dict) else '[]'}")
            elif isinstance(item, list) and all(_is_scalar(x) for x in item):
                flow = f"{pad}{_key(k)}: [" + ", ".join(_scalar(x) for x in item) + "]"
                if len(flow) <= 120:
                    out.append(flow)
                else:
                    out.append(f"{pad}{_key(k)}:")
                    out += [f"{pad}  - {_scalar(x)}" for x in item]
            else:
                out.append(f"{pad}{_key(k)}:")
                out += _lines(item, indent + 1)
    elif isinstance(v, list):
        for item in v:
            if _is_scalar(item):
                out.append(f"{pad}- {_scalar(item)}")
            else:
                sub = _lines(item, indent + 1)
                out.append(f"{pad}- {sub[0].lstrip()}")
                out += sub[1:]
    else:
        raise TypeError(f"cannot write {type(v).__name__} as a YAML block")
    return out


def to_yaml(doc: dict[str, Any], header: str = "") -> str:
    """``doc`` as block-style YAML that Compose 1.29 (PyYAML) and v2 (go-yaml) read alike."""
    return header + "\n".join(_lines(doc, 0)) + "\n"
