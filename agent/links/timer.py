"""Sleep until a wall-clock instant with ~10 µs precision and almost no spinning.

trio's own sleep wakes up to ~1 ms late, because epoll takes its timeout in
whole milliseconds (rounded up).  A frame released 1 ms late on every hop
would swamp the sub-millisecond fidelity the link emulation promises.  A
Linux ``timerfd`` armed at the absolute due time (CLOCK_REALTIME, the clock
frames are stamped with) becomes readable exactly then, and trio waits on it
like on a socket: no long busy loop stealing cores from the other agents.
Python 3.11 has no ``os.timerfd_create``, hence ctypes.  On other systems a
short yield loop covers the last millisecond instead.

On a virtual clock (``agent.wallclock.virtual``) there is no kernel time to
match: the timer sleeps with trio until the due instant in trio time, which
the virtual clock reaches exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
import time

import trio

from agent import wallclock

_CLOCK_REALTIME = 0
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
COARSE_MARGIN_S = 0.002  # hand over from trio.sleep to the precise timer this early
# A timerfd wake-up reaches the loop ~0.1–0.15 ms after it fires on a VM here
# (p50); arming it this much early and yielding for the rest releases frames
# within tens of µs, at ≤ 0.15 ms of CPU per frame.
WAKEUP_LEAD_S = 0.00015


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                         ctypes.POINTER(_Itimerspec)]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


class PreciseTimer:
    """One reusable timer; use from a single task at a time."""

    def __init__(self) -> None:
        self._fd = -1
        if _libc is not None:
            fd = _libc.timerfd_create(_CLOCK_REALTIME, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def sleep_until(self, due: float) -> None:
        """Return at the wall instant ``due`` (``agent.wallclock`` time)."""
        if wallclock.is_virtual():
            await trio.sleep_until(wallclock.to_trio(due))
            return
        delay = due - time.time()
        if delay > COARSE_MARGIN_S:
            await trio.sleep(delay - COARSE_MARGIN_S)
        if time.time() >= due:
            return
        if self._fd < 0:
            while time.time() < due:
                await trio.lowlevel.checkpoint()
            return
        self.arm(due)
        await self.fired()
        while time.time() < due:
            await trio.lowlevel.checkpoint()

    def arm(self, due: float) -> None:
        """Make :meth:`fired` return at ``due`` less the wake-up lead; re-arming moves it (earlier or later)."""
        frac, whole = math.modf(due - WAKEUP_LEAD_S)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(int(whole), int(frac * 1e9)))
        if _libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    async def fired(self) -> None:
        """Wait until the armed instant (only on a ``precise`` timer)."""
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 8)
                return
            except BlockingIOError:  # spurious wake-up
                continue
