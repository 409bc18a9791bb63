"""A memory ceiling for uploaded models' onnxruntime sessions.

The upload check (``agent.compute.model_check``) refuses allocations sized by a
request's values; sizes computed from an input's shape can still be
multiplied up.  So every session of an uploaded model allocates its
intermediate tensors from one arena shared by the process, registered once
with ``max_mem = UPLOAD_ARENA_BYTES``: a run that needs more fails with
onnxruntime's "Available memory ... is smaller than requested" error (the
task fails, the agent does not grow), and the arena is shrunk after each run
so a burst does not stay resident.  Weights are not in the arena (measured:
three 100 MB sessions under a 250 MB cap load fine).  The zoo's own sessions
keep their per-session arenas: they are trusted and on the hot path.

onnxruntime has no per-session memory limit for the CPU provider; the shared
arena (``create_and_register_allocator`` + ``session.use_env_allocators``) is
the one it offers.  An ``RLIMIT_AS`` on the agent is not used: it would count
every thread's stack and glibc arena reservations, and would make the agent's
own allocations fail (links, journal) instead of the model's.
"""

from __future__ import annotations

import re
import threading

import onnxruntime as ort

UPLOAD_ARENA_BYTES = 256 * 1024 * 1024
_KSAME_AS_REQUESTED = 1           # grow by what a run asks for, not by doubling past the ceiling
_registered = False
_lock = threading.Lock()


def _register_arena() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(UPLOAD_ARENA_BYTES, _KSAME_AS_REQUESTED, -1, -1))
        _registered = True


def cap_session(opts: ort.SessionOptions) -> ort.SessionOptions:
    """``opts`` made to allocate from the process's capped arena."""
    _register_arena()
    opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def cap_run(options: ort.RunOptions) -> None:
    """Give the arena back after the run, so the ceiling is a peak, not a resident size."""
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


_ARENA_FULL = re.compile(r"running (\w+) node.*Available memory of (\d+) is smaller than requested bytes of (\d+)", re.S)


def explain(error: str) -> str:
    """onnxruntime's error, short; an arena refusal said in words (its own text puts
    the numbers after 300 characters of source path and signature)."""
    full = _ARENA_FULL.search(error)
    if full:
        op, left, asked = full.groups()
        return (f"op {op} asked for {int(asked)} bytes, over what is left of the {UPLOAD_ARENA_BYTES}-byte memory "
                f"limit of uploaded models ({int(left)} bytes); use smaller inputs")
    return error.splitlines()[0][:300] if error else "onnxruntime failed"
