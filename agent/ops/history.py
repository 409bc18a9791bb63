"""Jepsen-style operation histories of ``orbitmesh check`` runs, for external checkers.

Every client operation is recorded twice: an ``invoke`` when it starts and a
completion when it ends, paired by ``process``:

* ``ok``: it happened (a task accepted, a read answered);
* ``fail``: it certainly did not happen (a request refused with a 4xx);
* ``info``: nobody knows (the connection broke, the node was down, a timeout).
  As in Jepsen, the process that saw ``info`` is considered crashed, and its
  next operation runs as a new process, so a checker never pairs an operation
  with a completion that belongs to an earlier one.

Fault injection is the ``nemesis`` process.  Times are nanoseconds since the
run began (monotonic clock).  The same history is written as JSON Lines (one
operation per line) and as EDN (one map per line, keywords for ``:type``,
``:f`` and map keys), the format Jepsen's and Elle's tooling read.  EDN comes
from ``edn_format``, the maintained Python reader and writer, rather than a
hand-written printer that would have to get string escaping right.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TYPES = ("invoke", "ok", "fail", "info")
NEMESIS = "nemesis"


@dataclass
class Op:
    index: int
    type: str
    process: int | str
    f: str
    value: Any
    time: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "type": self.type, "process": self.process, "f": self.f, "value": self.value,
             "time": self.time}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class History:
    """An append-only list of operations; ``invoke`` returns a handle to complete."""

    ops: list[Op] = field(default_factory=list)
    start_ns: int = field(default_factory=time.monotonic_ns)
    _open: dict[int | str, int] = field(default_factory=dict)    # process -> index of its open invoke

    def _add(self, type_: str, process: int | str, f: str, value: Any, error: str | None = None) -> Op:
        op = Op(len(self.ops), type_, process, f, value, time.monotonic_ns() - self.start_ns, error)
        self.ops.append(op)
        return op

    def invoke(self, process: int | str, f: str, value: Any = None) -> Op:
        """Start an operation; a process has at most one open at a time (Jepsen's rule)."""
        if process in self._open:
            raise ValueError(f"process {process!r} already has operation {self._open[process]} open")
        op = self._add("invoke", process, f, value)
        self._open[process] = op.index
        return op

    def complete(self, invoked: Op, type_: str, value: Any = None, error: str | None = None) -> Op:
        if type_ not in TYPES[1:]:
            raise ValueError(f"a completion is one of {TYPES[1:]}, not {type_!r}")
        if self._open.get(invoked.process) != invoked.index:
            raise ValueError(f"operation {invoked.index} of process {invoked.process!r} is not open")
        del self._open[invoked.process]
        return self._add(type_, invoked.process, invoked.f, invoked.value if value is None else value, error)

    def counts(self) -> dict[str, int]:
        return {t: sum(1 for op in self.ops if op.type == t) for t in TYPES}

    # -- files -------------------------------------------------------------------------

    def write(self, path: Path) -> list[Path]:
        """``path`` with ``.jsonl`` and ``.edn`` (whatever suffix it had): both formats, same operations."""
        base = path.with_suffix("") if path.suffix in (".jsonl", ".edn", ".json") else path
        jsonl, edn = base.with_name(base.name + ".jsonl"), base.with_name(base.name + ".edn")
        jsonl.write_text("".join(json.dumps(op.as_dict(), separators=(",", ":")) + "\n" for op in self.ops))
        edn.write_text("".join(to_edn(op.as_dict()) + "\n" for op in self.ops))
        return [jsonl, edn]


def to_edn(op: dict[str, Any]) -> str:
    """One operation as an EDN map: ``:type`` and ``:f`` (and the nemesis process) as keywords."""
    import edn_format
    from edn_format import Keyword

    d = dict(op)
    d["type"] = Keyword(d["type"])
    d["f"] = Keyword(d["f"])
    if d["process"] == NEMESIS:
        d["process"] = Keyword(NEMESIS)
    return edn_format.dumps(d, keyword_keys=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
