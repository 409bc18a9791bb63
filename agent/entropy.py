"""The process's randomness: fresh by default, drawn from one seed inside a simulation.

Every random choice a node makes that can change what it sends (membership's
probe order, task and query ids, prewarm jitter, fault draws) takes its
generator here, so ``orbitmesh sim --seed S`` replays byte for byte
(FoundationDB's and TigerBeetle's simulators rest on the same rule).  Outside
``seeded`` nothing changes: ids come from ``uuid4`` and generators are
seeded by the OS.

``seeded(seed)`` also seeds Python's module-level ``random`` (used by a few
node paths) and makes trio's scheduler deterministic: trio randomises the
order of each batch of runnable tasks with ``trio._core._run._r``, and its
deadline heap breaks ties by ``id()`` (a memory address); with
``_ALLOW_DETERMINISTIC_SCHEDULING`` (the switch pytest-trio sets under
Hypothesis) each batch is sorted by task creation order before the seeded
shuffle, which removes both.  Both are restored after.  Checked against
trio 0.35 (``_trio_scheduler``); another trio without them fails loudly.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from typing import Iterator

_seed: int | None = None
_ids: random.Random | None = None


def is_seeded() -> bool:
    return _seed is not None


def rng(label: str) -> random.Random:
    """A generator for one purpose (``label`` names it, e.g. ``membership:sat-3:1``):
    OS-seeded normally, ``Random(f"{seed}:{label}")`` inside ``seeded``."""
    if _seed is None:
        return random.Random()
    return random.Random(f"{_seed}:{label}")


def hex_id(chars: int = 32) -> str:
    """A random hex id of ``chars`` digits (``uuid4().hex[:chars]`` normally; from the seed inside ``seeded``)."""
    if not 1 <= chars <= 32:
        raise ValueError("an id has 1–32 hex digits")
    ids = _ids
    if ids is None:
        return uuid.uuid4().hex[:chars]
    return f"{ids.getrandbits(4 * chars):0{chars}x}"


def _trio_scheduler():
    """trio's scheduler module, checked for the two things ``seeded`` sets."""
    from trio._core import _run
    if not isinstance(getattr(_run, "_r", None), random.Random) or \
            not isinstance(getattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", None), bool):
        raise RuntimeError("this trio has no _r / _ALLOW_DETERMINISTIC_SCHEDULING in trio._core._run: "
                           "its scheduler cannot be made deterministic here (checked with trio 0.35)")
    return _run


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside the block every draw above comes from ``seed`` (one block at a time)."""
    global _seed, _ids
    if _seed is not None:
        raise RuntimeError("the process is seeded already")
    run = _trio_scheduler()
    saved = (run._r.getstate(), run._ALLOW_DETERMINISTIC_SCHEDULING, random.getstate())
    _seed, _ids = seed, random.Random(f"{seed}:ids")
    random.seed(f"{seed}:global")
    run._r.seed(f"{seed}:trio-scheduler")
    run._ALLOW_DETERMINISTIC_SCHEDULING = True
    try:
        yield
    finally:
        _seed, _ids = None, None
        run._r.setstate(saved[0])
        run._ALLOW_DETERMINISTIC_SCHEDULING = saved[1]
        random.setstate(saved[2])
