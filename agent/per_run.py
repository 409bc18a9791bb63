"""One shared service per ``trio.run``: the process's release heap, chore heap and lag sampler.

Every node in a process (a satellite host, the simulator, a test) asks for the same
service without being handed it; a ``RunVar`` keeps one per run, so tests that each
call ``trio.run`` get their own.  The service's loop runs as a system task: it lives
as long as the run, not as long as whichever node happened to ask first.
"""

from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

import trio

T = TypeVar("T")


def per_run(var: trio.lowlevel.RunVar, make: Callable[[], T], loop: Callable[[T], Awaitable[object]],
            name: str) -> T:
    """``var``'s service in this run; on first use ``make()`` it and start ``loop(service)``."""
    try:
        return var.get()
    except LookupError:
        service = make()
        var.set(service)
        trio.lowlevel.spawn_system_task(loop, service, name=name)
        return service
