"""Real-time scheduling for the thread that releases frames.

An agent's event loop sleeps until a frame is due and must then run at once.
Under the default Linux scheduler a waking process can wait up to a full
scheduling slice (a few ms) behind any CPU-bound task on its core, which on
a small machine running many agents shows up directly as link-delay error.
With ``SCHED_RR`` the loop preempts ordinary work the moment its timer fires.
It is mostly asleep, and the kernel caps real-time tasks at 95% of a CPU, so
the rest of the machine keeps running.  Worker threads (onnxruntime) are
moved back to the normal policy so heavy inference can't starve anyone.

Needs root or CAP_SYS_NICE; without it (e.g. a default container) the agent
runs at normal priority and says so.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

RT_PRIORITY = 1  # the lowest real-time priority: above all normal tasks, below kernel threads


def raise_event_loop_priority() -> bool:
    """Make the calling thread SCHED_RR; False (and a log line) if not permitted."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        return True
    except (PermissionError, OSError) as exc:
        log.info("running at normal priority (real-time scheduling not permitted: %s); "
                 "link timing will be less precise on a busy machine", exc)
        return False


def normal_priority_for_this_thread() -> None:
    """Worker threads inherit the loop's policy; hand them back to the normal one."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


_IDLE_REVERSIBLE: bool | None = None


def idle_is_reversible() -> bool:
    """Whether a thread here may enter ``SCHED_IDLE`` and leave it again.  Leaving it
    needs CAP_SYS_NICE (or a permissive RLIMIT_NICE), and trio reuses worker threads, so
    a thread that could not return to the normal policy must never be idled.  Probed
    once, in a thread of its own."""
    global _IDLE_REVERSIBLE
    if _IDLE_REVERSIBLE is None:
        import threading
        result = [False]

        def probe() -> None:
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                result[0] = True
            except (AttributeError, PermissionError, OSError):
                pass

        t = threading.Thread(target=probe, name="orbitmesh-idle-probe")
        t.start()
        t.join()
        _IDLE_REVERSIBLE = result[0]
    return _IDLE_REVERSIBLE


def idle_thread(tid: int) -> bool:
    """Put thread ``tid`` (a native id) under ``SCHED_IDLE``: it then runs only on CPU
    time nothing else wants.  For a run that cannot be stopped, only starved."""
    if not idle_is_reversible():
        return False
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return True
    except (ProcessLookupError, PermissionError, OSError):
        return False
