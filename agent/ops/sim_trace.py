"""The simulator's event trace: JSON lines in virtual time, bounded, and its replay check.

Line 1 is a header (``{"trace": 1, "args": {...}}``: the seed and flags of the
run); every other line is one event, ``{"t": <virtual s>, "ev": <kind>, ...}``:
``frames`` (per link, per second of virtual time: frames sent, received and
dropped by cause since the last line for that link), ``crash``, ``restart``,
``fault``, ``verdict`` (a membership event seen by one node: suspect, dead,
alive, link down/up, refuted) and ``task`` (a task's end).  Keys are sorted and
floats rounded to the microsecond, so two runs of one seed write the same bytes.

Bounded: at most ``max_lines`` event lines (default ``DEFAULT_MAX_LINES``; a
line is ~60–150 bytes, so ~150 MB at most); after that one ``truncated`` line
and nothing more, and a replay compares only what both traces hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Iterator

DEFAULT_MAX_LINES = 1_000_000
TRACE_VERSION = 1


class TraceError(Exception):
    """A trace file that cannot be read or replayed (printed as ``error: …``)."""


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Trace:
    """Writes events as they happen; ``lines`` keeps them in memory when no file is given (replay)."""

    def __init__(self, out: IO[str] | None, args: dict[str, Any], max_lines: int = DEFAULT_MAX_LINES):
        if max_lines < 1:
            raise ValueError("max_lines must be ≥ 1")
        self.out = out
        self.lines: list[str] = []
        self.max_lines = max_lines
        self.count = 0
        self.truncated = False
        self._write(dumps({"trace": TRACE_VERSION, "args": args, "max_lines": max_lines}))

    def _write(self, line: str) -> None:
        if self.out is not None:
            self.out.write(line + "\n")
        else:
            self.lines.append(line)

    def event(self, t: float, ev: str, **fields: Any) -> None:
        if self.truncated:
            return
        if self.count >= self.max_lines:
            self.truncated = True
            self._write(dumps({"t": round(t, 6), "ev": "truncated", "after_lines": self.count}))
            return
        self.count += 1
        self._write(dumps({"t": round(t, 6), "ev": ev, **fields}))


def read_header(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        head = json.loads(first)
    except ValueError:
        raise TraceError(f"{path} is not a simulator trace (its first line is not JSON)") from None
    if not isinstance(head, dict) or head.get("trace") != TRACE_VERSION or not isinstance(head.get("args"), dict):
        raise TraceError(f"{path} is not a version-{TRACE_VERSION} simulator trace (no header line)")
    return head


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def first_divergence(path: Path, new: list[str]) -> dict[str, Any] | None:
    """None if the recorded trace and ``new`` agree line for line, else where they first differ.
    A line past either side's truncation is not compared."""
    rec = _lines(path)
    n = 0
    for n, got in enumerate(new, start=1):
        want = next(rec, None)
        if want is None:
            return {"line": n, "recorded": None, "replayed": got}
        if want != got:
            if '"ev":"truncated"' in want or '"ev":"truncated"' in got:
                return None
            return {"line": n, "recorded": want, "replayed": got}
    extra = next(rec, None)
    if extra is not None:
        return {"line": n + 1, "recorded": extra, "replayed": None}
    return None
